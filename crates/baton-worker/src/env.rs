//! Reading the hand-over protocols from the environment: which descriptors
//! are ours and what they are called. Pure parsing, no descriptor is touched
//! here, so all of it is unit-tested. systemd's protocol is read by
//! [`baton_sd::listen_fds`], the same reading the supervisor uses.

use std::ffi::OsString;
use std::os::fd::RawFd;

use baton_sd::ActivationError;

use crate::Error;

/// Server::Starter's variable breaks its protocol: the same error as a bad
/// systemd variable.
fn invalid(var: &'static str, value: &str, reason: String) -> Error {
    Error::Handover(ActivationError::InvalidVar {
        var,
        value: value.to_owned(),
        reason,
    })
}

/// Which descriptors to take, with their names, in hand-over order;
/// `lookup` gives the value of a variable, `my_pid` is this process's pid.
///
/// systemd's `LISTEN_FDS` wins, read as [`baton_sd::listen_fds`] says:
/// sockets addressed to another process (a `LISTEN_PID` that is unset or
/// not `my_pid`: we inherited the variables from a parent that was the
/// addressee) give an empty list. `SERVER_STARTER_PORT` is read only when
/// `LISTEN_FDS` is absent.
pub(crate) fn inherited_sockets(
    lookup: impl Fn(&str) -> Option<OsString>,
    my_pid: u32,
) -> Result<Vec<(RawFd, String)>, Error> {
    if lookup("LISTEN_FDS").is_some() {
        let fds = baton_sd::listen_fds(lookup, my_pid)?;
        return Ok(fds.into_iter().map(|l| (l.fd, l.name)).collect());
    }
    match lookup("SERVER_STARTER_PORT") {
        Some(ports) => {
            let ports = ports.into_string().map_err(|v| {
                invalid(
                    "SERVER_STARTER_PORT",
                    &v.to_string_lossy(),
                    "not valid UTF-8".to_owned(),
                )
            })?;
            plan_server_starter(&ports)
        }
        None => Ok(Vec::new()),
    }
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

    /// The environment `vars` describe, and nothing else.
    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<OsString> + use<> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |name| {
            vars.iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| OsString::from(v))
        }
    }

    fn systemd(pid: Option<&str>, fds: &str, names: Option<&str>) -> Vec<(String, String)> {
        let mut vars = vec![("LISTEN_FDS".to_owned(), fds.to_owned())];
        if let Some(pid) = pid {
            vars.push(("LISTEN_PID".to_owned(), pid.to_owned()));
        }
        if let Some(names) = names {
            vars.push(("LISTEN_FDNAMES".to_owned(), names.to_owned()));
        }
        vars
    }

    fn plan_of(vars: &[(String, String)], pid: u32) -> Result<Vec<(RawFd, String)>, Error> {
        let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (&**k, &**v)).collect();
        inherited_sockets(env(&vars), pid)
    }

    fn starter(value: &str) -> Result<Vec<(RawFd, String)>, Error> {
        inherited_sockets(env(&[("SERVER_STARTER_PORT", value)]), 1)
    }

    fn owned(plan: &[(RawFd, &str)]) -> Vec<(RawFd, String)> {
        plan.iter().map(|(fd, n)| (*fd, (*n).to_owned())).collect()
    }

    // systemd's protocol itself is tested in baton_sd; these check that the
    // worker reads it through there and reports its errors as its own.

    #[test]
    fn nothing_set_is_empty() {
        assert_eq!(inherited_sockets(env(&[]), 42).unwrap(), vec![]);
    }

    #[test]
    fn names_follow_fds_from_3() {
        let vars = systemd(Some("42"), "2", Some("http:admin"));
        assert_eq!(
            plan_of(&vars, 42).unwrap(),
            owned(&[(3, "http"), (4, "admin")])
        );
    }

    #[test]
    fn missing_names_are_unknown() {
        let vars = systemd(Some("42"), "2", None);
        assert_eq!(
            plan_of(&vars, 42).unwrap(),
            owned(&[(3, "unknown"), (4, "unknown")])
        );
    }

    #[test]
    fn unset_pid_means_not_ours() {
        // Unlike listenfd, and like sd_listen_fds.
        let mut vars = systemd(None, "1", Some("http"));
        assert_eq!(plan_of(&vars, 42).unwrap(), vec![]);
        // Not even the Server::Starter fallback is read then.
        vars.push(("SERVER_STARTER_PORT".to_owned(), "8080=7".to_owned()));
        assert_eq!(plan_of(&vars, 42).unwrap(), vec![]);
    }

    #[test]
    fn other_pid_means_not_ours() {
        let vars = systemd(Some("41"), "1", Some("http"));
        assert_eq!(plan_of(&vars, 42).unwrap(), vec![]);
    }

    #[test]
    fn name_count_must_match() {
        let vars = systemd(Some("42"), "2", Some("http"));
        let err = plan_of(&vars, 42).unwrap_err();
        assert_eq!(
            err.to_string(),
            "LISTEN_FDNAMES has 1 names but LISTEN_FDS is 2"
        );
        let vars = systemd(Some("42"), "1", Some("a:b"));
        assert!(matches!(
            plan_of(&vars, 42),
            Err(Error::Handover(ActivationError::NameCountMismatch {
                names: 2,
                fds: 1
            }))
        ));
    }

    #[test]
    fn empty_names_with_zero_fds() {
        assert_eq!(
            plan_of(&systemd(Some("1"), "0", Some("")), 1).unwrap(),
            vec![]
        );
        // One empty name for one fd: no name, so `unknown`, as the
        // supervisor reads it.
        assert_eq!(
            plan_of(&systemd(Some("1"), "1", Some("")), 1).unwrap(),
            owned(&[(3, "unknown")])
        );
    }

    #[test]
    fn garbage_is_an_error() {
        let err = plan_of(&systemd(Some("abc"), "1", None), 1).unwrap_err();
        assert!(err.to_string().starts_with("LISTEN_PID=\"abc\" is invalid"));
        assert!(matches!(
            err,
            Error::Handover(ActivationError::InvalidVar {
                var: "LISTEN_PID",
                ..
            })
        ));
        assert!(plan_of(&systemd(Some(""), "1", None), 1).is_err());
        assert!(plan_of(&systemd(Some("1"), "-1", None), 1).is_err());
        assert!(plan_of(&systemd(Some("1"), "99999999999", None), 1).is_err());
        assert!(plan_of(&systemd(Some("1"), "", None), 1).is_err());
    }

    #[test]
    fn listen_fds_wins_over_server_starter() {
        let mut vars = systemd(Some("1"), "1", Some("http"));
        vars.push(("SERVER_STARTER_PORT".to_owned(), "8080=7".to_owned()));
        assert_eq!(plan_of(&vars, 1).unwrap(), owned(&[(3, "http")]));
    }

    #[test]
    fn server_starter_entries() {
        assert_eq!(
            starter("127.0.0.1:5000=3;8080=4;[::1]:80=5;/tmp/a=b.sock=6;").unwrap(),
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
            let err = starter(bad).unwrap_err();
            assert!(
                matches!(
                    err,
                    Error::Handover(ActivationError::InvalidVar {
                        var: "SERVER_STARTER_PORT",
                        ..
                    })
                ),
                "{bad}: {err}"
            );
        }
    }
}
