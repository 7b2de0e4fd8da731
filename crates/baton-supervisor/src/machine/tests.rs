//! Every rule of the machine, as plain function calls.

use super::*;

const TERM: Signal = Signal::SIGTERM;

fn notify_settings() -> Settings {
    Settings {
        readiness: Readiness::Notify,
        ..Settings::default()
    }
}

fn pid(generation: Generation) -> i32 {
    1000 + generation as i32
}

/// A machine driven the way the driver drives it: every `Spawn` is answered
/// with `Spawned` at once.
struct Harness {
    machine: Machine,
    spawns: Vec<Generation>,
}

impl Harness {
    fn new(settings: Settings) -> Self {
        Harness {
            machine: Machine::new(settings),
            spawns: Vec::new(),
        }
    }

    fn feed(&mut self, event: Event) -> Vec<Action> {
        let actions = self.machine.handle(event);
        for action in &actions {
            if let Action::Spawn { generation } = *action {
                self.spawns.push(generation);
                let follow = self.machine.handle(Event::Spawned {
                    generation,
                    pid: pid(generation),
                });
                assert!(follow.is_empty(), "Spawned must not act: {follow:?}");
            }
        }
        actions
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
        self.feed(Event::ReloadRequested);
        let next = *self.spawns.last().unwrap();
        self.feed(Event::Ready { generation: next });
        next
    }

    fn phase(&self, generation: Generation) -> Option<Phase> {
        self.machine.generation(generation).map(|s| s.phase)
    }
}

fn reports(actions: &[Action]) -> Vec<&Report> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Report(r) => Some(r),
            _ => None,
        })
        .collect()
}

fn spawns(actions: &[Action]) -> Vec<Generation> {
    actions
        .iter()
        .filter_map(|a| match *a {
            Action::Spawn { generation } => Some(generation),
            _ => None,
        })
        .collect()
}

fn has(actions: &[Action], wanted: &Action) -> bool {
    actions.contains(wanted)
}

#[test]
fn start_spawns_the_first_generation_with_a_ready_deadline() {
    let mut h = Harness::new(notify_settings());
    let actions = h.feed(Event::Start);
    assert_eq!(
        actions,
        vec![
            Action::Spawn { generation: 1 },
            Action::StartTimer {
                timer: Timer::ReadyDeadline(1),
                after: Duration::from_secs(60)
            },
        ]
    );
    assert_eq!(h.machine.starting(), Some(1));
    assert_eq!(h.machine.generation(1).unwrap().pid, Some(1001));
}

#[test]
fn delay_readiness_also_starts_a_ready_delay_timer() {
    let mut h = Harness::new(Settings::default());
    let actions = h.feed(Event::Start);
    assert!(has(
        &actions,
        &Action::StartTimer {
            timer: Timer::ReadyDelay(1),
            after: Duration::from_secs(1)
        }
    ));
    let actions = h.feed(Event::TimerFired(Timer::ReadyDelay(1)));
    assert_eq!(
        reports(&actions),
        vec![&Report::Ready {
            generation: 1,
            previous: None
        }]
    );
}

#[test]
fn ready_notify_sooner_than_the_delay_counts_and_the_delay_is_then_ignored() {
    let mut h = Harness::new(Settings::default());
    h.feed(Event::Start);
    h.feed(Event::Ready { generation: 1 });
    assert_eq!(h.machine.active(), Some(1));
    assert!(h.feed(Event::TimerFired(Timer::ReadyDelay(1))).is_empty());
}

#[test]
fn a_worker_that_dies_within_the_delay_is_not_ready() {
    let mut h = Harness::serving(Settings::default());
    h.feed(Event::ReloadRequested);
    h.feed(Event::LeaderExited {
        generation: 2,
        status: ExitStatus::Code(1),
    });
    let actions = h.feed(Event::TimerFired(Timer::ReadyDelay(2)));
    assert!(actions.is_empty());
    assert_eq!(h.machine.active(), Some(1));
}

#[test]
fn first_ready_drains_nothing() {
    let mut h = Harness::new(notify_settings());
    h.feed(Event::Start);
    let actions = h.feed(Event::Ready { generation: 1 });
    assert!(!actions.iter().any(|a| matches!(a, Action::Signal { .. })));
    assert!(has(
        &actions,
        &Action::Report(Report::Ready {
            generation: 1,
            previous: None
        })
    ));
}

