//! Text for the status page: HTML escaping and figures a person reads
//! (sizes, durations, clock times) rather than raw numbers.

use std::fmt;

/// `text`, escaped for HTML text and attribute values (and SVG, which
/// has the same rules). Every string from config, workers or the system
/// goes through this: a listener's name or a failure's reason may hold
/// `<`, `&` or quotes.
pub(super) struct Escaped<'a>(pub &'a str);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = self.0;
        while let Some(i) = rest.find(['&', '<', '>', '"', '\'']) {
            f.write_str(&rest[..i])?;
            f.write_str(match rest.as_bytes()[i] {
                b'&' => "&amp;",
                b'<' => "&lt;",
                b'>' => "&gt;",
                b'"' => "&quot;",
                _ => "&#39;",
            })?;
            rest = &rest[i + 1..];
        }
        f.write_str(rest)
    }
}

/// Shorthand for [`Escaped`].
pub(super) fn esc(text: &str) -> Escaped<'_> {
    Escaped(text)
}

/// A size in bytes: `812 KiB`, `12.4 MiB`.
pub(super) fn bytes(n: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 || value >= 100.0 {
        format!("{value:.0} {}", UNITS[unit])
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// A duration: `41 ms`, `1.24 s`, `2 m 05 s`, `3 h 12 m`.
pub(super) fn duration(seconds: f64) -> String {
    let s = seconds.max(0.0);
    if s < 1.0 {
        format!("{:.0} ms", s * 1000.0)
    } else if s < 10.0 {
        format!("{s:.2} s")
    } else if s < 60.0 {
        format!("{s:.1} s")
    } else if s < 3600.0 {
        let s = s as u64;
        format!("{} m {:02} s", s / 60, s % 60)
    } else if s < 86400.0 {
        let m = s as u64 / 60;
        format!("{} h {:02} m", m / 60, m % 60)
    } else {
        let h = s as u64 / 3600;
        format!("{} d {:02} h", h / 24, h % 24)
    }
}

/// A duration given in milliseconds.
pub(super) fn millis(ms: u64) -> String {
    duration(ms as f64 / 1000.0)
}

/// How long ago `at` was, seen from `now`: `12 s ago`.
pub(super) fn ago(at: f64, now: f64) -> String {
    let s = (now - at).max(0.0);
    if s < 1.0 {
        "just now".to_owned()
    } else if s < 60.0 {
        format!("{s:.0} s ago")
    } else {
        format!("{} ago", duration(s))
    }
}

/// The time of day of a Unix time, in UTC: `14:05:09`. The page is
/// rendered by baton, which does not know the reader's time zone.
pub(super) fn clock(at: f64) -> String {
    let s = at.max(0.0) as u64 % 86400;
    format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

/// A percentage of one core: `0.4 %`, `87 %`.
pub(super) fn percent(p: f64) -> String {
    if p < 10.0 {
        format!("{p:.1} %")
    } else {
        format!("{p:.0} %")
    }
}

/// A count, as the axis of a chart shows it.
pub(super) fn count(n: f64) -> String {
    format!("{n:.0}")
}

/// The smallest of 1, 2, 2.5, 5 × 10ⁿ at or above `x` (for axis scales).
pub(super) fn nice_ceiling(x: f64) -> f64 {
    if x <= 0.0 || !x.is_finite() {
        return 1.0;
    }
    let magnitude = magnitude(x);
    [1.0, 2.0, 2.5, 5.0, 10.0]
        .into_iter()
        .map(|m| m * magnitude)
        .find(|&v| v >= x * (1.0 - 1e-9))
        .unwrap_or(10.0 * magnitude)
}

/// 10ⁿ for the largest whole n with 10ⁿ ≤ `x` (positive, finite): the
/// same as `10f64.powf(x.log10().floor())`, but counted, because `log10`
/// and `powf` alone made baton link libm (0.3 MB of its resident set).
/// `powi` is compiler-builtins' `__powidf2`, not libm.
pub(super) fn magnitude(x: f64) -> f64 {
    let mut n: i32 = 0;
    while 10f64.powi(n + 1) <= x {
        n += 1;
    }
    while n > f64::MIN_10_EXP && 10f64.powi(n) > x {
        n -= 1;
    }
    10f64.powi(n)
}

/// [`nice_ceiling`] in the binary unit [`bytes`] shows `x` in, so that
/// a memory axis ends at 25 MiB rather than at 23.8 MiB.
pub(super) fn nice_bytes(x: f64) -> f64 {
    let mut unit = 1.0;
    while x / unit >= 1024.0 {
        unit *= 1024.0;
    }
    nice_ceiling(x / unit) * unit
}

/// Each generation's colour, the same in the tables and the charts.
pub(super) fn colour(generation: u64) -> &'static str {
    const PALETTE: [&str; 8] = [
        "#2a64d6", "#d9480f", "#2b8a3e", "#9c36b5", "#0c8599", "#c2255c", "#5c7cfa", "#e67700",
    ];
    PALETTE[(generation % PALETTE.len() as u64) as usize]
}
