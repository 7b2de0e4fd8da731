//! The command line as a user meets it: what `baton check` prints reads
//! back, shell completions, manual pages.

use std::path::Path;
use std::process::Output;

mod common;

/// [`common::baton`], which must succeed.
fn baton(args: &[&str], env: &[(&str, &str)]) -> Output {
    let output = common::baton(args, env);
    assert!(
        output.status.success(),
        "baton {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn check(config: &Path, env: &[(&str, &str)]) -> String {
    let output = baton(&["check", "--config", config.to_str().unwrap()], env);
    String::from_utf8(output.stdout).unwrap()
}

/// The settings whose values are durations, as `baton check` names them.
const DURATIONS: [&str; 5] = [
    "ready",
    "ready_timeout",
    "drain_timeout",
    "debounce",
    "min_interval",
];

#[test]
fn the_durations_baton_check_prints_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("baton.toml");
    let base = "command = [\"/bin/sh\"]\nlisten = [\"http=127.0.0.1:8080\"]\nwatch = [\"src\"]\n";
    std::fs::write(
        &config,
        format!(
            "{base}ready = \"delay=2500ms\"\nready_timeout = \"1m 30s\"\n\
             drain_timeout = \"1500ms\"\ndebounce = \"250ms\"\nmin_interval = \"1h 1ms\"\n"
        ),
    )
    .unwrap();
    let printed = check(&config, &[]);
    let value = |key: &str| {
        printed
            .lines()
            .find_map(|line| line.strip_prefix(&format!("{key} = ")))
            .unwrap_or_else(|| panic!("no {key} in\n{printed}"))
            .to_owned()
    };
    assert_eq!(value("ready"), "delay=2s 500ms");
    assert_eq!(value("ready_timeout"), "1m 30s");
    assert_eq!(value("drain_timeout"), "1s 500ms");
    assert_eq!(value("min_interval"), "1h 1ms");

    // Written back into the file, each printed value resolves the same.
    let mut file = base.to_owned();
    for key in DURATIONS {
        file.push_str(&format!("{key} = \"{}\"\n", value(key)));
    }
    std::fs::write(&config, &file).unwrap();
    assert_eq!(check(&config, &[]), printed, "{file}");

    // So it does as a BATON_* variable over a file without the keys.
    std::fs::write(&config, base).unwrap();
    let vars: Vec<(String, String)> = DURATIONS
        .iter()
        .map(|key| (format!("BATON_{}", key.to_uppercase()), value(key)))
        .collect();
    let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(check(&config, &vars), printed, "{vars:?}");
}

#[test]
fn completions_and_manual_pages() {
    for (shell, marker) in [
        ("bash", "_baton()"),
        ("zsh", "#compdef baton"),
        ("fish", "complete -c baton"),
    ] {
        let script = String::from_utf8(baton(&["completions", shell], &[]).stdout).unwrap();
        assert!(script.contains(marker), "{shell}:\n{script}");
        assert!(script.contains("drain-timeout"), "{shell}: run's options");
    }
    let page = String::from_utf8(baton(&["man"], &[]).stdout).unwrap();
    assert!(page.contains(".TH baton 1"), "{page}");
    assert!(
        page.contains("baton\\-run(1)"),
        "subcommands are named: {page}"
    );

    let dir = tempfile::tempdir().unwrap();
    let pages = dir.path().join("man");
    baton(&["man", "--dir", pages.to_str().unwrap()], &[]);
    for name in ["baton.1", "baton-run.1", "baton-ctl.1", "baton-check.1"] {
        assert!(pages.join(name).is_file(), "no {name}");
    }
    let run = std::fs::read_to_string(pages.join("baton-run.1")).unwrap();
    assert!(run.contains("[default: 30s]"), "defaults shown: {run}");
    assert!(
        run.contains("BATON_DRAIN_TIMEOUT"),
        "variables shown: {run}"
    );
}
