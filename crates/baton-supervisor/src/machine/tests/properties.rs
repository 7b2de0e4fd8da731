//! Property tests: random sequences of reload requests, readiness,
//! watchdog pings, exits, crashes, failed spawns, passing time and
//! shutdown, against a small model of the processes the driver would run.

use std::collections::{BTreeMap, BTreeSet};
use std::num::NonZeroU32;

use proptest::prelude::*;

use super::*;

#[derive(Clone, Debug)]
enum Op {
    Reload,
    Ready(usize),
    Ping(usize),
    Observed(usize, bool),
    LeaderExit(usize, i32),
    GroupEmpty(usize),
    Quiesced(usize),
    SpawnsFail(bool),
    Advance(u64),
    Shutdown,
    Force,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => Just(Op::Reload),
        3 => any::<usize>().prop_map(Op::Ready),
        2 => any::<usize>().prop_map(Op::Ping),
        2 => (any::<usize>(), any::<bool>()).prop_map(|(i, w)| Op::Observed(i, w)),
        2 => (any::<usize>(), 0..3i32).prop_map(|(i, c)| Op::LeaderExit(i, c)),
        2 => any::<usize>().prop_map(Op::GroupEmpty),
        2 => any::<usize>().prop_map(Op::Quiesced),
        1 => any::<bool>().prop_map(Op::SpawnsFail),
        3 => (0..40_000u64).prop_map(Op::Advance),
        1 => Just(Op::Shutdown),
        1 => Just(Op::Force),
    ]
}

/// What the driver would know of one generation's processes.
#[derive(Debug)]
struct Processes {
    leader_alive: bool,
}

/// The machine, its clock and a model of the world around it.
struct World {
    machine: Machine,
    now: Instant,
    spawns_fail: bool,
    processes: BTreeMap<Generation, Processes>,
    next_id: ReloadId,
    answered: BTreeMap<ReloadId, bool>,
    exited: bool,
    /// A generation was ready at some point.
    ever_ready: bool,
    /// Generations asked to quiesce, and those sent their stop signal.
    quiescing: BTreeSet<Generation>,
    signalled: BTreeSet<Generation>,
}

impl World {
    fn new(settings: Settings) -> Self {
        World {
            machine: Machine::new(settings),
            now: Instant::now(),
            spawns_fail: false,
            processes: BTreeMap::new(),
            next_id: 0,
            answered: BTreeMap::new(),
            exited: false,
            ever_ready: false,
            quiescing: BTreeSet::new(),
            signalled: BTreeSet::new(),
        }
    }

    fn pick(&self, i: usize) -> Option<Generation> {
        let known: Vec<_> = self.processes.keys().copied().collect();
        (!known.is_empty()).then(|| known[i % known.len()])
    }

    /// Feed one event, carry out what the driver would, check the rules.
    fn feed(&mut self, event: Event) {
        let shutting_down = self.machine.shutting_down();
        let active = self.machine.active();
        let actions = self.machine.handle(event.clone(), self.now);
        let mut follow = Vec::new();
        for action in &actions {
            match action {
                Action::Spawn { generation, cause } => {
                    assert!(!shutting_down, "spawn during shutdown after {event:?}");
                    if *cause == SpawnCause::Watchdog {
                        assert!(active.is_some(), "a watchdog spawn replaces the active one");
                    }
                    if self.spawns_fail {
                        follow.push(Event::SpawnFailed {
                            generation: *generation,
                            error: "EMFILE".into(),
                        });
                    } else {
                        self.processes
                            .insert(*generation, Processes { leader_alive: true });
                    }
                }
                Action::Drain { generation, .. } | Action::Kill { generation } => {
                    assert!(
                        self.machine.generation(*generation).is_some(),
                        "{action:?} for an unknown generation after {event:?}"
                    );
                    if let Action::Drain { .. } = action {
                        assert!(
                            self.signalled.insert(*generation),
                            "a second stop signal for {generation} after {event:?}"
                        );
                        assert_eq!(
                            self.machine.settings().quiesce,
                            self.quiescing.contains(generation),
                            "quiesce first exactly when asked to, after {event:?}"
                        );
                    }
                }
                Action::Quiesce { generation } => {
                    assert!(self.machine.settings().quiesce, "{action:?} unasked");
                    assert!(
                        self.machine
                            .generation(*generation)
                            .is_some_and(Lifecycle::is_draining),
                        "{action:?} of a generation that is not draining after {event:?}"
                    );
                    assert!(self.quiescing.insert(*generation), "quiesced twice");
                }
                Action::Forget { generation } => {
                    assert!(self.machine.generation(*generation).is_none());
                    self.processes.remove(generation);
                }
                Action::Exit => {
                    assert!(self.machine.gave_up().is_none(), "gave up, yet Exit");
                    self.exited = true;
                }
                Action::GiveUp { .. } => {
                    assert!(!self.ever_ready, "gave up after a generation was ready");
                    self.exited = true;
                }
                Action::Notice(Notice::Ready { .. }) => self.ever_ready = true,
                Action::Notice(Notice::GivingUp { failed_starts, .. }) => {
                    let limit = self.machine.settings().start_limit.get();
                    assert_eq!(*failed_starts, limit, "after {event:?}");
                    assert!(!self.ever_ready, "gave up after a generation was ready");
                }
                Action::Observe { generation } => assert!(
                    self.machine
                        .generation(*generation)
                        .is_some_and(Lifecycle::is_starting),
                    "{action:?} of a generation that is not starting after {event:?}"
                ),
                Action::Notice(_) => {}
            }
        }
        for (id, ok) in answers(&actions) {
            assert!(id <= self.next_id, "an id nobody asked for: {id}");
            let before = self.answered.insert(id, ok);
            assert_eq!(before, None, "reload {id} answered twice, after {event:?}");
        }
        self.check(&event);
        for event in follow {
            self.feed(event);
        }
    }

