//! The keys of the file that only a restart of baton applies: a reload
//! that finds them changed says so instead of ignoring them silently.

use super::Resolved;

/// The settings a reload cannot change (the control socket, metrics,
/// the dev loop), as baton started with them.
#[derive(Debug)]
pub struct StartOnly(Vec<(&'static str, String)>);

impl StartOnly {
    /// What `resolved` says of them.
    pub fn of(resolved: &Resolved) -> Self {
        StartOnly(vec![
            ("name", resolved.name.clone()),
            ("control", format!("{:?}", resolved.control)),
            ("control_mode", resolved.control_mode.to_string()),
            ("pid_file", format!("{:?}", resolved.pid_file)),
            ("metrics", format!("{:?}", resolved.metrics)),
            ("forward_signal", format!("{:?}", resolved.forward_signals)),
            (
                "watch, ignore, ext, debounce, build, min_interval",
                format!("{:?}", resolved.dev),
            ),
        ])
    }

    /// The keys whose value in `now` differs from the one at start.
    pub fn changed(&self, now: &Resolved) -> Vec<&'static str> {
        let now = StartOnly::of(now);
        self.0
            .iter()
            .zip(&now.0)
            .filter(|(at_start, now)| at_start.1 != now.1)
            .map(|(at_start, _)| at_start.0)
            .collect()
    }
}
