//! The `BATON_*` environment variables: the layer between the command line
//! and the config file (flag > environment > file > default).
//!
//! Every option of `baton run` may come from `BATON_<OPTION>`:
//! `--ready-timeout` from `BATON_READY_TIMEOUT`, the worker's command from
//! `BATON_COMMAND`; `--log-format` and `--log-level` from
//! `BATON_LOG_FORMAT` and `BATON_LOG_LEVEL` ([`fill_global`]). A list
//! (`listen`, `watch`, `ignore`, `ext`, `forward_signal`) is
//! comma-separated, each item trimmed (a comma inside `{…}` of an
//! `ignore` glob does not separate); the command is split into words as a
//! POSIX shell would, quotes and backslashes included, without expanding
//! anything. They are read once, at start; a reload re-reads the file only.
//! baton reads them itself rather than through clap's `env`, for two
//! reasons: an error names the variable, not a flag the user never gave,
//! and an empty variable counts as unset (what systemd's
//! `Environment=BATON_X=` means).

use std::ffi::OsString;
use std::net::SocketAddr;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use clap::ValueEnum;

use crate::cli::{self, Cli, CtlArgs, LogFormat, RunArgs};

/// The options of `baton run` (by id) that have a variable, in `baton run
/// --help` order: every one.
pub const KEYS: [&str; 26] = [
    "config",
    "listen",
    "backlog",
    "unix_mode",
    "ready",
    "ready_timeout",
    "stop_signal",
    "drain_timeout",
    "max_draining",
    "watchdog",
    "start_limit",
    "name",
    "control",
    "control_mode",
    "pid_file",
    "metrics",
    "watch",
    "ignore",
    "ext",
    "debounce",
    "build",
    "min_interval",
    "forward_signal",
    "user",
    "group",
    "command",
];

/// The global options that have a variable.
pub const GLOBAL_KEYS: [&str; 2] = ["log_format", "log_level"];

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
    vars.fill_path(&mut args.config, "config");
    vars.fill_list(&mut args.listen, "listen", cli::parse_listener)?;
    vars.fill(&mut args.backlog, "backlog", cli::parse_count)?;
    vars.fill(&mut args.unix_mode, "unix_mode", cli::parse_mode)?;
    vars.fill(&mut args.ready, "ready", cli::parse_readiness)?;
    vars.fill(&mut args.ready_timeout, "ready_timeout", cli::parse_timeout)?;
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
    vars.fill_path(&mut args.control, "control");
    vars.fill(&mut args.control_mode, "control_mode", cli::parse_mode)?;
    vars.fill_path(&mut args.pid_file, "pid_file");
    vars.fill(&mut args.metrics, "metrics", |text| {
        text.parse::<SocketAddr>().map_err(|e| e.to_string())
    })?;
    if args.watch.is_empty()
        && let Some(value) = vars.get("watch")
    {
        // Paths need not be UTF-8: split the bytes.
        args.watch = value
            .as_bytes()
            .split(|&b| b == b',')
            .map(|item| item.trim_ascii())
            .filter(|item| !item.is_empty())
            .map(|item| PathBuf::from(std::ffi::OsStr::from_bytes(item)))
            .collect();
    }
    vars.fill_list(&mut args.ignore, "ignore", |glob| Ok(glob.to_owned()))?;
    vars.fill_list(&mut args.ext, "ext", |ext| Ok(ext.to_owned()))?;
    vars.fill(&mut args.debounce, "debounce", cli::parse_duration)?;
    vars.fill(&mut args.build, "build", |text| Ok(text.to_owned()))?;
    vars.fill(&mut args.min_interval, "min_interval", cli::parse_duration)?;
    vars.fill_list(
        &mut args.forward_signal,
        "forward_signal",
        cli::parse_forward_signal,
    )?;
    vars.fill(&mut args.user, "user", |text| Ok(text.to_owned()))?;
    vars.fill(&mut args.group, "group", |text| Ok(text.to_owned()))?;
    let mut command = None;
    vars.fill(&mut command, "command", parse_command)?;
    if args.command.is_empty() {
        args.command = command.unwrap_or_default();
    }
    Ok(())
}

