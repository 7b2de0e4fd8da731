//! Every rule of the machine, as plain function calls, with time as an
//! argument: a test moves its clock instead of sleeping.

use std::num::NonZeroUsize;
use std::time::Duration;

use super::*;

const TERM: StopSignal = StopSignal::TERM;
const SECOND: Duration = Duration::from_secs(1);

fn notify_settings() -> Settings {
    Settings {
        readiness: Readiness::Notify,
        ..Settings::default()
    }
}

/// A machine, its clock, the spawns it asked for and the reload ids the
/// test handed it.
struct Harness {
    machine: Machine,
    now: Instant,
    spawns: Vec<Generation>,
    next_id: ReloadId,
}

impl Harness {
    fn new(settings: Settings) -> Self {
        Harness {
            machine: Machine::new(settings),
            now: Instant::now(),
            spawns: Vec::new(),
            next_id: 0,
        }
    }

    fn feed(&mut self, event: Event) -> Vec<Action> {
        let actions = self.machine.handle(event, self.now);
        self.spawns.extend(spawns(&actions));
        actions
    }

    /// Move the clock and deliver the timeout if the machine asked for one
    /// by then.
    fn advance(&mut self, by: Duration) -> Vec<Action> {
        self.now += by;
        match self.machine.poll_timeout() {
            Some(at) if at <= self.now => self.feed(Event::Timeout),
            _ => Vec::new(),
        }
    }

    /// Move the clock to the machine's next deadline and deliver it.
    fn fire_next(&mut self) -> Vec<Action> {
        let at = self.machine.poll_timeout().expect("a deadline");
        self.now = self.now.max(at);
        self.feed(Event::Timeout)
    }

    fn reload_request(&mut self) -> (ReloadId, Vec<Action>) {
        self.next_id += 1;
        let id = self.next_id;
        (id, self.feed(Event::ReloadRequested { id }))
    }

    /// Generation 1 started and ready.
    fn serving(settings: Settings) -> Self {
        let mut h = Harness::new(settings);
        h.feed(Event::Start);
        h.feed(Event::Ready { generation: 1 });
        assert_eq!(h.machine.active(), Some(1));
        h
    }

    /// A full reload to the next generation; returns the new generation.
    fn reload(&mut self) -> Generation {
        self.reload_request();
        let next = *self.spawns.last().unwrap();
        self.feed(Event::Ready { generation: next });
        next
    }

    fn phase(&self, generation: Generation) -> Option<&'static str> {
        self.machine.generation(generation).map(|s| s.phase.name())
    }

    fn exited(&mut self, generation: Generation, code: i32) -> Vec<Action> {
        self.feed(Event::LeaderExited {
            generation,
            status: ProcessExit::Code(code),
        })
    }
}

fn notices(actions: &[Action]) -> Vec<&Notice> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Notice(r) => Some(r),
            _ => None,
        })
        .collect()
}

fn spawns(actions: &[Action]) -> Vec<Generation> {
    actions
        .iter()
        .filter_map(|a| match *a {
            Action::Spawn { generation, .. } => Some(generation),
            _ => None,
        })
        .collect()
}

fn drains(actions: &[Action]) -> Vec<Generation> {
    actions
        .iter()
        .filter_map(|a| match *a {
            Action::Drain { generation, .. } => Some(generation),
            _ => None,
        })
        .collect()
}

fn kills(actions: &[Action]) -> Vec<Generation> {
    actions
        .iter()
        .filter_map(|a| match *a {
            Action::Kill { generation } => Some(generation),
            _ => None,
        })
        .collect()
}

/// The reload ids answered by these actions, with true for success.
fn answers(actions: &[Action]) -> Vec<(ReloadId, bool)> {
    notices(actions)
        .into_iter()
        .flat_map(|r| match r {
            Notice::Ready { reloads, .. } => reloads.iter().map(|&id| (id, true)).collect(),
            Notice::StartFailed { reloads, .. } | Notice::ReloadsCancelled { reloads } => {
                reloads.iter().map(|&id| (id, false)).collect()
            }
            _ => Vec::new(),
        })
        .collect()
}

