//! The command line. Every value is checked by clap, so a bad one is a
//! one-line error naming the flag, the value and what is expected, with
//! exit code 2. Most settings may also come from a `BATON_*` environment
//! variable ([`crate::env`]) or the config file ([`crate::config`]).

use std::ffi::OsString;
use std::net::SocketAddr;
use std::num::{IntErrorKind, NonZeroU32, NonZeroUsize, ParseIntError};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use baton_supervisor::listeners::ListenerSpec;
use baton_supervisor::machine::{Readiness, StopSignal};
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use nix::sys::signal::Signal;

use crate::env;

/// baton: hold the listening sockets, hand them to every new worker, and
/// reload without refusing or failing a connection.
#[derive(Debug, Parser)]
#[command(version, propagate_version = true)]
pub struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Log level (off, error, warn, info, debug, trace), or TARGET=LEVEL
    /// directives separated by commas; RUST_LOG overrides it.
    #[arg(long, global = true, default_value = "info", value_parser = parse_log_level)]
    pub log_level: String,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Log formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// baton's subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Bind the sockets and run COMMAND on them; SIGHUP reloads, SIGTERM stops.
    Run(Box<RunArgs>),
    /// Talk to a running baton through its control socket.
    Ctl(CtlArgs),
    /// Validate a config file and print the settings it resolves to.
    Check(CheckArgs),
    /// Print a shell completion script (e.g. `baton completions bash >
    /// /usr/share/bash-completion/completions/baton`).
    Completions(CompletionsArgs),
    /// Print the manual page, in roff (`baton man | man -l -`), or write
    /// one page per subcommand to a directory.
    Man(ManArgs),
}