    fn check(&self, event: &Event) {
        let count =
            |f: fn(&Lifecycle) -> bool| self.machine.generations().filter(|(_, s)| f(s)).count();
        assert!(count(Lifecycle::is_starting) <= 1, "after {event:?}");
        assert!(count(Lifecycle::is_active) <= 1, "after {event:?}");
        // Shutdown drains everything at once; the cap is for reloads.
        if !self.machine.shutting_down() {
            let cap = self.machine.settings().max_draining.get();
            assert!(count(Lifecycle::is_draining) <= cap, "after {event:?}");
        }
        if let Some(at) = self.machine.poll_timeout() {
            assert!(at > self.now, "a deadline in the past after {event:?}");
        }
    }

    fn apply(&mut self, op: Op) {
        match op {
            Op::Reload => {
                self.next_id += 1;
                self.feed(Event::ReloadRequested { id: self.next_id });
            }
            Op::Ready(i) => {
                if let Some(generation) = self.pick(i) {
                    self.feed(Event::Ready { generation });
                }
            }
            Op::Ping(i) => {
                if let Some(generation) = self.pick(i) {
                    self.feed(Event::WatchdogPing { generation });
                }
            }
            Op::Observed(i, waiting) => {
                if let Some(generation) = self.pick(i) {
                    self.feed(Event::Observed {
                        generation,
                        waiting,
                        seen: "seen".into(),
                    });
                }
            }
            Op::LeaderExit(i, code) => {
                if let Some(generation) = self.pick(i) {
                    self.leader_exit(generation, code);
                }
            }
            Op::GroupEmpty(i) => {
                let dead = self.pick(i).filter(|g| !self.processes[g].leader_alive);
                if let Some(generation) = dead {
                    self.feed(Event::GroupEmpty { generation });
                }
            }
            Op::Quiesced(i) => {
                if let Some(generation) = self.pick(i) {
                    self.feed(Event::Quiesced { generation });
                }
            }
            Op::SpawnsFail(fail) => self.spawns_fail = fail,
            Op::Advance(ms) => {
                self.now += Duration::from_millis(ms);
                while self.machine.poll_timeout().is_some_and(|at| at <= self.now) {
                    self.feed(Event::Timeout);
                }
            }
            Op::Shutdown => self.feed(Event::ShutdownRequested),
            Op::Force => self.feed(Event::ForceShutdown),
        }
    }

    fn leader_exit(&mut self, generation: Generation, code: i32) {
        let processes = self.processes.get_mut(&generation).expect("known");
        if processes.leader_alive {
            processes.leader_alive = false;
            let status = ProcessExit::Code(code);
            self.feed(Event::LeaderExited { generation, status });
        }
    }

    /// Shut down, let every process go, and see baton exit.
    fn finish(&mut self) {
        self.spawns_fail = false;
        self.feed(Event::ShutdownRequested);
        let generations: BTreeSet<_> = self.processes.keys().copied().collect();
        for generation in generations {
            self.leader_exit(generation, 0);
            self.feed(Event::GroupEmpty { generation });
        }
        assert!(self.exited, "baton exits once every generation is gone");
        assert_eq!(self.machine.generations().count(), 0);
        let asked: BTreeSet<_> = (1..=self.next_id).collect();
        let answered: BTreeSet<_> = self.answered.keys().copied().collect();
        assert_eq!(asked, answered, "every reload is answered exactly once");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_events_keep_the_rules(
        ops in proptest::collection::vec(op(), 0..120),
        readiness in 0..3u8,
        watchdog in any::<bool>(),
        start_limit in 1..8u32,
        quiesce in any::<bool>(),
    ) {
        let settings = Settings {
            readiness: match readiness {
                0 => Readiness::Notify,
                1 => Readiness::Auto,
                _ => Readiness::Delay(SECOND),
            },
            ready_timeout: 5 * SECOND,
            drain_timeout: 3 * SECOND,
            max_draining: NonZeroUsize::new(2).unwrap(),
            start_limit: NonZeroU32::new(start_limit).unwrap(),
            watchdog: watchdog.then_some(2 * SECOND),
            quiesce,
            ..Settings::default()
        };
        let mut world = World::new(settings);
        world.feed(Event::Start);
        for op in ops {
            world.apply(op);
        }
        world.finish();
    }
}
