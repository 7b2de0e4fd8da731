//! baton: a supervisor daemon for zero-downtime restarts. This binary only
//! parses the command line and wires the pieces of `baton-supervisor`.

mod cli;
mod config;
mod ctl_output;
mod env;
mod exit;
mod logging;
mod man;

use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::Context;
use baton_supervisor::control;
use baton_supervisor::driver::{Config, Driver, Reloader};
use baton_supervisor::fdlimit;
use baton_supervisor::guardian::Guardian;
use baton_supervisor::listeners;
use baton_supervisor::pid_file::PidFile;
use baton_supervisor::runtime_dir::{self, RuntimeDir};
use baton_supervisor::signals::SignalTable;
use baton_supervisor::spawn::{SpawnError, resolve_program};
use baton_supervisor::systemd::SystemdNotifier;
use clap::Parser;
use tracing::Level;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::cli::{CheckArgs, Cli, Command, CtlAction, CtlArgs, LogFormat, ManArgs, RunArgs};
use crate::config::ConfigError;

fn main() -> ExitCode {
    // baton's guardian is this binary under another name: it must do
    // nothing else (no argument parsing, no logging set-up).
    if baton_supervisor::guardian::is_guardian() {
        baton_supervisor::guardian::serve();
    }
    let cli = match cli::parse() {
        Ok(cli) => cli,
        Err(error) => {
            eprintln!("baton: error: {error}");
            return exit::code(exit::FAILURE);
        }
    };
    let log = init_logging(cli.log_format, &cli.log_level);
    let result = match cli.command {
        Command::Run(args) => run(*args).map(|()| ExitCode::SUCCESS),
        Command::Ctl(args) => ctl(args),
        Command::Check(args) => check(args).map(|()| ExitCode::SUCCESS),
        Command::Completions(args) => {
            let mut script = Vec::new();
            clap_complete::generate(args.shell, &mut cli::command(), "baton", &mut script);
            print_bytes(&script).map(|()| ExitCode::SUCCESS)
        }
        Command::Man(args) => man(args).map(|()| ExitCode::SUCCESS),
    };
    let code = match result {
        Ok(code) => code,
        Err(error) => {
            logging::print(&format!("baton: error: {}", describe(&error)));
            exit::code(exit::of_error(&error))
        }
    };
    drop(log);
    code
}

/// An error and its causes on one line, each cause once: many errors
/// already include their source's text in their own.
fn describe(error: &anyhow::Error) -> String {
    let mut text = error.to_string();
    for cause in error.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text
}

/// `RUST_LOG` (`LEVEL` or `TARGET=LEVEL,...`) over `--log-level`. A
/// `Targets` filter rather than an `EnvFilter`: the same directives but
/// for span and field filters, without the regex engine those need.
fn log_filter(rust_log: Option<&str>, level: &str) -> Targets {
    rust_log
        .filter(|value| !value.is_empty())
        .and_then(|value| value.parse().ok())
        .or_else(|| level.parse().ok())
        .unwrap_or_else(|| Targets::new().with_default(Level::INFO))
}

fn init_logging(format: LogFormat, level: &str) -> logging::LogGuard {
    use logging::journal::{self, Prefixed};
    use tracing_subscriber::fmt::format as line;
    let filter = log_filter(std::env::var("RUST_LOG").ok().as_deref(), level);
    let (writer, guard) = logging::stderr();
    let builder = tracing_subscriber::fmt()
        .with_writer(writer)
        .with_ansi(journal::colour(
            std::io::stderr().is_terminal(),
            std::env::var_os("NO_COLOR").as_deref(),
        ));
    let text = line().with_target(false);
    // A JSON line keeps its `timestamp` under the journal too: its schema
    // does not change with where it goes.
    let json = line().json().flatten_event(true).with_target(false);
    match (format, logging::to_journal()) {
        (LogFormat::Text, false) => builder.event_format(text).finish().with(filter).init(),
        (LogFormat::Text, true) => builder
            .event_format(Prefixed {
                inner: text.without_time().with_level(false),
                level: true,
            })
            .finish()
            .with(filter)
            .init(),
        (LogFormat::Json, false) => builder
            .fmt_fields(line::JsonFields::new())
            .event_format(json)
            .finish()
            .with(filter)
            .init(),
        (LogFormat::Json, true) => builder
            .fmt_fields(line::JsonFields::new())
            .event_format(Prefixed {
                inner: json,
                level: false,
            })
            .finish()
            .with(filter)
            .init(),
    }
    guard
}