/// `baton run`. Every option may also come from `--config`, most from a
/// `BATON_*` variable; the command line wins, then the environment, then
/// the file. Defaults are applied after merging, so they are not clap
/// defaults: [`command`] adds them to the help text from the values
/// [`crate::config`] applies.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// A TOML file with any of these options (see baton.toml.example).
    /// It is re-read on every reload.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// A socket to listen on: [NAME=]SPEC with SPEC one of HOST:PORT, :PORT
    /// (all interfaces), [::1]:PORT, tcp://HOST:PORT, unix:/path,
    /// udp://HOST:PORT (a datagram socket). Repeatable;
    /// workers get them at fds 3, 4, … in this order.
    #[arg(long = "listen", short = 'l', value_name = "[NAME=]SPEC", value_parser = parse_listener)]
    pub listen: Vec<String>,
    /// Length of each socket's accept queue.
    #[arg(long, value_name = "N", value_parser = parse_count::<NonZeroU32>)]
    pub backlog: Option<NonZeroU32>,
    /// File mode of unix sockets, in octal (e.g. 0660).
    #[arg(long, value_name = "MODE", value_parser = parse_mode)]
    pub unix_mode: Option<u32>,
    /// When a new worker counts as ready: `notify` (it sends READY=1 to
    /// NOTIFY_SOCKET), `delay=DURATION` (still alive after it) or `auto`
    /// (one of its processes waits on a socket baton handed it, as the
    /// kernel shows; READY=1 alone does not count).
    #[arg(long, value_name = "notify|auto|delay=DURATION", value_parser = parse_readiness)]
    pub ready: Option<Readiness>,
    /// How long a new worker may take to become ready.
    #[arg(long, value_name = "DURATION", value_parser = parse_timeout)]
    pub ready_timeout: Option<Duration>,
    /// Start workers with baton's preload library: a server's own bind()
    /// to an address baton holds gets baton's socket, for servers that
    /// cannot take fd 3 (not Go, nor static binaries; docs/any-server.md).
    #[arg(long, num_args = 0, default_missing_value = "true", value_parser = parse_switch)]
    pub preload: Option<bool>,
    /// The signal that asks a worker to drain and exit.
    #[arg(long, value_name = "SIGNAL", value_parser = parse_signal)]
    pub stop_signal: Option<StopSignal>,
    /// How long a worker may drain before its process group is killed.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub drain_timeout: Option<Duration>,
    /// The most generations draining at once; a reload beyond it kills the oldest.
    #[arg(long, value_name = "N", value_parser = parse_count::<NonZeroUsize>)]
    pub max_draining: Option<NonZeroUsize>,
    /// Ask workers for sd_notify watchdog pings (WATCHDOG_USEC): an active
    /// worker that sends no WATCHDOG=1 for this long is replaced; 0 turns it off.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub watchdog: Option<Duration>,
    /// Give up and exit 1 after this many failed starts in a row while no
    /// worker was ever ready; after one was, failures are only backed off.
    /// Under --watch there is no limit unless one is given: the next saved
    /// file tries again.
    #[arg(long, value_name = "N", value_parser = parse_count::<NonZeroU32>)]
    pub start_limit: Option<NonZeroU32>,
    /// This baton's name, for its control socket [default: the command's file name].
    #[arg(long, value_name = "NAME", value_parser = parse_name)]
    pub name: Option<String>,
    /// The control socket's path, or `none` [default: /run/baton/NAME.sock
    /// for root, else $XDG_RUNTIME_DIR/baton/NAME.sock].
    #[arg(long, value_name = "PATH|none")]
    pub control: Option<PathBuf>,
    /// The control socket's file mode; peers of another uid are refused
    /// anyway (root excepted).
    #[arg(long, value_name = "MODE", value_parser = parse_mode)]
    pub control_mode: Option<u32>,
    /// Write baton's pid to this file once its sockets are bound (refused
    /// if a running baton holds it); removed when baton exits.
    #[arg(long, value_name = "PATH")]
    pub pid_file: Option<PathBuf>,
    /// Serve the status page (GET /), GET /metrics (Prometheus) and
    /// GET /status on this address.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<SocketAddr>,
    /// Watch these files or directories (recursively) and reload when they
    /// change; repeatable.
    #[arg(long, value_name = "PATH")]
    pub watch: Vec<PathBuf>,
    /// Ignore changes to paths matching this glob (besides .git/, target/,
    /// node_modules/, editor files and what .gitignore ignores); repeatable.
    #[arg(long, value_name = "GLOB")]
    pub ignore: Vec<String>,
    /// Count only changes to files with these extensions (e.g. rs,toml).
    #[arg(long, value_name = "EXT,...", value_delimiter = ',')]
    pub ext: Vec<String>,
    /// Quiet period: act once no change came for this long.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub debounce: Option<Duration>,
    /// A shell command to run before each new generation (and the first);
    /// if it fails, the running generation keeps serving.
    #[arg(long, value_name = "CMD")]
    pub build: Option<String>,
    /// The least time between two reloads caused by changes; 0 disables
    /// it. SIGHUP and `ctl reload` never wait.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub min_interval: Option<Duration>,
    /// Forward this signal, as baton gets it, to the active generation's
    /// leader (USR1 always is); repeatable or comma-separated, e.g. USR2
    /// for a server that upgrades itself on it. Otherwise baton ignores it.
    #[arg(long, value_name = "SIGNAL", value_delimiter = ',', value_parser = parse_forward_signal)]
    pub forward_signal: Vec<i32>,
    /// Run the workers and the build step as this user (a name or uid),
    /// with its groups, HOME, USER and LOGNAME; baton stays root to bind.
    #[arg(long, value_name = "USER")]
    pub user: Option<String>,
    /// The workers' group (a name or gid) [default: the --user's own].
    #[arg(long, value_name = "GROUP")]
    pub group: Option<String>,
    /// The worker's command and its arguments: after `--`, or from the
    /// first argument that does not start with `-` (so that a misspelled
    /// option is an error, not the command).
    // Required, but checked by hand rather than by clap: clap's "required"
    // error spans lines, and the config file may give the command instead.
    #[arg(value_name = "COMMAND", num_args = 1.., trailing_var_arg = true)]
    pub command: Vec<OsString>,
}

/// `baton ctl`.
#[derive(Debug, Args)]
pub struct CtlArgs {
    /// The baton to talk to, by name.
    #[arg(long, value_name = "NAME", value_parser = parse_name)]
    pub name: Option<String>,
    /// The baton to talk to, by control socket path. The socket is the
    /// first of: --control, $BATON_CONTROL, --name, $BATON_NAME, the only
    /// baton running.
    #[arg(long, value_name = "PATH", conflicts_with = "name")]
    pub control: Option<PathBuf>,
    /// Print the JSON response instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
    /// What to ask.
    #[command(subcommand)]
    pub action: CtlAction,
}

/// What `baton ctl` asks.
#[derive(Debug, Clone, Copy, Subcommand)]
pub enum CtlAction {
    /// Listeners, generations and what they cost, reloads, counters.
    Status,
    /// Reload and wait for the outcome; exits 1 if the reload failed.
    Reload,
    /// Drain every generation and stop baton.
    Stop,
}

