//! The `BATON_*` environment variables: the layer between the command line
//! and the config file (flag > environment > file > default).
//!
//! Each setting of `baton run` that the file has, except the command and
//! the lists (`listen`, `watch`, `ignore`, `ext`), may come from
//! `BATON_<KEY>` (`forward_signal`, a list, comma-separated): `ready_timeout` from `BATON_READY_TIMEOUT`. They are read
//! once, at start; a reload re-reads the file only. baton reads them itself
//! rather than through clap's `env`, for two reasons: an error names the
//! variable, not a flag the user never gave, and an empty variable counts
//! as unset (what systemd's `Environment=BATON_X=` means).

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;

use crate::cli::{self, RunArgs};

/// The config-file keys that have a variable, in `baton run --help` order.
pub const KEYS: [&str; 18] = [
    "backlog",
    "unix_mode",
    "ready",
    "ready_timeout",
    "preload",
    "stop_signal",
    "drain_timeout",
    "max_draining",
    "watchdog",
    "start_limit",
    "name",
    "control",
    "control_mode",
    "metrics",
    "debounce",
    "build",
    "min_interval",
    "forward_signal",
];

/// The variable of a key: `BATON_` and the key in capitals.
pub fn variable(key: &str) -> String {
    format!("BATON_{}", key.to_ascii_uppercase())
}

/// A variable whose value is not valid for its setting.
#[derive(Debug, thiserror::Error)]
#[error("{variable}={value}: {message}")]
pub struct EnvError {
    variable: String,
    value: String,
    message: String,
}

/// Fill each option the command line left out from its variable.
/// `lookup` is [`std::env::var_os`], or a map in tests.
pub fn fill(args: &mut RunArgs, lookup: impl Fn(&str) -> Option<OsString>) -> Result<(), EnvError> {
    let vars = Vars(&lookup);
    vars.fill(&mut args.backlog, "backlog", cli::parse_count)?;
    vars.fill(&mut args.unix_mode, "unix_mode", cli::parse_mode)?;
    vars.fill(&mut args.ready, "ready", cli::parse_readiness)?;
    vars.fill(&mut args.ready_timeout, "ready_timeout", cli::parse_timeout)?;
    vars.fill(&mut args.preload, "preload", cli::parse_switch)?;
    vars.fill(&mut args.stop_signal, "stop_signal", cli::parse_signal)?;
    vars.fill(
        &mut args.drain_timeout,
        "drain_timeout",
        cli::parse_duration,
    )?;
    vars.fill(&mut args.max_draining, "max_draining", cli::parse_count)?;
    vars.fill(&mut args.watchdog, "watchdog", cli::parse_duration)?;
    vars.fill(&mut args.start_limit, "start_limit", cli::parse_count)?;
    vars.fill(&mut args.name, "name", cli::parse_name)?;
    if args.control.is_none() {
        // A path need not be UTF-8.
        args.control = vars.get("control").map(PathBuf::from);
    }
    vars.fill(&mut args.control_mode, "control_mode", cli::parse_mode)?;
    vars.fill(&mut args.metrics, "metrics", |text| {
        text.parse::<SocketAddr>().map_err(|e| e.to_string())
    })?;
    vars.fill(&mut args.debounce, "debounce", cli::parse_duration)?;
    vars.fill(&mut args.build, "build", |text| Ok(text.to_owned()))?;
    vars.fill(&mut args.min_interval, "min_interval", cli::parse_duration)?;
    let mut forward = None;
    vars.fill(&mut forward, "forward_signal", cli::parse_forward_signals)?;
    if args.forward_signal.is_empty() {
        args.forward_signal = forward.unwrap_or_default();
    }
    Ok(())
}

struct Vars<'a>(&'a dyn Fn(&str) -> Option<OsString>);

