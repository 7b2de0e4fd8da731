//! The development loop's decisions: watched changes → (build) → reload,
//! with storm protection. Like the [machine](crate::machine) it is pure:
//! the driver owns the file watcher and the build processes, tells this
//! what happened and when, and does what it answers.
//!
//! - With a build step, the first generation waits for the first
//!   successful build.
//! - A change while a build runs cancels that build (its whole process
//!   group) and starts a new one; the newest change always wins.
//! - A failed build keeps the current generation serving.
//! - Watch-triggered reloads are at least `min_interval` apart, and back
//!   off exponentially after consecutive failed builds or reloads. SIGHUP
//!   and `ctl reload` never wait for this.

use std::time::{Duration, Instant};

use crate::fswatch::WatchSettings;

/// The longest pause after repeated failures.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// `--watch`, `--build`, `--min-interval`.
#[derive(Debug, Clone)]
pub struct DevSettings {
    /// What to watch.
    pub watch: WatchSettings,
    /// A shell command to run before each new generation, if any.
    pub build: Option<String>,
    /// The least time between two watch-triggered reloads.
    pub min_interval: Duration,
}

/// What the driver should do next.
#[derive(Debug, PartialEq, Eq)]
pub enum DevAction {
    /// Nothing now.
    Wait,
    /// Run the build step, killing one that still runs.
    Build,
    /// Start the first generation.
    Start,
    /// Reload.
    Reload,
}

/// The loop's state. See the [module docs](self).
#[derive(Debug)]
pub struct DevLoop {
    has_build: bool,
    min_interval: Duration,
    building: bool,
    /// The first generation has been asked for.
    started: bool,
    /// Changes not acted on yet (waiting for the interval or a backoff).
    pending: bool,
    /// Consecutive failed builds or watch-triggered reloads.
    failures: u32,
    /// No watch-triggered build or reload before this.
    not_before: Option<Instant>,
}

impl DevLoop {
    /// A loop that has not started anything yet.
    pub fn new(settings: &DevSettings) -> Self {
        DevLoop {
            has_build: settings.build.is_some(),
            min_interval: settings.min_interval,
            building: false,
            started: false,
            pending: false,
            failures: 0,
            not_before: None,
        }
    }

    /// baton is up: build first, or start at once.
    pub fn begin(&mut self) -> DevAction {
        if self.has_build {
            self.building = true;
            DevAction::Build
        } else {
            self.started = true;
            DevAction::Start
        }
    }

