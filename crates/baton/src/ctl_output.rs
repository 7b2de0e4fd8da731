//! How `baton ctl` shows a response to a person (`--json` shows it raw).

use std::fmt::Write as _;

use baton_supervisor::control::Response;
use baton_supervisor::status::{GenerationStatus, Outcome, ReloadRecord, Status};

/// The text for a response.
pub fn render(response: &Response) -> String {
    let mut out = String::new();
    if let Some(status) = &response.status {
        status_table(&mut out, status);
    }
    if let Some(reload) = &response.reload {
        let _ = writeln!(out, "{}", reload_line(reload));
    } else if let Some(error) = &response.error {
        let _ = writeln!(out, "error: {error}");
    } else if response.status.is_none() {
        let _ = writeln!(out, "ok");
    }
    out
}

fn reload_line(r: &ReloadRecord) -> String {
    let mut line = format!(
        "reload {} ({}): {}",
        r.id,
        r.trigger,
        match r.outcome {
            Outcome::Ok => "ok",
            Outcome::Failed => "failed",
            Outcome::Pending => "pending",
        }
    );
    if let Some(generation) = r.generation {
        let _ = write!(line, ", generation {generation}");
    }
    if let Some(previous) = r.previous {
        let _ = write!(line, " replaces {previous}");
    }
    if let Some(ms) = r.ready_ms {
        let _ = write!(line, ", ready in {ms} ms");
    }
    if let Some(ms) = r.drain_ms {
        let _ = write!(line, ", old one drained in {ms} ms");
    }
    if let Some(exit) = &r.previous_exit {
        let _ = write!(line, " ({exit})");
    }
    if let Some(reason) = &r.reason {
        let _ = write!(line, ": {reason}");
    }
    line
}

fn status_table(out: &mut String, s: &Status) {
    let _ = writeln!(
        out,
        "baton {} pid {} up {:.0}s",
        s.version, s.pid, s.uptime_s
    );
    let _ = writeln!(out, "\nLISTENERS");
    for l in &s.listeners {
        // Unknown for a socket baton inherited: it never set the backlog.
        let backlog = l.backlog.map_or("?".into(), |b| b.to_string());
        let _ = writeln!(
            out,
            "  {:<12} {:<32} {:<9} backlog {backlog}",
            l.name, l.address, l.health
        );
        if let Some(problem) = &l.problem {
            let _ = writeln!(out, "    {problem}");
        }
    }
    let _ = writeln!(
        out,
        "\n{:<5} {:>8} {:<9} {:>9} {:>6} {:>9} {:>8} {:>5} {:>5} {:>6}",
        "GEN", "PID", "STATE", "READY", "CPU%", "CPU", "RSS", "THR", "FDS", "CONNS"
    );
    for g in &s.generations {
        let _ = writeln!(
            out,
            "{:<5} {:>8} {:<9} {:>9} {:>6.1} {:>8.2}s {:>7.1}M {:>5} {:>5} {:>6}{}",
            g.generation,
            g.pid.map_or("-".into(), |p| p.to_string()),
            g.state,
            g.ready_ms.map_or("-".into(), |ms| format!("{ms}ms")),
            g.usage.cpu_percent,
            g.usage.cpu_seconds,
            g.usage.rss_bytes as f64 / (1024.0 * 1024.0),
            g.usage.threads,
            g.usage.open_fds,
            g.usage.connections.map_or("-".into(), |c| c.to_string()),
            faults(g),
        );
    }
    if !s.escaped.is_empty() {
        let _ = writeln!(
            out,
            "\nESCAPED (adopted, in no generation; stopped when baton exits)"
        );
        for p in &s.escaped {
            let _ = writeln!(out, "  pid {:<8} pgid {:<8} {}", p.pid, p.pgid, p.command);
        }
    }
    if let Some(guardian) = &s.guardian {
        let pid = guardian.pid.map_or("none".into(), |p| p.to_string());
        let _ = writeln!(
            out,
            "\nguardian pid {pid}, replaced {} times",
            guardian.restarts
        );
    }
    let c = &s.counters;
    let _ = writeln!(
        out,
        "\nreloads ok {} failed {}, crashes {}, restarts {}{}",
        c.reloads_ok,
        c.reloads_failed,
        c.crashes,
        c.restarts,
        c.backoff_ms
            .map_or(String::new(), |ms| format!(", backoff {ms} ms"))
    );
    if !s.reloads.is_empty() {
        let _ = writeln!(out, "\nRECENT RELOADS");
        for r in s.reloads.iter().rev().take(10) {
            let _ = writeln!(out, "  {}", reload_line(r));
        }
    }
}

/// What is wrong with a generation's processes, for the end of its row.
fn faults(g: &GenerationStatus) -> String {
    let mut faults = Vec::new();
    if g.silent {
        faults.push("silent: missed its watchdog".to_owned());
    }
    if g.usage.stopped > 0 {
        faults.push(format!("{} stopped", g.usage.stopped));
    }
    if faults.is_empty() {
        String::new()
    } else {
        format!("  ({})", faults.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_supervisor::status::{EscapedProcess, GuardianStatus, ListenerStatus, Usage};

    #[test]
    fn stopped_silent_and_escaped_processes_and_the_guardian_show() {
        let status = Status {
            generations: vec![GenerationStatus {
                generation: 3,
                state: "active".into(),
                silent: true,
                usage: Usage {
                    stopped: 1,
                    ..Usage::default()
                },
                ..GenerationStatus::default()
            }],
            escaped: vec![EscapedProcess {
                pid: 42,
                pgid: 42,
                command: "daemon --forever".into(),
            }],
            guardian: Some(GuardianStatus {
                pid: Some(7),
                restarts: 1,
            }),
            ..Status::default()
        };
        let mut out = String::new();
        status_table(&mut out, &status);
        assert!(
            out.contains("  (silent: missed its watchdog, 1 stopped)"),
            "{out}"
        );
        assert!(
            out.contains("pid 42       pgid 42       daemon --forever"),
            "{out}"
        );
        assert!(out.contains("guardian pid 7, replaced 1 times"), "{out}");
    }

    #[test]
    fn an_unknown_backlog_shows_as_a_question_mark() {
        let listener = |name: &str, backlog| ListenerStatus {
            name: name.into(),
            address: "127.0.0.1:8080".into(),
            backlog,
            ..ListenerStatus::default()
        };
        let status = Status {
            listeners: vec![listener("bound", Some(1024)), listener("inherited", None)],
            ..Status::default()
        };
        let mut out = String::new();
        status_table(&mut out, &status);
        let lines: Vec<&str> = out.lines().filter(|l| l.contains("backlog")).collect();
        assert_eq!(lines.len(), 2, "{out}");
        assert!(lines[0].ends_with("backlog 1024"), "{out}");
        assert!(lines[1].ends_with("backlog ?"), "{out}");
    }
}
