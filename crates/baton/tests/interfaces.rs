//! baton's interfaces as a script meets them: each exit status, each
//! `BATON_*` variable and where it ranks, and the tables of both in the
//! README, docs/operating.md and the man page, which must not drift from
//! the code.

use std::os::unix::net::UnixListener;
use std::process::Output;

mod common;

use common::{baton, workspace};

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Every `BATON_*` variable `baton run --help` names.
fn variables() -> Vec<String> {
    let help = stdout(&baton(&["run", "--help"], &[]));
    let mut names: Vec<String> = help
        .split("[env: ")
        .skip(1)
        .map(|rest| rest[..rest.find(']').unwrap()].to_owned())
        .collect();
    names.sort();
    names.dedup();
    names
}

#[test]
fn each_exit_status() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("baton.toml");
    std::fs::write(&config, "command = [\"/bin/sh\"]\nlisten = [\":8080\"]\n").unwrap();
    let config = config.to_str().unwrap();

    // 0: a valid file.
    let ok = baton(&["check", "--config", config], &[]);
    assert_eq!(ok.status.code(), Some(0), "{ok:?}");

    // 1: a bad file, a bad variable, a listener that cannot be bound.
    std::fs::write(dir.path().join("bad.toml"), "ready = \"soon\"\n").unwrap();
    let bad = dir.path().join("bad.toml");
    let bad_file = baton(&["check", "--config", bad.to_str().unwrap()], &[]);
    assert_eq!(bad_file.status.code(), Some(1), "{bad_file:?}");
    let bad_variable = baton(&["check", "--config", config], &[("BATON_BACKLOG", "0")]);
    assert_eq!(bad_variable.status.code(), Some(1), "{bad_variable:?}");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    let unbindable = baton(
        &[
            "run",
            "--control",
            "none",
            "--listen",
            &address,
            "--",
            "/bin/true",
        ],
        &[],
    );
    assert_eq!(unbindable.status.code(), Some(1), "{unbindable:?}");

    // 2: usage.
    for args in [
        &["run", "--ready-timout", "5s", "--", "/bin/true"][..],
        &["run", "--listen", ":0"],
        &["ctl", "--control", "/x.sock", "--name", "x", "status"],
        &["check"],
        &["frobnicate"],
    ] {
        let usage = baton(args, &[]);
        assert_eq!(usage.status.code(), Some(2), "{args:?}: {usage:?}");
    }

    // 3: no baton: no socket file, no directory, a stale socket.
    let stale = dir.path().join("stale.sock");
    drop(UnixListener::bind(&stale).unwrap());
    for path in [
        dir.path().join("none.sock"),
        dir.path().join("no/dir.sock"),
        stale,
    ] {
        let path = path.to_str().unwrap();
        for how in [
            baton(&["ctl", "--control", path, "status"], &[]),
            baton(&["ctl", "reload"], &[("BATON_CONTROL", path)]),
        ] {
            assert_eq!(how.status.code(), Some(3), "{path}: {how:?}");
            assert_eq!(stderr(&how).lines().count(), 1, "{}", stderr(&how));
            assert!(stderr(&how).contains(path), "{}", stderr(&how));
        }
    }
}

