//! `--ready auto`: readiness is what the kernel shows, not what a process
//! says.

use super::*;

fn auto() -> Settings {
    Settings {
        readiness: Readiness::Auto,
        ready_timeout: 10 * SECOND,
        ..Settings::default()
    }
}

fn observed(generation: Generation, waiting: bool, seen: &str) -> Event {
    Event::Observed {
        generation,
        waiting,
        seen: seen.to_owned(),
    }
}

#[test]
fn an_auto_generation_is_observed_from_its_spawn() {
    let mut h = Harness::new(auto());
    let actions = h.feed(Event::Start);
    let asked: Vec<_> = actions
        .iter()
        .filter(|a| !matches!(a, Action::Notice(_)))
        .collect();
    assert_eq!(
        asked,
        vec![
            &Action::Spawn {
                generation: 1,
                cause: SpawnCause::Start
            },
            &Action::Observe { generation: 1 },
        ]
    );
    // No delay deadline: only the ready timeout.
    assert_eq!(h.machine.poll_timeout(), Some(h.now + 10 * SECOND));
}

#[test]
fn under_auto_ready_1_alone_does_not_count() {
    let mut h = Harness::new(auto());
    h.feed(Event::Start);
    assert!(h.feed(Event::Ready { generation: 1 }).is_empty());
    assert_eq!(h.phase(1), Some("starting"));
    let actions = h.feed(observed(1, true, "pid 7 waits in epoll on http"));
    assert!(matches!(
        notices(&actions)[..],
        [Notice::Ready { generation: 1, .. }]
    ));
    assert_eq!(h.machine.active(), Some(1));
}

#[test]
fn a_reload_under_auto_drains_the_old_one_only_once_the_new_one_waits() {
    let mut h = Harness::new(auto());
    h.feed(Event::Start);
    h.feed(observed(1, true, "waits"));
    let (id, actions) = h.reload_request();
    assert!(actions.contains(&Action::Observe { generation: 2 }));
    // gunicorn's master says READY=1 before its workers load the app.
    assert!(h.feed(Event::Ready { generation: 2 }).is_empty());
    assert!(h.feed(observed(2, false, "no process waits")).is_empty());
    let actions = h.feed(observed(2, true, "pid 9 waits in select on http"));
    assert_eq!(drains(&actions), vec![1]);
    assert!(matches!(
        &notices(&actions)[..],
        [Notice::Draining { generation: 1 }, Notice::Ready { generation: 2, reloads, .. }] if *reloads == vec![id]
    ));
}

#[test]
fn an_auto_timeout_says_what_baton_saw_last() {
    let mut h = Harness::new(auto());
    h.feed(Event::Start);
    h.feed(observed(1, true, "waits"));
    let (id, _) = h.reload_request();
    h.feed(observed(
        2,
        false,
        "no process waits on a socket baton handed it",
    ));
    h.feed(observed(
        2,
        false,
        "pid 9 listens on 127.0.0.1:9999, which baton does not hold",
    ));
    let actions = h.advance(10 * SECOND);
    let failure = Failure::NotWaiting {
        timeout: 10 * SECOND,
        seen: "pid 9 listens on 127.0.0.1:9999, which baton does not hold".into(),
    };
    assert_eq!(
        failure.to_string(),
        "not ready within 10s: pid 9 listens on 127.0.0.1:9999, which baton does not hold"
    );
    assert_eq!(
        actions,
        vec![
            Action::Kill { generation: 2 },
            Action::Notice(Notice::StartFailed {
                generation: 2,
                failure,
                active: Some(1),
                reloads: vec![id],
                reload_follows: false,
            }),
        ]
    );
}

#[test]
fn an_auto_timeout_without_any_observation_says_so() {
    let mut h = Harness::new(auto());
    h.feed(Event::Start);
    let actions = h.advance(10 * SECOND);
    assert!(notices(&actions).iter().any(|n| matches!(
        n,
        Notice::StartFailed { failure: Failure::NotWaiting { seen, .. }, .. }
            if seen == NOTHING_SEEN
    )));
}

#[test]
fn observations_count_only_under_auto_and_only_while_starting() {
    // Under notify, a process that waits is not READY=1.
    let mut h = Harness::new(notify_settings());
    h.feed(Event::Start);
    assert!(h.feed(observed(1, true, "waits")).is_empty());
    assert_eq!(h.phase(1), Some("starting"));
    h.feed(Event::Ready { generation: 1 });
    // A late observation of a generation that is no longer starting.
    assert!(h.feed(observed(1, true, "waits")).is_empty());
    assert_eq!(h.machine.active(), Some(1));
}

#[test]
fn the_readiness_of_a_starting_generation_is_the_one_it_started_with() {
    let mut h = Harness::new(notify_settings());
    h.feed(Event::Start);
    h.feed(Event::SettingsChanged(auto()));
    // Started under notify: READY=1 still counts for it.
    let actions = h.feed(Event::Ready { generation: 1 });
    assert!(matches!(
        notices(&actions)[..],
        [Notice::Ready { generation: 1, .. }]
    ));
    // The next one is observed.
    let (_, actions) = h.reload_request();
    assert!(actions.contains(&Action::Observe { generation: 2 }));
}