/// `baton run`: everything that can fail on bad input fails here, before a
/// single process starts.
fn run(mut args: RunArgs) -> anyhow::Result<()> {
    // First: systemd's variables describe this process only until baton
    // changes anything, and inherited sockets get FD_CLOEXEC at once.
    let inherited = listeners::inherited_from_env()?;
    let systemd = SystemdNotifier::from_env()?;
    // Read once: a reload re-reads the file, over what these settled.
    env::fill(&mut args, |name| std::env::var_os(name))?;
    let activated = !inherited.is_empty();
    let resolved = match config::resolve_with_file(&args, activated) {
        Ok(resolved) => resolved,
        Err(error @ (ConfigError::NoCommand | ConfigError::NoListener)) => {
            usage_error(clap::error::ErrorKind::MissingRequiredArgument, error)
        }
        Err(error @ ConfigError::Listener(listeners::ListenError::DuplicateName(_))) => {
            usage_error(clap::error::ErrorKind::ValueValidation, error)
        }
        Err(error) => return Err(error.into()),
    };
    let mut resolved = resolved;
    if let Some(user) = &resolved.blueprint.user {
        user.require_root()?;
        tracing::info!(user = %user.name, uid = user.uid, gid = user.gid, groups = ?user.groups, "workers run as");
    }
    let command = &resolved.blueprint.command;
    let program = resolve_program(&command.program, command.cwd.as_deref());
    if let Some(dev) = &mut resolved.dev {
        // The worker's own binary is a build output: never a trigger.
        let given = command
            .cwd
            .clone()
            .unwrap_or_default()
            .join(&command.program);
        dev.watch.also_ignore.push(std::path::absolute(given)?);
        if let Ok(path) = &program {
            dev.watch.also_ignore.push(std::path::absolute(path)?);
        }
    }
    check_command(&resolved)?;
    // Checked before anything is bound (a running baton holding it is the
    // clearer error), published by the driver once it handles signals.
    let pid_file = resolved
        .pid_file
        .as_deref()
        .map(PidFile::claim)
        .transpose()?;
    let limits = fdlimit::raise().context("cannot read the open files limit (RLIMIT_NOFILE)")?;
    fdlimit::check(
        limits,
        resolved.blueprint.listeners.len().max(inherited.len()),
    )?;
    if limits.now != limits.original {
        tracing::debug!(
            baton = limits.now,
            workers = limits.original,
            "open files limit raised (workers keep the original)"
        );
    }
    let bound = listeners::resolve(
        &resolved.blueprint.listeners,
        inherited,
        resolved.blueprint.bind,
    )?;
    for unused in &bound.unused {
        tracing::warn!(name = %unused.name(), addr = %unused.local_address(), "inherited socket matches no --listen: closing it");
    }
    let listeners = bound.listeners;
    for listener in &listeners {
        tracing::info!(
            name = %listener.name(),
            addr = %listener.local_address(),
            // Not logged for an inherited socket: baton did not set it.
            backlog = listener.backlog(),
            inherited = listener.is_inherited(),
            "listening"
        );
    }
    let control = resolved
        .control
        .as_ref()
        .map(|path| control::bind(path, resolved.control_mode).map(|l| (l, path.clone())))
        .transpose()?;
    if let Some((_, path)) = &control {
        tracing::info!(path = %path.display(), "control socket");
    }
    // Leftovers of batons that are gone go first; then this baton's own.
    let runtime = RuntimeDir::claim(&runtime_dir::base(), &resolved.name)?;
    tracing::info!(path = %runtime.path().display(), "runtime directory");
    let metrics = resolved
        .metrics
        .map(|addr| {
            std::net::TcpListener::bind(addr)
                .with_context(|| format!("cannot serve metrics on --metrics {addr}"))
        })
        .transpose()?;
    if let Some(listener) = &metrics {
        tracing::info!(addr = %listener.local_addr()?, "metrics");
    }
    let reloader: Option<Reloader> = args.config.is_some().then(|| {
        let args = args.clone();
        let at_start = config::StartOnly::of(&resolved);
        std::sync::Arc::new(move || {
            let resolved =
                config::resolve_with_file(&args, activated).map_err(|e| e.to_string())?;
            if let Some(user) = &resolved.blueprint.user {
                user.require_root().map_err(|e| e.to_string())?;
            }
            for key in at_start.changed(&resolved) {
                tracing::warn!(
                    key = %key,
                    "changed in the config file, but only a restart of baton applies it: ignored"
                );
            }
            Ok(resolved.blueprint)
        }) as Reloader
    });
    let config = Config {
        listeners,
        blueprint: resolved.blueprint,
        control,
        metrics,
        reloader,
        systemd,
        dev: resolved.dev,
        runtime,
        signals: SignalTable::new(&resolved.forward_signals),
        pid_file,
    };
    // Before the runtime, so that no worker can exist unguarded.
    let guardian = Guardian::start().context("cannot start the guardian process")?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    runtime.block_on(async {
        let driver = Driver::new(config, Some(guardian))?;
        driver.run().await
    })?;
    Ok(())
}

