//! What each signal does to baton, and the one stream of every signal it
//! catches.
//!
//! The default action of most signals is to end the process, and a baton
//! that ends takes every worker with it (its guardian kills them). So baton
//! decides each one ([`SignalTable::action`]):
//!
//! | signal | baton |
//! |---|---|
//! | TERM, QUIT | drain every generation, then exit |
//! | INT | the same; a second INT kills every generation at once |
//! | HUP | reload |
//! | USR1 | forwarded to the active generation's leader |
//! | USR2 | ignored (logged), forwarded with `--forward-signal USR2` |
//! | ALRM, VTALRM, PROF, IO, PWR, STKFLT, XCPU, XFSZ, RTMIN…RTMAX | ignored (logged) |
//! | PIPE | ignored, silently (every write to a closed socket raises it) |
//! | SEGV, BUS, ILL, FPE, TRAP, ABRT, SYS | default: baton ends, as a bug in it would |
//!
//! "Logged" is the first of each kind, then the 10th, the 100th, … with
//! the count: a storm of signals cannot flood the log.

use std::collections::HashMap;
use std::future::poll_fn;
use std::io;
use std::task::Poll;

use tokio::signal::unix::{Signal as Stream, SignalKind, signal};

use crate::machine::signal_name;

/// What baton does with a signal it receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignalAction {
    /// Drain every generation, then exit (TERM, QUIT).
    Stop,
    /// As [`Stop`](Self::Stop); a second one kills everything at once (INT).
    Interrupt,
    /// Reload (HUP).
    Reload,
    /// Send it to the active generation's leader (USR1, and what
    /// `--forward-signal` names).
    Forward,
    /// Log it, do nothing else.
    Ignore,
}

/// Signals whose default would end baton and that mean nothing to it.
/// Not PIPE (ignored from the start: every write to a closed socket raises
/// it), nor those of a fault in baton itself (SEGV, BUS, ILL, FPE, TRAP,
/// ABRT, SYS), nor the real-time signals glibc keeps for itself.
pub fn ignorable() -> Vec<i32> {
    let mut signals = vec![
        libc::SIGUSR2,
        libc::SIGALRM,
        libc::SIGVTALRM,
        libc::SIGPROF,
        libc::SIGIO,
        libc::SIGPWR,
        libc::SIGSTKFLT,
        libc::SIGXCPU,
        libc::SIGXFSZ,
    ];
    signals.extend(libc::SIGRTMIN()..=libc::SIGRTMAX());
    signals
}

/// What the guardian ignores: everything baton catches or ignores, so
/// that a signal meant for baton (`kill -USR1 $(pidof baton)`, a Ctrl-C to
/// the terminal's process group) cannot end it while baton lives on.
pub fn guardian_ignores() -> Vec<i32> {
    let mut signals = vec![
        libc::SIGHUP,
        libc::SIGINT,
        libc::SIGQUIT,
        libc::SIGTERM,
        libc::SIGUSR1,
        libc::SIGPIPE,
    ];
    signals.extend(ignorable());
    signals
}

/// A signal's name: `SIGUSR2`, `SIGRTMIN+3`, `SIGRTMAX`.
pub fn name(signal: i32) -> String {
    let (min, max) = (libc::SIGRTMIN(), libc::SIGRTMAX());
    match signal {
        s if s == max => "SIGRTMAX".to_owned(),
        s if s == min => "SIGRTMIN".to_owned(),
        s if s > min && s < max => format!("SIGRTMIN+{}", s - min),
        s => signal_name(s),
    }
}