#[test]
fn reload_starts_the_next_generation_and_drains_the_old_one_only_when_it_is_ready() {
    let mut h = Harness::serving(notify_settings());
    let actions = h.feed(Event::ReloadRequested);
    assert_eq!(spawns(&actions), vec![2]);
    assert!(!actions.iter().any(|a| matches!(a, Action::Signal { .. })));
    assert_eq!(h.phase(1), Some(Phase::Active));

    let actions = h.feed(Event::Ready { generation: 2 });
    assert!(has(
        &actions,
        &Action::Signal {
            generation: 1,
            signal: TERM
        }
    ));
    assert!(has(
        &actions,
        &Action::StartTimer {
            timer: Timer::DrainDeadline(1),
            after: Duration::from_secs(30)
        }
    ));
    assert!(has(
        &actions,
        &Action::Report(Report::Ready {
            generation: 2,
            previous: Some(1)
        })
    ));
    assert_eq!(h.phase(1), Some(Phase::Draining));
    assert_eq!(h.machine.active(), Some(2));
}

#[test]
fn the_stop_signal_is_configurable() {
    let mut h = Harness::serving(Settings {
        stop_signal: Signal::SIGQUIT,
        ..notify_settings()
    });
    h.feed(Event::ReloadRequested);
    let actions = h.feed(Event::Ready { generation: 2 });
    assert!(has(
        &actions,
        &Action::Signal {
            generation: 1,
            signal: Signal::SIGQUIT
        }
    ));
}

#[test]
fn reloads_during_a_reload_coalesce_into_exactly_one_more() {
    let mut h = Harness::serving(notify_settings());
    h.feed(Event::ReloadRequested);
    for _ in 0..100 {
        let actions = h.feed(Event::ReloadRequested);
        assert_eq!(actions, vec![Action::Report(Report::ReloadCoalesced)]);
    }
    let actions = h.feed(Event::Ready { generation: 2 });
    assert_eq!(spawns(&actions), vec![3]);
    h.feed(Event::Ready { generation: 3 });
    assert_eq!(h.spawns, vec![1, 2, 3]);
    assert_eq!(h.machine.active(), Some(3));
}

#[test]
fn a_pending_reload_runs_after_a_failed_one_too() {
    let mut h = Harness::serving(notify_settings());
    h.feed(Event::ReloadRequested);
    h.feed(Event::ReloadRequested);
    let actions = h.feed(Event::LeaderExited {
        generation: 2,
        status: ExitStatus::Code(3),
    });
    assert_eq!(spawns(&actions), vec![3]);
}

#[test]
fn a_new_generation_that_exits_before_ready_is_killed_and_the_old_one_serves_on() {
    let mut h = Harness::serving(notify_settings());
    h.feed(Event::ReloadRequested);
    let actions = h.feed(Event::LeaderExited {
        generation: 2,
        status: ExitStatus::Code(3),
    });
    assert_eq!(
        actions,
        vec![
            Action::KillGroup { generation: 2 },
            Action::Report(Report::StartFailed {
                generation: 2,
                failure: Failure::Exited(ExitStatus::Code(3)),
                active: Some(1),
            }),
        ]
    );
    assert_eq!(h.machine.active(), Some(1));
    // Its late READY=1 does not count.
    assert!(h.feed(Event::Ready { generation: 2 }).is_empty());
    let actions = h.feed(Event::GroupEmpty { generation: 2 });
    assert_eq!(
        reports(&actions),
        vec![&Report::Exited {
            generation: 2,
            status: Some(ExitStatus::Code(3))
        }]
    );
    // The next reload tries again.
    assert_eq!(spawns(&h.feed(Event::ReloadRequested)), vec![3]);
}

#[test]
fn a_new_generation_that_misses_its_ready_deadline_is_killed() {
    let mut h = Harness::serving(notify_settings());
    h.feed(Event::ReloadRequested);
    let actions = h.feed(Event::TimerFired(Timer::ReadyDeadline(2)));
    assert_eq!(
        actions,
        vec![
            Action::KillGroup { generation: 2 },
            Action::Report(Report::StartFailed {
                generation: 2,
                failure: Failure::NotReady(Duration::from_secs(60)),
                active: Some(1),
            }),
        ]
    );
    assert_eq!(h.phase(2), Some(Phase::Killing));
    assert_eq!(h.machine.active(), Some(1));
    assert_eq!(h.machine.crashes(), 0, "a failed reload is not a crash");
}

