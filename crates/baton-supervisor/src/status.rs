//! What baton reports about itself: listeners, generations with what each
//! costs (CPU, memory, threads, descriptors) and whether it is stopped or
//! silent, processes that escaped their generation, the guardian, the
//! reload history and the counters. The same value answers `baton ctl status` and `GET /status`,
//! and feeds the Prometheus metrics.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sysinfo::{Pid, ProcessRefreshKind, ProcessesToUpdate, System};

use crate::machine::Generation;

/// How many reloads the history keeps.
pub const HISTORY: usize = 50;

/// Everything `status` answers.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Status {
    /// baton's version.
    pub version: String,
    /// baton's pid.
    pub pid: u32,
    /// Seconds since baton started.
    pub uptime_s: f64,
    /// The listening sockets, in fd order.
    pub listeners: Vec<ListenerStatus>,
    /// The live generations, oldest first.
    pub generations: Vec<GenerationStatus>,
    /// The last [`HISTORY`] reloads, oldest first.
    pub reloads: Vec<ReloadRecord>,
    /// Counters since baton started.
    pub counters: Counters,
    /// baton's children that belong to no generation (adopted as a
    /// subreaper: a worker's `setsid` daemon, say), at the last sample.
    #[serde(default)]
    pub escaped: Vec<EscapedProcess>,
    /// The guardian, if baton runs with one.
    #[serde(default)]
    pub guardian: Option<GuardianStatus>,
}

/// A process baton adopted that is in no generation's process group: it
/// may hold a listening socket, and baton stops it when it exits.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct EscapedProcess {
    /// Its pid.
    pub pid: i32,
    /// Its process group.
    pub pgid: i32,
    /// Its command line, spaces between the arguments.
    pub command: String,
}

/// The guardian process (see [`crate::guardian`]).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct GuardianStatus {
    /// Its pid; none while a replacement could not be started.
    pub pid: Option<i32>,
    /// How many times it was replaced.
    pub restarts: u32,
}

/// One listening socket.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ListenerStatus {
    /// Its name (`LISTEN_FDNAMES`).
    pub name: String,
    /// Its bound address.
    pub address: String,
    /// The accept queue length baton bound it with; `None` (`null`) for a
    /// socket baton inherited, whose backlog it did not set.
    pub backlog: Option<i32>,
    /// Whether it still listens where it should.
    #[serde(default)]
    pub health: ListenerHealth,
    /// What is wrong with it while it is broken.
    #[serde(default)]
    pub problem: Option<String>,
    /// How often baton repaired it (a worker shut it down, its socket file
    /// went away).
    #[serde(default)]
    pub repairs: u64,
}

/// Whether a listener still listens where it should.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ListenerHealth {
    /// It listens at its address.
    Ok,
    /// It does not, and baton could not repair it yet (it tries every second).
    Broken,
    /// Not checked: not a stream socket, or a baton too old to check.
    #[default]
    Unchecked,
}

impl std::fmt::Display for ListenerHealth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ListenerHealth::Ok => "ok",
            ListenerHealth::Broken => "broken",
            ListenerHealth::Unchecked => "unchecked",
        })
    }
}

/// One generation and what it costs, summed over its process group.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct GenerationStatus {
    /// Its number.
    pub generation: Generation,
    /// Its leader's pid (also its process group id).
    pub pid: Option<i32>,
    /// starting, active, draining or killing.
    pub state: String,
    /// When it was started, in seconds since the Unix epoch.
    pub started_at: f64,
    /// Spawn to ready, once ready.
    pub ready_ms: Option<u64>,
    /// It missed its watchdog deadline (no `WATCHDOG=1` since).
    #[serde(default)]
    pub silent: bool,
    /// What its process group cost at the last sample (zero before one).
    #[serde(flatten)]
    pub usage: Usage,
}

/// What started a reload.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Trigger {
    /// SIGHUP.
    Signal,
    /// `baton ctl reload`.
    Ctl,
    /// A watched file changed.
    Watch,
    /// baton bound a listener anew (a worker had broken it) and hands it
    /// to a new generation.
    Listener,
}

impl std::fmt::Display for Trigger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Trigger::Signal => "signal",
            Trigger::Ctl => "ctl",
            Trigger::Watch => "watch",
            Trigger::Listener => "listener",
        })
    }
}

/// How a reload ended.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Still running.
    Pending,
    /// The new generation is active, the old one was told to drain.
    Ok,
    /// The new generation did not become ready; the old one serves on.
    Failed,
}