/// `baton check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The config file to check [env: BATON_CONFIG].
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// `baton completions`.
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// `baton man`.
#[derive(Debug, Args)]
pub struct ManArgs {
    /// Write baton.1, baton-run.1, … into this directory instead.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

/// The command line, with each default the merge applies and each
/// option's `BATON_*` variable appended to its help: written once, the
/// help cannot disagree with them.
pub fn command() -> clap::Command {
    let mut cli = Cli::command();
    for key in env::GLOBAL_KEYS {
        cli = cli.mut_arg(key, |arg| {
            let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
            arg.help(format!("{help} [env: {}]", env::variable(key)))
        });
    }
    cli.mut_subcommand("run", |mut run| {
        let notes = crate::config::defaults()
            .map(|(id, default)| (id, format!("[default: {default}]")))
            .into_iter()
            .chain(
                env::KEYS
                    .iter()
                    .map(|&key| (key, format!("[env: {}]", env::variable(key)))),
            );
        for (id, note) in notes {
            run = run.mut_arg(id, |arg| {
                let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
                arg.help(format!("{help} {note}"))
            });
        }
        run
    })
}

/// Parse the command line as [`Parser::parse`] would, with the help of
/// [`command`]; `--log-format` and `--log-level` not given come from their
/// variables.
pub fn parse() -> Result<Cli, env::EnvError> {
    let mut command = command();
    let matches = command.get_matches_mut();
    let mut cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.format(&mut command).exit());
    let given = |id: &str| matches.value_source(id) == Some(clap::parser::ValueSource::CommandLine);
    env::fill_global(&mut cli, given, |name| std::env::var_os(name))?;
    Ok(cli)
}

/// Check a listener spec; it is parsed again, with its index, later.
pub fn parse_listener(spec: &str) -> Result<String, String> {
    ListenerSpec::parse(spec, 0).map_err(|e| e.to_string())?;
    Ok(spec.to_owned())
}

/// A duration in humantime's grammar: `500ms`, `2s`, `1m 30s`, `1h`, `0`.
/// The one parser of durations: flags, `BATON_*` variables and the file.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text)
        .map_err(|e| format!("expected a duration like 500ms, 2s or 1m 30s ({e})"))
}

/// A duration that is not zero: `--ready-timeout` (a worker cannot be
/// ready in no time).
pub fn parse_timeout(text: &str) -> Result<Duration, String> {
    match parse_duration(text)? {
        Duration::ZERO => Err("expected a duration above zero, like 500ms, 2s or 1m".to_owned()),
        duration => Ok(duration),
    }
}

/// The levels `--log-level` takes.
pub const LOG_LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

/// `info`, or `TARGET=LEVEL` directives separated by commas: a misspelled
/// level would otherwise read as a target and silence every line.
pub fn parse_log_level(text: &str) -> Result<String, String> {
    let valid = |level: &str| LOG_LEVELS.contains(&level.to_ascii_lowercase().as_str());
    let ok = !text.is_empty()
        && text
            .split(',')
            .all(|directive| match directive.split_once('=') {
                Some((target, level)) => !target.is_empty() && valid(level),
                None => valid(directive),
            });
    if ok {
        Ok(text.to_owned())
    } else {
        Err(format!(
            "expected a level: {} (or TARGET=LEVEL, separated by commas)",
            LOG_LEVELS.join(", ")
        ))
    }
}

/// A whole number of at least 1: `--backlog`, `--max-draining`.
pub fn parse_count<T: FromStr<Err = ParseIntError>>(text: &str) -> Result<T, String> {
    text.parse().map_err(|e: ParseIntError| {
        let expected = "expected a whole number of at least 1";
        match e.kind() {
            IntErrorKind::PosOverflow => format!("{expected}, and not this large"),
            _ => expected.to_owned(),
        }
    })
}

/// A duration as [`parse_duration`] reads it: `1s 500ms`, `0s`.
pub fn format_duration(duration: Duration) -> String {
    humantime::format_duration(duration).to_string()
}

/// A readiness as [`parse_readiness`] reads it.
pub fn format_readiness(readiness: Readiness) -> String {
    match readiness {
        Readiness::Notify => "notify".to_owned(),
        Readiness::Auto => "auto".to_owned(),
        Readiness::Delay(delay) => format!("delay={}", format_duration(delay)),
    }
}