#[test]
fn the_variables_rank_between_the_file_and_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("baton.toml");
    std::fs::write(
        &config,
        "command = [\"/bin/sh\", \"-c\", \"file\"]\nlisten = [\"file=:8080\"]\n\
         watch = [\"file\"]\next = [\"py\"]\npid_file = \"/run/file.pid\"\n",
    )
    .unwrap();
    let config_path = config.to_str().unwrap();
    let check = |env: &[(&str, &str)]| {
        let output = baton(&["check", "--config", config_path], env);
        assert!(output.status.success(), "{env:?}: {output:?}");
        stdout(&output)
    };
    let file = check(&[]);
    for line in [
        "command = [\"/bin/sh\", \"-c\", \"file\"]",
        "listen = file=:8080",
        "watch = file",
        "ext = py",
        "pid_file = /run/file.pid",
    ] {
        assert!(file.lines().any(|l| l == line), "no {line:?}:\n{file}");
    }
    let env = check(&[
        ("BATON_COMMAND", "/bin/sh -c 'echo \"two words\"'"),
        (
            "BATON_LISTEN",
            "http=127.0.0.1:8080, admin=unix:/run/app/admin.sock",
        ),
        ("BATON_WATCH", "src,templates"),
        ("BATON_IGNORE", "*.{js,css},tmp/**"),
        ("BATON_EXT", "rs,toml"),
        ("BATON_PID_FILE", "/run/app.pid"),
    ]);
    for line in [
        "command = [\"/bin/sh\", \"-c\", \"echo \\\"two words\\\"\"]",
        "listen = http=127.0.0.1:8080",
        "listen = admin=unix:/run/app/admin.sock",
        "watch = src",
        "watch = templates",
        "ignore = *.{js,css}",
        "ignore = tmp/**",
        "ext = rs,toml",
        "pid_file = /run/app.pid",
    ] {
        assert!(env.lines().any(|l| l == line), "no {line:?}:\n{env}");
    }
    // BATON_CONFIG names the file when --config does not.
    let by_variable = baton(&["check"], &[("BATON_CONFIG", config_path)]);
    assert!(by_variable.status.success(), "{by_variable:?}");
    assert_eq!(stdout(&by_variable), file);
    // A bad variable is one line naming it.
    let bad = baton(
        &["check", "--config", config_path],
        &[("BATON_COMMAND", "./app 'unbalanced")],
    );
    assert_eq!(bad.status.code(), Some(1), "{bad:?}");
    assert!(
        stderr(&bad)
            .starts_with("baton: error: BATON_COMMAND=./app 'unbalanced: unbalanced quotes"),
        "{}",
        stderr(&bad)
    );
    // The log options too, with the flag over the variable: a baton that
    // gives up on /bin/false at once logs a few lines first.
    let give_up = [
        "run",
        "--control",
        "none",
        "--listen",
        "127.0.0.1:0",
        "--start-limit",
        "1",
        "--",
        "/bin/false",
    ];
    let lines = |args: &[&str], env: &[(&str, &str)]| {
        let output = baton(args, env);
        assert_eq!(output.status.code(), Some(1), "{output:?}");
        stderr(&output)
    };
    let json = lines(&give_up, &[("BATON_LOG_FORMAT", "json")]);
    assert!(json.contains("\"message\":\"listening\""), "{json}");
    let mut flag = vec!["--log-format", "text"];
    flag.extend(give_up);
    let text = lines(&flag, &[("BATON_LOG_FORMAT", "json")]);
    assert!(text.contains(" INFO listening "), "{text}");
    let quiet = lines(&give_up, &[("BATON_LOG_LEVEL", "warn")]);
    assert!(!quiet.contains("listening"), "{quiet}");
    assert!(quiet.contains("giving up"), "{quiet}");
}

#[test]
fn every_option_has_a_variable_and_the_docs_list_each() {
    let names = variables();
    let help = stdout(&baton(&["run", "--help"], &[]));
    // Each option of `run` but --help itself names its variable.
    let mut options = 0;
    for line in help.lines().map(str::trim).filter(|l| l.starts_with('-')) {
        // `-l, --listen <…>` or `--config <FILE>`.
        let Some(at) = line.find("--") else { continue };
        let flag = line[at + 2..].split([' ', ',', '=']).next().unwrap();
        if flag == "help" || flag == "version" {
            continue;
        }
        let variable = format!("BATON_{}", flag.replace('-', "_").to_uppercase());
        assert!(names.contains(&variable), "--{flag} has no {variable}");
        options += 1;
    }
    assert!(options >= 25, "{options} options in\n{help}");
    assert!(names.contains(&"BATON_COMMAND".to_owned()), "{names:?}");

    let operating = std::fs::read_to_string(workspace().join("docs/operating.md")).unwrap();
    let page = stdout(&baton(&["man"], &[]));
    for name in &names {
        assert!(
            operating.contains(&format!("| `{name}`")),
            "docs/operating.md's table lacks {name}"
        );
        assert!(page.contains(name.as_str()), "the man page lacks {name}");
    }
}

#[test]
fn the_exit_status_tables_agree() {
    let page = stdout(&baton(&["man"], &[]));
    assert!(page.contains(".SH \"EXIT STATUS\""), "{page}");
    let readme = std::fs::read_to_string(workspace().join("README.md")).unwrap();
    let protocol = std::fs::read_to_string(workspace().join("docs/protocol.md")).unwrap();
    for status in 0..4 {
        assert!(page.contains(&format!("\\fB{status}\\fR")), "{status}");
        assert!(
            readme.contains(&format!("| {status} |")),
            "README's exit status table lacks {status}"
        );
    }
    // Every error code the protocol has is documented.
    for code in baton_supervisor::control::ErrorCode::ALL {
        let code = code.as_str();
        assert!(
            protocol.contains(&format!("`{code}`")),
            "docs/protocol.md lacks {code}"
        );
    }
}
