//! The config file (`--config baton.toml`) and how it merges with the
//! command line: a flag given on the command line wins, then its `BATON_*`
//! environment variable (both read once, at start), then the file (re-read
//! on every reload), then the default.
//!
//! Every value is checked where it enters, by the same `cli::parse_*`
//! function for a flag (through clap), a variable ([`crate::env`]) and a
//! file key (through the deserializer, so the error names the line and
//! key), into a type that cannot hold a bad one. Each default is written
//! once: in [`Settings::default`], [`BindOptions::default`],
//! [`DEFAULT_DEBOUNCE`] or the constants here; [`defaults`] shows them in
//! `baton run --help`.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::path::{Path, PathBuf};
use std::time::Duration;

use baton_supervisor::credentials::{Credentials, CredentialsError};
use baton_supervisor::driver::{Blueprint, DevSettings};
use baton_supervisor::fswatch::{DEFAULT_DEBOUNCE, WatchSettings};
use baton_supervisor::listeners::{self, BindOptions, ListenerSpec};
use baton_supervisor::machine::{Readiness, Settings, StopSignal};
use baton_supervisor::spawn::WorkerCommand;
use serde::Deserialize;

use crate::cli::{self, RunArgs};

mod de;
mod env_table;
mod start_only;

use self::de::{count, duration, forward_signal, listen, mode, name, readiness, signal, timeout};

pub use self::start_only::StartOnly;

/// The largest config file baton reads: anything bigger is not one.
pub const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// The file, as written. Every key is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    command: Option<Vec<String>>,
    workdir: Option<PathBuf>,
    #[serde(default, deserialize_with = "env_table::table")]
    env: BTreeMap<String, String>,
    #[serde(default, deserialize_with = "listen")]
    listen: Vec<String>,
    #[serde(default, deserialize_with = "count")]
    backlog: Option<NonZeroU32>,
    #[serde(default, deserialize_with = "mode")]
    unix_mode: Option<u32>,
    #[serde(default, deserialize_with = "readiness")]
    ready: Option<Readiness>,
    #[serde(default, deserialize_with = "timeout")]
    ready_timeout: Option<Duration>,
    preload: Option<bool>,
    #[serde(default, deserialize_with = "signal")]
    stop_signal: Option<StopSignal>,
    #[serde(default, deserialize_with = "duration")]
    drain_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "count")]
    max_draining: Option<NonZeroUsize>,
    #[serde(default, deserialize_with = "duration")]
    watchdog: Option<Duration>,
    #[serde(default, deserialize_with = "count")]
    start_limit: Option<NonZeroU32>,
    #[serde(default, deserialize_with = "name")]
    name: Option<String>,
    control: Option<PathBuf>,
    #[serde(default, deserialize_with = "mode")]
    control_mode: Option<u32>,
    pid_file: Option<PathBuf>,
    metrics: Option<SocketAddr>,
    #[serde(default)]
    watch: Vec<PathBuf>,
    #[serde(default)]
    ignore: Vec<String>,
    #[serde(default)]
    ext: Vec<String>,
    #[serde(default, deserialize_with = "duration")]
    debounce: Option<Duration>,
    build: Option<String>,
    #[serde(default, deserialize_with = "duration")]
    min_interval: Option<Duration>,
    #[serde(default, deserialize_with = "forward_signal")]
    forward_signal: Vec<i32>,
    user: Option<String>,
    group: Option<String>,
}

/// The control socket's mode when no flag, variable or file sets it.
pub const DEFAULT_CONTROL_MODE: u32 = 0o600;

/// The least time between watch-triggered reloads when no flag, variable
/// or file sets it.
pub const DEFAULT_MIN_INTERVAL: Duration = Duration::from_secs(1);

