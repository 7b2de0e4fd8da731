//! The rules about faults: the worker watchdog and the start limit.

use std::num::NonZeroU32;

use super::*;

fn watchdog_settings() -> Settings {
    Settings {
        watchdog: Some(2 * SECOND),
        ..notify_settings()
    }
}

fn missed(actions: &[Action]) -> Vec<(Generation, Option<Generation>)> {
    notices(actions)
        .into_iter()
        .filter_map(|n| match *n {
            Notice::WatchdogMissed {
                generation,
                replacement,
                ..
            } => Some((generation, replacement)),
            _ => None,
        })
        .collect()
}

#[test]
fn an_active_generation_that_pings_is_left_alone() {
    let mut h = Harness::serving(watchdog_settings());
    assert_eq!(h.machine.generation(1).unwrap().watchdog, Some(2 * SECOND));
    for _ in 0..10 {
        assert!(h.advance(SECOND).is_empty());
        h.feed(Event::WatchdogPing { generation: 1 });
    }
    assert!(!h.machine.generation(1).unwrap().is_silent());
    assert_eq!(h.spawns, vec![1]);
}

#[test]
fn a_silent_active_generation_is_replaced_new_one_first() {
    let mut h = Harness::serving(watchdog_settings());
    assert!(h.advance(SECOND).is_empty());
    let actions = h.advance(SECOND);
    assert_eq!(missed(&actions), vec![(1, Some(2))]);
    assert!(actions.contains(&Action::Spawn {
        generation: 2,
        cause: SpawnCause::Watchdog
    }));
    assert!(drains(&actions).is_empty() && kills(&actions).is_empty());
    assert!(h.machine.generation(1).unwrap().is_silent());
    assert_eq!(h.machine.active(), Some(1), "it serves on meanwhile");

    // Its replacement ready: now the silent one drains, as in a reload.
    let actions = h.feed(Event::Ready { generation: 2 });
    assert_eq!(drains(&actions), vec![1]);
    assert_eq!(h.machine.active(), Some(2));
    // A hung worker ignores its stop signal: the drain deadline kills it.
    h.advance(30 * SECOND);
    assert_eq!(h.phase(1), Some("killing"));
}

#[test]
fn the_watchdog_deadline_starts_at_ready_and_each_ping_restarts_it() {
    let mut h = Harness::new(watchdog_settings());
    h.feed(Event::Start);
    // Starting: the ready deadline rules, pings are ignored.
    h.feed(Event::WatchdogPing { generation: 1 });
    h.advance(10 * SECOND);
    h.feed(Event::Ready { generation: 1 });
    assert_eq!(h.machine.poll_timeout(), Some(h.now + 2 * SECOND));
    h.advance(SECOND + SECOND / 2);
    h.feed(Event::WatchdogPing { generation: 1 });
    assert_eq!(h.machine.poll_timeout(), Some(h.now + 2 * SECOND));
    assert!(h.advance(SECOND + SECOND / 2).is_empty());
    assert_eq!(missed(&h.advance(SECOND)), vec![(1, Some(2))]);
}

#[test]
fn a_failed_replacement_costs_nothing_and_is_tried_again_an_interval_later() {
    let mut h = Harness::serving(watchdog_settings());
    h.advance(2 * SECOND);
    let actions = h.exited(2, 1);
    assert!(spawns(&actions).is_empty(), "no crash loop: one is active");
    assert_eq!(h.machine.active(), Some(1));
    let actions = h.advance(2 * SECOND);
    assert_eq!(missed(&actions), vec![(1, Some(3))]);
    assert_eq!(spawns(&actions), vec![3]);
}

#[test]
fn a_ping_after_the_miss_clears_silent_but_the_replacement_goes_on() {
    let mut h = Harness::serving(watchdog_settings());
    h.advance(2 * SECOND);
    h.feed(Event::WatchdogPing { generation: 1 });
    assert!(!h.machine.generation(1).unwrap().is_silent());
    let actions = h.feed(Event::Ready { generation: 2 });
    assert_eq!(drains(&actions), vec![1]);
}

#[test]
fn a_miss_during_a_reload_leaves_the_takeover_to_the_starting_generation() {
    let mut h = Harness::serving(watchdog_settings());
    h.advance(SECOND);
    h.reload_request();
    let actions = h.advance(SECOND);
    assert_eq!(missed(&actions), vec![(1, Some(2))]);
    assert!(spawns(&actions).is_empty());
}