#[test]
fn start_spawns_the_first_generation_with_a_ready_deadline() {
    let mut h = Harness::new(notify_settings());
    let actions = h.feed(Event::Start);
    assert_eq!(
        actions,
        vec![
            Action::Notice(Notice::Starting {
                generation: 1,
                cause: SpawnCause::Start,
                reloads: vec![]
            }),
            Action::Spawn {
                generation: 1,
                cause: SpawnCause::Start
            },
        ]
    );
    assert_eq!(h.machine.starting(), Some(1));
    assert_eq!(h.machine.poll_timeout(), Some(h.now + 60 * SECOND));
    assert!(h.feed(Event::Start).is_empty(), "only one first start");
}

#[test]
fn delay_readiness_counts_as_ready_after_the_delay() {
    let mut h = Harness::new(Settings::default());
    h.feed(Event::Start);
    assert_eq!(h.machine.poll_timeout(), Some(h.now + SECOND));
    assert!(h.advance(SECOND / 2).is_empty());
    let actions = h.advance(SECOND / 2);
    assert!(matches!(
        notices(&actions)[..],
        [Notice::Ready {
            generation: 1,
            previous: None,
            ..
        }]
    ));
}

#[test]
fn ready_notify_sooner_than_the_delay_counts_and_the_delay_is_then_ignored() {
    let mut h = Harness::new(Settings::default());
    h.feed(Event::Start);
    h.advance(SECOND / 4);
    let actions = h.feed(Event::Ready { generation: 1 });
    assert!(matches!(
        notices(&actions)[..],
        [Notice::Ready { ready_after, .. }] if *ready_after == SECOND / 4
    ));
    assert_eq!(h.machine.active(), Some(1));
    assert!(h.advance(SECOND).is_empty());
}

#[test]
fn a_worker_that_dies_within_the_delay_is_not_ready() {
    let mut h = Harness::serving(Settings::default());
    h.reload_request();
    h.exited(2, 1);
    assert!(
        h.advance(SECOND)
            .iter()
            .all(|a| !matches!(a, Action::Notice(Notice::Ready { .. })))
    );
    assert_eq!(h.machine.active(), Some(1));
}

#[test]
fn first_ready_drains_nothing() {
    let mut h = Harness::new(notify_settings());
    h.feed(Event::Start);
    let actions = h.feed(Event::Ready { generation: 1 });
    assert!(drains(&actions).is_empty());
    assert!(matches!(
        notices(&actions)[..],
        [Notice::Ready {
            generation: 1,
            previous: None,
            ..
        }]
    ));
}

#[test]
fn reload_starts_the_next_generation_and_drains_the_old_one_only_when_it_is_ready() {
    let mut h = Harness::serving(notify_settings());
    let (id, actions) = h.reload_request();
    assert_eq!(spawns(&actions), vec![2]);
    assert!(actions.contains(&Action::Notice(Notice::Starting {
        generation: 2,
        cause: SpawnCause::Reload,
        reloads: vec![id]
    })));
    assert!(drains(&actions).is_empty());
    assert_eq!(h.phase(1), Some("active"));

    let actions = h.feed(Event::Ready { generation: 2 });
    assert!(actions.contains(&Action::Drain {
        generation: 1,
        signal: TERM
    }));
    assert!(actions.contains(&Action::Notice(Notice::Ready {
        generation: 2,
        previous: Some(1),
        ready_after: Duration::ZERO,
        reloads: vec![id],
        reload_follows: false,
    })));
    assert_eq!(h.phase(1), Some("draining"));
    assert_eq!(h.machine.active(), Some(2));
    // Its drain deadline is the next thing the machine waits for.
    assert_eq!(h.machine.poll_timeout(), Some(h.now + 30 * SECOND));
}

