//! baton's own drain (`--preload`): the stop signal waits until the
//! generation is quiet, or half the drain timeout.

use super::*;

fn quiesce_settings() -> Settings {
    Settings {
        quiesce: true,
        drain_timeout: 10 * SECOND,
        ..notify_settings()
    }
}

fn quiesces(actions: &[Action]) -> Vec<Generation> {
    actions
        .iter()
        .filter_map(|a| match *a {
            Action::Quiesce { generation } => Some(generation),
            _ => None,
        })
        .collect()
}

#[test]
fn the_old_generation_is_quiesced_first_and_signalled_once_quiet() {
    let mut h = Harness::serving(quiesce_settings());
    h.reload_request();
    let ready = h.feed(Event::Ready { generation: 2 });
    assert_eq!(quiesces(&ready), vec![1]);
    assert!(drains(&ready).is_empty(), "no stop signal yet: {ready:?}");
    assert_eq!(h.phase(1), Some("draining"));

    let quiet = h.feed(Event::Quiesced { generation: 1 });
    assert_eq!(drains(&quiet), vec![1]);
    // Said once: a late second finding changes nothing.
    assert!(h.feed(Event::Quiesced { generation: 1 }).is_empty());
    // The drain deadline still counts from the start of the drain.
    assert_eq!(kills(&h.fire_next()), vec![1]);
}

#[test]
fn the_stop_signal_goes_at_half_the_drain_timeout_if_never_quiet() {
    let mut h = Harness::serving(quiesce_settings());
    h.reload();
    let early = h.advance(4 * SECOND);
    assert!(drains(&early).is_empty());
    let cut = h.advance(SECOND);
    assert_eq!(drains(&cut), vec![1]);
    assert!(notices(&cut).iter().any(|n| matches!(
        n,
        Notice::QuiesceCutShort { generation: 1, waited } if *waited == 5 * SECOND
    )));
    assert!(kills(&h.advance(4 * SECOND)).is_empty());
    assert_eq!(kills(&h.advance(SECOND)), vec![1]);
}

#[test]
fn without_preload_the_stop_signal_goes_at_once() {
    let mut h = Harness::serving(notify_settings());
    h.reload_request();
    let ready = h.feed(Event::Ready { generation: 2 });
    assert_eq!(drains(&ready), vec![1]);
    assert!(quiesces(&ready).is_empty());
    assert!(h.feed(Event::Quiesced { generation: 1 }).is_empty());
}

#[test]
fn shutdown_quiesces_the_active_generation_too() {
    let mut h = Harness::serving(quiesce_settings());
    let actions = h.feed(Event::ShutdownRequested);
    assert_eq!(quiesces(&actions), vec![1]);
    assert_eq!(drains(&h.feed(Event::Quiesced { generation: 1 })), vec![1]);
}
