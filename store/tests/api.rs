//! The shard's behaviour through its public API on a simulated disk: sends, dedup, conflict,
//! membership as sequenced messages, cursors, history and resync pages, retention and gaps.

mod common;
use common::*;
use switchboard_store::storage::SimDisk;
use switchboard_store::*;

#[test]
fn dm_send_dedup_conflict_and_reopen() {
    let disk = SimDisk::new(1);
    let mut s = open_sim(&disk, small_config()).unwrap();
    let (a, b, c) = (user("alice"), user("bob"), user("carol"));
    let dm = ConvId::dm(&a, &b);
    // The dm exists implicitly for its two users only.
    assert!(matches!(send(&mut s, &dm, &c, "x", b"1"), Err(Error::Forbidden(_))));
    let first = send(&mut s, &dm, &a, "m1", b"\"hi\"").unwrap();
    assert_eq!((first.seq, first.dup), (Seq(1), false));
    // A retry in the same group commit is already a duplicate.
    let retry = send(&mut s, &dm, &a, "m1", b"\"hi\"").unwrap();
    assert_eq!((retry.seq, retry.dup), (Seq(1), true));
    s.commit().unwrap();
    assert_eq!(send(&mut s, &dm, &b, "m1", b"\"other sender\"").unwrap().seq, Seq(2));
    assert!(matches!(send(&mut s, &dm, &a, "m1", b"\"changed\""), Err(Error::Conflict)));
    s.commit().unwrap();
    drop(s);
    let mut s = open_sim(&disk, small_config()).unwrap();
    let again = send(&mut s, &dm, &a, "m1", b"\"hi\"").unwrap();
    assert_eq!((again.seq, again.dup, again.ts_ms), (Seq(1), true, 1000));
    assert_eq!(s.staged_count(), 0, "a duplicate stores nothing");
    let (gap, all) = read_all(&mut s, &dm, 1).unwrap();
    assert_eq!(gap, None);
    assert_eq!(all.iter().map(|m| (m.seq.0, m.sender.as_str())).collect::<Vec<_>>(), vec![(1, "alice"), (2, "bob")]);
    assert_eq!(&all[0].body[..], b"\"hi\"");
}

/// Found by the sequencer_ops fuzz target: once a commit failed (the store is poisoned),
/// a retry went to the dedup index before anything checked the poison: a retry of a durable
/// message was answered `dup` (an acknowledgement from a store that had stopped), and one of
/// the failed batch was answered `Corrupt` ("unwritten batch"), which it is not. Both are
/// `Poisoned` now, like every other write.
#[test]
fn a_retry_after_a_failed_commit_is_refused_not_answered_dup() {
    let disk = SimDisk::new(1);
    let mut s = open_sim(&disk, small_config()).unwrap();
    let (a, b) = (user("alice"), user("bob"));
    let dm = ConvId::dm(&a, &b);
    send(&mut s, &dm, &a, "durable", b"1").unwrap();
    s.commit().unwrap();
    send(&mut s, &dm, &a, "in-the-failed-batch", b"2").unwrap();
    disk.borrow_mut().fail_next_sync = true;
    assert!(matches!(s.commit(), Err(Error::Poisoned(_))));
    for id in ["in-the-failed-batch", "durable"] {
        let body: &[u8] = if id == "durable" { b"1" } else { b"2" };
        let got = send(&mut s, &dm, &a, id, body);
        assert!(matches!(got, Err(Error::Poisoned(_))), "{id}: {got:?}");
    }
}

