//! Lines for systemd's journal, and colour only for a person.
//!
//! Under systemd, `JOURNAL_STREAM=DEV:INODE` names the stream the unit's
//! stdout and stderr were connected to. When baton's stderr is that very
//! stream (`fstat(2)` shows the same device and inode; a program started
//! from the unit with its stderr redirected is not), each line starts
//! with its syslog priority, `<3>` error, `<4>` warn, `<6>` info, `<7>`
//! debug and trace, which journald strips and stores as `PRIORITY=`, so
//! `journalctl -p warning` finds baton's warnings; and text lines carry no
//! timestamp, since the journal stamps each entry itself.

use std::fmt;
use std::os::fd::AsFd;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// Whether `journal_stream` (the value of `JOURNAL_STREAM`) names the
/// file `fd` is open on.
pub fn names(journal_stream: Option<&str>, fd: impl AsFd) -> bool {
    let Some((dev, ino)) = journal_stream.and_then(|value| value.split_once(':')) else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    nix::sys::stat::fstat(fd).is_ok_and(|stat| stat.st_dev == dev && stat.st_ino == ino)
}

/// Whether baton's stderr is the journal's stream.
pub fn stderr_is_journal() -> bool {
    names(
        std::env::var("JOURNAL_STREAM").ok().as_deref(),
        std::io::stderr(),
    )
}

/// Whether to colour the lines: only on a terminal, and never when
/// `NO_COLOR` is set to anything but the empty string (no-color.org).
pub fn colour(terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    terminal && no_color.is_none_or(|value| value.is_empty())
}

/// The syslog priority of a level (sd-daemon(3)'s `SD_ERR` … `SD_DEBUG`).
pub fn priority(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        Level::DEBUG | Level::TRACE => 7,
    }
}

/// A format that writes `<N>` before what the inner format writes; with
/// `level`, also the level's name and a space (for a text format without
/// its own level, whose padded one would start the message with a blank).
pub struct Prefixed<F> {
    /// The format of the rest of the line.
    pub inner: F,
    /// Whether to write the level's name after the priority.
    pub level: bool,
}

impl<S, N, F> FormatEvent<S, N> for Prefixed<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let level = event.metadata().level();
        write!(writer, "<{}>", priority(level))?;
        if self.level {
            write!(writer, "{level} ")?;
        }
        self.inner.format_event(ctx, writer, event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn only_the_same_device_and_inode_is_the_journal() {
        let (_read, write) = std::io::pipe().unwrap();
        let stat = std::fs::metadata(format!(
            "/proc/self/fd/{}",
            std::os::fd::AsRawFd::as_raw_fd(&write)
        ))
        .unwrap();
        let value = format!("{}:{}", stat.dev(), stat.ino());
        assert!(names(Some(&value), &write));
        let (_other, other) = std::io::pipe().unwrap();
        assert!(!names(Some(&value), &other), "another pipe");
        for bad in ["", "1", "x:y", ":", "1:2:3"] {
            assert!(!names(Some(bad), &write), "{bad:?}");
        }
        assert!(!names(None, &write));
    }

    #[test]
    fn no_color_set_to_anything_turns_colour_off() {
        assert!(colour(true, None));
        assert!(colour(true, Some(OsStr::new(""))));
        assert!(!colour(true, Some(OsStr::new("1"))));
        assert!(!colour(false, None));
    }

    #[test]
    fn priorities_are_syslogs() {
        assert_eq!(priority(&Level::ERROR), 3);
        assert_eq!(priority(&Level::WARN), 4);
        assert_eq!(priority(&Level::INFO), 6);
        assert_eq!(priority(&Level::DEBUG), 7);
        assert_eq!(priority(&Level::TRACE), 7);
    }
}
