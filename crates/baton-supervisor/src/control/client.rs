//! The client side of the control socket (`baton ctl`): finding the one
//! baton running, and asking it one thing.

use std::io;
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::{Path, PathBuf};

use super::{Command, ControlError, Request, Response, VERSION, default_dir, socket_dir};
use crate::local_users;
use crate::runtime_dir::{Dir, Kind, Rule};

/// Find the control socket for `baton ctl` when no name or path is given:
/// the only live one in [`default_dir`], or an error saying there is none
/// or listing them.
pub fn discover() -> Result<PathBuf, ControlError> {
    discover_in(&default_dir())
}

/// [`discover`] in `dir`. A socket file counts only if a server answers
/// on it: a baton that was killed leaves a stale one behind, which must
/// not make the choice ambiguous.
pub fn discover_in(dir: &Path) -> Result<PathBuf, ControlError> {
    let checked = match Dir::open(dir, Rule::Own, false) {
        Ok(checked) => Some(checked),
        Err(error) if error.is_not_found() => None,
        Err(error) => return Err(error.into()),
    };
    let mut names: Vec<String> = checked
        .as_ref()
        .and_then(|checked| std::fs::read_dir(checked.entry(".")).ok())
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().to_str().map(str::to_owned))
                .filter(|name| name.ends_with(".sock"))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    let (mut live, mut stale) = (Vec::new(), Vec::new());
    for name in names {
        let dir = checked.as_ref().expect("names come from the directory");
        match dir.kind(&name) {
            Ok(Some(Kind::Socket)) => {}
            _ => continue,
        }
        // Connected and closed at once: baton reads end-of-file and
        // forgets the connection.
        match StdUnixStream::connect(dir.entry(&name)) {
            Ok(_) => live.push(name),
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => stale.push(name),
            // Not ours to judge (EACCES): left out of both lists.
            Err(_) => {}
        }
    }
    match live.len() {
        0 => Err(ControlError::NotRunning {
            dir: dir.to_owned(),
            stale,
        }),
        1 => Ok(dir.join(live.remove(0))),
        _ => Err(ControlError::Ambiguous(
            live.iter()
                .map(|name| name.trim_end_matches(".sock").to_owned())
                .collect(),
        )),
    }
}

/// The client side: send one command, wait for its response (a reload
/// waits for its outcome, however long it takes).
pub fn request(path: &Path, command: Command) -> Result<Response, ControlError> {
    use std::io::{BufRead, Write};
    let io_err = |source| ControlError::Io {
        path: path.to_owned(),
        source,
    };
    let (dir, name) = match socket_dir(path, false) {
        Err(ControlError::Unsafe(error)) if error.is_not_found() => {
            return Err(ControlError::Missing(path.to_owned()));
        }
        other => other?,
    };
    match dir.kind(name).map_err(io_err)? {
        Some(Kind::Socket) => {}
        None => return Err(ControlError::Missing(path.to_owned())),
        Some(_) => return Err(ControlError::NotASocket(path.to_owned())),
    }
    let mut stream = StdUnixStream::connect(dir.entry(name)).map_err(|e| {
        if e.kind() == io::ErrorKind::ConnectionRefused {
            ControlError::Stale(path.to_owned())
        } else {
            io_err(e)
        }
    })?;
    // Before a word is sent or believed: is this baton, or someone posing?
    let uid = local_users::peer_uid(&stream).map_err(io_err)?;
    if !local_users::believable_server(uid, dir.owner()) {
        return Err(ControlError::Untrusted {
            path: path.to_owned(),
            uid,
            ours: nix::unistd::geteuid().as_raw(),
        });
    }
    let mut line = serde_json::to_vec(&Request {
        v: VERSION,
        cmd: command,
    })
    .expect("serializes");
    line.push(b'\n');
    // A refused peer is answered and disconnected without its request
    // being read: the write may then fail (EPIPE) while the refusal waits
    // to be read. Read it before reporting the write's error.
    let written = stream.write_all(&line);
    let mut answer = String::new();
    let read = std::io::BufReader::new(stream).read_line(&mut answer);
    if answer.is_empty() {
        written.map_err(io_err)?;
        read.map_err(io_err)?;
    }
    serde_json::from_str(&answer).map_err(|e| ControlError::Protocol(format!("{e}: {answer:?}")))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    /// A directory by the rule for baton's own: 0700.
    fn runtime_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        dir
    }

    /// A socket file nobody answers on: what a killed baton leaves.
    fn stale(path: &Path) {
        drop(std::os::unix::net::UnixListener::bind(path).unwrap());
    }

    #[test]
    fn a_stale_socket_beside_a_live_one_is_not_a_baton() {
        let dir = runtime_dir();
        let live = dir.path().join("app.sock");
        let _listener = super::super::bind(&live, 0o600).unwrap();
        stale(&dir.path().join("old.sock"));
        assert_eq!(discover_in(dir.path()).unwrap(), live);
    }

    #[test]
    fn none_live_is_not_running_and_two_live_are_ambiguous() {
        let dir = runtime_dir();
        stale(&dir.path().join("old.sock"));
        let error = discover_in(dir.path()).unwrap_err();
        assert!(matches!(error, ControlError::NotRunning { .. }), "{error}");
        assert!(error.to_string().contains("old.sock"), "{error}");
        let _a = super::super::bind(&dir.path().join("a.sock"), 0o600).unwrap();
        let _b = super::super::bind(&dir.path().join("b.sock"), 0o600).unwrap();
        let error = discover_in(dir.path()).unwrap_err();
        assert!(matches!(error, ControlError::Ambiguous(_)), "{error}");
        assert_eq!(
            error.to_string(),
            "several batons are running (a, b): choose one with --name or --control"
        );
        let missing = dir.path().join("missing");
        assert!(matches!(
            discover_in(&missing),
            Err(ControlError::NotRunning { .. })
        ));
    }
}
