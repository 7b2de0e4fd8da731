//! The cost of each generation over time, drawn as inline SVG: one chart
//! per figure (CPU, memory, descriptors), one line per generation in its
//! colour, a dashed total wherever generations overlap (that bump is what
//! a restart costs), and each reload as a vertical mark.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::format::{self, colour, esc, nice_ceiling};
use crate::machine::Generation;
use crate::metrics::history::{CostHistory, CostPoint};
use crate::status::{Outcome, Status};

/// The drawing's size in SVG units (it scales to its column's width).
const WIDTH: f64 = 400.0;
const HEIGHT: f64 = 150.0;
const LEFT: f64 = 52.0;
const RIGHT: f64 = 8.0;
const TOP: f64 = 12.0;
const BOTTOM: f64 = 18.0;

/// The shortest span of time a chart shows, in seconds: a baton that just
/// started does not stretch two samples over the whole width.
const MIN_SPAN: f64 = 30.0;

struct Figure {
    id: &'static str,
    title: &'static str,
    unit: &'static str,
    value: fn(&CostPoint) -> f64,
    label: fn(f64) -> String,
    /// The round number at or above a peak, where the axis ends.
    ceiling: fn(f64) -> f64,
}

const FIGURES: [Figure; 3] = [
    Figure {
        id: "cpu",
        title: "CPU",
        unit: "% of one core",
        value: |p| p.cpu_percent,
        label: |v| format!("{v:.0} %"),
        ceiling: nice_ceiling,
    },
    Figure {
        id: "rss",
        title: "Memory",
        unit: "resident",
        value: |p| p.rss_bytes as f64,
        label: format::bytes,
        ceiling: format::nice_bytes,
    },
    Figure {
        id: "fds",
        title: "Open descriptors",
        unit: "files and sockets",
        value: |p| p.open_fds as f64,
        label: format::count,
        ceiling: nice_ceiling,
    },
];

/// The section with the three charts and their legend.
pub(super) fn cost(out: &mut String, history: &CostHistory, status: &Status, now: f64) {
    let _ = write!(
        out,
        "<section id=\"cost\" class=\"w12\" data-frames=\"{}\"><h2>Cost over time</h2>",
        history.len()
    );
    let Some(first) = history.frames().next() else {
        let _ = write!(
            out,
            "<p class=\"muted\">No sample yet: the first comes within 2 s of a generation's start.</p></section>"
        );
        return;
    };
    let end = history.frames().next_back().map_or(now, |f| f.at).max(now);
    let start = first.at.min(end - MIN_SPAN);
    let series = series(history);
    let overlap = history.frames().any(|f| f.points.len() > 1);
    let _ = write!(out, "<div class=\"charts\">");
    for figure in &FIGURES {
        chart(out, figure, &series, history, overlap, status, (start, end));
    }
    let _ = write!(out, "</div><div class=\"legend\">");
    for &generation in series.keys().rev() {
        let state = status
            .generations
            .iter()
            .find(|g| g.generation == generation)
            .map_or("exited", |g| g.state.as_str());
        let _ = write!(
            out,
            "<span><span class=\"swatch\" style=\"background:{}\"></span>generation {generation} ({})</span>",
            colour(generation),
            esc(state)
        );
    }
    if overlap {
        let _ = write!(
            out,
            "<span><span class=\"total\"></span>all generations together</span>"
        );
    }
    let _ = write!(
        out,
        "<span>│ reload: <b style=\"color:#137a52\">ok</b> / <b style=\"color:#c2302a\">failed</b></span></div></section>"
    );
}

/// Each generation's points with their times, oldest generation first.
type Series<'a> = BTreeMap<Generation, Vec<(f64, &'a CostPoint)>>;

fn series(history: &CostHistory) -> Series<'_> {
    let mut series = Series::new();
    for frame in history.frames() {
        for point in &frame.points {
            series
                .entry(point.generation)
                .or_default()
                .push((frame.at, point));
        }
    }
    series
}