/// Each `baton run` option with a fixed default (by its id), and that
/// default as it would be written on the command line.
pub fn defaults() -> [(&'static str, String); 10] {
    let settings = Settings::default();
    [
        ("backlog", BindOptions::default().backlog.to_string()),
        ("ready", cli::format_readiness(settings.readiness)),
        (
            "ready_timeout",
            cli::format_duration(settings.ready_timeout),
        ),
        ("stop_signal", cli::format_signal(settings.stop_signal)),
        (
            "drain_timeout",
            cli::format_duration(settings.drain_timeout),
        ),
        ("max_draining", settings.max_draining.to_string()),
        ("start_limit", settings.start_limit.to_string()),
        ("control_mode", format!("{DEFAULT_CONTROL_MODE:04o}")),
        ("debounce", cli::format_duration(DEFAULT_DEBOUNCE)),
        ("min_interval", cli::format_duration(DEFAULT_MIN_INTERVAL)),
    ]
}

/// Everything `baton run` needs, merged and checked.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// What the next generation runs with.
    pub blueprint: Blueprint,
    /// The name of this baton (its control socket).
    pub name: String,
    /// The control socket's path, `None` when turned off.
    pub control: Option<PathBuf>,
    /// The control socket's mode.
    pub control_mode: u32,
    /// Where to write baton's pid.
    pub pid_file: Option<PathBuf>,
    /// Where to serve metrics.
    pub metrics: Option<SocketAddr>,
    /// The dev loop, when something is watched.
    pub dev: Option<DevSettings>,
    /// Signals forwarded to the active generation's leader besides USR1.
    pub forward_signals: Vec<i32>,
}

/// Why the settings do not resolve.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read or parsed; the message names file, line, key.
    #[error("{0}")]
    File(String),
    /// No worker command anywhere.
    #[error(
        "no worker COMMAND given: baton run [OPTIONS] -- COMMAND [ARGS...], or `command` in the config file"
    )]
    NoCommand,
    /// No listener anywhere.
    #[error("no listener given: --listen [NAME=]SPEC, or `listen` in the config file")]
    NoListener,
    /// A build step without anything watched.
    #[error("--build needs --watch: the build runs when a watched file changes")]
    BuildWithoutWatch,
    /// A listener is invalid or two share a name.
    #[error("{0}")]
    Listener(#[from] listeners::ListenError),
    /// The workers' user or group does not resolve.
    #[error("{0}")]
    User(#[from] CredentialsError),
}

/// Read and parse the config file.
pub fn load(path: &Path) -> Result<FileConfig, ConfigError> {
    use std::io::Read;
    let cannot =
        |e: std::io::Error| ConfigError::File(format!("cannot read {}: {e}", path.display()));
    let mut bytes = Vec::new();
    // Read at most one byte past the cap: the file may be a device or grow.
    std::fs::File::open(path)
        .and_then(|file| file.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes))
        .map_err(cannot)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(ConfigError::File(format!(
            "{}: larger than {} KiB, which no config file is: is this the right file?",
            path.display(),
            MAX_FILE_BYTES / 1024
        )));
    }
    let text = String::from_utf8(bytes).map_err(|e| {
        ConfigError::File(format!(
            "{}: not UTF-8 (at byte {})",
            path.display(),
            e.utf8_error().valid_up_to()
        ))
    })?;
    parse(path, &text).map_err(ConfigError::File)
}

/// Parse the text of the file at `path`; the error names file, line, key.
fn parse(path: &Path, text: &str) -> Result<FileConfig, String> {
    toml::from_str(text).map_err(|e| {
        // A syntax error is named after its key only when it lies in the
        // key's value: the parser may stop at the start of the next line
        // (a missing `]`), whose key has nothing to do with it.
        let syntax = text.parse::<toml::Table>().is_err();
        describe(path, text, &e, syntax)
    })
}