/// Fill `--log-format` and `--log-level` from their variables unless the
/// command line gave them (`given` says which it did).
pub fn fill_global(
    cli: &mut Cli,
    given: impl Fn(&str) -> bool,
    lookup: impl Fn(&str) -> Option<OsString>,
) -> Result<(), EnvError> {
    let vars = Vars(&lookup);
    if !given("log_format") {
        let mut format = None;
        vars.fill(&mut format, "log_format", |text| {
            LogFormat::from_str(text, true).map_err(|_| "expected `text` or `json`".to_owned())
        })?;
        cli.log_format = format.unwrap_or(cli.log_format);
    }
    if !given("log_level") {
        let mut level = None;
        vars.fill(&mut level, "log_level", cli::parse_log_level)?;
        cli.log_level = level.unwrap_or_else(|| cli.log_level.clone());
    }
    Ok(())
}

/// Fill `baton ctl`'s `--control` and `--name` from `BATON_CONTROL` and
/// `BATON_NAME`, as `baton run` does.
pub fn fill_ctl(
    args: &mut CtlArgs,
    lookup: impl Fn(&str) -> Option<OsString>,
) -> Result<(), EnvError> {
    let vars = Vars(&lookup);
    vars.fill_path(&mut args.control, "control");
    vars.fill(&mut args.name, "name", cli::parse_name)
}

/// `BATON_COMMAND`: words as a POSIX shell splits them (quotes,
/// backslashes), with nothing expanded.
pub fn parse_command(text: &str) -> Result<Vec<OsString>, String> {
    match shlex::split(text) {
        Some(words) if !words.is_empty() => Ok(words.into_iter().map(OsString::from).collect()),
        Some(_) => Err("expected a command, e.g. BATON_COMMAND='./server --port 8080'".to_owned()),
        None => Err(
            "unbalanced quotes: quote as a POSIX shell does, e.g. './server --name \"my app\"'"
                .to_owned(),
        ),
    }
}

