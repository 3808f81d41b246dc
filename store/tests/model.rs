//! Property test: the shard's sequencers, dedup, membership and cursors against a naive model
//! (BTreeMaps and Vecs), over random operation sequences with crashes at random points,
//! including in the middle of a commit (the batch written, the fsync never finished).
//!
//! The model knows exactly what was committed. After a crash, everything committed must be
//! there, unchanged; the batch that was being committed must be there entirely or not at all.

mod common;
use common::*;
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};
use switchboard_store::storage::{SimDisk, SimStorage, Storage};
use switchboard_store::*;

const USERS: [&str; 4] = ["a", "b", "c", "d"];
const CONVS: [&str; 3] = ["dm:a:b", "g1", "dm:b:c"];

#[derive(Clone, Debug)]
enum Op {
    Send {
        conv: usize,
        sender: usize,
        id: u8,
        body: u8,
    },
    Member {
        user: usize,
        add: bool,
    },
    Cursor {
        conv: usize,
        user: usize,
        read: bool,
        seq: u64,
    },
    Commit,
    /// Hand the staged batch to the "driver" (as the io_uring driver does) and keep staging.
    BeginCommit,
    /// The driver's write and fsync of the batch in flight complete.
    FinishCommit,
    Read {
        conv: usize,
        after: u64,
        limit: usize,
    },
    Crash,
    CrashDuringCommit,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0..3usize, 0..4usize, 0..6u8, 0..2u8).prop_map(|(conv, sender, id, body)| Op::Send { conv, sender, id, body }),
        1 => (0..4usize, any::<bool>()).prop_map(|(user, add)| Op::Member { user, add }),
        2 => (0..3usize, 0..4usize, any::<bool>(), 0..12u64).prop_map(|(conv, user, read, seq)| Op::Cursor { conv, user, read, seq }),
        3 => Just(Op::Commit),
        2 => Just(Op::BeginCommit),
        2 => Just(Op::FinishCommit),
        2 => (0..3usize, 0..12u64, 1..6usize).prop_map(|(conv, after, limit)| Op::Read { conv, after, limit }),
        1 => Just(Op::Crash),
        1 => Just(Op::CrashDuringCommit),
    ]
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Msg {
    sender: String,
    client_id: Vec<u8>,
    kind: String,
    body: Vec<u8>,
    ts_ms: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct ModelConv {
    msgs: Vec<Msg>,
    members: BTreeSet<String>,
    cursors: BTreeMap<(String, bool), u64>,
}

/// The naive model: the whole state, cloned at every commit.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Model {
    convs: BTreeMap<String, ModelConv>,
}

impl Model {
    fn send(&mut self, conv: &str, sender: &str, id: &[u8], body: &[u8], ts: u64) -> Result<(u64, bool), &'static str> {
        if !self.convs.contains_key(conv) {
            let (a, b) = conv.strip_prefix("dm:").and_then(|r| r.split_once(':')).ok_or("not found")?;
            if sender != a && sender != b {
                return Err("forbidden");
            }
            let members = [a.to_string(), b.to_string()].into();
            self.convs.insert(conv.to_string(), ModelConv { members, ..ModelConv::default() });
        }
        let c = self.convs.get_mut(conv).unwrap();
        if !c.members.contains(sender) {
            return Err("forbidden");
        }
        if let Some(i) = c.msgs.iter().position(|m| m.sender == sender && m.client_id == id) {
            return if c.msgs[i].body == body { Ok((i as u64 + 1, true)) } else { Err("conflict") };
        }
        let m = Msg { sender: sender.into(), client_id: id.into(), kind: "text".into(), body: body.into(), ts_ms: ts };
        c.msgs.push(m);
        Ok((c.msgs.len() as u64, false))
    }
}