#[test]
fn the_stop_signal_is_configurable() {
    let quit = StopSignal::new(3).unwrap();
    let mut h = Harness::serving(Settings {
        stop_signal: quit,
        ..notify_settings()
    });
    h.reload_request();
    let actions = h.feed(Event::Ready { generation: 2 });
    assert!(actions.contains(&Action::Drain {
        generation: 1,
        signal: quit
    }));
}

#[test]
fn stop_signals_refuse_kill_and_stop_and_read_well() {
    assert_eq!(StopSignal::new(9), None);
    assert_eq!(StopSignal::new(19), None);
    assert_eq!(StopSignal::new(0), None);
    assert_eq!(StopSignal::new(65), None);
    assert_eq!(StopSignal::TERM.to_string(), "SIGTERM");
    assert_eq!(StopSignal::new(10).unwrap().to_string(), "SIGUSR1");
    assert_eq!(StopSignal::new(40).unwrap().to_string(), "signal 40");
}

#[test]
fn reloads_during_a_reload_coalesce_into_exactly_one_more() {
    let mut h = Harness::serving(notify_settings());
    let (first, _) = h.reload_request();
    let mut waiting = Vec::new();
    for _ in 0..100 {
        let (id, actions) = h.reload_request();
        assert_eq!(
            actions,
            vec![Action::Notice(Notice::ReloadCoalesced { id })]
        );
        waiting.push(id);
    }
    let actions = h.feed(Event::Ready { generation: 2 });
    assert_eq!(answers(&actions)[0], (first, true));
    assert!(matches!(
        notices(&actions)[..],
        [
            Notice::Draining { generation: 1 },
            Notice::Ready {
                generation: 2,
                reload_follows: true,
                ..
            },
            Notice::Starting { generation: 3, .. }
        ]
    ));
    assert_eq!(spawns(&actions), vec![3]);
    let actions = h.feed(Event::Ready { generation: 3 });
    let done: Vec<_> = answers(&actions).into_iter().map(|(id, _)| id).collect();
    assert_eq!(
        done, waiting,
        "one generation answers every coalesced request"
    );
    assert_eq!(h.spawns, vec![1, 2, 3]);
    assert_eq!(h.machine.active(), Some(3));
}

#[test]
fn a_pending_reload_runs_after_a_failed_one_too() {
    let mut h = Harness::serving(notify_settings());
    let (first, _) = h.reload_request();
    let (second, _) = h.reload_request();
    let actions = h.exited(2, 3);
    assert_eq!(answers(&actions), vec![(first, false)]);
    assert_eq!(spawns(&actions), vec![3]);
    let actions = h.feed(Event::Ready { generation: 3 });
    assert_eq!(answers(&actions), vec![(second, true)]);
}

#[test]
fn a_new_generation_that_exits_before_ready_is_killed_and_the_old_one_serves_on() {
    let mut h = Harness::serving(notify_settings());
    let (id, _) = h.reload_request();
    let actions = h.exited(2, 3);
    assert_eq!(
        actions,
        vec![
            Action::Kill { generation: 2 },
            Action::Notice(Notice::StartFailed {
                generation: 2,
                failure: Failure::Exited(ProcessExit::Code(3)),
                active: Some(1),
                reloads: vec![id],
                reload_follows: false,
            }),
        ]
    );
    assert_eq!(h.machine.active(), Some(1));
    // Its late READY=1 does not count.
    assert!(h.feed(Event::Ready { generation: 2 }).is_empty());
    let actions = h.feed(Event::GroupEmpty { generation: 2 });
    assert_eq!(
        actions,
        vec![
            Action::Notice(Notice::Exited {
                generation: 2,
                status: Some(ProcessExit::Code(3)),
                drained_in: None,
            }),
            Action::Forget { generation: 2 }
        ]
    );
    // The next reload tries again.
    assert_eq!(spawns(&h.reload_request().1), vec![3]);
}