/// The worker's workdir and program exist; with a build step the program
/// may not exist before the first build.
fn check_command(resolved: &config::Resolved) -> Result<(), SpawnError> {
    let command = &resolved.blueprint.command;
    match resolve_program(&command.program, command.cwd.as_deref()) {
        Err(SpawnError::NotFound(_))
            if resolved.dev.as_ref().is_some_and(|d| d.build.is_some()) =>
        {
            Ok(())
        }
        other => other.map(drop),
    }
}

/// Exit 2 with a one-line error and clap's usage hint.
fn usage_error(kind: clap::error::ErrorKind, message: impl std::fmt::Display) -> ! {
    let mut command = cli::command();
    let run = command
        .find_subcommand_mut("run")
        .expect("run exists")
        .clone();
    run.bin_name("baton run").error(kind, message).exit()
}

/// `baton check`: resolve the file as `baton run --config FILE` would,
/// `BATON_*` variables included.
fn check(args: CheckArgs) -> anyhow::Result<()> {
    let mut run = RunArgs {
        config: args.config,
        ..empty_run_args()
    };
    env::fill(&mut run, |name| std::env::var_os(name))?;
    if run.config.is_none() {
        let mut command = cli::command();
        let check = command.find_subcommand_mut("check").expect("check exists");
        check
            .clone()
            .bin_name("baton check")
            .error(
                clap::error::ErrorKind::MissingRequiredArgument,
                "no config file given: --config FILE, or BATON_CONFIG",
            )
            .exit()
    }
    let resolved = config::resolve_with_file(&run, false)?;
    // What `run` would refuse at start, `check` refuses too.
    check_command(&resolved)?;
    stdout(&format!("{}\n", config::render(&resolved)));
    Ok(())
}

/// `baton man`: the pages come from the same command line as `--help`.
fn man(args: ManArgs) -> anyhow::Result<()> {
    let command = cli::command().about(
        "supervisor for zero-downtime restarts: holds the listening sockets, \
         hands them to every new worker",
    );
    match args.dir {
        Some(dir) => std::fs::create_dir_all(&dir)
            .and_then(|()| man::write_all(command, &dir))
            .with_context(|| format!("cannot write the manual pages to {}", dir.display())),
        None => print_bytes(&man::page(&command)?),
    }
}

/// Write to stdout; a closed pipe (`| head`) is an error, not a panic.
fn print_bytes(bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(bytes).and_then(|()| stdout.flush())?;
    Ok(())
}

fn empty_run_args() -> RunArgs {
    match Cli::parse_from(["baton", "run"]).command {
        Command::Run(args) => *args,
        _ => unreachable!("parsed `run`"),
    }
}

/// `baton ctl`: one request, one response. The socket is found by the
/// rule `run` places it by: a path (`--control`, `BATON_CONTROL`) wins
/// over a name (`--name`, `BATON_NAME`); with neither, the only baton
/// running.
fn ctl(mut args: CtlArgs) -> anyhow::Result<ExitCode> {
    let flags = (args.control.is_some(), args.name.clone());
    env::fill_ctl(&mut args, |name| std::env::var_os(name))?;
    if let ((false, Some(name)), Some(path)) = (&flags, &args.control) {
        logging::print(&format!(
            "baton: note: BATON_CONTROL={} chosen over --name {name}: a socket path wins over a name (unset BATON_CONTROL to choose by name)",
            path.display()
        ));
    }
    let path = match (&args.control, &args.name) {
        (Some(path), _) => path.clone(),
        (None, Some(name)) => control::default_path(name),
        (None, None) => control::discover()?,
    };
    let command = match args.action {
        CtlAction::Status => control::Command::Status,
        CtlAction::Reload => control::Command::Reload,
        CtlAction::Stop => control::Command::Stop,
    };
    let response = control::request(&path, command)?;
    if args.json {
        stdout(&format!("{}\n", serde_json::to_string_pretty(&response)?));
    } else {
        stdout(&ctl_output::render(&response));
    }
    Ok(exit::code(exit::of_response(&response)))
}

/// Print to stdout; a reader gone away (`| head`) is not a panic.
fn stdout(text: &str) {
    use std::io::Write;
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
}

#[cfg(test)]
mod tests {
    use tracing::level_filters::LevelFilter;

    use super::*;

    #[test]
    fn rust_log_overrides_the_log_level() {
        let level = |rust_log, level, target| {
            log_filter(rust_log, level)
                .iter()
                .find(|(t, _)| *t == target)
                .map(|(_, l)| l)
                .or_else(|| log_filter(rust_log, level).default_level())
        };
        assert_eq!(level(None, "info", "baton"), Some(LevelFilter::INFO));
        assert_eq!(level(Some(""), "warn", "baton"), Some(LevelFilter::WARN));
        assert_eq!(
            level(Some("debug"), "warn", "baton"),
            Some(LevelFilter::DEBUG)
        );
        assert_eq!(
            level(
                Some("info,baton_supervisor=trace"),
                "warn",
                "baton_supervisor"
            ),
            Some(LevelFilter::TRACE)
        );
    }
}