/// Parse what `--forward-signal` names (`USR2`, `SIGWINCH`, `RTMIN+2`, or
/// a number). Only a signal that does not act on baton itself and that
/// can be caught may be forwarded.
pub fn parse_forward(text: &str) -> Result<i32, String> {
    let upper = text.trim().to_ascii_uppercase();
    let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
    let number = match bare.parse::<i32>() {
        Ok(number) => Some(number),
        Err(_) => (1..=libc::SIGRTMAX()).find(|&n| name(n) == format!("SIG{bare}")),
    };
    let forwardable =
        "USR1, USR2, WINCH, TTIN, TTOU, URG, ALRM, VTALRM, PROF, IO, PWR, XCPU, XFSZ, RTMIN+N";
    let Some(number) = number.filter(|&n| n > 0 && n <= libc::SIGRTMAX()) else {
        return Err(format!(
            "'{text}' is not a signal name: forward one of {forwardable}"
        ));
    };
    let name = name(number);
    let why = match number {
        libc::SIGHUP | libc::SIGINT | libc::SIGQUIT | libc::SIGTERM => {
            Some("acts on baton itself (TERM, INT and QUIT stop it, HUP reloads)")
        }
        libc::SIGKILL | libc::SIGSTOP => Some("cannot be caught"),
        libc::SIGCHLD | libc::SIGCONT | libc::SIGPIPE => Some("is baton's own business"),
        libc::SIGSEGV
        | libc::SIGBUS
        | libc::SIGILL
        | libc::SIGFPE
        | libc::SIGTRAP
        | libc::SIGABRT
        | libc::SIGSYS => Some("reports a fault in the process that gets it"),
        n if n < libc::SIGRTMIN() && n > 31 => Some("is kept by the C library"),
        _ => None,
    };
    match why {
        Some(why) => Err(format!(
            "{name} {why}: it cannot be forwarded; forward one of {forwardable}"
        )),
        None => Ok(number),
    }
}

/// What each signal does; see the [module docs](self).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SignalTable {
    forward: Vec<i32>,
}

impl SignalTable {
    /// The table with `forward` (besides USR1) sent on to the active
    /// generation's leader; each must have passed [`parse_forward`].
    pub fn new(forward: &[i32]) -> Self {
        let mut forward = forward.to_vec();
        forward.sort_unstable();
        forward.dedup();
        SignalTable { forward }
    }

    /// What baton does with `signal`.
    pub fn action(&self, signal: i32) -> SignalAction {
        match signal {
            libc::SIGTERM | libc::SIGQUIT => SignalAction::Stop,
            libc::SIGINT => SignalAction::Interrupt,
            libc::SIGHUP => SignalAction::Reload,
            libc::SIGUSR1 => SignalAction::Forward,
            s if self.forward.contains(&s) => SignalAction::Forward,
            _ => SignalAction::Ignore,
        }
    }

    /// Every signal baton installs a handler for.
    pub fn caught(&self) -> Vec<i32> {
        let mut signals = vec![
            libc::SIGHUP,
            libc::SIGINT,
            libc::SIGQUIT,
            libc::SIGTERM,
            libc::SIGUSR1,
        ];
        signals.extend(ignorable());
        signals.extend(&self.forward);
        signals.sort_unstable();
        signals.dedup();
        signals
    }
}

/// Every signal baton catches, as one stream. Create it inside the
/// runtime; from then on none of these signals ends baton.
#[derive(Debug)]
pub struct Signals {
    table: SignalTable,
    streams: Vec<(i32, Stream)>,
    ignored: HashMap<i32, u64>,
}

impl Signals {
    /// Install a handler for each signal of `table`.
    pub fn install(table: SignalTable) -> io::Result<Self> {
        let streams = table
            .caught()
            .into_iter()
            .map(|n| Ok((n, signal(SignalKind::from_raw(n))?)))
            .collect::<io::Result<_>>()?;
        Ok(Signals {
            table,
            streams,
            ignored: HashMap::new(),
        })
    }

    /// The next signal received.
    pub async fn recv(&mut self) -> i32 {
        poll_fn(|cx| {
            for (number, stream) in &mut self.streams {
                // `None` only once the runtime shuts down: nothing to tell.
                if let Poll::Ready(Some(())) = stream.poll_recv(cx) {
                    return Poll::Ready(*number);
                }
            }
            Poll::Pending
        })
        .await
    }

    /// What baton does with `signal`.
    pub fn action(&self, signal: i32) -> SignalAction {
        self.table.action(signal)
    }

    /// Count one more ignored `signal`; the count when this one is worth
    /// a log line (the 1st, 10th, 100th, …).
    pub fn count_ignored(&mut self, signal: i32) -> Option<u64> {
        let count = self.ignored.entry(signal).or_default();
        *count += 1;
        worth_logging(*count).then_some(*count)
    }
}