#[test]
fn a_new_generation_that_misses_its_ready_deadline_is_killed() {
    let mut h = Harness::serving(notify_settings());
    let (id, _) = h.reload_request();
    assert!(h.advance(59 * SECOND).is_empty());
    let actions = h.advance(SECOND);
    assert_eq!(
        actions,
        vec![
            Action::Kill { generation: 2 },
            Action::Notice(Notice::StartFailed {
                generation: 2,
                failure: Failure::NeverNotified(60 * SECOND),
                active: Some(1),
                reloads: vec![id],
                reload_follows: false,
            }),
        ]
    );
    assert_eq!(h.phase(2), Some("killing"));
    assert_eq!(h.machine.active(), Some(1));
    assert_eq!(h.machine.crashes(), 0, "a failed reload is not a crash");
}

#[test]
fn the_ready_deadline_ends_with_ready() {
    let mut h = Harness::serving(notify_settings());
    // Only the stable deadline (30 s) remains; nothing fails at 60 s.
    assert_eq!(h.machine.poll_timeout(), Some(h.now + 30 * SECOND));
    assert!(h.advance(60 * SECOND).is_empty());
    assert_eq!(h.machine.active(), Some(1));
    assert_eq!(h.machine.poll_timeout(), None);
}

#[test]
fn a_spawn_failure_answers_its_reload_and_the_next_reload_works() {
    let mut h = Harness::serving(notify_settings());
    let (id, _) = h.reload_request();
    let actions = h.feed(Event::SpawnFailed {
        generation: 2,
        error: "cannot create its notify socket: Too many open files".into(),
    });
    assert_eq!(
        actions,
        vec![
            Action::Forget { generation: 2 },
            Action::Notice(Notice::StartFailed {
                generation: 2,
                failure: Failure::SpawnFailed(
                    "cannot create its notify socket: Too many open files".into()
                ),
                active: Some(1),
                reloads: vec![id],
                reload_follows: false,
            })
        ]
    );
    assert!(h.machine.generation(2).is_none());
    assert_eq!(h.machine.active(), Some(1));
    assert_eq!(h.machine.poll_timeout(), Some(h.now + 30 * SECOND));
    // The next one works.
    let (next, actions) = h.reload_request();
    assert_eq!(spawns(&actions), vec![3]);
    let actions = h.feed(Event::Ready { generation: 3 });
    assert_eq!(answers(&actions), vec![(next, true)]);
}

#[test]
fn a_late_ready_from_an_older_generation_never_counts() {
    let mut h = Harness::serving(notify_settings());
    h.reload();
    h.reload_request();
    // Generation 1 drains; its READY=1 must not make generation 3 ready
    // nor bring itself back.
    assert!(h.feed(Event::Ready { generation: 1 }).is_empty());
    assert_eq!(h.phase(1), Some("draining"));
    assert_eq!(h.machine.starting(), Some(3));
    assert_eq!(h.machine.active(), Some(2));
}

#[test]
fn a_draining_generation_that_misses_its_deadline_has_its_group_killed() {
    let mut h = Harness::serving(notify_settings());
    h.reload();
    let actions = h.advance(30 * SECOND);
    assert_eq!(
        actions,
        vec![
            Action::Kill { generation: 1 },
            Action::Notice(Notice::DrainTimedOut { generation: 1 })
        ]
    );
}

#[test]
fn the_group_is_killed_at_the_deadline_even_when_the_leader_has_exited() {
    let mut h = Harness::serving(notify_settings());
    h.reload();
    // The leader drained, but a child it forked still lives.
    assert!(h.exited(1, 0).is_empty());
    assert_eq!(h.phase(1), Some("draining"));
    let actions = h.advance(30 * SECOND);
    assert_eq!(kills(&actions), vec![1]);
    h.advance(SECOND);
    let actions = h.feed(Event::GroupEmpty { generation: 1 });
    assert!(actions.contains(&Action::Notice(Notice::Exited {
        generation: 1,
        status: Some(ProcessExit::Code(0)),
        drained_in: Some(31 * SECOND),
    })));
}