/// One reload.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ReloadRecord {
    /// Its id, counting from 1.
    pub id: u64,
    /// What asked for it.
    pub trigger: Trigger,
    /// When, in seconds since the Unix epoch.
    pub requested_at: f64,
    /// When the generation answering it was spawned, if one was.
    #[serde(default)]
    pub spawned_at: Option<f64>,
    /// When it ended: the new generation ready, or the failure.
    #[serde(default)]
    pub finished_at: Option<f64>,
    /// How it ended.
    pub outcome: Outcome,
    /// The generation it started (none if it failed before one started).
    pub generation: Option<Generation>,
    /// The generation it replaced.
    pub previous: Option<Generation>,
    /// Why it failed.
    pub reason: Option<String>,
    /// Spawn to ready.
    pub ready_ms: Option<u64>,
    /// How long the previous generation took to drain, once it has.
    pub drain_ms: Option<u64>,
    /// How the previous generation's leader exited.
    pub previous_exit: Option<String>,
}

/// Counters since baton started.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Counters {
    /// Reloads that completed.
    pub reloads_ok: u64,
    /// Reloads that failed.
    pub reloads_failed: u64,
    /// Active workers that died on their own.
    pub crashes: u64,
    /// Generations started other than by a reload (crash restarts).
    pub restarts: u64,
    /// The crash backoff now in force, if a restart waits.
    pub backoff_ms: Option<u64>,
}

/// Seconds since the Unix epoch, now.
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// What one sample measured of one process group.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Usage {
    /// Processes in the group.
    pub processes: u32,
    /// CPU use since the previous sample, in percent of one core.
    pub cpu_percent: f64,
    /// CPU time used by the live processes of the group.
    pub cpu_seconds: f64,
    /// Resident memory of the group.
    pub rss_bytes: u64,
    /// Threads in the group.
    pub threads: u64,
    /// Open file descriptors in the group.
    pub open_fds: u64,
    /// Established TCP connections it still holds (sampled while draining).
    pub connections: Option<u64>,
    /// Processes of the group that are stopped (state `T`: SIGSTOP, a
    /// debugger): they neither serve nor drain.
    #[serde(default)]
    pub stopped: u32,
}

/// Samples the cost of worker process groups: CPU and memory from
/// `sysinfo`, group membership, threads, descriptors and sockets from
/// `/proc`, where sysinfo has no figure. Call it every few seconds, never
/// in a tight loop.
pub struct Sampler {
    system: System,
}

impl std::fmt::Debug for Sampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sampler").finish_non_exhaustive()
    }
}

impl Sampler {
    /// A sampler; `None` if sysinfo cannot read this system.
    pub fn new() -> Option<Self> {
        Some(Sampler {
            system: System::new().ok()?,
        })
    }

    /// Measure each process group; `with_connections` lists the groups
    /// whose established connections to count (the draining ones).
    pub fn sample(
        &mut self,
        groups: &[i32],
        with_connections: &HashSet<i32>,
    ) -> HashMap<i32, Usage> {
        let (members, stopped) = group_members(groups);
        let pids: Vec<Pid> = members
            .values()
            .flatten()
            .map(|&p| Pid::from_u32(p as u32))
            .collect();
        self.system.refresh_processes_specifics(
            ProcessesToUpdate::Some(&pids),
            true,
            ProcessRefreshKind::nothing().with_cpu().with_memory(),
        );
        // Descriptors first: the sockets of draining groups are the only
        // candidates worth looking up in the kernel's TCP tables.
        let fds: HashMap<i32, Fds> = members
            .values()
            .flatten()
            .map(|&pid| (pid, socket_inodes(pid)))
            .collect();
        let candidates: HashSet<u64> = members
            .iter()
            .filter(|(pgid, _)| with_connections.contains(pgid))
            .flat_map(|(_, pids)| pids.iter())
            .filter_map(|pid| fds.get(pid))
            .flat_map(|f| f.sockets.iter().copied())
            .collect();
        let established = established_among(&candidates);
        let mut usage = HashMap::new();
        for (&pgid, pids) in &members {
            let mut u = Usage {
                processes: pids.len() as u32,
                stopped: stopped.get(&pgid).copied().unwrap_or(0),
                ..Usage::default()
            };
            let mut connections = 0;
            for &pid in pids {
                if let Some(p) = self.system.process(Pid::from_u32(pid as u32)) {
                    u.cpu_percent += f64::from(p.cpu_usage());
                    u.cpu_seconds += p.accumulated_cpu_time() as f64 / 1000.0;
                    u.rss_bytes += p.memory();
                }
                u.threads += threads(pid);
                let Some(fds) = fds.get(&pid) else { continue };
                u.open_fds += fds.total;
                if with_connections.contains(&pgid) {
                    connections += fds.sockets.intersection(&established).count() as u64;
                }
            }
            if with_connections.contains(&pgid) {
                u.connections = Some(connections);
            }
            usage.insert(pgid, u);
        }
        usage
    }
}

