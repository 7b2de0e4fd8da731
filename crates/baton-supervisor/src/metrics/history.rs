//! What each generation cost over the last minutes, for the status page's
//! charts. The driver appends a frame whenever the sampler has measured
//! again; the ring is bounded, so a baton that runs for months holds the
//! same few kilobytes as one that started a minute ago.

use std::collections::VecDeque;

use crate::machine::Generation;
use crate::status::GenerationStatus;

/// How many frames the history keeps: ten minutes at the sampler's pace
/// of one every two seconds.
pub const FRAMES: usize = 300;

/// A bounded ring of [`Frame`]s, oldest first.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CostHistory {
    frames: VecDeque<Frame>,
}

/// One sample of every live generation.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    /// When, in seconds since the Unix epoch.
    pub at: f64,
    /// The generations measured, oldest first.
    pub points: Vec<CostPoint>,
}

/// What one generation cost at one sample.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CostPoint {
    pub generation: Generation,
    /// CPU use since the previous sample, in percent of one core.
    pub cpu_percent: f64,
    pub rss_bytes: u64,
    pub open_fds: u64,
    /// Established connections, counted while it drains.
    pub connections: Option<u64>,
    /// It was draining (or being killed) then.
    pub draining: bool,
}

impl CostHistory {
    /// Append what `generations` cost at `at`; those not sampled yet (no
    /// processes counted) are left out rather than drawn as zeros.
    pub fn record(&mut self, at: f64, generations: &[GenerationStatus]) {
        let points = generations
            .iter()
            .filter(|g| g.usage.processes > 0)
            .map(|g| CostPoint {
                generation: g.generation,
                cpu_percent: g.usage.cpu_percent,
                rss_bytes: g.usage.rss_bytes,
                open_fds: g.usage.open_fds,
                connections: g.usage.connections,
                draining: g.state == "draining" || g.state == "killing",
            })
            .collect();
        self.frames.push_back(Frame { at, points });
        while self.frames.len() > FRAMES {
            self.frames.pop_front();
        }
    }

    /// The frames, oldest first.
    pub fn frames(&self) -> impl DoubleEndedIterator<Item = &Frame> + Clone {
        self.frames.iter()
    }

    /// How many frames it holds.
    pub fn len(&self) -> usize {
        self.frames.len()
    }

    /// It holds no frame yet.
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::Usage;

    fn generation(generation: Generation, state: &str, processes: u32) -> GenerationStatus {
        GenerationStatus {
            generation,
            state: state.into(),
            usage: Usage {
                processes,
                rss_bytes: 1000 * generation,
                ..Usage::default()
            },
            ..GenerationStatus::default()
        }
    }

    #[test]
    fn keeps_the_last_frames_and_only_sampled_generations() {
        let mut history = CostHistory::default();
        for i in 0..FRAMES + 7 {
            history.record(
                i as f64,
                &[generation(1, "draining", 1), generation(2, "starting", 0)],
            );
        }
        assert_eq!(history.len(), FRAMES);
        assert_eq!(history.frames().next().unwrap().at, 7.0);
        let last = history.frames().next_back().unwrap();
        assert_eq!(last.points.len(), 1, "generation 2 has no sample yet");
        assert_eq!(last.points[0].generation, 1);
        assert_eq!(last.points[0].rss_bytes, 1000);
        assert!(last.points[0].draining);
    }
}