#[test]
fn a_drained_generation_is_gone_when_its_group_is_empty() {
    let mut h = Harness::serving(notify_settings());
    h.reload();
    h.advance(SECOND);
    h.exited(1, 0);
    let actions = h.feed(Event::GroupEmpty { generation: 1 });
    assert_eq!(
        notices(&actions),
        vec![&Notice::Exited {
            generation: 1,
            status: Some(ProcessExit::Code(0)),
            drained_in: Some(SECOND),
        }]
    );
    assert!(actions.contains(&Action::Forget { generation: 1 }));
    assert!(h.machine.generation(1).is_none());
    // Its deadline is gone with it.
    assert!(
        h.advance(30 * SECOND)
            .iter()
            .all(|a| !matches!(a, Action::Kill { .. }))
    );
}

#[test]
fn too_many_draining_generations_evict_the_oldest_first() {
    let mut h = Harness::serving(Settings {
        max_draining: NonZeroUsize::new(2).unwrap(),
        ..notify_settings()
    });
    h.reload(); // 1 drains
    h.reload(); // 2 drains
    assert_eq!(h.phase(1), Some("draining"));
    assert_eq!(h.phase(2), Some("draining"));
    h.reload_request();
    let actions = h.feed(Event::Ready { generation: 4 });
    let kill = actions
        .iter()
        .position(|a| *a == Action::Kill { generation: 1 })
        .expect("oldest killed");
    let drain = actions
        .iter()
        .position(|a| matches!(a, Action::Drain { generation: 3, .. }))
        .expect("previous drains");
    assert!(kill < drain, "the oldest is killed first: {actions:?}");
    assert!(actions.contains(&Action::Notice(Notice::Evicted {
        generation: 1,
        max_draining: 2
    })));
    assert_eq!(h.phase(2), Some("draining"));
    assert_eq!(h.phase(3), Some("draining"));
}

#[test]
fn an_active_crash_restarts_at_once_then_backs_off_exponentially() {
    let mut h = Harness::serving(notify_settings());
    let actions = h.feed(Event::LeaderExited {
        generation: 1,
        status: ProcessExit::Signal(6),
    });
    assert_eq!(kills(&actions), vec![1]);
    assert!(actions.contains(&Action::Notice(Notice::Crashed {
        generation: 1,
        status: ProcessExit::Signal(6)
    })));
    assert_eq!(spawns(&actions), vec![2], "the first restart is immediate");
    assert!(actions.contains(&Action::Spawn {
        generation: 2,
        cause: SpawnCause::Restart
    }));

    // Generation 2 comes up and crashes too: now the backoff starts.
    let mut expected = Vec::new();
    let mut seen = Vec::new();
    let mut generation = 2;
    for crash in 2..=10u32 {
        h.feed(Event::Ready { generation });
        let actions = h.exited(generation, 1);
        assert!(spawns(&actions).is_empty());
        let delay = notices(&actions)
            .into_iter()
            .find_map(|r| match r {
                Notice::RestartScheduled { delay, .. } => Some(*delay),
                _ => None,
            })
            .expect("a restart is scheduled");
        assert_eq!(h.machine.poll_timeout(), Some(h.now + delay));
        seen.push(delay);
        expected.push((100 * Duration::from_millis(1) * 2u32.pow(crash - 2)).min(10 * SECOND));
        let actions = h.fire_next();
        generation = spawns(&actions)[0];
    }
    assert_eq!(seen, expected);
    assert_eq!(seen.last(), Some(&(10 * SECOND)));
}

#[test]
fn a_worker_that_stays_up_resets_the_backoff() {
    let mut h = Harness::serving(notify_settings());
    for _ in 0..3 {
        let g = h.machine.active().unwrap();
        let actions = h.exited(g, 1);
        if spawns(&actions).is_empty() {
            h.fire_next();
        }
        let next = *h.spawns.last().unwrap();
        h.feed(Event::Ready { generation: next });
    }
    assert_eq!(h.machine.crashes(), 3);
    assert!(h.advance(29 * SECOND).is_empty());
    h.advance(SECOND);
    assert_eq!(h.machine.crashes(), 0);
    let g = h.machine.active().unwrap();
    let actions = h.exited(g, 1);
    assert_eq!(spawns(&actions).len(), 1, "immediate again after a reset");
}