#[test]
fn without_a_watchdog_or_with_one_turned_on_later_nothing_is_watched() {
    let mut h = Harness::serving(notify_settings());
    assert_eq!(h.machine.generation(1).unwrap().watchdog, None);
    h.feed(Event::SettingsChanged(watchdog_settings()));
    // Generation 1 was not told WATCHDOG_USEC: it cannot be held to it.
    assert!(missed(&h.advance(60 * SECOND)).is_empty());
    assert_eq!(h.spawns, vec![1]);
    let next = h.reload();
    assert_eq!(
        h.machine.generation(next).unwrap().watchdog,
        Some(2 * SECOND)
    );
}

fn limited(burst: u32) -> Settings {
    Settings {
        start_limit: NonZeroU32::new(burst).unwrap(),
        ..notify_settings()
    }
}

/// Fail each start until the machine stops spawning; the actions of the
/// last failure, and how many starts there were.
fn fail_every_start(h: &mut Harness) -> (Vec<Action>, usize) {
    let mut last = Vec::new();
    let mut done = 0;
    while done < h.spawns.len() {
        let generation = h.spawns[done];
        done += 1;
        last = h.exited(generation, 1);
        last.extend(h.feed(Event::GroupEmpty { generation }));
        if h.spawns.len() == done {
            // Backing off: let the restart come.
            if let Some(at) = h.machine.poll_timeout() {
                h.now = h.now.max(at);
                last.extend(h.feed(Event::Timeout));
            }
        }
    }
    (last, done)
}

#[test]
fn a_worker_that_never_starts_is_given_up_after_the_burst() {
    let mut h = Harness::new(limited(5));
    h.feed(Event::Start);
    let (actions, starts) = fail_every_start(&mut h);
    assert_eq!(starts, 5);
    assert!(actions.contains(&Action::Notice(Notice::GivingUp {
        failed_starts: 5,
        failure: Failure::Exited(ProcessExit::Code(1)),
    })));
    let reason = "giving up: 5 starts in a row failed and no worker was ever ready \
                  (last: exited before ready (exit code 1))";
    assert_eq!(h.machine.gave_up(), Some(reason));
    assert!(h.machine.shutting_down());
    assert_eq!(
        actions.last(),
        Some(&Action::GiveUp {
            reason: reason.into()
        }),
        "only once the failed group is gone"
    );
    assert!(!actions.contains(&Action::Exit));
}

#[test]
fn giving_up_waits_for_the_last_group_and_answers_waiting_reloads() {
    let mut h = Harness::new(limited(2));
    h.feed(Event::Start);
    h.exited(1, 1);
    let (id, _) = h.reload_request();
    h.feed(Event::ReloadRequested { id: id + 1 });
    let actions = h.feed(Event::SpawnFailed {
        generation: 2,
        error: "EMFILE".into(),
    });
    assert!(
        matches!(
            notices(&actions)[..],
            [
                Notice::StartFailed { .. },
                Notice::GivingUp {
                    failed_starts: 2,
                    ..
                },
                ..
            ]
        ),
        "{actions:?}"
    );
    assert!(spawns(&actions).is_empty());
    // Generation 1's group is still there: no exit yet.
    assert!(!actions.iter().any(|a| matches!(a, Action::GiveUp { .. })));
    let actions = h.feed(Event::GroupEmpty { generation: 1 });
    assert!(matches!(actions.last(), Some(Action::GiveUp { .. })));
}

/// The newest generation exits before ready (or crashes); if the
/// restart waits for a backoff, let it come.
fn fail_newest(h: &mut Harness) {
    let generation = *h.spawns.last().unwrap();
    let actions = h.exited(generation, 1);
    if spawns(&actions).is_empty() && !h.machine.shutting_down() {
        h.fire_next();
    }
}

#[test]
fn after_a_first_ready_failures_are_only_backed_off() {
    let mut h = Harness::serving(limited(2));
    for _ in 0..10 {
        fail_newest(&mut h);
    }
    assert!(h.machine.gave_up().is_none());
    assert!(!h.machine.shutting_down());
    assert_eq!(h.spawns.len(), 11);
}

#[test]
fn a_start_that_is_ready_ends_the_count() {
    let mut h = Harness::new(limited(3));
    h.feed(Event::Start);
    fail_newest(&mut h);
    fail_newest(&mut h);
    h.feed(Event::Ready { generation: 3 });
    for _ in 0..3 {
        fail_newest(&mut h);
    }
    assert!(h.machine.gave_up().is_none());
}

#[test]
fn a_shutdown_before_the_burst_exits_as_usual() {
    let mut h = Harness::new(limited(3));
    h.feed(Event::Start);
    h.exited(1, 1);
    h.feed(Event::ShutdownRequested);
    h.exited(2, 1);
    h.feed(Event::GroupEmpty { generation: 1 });
    let actions = h.feed(Event::GroupEmpty { generation: 2 });
    assert_eq!(actions.last(), Some(&Action::Exit));
}