/// The items of a list variable: comma-separated, each trimmed, empty ones
/// dropped; a comma inside `{…}` (a glob's alternatives) does not separate.
pub fn split_list(text: &str) -> Vec<&str> {
    let (mut items, mut depth, mut start) = (Vec::new(), 0usize, 0);
    for (at, c) in text.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                items.push(&text[start..at]);
                start = at + 1;
            }
            _ => {}
        }
    }
    items.push(&text[start..]);
    items
        .into_iter()
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .collect()
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

    /// A path, which need not be UTF-8.
    fn fill_path(&self, slot: &mut Option<PathBuf>, key: &str) {
        if slot.is_none() {
            *slot = self.get(key).map(PathBuf::from);
        }
    }

    /// A list the command line left empty.
    fn fill_list<T>(
        &self,
        slot: &mut Vec<T>,
        key: &str,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Result<(), EnvError> {
        if !slot.is_empty() {
            return Ok(());
        }
        let mut items = None;
        self.fill(&mut items, key, |text| {
            split_list(text).into_iter().map(&parse).collect()
        })?;
        *slot = items.unwrap_or_default();
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
            ("BATON_CONFIG", "/etc/baton/app.toml"),
            ("BATON_LISTEN", "http=:8080"),
            ("BATON_PID_FILE", "/run/app.pid"),
            ("BATON_WATCH", "src"),
            ("BATON_IGNORE", "*.log"),
            ("BATON_EXT", "rs"),
            ("BATON_COMMAND", "./server --port 8080"),
            ("BATON_BACKLOG", "7"),
            ("BATON_UNIX_MODE", "0640"),
            ("BATON_READY", "notify"),
            ("BATON_READY_TIMEOUT", "5s"),
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
            ("BATON_USER", "www-data"),
            ("BATON_GROUP", "www-data"),
        ]);
        let asked = RefCell::new(Vec::new());
        let mut args = run_args(&[]);
        fill(&mut args, |name| {
            asked.borrow_mut().push(name.to_owned());
            values.get(name).map(OsString::from)
        })
        .unwrap();
        let expected: Vec<String> = KEYS.iter().map(|k| variable(k)).collect();
        assert_eq!(asked.into_inner(), expected, "each key, in order");
        let debug = format!("{args:?}");
        assert!(!debug.contains("None"), "an option left unfilled: {debug}");
        assert!(!debug.contains("[]"), "a list left unfilled: {debug}");
        assert_eq!(args.ready_timeout, Some(Duration::from_secs(5)));
        assert_eq!(args.control, Some(PathBuf::from("/run/app.sock")));
        use nix::sys::signal::Signal;
        assert_eq!(
            args.forward_signal,
            [Signal::SIGUSR2 as i32, Signal::SIGWINCH as i32]
        );
    }

    #[test]
    fn lists_are_comma_separated_and_the_command_is_split_like_a_shell() {
        let mut args = run_args(&[]);
        fill(&mut args, |name| {
            Some(match name {
                "BATON_LISTEN" => "http=:8080, admin=unix:/run/app/admin.sock,".into(),
                "BATON_IGNORE" => "*.{js,css}, tmp/**".into(),
                "BATON_EXT" => "rs,toml".into(),
                "BATON_WATCH" => "src, templates".into(),
                "BATON_COMMAND" => r#"./server --name "my app" 'a b' c\ d"#.into(),
                _ => return None,
            })
        })
        .unwrap();
        assert_eq!(
            args.listen,
            ["http=:8080", "admin=unix:/run/app/admin.sock"]
        );
        assert_eq!(args.ignore, ["*.{js,css}", "tmp/**"]);
        assert_eq!(args.ext, ["rs", "toml"]);
        assert_eq!(
            args.watch,
            [PathBuf::from("src"), PathBuf::from("templates")]
        );
        assert_eq!(args.command, ["./server", "--name", "my app", "a b", "c d"]);

        // The command line wins, list or command.
        let mut args = run_args(&["--listen", ":1", "--ext", "py", "app", "-x"]);
        fill(&mut args, |name| match name {
            "BATON_LISTEN" | "BATON_EXT" | "BATON_COMMAND" => Some("other".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(args.listen, [":1"]);
        assert_eq!(args.ext, ["py"]);
        assert_eq!(args.command, ["app", "-x"]);

        for (name, value, says) in [
            ("BATON_COMMAND", "./server 'open", "unbalanced quotes"),
            ("BATON_COMMAND", "  ", "expected a command"),
            ("BATON_LISTEN", "http=:8080,nohost:1", "invalid listener"),
            (
                "BATON_FORWARD_SIGNAL",
                "USR2,TERM",
                "SIGTERM acts on baton itself",
            ),
        ] {
            let mut args = run_args(&[]);
            let result = fill(&mut args, |n| (n == name).then(|| value.into()));
            let err = result.unwrap_err().to_string();
            assert!(err.starts_with(&format!("{name}={value}: ")), "{err}");
            assert!(err.contains(says), "{err}");
        }
    }

    #[test]
    fn the_log_options_come_from_their_variables_unless_given() {
        let mut cli = cli::Cli::parse_from(["baton", "ctl", "status"]);
        let vars = |name: &str| match name {
            "BATON_LOG_FORMAT" => Some("json".into()),
            "BATON_LOG_LEVEL" => Some("debug".into()),
            _ => None,
        };
        fill_global(&mut cli, |_| false, vars).unwrap();
        assert_eq!(cli.log_format, LogFormat::Json);
        assert_eq!(cli.log_level, "debug");
        let mut cli = cli::Cli::parse_from(["baton", "--log-level", "warn", "ctl", "status"]);
        fill_global(&mut cli, |id| id == "log_level", vars).unwrap();
        assert_eq!(cli.log_level, "warn");
        let err = fill_global(
            &mut cli,
            |_| false,
            |name| (name == "BATON_LOG_FORMAT").then(|| "xml".into()),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "BATON_LOG_FORMAT=xml: expected `text` or `json`"
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