fn chart(
    out: &mut String,
    figure: &Figure,
    series: &Series<'_>,
    history: &CostHistory,
    overlap: bool,
    status: &Status,
    (start, end): (f64, f64),
) {
    let totals: Vec<(f64, f64)> = history
        .frames()
        .filter(|f| !f.points.is_empty())
        .map(|f| (f.at, f.points.iter().map(figure.value).sum()))
        .collect();
    let peak = totals.iter().map(|&(_, v)| v).fold(0.0, f64::max);
    let top = (figure.ceiling)(peak);
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let x = |t: f64| LEFT + (t - start) / (end - start) * plot_w;
    let y = |v: f64| TOP + plot_h - (v / top).clamp(0.0, 1.0) * plot_h;
    let latest = totals.last().map_or(0.0, |&(_, v)| v);
    let _ = write!(
        out,
        "<div class=\"chart\"><h3>{} <span>{} · now {}</span></h3>\
         <svg data-chart=\"{}\" viewBox=\"0 0 {WIDTH} {HEIGHT}\" role=\"img\" aria-label=\"{} over time\">",
        figure.title,
        figure.unit,
        esc(&(figure.label)(latest)),
        figure.id,
        figure.title,
    );
    // Grid and value axis: 0, half, top.
    for step in 0..=2 {
        let v = top * f64::from(step) / 2.0;
        let _ = write!(
            out,
            "<line x1=\"{LEFT}\" x2=\"{:.1}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"{}\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            WIDTH - RIGHT,
            if step == 0 { "#c9ced6" } else { "#eceef2" },
            LEFT - 5.0,
            y(v) + 3.5,
            esc(&(figure.label)(v)),
            y = y(v),
        );
    }
    time_axis(out, start, end, &x);
    reload_marks(out, status, start, end, &x);
    for (&generation, points) in series {
        let line: Vec<(f64, f64)> = points
            .iter()
            .map(|&(t, p)| (x(t), y((figure.value)(p))))
            .collect();
        draw_series(out, generation, &line, y(0.0));
    }
    if overlap {
        let path = polyline(totals.iter().map(|&(t, v)| (x(t), y(v))));
        let _ = write!(
            out,
            "<path d=\"{path}\" fill=\"none\" stroke=\"#1b2130\" stroke-width=\"1.2\" stroke-dasharray=\"4 3\" opacity=\".75\"><title>all generations</title></path>"
        );
    }
    let _ = write!(out, "</svg></div>");
}

/// One generation: a light area under a line, or a dot for a lone sample.
fn draw_series(out: &mut String, generation: Generation, line: &[(f64, f64)], base: f64) {
    let colour = colour(generation);
    match line {
        [] => {}
        [(x, y)] => {
            let _ = write!(
                out,
                "<circle data-generation=\"{generation}\" cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"2.5\" fill=\"{colour}\"><title>generation {generation}</title></circle>"
            );
        }
        [(x0, _), .., (xn, _)] => {
            let path = polyline(line.iter().copied());
            let _ = write!(
                out,
                "<path d=\"M{x0:.1},{base:.1}L{}L{xn:.1},{base:.1}Z\" fill=\"{colour}\" opacity=\".10\"/>\
                 <path data-generation=\"{generation}\" d=\"{path}\" fill=\"none\" stroke=\"{colour}\" stroke-width=\"1.8\" stroke-linejoin=\"round\"><title>generation {generation}</title></path>",
                &path[1..],
            );
        }
    }
}

fn polyline(points: impl Iterator<Item = (f64, f64)>) -> String {
    let mut path = String::new();
    for (i, (x, y)) in points.enumerate() {
        let _ = write!(path, "{}{x:.1},{y:.1}", if i == 0 { 'M' } else { 'L' });
    }
    path
}

/// Ticks at a round number of seconds before `end`, labelled as ages.
fn time_axis(out: &mut String, start: f64, end: f64, x: &impl Fn(f64) -> f64) {
    let span = end - start;
    let step = [10.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0]
        .into_iter()
        .find(|s| span / s <= 5.0)
        .unwrap_or(3600.0);
    let mut age = 0.0;
    while age <= span + 1e-6 {
        let at = x(end - age);
        let label = if age == 0.0 {
            "now".to_owned()
        } else if age < 60.0 {
            format!("−{age:.0} s")
        } else {
            format!("−{:.0} m", age / 60.0)
        };
        let anchor = if age == 0.0 { "end" } else { "middle" };
        let _ = write!(
            out,
            "<line x1=\"{at:.1}\" x2=\"{at:.1}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"#c9ced6\"/>\
             <text x=\"{at:.1}\" y=\"{:.1}\" text-anchor=\"{anchor}\">{label}</text>",
            HEIGHT - BOTTOM,
            HEIGHT - BOTTOM + 3.0,
            HEIGHT - 4.0,
        );
        age += step;
    }
}

/// A vertical mark where each reload in view ended (or was asked for, if
/// it has not ended), labelled with its number where there is room.
fn reload_marks(out: &mut String, status: &Status, start: f64, end: f64, x: &impl Fn(f64) -> f64) {
    let mut last_label = f64::NEG_INFINITY;
    for reload in &status.reloads {
        let at = reload.finished_at.unwrap_or(reload.requested_at);
        if at < start || at > end {
            continue;
        }
        let colour = match reload.outcome {
            Outcome::Ok => "#137a52",
            Outcome::Failed => "#c2302a",
            Outcome::Pending => "#2a5fcc",
        };
        let at = x(at);
        let _ = write!(
            out,
            "<line data-reload=\"{}\" x1=\"{at:.1}\" x2=\"{at:.1}\" y1=\"{TOP}\" y2=\"{:.1}\" stroke=\"{colour}\" stroke-width=\"1\" opacity=\".55\"><title>reload {}</title></line>",
            reload.id,
            HEIGHT - BOTTOM,
            reload.id,
        );
        if at - last_label >= 16.0 {
            last_label = at;
            let _ = write!(
                out,
                "<text x=\"{at:.1}\" y=\"{:.1}\" text-anchor=\"middle\" style=\"fill:{colour}\">{}</text>",
                TOP - 2.5,
                reload.id,
            );
        }
    }
}
