//! `baton man`: the manual pages, from the same command line as `--help`
//! (clap_mangen), with two sections clap knows nothing of: EXIT STATUS
//! ([`crate::exit::TABLE`]) and ENVIRONMENT (the `BATON_*` variables of
//! [`crate::env`]).

use std::io;
use std::path::Path;

use clap_mangen::Man;

use crate::env;
use crate::exit::{self, roff_text};

/// The page of `command` (`baton`, or a subcommand as built by clap).
pub fn page(command: &clap::Command) -> io::Result<Vec<u8>> {
    let man = Man::new(command.clone());
    let mut out = Vec::new();
    man.render_title(&mut out)?;
    man.render_name_section(&mut out)?;
    man.render_synopsis_section(&mut out)?;
    man.render_description_section(&mut out)?;
    if command.get_arguments().any(|arg| !arg.is_hide_set()) {
        man.render_options_section(&mut out)?;
    }
    if command.has_subcommands() {
        man.render_subcommands_section(&mut out)?;
    }
    out.extend(environment(command.get_name()).into_bytes());
    out.extend(exit::man_section().into_bytes());
    if command.get_version().is_some() {
        man.render_version_section(&mut out)?;
    }
    Ok(out)
}

/// Write `baton.1`, `baton-run.1`, … into `dir`.
pub fn write_all(command: clap::Command, dir: &Path) -> io::Result<()> {
    fn write(command: &clap::Command, dir: &Path) -> io::Result<()> {
        for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
            write(sub, dir)?;
        }
        let name = command
            .get_display_name()
            .unwrap_or_else(|| command.get_name());
        std::fs::write(dir.join(format!("{name}.1")), page(command)?)
    }
    let mut command = command.disable_help_subcommand(true);
    command.build();
    write(&command, dir)
}

/// The ENVIRONMENT section for the page of the (sub)command `name`.
fn environment(name: &str) -> String {
    let mut roff = String::from(".SH ENVIRONMENT\n");
    let keys: Vec<&str> = match name {
        "baton" | "run" | "check" => env::GLOBAL_KEYS
            .iter()
            .chain(env::KEYS.iter())
            .copied()
            .collect(),
        "ctl" => vec!["control", "name"],
        _ => env::GLOBAL_KEYS.to_vec(),
    };
    roff.push_str(&roff_text(
        "Each option may also come from a variable, BATON_ and the option in capitals; \
         the flag wins, then the variable, then the config file, then the default. \
         An empty variable counts as unset. Lists are comma-separated; \
         BATON_COMMAND is split into words as a POSIX shell would, without expansion.",
    ));
    roff.push('\n');
    if name == "ctl" {
        roff.push_str(".PP\n");
        roff.push_str(&roff_text(
            "The control socket is the first of: --control, BATON_CONTROL, --name, \
             BATON_NAME, the only baton running.",
        ));
        roff.push('\n');
    }
    for key in keys {
        let flag = if key == "command" {
            "COMMAND [ARGS...]".to_owned()
        } else {
            format!("--{}", key.replace('_', "-"))
        };
        roff.push_str(&format!(
            ".TP\n\\fB{}\\fR\n{}\n",
            roff_text(&env::variable(key)),
            roff_text(&flag)
        ));
    }
    roff
}
