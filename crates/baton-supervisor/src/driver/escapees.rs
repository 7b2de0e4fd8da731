//! Processes that escaped their generation. A worker that starts a daemon
//! the classic way (fork, `setsid`, fork, exit) leaves it in a session and
//! process group of its own, holding the listening sockets it inherited;
//! killing the generation's group never reaches it. baton is a child
//! subreaper, so such a daemon becomes baton's child when its parent
//! exits: every child of baton that is neither a generation's (its group
//! is a generation's), a build's, nor the guardian has escaped. `status`
//! lists them (from the sampler), and when baton exits it stops them:
//! SIGTERM (and SIGCONT), then SIGKILL after the drain timeout.

use std::collections::{BTreeSet, HashSet};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

use super::processes::ProcessTable;
use crate::status::EscapedProcess;

/// How often to look again while waiting for escaped processes to go.
const POLL: Duration = Duration::from_millis(20);

/// How long to wait after SIGKILL before giving up on a process (one in
/// uninterruptible sleep, say).
const KILL_GRACE: Duration = Duration::from_secs(5);

/// What is not escaped among baton's children.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Known {
    /// Pids of helpers in no group of their own (the guardian).
    pub pids: HashSet<i32>,
    /// Generation and build process groups.
    pub groups: HashSet<i32>,
}

/// What is not escaped among baton's children now.
pub(super) fn known(processes: &ProcessTable) -> Known {
    let (pids, mut groups) = processes.helpers();
    groups.extend(processes.live_groups().map(|(_, pgid)| pgid));
    Known { pids, groups }
}

/// Stop baton's children that escaped their generation (they may hold a
/// listening socket) as baton exits: SIGTERM, then SIGKILL after
/// `timeout` (at once with `force`), reaping as they go.
pub(super) async fn stop(processes: &mut ProcessTable, timeout: Duration, force: bool) {
    let mut stopper = Stopper::new(timeout, force);
    loop {
        processes.reap();
        let escaped = find(std::process::id() as i32, &known(processes));
        if stopper.step(&escaped, Instant::now()) {
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    let stopped = stopper.stopped;
    if !stopped.terminated.is_empty() || !stopped.killed.is_empty() {
        tracing::info!(
            terminated = stopped.terminated.len(),
            killed = stopped.killed.len(),
            "escaped processes stopped"
        );
    }
}

/// baton's live children that escaped their generation.
pub(super) fn find(parent: i32, known: &Known) -> Vec<EscapedProcess> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found: Vec<EscapedProcess> = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| !known.pids.contains(pid))
        .filter_map(|pid| {
            let (state, ppid, pgid) = stat(pid)?;
            let escaped = ppid == parent && !known.groups.contains(&pgid);
            (escaped && state != 'Z' && state != 'X').then(|| EscapedProcess {
                pid,
                pgid,
                command: command_line(pid),
            })
        })
        .collect();
    found.sort_by_key(|p| p.pid);
    found
}

/// State, parent and process group from `/proc/PID/stat`.
fn stat(pid: i32) -> Option<(char, i32, i32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After "(comm) ": state, ppid, pgrp. comm may hold spaces and ')'.
    let (_, rest) = stat.rsplit_once(") ")?;
    let mut fields = rest.split(' ');
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    let pgid = fields.next()?.parse().ok()?;
    Some((state, ppid, pgid))
}

fn command_line(pid: i32) -> String {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let args: Vec<_> = raw
        .split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .map(String::from_utf8_lossy)
        .collect();
    args.join(" ")
}

/// Signal an escaped process and its process group, where a daemon's own
/// children are. The group is no generation's (or it would not have
/// escaped) and not baton's own: a descendant of baton created it, and a
/// group id is not reused while a process is in it.
fn signal(process: &EscapedProcess, signal: Signal) {
    if process.pgid != nix::unistd::getpgrp().as_raw() {
        let _ = killpg(Pid::from_raw(process.pgid), signal);
    }
    let _ = kill(Pid::from_raw(process.pid), signal);
}

/// What [`Stopper`] did.
#[derive(Debug, Default)]
struct Stopped {
    pub terminated: BTreeSet<i32>,
    pub killed: BTreeSet<i32>,
}

/// Stops escaped processes: call [`Stopper::step`] with what is escaped
/// now until it returns true, reaping in between.
#[derive(Debug)]
struct Stopper {
    kill_at: Instant,
    give_up_at: Instant,
    stopped: Stopped,
}

impl Stopper {
    /// SIGTERM first and SIGKILL after `timeout`; SIGKILL at once with
    /// `force` (a second Ctrl-C).
    fn new(timeout: Duration, force: bool) -> Self {
        let now = Instant::now();
        let kill_at = if force { now } else { now + timeout };
        Stopper {
            kill_at,
            give_up_at: kill_at + KILL_GRACE,
            stopped: Stopped::default(),
        }
    }

    /// Signal what is escaped `now`; true once nothing is, or once
    /// waiting longer is pointless.
    fn step(&mut self, escaped: &[EscapedProcess], now: Instant) -> bool {
        if escaped.is_empty() {
            return true;
        }
        if now >= self.give_up_at {
            let pids: Vec<i32> = escaped.iter().map(|p| p.pid).collect();
            tracing::error!(?pids, "escaped processes survived SIGKILL: leaving them");
            return true;
        }
        for process in escaped {
            if now >= self.kill_at {
                if self.stopped.killed.insert(process.pid) {
                    signal(process, Signal::SIGKILL);
                }
            } else if self.stopped.terminated.insert(process.pid) {
                tracing::warn!(
                    pid = process.pid,
                    pgid = process.pgid,
                    command = %process.command,
                    "stopping a process that escaped its generation"
                );
                signal(process, Signal::SIGTERM);
                signal(process, Signal::SIGCONT);
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A child of this process in a session of its own is escaped; one in
    /// a known group, or a known pid, is not.
    #[test]
    fn a_child_in_a_group_of_its_own_is_escaped() {
        let mut child = std::process::Command::new("setsid")
            .args(["sleep", "60"])
            .spawn()
            .expect("setsid runs");
        let pid = child.id() as i32;
        let me = std::process::id() as i32;
        // setsid(1) forks only when it leads a group already; wait for the
        // exec (and the new session) to show.
        let mut found = Vec::new();
        for _ in 0..500 {
            found = find(me, &Known::default());
            if found
                .iter()
                .any(|p| p.pid == pid && p.pgid == pid && p.command == "sleep 60")
            {
                break;
            }
            std::thread::sleep(POLL);
        }
        assert!(
            found
                .iter()
                .any(|p| p.pid == pid && p.command == "sleep 60"),
            "{found:?}"
        );
        let known = Known {
            pids: HashSet::new(),
            groups: HashSet::from([pid]),
        };
        assert!(find(me, &known).iter().all(|p| p.pid != pid));
        let known = Known {
            pids: HashSet::from([pid]),
            groups: HashSet::new(),
        };
        assert!(find(me, &known).iter().all(|p| p.pid != pid));

        let mut stopper = Stopper::new(Duration::from_secs(30), false);
        let escaped: Vec<_> = found.into_iter().filter(|p| p.pid == pid).collect();
        assert!(!stopper.step(&escaped, Instant::now()));
        assert!(stopper.stopped.terminated.contains(&pid));
        let status = child.wait().expect("wait");
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(15)
        );
        assert!(stopper.step(&[], Instant::now()));
    }
}