/// The store's whole observable state, read back through its API, in the model's shape.
fn observe(shard: &mut Shard<SimStorage>) -> Model {
    let mut out = Model::default();
    for id in CONVS {
        let cid = conv(id);
        if matches!(shard.conv_info(&cid), Err(Error::NotFound)) {
            continue;
        }
        let (gap, all) = read_all(shard, &cid, 4).unwrap();
        assert_eq!(gap, None);
        let msgs = all
            .iter()
            .map(|m| Msg {
                sender: m.sender.clone(),
                client_id: m.client_id.clone(),
                kind: m.kind.clone(),
                body: m.body.to_vec(),
                ts_ms: m.ts_ms,
            })
            .collect();
        let members: BTreeSet<String> = shard.members(&cid).unwrap().into_iter().collect();
        let mut cursors = BTreeMap::new();
        for u in &members {
            let (d, r) = shard.cursor(&cid, &user(u)).unwrap();
            for (read, seq) in [(false, d.0), (true, r.0)] {
                if seq > 0 {
                    cursors.insert((u.clone(), read), seq);
                }
            }
        }
        out.convs.insert(id.to_string(), ModelConv { msgs, members, cursors });
    }
    out
}

fn normalized(m: &Model) -> Model {
    let mut m = m.clone();
    for c in m.convs.values_mut() {
        c.cursors.retain(|_, seq| *seq > 0);
    }
    m
}

fn verify_all(shard: &mut Shard<SimStorage>, model: &Model) {
    assert_eq!(observe(shard), normalized(model));
}