    /// When a deferred change may go ahead.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.not_before.filter(|_| self.pending)
    }

    /// Files changed.
    pub fn on_changes(&mut self, now: Instant) -> DevAction {
        self.pending = true;
        if self.building {
            // The newest change wins: cancel, and build again at once.
            return self.go(now);
        }
        self.on_timeout(now)
    }

    /// Time has passed (the deadline of [`poll_timeout`](Self::poll_timeout)).
    pub fn on_timeout(&mut self, now: Instant) -> DevAction {
        if !self.pending || self.not_before.is_some_and(|t| now < t) {
            return DevAction::Wait;
        }
        self.go(now)
    }

    fn go(&mut self, now: Instant) -> DevAction {
        self.pending = false;
        if self.has_build {
            self.building = true;
            DevAction::Build
        } else {
            self.not_before = Some(now + self.min_interval);
            self.next_generation()
        }
    }

    fn next_generation(&mut self) -> DevAction {
        if std::mem::replace(&mut self.started, true) {
            DevAction::Reload
        } else {
            DevAction::Start
        }
    }

    /// The build finished; `ok` is its success.
    pub fn on_build_done(&mut self, ok: bool, now: Instant) -> DevAction {
        if !std::mem::replace(&mut self.building, false) {
            return DevAction::Wait;
        }
        if ok {
            self.not_before = Some(now + self.min_interval);
            self.next_generation()
        } else {
            self.failed(now);
            DevAction::Wait
        }
    }

    /// The build command could not even be started: a failure too.
    pub fn on_build_unstartable(&mut self, now: Instant) {
        self.building = false;
        self.failed(now);
    }

    /// A generation was started, whatever asked for it (a SIGHUP while the
    /// first build still failed, say): from now on a good build reloads.
    pub fn on_generation_started(&mut self) {
        self.started = true;
    }

    /// A watch-triggered reload ended.
    pub fn on_reload_done(&mut self, ok: bool, now: Instant) {
        if ok {
            self.failures = 0;
        } else {
            self.failed(now);
        }
    }

    fn failed(&mut self, now: Instant) {
        self.failures += 1;
        self.not_before = Some(now + self.backoff());
    }

    /// The pause after the current run of failures.
    pub fn backoff(&self) -> Duration {
        if self.failures == 0 {
            return self.min_interval;
        }
        let base = self.min_interval.max(Duration::from_millis(500));
        let factor = 1u32 << (self.failures - 1).min(16);
        base.saturating_mul(factor).min(MAX_BACKOFF)
    }

    /// Consecutive failures so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(build: Option<&str>, min_interval: Duration) -> DevLoop {
        DevLoop::new(&DevSettings {
            watch: WatchSettings::new(["."]),
            build: build.map(str::to_owned),
            min_interval,
        })
    }

    #[test]
    fn without_a_build_a_change_reloads_at_most_once_per_interval() {
        let mut dev = dev(None, Duration::from_secs(1));
        let t0 = Instant::now();
        assert_eq!(dev.begin(), DevAction::Start);
        assert_eq!(dev.on_changes(t0), DevAction::Reload);
        assert_eq!(
            dev.on_changes(t0 + Duration::from_millis(100)),
            DevAction::Wait
        );
        assert_eq!(dev.poll_timeout(), Some(t0 + Duration::from_secs(1)));
        assert_eq!(
            dev.on_timeout(t0 + Duration::from_secs(1)),
            DevAction::Reload
        );
        assert_eq!(dev.poll_timeout(), None);
    }

    #[test]
    fn with_a_build_the_first_generation_waits_for_a_good_build() {
        let mut dev = dev(Some("make"), Duration::ZERO);
        let t0 = Instant::now();
        assert_eq!(dev.begin(), DevAction::Build);
        assert_eq!(dev.on_build_done(false, t0), DevAction::Wait);
        let later = t0 + dev.backoff();
        assert_eq!(dev.on_changes(later), DevAction::Build);
        assert_eq!(dev.on_build_done(true, later), DevAction::Start);
        assert_eq!(dev.on_changes(later), DevAction::Build);
        assert_eq!(dev.on_build_done(true, later), DevAction::Reload);
    }

    #[test]
    fn a_generation_started_by_someone_else_makes_the_next_build_a_reload() {
        let mut dev = dev(Some("make"), Duration::ZERO);
        let t0 = Instant::now();
        assert_eq!(dev.begin(), DevAction::Build);
        assert_eq!(dev.on_build_done(false, t0), DevAction::Wait);
        // SIGHUP started generation 1 meanwhile.
        dev.on_generation_started();
        let later = t0 + dev.backoff();
        assert_eq!(dev.on_changes(later), DevAction::Build);
        assert_eq!(dev.on_build_done(true, later), DevAction::Reload);
    }

    #[test]
    fn a_change_during_a_build_cancels_it_and_builds_again() {
        let mut dev = dev(Some("make"), Duration::ZERO);
        let t0 = Instant::now();
        assert_eq!(dev.begin(), DevAction::Build);
        assert_eq!(dev.on_build_done(true, t0), DevAction::Start);
        assert_eq!(dev.on_changes(t0), DevAction::Build);
        // The driver kills that build and starts another.
        assert_eq!(dev.on_changes(t0), DevAction::Build);
        assert_eq!(dev.on_build_done(true, t0), DevAction::Reload);
        // A late exit of the cancelled build means nothing.
        assert_eq!(dev.on_build_done(true, t0), DevAction::Wait);
    }

    #[test]
    fn failures_back_off_exponentially_and_success_resets() {
        let mut dev = dev(Some("make"), Duration::from_secs(1));
        let t0 = Instant::now();
        dev.begin();
        dev.on_build_done(true, t0);
        for expected in [1, 2, 4, 8, 16, 30, 30] {
            dev.building = true;
            assert_eq!(dev.on_build_done(false, t0), DevAction::Wait);
            assert_eq!(dev.backoff(), Duration::from_secs(expected));
        }
        // A change during the backoff waits for it.
        assert_eq!(dev.on_changes(t0), DevAction::Wait);
        assert_eq!(
            dev.on_timeout(t0 + Duration::from_secs(30)),
            DevAction::Build
        );
        dev.on_reload_done(true, t0);
        assert_eq!(dev.failures(), 0);
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;

        #[derive(Clone, Debug)]
        enum Op {
            Change,
            BuildDone(bool),
            ReloadDone(bool),
            Advance(u64),
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                3 => Just(Op::Change),
                2 => any::<bool>().prop_map(Op::BuildDone),
                1 => any::<bool>().prop_map(Op::ReloadDone),
                3 => (0..3_000u64).prop_map(Op::Advance),
            ]
        }

        /// Runs the loop the way the driver does and checks its promises.
        struct World {
            dev: DevLoop,
            now: Instant,
            min_interval: Duration,
            building: bool,
            started: bool,
            last_generation: Option<Instant>,
            /// A change came that no build or reload has picked up yet.
            unseen_change: bool,
        }

        impl World {
            fn act(&mut self, action: DevAction) {
                match action {
                    DevAction::Wait => {}
                    DevAction::Build => {
                        self.building = true;
                        self.unseen_change = false;
                    }
                    DevAction::Start | DevAction::Reload => {
                        assert_eq!(
                            action == DevAction::Start,
                            !self.started,
                            "one Start, first"
                        );
                        if let Some(last) = self.last_generation {
                            assert!(
                                self.now - last >= self.min_interval,
                                "watch-triggered generations at least min_interval apart"
                            );
                        }
                        self.started = true;
                        self.last_generation = Some(self.now);
                        if !self.dev.has_build {
                            self.unseen_change = false;
                        }
                    }
                }
            }

            fn apply(&mut self, op: Op) {
                match op {
                    Op::Change => {
                        self.unseen_change = true;
                        let action = self.dev.on_changes(self.now);
                        self.act(action);
                    }
                    Op::BuildDone(ok) if self.building => {
                        self.building = false;
                        let action = self.dev.on_build_done(ok, self.now);
                        self.act(action);
                    }
                    Op::BuildDone(_) => {}
                    Op::ReloadDone(ok) => self.dev.on_reload_done(ok, self.now),
                    Op::Advance(ms) => {
                        self.now += Duration::from_millis(ms);
                        if self.dev.poll_timeout().is_some_and(|at| at <= self.now) {
                            let action = self.dev.on_timeout(self.now);
                            self.act(action);
                        }
                    }
                }
            }
        }

        proptest! {
            #[test]
            fn no_change_is_lost_and_generations_keep_their_distance(
                ops in proptest::collection::vec(op(), 0..80),
                with_build in any::<bool>(),
                min_interval_ms in 0..2_000u64,
            ) {
                let min_interval = Duration::from_millis(min_interval_ms);
                let mut world = World {
                    dev: dev(with_build.then_some("make"), min_interval),
                    now: Instant::now(),
                    min_interval,
                    building: false,
                    started: false,
                    last_generation: None,
                    unseen_change: false,
                };
                // The first start without a build is baton's, not a
                // watched change's: no distance to keep from it.
                match world.dev.begin() {
                    DevAction::Start => world.started = true,
                    first => world.act(first),
                }
                for op in ops {
                    world.apply(op);
                }
                // Let time pass and builds succeed: every change is acted on.
                for _ in 0..4 {
                    world.apply(Op::BuildDone(true));
                    world.apply(Op::Advance(MAX_BACKOFF.as_millis() as u64));
                }
                world.apply(Op::BuildDone(true));
                prop_assert!(!world.unseen_change, "a change was never acted on");
            }
        }
    }
}
