//! baton's exit statuses, one set for `run`, `ctl` and `check`: [`TABLE`]
//! is what the man page prints (EXIT STATUS) and the README repeats.

use std::process::ExitCode;

use baton_supervisor::control::{ControlError, ErrorCode, Response};

/// Success.
pub const OK: u8 = 0;
/// A failure: bad config, a failed reload, a refused request.
pub const FAILURE: u8 = 1;
/// A usage error: the command line is wrong or incomplete.
pub const USAGE: u8 = 2;
/// No baton running to talk to.
pub const NO_BATON: u8 = 3;

/// Each status and what it means, for people.
pub const TABLE: [(u8, &str); 4] = [
    (
        OK,
        "success: `run` stopped cleanly (SIGTERM, `ctl stop`), `ctl` got its answer (`ctl reload`: the reload completed), `check` found the config valid",
    ),
    (
        FAILURE,
        "failure: a bad config file or BATON_* variable, a listener or control socket that cannot be bound, a live baton holding the --pid-file, a worker that never became ready (--start-limit), a failed reload, any other error answer",
    ),
    (
        USAGE,
        "usage: an unknown option, a bad flag value, no command or listener, `ctl --control` with `--name`, or `ctl` without either while several batons run",
    ),
    (
        NO_BATON,
        "no baton running (`ctl`): no control socket, a stale one nobody answers on, or a baton that is shutting down",
    ),
];

/// The status for an error that ended baton's command.
pub fn of_error(error: &anyhow::Error) -> u8 {
    match error.downcast_ref::<ControlError>() {
        Some(error) if error.no_baton() => NO_BATON,
        Some(ControlError::Ambiguous(_)) => USAGE,
        _ => FAILURE,
    }
}

/// The status for a control response.
pub fn of_response(response: &Response) -> u8 {
    match (response.ok, response.code) {
        (true, _) => OK,
        (false, Some(ErrorCode::ShuttingDown)) => NO_BATON,
        (false, _) => FAILURE,
    }
}

/// As an [`ExitCode`].
pub fn code(status: u8) -> ExitCode {
    ExitCode::from(status)
}

/// The EXIT STATUS section of a man page, in roff.
pub fn man_section() -> String {
    let mut roff = String::from(".SH \"EXIT STATUS\"\n");
    for (status, meaning) in TABLE {
        roff.push_str(&format!(".TP\n\\fB{status}\\fR\n{}\n", roff_text(meaning)));
    }
    roff
}

/// Text for roff: a hyphen that is a minus sign, a backslash, a leading
/// dot or quote would be read as markup.
pub fn roff_text(text: &str) -> String {
    let escaped = text.replace('\\', "\\e").replace('-', "\\-");
    if escaped.starts_with(['.', '\'']) {
        format!("\\&{escaped}")
    } else {
        escaped
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    #[test]
    fn control_errors_map_to_their_status() {
        let stale = anyhow::Error::new(ControlError::Stale(PathBuf::from("/x.sock")));
        assert_eq!(of_error(&stale), NO_BATON);
        let missing = anyhow::Error::new(ControlError::Io {
            path: "/x.sock".into(),
            source: std::io::ErrorKind::NotFound.into(),
        });
        assert_eq!(of_error(&missing), NO_BATON);
        let several = anyhow::Error::new(ControlError::Ambiguous(vec!["a".into()]));
        assert_eq!(of_error(&several), USAGE);
        assert_eq!(of_error(&anyhow::anyhow!("bad config")), FAILURE);
        assert_eq!(of_response(&Response::ok()), OK);
        let failed = Response::error(ErrorCode::ReloadFailed, "reload failed: x");
        assert_eq!(of_response(&failed), FAILURE);
        let going = Response::error(ErrorCode::ShuttingDown, "baton is shutting down");
        assert_eq!(of_response(&going), NO_BATON);
    }

    #[test]
    fn the_man_section_lists_every_status() {
        let section = man_section();
        for status in 0..4 {
            assert!(section.contains(&format!("\\fB{status}\\fR")), "{section}");
        }
        assert!(section.contains("BATON_*"), "{section}");
        assert!(section.contains("\\-\\-pid\\-file"), "{section}");
    }
}