#[test]
fn a_crashed_generation_never_resets_the_backoff() {
    let mut h = Harness::serving(notify_settings());
    h.exited(1, 1);
    // Generation 1's stable deadline went with its crash, and generation
    // 2 has not been ready: nothing has stayed up, whatever the clock says.
    h.advance(30 * SECOND);
    assert_eq!(h.machine.crashes(), 1);
}

#[test]
fn an_initial_start_that_fails_is_retried_with_backoff() {
    let mut h = Harness::new(notify_settings());
    h.feed(Event::Start);
    let actions = h.exited(1, 2);
    assert!(actions.contains(&Action::Notice(Notice::StartFailed {
        generation: 1,
        failure: Failure::Exited(ProcessExit::Code(2)),
        active: None,
        reloads: vec![],
        reload_follows: false,
    })));
    assert_eq!(spawns(&actions), vec![2]);
    let actions = h.advance(60 * SECOND);
    assert!(actions.contains(&Action::Notice(Notice::RestartScheduled {
        delay: Duration::from_millis(100),
        crashes: 2
    })));
    assert!(h.advance(Duration::from_millis(99)).is_empty());
    assert_eq!(spawns(&h.advance(Duration::from_millis(1))), vec![3]);
}

#[test]
fn a_spawn_failure_without_an_active_generation_backs_off() {
    let mut h = Harness::new(notify_settings());
    h.feed(Event::Start);
    let actions = h.feed(Event::SpawnFailed {
        generation: 1,
        error: "Permission denied".into(),
    });
    assert_eq!(spawns(&actions), vec![2], "first retry at once");
    let actions = h.feed(Event::SpawnFailed {
        generation: 2,
        error: "Permission denied".into(),
    });
    assert!(spawns(&actions).is_empty());
    assert!(actions.contains(&Action::Notice(Notice::RestartScheduled {
        delay: Duration::from_millis(100),
        crashes: 2
    })));
}

#[test]
fn a_reload_during_backoff_starts_at_once_and_the_backoff_is_dropped() {
    let mut h = Harness::new(notify_settings());
    h.feed(Event::Start);
    h.exited(1, 1);
    h.exited(2, 1);
    assert_eq!(h.spawns, vec![1, 2]);
    assert!(h.machine.poll_timeout().is_some());
    assert_eq!(spawns(&h.reload_request().1), vec![3]);
    assert!(spawns(&h.advance(SECOND)).is_empty());
}

#[test]
fn an_active_crash_during_a_reload_leaves_the_takeover_to_the_new_generation() {
    let mut h = Harness::serving(notify_settings());
    h.reload_request();
    let actions = h.feed(Event::LeaderExited {
        generation: 1,
        status: ProcessExit::Signal(9),
    });
    assert!(spawns(&actions).is_empty());
    let actions = h.feed(Event::Ready { generation: 2 });
    assert!(matches!(
        notices(&actions)[..],
        [Notice::Ready {
            generation: 2,
            previous: None,
            ..
        }]
    ));
    assert!(drains(&actions).is_empty());
}

#[test]
fn shutdown_drains_every_generation_then_exits() {
    let mut h = Harness::serving(notify_settings());
    h.reload();
    let (starting, _) = h.reload_request(); // 3 starting
    let (queued, _) = h.reload_request();
    let actions = h.feed(Event::ShutdownRequested);
    assert_eq!(drains(&actions), vec![2, 3], "1 was draining already");
    assert_eq!(
        answers(&actions),
        vec![(queued, false), (starting, false)],
        "reloads that will never run are answered"
    );
    let (id, actions) = h.reload_request();
    assert_eq!(
        actions,
        vec![Action::Notice(Notice::ReloadsCancelled {
            reloads: vec![id]
        })]
    );
    for generation in [1, 2] {
        h.exited(generation, 0);
        assert!(
            !h.feed(Event::GroupEmpty { generation })
                .contains(&Action::Exit)
        );
    }
    h.exited(3, 0);
    assert!(
        h.feed(Event::GroupEmpty { generation: 3 })
            .contains(&Action::Exit)
    );
    assert_eq!(h.spawns, vec![1, 2, 3], "nothing restarts during shutdown");
}

