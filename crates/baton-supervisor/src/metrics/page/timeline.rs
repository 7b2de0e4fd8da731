//! The recent reloads, newest first, each with its timeline on one shared
//! scale: waiting for its turn, the new generation starting (spawn →
//! ready), the old one draining (→ drained). A failure ends its bar with
//! a red cross; what is still going on is drawn hatched up to now.

use std::fmt::Write as _;

use super::format::{self, esc, millis, nice_ceiling};
use crate::status::{Outcome, ReloadRecord, Status};

/// How many reloads the page lists (the history keeps more).
const SHOWN: usize = 12;

/// The bar's size in SVG units.
const WIDTH: f64 = 300.0;
const HEIGHT: f64 = 16.0;

const WAIT: &str = "#c3c9d3";
const STARTING: &str = "#2a5fcc";
const DRAINING: &str = "#e0a133";
const FAILED: &str = "#c2302a";

/// The phases of one reload, in seconds from its request.
#[derive(Debug, Default, PartialEq)]
struct Phases {
    /// Request to spawn (another reload was in its way, or it never spawned).
    wait: f64,
    /// Spawn to ready, or to the failure.
    starting: f64,
    /// Ready to the old generation's exit.
    draining: f64,
    /// The phase shown last is still going on.
    ongoing: bool,
}

impl Phases {
    fn of(reload: &ReloadRecord, status: &Status, now: f64) -> Phases {
        let spawned = reload.spawned_at.map(|at| at.max(reload.requested_at));
        let wait = spawned.map_or_else(
            || reload.finished_at.unwrap_or(now) - reload.requested_at,
            |at| at - reload.requested_at,
        );
        let Some(spawned) = spawned else {
            return Phases {
                wait: wait.max(0.0),
                ongoing: reload.outcome == Outcome::Pending,
                ..Phases::default()
            };
        };
        match reload.outcome {
            Outcome::Pending => Phases {
                wait,
                starting: now - spawned,
                ongoing: true,
                ..Phases::default()
            },
            Outcome::Failed => Phases {
                wait,
                starting: reload.finished_at.unwrap_or(now) - spawned,
                ..Phases::default()
            },
            Outcome::Ok => {
                let starting = reload.ready_ms.map_or(0.0, |ms| ms as f64 / 1000.0);
                let ready = reload.finished_at.unwrap_or(spawned + starting);
                let still_draining = reload.drain_ms.is_none()
                    && reload.previous_exit.is_none()
                    && status
                        .generations
                        .iter()
                        .any(|g| Some(g.generation) == reload.previous);
                let draining = match reload.drain_ms {
                    Some(ms) => ms as f64 / 1000.0,
                    None if still_draining => now - ready,
                    None => 0.0,
                };
                Phases {
                    wait,
                    starting,
                    draining,
                    ongoing: still_draining,
                }
            }
        }
        .clamped()
    }

    fn clamped(self) -> Phases {
        Phases {
            wait: self.wait.max(0.0),
            starting: self.starting.max(0.0),
            draining: self.draining.max(0.0),
            ..self
        }
    }

    fn total(&self) -> f64 {
        self.wait + self.starting + self.draining
    }
}