/// One line: file, line, key, and what is wrong.
fn describe(path: &Path, text: &str, error: &toml::de::Error, syntax: bool) -> String {
    let message = error.message().trim_end();
    let Some(span) = error.span() else {
        return format!("{}: {message}", path.display());
    };
    let line_number = text[..span.start].matches('\n').count() + 1;
    let line = text.lines().nth(line_number - 1).unwrap_or_default();
    let column = span.start - text[..span.start].rfind('\n').map_or(0, |i| i + 1);
    // A quoted key may hold `=` itself.
    let key_end = match line.trim_start().strip_prefix('"') {
        Some(quoted) => quoted
            .find('"')
            .map(|end| line.len() - quoted.len() + end + 1),
        None => line.find('='),
    };
    match key_end.map(|end| line.split_at(end)) {
        Some((key, _))
            if !line.trim_start().starts_with('[') && (!syntax || column > key.len()) =>
        {
            format!(
                "{}: line {line_number}, key `{}`: {message}",
                path.display(),
                key.trim()
            )
        }
        _ => format!("{}: line {line_number}: {message}", path.display()),
    }
}

/// Merge the command line over the file over the defaults.
/// `inherited` says whether baton was handed sockets (socket activation):
/// then no `listen` at all means "use every inherited socket".
pub fn resolve(
    args: &RunArgs,
    file: Option<FileConfig>,
    inherited: bool,
) -> Result<Resolved, ConfigError> {
    let mut file = file.unwrap_or_default();
    let file_dev = FileDev {
        watch: std::mem::take(&mut file.watch),
        ignore: std::mem::take(&mut file.ignore),
        ext: std::mem::take(&mut file.ext),
        debounce: file.debounce,
        build: file.build.take(),
        min_interval: file.min_interval,
    };
    let listen = if args.listen.is_empty() {
        &file.listen
    } else {
        &args.listen
    };
    if listen.is_empty() && !inherited {
        return Err(ConfigError::NoListener);
    }
    let specs = listen
        .iter()
        .enumerate()
        .map(|(index, spec)| ListenerSpec::parse(spec, index))
        .collect::<Result<Vec<_>, _>>()?;
    listeners::check_names(&specs)?;

    let mut command_line: Vec<OsString> = if args.command.is_empty() {
        file.command
            .unwrap_or_default()
            .into_iter()
            .map(OsString::from)
            .collect()
    } else {
        args.command.clone()
    };
    if command_line.is_empty() {
        return Err(ConfigError::NoCommand);
    }
    let program = command_line.remove(0);
    let name = args.name.clone().or(file.name).unwrap_or_else(|| {
        let stem = Path::new(&program)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        cli::parse_name(&stem).unwrap_or_else(|_| "baton".to_owned())
    });
    let control = match args.control.clone().or(file.control) {
        Some(path) if path.as_os_str() == "none" => None,
        Some(path) => Some(path),
        None => Some(baton_supervisor::control::default_path(&name)),
    };
    let defaults = Settings::default();
    let preload = args.preload.or(file.preload).unwrap_or(false);
    // The dev loop waits for the fix of code that does not start yet (a
    // saved file tries again at once): its start limit holds only when
    // given.
    let dev = dev_settings(args, &file_dev)?;
    let start_limit = match dev {
        Some(_) => NonZeroU32::MAX,
        None => defaults.start_limit,
    };
    let settings = Settings {
        readiness: args.ready.or(file.ready).unwrap_or(defaults.readiness),
        ready_timeout: args
            .ready_timeout
            .or(file.ready_timeout)
            .unwrap_or(defaults.ready_timeout),
        stop_signal: args
            .stop_signal
            .or(file.stop_signal)
            .unwrap_or(defaults.stop_signal),
        drain_timeout: args
            .drain_timeout
            .or(file.drain_timeout)
            .unwrap_or(defaults.drain_timeout),
        max_draining: args
            .max_draining
            .or(file.max_draining)
            .unwrap_or(defaults.max_draining),
        // `0` turns it off, whichever layer says so.
        watchdog: args
            .watchdog
            .or(file.watchdog)
            .or(defaults.watchdog)
            .filter(|interval| !interval.is_zero()),
        start_limit: args.start_limit.or(file.start_limit).unwrap_or(start_limit),
        // Servers run with the preload library are drained by baton first.
        quiesce: preload,
        ..defaults
    };
    let bind = BindOptions::default();
    let blueprint = Blueprint {
        listeners: specs,
        bind: BindOptions {
            backlog: args.backlog.or(file.backlog).unwrap_or(bind.backlog),
            unix_mode: args.unix_mode.or(file.unix_mode).or(bind.unix_mode),
        },
        command: WorkerCommand {
            program,
            args: command_line,
            cwd: file.workdir,
        },
        env: file
            .env
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect(),
        settings,
        preload,
        user: Credentials::lookup(
            args.user.as_deref().or(file.user.as_deref()),
            args.group.as_deref().or(file.group.as_deref()),
        )?,
    };
    Ok(Resolved {
        dev,
        blueprint,
        name,
        control,
        control_mode: args
            .control_mode
            .or(file.control_mode)
            .unwrap_or(DEFAULT_CONTROL_MODE),
        pid_file: args.pid_file.clone().or(file.pid_file),
        metrics: args.metrics.or(file.metrics),
        forward_signals: if args.forward_signal.is_empty() {
            file.forward_signal
        } else {
            args.forward_signal.clone()
        },
    })
}

