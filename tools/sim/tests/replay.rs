//! A seed is a run: the same seed replays the same events in the same order (the trace hash
//! covers every event handled), and the checkers see what they must.

use switchboard_sim::check::{Checker, ConnView};

#[test]
fn a_seed_replays_exactly_and_another_seed_differs() {
    for seed in [0, 7, 12345] {
        let (a, b) = (switchboard_sim::run(seed), switchboard_sim::run(seed));
        assert_eq!(a.trace, b.trace, "seed {seed} ran two ways");
        assert_eq!((a.acks, a.pushes, a.stats.events), (b.acks, b.pushes, b.stats.events));
        assert!(a.violations.is_empty(), "seed {seed}: {:?}", a.violations);
        assert!(
            a.acks > 50 && a.pushes > 50 && a.stats.crashes + a.stats.breaks > 0,
            "seed {seed} did too little: {a:?}"
        );
        // Its clients speak over WebSockets and QUIC, in JSON and binary.
        assert!(
            a.stats.quic_conns > 0 && a.stats.binary_conns > 0 && a.stats.quic_conns < a.stats.connects,
            "seed {seed} did too little: {a:?}"
        );
        // Its channel reaches connections both ways: in full where open, by `notify` elsewhere.
        assert!(a.stats.channel_pushes > 0 && a.stats.notifies > 0, "seed {seed} did too little: {a:?}");
    }
    assert_ne!(switchboard_sim::run(1).trace, switchboard_sim::run(2).trace);
}

#[test]
fn the_checkers_catch_holes_duplicates_and_unidempotent_retries() {
    let mut c = Checker::default();
    let mut view = ConnView::default();
    c.push(1, "ann", &mut view, "g1", 4);
    c.push(2, "ann", &mut view, "g1", 5);
    assert!(c.violations.is_empty(), "{:?}", c.violations);
    c.push(3, "ann", &mut view, "g1", 7);
    c.push(4, "ann", &mut view, "g1", 7);
    c.ack(5, "g1", "m1", 3, false);
    c.ack(6, "g1", "m1", 9, true);
    c.received(7, "ann", "g1", "m1", 3);
    c.received(8, "ann", "g1", "m1", 9);
    c.sync_page(9, "ann", "g1", 2, &[3, 5], 5);
    c.holes(std::iter::once(&view));
    let found = c.violations.join("\n");
    for what in ["a hole", "a duplicate or a reorder", "not idempotent", "twice", "sync after 2"] {
        assert!(found.contains(what), "{what} not caught in:\n{found}");
    }
}

/// A connection is never pushed its own message (its `ack` tells the seq), so a hole over
/// messages it sent is right, under whichever try; a hole over anyone else's is not.
#[test]
fn a_hole_between_pushes_is_right_only_over_the_connections_own_messages() {
    let (mut c, mut view) = (Checker::default(), ConnView::default());
    c.ack(1, "g1", "bob-1", 2, false);
    c.ack(1, "g1", "ann-1", 3, false);
    c.ack(1, "g1", "ann-2", 4, true);
    view.sent("g1", "ann-1");
    view.sent("g1", "ann-2");
    c.push(2, "ann", &mut view, "g1", 1);
    c.push(3, "ann", &mut view, "g1", 2);
    c.push(4, "ann", &mut view, "g1", 5);
    c.holes(std::iter::once(&view));
    assert!(c.violations.is_empty(), "{:?}", c.violations);
    // A send ended by the sender's removal before its ack: the store tells its seq.
    let mut other = ConnView::default();
    other.sent("g2", "ann-4");
    c.stored("g2", [(2, "ann-4".to_string()), (3, "system:3".to_string())].into_iter().collect());
    c.push(2, "ann", &mut other, "g2", 1);
    c.push(2, "ann", &mut other, "g2", 3);
    c.holes(std::iter::once(&other));
    assert!(c.violations.is_empty(), "{:?}", c.violations);
    // Seq 6 is bob's: pushed 7 after 5 is a hole, found even once the connection is gone.
    c.ack(5, "g1", "bob-2", 6, false);
    c.ack(5, "g1", "ann-3", 7, false);
    c.push(6, "ann", &mut view, "g1", 8);
    c.gone(view);
    c.holes(std::iter::empty());
    assert!(c.violations.iter().any(|v| v.contains("pushed seq 8 after seq 5: a hole")), "{:?}", c.violations);
}

#[test]
fn the_read_mark_checker_catches_a_forgotten_receipt_and_a_made_up_one() {
    let mut c = Checker::default();
    c.receipt_sent("ann", "g1", 4);
    c.receipt_acked("ann", "g1", 4);
    c.receipt_sent("ann", "g1", 6);
    for held in [4, 5, 6] {
        c.read_mark(1, "restarted", "ann", "g1", held);
    }
    assert!(c.violations.is_empty(), "{:?}", c.violations);
    c.read_mark(2, "restarted", "ann", "g1", 3);
    c.read_mark(3, "restarted", "ann", "g1", 7);
    let found = c.violations.join("\n");
    for what in ["below the answered receipt 4", "beyond any receipt sent (6)"] {
        assert!(found.contains(what), "{what} not caught in:\n{found}");
    }
}

/// A node that stops reading fills its peers' mesh queues for it: the mesh refuses what
/// does not fit, and no queue ever holds more than its limit (the checker runs after every
/// event, and fires on a queue past its limit).
#[test]
fn slow_nodes_fill_mesh_queues_to_their_limit_and_never_past_it() {
    let reports: Vec<_> = (0..40).map(switchboard_sim::run).collect();
    for r in &reports {
        assert!(r.violations.is_empty(), "seed {}: {:?}", r.seed, r.violations);
        assert!(r.stats.queued_most[1] <= switchboard_sim::net::LIVE_QUEUE_BYTES, "seed {}: {:?}", r.seed, r.stats);
    }
    let refused: u64 = reports.iter().map(|r| r.stats.full).sum();
    assert!(refused > 0, "no queue filled in 40 seeds");

    let mut c = Checker::default();
    c.queue(1, "a live mesh queue", 4096, 4096);
    assert!(c.violations.is_empty(), "{:?}", c.violations);
    c.queue(2, "a live mesh queue", 4097, 4096);
    assert!(
        c.violations.join("\n").contains("a live mesh queue holds 4097, beyond its limit of 4096"),
        "{:?}",
        c.violations
    );
}

/// Across processes too: nothing in a run hangs on a per-process random hasher.
#[test]
fn the_binary_replays_a_seed_the_same_in_two_processes() {
    let run = || {
        let out =
            std::process::Command::new(env!("CARGO_BIN_EXE_switchboard-sim")).args(["--seed", "3"]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
        String::from_utf8(out.stdout).unwrap()
    };
    let first = run();
    assert!(first.starts_with("seed 3: trace "), "{first}");
    assert_eq!(first, run());
}