/// The reloads section.
pub(super) fn reloads(out: &mut String, status: &Status, now: f64) {
    let shown: Vec<&ReloadRecord> = status.reloads.iter().rev().take(SHOWN).collect();
    let phases: Vec<Phases> = shown.iter().map(|r| Phases::of(r, status, now)).collect();
    let scale = nice_ceiling(phases.iter().map(Phases::total).fold(0.1, f64::max));
    let _ = write!(
        out,
        "<section id=\"reloads\" class=\"w12\"><h2>Reloads · the last {} of {}\
         <span class=\"key\"><span><i style=\"background:{WAIT}\"></i>waiting for its turn</span>\
         <span><i style=\"background:{STARTING}\"></i>new generation: spawn → ready</span>\
         <span><i style=\"background:{DRAINING}\"></i>old generation: draining → exited</span>\
         <span><i style=\"background:{FAILED}\"></i>failed</span></span></h2>\
         <table><thead><tr><th class=\"num\">#</th><th>when (UTC)</th><th>trigger</th><th>generation</th>\
         <th>result</th><th>timeline <span class=\"muted\">(0 – {})</span></th>\
         <th class=\"num\">ready in</th><th class=\"num\">drained in</th><th>detail</th></tr></thead><tbody>",
        shown.len(),
        status.reloads.len(),
        format::duration(scale),
    );
    for (reload, phases) in shown.iter().zip(&phases) {
        row(out, reload, phases, scale, now);
    }
    if shown.is_empty() {
        let _ = write!(
            out,
            "<tr><td colspan=\"9\" class=\"muted\">no reload yet: <code>kill -HUP</code>, \
             <code>baton ctl reload</code> or a watched change starts one</td></tr>"
        );
    }
    let _ = write!(out, "</tbody></table></section>");
}

fn row(out: &mut String, reload: &ReloadRecord, phases: &Phases, scale: f64, now: f64) {
    let outcome = match reload.outcome {
        Outcome::Ok => "ok",
        Outcome::Failed => "failed",
        Outcome::Pending => "pending",
    };
    let generation = match (reload.previous, reload.generation) {
        (Some(previous), Some(next)) => format!("{previous} → <b>{next}</b>"),
        (None, Some(next)) => format!("<b>{next}</b>"),
        (_, None) => "<span class=\"muted\">none started</span>".to_owned(),
    };
    let generation = if reload.outcome == Outcome::Failed && reload.generation.is_some() {
        format!("<span class=\"gone\">{generation}</span>")
    } else {
        generation
    };
    let detail = match (reload.outcome, &reload.reason, &reload.previous_exit) {
        (_, Some(reason), _) => format!("<span class=\"bad\">{}</span>", esc(reason)),
        (_, None, Some(exit)) => format!(
            "<span class=\"muted\">generation {}: {}</span>",
            reload.previous.unwrap_or(0),
            esc(exit)
        ),
        (Outcome::Pending, ..) => "<span class=\"muted\">starting…</span>".to_owned(),
        _ if phases.ongoing => "<span class=\"muted\">draining…</span>".to_owned(),
        _ => String::new(),
    };
    let title = reload
        .reason
        .as_deref()
        .or(reload.previous_exit.as_deref())
        .unwrap_or("");
    let _ = write!(
        out,
        "<tr data-reload=\"{id}\" data-outcome=\"{outcome}\"><td class=\"num\"><b>{id}</b></td>\
         <td>{clock} <span class=\"muted\">{ago}</span></td><td>{trigger}</td><td>{generation}</td>\
         <td><span class=\"badge r-{outcome}\">{outcome}</span></td><td class=\"bar\">",
        id = reload.id,
        clock = format::clock(reload.requested_at),
        ago = format::ago(reload.requested_at, now),
        trigger = esc(&reload.trigger.to_string()),
    );
    bar(out, reload, phases, scale);
    let _ = write!(
        out,
        "</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"detail\"><div title=\"{}\">{detail}</div></td></tr>",
        reload.ready_ms.map_or_else(|| "—".to_owned(), millis),
        reload.drain_ms.map_or_else(|| "—".to_owned(), millis),
        esc(title),
    );
}

