//! The chart: requests per 100 ms around each reload, as an SVG.

use baton_loadgen::Mode;

use crate::Options;
use crate::rows::Row;
use crate::servers::System;

/// One panel per system (rows) and traffic kind (columns), at the longest
/// reload interval: successful and failed requests per 100 ms, a grey line
/// at each reload. Panels of one column share their scales.
pub fn chart(rows: &[Row], plan: &Options) -> Result<(), Box<dyn std::error::Error>> {
    use plotters::prelude::*;

    let interval = *plan.intervals.iter().max().expect("an interval");
    let mut systems: Vec<System> = Vec::new();
    for row in rows {
        if !systems.contains(&row.system) {
            systems.push(row.system);
        }
    }
    let modes = [Mode::NewConnection, Mode::KeepAlive];
    let shown: Vec<&Row> = rows.iter().filter(|r| r.interval == interval).collect();
    // Only whole buckets: the last one is cut short by the end of the load.
    let whole = |row: &Row| {
        let width = row.report.bucket_width;
        let end = plan.duration;
        row.report
            .timeline
            .iter()
            .filter(move |b| b.start + width <= end)
            .copied()
            .collect::<Vec<_>>()
    };
    let scale = |mode: Mode, of: fn(&baton_loadgen::Bucket) -> u64, least: f64| {
        let max = shown
            .iter()
            .filter(|r| r.mode == mode)
            .flat_map(|r| whole(r).into_iter().map(|b| of(&b)))
            .max()
            .unwrap_or(0) as f64;
        (max * 1.1).max(least)
    };
    let span = plan.duration.as_secs_f64();

    if let Some(dir) = plan.svg.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let root =
        SVGBackend::new(&plan.svg, (1200, 60 + 200 * systems.len() as u32)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(
        &format!(
            "Reload every {} ms under load ({} clients, closed loop): blue = successful requests per 100 ms (left axis), \
             red = failed per 100 ms (right axis), grey = reload",
            interval.as_millis(),
            plan.clients
        ),
        ("sans-serif", 15),
    )?;
    let panels = root.split_evenly((systems.len(), modes.len()));
    for (i, area) in panels.iter().enumerate() {
        let system = systems[i / modes.len()];
        let mode = modes[i % modes.len()];
        let Some(row) = shown.iter().find(|r| r.system == system && r.mode == mode) else {
            continue;
        };
        let ok_max = scale(mode, |b| b.ok, 10.0);
        let failed_max = scale(mode, |b| b.failed, 10.0);
        let caption = format!(
            "{} · {} · {} reloads · {} ok, {} failed",
            system.name(),
            mode,
            row.reloads.len(),
            row.report.ok,
            row.report.failed_total()
        );
        let mut chart = ChartBuilder::on(area)
            .caption(caption, ("sans-serif", 14))
            .margin(6)
            .x_label_area_size(24)
            .y_label_area_size(48)
            .right_y_label_area_size(48)
            .build_cartesian_2d(0f64..span, 0f64..ok_max)?
            .set_secondary_coord(0f64..span, 0f64..failed_max);
        chart
            .configure_mesh()
            .disable_x_mesh()
            .light_line_style(TRANSPARENT)
            .y_labels(4)
            .x_desc("seconds")
            .y_desc("ok / 100 ms")
            .label_style(("sans-serif", 11))
            .axis_desc_style(("sans-serif", 11))
            .y_label_formatter(&|v| format!("{v:.0}"))
            .draw()?;
        chart
            .configure_secondary_axes()
            .y_labels(4)
            .y_desc("failed / 100 ms")
            .label_style(("sans-serif", 11))
            .axis_desc_style(("sans-serif", 11))
            .y_label_formatter(&|v| format!("{v:.0}"))
            .draw()?;
        let grey = RGBColor(170, 170, 170);
        chart.draw_series(row.reloads.iter().map(|(at, _)| {
            let x = at.as_secs_f64();
            PathElement::new(vec![(x, 0.0), (x, ok_max)], grey.stroke_width(1))
        }))?;
        let buckets = whole(row);
        let half = row.report.bucket_width.as_secs_f64() / 2.0;
        let x = |b: &baton_loadgen::Bucket| b.start.as_secs_f64() + half;
        chart.draw_series(LineSeries::new(
            buckets.iter().map(|b| (x(b), b.ok as f64)),
            BLUE.stroke_width(2),
        ))?;
        chart.draw_secondary_series(LineSeries::new(
            buckets.iter().map(|b| (x(b), b.failed as f64)),
            RED.stroke_width(2),
        ))?;
        // A dot on every bucket that failed anything, however few.
        chart.draw_secondary_series(
            buckets
                .iter()
                .filter(|b| b.failed > 0)
                .map(|b| Circle::new((x(b), b.failed as f64), 3, RED.filled())),
        )?;
    }
    root.present()?;
    Ok(())
}
