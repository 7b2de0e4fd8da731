//! Signals sent to baton: only TERM, INT, QUIT (stop) and HUP (reload) act
//! on baton; USR1 goes to the active generation's leader, USR2 too when
//! `--forward-signal USR2` asks for it; every other signal whose default
//! would end baton is caught, logged and ignored, by baton and by its
//! guardian (`kill -USR1 $(pidof baton)` reaches both).

use baton_e2e::{
    Baton, Traffic, alive, assert_no_failures, exclusive, http_get, processes_with_token, run_args,
};
use baton_loadgen::Mode;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// The guardian of this baton: the process of its tree named `baton-guardian`.
fn guardian(baton: &Baton) -> i32 {
    let found: Vec<i32> = processes_with_token(baton.token())
        .into_iter()
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|comm| comm.trim() == "baton-guardian")
        })
        .collect();
    assert_eq!(found.len(), 1, "one guardian: {found:?}");
    found[0]
}

fn raw_kill(pid: i32, signal: libc::c_int) {
    // SAFETY: kill has no memory effects.
    assert_eq!(unsafe { libc::kill(pid, signal) }, 0, "kill {pid} {signal}");
}

/// Signals whose default action ends a process and that act on nothing
/// in baton: each is caught and logged (PIPE is ignored without a word,
/// as every write to a closed socket raises it).
const IGNORED: [Signal; 9] = [
    Signal::SIGUSR2,
    Signal::SIGALRM,
    Signal::SIGVTALRM,
    Signal::SIGPROF,
    Signal::SIGIO,
    Signal::SIGPWR,
    Signal::SIGSTKFLT,
    Signal::SIGXCPU,
    Signal::SIGXFSZ,
];

#[test]
fn signals_that_would_end_baton_are_ignored_by_baton_and_its_guardian() {
    let _serial = exclusive();
    let mut baton = Baton::start(&run_args(&["--ready", "notify"], &[]));
    let worker = baton.wait_ready(1);
    let guardian = guardian(&baton);
    let traffic = Traffic::start(baton.address("http"), Mode::NewConnection, 4);
    traffic.serve(50);

    let realtime = [libc::SIGRTMIN() + 1, libc::SIGRTMAX()];
    for _ in 0..3 {
        for signal in IGNORED.into_iter().chain([Signal::SIGPIPE]) {
            baton.signal(signal);
            kill(Pid::from_raw(guardian), signal).expect("signal the guardian");
        }
        for signal in realtime {
            raw_kill(baton.pid(), signal);
            raw_kill(guardian, signal);
        }
    }
    for signal in IGNORED {
        let line = baton.wait_for(&["signal ignored", &format!("signal={}", signal.as_str())]);
        assert!(line.contains(" count=1"), "{line}");
    }
    for signal in realtime {
        let name = format!("signal=SIGRTMIN+{}", signal - libc::SIGRTMIN());
        let name = if signal == libc::SIGRTMAX() {
            "signal=SIGRTMAX".to_owned()
        } else {
            name
        };
        baton.wait_for(&["signal ignored", &name]);
    }
    // Logged once per kind, not once per signal.
    assert_eq!(baton.count(&["signal ignored", "signal=SIGUSR2"]), 1);
    traffic.serve(100);
    assert_no_failures(&traffic.finish());

    assert!(alive(baton.pid()), "baton lives");
    assert!(alive(guardian), "the guardian lives");
    assert!(alive(worker), "the worker lives");
    assert_eq!(baton.count(&["crashed"]), 0, "{}", baton.output());
    assert_eq!(baton.count(&["spawned"]), 1, "no generation but the first");
    baton.signal(Signal::SIGTERM);
    assert!(baton.wait_exit().success(), "{}", baton.output());
}

#[test]
fn usr1_reaches_the_active_leader() {
    let _serial = exclusive();
    let mut baton = Baton::start(&run_args(
        &["--ready", "notify"],
        &["--log-signals", "USR1"],
    ));
    let first = baton.wait_ready(1);
    baton.signal(Signal::SIGUSR1);
    baton.wait_for(&[&format!("test-worker pid={first} signal=SIGUSR1")]);
    let forwarded = baton.wait_for(&["signal forwarded", "signal=SIGUSR1"]);
    assert!(forwarded.contains(" generation=1 "), "{forwarded}");

    // After a reload, the new active generation gets it.
    baton.signal(Signal::SIGHUP);
    let second = baton.wait_ready(2);
    baton.wait_for(&["exited", " generation=1 "]);
    baton.signal(Signal::SIGUSR1);
    baton.wait_for(&[&format!("test-worker pid={second} signal=SIGUSR1")]);
    assert_eq!(baton.count(&["signal=SIGUSR1", "test-worker"]), 2);
    assert!(alive(baton.pid()));
    baton.signal(Signal::SIGTERM);
    assert!(baton.wait_exit().success(), "{}", baton.output());
}

#[test]
fn a_worker_that_does_not_handle_usr1_dies_of_it_and_is_restarted() {
    let _serial = exclusive();
    let mut baton = Baton::start(&run_args(&["--ready", "notify"], &[]));
    let first = baton.wait_ready(1);
    baton.signal(Signal::SIGUSR1);
    let crashed = baton.wait_for(&["crashed", " generation=1 "]);
    assert!(crashed.contains("SIGUSR1"), "{crashed}");
    baton.wait_ready(2);
    assert!(!alive(first));
    let (code, _) = http_get(baton.address("http"), "/");
    assert_eq!(code, 200);
    baton.signal(Signal::SIGTERM);
    assert!(baton.wait_exit().success(), "{}", baton.output());
}

#[test]
fn usr2_is_forwarded_only_when_asked() {
    let _serial = exclusive();
    let worker = ["--log-signals", "USR1,USR2"];

    let mut asked = Baton::start(&run_args(
        &["--ready", "notify", "--forward-signal", "USR2"],
        &worker,
    ));
    let pid = asked.wait_ready(1);
    asked.signal(Signal::SIGUSR2);
    asked.wait_for(&[&format!("test-worker pid={pid} signal=SIGUSR2")]);
    asked.signal(Signal::SIGTERM);
    assert!(asked.wait_exit().success(), "{}", asked.output());

    let mut not_asked = Baton::start(&run_args(&["--ready", "notify"], &worker));
    let pid = not_asked.wait_ready(1);
    not_asked.signal(Signal::SIGUSR2);
    not_asked.wait_for(&["signal ignored", "signal=SIGUSR2"]);
    // Signals are handled in order: once USR1 arrived, USR2 would have too.
    not_asked.signal(Signal::SIGUSR1);
    not_asked.wait_for(&[&format!("test-worker pid={pid} signal=SIGUSR1")]);
    assert_eq!(not_asked.count(&["test-worker", "signal=SIGUSR2"]), 0);
    not_asked.signal(Signal::SIGTERM);
    assert!(not_asked.wait_exit().success(), "{}", not_asked.output());
}

#[test]
fn quit_stops_baton_gracefully_as_term_does() {
    let _serial = exclusive();
    let mut baton = Baton::start(&run_args(&["--ready", "notify"], &[]));
    let worker = baton.wait_ready(1);
    baton.signal(Signal::SIGQUIT);
    let status = baton.wait_exit();
    assert!(status.success(), "{status:?}\n{}", baton.output());
    baton.wait_for(&[&format!(
        "test-worker pid={worker} stop signal=SIGTERM draining"
    )]);
    baton.wait_for(&[&format!("test-worker pid={worker} drained")]);
}
