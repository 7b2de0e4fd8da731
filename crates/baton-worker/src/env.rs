//! Reading the hand-over protocols from the environment: which descriptors
//! are ours and what they are called. Pure parsing, no descriptor is touched
//! here, so all of it is unit-tested.

use std::ffi::OsString;
use std::os::fd::RawFd;

use crate::Error;

/// The first descriptor of systemd's protocol (after stdin, stdout, stderr).
const SD_LISTEN_FDS_START: RawFd = 3;

/// The name systemd gives a socket when `LISTEN_FDNAMES` is unset.
const UNKNOWN: &str = "unknown";

/// The raw values of the variables, as strings.
#[derive(Debug, Default, Clone)]
pub(crate) struct Vars {
    pub listen_pid: Option<String>,
    pub listen_fds: Option<String>,
    pub listen_fdnames: Option<String>,
    pub server_starter_port: Option<String>,
}

impl Vars {
    /// Reads the variables of this process. The environment is only read:
    /// mutating it races with every thread that reads it.
    pub fn from_process() -> Result<Vars, Error> {
        Ok(Vars {
            listen_pid: var("LISTEN_PID")?,
            listen_fds: var("LISTEN_FDS")?,
            listen_fdnames: var("LISTEN_FDNAMES")?,
            server_starter_port: var("SERVER_STARTER_PORT")?,
        })
    }
}

fn var(name: &'static str) -> Result<Option<String>, Error> {
    match std::env::var_os(name) {
        None => Ok(None),
        Some(value) => value.into_string().map(Some).map_err(|v: OsString| {
            invalid(name, &v.to_string_lossy(), "not valid UTF-8".to_owned())
        }),
    }
}

fn invalid(var: &'static str, value: &str, reason: String) -> Error {
    Error::InvalidVar {
        var,
        value: value.to_owned(),
        reason,
    }
}

/// Which descriptors to take, with their names, in hand-over order.
///
/// systemd's `LISTEN_FDS` wins; `SERVER_STARTER_PORT` is read only when
/// `LISTEN_FDS` is absent. Sockets addressed to another process (a
/// `LISTEN_PID` that is unset or not `my_pid`: we inherited the variables
/// from a parent that was the addressee) give an empty list.
pub(crate) fn plan(vars: &Vars, my_pid: u32) -> Result<Vec<(RawFd, String)>, Error> {
    if let Some(fds) = &vars.listen_fds {
        return plan_systemd(vars, fds, my_pid);
    }
    if let Some(ports) = &vars.server_starter_port {
        return plan_server_starter(ports);
    }
    Ok(Vec::new())
}

fn plan_systemd(vars: &Vars, fds: &str, my_pid: u32) -> Result<Vec<(RawFd, String)>, Error> {
    // Strict, as sd_listen_fds(3): no LISTEN_PID means "not addressed to
    // us" (an unrelated descendant that inherited the variables must not
    // grab the descriptors), so does a pid that is not ours.
    let Some(pid) = &vars.listen_pid else {
        return Ok(Vec::new());
    };
    let parsed: u32 = pid
        .parse()
        .map_err(|e| invalid("LISTEN_PID", pid, format!("not a pid ({e})")))?;
    if parsed != my_pid {
        return Ok(Vec::new());
    }
    let count: usize = fds
        .parse()
        .map_err(|e| invalid("LISTEN_FDS", fds, format!("not a count ({e})")))?;
    // The last descriptor must still be a valid fd number.
    let max = usize::try_from(RawFd::MAX - SD_LISTEN_FDS_START).unwrap_or(usize::MAX);
    if count > max {
        return Err(invalid("LISTEN_FDS", fds, "too large".to_owned()));
    }
    let names: Vec<String> = match &vars.listen_fdnames {
        None => vec![UNKNOWN.to_owned(); count],
        // An empty variable is zero names only when there is nothing to
        // name; otherwise it is one empty name, as sd_listen_fds_with_names
        // reads it.
        Some(names) if names.is_empty() && count == 0 => Vec::new(),
        Some(names) => names.split(':').map(str::to_owned).collect(),
    };
    if names.len() != count {
        return Err(Error::NameCountMismatch {
            names: names.len(),
            fds: count,
        });
    }
    Ok((SD_LISTEN_FDS_START..).zip(names).collect())
}