/// The dev-loop keys of the file.
struct FileDev {
    watch: Vec<PathBuf>,
    ignore: Vec<String>,
    ext: Vec<String>,
    debounce: Option<Duration>,
    build: Option<String>,
    min_interval: Option<Duration>,
}

fn dev_settings(args: &RunArgs, file: &FileDev) -> Result<Option<DevSettings>, ConfigError> {
    let pick = |cli: &Vec<String>, file: &Vec<String>| {
        if cli.is_empty() {
            file.clone()
        } else {
            cli.clone()
        }
    };
    let paths = if args.watch.is_empty() {
        file.watch.clone()
    } else {
        args.watch.clone()
    };
    let build = args.build.clone().or(file.build.clone());
    if paths.is_empty() {
        return match build {
            Some(_) => Err(ConfigError::BuildWithoutWatch),
            None => Ok(None),
        };
    }
    let extensions = pick(&args.ext, &file.ext);
    let mut watch = WatchSettings::new(paths);
    watch.ignore = pick(&args.ignore, &file.ignore);
    watch.extensions = (!extensions.is_empty()).then_some(extensions);
    watch.debounce = args.debounce.or(file.debounce).unwrap_or(DEFAULT_DEBOUNCE);
    Ok(Some(DevSettings {
        watch,
        build,
        min_interval: args
            .min_interval
            .or(file.min_interval)
            .unwrap_or(DEFAULT_MIN_INTERVAL),
    }))
}

/// Load the file named in `args` (if any) and resolve.
pub fn resolve_with_file(args: &RunArgs, inherited: bool) -> Result<Resolved, ConfigError> {
    let file = args.config.as_deref().map(load).transpose()?;
    resolve(args, file, inherited)
}