/// A signal as [`parse_signal`] reads it: `TERM`.
pub fn format_signal(signal: StopSignal) -> String {
    let name = signal.to_string();
    name.strip_prefix("SIG").unwrap_or(&name).to_owned()
}

/// A name that can be a file name: letters, digits, `-`, `_`, `.`, `@`.
pub fn parse_name(name: &str) -> Result<String, String> {
    let valid = !name.is_empty()
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c));
    if valid {
        Ok(name.to_owned())
    } else {
        Err("expected a name of letters, digits, '-', '_', '.' or '@'".to_owned())
    }
}

/// A switch's value from a variable: `true`/`false`, `1`/`0`, `yes`/`no`, `on`/`off`.
pub fn parse_switch(text: &str) -> Result<bool, String> {
    match text.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err("expected true or false (or 1/0, yes/no, on/off)".to_owned()),
    }
}

/// `notify`, `auto` or `delay=DURATION`.
pub fn parse_readiness(text: &str) -> Result<Readiness, String> {
    match text.split_once('=') {
        None if text == "notify" => Ok(Readiness::Notify),
        None if text == "auto" => Ok(Readiness::Auto),
        Some(("delay", delay)) => parse_duration(delay).map(Readiness::Delay),
        _ => Err("expected `notify`, `auto` or `delay=DURATION` (e.g. delay=1s)".to_owned()),
    }
}

/// `TERM`, `SIGTERM` or a number; not KILL or STOP.
pub fn parse_signal(text: &str) -> Result<StopSignal, String> {
    let upper = text.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    let signal = match text.parse::<i32>() {
        Ok(number) => Signal::try_from(number).ok(),
        Err(_) => name.parse::<Signal>().ok(),
    };
    match signal {
        Some(Signal::SIGKILL | Signal::SIGSTOP) => {
            Err("expected a signal a worker can catch (KILL and STOP cannot be)".to_owned())
        }
        Some(signal) => StopSignal::new(signal as i32)
            .ok_or_else(|| format!("{} cannot be a stop signal", signal.as_str())),
        None => Err("expected a signal name like TERM, INT, QUIT or USR1".to_owned()),
    }
}

/// A signal for `--forward-signal`: `USR2`, `SIGWINCH`, `RTMIN+1`.
pub fn parse_forward_signal(text: &str) -> Result<i32, String> {
    baton_supervisor::signals::parse_forward(text)
}