#[test]
fn a_ready_deadline_after_ready_is_ignored() {
    let mut h = Harness::serving(notify_settings());
    assert!(
        h.feed(Event::TimerFired(Timer::ReadyDeadline(1)))
            .is_empty()
    );
    assert_eq!(h.machine.active(), Some(1));
}

#[test]
fn a_spawn_failure_during_reload_keeps_the_active_one() {
    let mut h = Harness::serving(notify_settings());
    h.feed(Event::ReloadRequested);
    let actions = h.machine.handle(Event::SpawnFailed {
        generation: 2,
        error: "No such file or directory".into(),
    });
    assert_eq!(
        reports(&actions),
        vec![&Report::StartFailed {
            generation: 2,
            failure: Failure::SpawnFailed("No such file or directory".into()),
            active: Some(1),
        }]
    );
    assert!(h.machine.generation(2).is_none());
    assert_eq!(h.machine.active(), Some(1));
}

#[test]
fn a_late_ready_from_an_older_generation_never_counts() {
    let mut h = Harness::serving(notify_settings());
    h.reload();
    h.feed(Event::ReloadRequested);
    // Generation 1 drains; its READY=1 must not make generation 3 ready
    // nor bring itself back.
    assert!(h.feed(Event::Ready { generation: 1 }).is_empty());
    assert_eq!(h.phase(1), Some(Phase::Draining));
    assert_eq!(h.machine.starting(), Some(3));
    assert_eq!(h.machine.active(), Some(2));
}

#[test]
fn a_draining_generation_that_misses_its_deadline_has_its_group_killed() {
    let mut h = Harness::serving(notify_settings());
    h.reload();
    let actions = h.feed(Event::TimerFired(Timer::DrainDeadline(1)));
    assert_eq!(
        actions,
        vec![
            Action::KillGroup { generation: 1 },
            Action::Report(Report::DrainTimedOut { generation: 1 })
        ]
    );
}

#[test]
fn the_group_is_killed_at_the_deadline_even_when_the_leader_has_exited() {
    let mut h = Harness::serving(notify_settings());
    h.reload();
    // The leader drained, but a child it forked still lives.
    assert!(
        h.feed(Event::LeaderExited {
            generation: 1,
            status: ExitStatus::Code(0)
        })
        .is_empty()
    );
    assert_eq!(h.phase(1), Some(Phase::Draining));
    let actions = h.feed(Event::TimerFired(Timer::DrainDeadline(1)));
    assert!(has(&actions, &Action::KillGroup { generation: 1 }));
}

