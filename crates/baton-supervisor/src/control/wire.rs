//! What travels on the control socket: requests, responses, and the
//! machine-readable `code` of every error (docs/protocol.md).

use serde::{Deserialize, Serialize};

use crate::status::{ReloadRecord, Status};

/// The protocol version this baton speaks.
pub const VERSION: u32 = 1;

/// A request, as sent on the wire: `{"v":1,"cmd":"status"}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Request {
    /// The protocol version.
    pub v: u32,
    /// The command.
    pub cmd: Command,
}

/// The commands.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Command {
    /// Report listeners, generations, reloads and counters.
    Status,
    /// Reload, wait for the outcome.
    Reload,
    /// Drain every generation and exit.
    Stop,
}

/// What kind of error a response reports, for programs: the `error`
/// message is for people and may change, a code does not. A client must
/// accept codes it does not know (a newer baton may add some): they read
/// as [`ErrorCode::Other`].
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request line is not JSON.
    InvalidJson,
    /// The request line is longer than the cap.
    RequestTooLarge,
    /// The request has no `v`.
    MissingVersion,
    /// The request's `v` is not this baton's.
    UnsupportedVersion,
    /// `cmd` names no command.
    NoSuchCommand,
    /// The request is JSON but not a request (no `cmd`, a wrong type).
    InvalidRequest,
    /// The peer's uid may not control this baton.
    PermissionDenied,
    /// Every connection slot is taken.
    TooManyConnections,
    /// No request came for the idle timeout.
    IdleTimeout,
    /// baton is shutting down, or has stopped: the request will not run.
    ShuttingDown,
    /// The reload ran and failed (its record says why).
    ReloadFailed,
    /// A code this client does not know.
    #[serde(other)]
    Other,
}

impl ErrorCode {
    /// Every code baton sends, for the docs and tests.
    pub const ALL: [ErrorCode; 11] = [
        ErrorCode::InvalidJson,
        ErrorCode::RequestTooLarge,
        ErrorCode::MissingVersion,
        ErrorCode::UnsupportedVersion,
        ErrorCode::NoSuchCommand,
        ErrorCode::InvalidRequest,
        ErrorCode::PermissionDenied,
        ErrorCode::TooManyConnections,
        ErrorCode::IdleTimeout,
        ErrorCode::ShuttingDown,
        ErrorCode::ReloadFailed,
    ];

    /// The code as it is written on the wire.
    pub fn as_str(self) -> String {
        serde_json::to_value(self)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default()
    }
}

/// A response: `ok`, and what the command returns, or `code` and `error`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Response {
    /// The protocol version.
    pub v: u32,
    /// Whether the command succeeded (a failed reload is `false`).
    pub ok: bool,
    /// What kind of error, when not `ok` (an older baton sent none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<ErrorCode>,
    /// Why not, for a person.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// For `status`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<Box<Status>>,
    /// For `reload`: the reload, complete or failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reload: Option<ReloadRecord>,
}

impl Response {
    /// A success with nothing more to say.
    pub fn ok() -> Self {
        Response {
            v: VERSION,
            ok: true,
            ..Response::default()
        }
    }

    /// A failure of kind `code`.
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        Response {
            v: VERSION,
            ok: false,
            code: Some(code),
            error: Some(message.into()),
            ..Response::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_snake_case_and_an_unknown_one_is_other() {
        let response = Response::error(ErrorCode::NoSuchCommand, "no");
        assert_eq!(
            serde_json::to_string(&response).unwrap(),
            r#"{"v":1,"ok":false,"code":"no_such_command","error":"no"}"#
        );
        let newer: Response =
            serde_json::from_str(r#"{"v":1,"ok":false,"code":"from_the_future","error":"x"}"#)
                .unwrap();
        assert_eq!(newer.code, Some(ErrorCode::Other));
        let older: Response = serde_json::from_str(r#"{"v":1,"ok":false,"error":"x"}"#).unwrap();
        assert_eq!(older.code, None);
        assert_eq!(
            ErrorCode::TooManyConnections.as_str(),
            "too_many_connections"
        );
        assert!(ErrorCode::ALL.iter().all(|c| *c != ErrorCode::Other));
    }
}