/// 1, 10, 100, 1000, …
fn worth_logging(count: u64) -> bool {
    let mut n = count;
    while n >= 10 && n.is_multiple_of(10) {
        n /= 10;
    }
    n == 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table() {
        let table = SignalTable::new(&[]);
        assert_eq!(table.action(libc::SIGTERM), SignalAction::Stop);
        assert_eq!(table.action(libc::SIGQUIT), SignalAction::Stop);
        assert_eq!(table.action(libc::SIGINT), SignalAction::Interrupt);
        assert_eq!(table.action(libc::SIGHUP), SignalAction::Reload);
        assert_eq!(table.action(libc::SIGUSR1), SignalAction::Forward);
        for signal in ignorable() {
            assert_eq!(
                table.action(signal),
                SignalAction::Ignore,
                "{}",
                name(signal)
            );
        }
        let forwarding = SignalTable::new(&[libc::SIGUSR2, libc::SIGWINCH]);
        assert_eq!(forwarding.action(libc::SIGUSR2), SignalAction::Forward);
        assert_eq!(forwarding.action(libc::SIGWINCH), SignalAction::Forward);
        assert!(forwarding.caught().contains(&libc::SIGWINCH));
        assert!(!table.caught().contains(&libc::SIGWINCH));
    }

    #[test]
    fn every_signal_whose_default_ends_baton_is_decided() {
        // signal(7): the defaults "Term" and "Core".
        let faults = [
            libc::SIGSEGV,
            libc::SIGBUS,
            libc::SIGILL,
            libc::SIGFPE,
            libc::SIGTRAP,
            libc::SIGABRT,
            libc::SIGSYS,
        ];
        let uncatchable = [libc::SIGKILL];
        let table = SignalTable::new(&[]);
        let caught = table.caught();
        let ends = [
            libc::SIGHUP,
            libc::SIGINT,
            libc::SIGQUIT,
            libc::SIGUSR1,
            libc::SIGUSR2,
            libc::SIGPIPE,
            libc::SIGALRM,
            libc::SIGTERM,
            libc::SIGSTKFLT,
            libc::SIGXCPU,
            libc::SIGXFSZ,
            libc::SIGVTALRM,
            libc::SIGPROF,
            libc::SIGIO,
            libc::SIGPWR,
        ];
        for signal in ends.into_iter().chain(libc::SIGRTMIN()..=libc::SIGRTMAX()) {
            // PIPE is ignored (SIG_IGN) from the start instead.
            assert!(
                caught.contains(&signal) || signal == libc::SIGPIPE,
                "{}",
                name(signal)
            );
            assert!(!faults.contains(&signal) && !uncatchable.contains(&signal));
        }
    }

    #[test]
    fn forwardable_signals() {
        assert_eq!(parse_forward("USR2"), Ok(libc::SIGUSR2));
        assert_eq!(parse_forward("sigwinch"), Ok(libc::SIGWINCH));
        assert_eq!(parse_forward("RTMIN+2"), Ok(libc::SIGRTMIN() + 2));
        assert_eq!(parse_forward("12"), Ok(libc::SIGUSR2));
        for bad in ["TERM", "HUP", "KILL", "CHLD", "SEGV", "NOPE", "0", "99"] {
            let error = parse_forward(bad).unwrap_err();
            assert!(error.contains("forward one of"), "{bad}: {error}");
        }
        assert!(
            parse_forward("TERM")
                .unwrap_err()
                .contains("acts on baton itself")
        );
    }

    #[test]
    fn names() {
        assert_eq!(name(libc::SIGUSR2), "SIGUSR2");
        assert_eq!(name(libc::SIGRTMIN()), "SIGRTMIN");
        assert_eq!(name(libc::SIGRTMIN() + 1), "SIGRTMIN+1");
        assert_eq!(name(libc::SIGRTMAX()), "SIGRTMAX");
    }

    #[test]
    fn ignored_signals_are_logged_at_powers_of_ten() {
        let logged: Vec<u64> = (1..=1000).filter(|&n| worth_logging(n)).collect();
        assert_eq!(logged, [1, 10, 100, 1000]);
    }
}