fn bar(out: &mut String, reload: &ReloadRecord, phases: &Phases, scale: f64) {
    let _ = write!(
        out,
        "<svg width=\"{WIDTH}\" height=\"{HEIGHT}\" viewBox=\"0 0 {WIDTH} {HEIGHT}\">\
         <defs><pattern id=\"hatch-{id}\" width=\"5\" height=\"5\" patternUnits=\"userSpaceOnUse\" patternTransform=\"rotate(45)\">\
         <rect width=\"2.5\" height=\"5\" fill=\"#fff\" opacity=\".55\"/></pattern></defs>\
         <line x1=\"0\" x2=\"{WIDTH}\" y1=\"8\" y2=\"8\" stroke=\"#eceef2\"/>",
        id = reload.id,
    );
    let width = |seconds: f64| (seconds / scale * WIDTH).max(2.0);
    let mut x = 0.0;
    let last_starting = phases.draining == 0.0;
    let segments = [
        (phases.wait, WAIT, "waiting", false),
        (
            phases.starting,
            if reload.outcome == Outcome::Failed {
                FAILED
            } else {
                STARTING
            },
            "spawn → ready",
            phases.ongoing && last_starting,
        ),
        (
            phases.draining,
            DRAINING,
            "draining",
            phases.ongoing && !last_starting,
        ),
    ];
    for (seconds, colour, what, ongoing) in segments {
        if seconds <= 0.0 && !ongoing {
            continue;
        }
        let w = width(seconds).min(WIDTH - x).max(0.0);
        let _ = write!(
            out,
            "<rect x=\"{x:.1}\" y=\"3\" width=\"{w:.1}\" height=\"10\" rx=\"2\" fill=\"{colour}\"><title>{what}: {}</title></rect>",
            format::duration(seconds)
        );
        if ongoing {
            let _ = write!(
                out,
                "<rect x=\"{x:.1}\" y=\"3\" width=\"{w:.1}\" height=\"10\" rx=\"2\" fill=\"url(#hatch-{})\"/>",
                reload.id
            );
        }
        x += w;
    }
    if reload.outcome == Outcome::Failed {
        // A cross where it failed.
        let cx = (x + 5.0).min(WIDTH - 5.0);
        let _ = write!(
            out,
            "<path d=\"M{:.1},4L{:.1},12M{:.1},4L{:.1},12\" stroke=\"{FAILED}\" stroke-width=\"2.2\" stroke-linecap=\"round\"><title>failed</title></path>",
            cx - 4.0,
            cx + 4.0,
            cx + 4.0,
            cx - 4.0,
        );
    }
    let _ = write!(out, "</svg>");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::Trigger;

    fn record(outcome: Outcome) -> ReloadRecord {
        ReloadRecord {
            id: 1,
            trigger: Trigger::Ctl,
            requested_at: 100.0,
            spawned_at: Some(100.5),
            finished_at: Some(101.0),
            outcome,
            generation: Some(2),
            previous: Some(1),
            reason: None,
            ready_ms: Some(500),
            drain_ms: None,
            previous_exit: None,
        }
    }

    #[test]
    fn phases_follow_the_record() {
        let status = Status::default();
        let mut ok = record(Outcome::Ok);
        ok.drain_ms = Some(2000);
        let p = Phases::of(&ok, &status, 200.0);
        assert_eq!(
            (p.wait, p.starting, p.draining, p.ongoing),
            (0.5, 0.5, 2.0, false)
        );

        // Generation 1 still draining: the drain runs up to now.
        let mut status = Status::default();
        status.generations.push(crate::status::GenerationStatus {
            generation: 1,
            ..Default::default()
        });
        let p = Phases::of(&record(Outcome::Ok), &status, 104.0);
        assert_eq!((p.draining, p.ongoing), (3.0, true));

        let p = Phases::of(&record(Outcome::Failed), &status, 200.0);
        assert_eq!((p.starting, p.draining, p.ongoing), (0.5, 0.0, false));

        let mut pending = record(Outcome::Pending);
        pending.finished_at = None;
        let p = Phases::of(&pending, &status, 102.5);
        assert_eq!((p.starting, p.ongoing), (2.0, true));

        // Rejected before any spawn (a config file that does not parse).
        let mut rejected = record(Outcome::Failed);
        rejected.spawned_at = None;
        rejected.generation = None;
        let p = Phases::of(&rejected, &status, 200.0);
        assert_eq!((p.wait, p.starting), (1.0, 0.0));
    }
}