/// The live (not zombie) members of each process group, and how many of
/// them are stopped.
fn group_members(groups: &[i32]) -> (BTreeMap<i32, Vec<i32>>, HashMap<i32, u32>) {
    let wanted: HashSet<i32> = groups.iter().copied().collect();
    let mut members: BTreeMap<i32, Vec<i32>> = groups.iter().map(|&g| (g, Vec::new())).collect();
    let mut stopped = HashMap::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return (members, stopped);
    };
    for pid in entries.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok()) {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // After "(comm) ": state, ppid, pgrp. comm may hold spaces and ')'.
        let Some((_, rest)) = stat.rsplit_once(") ") else {
            continue;
        };
        let mut fields = rest.split(' ');
        let state = fields.next().unwrap_or("Z");
        let pgrp = fields.nth(1).and_then(|f| f.parse::<i32>().ok());
        if let Some(pgrp) = pgrp.filter(|g| wanted.contains(g))
            && state != "Z"
            && state != "X"
        {
            members.entry(pgrp).or_default().push(pid);
            if state == "T" || state == "t" {
                *stopped.entry(pgrp).or_default() += 1;
            }
        }
    }
    (members, stopped)
}

fn threads(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Threads:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

struct Fds {
    total: u64,
    sockets: HashSet<u64>,
}

/// Count a process's descriptors and collect the inodes of its sockets.
fn socket_inodes(pid: i32) -> Fds {
    let mut fds = Fds {
        total: 0,
        sockets: HashSet::new(),
    };
    let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return fds;
    };
    for entry in entries.flatten() {
        fds.total += 1;
        if let Ok(target) = std::fs::read_link(entry.path())
            && let Some(inode) = target
                .to_str()
                .and_then(|t| t.strip_prefix("socket:["))
                .and_then(|t| t.strip_suffix(']'))
                .and_then(|t| t.parse().ok())
        {
            fds.sockets.insert(inode);
        }
    }
    fds
}

/// Which of `candidates` are established TCP sockets (IPv4 and IPv6).
///
/// The tables are streamed a line at a time: on a busy host they hold tens
/// of thousands of sockets (TIME_WAIT above all), and reading them whole
/// every few seconds left megabytes resident in baton.
fn established_among(candidates: &HashSet<u64>) -> HashSet<u64> {
    use std::io::BufRead;
    const ESTABLISHED: &str = "01";
    let mut found = HashSet::new();
    if candidates.is_empty() {
        return found;
    }
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(file) = std::fs::File::open(table) else {
            continue;
        };
        let mut reader = std::io::BufReader::new(file);
        let mut line = String::new();
        while matches!(reader.read_line(&mut line), Ok(n) if n > 0) {
            let mut fields = line.split_whitespace();
            if fields.nth(3) == Some(ESTABLISHED)
                && let Some(inode) = fields.nth(5).and_then(|i| i.parse().ok())
                && candidates.contains(&inode)
            {
                found.insert(inode);
            }
            line.clear();
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_this_process_group() {
        let pgid = nix::unistd::getpgrp().as_raw();
        let mut sampler = Sampler::new().expect("sysinfo");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let _client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (_server, _) = listener.accept().unwrap();
        let usage = sampler.sample(&[pgid], &HashSet::from([pgid]));
        let u = &usage[&pgid];
        assert!(u.processes >= 1);
        assert!(u.rss_bytes > 0);
        assert!(u.threads >= 1);
        assert!(u.open_fds >= 3);
        assert!(u.connections.unwrap() >= 2, "{u:?}");
    }

    #[test]
    fn a_stopped_member_is_counted() {
        use std::os::unix::process::CommandExt;
        let mut child = std::process::Command::new("sleep")
            .arg("60")
            .process_group(0)
            .spawn()
            .unwrap();
        let pgid = child.id() as i32;
        let stop = |signal| nix::sys::signal::kill(nix::unistd::Pid::from_raw(pgid), signal);
        stop(nix::sys::signal::Signal::SIGSTOP).unwrap();
        let mut sampler = Sampler::new().expect("sysinfo");
        let mut stopped = 0;
        // The stop is asynchronous: look until it shows (or for 10 s).
        for _ in 0..500 {
            stopped = sampler.sample(&[pgid], &HashSet::new())[&pgid].stopped;
            if stopped == 1 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        stop(nix::sys::signal::Signal::SIGKILL).unwrap();
        child.wait().unwrap();
        assert_eq!(stopped, 1);
    }

    #[test]
    fn status_round_trips_through_json() {
        let status = Status {
            version: "1".into(),
            reloads: vec![ReloadRecord {
                id: 1,
                trigger: Trigger::Ctl,
                requested_at: 1.0,
                spawned_at: Some(1.5),
                finished_at: Some(3.5),
                outcome: Outcome::Failed,
                generation: Some(2),
                previous: Some(1),
                reason: Some("not ready within 2s".into()),
                ready_ms: None,
                drain_ms: None,
                previous_exit: None,
            }],
            ..Status::default()
        };
        let json = serde_json::to_string(&status).unwrap();
        assert!(json.contains(r#""trigger":"ctl""#), "{json}");
        assert_eq!(serde_json::from_str::<Status>(&json).unwrap(), status);
    }
}
