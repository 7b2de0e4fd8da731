//! Socket activation: which descriptors a process was handed, and their
//! names, from `LISTEN_FDS`, `LISTEN_PID` and `LISTEN_FDNAMES`. The
//! semantics are in the [crate documentation](crate).

use std::ffi::OsString;
use std::os::fd::RawFd;

/// The first descriptor passed (`SD_LISTEN_FDS_START`): after stdin,
/// stdout and stderr.
pub const LISTEN_FDS_START: RawFd = 3;

/// The name of a descriptor that was passed without one, as systemd
/// spells it.
pub const UNKNOWN_NAME: &str = "unknown";

/// The largest `LISTEN_FDS` whose descriptors all have `int` numbers with
/// room to spare, as `sd_listen_fds` allows.
const MAX_COUNT: u64 = (RawFd::MAX - LISTEN_FDS_START) as u64;

/// One descriptor passed by socket activation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenFd {
    /// The descriptor number: 3, 4, … in `LISTEN_FDNAMES` order.
    pub fd: RawFd,
    /// Its name in `LISTEN_FDNAMES`; [`UNKNOWN_NAME`] when none was given.
    pub name: String,
}

/// The socket-activation variables are addressed to this process and do
/// not make sense.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ActivationError {
    /// A variable does not parse.
    #[error("{var}={value:?} is invalid: {reason}")]
    InvalidVar {
        /// `LISTEN_PID`, `LISTEN_FDS` or `LISTEN_FDNAMES`.
        var: &'static str,
        /// Its value (lossily converted if it was not UTF-8).
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// `LISTEN_FDNAMES` does not name every descriptor of `LISTEN_FDS`.
    #[error("LISTEN_FDNAMES has {names} names but LISTEN_FDS is {fds}")]
    NameCountMismatch {
        /// How many names `LISTEN_FDNAMES` holds.
        names: usize,
        /// The value of `LISTEN_FDS`.
        fds: usize,
    },
}

/// [`listen_fds`] of this process: its environment and its pid.
pub fn listen_fds_from_env() -> Result<Vec<ListenFd>, ActivationError> {
    listen_fds(|name| std::env::var_os(name), std::process::id())
}

/// The descriptors handed to the process `own_pid`, with their names, in
/// order; `lookup` gives the value of a variable. Empty when nothing was
/// handed over or it was meant for another process. The rules, step by
/// step, are in the [crate documentation](crate).
pub fn listen_fds(
    lookup: impl Fn(&str) -> Option<OsString>,
    own_pid: u32,
) -> Result<Vec<ListenFd>, ActivationError> {
    let Some(fds) = lookup("LISTEN_FDS") else {
        return Ok(Vec::new());
    };
    let Some(pid) = lookup("LISTEN_PID") else {
        return Ok(Vec::new());
    };
    let pid = utf8("LISTEN_PID", pid)?;
    let parsed = decimal(&pid)
        .filter(|&p| (1..=i32::MAX as u64).contains(&p))
        .ok_or_else(|| invalid("LISTEN_PID", &pid, "not a pid (a positive decimal number)"))?;
    if parsed != u64::from(own_pid) {
        return Ok(Vec::new());
    }
    let fds = utf8("LISTEN_FDS", fds)?;
    let count = decimal(&fds).filter(|&n| n <= MAX_COUNT).ok_or_else(|| {
        invalid(
            "LISTEN_FDS",
            &fds,
            &format!("not a count of descriptors (0 to {MAX_COUNT})"),
        )
    })?;
    // At most MAX_COUNT, so it fits.
    let count = count as usize;
    if count == 0 {
        return Ok(Vec::new());
    }
    let names: Vec<String> = match lookup("LISTEN_FDNAMES") {
        None => vec![UNKNOWN_NAME.to_owned(); count],
        Some(names) => {
            let names = utf8("LISTEN_FDNAMES", names)?;
            let names: Vec<&str> = names.split(':').collect();
            if names.len() != count {
                return Err(ActivationError::NameCountMismatch {
                    names: names.len(),
                    fds: count,
                });
            }
            names
                .into_iter()
                .map(|n| if n.is_empty() { UNKNOWN_NAME } else { n })
                .map(str::to_owned)
                .collect()
        }
    };
    Ok((LISTEN_FDS_START..)
        .zip(names)
        .map(|(fd, name)| ListenFd { fd, name })
        .collect())
}

/// Whether `name` may name a descriptor in `FDNAME=` and `LISTEN_FDNAMES`:
/// 1 to 255 printable ASCII characters (no space), none of them `:` (the
/// separator of `LISTEN_FDNAMES`).
pub fn is_fd_name(name: &str) -> bool {
    (1..=255).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_graphic() && b != b':')
}