/// `SERVER_STARTER_PORT=127.0.0.1:5000=3;8080=4;/tmp/app.sock=5`: entries
/// separated by `;`, each `ADDR=FD`. The fd follows the last `=`, so an
/// address may hold `=` itself.
fn plan_server_starter(ports: &str) -> Result<Vec<(RawFd, String)>, Error> {
    let mut plan: Vec<(RawFd, String)> = Vec::new();
    for entry in ports.split(';').filter(|e| !e.is_empty()) {
        let bad = |reason: String| invalid("SERVER_STARTER_PORT", ports, reason);
        let (addr, fd) = entry
            .rsplit_once('=')
            .ok_or_else(|| bad(format!("entry {entry:?} is not ADDR=FD")))?;
        let fd: RawFd = fd
            .parse()
            .ok()
            .filter(|fd| *fd >= 0)
            .ok_or_else(|| bad(format!("entry {entry:?} has no valid fd")))?;
        if addr.is_empty() {
            return Err(bad(format!("entry {entry:?} has no address")));
        }
        // Two owners of one fd would close it twice.
        if plan.iter().any(|(seen, _)| *seen == fd) {
            return Err(bad(format!("fd {fd} appears twice")));
        }
        plan.push((fd, addr.to_owned()));
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn systemd(pid: Option<&str>, fds: &str, names: Option<&str>) -> Vars {
        Vars {
            listen_pid: pid.map(str::to_owned),
            listen_fds: Some(fds.to_owned()),
            listen_fdnames: names.map(str::to_owned),
            server_starter_port: None,
        }
    }

    fn starter(value: &str) -> Vars {
        Vars {
            server_starter_port: Some(value.to_owned()),
            ..Vars::default()
        }
    }

    fn owned(plan: &[(RawFd, &str)]) -> Vec<(RawFd, String)> {
        plan.iter().map(|(fd, n)| (*fd, (*n).to_owned())).collect()
    }

    #[test]
    fn nothing_set_is_empty() {
        assert_eq!(plan(&Vars::default(), 42).unwrap(), vec![]);
    }

    #[test]
    fn names_follow_fds_from_3() {
        let vars = systemd(Some("42"), "2", Some("http:admin"));
        assert_eq!(
            plan(&vars, 42).unwrap(),
            owned(&[(3, "http"), (4, "admin")])
        );
    }

    #[test]
    fn missing_names_are_unknown() {
        let vars = systemd(Some("42"), "2", None);
        assert_eq!(
            plan(&vars, 42).unwrap(),
            owned(&[(3, "unknown"), (4, "unknown")])
        );
    }

    #[test]
    fn unset_pid_means_not_ours() {
        // Unlike listenfd, and like sd_listen_fds.
        let vars = systemd(None, "1", Some("http"));
        assert_eq!(plan(&vars, 42).unwrap(), vec![]);
        // Not even the Server::Starter fallback is read then.
        let mut vars = vars;
        vars.server_starter_port = Some("8080=7".to_owned());
        assert_eq!(plan(&vars, 42).unwrap(), vec![]);
    }

    #[test]
    fn other_pid_means_not_ours() {
        let vars = systemd(Some("41"), "1", Some("http"));
        assert_eq!(plan(&vars, 42).unwrap(), vec![]);
    }

    #[test]
    fn name_count_must_match() {
        let vars = systemd(Some("42"), "2", Some("http"));
        let err = plan(&vars, 42).unwrap_err();
        assert_eq!(
            err.to_string(),
            "LISTEN_FDNAMES has 1 names but LISTEN_FDS is 2"
        );
        let vars = systemd(Some("42"), "1", Some("a:b"));
        assert!(matches!(
            plan(&vars, 42),
            Err(Error::NameCountMismatch { names: 2, fds: 1 })
        ));
    }

    #[test]
    fn empty_names_with_zero_fds() {
        assert_eq!(plan(&systemd(Some("1"), "0", Some("")), 1).unwrap(), vec![]);
        // One empty name for one fd, as systemd writes it.
        assert_eq!(
            plan(&systemd(Some("1"), "1", Some("")), 1).unwrap(),
            owned(&[(3, "")])
        );
    }

    #[test]
    fn garbage_is_an_error() {
        let err = plan(&systemd(Some("abc"), "1", None), 1).unwrap_err();
        assert!(err.to_string().starts_with("LISTEN_PID=\"abc\" is invalid"));
        assert!(plan(&systemd(Some("1"), "-1", None), 1).is_err());
        assert!(plan(&systemd(Some("1"), "99999999999", None), 1).is_err());
        assert!(plan(&systemd(Some("1"), "", None), 1).is_err());
    }

    #[test]
    fn listen_fds_wins_over_server_starter() {
        let mut vars = systemd(Some("1"), "1", Some("http"));
        vars.server_starter_port = Some("8080=7".to_owned());
        assert_eq!(plan(&vars, 1).unwrap(), owned(&[(3, "http")]));
    }

    #[test]
    fn server_starter_entries() {
        let vars = starter("127.0.0.1:5000=3;8080=4;[::1]:80=5;/tmp/a=b.sock=6;");
        assert_eq!(
            plan(&vars, 1).unwrap(),
            owned(&[
                (3, "127.0.0.1:5000"),
                (4, "8080"),
                (5, "[::1]:80"),
                (6, "/tmp/a=b.sock"),
            ])
        );
    }

    #[test]
    fn server_starter_errors() {
        for bad in ["8080", "8080=x", "=3", "8080=-1", "a=3;b=3"] {
            let err = plan(&starter(bad), 1).unwrap_err();
            assert!(
                matches!(
                    err,
                    Error::InvalidVar {
                        var: "SERVER_STARTER_PORT",
                        ..
                    }
                ),
                "{bad}: {err}"
            );
        }
    }
}
