//! The command line. Every value is checked by clap, so a bad one is a
//! one-line error naming the flag, the value and what is expected, with
//! exit code 2.

use std::ffi::OsString;
use std::time::Duration;

use baton_supervisor::listeners::ListenerSpec;
use baton_supervisor::machine::Readiness;
use clap::{Args, Parser, Subcommand, ValueEnum};
use nix::sys::signal::Signal;

/// baton: hold the listening sockets, hand them to every new worker, and
/// reload without refusing or failing a connection.
#[derive(Debug, Parser)]
#[command(version, propagate_version = true)]
pub struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Log level (error, warn, info, debug, trace); RUST_LOG overrides it.
    #[arg(long, global = true, default_value = "info")]
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
    Run(RunArgs),
}

/// `baton run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// A socket to listen on: [NAME=]SPEC with SPEC one of HOST:PORT, :PORT
    /// (all interfaces), [::1]:PORT, tcp://HOST:PORT, unix:/path. Repeatable;
    /// workers get them at fds 3, 4, … in this order.
    #[arg(long = "listen", short = 'l', value_name = "[NAME=]SPEC", required = true, value_parser = parse_listener)]
    pub listen: Vec<String>,
    /// Length of each socket's accept queue.
    #[arg(long, value_name = "N", default_value_t = 1024, value_parser = clap::value_parser!(i32).range(1..))]
    pub backlog: i32,
    /// File mode of unix sockets, in octal (e.g. 0660).
    #[arg(long, value_name = "MODE", value_parser = parse_mode)]
    pub unix_mode: Option<u32>,
    /// When a new worker counts as ready: `notify` (it sends READY=1 to
    /// NOTIFY_SOCKET) or `delay=DURATION` (still alive after it).
    #[arg(long, value_name = "notify|delay=DURATION", default_value = "delay=1s", value_parser = parse_readiness)]
    pub ready: Readiness,
    /// How long a new worker may take to become ready.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    pub ready_timeout: Duration,
    /// The signal that asks a worker to drain and exit.
    #[arg(long, value_name = "SIGNAL", default_value = "TERM", value_parser = parse_signal)]
    pub stop_signal: Signal,
    /// How long a worker may drain before its process group is killed.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
    /// The most generations draining at once; a reload beyond it kills the oldest.
    #[arg(long, value_name = "N", default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..))]
    pub max_draining: u16,
    /// The worker's command and its arguments.
    /// (Checked by hand, not by clap: clap's "required" error spans lines.)
    #[arg(value_name = "COMMAND", num_args = 1.., trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<OsString>,
}

fn parse_listener(spec: &str) -> Result<String, String> {
    ListenerSpec::parse(spec, 0).map_err(|e| e.to_string())?;
    Ok(spec.to_owned())
}

/// `500ms`, `2s`, `1m`, `1h`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let expected = || "expected a duration like 500ms, 2s or 1m".to_owned();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(expected)?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().map_err(|_| expected())?;
    let unit_ms = match unit {
        "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return Err(expected()),
    };
    number
        .checked_mul(unit_ms)
        .map(Duration::from_millis)
        .ok_or_else(expected)
}

fn parse_readiness(text: &str) -> Result<Readiness, String> {
    match text.split_once('=') {
        None if text == "notify" => Ok(Readiness::Notify),
        Some(("delay", delay)) => parse_duration(delay).map(Readiness::Delay),
        _ => Err("expected `notify` or `delay=DURATION` (e.g. delay=1s)".to_owned()),
    }
}

fn parse_signal(text: &str) -> Result<Signal, String> {
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
        Some(signal) => Ok(signal),
        None => Err("expected a signal name like TERM, INT, QUIT or USR1".to_owned()),
    }
}

fn parse_mode(text: &str) -> Result<u32, String> {
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
        for bad in ["", "5", "s", "1.5s", "-1s", "2 s", "3d"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn readiness() {
        assert_eq!(parse_readiness("notify"), Ok(Readiness::Notify));
        assert_eq!(
            parse_readiness("delay=250ms"),
            Ok(Readiness::Delay(Duration::from_millis(250)))
        );
        assert!(parse_readiness("delay").is_err());
        assert!(parse_readiness("ready").is_err());
    }

    #[test]
    fn signals() {
        assert_eq!(parse_signal("TERM"), Ok(Signal::SIGTERM));
        assert_eq!(parse_signal("sigquit"), Ok(Signal::SIGQUIT));
        assert_eq!(parse_signal("10"), Ok(Signal::SIGUSR1));
        assert!(parse_signal("KILL").is_err());
        assert!(parse_signal("NOPE").is_err());
    }

    #[test]
    fn modes() {
        assert_eq!(parse_mode("0660"), Ok(0o660));
        assert!(parse_mode("999").is_err());
    }

    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