/// The resolved settings, one `key = value` per line, for `baton check`.
pub fn render(resolved: &Resolved) -> String {
    let blueprint = &resolved.blueprint;
    let s = &blueprint.settings;
    let mut out = Vec::new();
    for spec in &blueprint.listeners {
        out.push(format!("listen = {}={}", spec.name, spec.address));
    }
    out.push(format!("backlog = {}", blueprint.bind.backlog));
    if let Some(mode) = blueprint.bind.unix_mode {
        out.push(format!("unix_mode = {mode:04o}"));
    }
    let mut command = vec![blueprint.command.program.to_string_lossy().into_owned()];
    command.extend(
        blueprint
            .command
            .args
            .iter()
            .map(|a| a.to_string_lossy().into_owned()),
    );
    out.push(format!("command = {command:?}"));
    if let Some(dir) = &blueprint.command.cwd {
        out.push(format!("workdir = {}", dir.display()));
    }
    for (key, value) in &blueprint.env {
        out.push(format!("env.{} = {:?}", key.to_string_lossy(), value));
    }
    out.push(format!("ready = {}", cli::format_readiness(s.readiness)));
    out.push(format!(
        "ready_timeout = {}",
        cli::format_duration(s.ready_timeout)
    ));
    out.extend(blueprint.preload.then(|| "preload = true".to_owned()));
    out.push(format!("stop_signal = {}", s.stop_signal));
    out.push(format!(
        "drain_timeout = {}",
        cli::format_duration(s.drain_timeout)
    ));
    out.push(format!("max_draining = {}", s.max_draining));
    if let Some(interval) = s.watchdog {
        out.push(format!("watchdog = {}", cli::format_duration(interval)));
    }
    out.push(format!("start_limit = {}", s.start_limit));
    if let Some(user) = &blueprint.user {
        out.push(format!("user = {}", user.name));
        out.extend(user.group_name.iter().map(|g| format!("group = {g}")));
    }
    out.push(format!("name = {}", resolved.name));
    out.push(match &resolved.control {
        Some(path) => format!("control = {}", path.display()),
        None => "control = none".to_owned(),
    });
    out.push(format!("control_mode = {:04o}", resolved.control_mode));
    if let Some(path) = &resolved.pid_file {
        out.push(format!("pid_file = {}", path.display()));
    }
    if let Some(addr) = resolved.metrics {
        out.push(format!("metrics = {addr}"));
    }
    for &signal in &resolved.forward_signals {
        out.push(format!(
            "forward_signal = {}",
            baton_supervisor::signals::name(signal)
        ));
    }
    if let Some(dev) = &resolved.dev {
        for path in &dev.watch.paths {
            out.push(format!("watch = {}", path.display()));
        }
        for glob in &dev.watch.ignore {
            out.push(format!("ignore = {glob}"));
        }
        if let Some(ext) = &dev.watch.extensions {
            out.push(format!("ext = {}", ext.join(",")));
        }
        out.push(format!(
            "debounce = {}",
            cli::format_duration(dev.watch.debounce)
        ));
        if let Some(build) = &dev.build {
            out.push(format!("build = {build:?}"));
        }
        out.push(format!(
            "min_interval = {}",
            cli::format_duration(dev.min_interval)
        ));
    }
    out.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn run_args(args: &[&str]) -> RunArgs {
        let mut argv = vec!["baton", "run"];
        argv.extend(args);
        match crate::cli::Cli::parse_from(argv).command {
            crate::cli::Command::Run(args) => *args,
            _ => unreachable!(),
        }
    }

    fn file(text: &str) -> Result<FileConfig, String> {
        parse(Path::new("baton.toml"), text)
    }

    #[test]
    fn the_command_line_wins_over_the_file() {
        let f = file(
            "command = [\"app\", \"--x\"]\nlisten = [\"http=127.0.0.1:8080\"]\nready = \"notify\"\ndrain_timeout = \"5s\"\n[env]\nA = \"1\"\n",
        )
        .unwrap();
        let r = resolve(&run_args(&["--drain-timeout", "9s"]), Some(f), false).unwrap();
        assert_eq!(r.blueprint.settings.drain_timeout, Duration::from_secs(9));
        assert_eq!(r.blueprint.settings.readiness, Readiness::Notify);
        assert_eq!(r.blueprint.command.program, "app");
        assert_eq!(r.name, "app");
        assert_eq!(r.blueprint.env, vec![("A".into(), "1".into())]);
        assert_eq!(r.blueprint.listeners[0].name, "http");
    }

    #[test]
    fn forwarded_signals_come_from_the_flag_else_the_file() {
        use nix::sys::signal::Signal;
        let text = "command = [\"app\"]\nlisten = [\":8080\"]\nforward_signal = [\"USR2\", \"SIGWINCH\"]\n";
        let r = resolve(&run_args(&[]), Some(file(text).unwrap()), false).unwrap();
        assert_eq!(
            r.forward_signals,
            [Signal::SIGUSR2 as i32, Signal::SIGWINCH as i32]
        );
        assert!(render(&r).contains("forward_signal = SIGUSR2\nforward_signal = SIGWINCH"));
        let args = run_args(&["--forward-signal", "TTIN"]);
        let r = resolve(&args, Some(file(text).unwrap()), false).unwrap();
        assert_eq!(r.forward_signals, [Signal::SIGTTIN as i32]);
        let err = file("forward_signal = [\"TERM\"]\n").unwrap_err();
        assert!(
            err.starts_with(
                "baton.toml: line 1, key `forward_signal`: SIGTERM acts on baton itself"
            ),
            "{err}"
        );
    }

    #[test]
    fn errors_name_the_file_the_line_and_the_key() {
        let err = file("listen = [\":8080\"]\n\nready_timeout = \"soon\"\n").unwrap_err();
        assert!(
            err.starts_with("baton.toml: line 3, key `ready_timeout`: expected a duration"),
            "{err}"
        );
        let err = file("lisen = [\":8080\"]\n").unwrap_err();
        assert!(
            err.starts_with("baton.toml: line 1, key `lisen`: unknown field `lisen`"),
            "{err}"
        );
        assert!(!err.contains('\n'), "one line: {err:?}");
        let err = file("listen = [\":8080\"\nready = \"notify\"\n").unwrap_err();
        assert!(
            err.starts_with("baton.toml: line 2: missing comma"),
            "a syntax error is not the next key's: {err}"
        );
        let err = file("ready = notify\n").unwrap_err();
        assert!(
            err.starts_with("baton.toml: line 1, key `ready`: "),
            "{err}"
        );
        let err = file("listen = [\"nohost:1\"]\n").unwrap_err();
        assert!(
            err.starts_with("baton.toml: line 1, key `listen`: invalid listener"),
            "{err}"
        );
    }

    #[test]
    fn a_count_below_one_is_refused_where_it_enters() {
        for (text, line, key) in [
            ("max_draining = 0\n", 1, "max_draining"),
            ("\nmax_draining = -3\n", 2, "max_draining"),
            ("backlog = 0\n", 1, "backlog"),
            ("backlog = -1\n", 1, "backlog"),
            ("backlog = 4294967296\n", 1, "backlog"),
        ] {
            let err = file(text).unwrap_err();
            assert!(
                err.starts_with(&format!(
                    "baton.toml: line {line}, key `{key}`: expected a whole number of at least 1"
                )),
                "{text}: {err}"
            );
        }
        let f = file("max_draining = 1\nbacklog = 1\n").unwrap();
        assert_eq!(f.max_draining, NonZeroUsize::new(1));
        assert_eq!(f.backlog, NonZeroU32::new(1));
        for flag in ["--max-draining", "--backlog"] {
            let err = crate::cli::Cli::try_parse_from(["baton", "run", flag, "0"]).unwrap_err();
            assert!(
                err.to_string()
                    .contains("expected a whole number of at least 1"),
                "{flag}: {err}"
            );
        }
    }

    #[test]
    fn the_default_the_help_shows_is_the_one_applied() {
        let watching: &[&str] = &["--listen", ":0", "--watch", ".", "--", "/bin/app"];
        // The dev loop has no start limit unless given (its help says so).
        let plain: &[&str] = &["--listen", ":0", "--", "/bin/app"];
        for (id, default) in defaults() {
            let base = if id == "start_limit" { plain } else { watching };
            let unset = render(&resolve(&run_args(base), None, false).unwrap());
            let flag = format!("--{}", id.replace('_', "-"));
            let mut args = vec![flag.as_str(), default.as_str()];
            args.extend(base.iter().copied());
            let given = render(&resolve(&run_args(&args), None, false).unwrap());
            assert_eq!(given, unset, "{flag} {default}");
        }
    }

    #[test]
    fn defaults_apply_when_neither_says() {
        let r = resolve(
            &run_args(&["--listen", ":0", "--", "/bin/app"]),
            None,
            false,
        )
        .unwrap();
        assert_eq!(
            r.blueprint.settings.readiness,
            Readiness::Delay(Duration::from_secs(1))
        );
        assert_eq!(r.blueprint.bind.backlog.get(), 1024);
        assert_eq!(r.control_mode, 0o600);
        assert!(r.control.unwrap().ends_with("app.sock"));
        assert!(matches!(
            resolve(&run_args(&["--listen", ":0"]), None, false),
            Err(ConfigError::NoCommand)
        ));
    }
}