fn utf8(var: &'static str, value: OsString) -> Result<String, ActivationError> {
    value
        .into_string()
        .map_err(|v| invalid(var, &v.to_string_lossy(), "not valid UTF-8"))
}

/// Only ASCII digits: no sign, no space, nothing else (`str::parse` would
/// take a leading `+`).
fn decimal(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

fn invalid(var: &'static str, value: &str, reason: &str) -> ActivationError {
    ActivationError::InvalidVar {
        var,
        value: value.to_owned(),
        reason: reason.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStringExt;

    const ME: u32 = 4242;

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

    /// `LISTEN_PID` = our pid, and these.
    fn ours(vars: &[(&str, &str)]) -> Result<Vec<ListenFd>, ActivationError> {
        let pid = ME.to_string();
        let mut all = vec![("LISTEN_PID", pid.as_str())];
        all.extend_from_slice(vars);
        listen_fds(env(&all), ME)
    }

    fn named(list: &[(RawFd, &str)]) -> Vec<ListenFd> {
        list.iter()
            .map(|&(fd, name)| ListenFd {
                fd,
                name: name.to_owned(),
            })
            .collect()
    }

    fn invalid_var(result: Result<Vec<ListenFd>, ActivationError>) -> &'static str {
        match result {
            Err(ActivationError::InvalidVar { var, .. }) => var,
            other => panic!("expected InvalidVar, got {other:?}"),
        }
    }

    #[test]
    fn nothing_set_is_nothing_passed() {
        assert_eq!(listen_fds(env(&[]), ME).unwrap(), vec![]);
        // LISTEN_PID alone passes nothing, whatever it holds.
        for pid in ["4242", "", "garbage"] {
            assert_eq!(listen_fds(env(&[("LISTEN_PID", pid)]), ME).unwrap(), vec![]);
        }
        // Nor do names alone.
        assert_eq!(ours(&[("LISTEN_FDNAMES", "http")]).unwrap(), vec![]);
    }

    #[test]
    fn an_unset_listen_pid_means_not_for_us() {
        let vars = env(&[("LISTEN_FDS", "2"), ("LISTEN_FDNAMES", "a:b")]);
        assert_eq!(listen_fds(vars, ME).unwrap(), vec![]);
        // Even when the rest is garbage: it is not ours to judge.
        let vars = env(&[("LISTEN_FDS", "many"), ("LISTEN_FDNAMES", "x")]);
        assert_eq!(listen_fds(vars, ME).unwrap(), vec![]);
    }

    #[test]
    fn another_pid_means_not_for_us() {
        for other in ["1", "4241", "4243", "42420", "2147483647"] {
            let vars = env(&[("LISTEN_PID", other), ("LISTEN_FDS", "1")]);
            assert_eq!(listen_fds(vars, ME).unwrap(), vec![], "{other}");
        }
        // Not ours, so garbage elsewhere does not matter.
        let vars = env(&[
            ("LISTEN_PID", "1"),
            ("LISTEN_FDS", "-3"),
            ("LISTEN_FDNAMES", "a:b:c:d"),
        ]);
        assert_eq!(listen_fds(vars, ME).unwrap(), vec![]);
    }

    #[test]
    fn a_listen_pid_that_is_no_pid_is_an_error() {
        for bad in [
            "",
            " ",
            "abc",
            "0",
            "-1",
            "+4242",
            " 4242",
            "4242 ",
            "4242\n",
            "0x1092",
            "4.2",
            "2147483648",
            "99999999999999999999999",
        ] {
            let vars = env(&[("LISTEN_PID", bad), ("LISTEN_FDS", "1")]);
            let result = listen_fds(vars, ME);
            assert_eq!(invalid_var(result), "LISTEN_PID", "{bad:?}");
        }
        let err = listen_fds(env(&[("LISTEN_PID", ""), ("LISTEN_FDS", "1")]), ME).unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"LISTEN_PID="" is invalid: not a pid (a positive decimal number)"#
        );
    }

    #[test]
    fn leading_zeros_still_name_the_pid() {
        let vars = env(&[("LISTEN_PID", "004242"), ("LISTEN_FDS", "1")]);
        assert_eq!(listen_fds(vars, ME).unwrap(), named(&[(3, "unknown")]));
    }

    #[test]
    fn descriptors_count_from_3_in_order() {
        assert_eq!(
            ours(&[("LISTEN_FDS", "3")]).unwrap(),
            named(&[(3, "unknown"), (4, "unknown"), (5, "unknown")])
        );
        assert_eq!(
            ours(&[("LISTEN_FDS", "2"), ("LISTEN_FDNAMES", "http:admin")]).unwrap(),
            named(&[(3, "http"), (4, "admin")])
        );
    }

    #[test]
    fn zero_descriptors_is_nothing_passed_and_names_are_not_checked() {
        assert_eq!(ours(&[("LISTEN_FDS", "0")]).unwrap(), vec![]);
        assert_eq!(
            ours(&[("LISTEN_FDS", "0"), ("LISTEN_FDNAMES", "")]).unwrap(),
            vec![]
        );
        assert_eq!(
            ours(&[("LISTEN_FDS", "0"), ("LISTEN_FDNAMES", "a:b")]).unwrap(),
            vec![]
        );
    }

    #[test]
    fn a_count_that_is_no_count_is_an_error() {
        for bad in [
            "",
            "many",
            "-1",
            "+1",
            " 1",
            "1 ",
            "1.0",
            "2147483645",
            "18446744073709551616",
        ] {
            assert_eq!(
                invalid_var(ours(&[("LISTEN_FDS", bad)])),
                "LISTEN_FDS",
                "{bad:?}"
            );
        }
        let err = ours(&[("LISTEN_FDS", "-1")]).unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"LISTEN_FDS="-1" is invalid: not a count of descriptors (0 to 2147483644)"#
        );
    }

    #[test]
    fn names_must_match_the_count() {
        for (fds, names, got) in [
            ("2", "http", 1),
            ("1", "a:b", 2),
            ("2", "", 1),
            ("1", "a:", 2),
            ("3", "a::b:", 4),
        ] {
            let result = ours(&[("LISTEN_FDS", fds), ("LISTEN_FDNAMES", names)]);
            let want = fds.parse().unwrap();
            assert_eq!(
                result,
                Err(ActivationError::NameCountMismatch {
                    names: got,
                    fds: want
                }),
                "{fds} {names:?}"
            );
        }
        let err = ours(&[("LISTEN_FDS", "2"), ("LISTEN_FDNAMES", "http")]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "LISTEN_FDNAMES has 1 names but LISTEN_FDS is 2"
        );
    }

    #[test]
    fn empty_names_are_unknown() {
        // An empty variable is one empty name.
        assert_eq!(
            ours(&[("LISTEN_FDS", "1"), ("LISTEN_FDNAMES", "")]).unwrap(),
            named(&[(3, "unknown")])
        );
        assert_eq!(
            ours(&[("LISTEN_FDS", "3"), ("LISTEN_FDNAMES", ":x:")]).unwrap(),
            named(&[(3, "unknown"), (4, "x"), (5, "unknown")])
        );
    }

    #[test]
    fn names_are_taken_as_they_are() {
        // Repeated names are systemd's way for one unit with two sockets.
        assert_eq!(
            ours(&[("LISTEN_FDS", "3"), ("LISTEN_FDNAMES", "web:web:a b=c")]).unwrap(),
            named(&[(3, "web"), (4, "web"), (5, "a b=c")])
        );
    }

    #[test]
    fn values_must_be_utf8() {
        let bytes = |b: &[u8]| OsString::from_vec(b.to_vec());
        for var in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
            let lookup = |name: &str| match name {
                _ if name == var => Some(bytes(b"\xff")),
                "LISTEN_PID" => Some(ME.to_string().into()),
                "LISTEN_FDS" => Some("1".into()),
                "LISTEN_FDNAMES" => Some("x".into()),
                _ => None,
            };
            let err = listen_fds(lookup, ME).unwrap_err();
            assert!(
                matches!(&err, ActivationError::InvalidVar { var: v, reason, .. }
                    if *v == var && reason == "not valid UTF-8"),
                "{var}: {err}"
            );
        }
    }

    #[test]
    fn only_the_three_variables_are_read() {
        let asked = std::cell::RefCell::new(Vec::new());
        let lookup = |name: &str| {
            asked.borrow_mut().push(name.to_owned());
            match name {
                "LISTEN_PID" => Some(ME.to_string().into()),
                "LISTEN_FDS" => Some("1".into()),
                _ => None,
            }
        };
        listen_fds(lookup, ME).unwrap();
        let mut asked = asked.into_inner();
        asked.sort();
        assert_eq!(asked, ["LISTEN_FDNAMES", "LISTEN_FDS", "LISTEN_PID"]);
    }

    #[test]
    fn fd_names() {
        for good in ["http", "a", "x.y-z_1", "@!~", &"n".repeat(255)] {
            assert!(is_fd_name(good), "{good:?}");
        }
        for bad in ["", "a:b", "with space", "tab\t", "é", &"n".repeat(256)] {
            assert!(!is_fd_name(bad), "{bad:?}");
        }
    }
}