#[test]
fn a_drained_generation_is_gone_when_its_group_is_empty() {
    let mut h = Harness::serving(notify_settings());
    h.reload();
    h.feed(Event::LeaderExited {
        generation: 1,
        status: ExitStatus::Code(0),
    });
    let actions = h.feed(Event::GroupEmpty { generation: 1 });
    assert_eq!(
        reports(&actions),
        vec![&Report::Exited {
            generation: 1,
            status: Some(ExitStatus::Code(0))
        }]
    );
    assert!(h.machine.generation(1).is_none());
    // Its deadline fires later and changes nothing.
    assert!(
        h.feed(Event::TimerFired(Timer::DrainDeadline(1)))
            .is_empty()
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
    assert_eq!(h.phase(1), Some(Phase::Draining));
    assert_eq!(h.phase(2), Some(Phase::Draining));
    h.feed(Event::ReloadRequested);
    let actions = h.feed(Event::Ready { generation: 4 });
    let kill = actions
        .iter()
        .position(|a| *a == Action::KillGroup { generation: 1 })
        .expect("oldest killed");
    let drain = actions
        .iter()
        .position(|a| {
            *a == Action::Signal {
                generation: 3,
                signal: TERM,
            }
        })
        .expect("previous drains");
    assert!(kill < drain, "the oldest is killed first: {actions:?}");
    assert!(has(
        &actions,
        &Action::Report(Report::Evicted {
            generation: 1,
            max_draining: 2
        })
    ));
    assert_eq!(h.phase(2), Some(Phase::Draining));
    assert_eq!(h.phase(3), Some(Phase::Draining));
}

#[test]
fn an_active_crash_restarts_at_once_then_backs_off_exponentially() {
    let mut h = Harness::serving(notify_settings());
    let actions = h.feed(Event::LeaderExited {
        generation: 1,
        status: ExitStatus::Signal(6),
    });
    assert!(has(&actions, &Action::KillGroup { generation: 1 }));
    assert!(has(
        &actions,
        &Action::Report(Report::Crashed {
            generation: 1,
            status: ExitStatus::Signal(6)
        })
    ));
    assert_eq!(spawns(&actions), vec![2], "the first restart is immediate");

    // Generation 2 comes up and crashes too: now the backoff starts.
    let mut expected = Vec::new();
    let mut seen = Vec::new();
    let mut generation = 2;
    for crash in 2..=10u32 {
        h.feed(Event::Ready { generation });
        let actions = h.feed(Event::LeaderExited {
            generation,
            status: ExitStatus::Code(1),
        });
        assert!(spawns(&actions).is_empty());
        let Some(Action::StartTimer {
            timer: Timer::Restart(number),
            after,
        }) = actions
            .iter()
            .find(|a| {
                matches!(
                    a,
                    Action::StartTimer {
                        timer: Timer::Restart(_),
                        ..
                    }
                )
            })
            .cloned()
        else {
            panic!("no restart timer in {actions:?}")
        };
        seen.push(after);
        expected
            .push((Duration::from_millis(100) * 2u32.pow(crash - 2)).min(Duration::from_secs(10)));
        let actions = h.feed(Event::TimerFired(Timer::Restart(number)));
        generation = spawns(&actions)[0];
    }
    assert_eq!(seen, expected);
    assert_eq!(seen.last(), Some(&Duration::from_secs(10)));
}

#[test]
fn a_worker_that_stays_up_resets_the_backoff() {
    let mut h = Harness::serving(notify_settings());
    for _ in 0..3 {
        let g = h.machine.active().unwrap();
        let actions = h.feed(Event::LeaderExited {
            generation: g,
            status: ExitStatus::Code(1),
        });
        if let Some(Action::StartTimer { timer, .. }) = actions.iter().find(|a| {
            matches!(
                a,
                Action::StartTimer {
                    timer: Timer::Restart(_),
                    ..
                }
            )
        }) {
            h.feed(Event::TimerFired(*timer));
        }
        let next = *h.spawns.last().unwrap();
        h.feed(Event::Ready { generation: next });
    }
    assert_eq!(h.machine.crashes(), 3);
    let g = h.machine.active().unwrap();
    h.feed(Event::TimerFired(Timer::Stable(g)));
    assert_eq!(h.machine.crashes(), 0);
    let actions = h.feed(Event::LeaderExited {
        generation: g,
        status: ExitStatus::Code(1),
    });
    assert_eq!(spawns(&actions).len(), 1, "immediate again after a reset");
}

#[test]
fn a_stale_stable_timer_does_not_reset_the_backoff() {
    let mut h = Harness::serving(notify_settings());
    h.feed(Event::LeaderExited {
        generation: 1,
        status: ExitStatus::Code(1),
    });
    h.feed(Event::TimerFired(Timer::Stable(1)));
    assert_eq!(h.machine.crashes(), 1);
}

#[test]
fn an_initial_start_that_fails_is_retried_with_backoff() {
    let mut h = Harness::new(notify_settings());
    h.feed(Event::Start);
    let actions = h.feed(Event::LeaderExited {
        generation: 1,
        status: ExitStatus::Code(2),
    });
    assert!(has(
        &actions,
        &Action::Report(Report::StartFailed {
            generation: 1,
            failure: Failure::Exited(ExitStatus::Code(2)),
            active: None
        })
    ));
    assert_eq!(spawns(&actions), vec![2]);
    let actions = h.feed(Event::TimerFired(Timer::ReadyDeadline(2)));
    assert!(has(
        &actions,
        &Action::StartTimer {
            timer: Timer::Restart(1),
            after: Duration::from_millis(100)
        }
    ));
    assert_eq!(
        spawns(&h.feed(Event::TimerFired(Timer::Restart(1)))),
        vec![3]
    );
}

#[test]
fn a_spawn_failure_without_an_active_generation_backs_off() {
    let mut h = Harness::new(notify_settings());
    h.machine.handle(Event::Start);
    let actions = h.machine.handle(Event::SpawnFailed {
        generation: 1,
        error: "Permission denied".into(),
    });
    assert_eq!(spawns(&actions), vec![2], "first retry at once");
    let actions = h.machine.handle(Event::SpawnFailed {
        generation: 2,
        error: "Permission denied".into(),
    });
    assert!(spawns(&actions).is_empty());
    assert!(has(
        &actions,
        &Action::Report(Report::RestartScheduled {
            delay: Duration::from_millis(100),
            crashes: 2
        })
    ));
}

#[test]
fn a_reload_during_backoff_starts_at_once_and_the_stale_timer_is_ignored() {
    let mut h = Harness::new(notify_settings());
    h.feed(Event::Start);
    h.feed(Event::LeaderExited {
        generation: 1,
        status: ExitStatus::Code(1),
    });
    h.feed(Event::LeaderExited {
        generation: 2,
        status: ExitStatus::Code(1),
    });
    assert_eq!(h.spawns, vec![1, 2]);
    assert_eq!(spawns(&h.feed(Event::ReloadRequested)), vec![3]);
    assert!(spawns(&h.feed(Event::TimerFired(Timer::Restart(1)))).is_empty());
}

#[test]
fn an_active_crash_during_a_reload_leaves_the_takeover_to_the_new_generation() {
    let mut h = Harness::serving(notify_settings());
    h.feed(Event::ReloadRequested);
    let actions = h.feed(Event::LeaderExited {
        generation: 1,
        status: ExitStatus::Signal(9),
    });
    assert!(spawns(&actions).is_empty());
    let actions = h.feed(Event::Ready { generation: 2 });
    assert!(has(
        &actions,
        &Action::Report(Report::Ready {
            generation: 2,
            previous: None
        })
    ));
    assert!(!actions.iter().any(|a| matches!(a, Action::Signal { .. })));
}

#[test]
fn shutdown_drains_every_generation_then_exits() {
    let mut h = Harness::serving(notify_settings());
    h.reload();
    h.feed(Event::ReloadRequested); // 3 starting
    let actions = h.feed(Event::ShutdownRequested);
    for generation in [2, 3] {
        assert!(has(
            &actions,
            &Action::Signal {
                generation,
                signal: TERM
            }
        ));
    }
    assert!(
        !has(
            &actions,
            &Action::Signal {
                generation: 1,
                signal: TERM
            }
        ),
        "already draining"
    );
    assert_eq!(
        h.feed(Event::ReloadRequested),
        vec![Action::Report(Report::ReloadIgnored)]
    );
    for generation in [1, 2] {
        h.feed(Event::LeaderExited {
            generation,
            status: ExitStatus::Code(0),
        });
        assert!(
            !h.feed(Event::GroupEmpty { generation })
                .contains(&Action::Exit)
        );
    }
    h.feed(Event::LeaderExited {
        generation: 3,
        status: ExitStatus::Code(0),
    });
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
    h.feed(Event::LeaderExited {
        generation: 1,
        status: ExitStatus::Code(1),
    });
    h.feed(Event::LeaderExited {
        generation: 2,
        status: ExitStatus::Code(1),
    });
    h.feed(Event::GroupEmpty { generation: 1 });
    h.feed(Event::GroupEmpty { generation: 2 });
    // In backoff, nothing runs.
    let actions = h.feed(Event::ShutdownRequested);
    assert!(actions.contains(&Action::Exit));
    assert!(spawns(&h.feed(Event::TimerFired(Timer::Restart(1)))).is_empty());
}

#[test]
fn a_crash_during_shutdown_restarts_nothing() {
    let mut h = Harness::serving(notify_settings());
    h.feed(Event::ShutdownRequested);
    let actions = h.feed(Event::LeaderExited {
        generation: 1,
        status: ExitStatus::Signal(6),
    });
    assert!(actions.is_empty());
}

#[test]
fn force_shutdown_kills_every_group() {
    let mut h = Harness::serving(notify_settings());
    h.reload();
    h.feed(Event::ShutdownRequested);
    let actions = h.feed(Event::ForceShutdown);
    assert!(has(&actions, &Action::KillGroup { generation: 1 }));
    assert!(has(&actions, &Action::KillGroup { generation: 2 }));
    for generation in [1, 2] {
        h.feed(Event::LeaderExited {
            generation,
            status: ExitStatus::Signal(9),
        });
    }
    h.feed(Event::GroupEmpty { generation: 1 });
    assert!(
        h.feed(Event::GroupEmpty { generation: 2 })
            .contains(&Action::Exit)
    );
}

#[test]
fn backoff_delays_double_and_saturate() {
    let b = Backoff::default();
    assert_eq!(b.delay(0), Duration::ZERO);
    assert_eq!(b.delay(1), Duration::ZERO);
    assert_eq!(b.delay(2), Duration::from_millis(100));
    assert_eq!(b.delay(3), Duration::from_millis(200));
    assert_eq!(b.delay(8), Duration::from_millis(6400));
    assert_eq!(b.delay(9), Duration::from_secs(10));
    assert_eq!(b.delay(u32::MAX), Duration::from_secs(10));
}

#[test]
fn exit_status_reads_well() {
    assert_eq!(ExitStatus::Code(3).to_string(), "exit code 3");
    assert_eq!(ExitStatus::Signal(9).to_string(), "killed by SIGKILL");
    assert!(ExitStatus::Code(0).success());
}

/// Random event sequences never break the invariants: at most one starting
/// and one active generation, at most `max_draining` draining, and never a
/// signal for a generation the machine does not know, and no spawn once
/// shutdown has begun.
#[test]
fn invariants_hold_under_random_events() {
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move |n: u64| {
        // xorshift64*: deterministic, no dependency.
        seed ^= seed >> 12;
        seed ^= seed << 25;
        seed ^= seed >> 27;
        seed.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    };
    for _run in 0..300 {
        let mut h = Harness::new(Settings {
            max_draining: NonZeroUsize::new(2).unwrap(),
            ..Settings::default()
        });
        h.feed(Event::Start);
        for _step in 0..200 {
            let known: Vec<Generation> = h.machine.generations().map(|(g, _)| g).collect();
            let pick = |r: u64| -> Generation {
                if known.is_empty() {
                    1
                } else {
                    known[(r as usize) % known.len()]
                }
            };
            let g = pick(next(1000));
            let event = match next(12) {
                0 | 1 => Event::ReloadRequested,
                2 | 3 => Event::Ready { generation: g },
                4 => Event::LeaderExited {
                    generation: g,
                    status: ExitStatus::Code(next(3) as i32),
                },
                5 => {
                    let exited = h
                        .machine
                        .generation(g)
                        .is_some_and(|s| s.leader_status.is_some());
                    if exited {
                        Event::GroupEmpty { generation: g }
                    } else {
                        Event::ReloadRequested
                    }
                }
                6 => Event::TimerFired(Timer::ReadyDeadline(g)),
                7 => Event::TimerFired(Timer::DrainDeadline(g)),
                8 => Event::TimerFired(Timer::ReadyDelay(g)),
                9 => Event::TimerFired(Timer::Restart(next(5))),
                10 => Event::TimerFired(Timer::Stable(g)),
                _ if next(20) == 0 => Event::ShutdownRequested,
                _ => Event::ReloadRequested,
            };
            let actions = h.feed(event.clone());
            for action in &actions {
                if let Action::Signal { generation, .. } | Action::KillGroup { generation } = action
                {
                    assert!(
                        h.machine.generation(*generation).is_some(),
                        "{action:?} for an unknown generation after {event:?}"
                    );
                }
            }
            let count = |p: Phase| {
                h.machine
                    .generations()
                    .filter(|(_, s)| s.phase == p)
                    .count()
            };
            assert!(count(Phase::Starting) <= 1, "after {event:?}");
            assert!(count(Phase::Active) <= 1, "after {event:?}");
            // Shutdown drains everything at once; the cap is for reloads.
            if !h.machine.shutting_down() {
                assert!(count(Phase::Draining) <= 2, "after {event:?}");
            }
            if h.machine.shutting_down() {
                assert!(spawns(&actions).is_empty(), "spawn during shutdown");
            }
        }
    }
}