/// An octal file mode such as `0660`.
pub fn parse_mode(text: &str) -> Result<u32, String> {
    u32::from_str_radix(text, 8)
        .ok()
        .filter(|mode| *mode <= 0o777)
        .ok_or_else(|| "expected an octal file mode like 0660".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("1m 30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1s 500ms"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        for bad in ["", "5", "s", "-1s", "soon", "2 parsecs"] {
            let err = parse_duration(bad).unwrap_err();
            assert!(err.starts_with("expected a duration like"), "{bad}: {err}");
        }
    }

    #[test]
    fn a_ready_timeout_of_zero_is_refused() {
        assert_eq!(parse_timeout("2s"), Ok(Duration::from_secs(2)));
        for zero in ["0", "0s", "0ms"] {
            assert!(
                parse_timeout(zero).unwrap_err().contains("above zero"),
                "{zero}"
            );
        }
        let err = Cli::try_parse_from(["baton", "run", "--ready-timeout", "0"]).unwrap_err();
        assert!(err.to_string().contains("above zero"), "{err}");
    }

    #[test]
    fn log_levels_are_checked() {
        for good in ["info", "WARN", "off", "baton=debug", "info,hyper=warn"] {
            assert_eq!(parse_log_level(good), Ok(good.to_owned()));
        }
        for bad in ["warnn", "", "info,", "=debug", "baton=loud"] {
            let err = parse_log_level(bad).unwrap_err();
            assert!(
                err.contains("error, warn, info, debug, trace"),
                "{bad}: {err}"
            );
        }
        let err =
            Cli::try_parse_from(["baton", "--log-level", "warnn", "ctl", "status"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("'warnn'"), "{err}");
    }

    #[test]
    fn a_misspelled_option_is_not_the_command() {
        let err = Cli::try_parse_from(["baton", "run", "-l", ":0", "--ready-timout", "5s", "app"])
            .unwrap_err();
        assert_eq!(err.exit_code(), 2);
        let text = err.to_string();
        assert!(
            text.contains("unexpected argument '--ready-timout'"),
            "{text}"
        );
        assert!(text.contains("--ready-timeout"), "the closest flag: {text}");
        // The command starts after `--`, or at the first word without a
        // dash; its own options are its own.
        for argv in [
            &["baton", "run", "-l", ":0", "--", "app", "--port", "-v"][..],
            &["baton", "run", "-l", ":0", "app", "--port", "-v"][..],
        ] {
            let Command::Run(args) = Cli::try_parse_from(argv).unwrap().command else {
                unreachable!()
            };
            assert_eq!(args.command, ["app", "--port", "-v"], "{argv:?}");
        }
        let Command::Run(args) = Cli::try_parse_from(["baton", "run", "--", "-dash"])
            .unwrap()
            .command
        else {
            unreachable!()
        };
        assert_eq!(args.command, ["-dash"]);
    }

    #[test]
    fn readiness() {
        assert_eq!(parse_readiness("notify"), Ok(Readiness::Notify));
        assert_eq!(parse_readiness("auto"), Ok(Readiness::Auto));
        assert_eq!(
            parse_readiness("delay=250ms"),
            Ok(Readiness::Delay(Duration::from_millis(250)))
        );
        assert!(parse_readiness("delay").is_err());
        assert!(parse_readiness("ready").is_err());
    }

    #[test]
    fn signals() {
        assert_eq!(parse_signal("TERM"), Ok(StopSignal::TERM));
        assert_eq!(
            parse_signal("sigquit"),
            StopSignal::new(3).ok_or(String::new())
        );
        assert_eq!(parse_signal("10"), StopSignal::new(10).ok_or(String::new()));
        assert!(parse_signal("KILL").is_err());
        assert!(parse_signal("NOPE").is_err());
    }

    #[test]
    fn modes() {
        assert_eq!(parse_mode("0660"), Ok(0o660));
        assert!(parse_mode("999").is_err());
    }

    #[test]
    fn counts() {
        assert_eq!(parse_count("4"), Ok(NonZeroUsize::new(4).unwrap()));
        assert_eq!(parse_count("4096"), Ok(NonZeroU32::new(4096).unwrap()));
        for bad in ["0", "-1", "", "1.5", "four"] {
            assert_eq!(
                parse_count::<NonZeroU32>(bad),
                Err("expected a whole number of at least 1".to_owned()),
                "{bad}"
            );
        }
        assert!(parse_count::<NonZeroU32>("4294967296").is_err());
    }

    #[test]
    fn what_is_formatted_parses_back() {
        for ms in [0, 1, 300, 1000, 1500, 60_000, 90_061_001] {
            let duration = Duration::from_millis(ms);
            assert_eq!(parse_duration(&format_duration(duration)), Ok(duration));
        }
        assert_eq!(format_duration(Duration::from_millis(1500)), "1s 500ms");
        for readiness in [
            Readiness::Notify,
            Readiness::Auto,
            Readiness::Delay(Duration::from_secs(1)),
            Readiness::Delay(Duration::from_millis(2500)),
        ] {
            assert_eq!(parse_readiness(&format_readiness(readiness)), Ok(readiness));
        }
        assert_eq!(format_signal(StopSignal::TERM), "TERM");
        assert_eq!(
            parse_signal(&format_signal(StopSignal::new(3).unwrap())),
            Ok(StopSignal::new(3).unwrap())
        );
    }

    #[test]
    fn the_command_line_is_consistent() {
        command().debug_assert();
    }

    #[test]
    fn the_help_shows_each_default_and_variable_once() {
        let mut command = command();
        let run = command.find_subcommand_mut("run").unwrap();
        let help = run.render_help().to_string();
        let notes = crate::config::defaults()
            .map(|(id, default)| (id, format!("[default: {default}]")))
            .into_iter()
            .chain(env::KEYS.map(|key| (key, format!("[env: {}]", env::variable(key)))));
        for (id, note) in notes {
            let arg = run.get_arguments().find(|a| a.get_id() == id).unwrap();
            let arg_help = arg.get_help().unwrap().to_string();
            assert_eq!(arg_help.matches(&note).count(), 1, "{id}: {arg_help}");
            let kind = &note[..note.find(':').unwrap()];
            assert_eq!(arg_help.matches(kind).count(), 1, "{id}: {arg_help}");
            assert!(help.contains(&note), "{id}: {help}");
        }
    }
}
