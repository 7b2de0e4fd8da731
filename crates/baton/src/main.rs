//! baton: a supervisor daemon for zero-downtime restarts. This binary only
//! parses the command line and wires the pieces of `baton-supervisor`.

mod cli;

use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::Context;
use baton_supervisor::driver::{Config, Driver};
use baton_supervisor::guardian::Guardian;
use baton_supervisor::listeners::{self, BindOptions, ListenerSpec};
use baton_supervisor::machine::Settings;
use baton_supervisor::spawn::{WorkerCommand, resolve_program};
use clap::Parser;
use tracing_subscriber::EnvFilter;

use crate::cli::{Cli, Command, LogFormat, RunArgs};

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format, &cli.log_level);
    let result = match cli.command {
        Command::Run(args) => run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("baton: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat, level: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// `baton run`: everything that can fail on bad input fails here, before a
/// single process starts.
fn run(args: RunArgs) -> anyhow::Result<()> {
    let config = prepare(args)?;
    // Forked while baton has one thread: before the runtime exists.
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

/// Exit 2 with a one-line error and clap's usage hint.
fn usage_error(kind: clap::error::ErrorKind, message: impl std::fmt::Display) -> ! {
    use clap::CommandFactory;
    let mut command = Cli::command();
    let run = command
        .find_subcommand_mut("run")
        .expect("run exists")
        .clone();
    run.bin_name("baton run").error(kind, message).exit()
}

fn prepare(args: RunArgs) -> anyhow::Result<Config> {
    let specs = args
        .listen
        .iter()
        .enumerate()
        .map(|(index, spec)| ListenerSpec::parse(spec, index))
        .collect::<Result<Vec<_>, _>>()?;
    if let Err(error) = listeners::check_names(&specs) {
        usage_error(clap::error::ErrorKind::ValueValidation, error);
    }
    let mut command_line = args.command.into_iter();
    let Some(program) = command_line.next() else {
        usage_error(
            clap::error::ErrorKind::MissingRequiredArgument,
            "no worker COMMAND given: baton run [OPTIONS] -- COMMAND [ARGS...]",
        );
    };
    let command = WorkerCommand {
        program,
        args: command_line.collect(),
        cwd: None,
    };
    resolve_program(&command.program, None)?;

    let options = BindOptions {
        backlog: args.backlog,
        unix_mode: args.unix_mode,
    };
    let listeners = listeners::bind_all(&specs, options)?;
    for listener in &listeners {
        tracing::info!(
            name = %listener.name(),
            addr = %listener.local_address(),
            backlog = args.backlog,
            "listening"
        );
    }
    let settings = Settings {
        readiness: args.ready,
        ready_timeout: args.ready_timeout,
        stop_signal: args.stop_signal,
        drain_timeout: args.drain_timeout,
        max_draining: usize::from(args.max_draining),
        ..Settings::default()
    };
    Ok(Config {
        listeners,
        command,
        settings,
    })
}
