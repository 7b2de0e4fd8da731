//! The dev loop's build step: `sh -c COMMAND` in the worker's directory,
//! in its own process group, with none of baton's sockets, its output
//! prefixed line by line.

use std::io;
use std::os::fd::AsFd;

use super::blueprint::Blueprint;
use super::processes::ProcessTable;
use crate::spawn::{Role, SpawnRequest, WorkerCommand};

/// Start the build (killing one that still runs); returns its pid.
pub(super) fn start(
    processes: &mut ProcessTable,
    command: &str,
    blueprint: &Blueprint,
) -> io::Result<i32> {
    let (read, write) = std::io::pipe()?;
    let shell = WorkerCommand {
        program: "sh".into(),
        args: vec!["-c".into(), command.into()],
        cwd: blueprint.command.cwd.clone(),
    };
    let request = SpawnRequest {
        command: &shell,
        role: Role::Helper,
        env: blueprint.environment(),
        output: Some(write.as_fd()),
        user: blueprint.user.as_ref(),
    };
    let pid = processes.spawn_build(&request).map_err(io::Error::other)?;
    drop(write);
    let output = tokio::net::unix::pipe::Receiver::from_owned_fd(read.into())?;
    tokio::spawn(async move {
        use tokio::io::AsyncBufReadExt;
        let mut lines = tokio::io::BufReader::new(output).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            use std::io::Write;
            // One write per line: workers share this stderr.
            let _ = std::io::stderr().write_all(format!("build | {line}\n").as_bytes());
        }
    });
    Ok(pid)
}
