//! `--listen udp://`: one UDP socket for every generation. A new
//! generation is ready (`--ready auto`) once it waits for datagrams on it;
//! the old one then stops reading between two datagrams, and whatever is
//! queued in the one receive buffer goes to the new one. Nothing is lost.

use std::collections::BTreeSet;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use baton_e2e::{Baton, DEADLINE, eventually, exclusive};
use nix::sys::signal::Signal;

use super::*;

/// Datagrams per second the client sends, open loop.
const RATE: u64 = 2000;

#[test]
fn a_udp_echo_server_reloaded_under_load_loses_no_datagram() {
    echo_reloaded_under_load(&["--ready", "auto"]);
}

/// Under `--preload` baton drains each old generation itself first; a
/// datagram socket has nothing to drain, so the library leaves it as it
/// is (a stream socket in its place would fail every `recvfrom`), and
/// the old generation is quiet at once.
#[test]
fn under_preload_a_udp_server_keeps_its_socket_while_baton_drains() {
    let output = echo_reloaded_under_load(&["--ready", "auto", "--preload"]);
    let quiet = output.matches("stopped taking connections and finished its own");
    assert_eq!(quiet.count() as u64, RELOADS + 1, "{output}");
}

/// Reload a UDP echo server (`baton` `flags`) [`RELOADS`] times under
/// load: no datagram may go unanswered. Returns baton's output.
fn echo_reloaded_under_load(flags: &[&str]) -> String {
    let _serial = exclusive();
    let echo = fixture("udp_echo.py").display().to_string();
    let mut baton = Baton::start(&baton_args(
        "dns=udp://127.0.0.1:0",
        flags,
        &[python(), &echo],
    ));
    let line = baton.wait_for(&["listening", "name=dns "]);
    let addr: SocketAddr = field(&line, "addr")
        .and_then(|a| a.strip_prefix("udp://"))
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no udp:// address in {line:?}"));
    baton.wait_ready(1);
    assert!(
        baton.output().contains("blocked in poll"),
        "{}",
        baton.output()
    );

    let client = Client::start(addr);
    for generation in 2..=RELOADS + 1 {
        client.wait_answers(200);
        baton.signal(Signal::SIGHUP);
        baton.wait_ready(generation);
    }
    client.wait_answers(200);
    let (sent, answered, client_drops) = client.finish();
    // Where a datagram was dropped, if anywhere: the kernel counts
    // receive-buffer overflows per socket, while it is open.
    let drops = format!(
        "receive-buffer drops: server socket {}, client socket {client_drops}",
        udp_drops(addr.port()),
    );
    baton.signal(Signal::SIGTERM);
    assert!(baton.wait_exit().success(), "{}", baton.output());
    let lost = sent - answered;
    eprintln!(
        "udp echo: {RELOADS} reloads, {sent} datagrams sent at {RATE}/s, {answered} answered, {lost} lost; {drops}; time to ready: {}",
        spread((1..=RELOADS + 1).map(|g| ready_ms(&baton, g)).collect())
    );
    assert_eq!(
        lost, 0,
        "{lost} of {sent} datagrams were not answered; {drops}"
    );
    baton.output()
}

/// Sends numbered datagrams at [`RATE`] and collects the echoes.
struct Client {
    port: u16,
    sent: Arc<AtomicU64>,
    answered: Arc<Mutex<BTreeSet<u64>>>,
    stop: Arc<AtomicBool>,
    sender: std::thread::JoinHandle<()>,
}

impl Client {
    fn start(server: SocketAddr) -> Client {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind the client");
        socket.connect(server).expect("connect the client");
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .expect("a read timeout");
        let sent = Arc::new(AtomicU64::new(0));
        let answered = Arc::new(Mutex::new(BTreeSet::new()));
        let stop = Arc::new(AtomicBool::new(false));
        // The test's own receiver may be starved on a loaded machine as
        // the server may: give it the same slack baton gives the server.
        if nix::sys::socket::setsockopt(
            &socket,
            nix::sys::socket::sockopt::RcvBufForce,
            &baton_supervisor::listeners::UDP_RECEIVE_BUFFER,
        )
        .is_err()
        {
            let _ = socket2::SockRef::from(&socket)
                .set_recv_buffer_size(baton_supervisor::listeners::UDP_RECEIVE_BUFFER);
        }
        let port = socket.local_addr().expect("the client's address").port();
        let receiver = socket.try_clone().expect("clone the client");
        {
            let answered = answered.clone();
            let stop = stop.clone();
            let sent = sent.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 64];
                loop {
                    match receiver.recv(&mut buf) {
                        Ok(8) => {
                            let n = u64::from_be_bytes(buf[..8].try_into().unwrap());
                            answered.lock().unwrap().insert(n);
                        }
                        Ok(_) => {}
                        Err(_) => {
                            // Idle: done once stopped and every echo that
                            // will come has come.
                            let all = answered.lock().unwrap().len() as u64;
                            if stop.load(Ordering::SeqCst) && all == sent.load(Ordering::SeqCst) {
                                return;
                            }
                        }
                    }
                }
            });
        }
        let sender = {
            let sent = sent.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let start = Instant::now();
                // Bounded: the test ends long before.
                while !stop.load(Ordering::SeqCst) && start.elapsed() < 2 * DEADLINE {
                    let n = sent.load(Ordering::SeqCst);
                    socket.send(&n.to_be_bytes()).expect("send a datagram");
                    sent.store(n + 1, Ordering::SeqCst);
                    // Open-loop pacing, not a wait for an event.
                    let due = start + Duration::from_micros((n + 1) * 1_000_000 / RATE);
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                }
            })
        };
        Client {
            port,
            sent,
            answered,
            stop,
            sender,
        }
    }

    /// Wait until `more` echoes beyond those so far came back.
    fn wait_answers(&self, more: u64) {
        let target = self.answered.lock().unwrap().len() as u64 + more;
        assert!(
            eventually(|| self.answered.lock().unwrap().len() as u64 >= target),
            "echoes stopped coming"
        );
    }

    /// Stop sending; wait (with the deadline) for the echoes still on
    /// their way; return (sent, answered, dropped by the client's socket).
    fn finish(self) -> (u64, u64, u64) {
        self.stop.store(true, Ordering::SeqCst);
        self.sender.join().expect("the sender");
        let sent = self.sent.load(Ordering::SeqCst);
        eventually(|| self.answered.lock().unwrap().len() as u64 == sent);
        let answered = self.answered.lock().unwrap().len() as u64;
        (sent, answered, udp_drops(self.port))
    }
}

/// The datagrams the kernel dropped on the UDP sockets bound to local port
/// `port` (the last column of /proc/net/udp).
fn udp_drops(port: u16) -> u64 {
    let table = std::fs::read_to_string("/proc/net/udp").unwrap_or_default();
    let port = format!(":{port:04X}");
    table
        .lines()
        .skip(1)
        .filter(|row| {
            row.split_whitespace()
                .nth(1)
                .is_some_and(|local| local.ends_with(&port))
        })
        .filter_map(|row| row.split_whitespace().last()?.parse::<u64>().ok())
        .sum()
}