fn run(ops: Vec<Op>) {
    let disk = SimDisk::new(ops.len() as u64);
    let mut shard = open_sim(&disk, small_config()).unwrap();
    let mut model = Model::default();
    let g1 = model.convs.entry("g1".into()).or_default();
    g1.members = ["a".to_string(), "b".to_string()].into();
    shard.create(&conv("g1"), ConvKind::Group, "g", &user("a"), &[user("b")], 0).unwrap();
    shard.commit().unwrap();
    let mut committed = model.clone();
    // The batch in flight, with the model as it stood when the batch was handed over.
    let mut in_flight: Option<(log::Flush, Model)> = None;
    let finish = |shard: &mut Shard<SimStorage>, f: Option<(log::Flush, Model)>, committed: &mut Model| {
        if let Some((flush, at_begin)) = f {
            let mut disk_io = SimStorage(disk.clone());
            let r = disk_io
                .write_at(&flush.segment, flush.position, &flush.bytes)
                .and_then(|_| disk_io.sync(&flush.segment));
            shard.finish_commit(r).unwrap();
            *committed = at_begin;
        }
    };
    for (ts, op) in ops.into_iter().enumerate() {
        let ts = ts as u64 + 1;
        match op {
            Op::Send { conv: c, sender, id, body } => {
                let id = format!("id{id}");
                let body = vec![b'0' + body; 3 + body as usize];
                let want = model.send(CONVS[c], USERS[sender], id.as_bytes(), &body, ts);
                let got = shard.send(SendRequest {
                    conv: &conv(CONVS[c]),
                    sender: &user(USERS[sender]),
                    client_id: id.as_bytes(),
                    kind: "text",
                    body: &body,
                    ts_ms: ts,
                });
                match (want, got) {
                    (Ok((seq, dup)), Ok(a)) => assert_eq!((a.seq.0, a.dup), (seq, dup)),
                    (Err("forbidden"), Err(Error::Forbidden(_))) => {}
                    (Err("conflict"), Err(Error::Conflict)) => {}
                    (w, g) => panic!("send: model {w:?}, store {g:?}"),
                }
            }
            Op::Member { user: u, add } => {
                let g = model.convs.get_mut("g1").unwrap();
                let name = USERS[u].to_string();
                let changes = if add { [user(USERS[u])].to_vec() } else { Vec::new() };
                let removes = if add { Vec::new() } else { [user(USERS[u])].to_vec() };
                let got = shard.change_members(&conv("g1"), &user("a"), &changes, &removes, ts).unwrap();
                let effective = if add { g.members.insert(name.clone()) } else { g.members.remove(&name) };
                assert_eq!(got.len(), effective as usize);
                if effective {
                    let event = if add { "member_added" } else { "member_removed" };
                    let body = format!(r#"{{"event":"{event}","user":"{name}"}}"#).into_bytes();
                    let m = Msg { sender: "a".into(), client_id: vec![], kind: "system".into(), body, ts_ms: ts };
                    g.msgs.push(m);
                    assert_eq!(got[0].2.seq.0, g.msgs.len() as u64);
                    if !add {
                        g.cursors.retain(|(who, _), _| *who != name);
                    }
                }
            }
            Op::Cursor { conv: c, user: u, read, seq } => {
                let kind = if read { CursorKind::Read } else { CursorKind::Delivered };
                let got = shard.move_cursor(&conv(CONVS[c]), &user(USERS[u]), kind, Seq(seq));
                match model.convs.get_mut(CONVS[c]) {
                    None => assert!(matches!(got, Err(Error::NotFound))),
                    Some(mc) if !mc.members.contains(USERS[u]) => assert!(matches!(got, Err(Error::Forbidden(_)))),
                    Some(mc) if seq > mc.msgs.len() as u64 => assert!(matches!(got, Err(Error::BadRequest(_)))),
                    Some(mc) => {
                        let cur = mc.cursors.entry((USERS[u].to_string(), read)).or_insert(0);
                        assert_eq!(got.unwrap(), seq > *cur);
                        *cur = (*cur).max(seq);
                    }
                }
            }
            Op::BeginCommit => {
                if in_flight.is_none() {
                    in_flight = shard.begin_commit().unwrap().map(|f| (f, model.clone()));
                }
            }
            Op::FinishCommit => finish(&mut shard, in_flight.take(), &mut committed),
            Op::Commit => {
                finish(&mut shard, in_flight.take(), &mut committed);
                shard.commit().unwrap();
                committed = model.clone();
            }
            Op::Read { conv: c, after, limit } => {
                finish(&mut shard, in_flight.take(), &mut committed);
                shard.commit().unwrap();
                committed = model.clone();
                let got = shard.range(&conv(CONVS[c]), None, Seq(after), limit);
                match model.convs.get(CONVS[c]) {
                    None => assert!(matches!(got, Err(Error::NotFound))),
                    Some(mc) => {
                        let p = got.unwrap();
                        let want: Vec<u64> = (after + 1..=mc.msgs.len() as u64).take(limit).collect();
                        assert_eq!(p.messages.iter().map(|m| m.seq.0).collect::<Vec<_>>(), want);
                        assert_eq!(p.head.0, mc.msgs.len() as u64);
                    }
                }
            }
            Op::Crash => {
                // A batch in flight whose write never happened is simply gone.
                in_flight = None;
                // Nothing staged since the last commit was written: it is simply gone.
                drop(shard);
                disk.borrow_mut().crash();
                shard = open_sim(&disk, small_config()).unwrap();
                model = committed.clone();
                verify_all(&mut shard, &model);
            }
            Op::CrashDuringCommit => {
                finish(&mut shard, in_flight.take(), &mut committed);
                let staged = shard.staged_count();
                disk.borrow_mut().fail_next_sync = true;
                let r = shard.commit();
                disk.borrow_mut().fail_next_sync = false;
                assert!(staged == 0 || matches!(r, Err(Error::Poisoned(_))));
                if staged > 0 {
                    let after = send(&mut shard, &conv("dm:a:b"), &user("a"), "late", b"x");
                    assert!(matches!(after, Err(Error::Poisoned(_))), "a poisoned store refuses appends");
                }
                drop(shard);
                disk.borrow_mut().crash();
                shard = open_sim(&disk, small_config()).unwrap();
                // The batch is atomic: all of it survived, or none of it.
                let seen = observe(&mut shard);
                if seen == normalized(&model) {
                    committed = model.clone();
                } else {
                    assert_eq!(seen, normalized(&committed), "neither all nor none of the batch survived");
                }
                model = committed.clone();
                verify_all(&mut shard, &model);
            }
        }
    }
    finish(&mut shard, in_flight.take(), &mut committed);
    shard.commit().unwrap();
    verify_all(&mut shard, &model);
    drop(shard);
    let mut shard = open_sim(&disk, small_config()).unwrap();
    verify_all(&mut shard, &model);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]
    #[test]
    fn shard_matches_model(ops in proptest::collection::vec(op(), 1..250)) {
        run(ops);
    }
}
