//! Measuring what each generation costs, and finding the processes that
//! escaped their generation, off the event loop: reading `/proc` for every
//! process takes milliseconds that the loop's timers and signals should
//! not wait for.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::escapees::{self, Known};
use crate::status::{EscapedProcess, Sampler, Usage};

/// How often to sample what each generation costs.
const SAMPLE_INTERVAL: Duration = Duration::from_secs(2);

/// The process groups to measure.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Groups {
    /// Every live group, by its leader's pid.
    pub all: Vec<i32>,
    /// The draining ones, whose connections are counted too.
    pub draining: HashSet<i32>,
    /// What is not escaped among baton's children.
    pub known: Known,
}

/// What one sample found.
#[derive(Debug, Default)]
pub(super) struct Sample {
    /// What each group costs, by process group id.
    pub usage: HashMap<i32, Usage>,
    /// baton's children outside every generation.
    pub escaped: Vec<EscapedProcess>,
}

/// The latest sample.
pub(super) type Usages = Arc<Sample>;

/// Sample `groups` every few seconds on the blocking pool; the latest
/// result is always in the returned receiver.
pub(super) fn start(
    groups: watch::Receiver<Groups>,
) -> (watch::Receiver<Usages>, Option<tokio::task::JoinHandle<()>>) {
    let (usage_tx, usage_rx) = watch::channel(Usages::default());
    let task = Sampler::new().map(|sampler| tokio::spawn(sample_loop(sampler, groups, usage_tx)));
    (usage_rx, task)
}

async fn sample_loop(
    mut sampler: Sampler,
    groups: watch::Receiver<Groups>,
    usage: watch::Sender<Usages>,
) {
    let mut tick = tokio::time::interval(SAMPLE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let wanted = groups.borrow().clone();
        let measured = tokio::task::spawn_blocking(move || {
            let usage = match wanted.all.is_empty() {
                true => HashMap::new(),
                false => sampler.sample(&wanted.all, &wanted.draining),
            };
            let escaped = escapees::find(std::process::id() as i32, &wanted.known);
            (sampler, Sample { usage, escaped })
        })
        .await;
        let Ok((back, sample)) = measured else {
            tracing::warn!("sampling worker costs failed: no more samples");
            return;
        };
        sampler = back;
        usage.send_replace(Arc::new(sample));
    }
}
