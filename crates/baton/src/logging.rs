//! baton's log lines reach stderr through a thread of their own, so that a
//! stderr nobody reads never stops the supervisor, and one that fails
//! never ends it.
//!
//! Each line goes into a bounded queue without waiting; a full queue drops
//! the line and counts it, and the count is reported as a line of its own
//! once lines get through again. The writer thread is the only one that
//! may block in `write(2)`; a failed write (`EPIPE`, `ENOSPC`, …) drops
//! the line. stderr itself stays blocking: `O_NONBLOCK` would belong to the
//! open file description that every worker inherits, and change their
//! writes too. (`SIGPIPE` is ignored by the Rust runtime, and workers get
//! it back at its default in `spawn`.)

use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tracing_subscriber::fmt::MakeWriter;

pub mod journal;

/// Lines the queue holds before it drops new ones (some 150 KiB).
const QUEUE_LINES: usize = 1024;

/// How long [`LogGuard`] waits, at exit, for queued lines to be written.
const FLUSH_LIMIT: Duration = Duration::from_secs(2);

enum Message {
    Line(Vec<u8>),
    /// Answered once every line queued before it has been handled.
    Flush(SyncSender<()>),
}

/// The queue towards the writer thread; a [`MakeWriter`] for tracing.
#[derive(Clone)]
pub struct Writer {
    queue: SyncSender<Message>,
    dropped: Arc<AtomicU64>,
}

/// One line being formatted; queued when dropped.
pub struct Line<'a> {
    writer: &'a Writer,
    buffer: Vec<u8>,
}

impl Write for Line<'_> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.buffer.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for Line<'_> {
    fn drop(&mut self) {
        if !self.buffer.is_empty() {
            self.writer.queue(std::mem::take(&mut self.buffer));
        }
    }
}

impl<'a> MakeWriter<'a> for Writer {
    type Writer = Line<'a>;

    fn make_writer(&'a self) -> Line<'a> {
        Line {
            writer: self,
            buffer: Vec::with_capacity(256),
        }
    }
}

impl Writer {
    /// Start the writer thread on `output` (stderr, or anything in tests).
    pub fn start(output: impl Write + Send + 'static) -> io::Result<Writer> {
        let (queue, lines) = mpsc::sync_channel(QUEUE_LINES);
        let dropped = Arc::new(AtomicU64::new(0));
        let counter = dropped.clone();
        std::thread::Builder::new()
            .name("baton-log".into())
            .spawn(move || write_lines(lines, output, &counter))?;
        Ok(Writer { queue, dropped })
    }

    /// Queue bytes to write as they are (one or more whole lines).
    pub fn queue(&self, line: Vec<u8>) {
        match self.queue.try_send(Message::Line(line)) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Wait until the lines queued so far are handled, at most `limit`.
    pub fn flush(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let (done, finished) = mpsc::sync_channel(1);
        let mut message = Message::Flush(done);
        // The queue may be full of lines a stuck stderr cannot take.
        loop {
            match self.queue.try_send(message) {
                Ok(()) => break,
                Err(TrySendError::Disconnected(_)) => return false,
                Err(TrySendError::Full(back)) if Instant::now() < deadline => {
                    message = back;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(TrySendError::Full(_)) => return false,
            }
        }
        finished
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .is_ok()
    }
}

/// The writer thread: write each line, count what could not be written or
/// queued, and say how many were lost once a line gets through.
fn write_lines(lines: Receiver<Message>, mut output: impl Write, dropped: &AtomicU64) {
    for message in lines {
        match message {
            Message::Line(line) => {
                if output.write_all(&line).is_err() {
                    dropped.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let lost = dropped.swap(0, Ordering::Relaxed);
                if lost > 0 {
                    // Through the subscriber, so it has the chosen format;
                    // it comes back through this queue.
                    tracing::warn!(
                        dropped = lost,
                        "log lines dropped: stderr did not take them in time"
                    );
                }
            }
            Message::Flush(done) => {
                let _ = output.flush();
                let _ = done.send(());
            }
        }
    }
}

static WRITER: OnceLock<Writer> = OnceLock::new();

/// Flushes the log queue (within a limit) when dropped: hold it until exit.
#[must_use = "dropping it flushes the log at once"]
pub struct LogGuard(());

impl Drop for LogGuard {
    fn drop(&mut self) {
        if let Some(writer) = WRITER.get() {
            writer.flush(FLUSH_LIMIT);
        }
    }
}

/// The writer of baton's stderr, started at the first call.
pub fn stderr() -> (Writer, LogGuard) {
    let writer = WRITER.get_or_init(|| {
        Writer::start(io::stderr()).unwrap_or_else(|_| {
            // No thread: a queue nobody reads drops every line, as a
            // stderr that cannot be written would.
            let (queue, _) = mpsc::sync_channel(0);
            Writer {
                queue,
                dropped: Arc::default(),
            }
        })
    });
    (writer.clone(), LogGuard(()))
}

/// Whether baton's stderr is systemd's journal stream, looked at once.
pub fn to_journal() -> bool {
    static JOURNAL: OnceLock<bool> = OnceLock::new();
    *JOURNAL.get_or_init(journal::stderr_is_journal)
}

/// Write baton's error message at exit (not a log event) to stderr,
/// through the same queue: it must not block or panic. Under the journal
/// it gets the priority of an error, `<3>`.
pub fn print(line: &str) {
    let (writer, _guard) = stderr();
    let prefix = if to_journal() { "<3>" } else { "" };
    writer.queue(format!("{prefix}{line}\n").into_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// An output that blocks until released, then fails or records.
    #[derive(Clone, Default)]
    struct Output {
        written: Arc<Mutex<Vec<u8>>>,
        fail: bool,
    }

    impl Write for Output {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            if self.fail {
                return Err(io::ErrorKind::StorageFull.into());
            }
            self.written.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_arrive_in_order_and_flush_waits_for_them() {
        let output = Output::default();
        let writer = Writer::start(output.clone()).unwrap();
        for i in 0..100 {
            writeln!(writer.make_writer(), "line {i}").unwrap();
        }
        assert!(writer.flush(Duration::from_secs(10)));
        let text = String::from_utf8(output.written.lock().unwrap().clone()).unwrap();
        let expected: String = (0..100).map(|i| format!("line {i}\n")).collect();
        assert_eq!(text, expected);
    }

    #[test]
    fn a_failing_output_drops_lines_without_a_panic() {
        let writer = Writer::start(Output {
            fail: true,
            ..Output::default()
        })
        .unwrap();
        for _ in 0..10 {
            writer.queue(b"x\n".to_vec());
        }
        assert!(writer.flush(Duration::from_secs(10)));
        assert_eq!(writer.dropped.load(Ordering::Relaxed), 10);
    }

    #[test]
    fn a_stuck_output_never_blocks_the_caller() {
        struct Stuck(mpsc::Receiver<()>);
        impl Write for Stuck {
            fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
                let _ = self.0.recv();
                Ok(bytes.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let (release, stuck) = mpsc::channel();
        let writer = Writer::start(Stuck(stuck)).unwrap();
        let started = Instant::now();
        for _ in 0..(QUEUE_LINES * 3) {
            writer.queue(b"line\n".to_vec());
        }
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(writer.dropped.load(Ordering::Relaxed) >= QUEUE_LINES as u64);
        assert!(!writer.flush(Duration::from_millis(50)), "still stuck");
        drop(release);
    }
}