#[test]
fn shutdown_with_nothing_running_exits_at_once() {
    let mut h = Harness::new(notify_settings());
    h.feed(Event::Start);
    h.exited(1, 1);
    h.exited(2, 1);
    h.feed(Event::GroupEmpty { generation: 1 });
    h.feed(Event::GroupEmpty { generation: 2 });
    // In backoff, nothing runs.
    let actions = h.feed(Event::ShutdownRequested);
    assert!(actions.contains(&Action::Exit));
    assert_eq!(h.machine.poll_timeout(), None, "the backoff is dropped");
    assert!(spawns(&h.advance(60 * SECOND)).is_empty());
}

#[test]
fn a_crash_during_shutdown_restarts_nothing() {
    let mut h = Harness::serving(notify_settings());
    h.feed(Event::ShutdownRequested);
    assert!(h.exited(1, 134).is_empty());
}

#[test]
fn force_shutdown_kills_every_group() {
    let mut h = Harness::serving(notify_settings());
    h.reload();
    h.feed(Event::ShutdownRequested);
    let actions = h.feed(Event::ForceShutdown);
    assert_eq!(kills(&actions), vec![1, 2]);
    for generation in [1, 2] {
        h.feed(Event::LeaderExited {
            generation,
            status: ProcessExit::Signal(9),
        });
    }
    h.feed(Event::GroupEmpty { generation: 1 });
    assert!(
        h.feed(Event::GroupEmpty { generation: 2 })
            .contains(&Action::Exit)
    );
}

#[test]
fn new_settings_apply_to_the_next_generation() {
    let mut h = Harness::serving(notify_settings());
    h.feed(Event::SettingsChanged(Settings {
        ready_timeout: 5 * SECOND,
        ..notify_settings()
    }));
    h.reload_request();
    let actions = h.advance(5 * SECOND);
    assert!(matches!(
        notices(&actions)[..],
        [Notice::StartFailed {
            failure: Failure::NeverNotified(t),
            ..
        }] if *t == 5 * SECOND
    ));
}

#[test]
fn backoff_delays_double_and_saturate() {
    let b = Backoff::default();
    assert_eq!(b.delay(0), Duration::ZERO);
    assert_eq!(b.delay(1), Duration::ZERO);
    assert_eq!(b.delay(2), Duration::from_millis(100));
    assert_eq!(b.delay(3), Duration::from_millis(200));
    assert_eq!(b.delay(8), Duration::from_millis(6400));
    assert_eq!(b.delay(9), 10 * SECOND);
    assert_eq!(b.delay(u32::MAX), 10 * SECOND);
}

#[test]
fn a_worker_that_never_notifies_is_told_what_to_try() {
    let text = Failure::NeverNotified(5 * SECOND).to_string();
    assert!(
        text.starts_with("not ready within 5s: no READY=1 arrived"),
        "{text}"
    );
    assert!(
        text.contains("try --ready auto or --ready delay=1s"),
        "{text}"
    );
    // A delay longer than the timeout has nothing to do with sd_notify.
    let mut h = Harness::serving(Settings {
        readiness: Readiness::Delay(10 * SECOND),
        ready_timeout: 5 * SECOND,
        ..notify_settings()
    });
    h.reload_request();
    let actions = h.advance(5 * SECOND);
    assert!(
        matches!(
            notices(&actions)[..],
            [Notice::StartFailed {
                failure: Failure::NotReady(_),
                ..
            }]
        ),
        "{actions:?}"
    );
}

#[test]
fn process_exits_read_well() {
    assert_eq!(ProcessExit::Code(3).to_string(), "exit code 3");
    assert_eq!(ProcessExit::Signal(9).to_string(), "killed by SIGKILL");
    assert!(ProcessExit::Code(0).success());
}

mod auto;
mod faults;
mod properties;
mod quiesce;