impl Vars<'_> {
    /// The variable of `key`, unless unset or empty.
    fn get(&self, key: &str) -> Option<OsString> {
        (self.0)(&variable(key)).filter(|value| !value.is_empty())
    }

    fn fill<T>(
        &self,
        slot: &mut Option<T>,
        key: &str,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Result<(), EnvError> {
        if slot.is_some() {
            return Ok(());
        }
        let Some(value) = self.get(key) else {
            return Ok(());
        };
        let error = |message: String| EnvError {
            variable: variable(key),
            value: value.to_string_lossy().into_owned(),
            message,
        };
        let text = value
            .to_str()
            .ok_or_else(|| error("not UTF-8".to_owned()))?;
        *slot = Some(parse(text).map_err(error)?);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::collections::BTreeMap;
    use std::time::Duration;

    use clap::Parser;

    use super::*;

    fn run_args(args: &[&str]) -> RunArgs {
        let mut argv = vec!["baton", "run"];
        argv.extend(args);
        match cli::Cli::parse_from(argv).command {
            cli::Command::Run(args) => *args,
            _ => unreachable!(),
        }
    }

    #[test]
    fn each_key_has_its_variable_and_fills_its_option() {
        let values = BTreeMap::from([
            ("BATON_BACKLOG", "7"),
            ("BATON_UNIX_MODE", "0640"),
            ("BATON_READY", "notify"),
            ("BATON_READY_TIMEOUT", "5s"),
            ("BATON_PRELOAD", "yes"),
            ("BATON_STOP_SIGNAL", "QUIT"),
            ("BATON_DRAIN_TIMEOUT", "6s"),
            ("BATON_MAX_DRAINING", "2"),
            ("BATON_WATCHDOG", "10s"),
            ("BATON_START_LIMIT", "3"),
            ("BATON_NAME", "app"),
            ("BATON_CONTROL", "/run/app.sock"),
            ("BATON_CONTROL_MODE", "0660"),
            ("BATON_METRICS", "127.0.0.1:9100"),
            ("BATON_DEBOUNCE", "50ms"),
            ("BATON_BUILD", "make"),
            ("BATON_MIN_INTERVAL", "2s"),
            ("BATON_FORWARD_SIGNAL", "USR2,WINCH"),
        ]);
        let asked = RefCell::new(Vec::new());
        let mut args = run_args(&["--config", "baton.toml"]);
        fill(&mut args, |name| {
            asked.borrow_mut().push(name.to_owned());
            values.get(name).map(OsString::from)
        })
        .unwrap();
        let expected: Vec<String> = KEYS.iter().map(|k| variable(k)).collect();
        assert_eq!(asked.into_inner(), expected, "each key, in order");
        let debug = format!("{args:?}");
        assert!(!debug.contains("None"), "an option left unfilled: {debug}");
        assert_eq!(args.ready_timeout, Some(Duration::from_secs(5)));
        assert_eq!(args.control, Some(PathBuf::from("/run/app.sock")));
        use nix::sys::signal::Signal;
        assert_eq!(
            args.forward_signal,
            [Signal::SIGUSR2 as i32, Signal::SIGWINCH as i32]
        );
    }

    #[test]
    fn a_flag_wins_and_an_empty_variable_is_unset() {
        let mut args = run_args(&["--ready-timeout", "9s"]);
        fill(&mut args, |name| match name {
            "BATON_READY_TIMEOUT" => Some("5s".into()),
            "BATON_DRAIN_TIMEOUT" => Some("".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(args.ready_timeout, Some(Duration::from_secs(9)));
        assert_eq!(args.drain_timeout, None);
    }

    #[test]
    fn a_bad_value_names_the_variable() {
        let mut args = run_args(&[]);
        let err = fill(&mut args, |name| {
            (name == "BATON_MAX_DRAINING").then(|| "0".into())
        })
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "BATON_MAX_DRAINING=0: expected a whole number of at least 1"
        );
        // A flag given makes the variable irrelevant, valid or not.
        let mut args = run_args(&["--max-draining", "3"]);
        fill(&mut args, |name| {
            (name == "BATON_MAX_DRAINING").then(|| "0".into())
        })
        .unwrap();
        assert_eq!(args.max_draining.map(|n| n.get()), Some(3));
    }
}