#[test]
fn membership_changes_are_sequenced_and_cut_access() {
    let disk = SimDisk::new(2);
    let mut s = open_sim(&disk, small_config()).unwrap();
    let (o, b, c) = (user("owner"), user("bob"), user("carol"));
    let g = conv("g1");
    s.create(&g, ConvKind::Group, "Team", &o, std::slice::from_ref(&b), 5).unwrap();
    assert!(matches!(s.create(&g, ConvKind::Group, "", &o, &[], 5), Err(Error::BadRequest(_))));
    send(&mut s, &g, &b, "1", b"1").unwrap();
    let changes = s.change_members(&g, &o, &[c.clone(), b.clone()], std::slice::from_ref(&b), 6).unwrap();
    assert_eq!(changes.iter().map(|(_, _, a)| a.seq.0).collect::<Vec<_>>(), vec![2, 3], "no-op add of bob skipped");
    assert!(matches!(send(&mut s, &g, &b, "2", b"2"), Err(Error::Forbidden(_))));
    send(&mut s, &g, &c, "3", b"3").unwrap();
    s.commit().unwrap();
    assert!(matches!(s.history(&g, Some(&b), None, 10), Err(Error::Forbidden(_))));
    let h = s.history(&g, Some(&c), None, 10).unwrap();
    let kinds: Vec<(u64, &str)> = h.messages.iter().map(|m| (m.seq.0, m.kind.as_str())).collect();
    assert_eq!(kinds, vec![(4, "text"), (3, "system"), (2, "system"), (1, "text")]);
    assert_eq!(&h.messages[1].body[..], br#"{"event":"member_removed","user":"bob"}"#);
    drop(s);
    let s = open_sim(&disk, small_config()).unwrap();
    assert_eq!(s.members(&g).unwrap(), vec!["carol", "owner"]);
    assert_eq!(s.conv_info(&g).unwrap().head, Seq(4));
    assert!(s.inbox(&b).is_empty());
}

#[test]
fn cursors_are_monotonic_and_feed_the_inbox() {
    let disk = SimDisk::new(3);
    let mut s = open_sim(&disk, small_config()).unwrap();
    let (a, b) = (user("a"), user("b"));
    let dm = ConvId::dm(&a, &b);
    for i in 0..5 {
        send(&mut s, &dm, &a, &i.to_string(), b"x").unwrap();
    }
    assert!(s.move_cursor(&dm, &b, CursorKind::Read, Seq(3)).unwrap());
    assert!(!s.move_cursor(&dm, &b, CursorKind::Read, Seq(2)).unwrap(), "a smaller seq is ignored");
    assert!(s.move_cursor(&dm, &b, CursorKind::Delivered, Seq(5)).unwrap());
    assert!(matches!(s.move_cursor(&dm, &b, CursorKind::Read, Seq(6)), Err(Error::BadRequest(_))));
    s.commit().unwrap();
    drop(s);
    let s = open_sim(&disk, small_config()).unwrap();
    let inbox = s.inbox(&b);
    assert_eq!(
        inbox,
        vec![InboxEntry { conv: dm.to_string(), kind: ConvKind::Dm, head: Seq(5), delivered: Seq(5), read: Seq(3) }]
    );
}

#[test]
fn history_pages_newest_first_and_range_pages_forward() {
    let disk = SimDisk::new(4);
    let mut s = open_sim(&disk, small_config()).unwrap();
    let (a, b) = (user("a"), user("b"));
    let dm = ConvId::dm(&a, &b);
    let other = ConvId::dm(&a, &user("z"));
    for i in 1..=103u64 {
        send(&mut s, &dm, &a, &format!("m{i}"), i.to_string().as_bytes()).unwrap();
        send(&mut s, &other, &a, &format!("m{i}"), b"noise").unwrap();
        if i % 7 == 0 {
            s.commit().unwrap();
        }
    }
    s.commit().unwrap();
    let mut before = None;
    let mut seen = Vec::new();
    loop {
        let p = s.history(&dm, Some(&b), before, 50).unwrap();
        seen.extend(p.messages.iter().map(|m| m.seq.0));
        match p.next_before {
            Some(n) => before = Some(n),
            None => break,
        }
    }
    assert_eq!(seen, (1..=103).rev().collect::<Vec<_>>());
    let p = s.range(&dm, None, Seq(40), 30).unwrap();
    assert_eq!(p.messages.iter().map(|m| m.seq.0).collect::<Vec<_>>(), (41..=70).collect::<Vec<_>>());
    assert_eq!((p.upto, p.head, p.more, p.gap), (Seq(70), Seq(103), true, None));
    assert_eq!(&p.messages[0].body[..], b"41");
    let end = s.range(&dm, None, Seq(103), 30).unwrap();
    assert!(end.messages.is_empty() && !end.more);
}

#[test]
fn retention_deletes_old_segments_reports_gaps_and_keeps_state() {
    let disk = SimDisk::new(5);
    let mut config = small_config();
    config.retention = Retention { age_ms_max: None, bytes_max: Some(16 * 1024) };
    let mut s = open_sim(&disk, config.clone()).unwrap();
    let (o, m) = (user("o"), user("m"));
    let g = conv("grp");
    s.create(&g, ConvKind::Group, "kept title", &o, std::slice::from_ref(&m), 1).unwrap();
    for i in 0..400 {
        send(&mut s, &g, &m, &format!("id{i}"), &[b'x'; 100]).unwrap();
        s.commit().unwrap();
        if i == 10 {
            s.move_cursor(&g, &m, CursorKind::Read, Seq(5)).unwrap();
        }
    }
    s.commit().unwrap();
    let r = s.retain(10).unwrap();
    assert!(r.segments_deleted > 0 && r.conversations_carried == 1, "{r:?}");
    assert!(s.log().total_bytes() <= 16 * 1024 + 4096);
    let floor = s.conv_info(&g).unwrap().floor;
    assert!(floor > Seq(1));
    let check = |s: &mut Shard<_>| {
        let p = s.range(&g, Some(&m), Seq(0), 10).unwrap();
        assert_eq!(p.gap, Some((Seq(1), Seq(floor.0 - 1))));
        assert_eq!(p.messages[0].seq, floor);
        let (_, all) = read_all(s, &g, 100).unwrap();
        assert_eq!(all.last().unwrap().seq, Seq(400));
        assert_eq!(s.members(&g).unwrap(), vec!["m", "o"]);
        assert_eq!(s.cursor(&g, &m).unwrap(), (Seq(0), Seq(5)));
        assert_eq!(s.conv_info(&g).unwrap().title, "kept title");
        // A retry of a retained message is still a duplicate; a deleted one is simply gone.
        let last = send(s, &g, &m, "id399", &[b'x'; 100]).unwrap();
        assert!(last.dup && last.seq == Seq(400));
    };
    check(&mut s);
    drop(s);
    let mut s = open_sim(&disk, config).unwrap();
    assert_eq!(s.conv_info(&g).unwrap().floor, floor);
    check(&mut s);
}

#[test]
fn bad_requests_are_errors_not_panics() {
    let disk = SimDisk::new(6);
    let mut s = open_sim(&disk, small_config()).unwrap();
    let a = user("a");
    let nope = conv("nope");
    assert!(matches!(send(&mut s, &nope, &a, "1", b""), Err(Error::NotFound)));
    let dm = ConvId::dm(&a, &user("b"));
    assert!(matches!(send(&mut s, &dm, &a, "1", &vec![0; limits::BODY_BYTES_MAX + 1]), Err(Error::TooLarge(_))));
    let r = s.send(SendRequest { conv: &dm, sender: &a, client_id: b"1", kind: "system", body: b"", ts_ms: 0 });
    assert!(matches!(r, Err(Error::BadRequest(_))));
    assert!(matches!(s.create(&conv("dm:a:b"), ConvKind::Group, "", &a, &[], 0), Err(Error::BadRequest(_))));
    assert!(matches!(s.range(&nope, None, Seq(0), 10), Err(Error::NotFound)));
}

#[test]
fn send_many_answers_exactly_as_send_one_by_one() {
    let (one, many) = (SimDisk::new(7), SimDisk::new(8));
    let mut a = open_sim(&one, small_config()).unwrap();
    let mut b = open_sim(&many, small_config()).unwrap();
    let users: Vec<UserId> = (0..6).map(|i| user(&format!("u{i}"))).collect();
    let mut reqs = Vec::new();
    for i in 0..300usize {
        let (s, r) = (&users[i % 6], &users[(i * 7 + 1) % 6]);
        // Every seventh message retries an earlier id; every eleventh conflicts with one.
        let id = if i % 7 == 0 { format!("m{}", i / 2) } else { format!("m{i}") };
        let body = if i % 11 == 0 { b"other".to_vec() } else { id.clone().into_bytes() };
        reqs.push((ConvId::dm(s, r), s.clone(), id, body));
    }
    let as_reqs: Vec<SendRequest> = reqs
        .iter()
        .map(|(c, s, id, body)| SendRequest {
            conv: c,
            sender: s,
            client_id: id.as_bytes(),
            kind: "text",
            body,
            ts_ms: 9,
        })
        .collect();
    let sequential: Vec<String> = as_reqs.iter().map(|&r| format!("{:?}", a.send(r))).collect();
    let mut batched = Vec::new();
    b.send_many(&as_reqs, &mut batched);
    let batched: Vec<String> = batched.iter().map(|r| format!("{r:?}")).collect();
    assert_eq!(sequential, batched);
    assert!(sequential.iter().any(|r| r.contains("dup: true")) && sequential.iter().any(|r| r.contains("Conflict")));
}
