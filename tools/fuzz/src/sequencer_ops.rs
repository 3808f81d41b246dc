//! The sequencer and its store, driven by sequences of operations on the simulated disk:
//! sends (new ids and retries), groups and membership changes, commits, fsync failures and
//! crashes.
//!
//! A model kept here, apart from the store, says what each answer must be and what must be
//! readable: a new message takes the conversation's next seq, a retry is a dup with the
//! original seq and a changed retry a conflict, a non-member is refused, nothing is
//! acknowledged while the store is poisoned, and after any crash every committed message is
//! read back under its seq, with nothing in between that was never sent.

use arbitrary::{Arbitrary, Unstructured};
use std::collections::{BTreeMap, BTreeSet};
use switchboard_store::record::MemberChange;
use switchboard_store::storage::{SimDisk, SimStorage};
use switchboard_store::{ConvId, ConvKind, Error, LogConfig, Retention, SendRequest, Seq, Shard, ShardConfig, UserId};

#[derive(Arbitrary, Debug)]
enum Op {
    Send { conv: u8, sender: u8, id: u8, body: u8 },
    Group { conv: u8, owner: u8, members: u8 },
    Change { conv: u8, actor: u8, add: u8, remove: u8 },
    Commit,
    FailNextSync,
    Crash,
    Read { conv: u8, after: u8, limit: u8 },
}

/// Crashes an input may make; later ones are skipped. Each crash reopens the store and reads
/// every conversation back, so without a bound the fuzzer's longest inputs (tens of crashes
/// over a grown log) ran four times slower, for states that eight crashes already reach.
const CRASHES_MAX: usize = 8;

const USERS: [&str; 4] = ["ann", "bob", "cy", "dee"];

#[derive(Clone, Debug, PartialEq, Eq)]
enum Entry {
    Message { sender: String, id: String, body: Vec<u8> },
    System,
}

#[derive(Default, Clone)]
struct Conv {
    members: BTreeSet<String>,
    /// Committed (durable) entries by seq.
    log: BTreeMap<u64, Entry>,
}

struct Model {
    convs: BTreeMap<String, Conv>,
    /// Staged since the last commit: (conv, seq, entry); conversations made since then.
    staged: Vec<(String, u64, Entry)>,
    made: BTreeMap<String, Conv>,
    poisoned: bool,
}

impl Model {
    fn conv(&self, id: &str) -> Option<&Conv> {
        self.made.get(id).or_else(|| self.convs.get(id))
    }

    fn head(&self, id: &str) -> u64 {
        let staged = self.staged.iter().filter(|(c, ..)| c == id).map(|(_, s, _)| *s).max();
        let logged = self.conv(id).and_then(|c| c.log.keys().next_back().copied());
        staged.max(logged).unwrap_or(0)
    }

    fn entry(&self, id: &str, sender: &str, client: &str) -> Option<(u64, Vec<u8>)> {
        let staged = self.staged.iter().filter(|(c, ..)| c == id).map(|(_, s, e)| (*s, e));
        let logged = self.conv(id).into_iter().flat_map(|c| c.log.iter().map(|(s, e)| (*s, e)));
        logged.chain(staged).find_map(|(s, e)| match e {
            Entry::Message { sender: who, id: cid, body } if who == sender && cid == client => Some((s, body.clone())),
            _ => None,
        })
    }
}

fn config() -> ShardConfig {
    ShardConfig {
        log: LogConfig { segment_bytes_max: 2048, index_interval_bytes: 256, ..LogConfig::default() },
        retention: Retention::default(),
        ..ShardConfig::default()
    }
}

fn user(i: u8) -> UserId {
    UserId::new(USERS[i as usize % USERS.len()]).unwrap()
}

fn open(disk: &std::rc::Rc<std::cell::RefCell<SimDisk>>) -> Shard<SimStorage> {
    match Shard::open(SimStorage(disk.clone()), config()) {
        Ok((shard, _)) => shard,
        Err(e) => panic!("a crash without bit flips made the store refuse to open: {e}"),
    }
}

/// Everything the store serves of `conv`, by seq.
fn read_all(shard: &mut Shard<SimStorage>, conv: &ConvId) -> BTreeMap<u64, Entry> {
    let read = crate::read_forward(shard, conv, 7);
    match read.error {
        None | Some(Error::NotFound) => {}
        Some(e) => panic!("{conv}: reading after a crash failed: {e}"),
    }
    assert!(!read.gap, "{conv}: a gap with no retention");
    let entry = |m: switchboard_store::StoredMessage| {
        if m.kind == "system" {
            Entry::System
        } else {
            let id = String::from_utf8(m.client_id).expect("ids are ASCII");
            Entry::Message { sender: m.sender, id, body: m.body.to_vec() }
        }
    };
    read.messages.into_iter().map(|m| (m.seq.0, entry(m))).collect()
}

/// After a crash: every committed entry is back; anything beyond is what was staged, in
/// order; seqs are gap-free. What survived becomes the model's truth.
fn recover(model: &mut Model, shard: &mut Shard<SimStorage>) {
    let mut ids: BTreeSet<String> = model.convs.keys().cloned().collect();
    ids.extend(model.made.keys().cloned());
    let staged = std::mem::take(&mut model.staged);
    let made = std::mem::take(&mut model.made);
    for id in ids {
        let conv = ConvId::new(&id).unwrap();
        let served = read_all(shard, &conv);
        let before = model.convs.get(&id).or_else(|| made.get(&id)).cloned().unwrap_or_default();
        for (seq, entry) in &before.log {
            assert_eq!(served.get(seq), Some(entry), "{id}: committed seq {seq} lost or changed by a crash");
        }
        for (i, (seq, entry)) in served.iter().enumerate() {
            assert_eq!(*seq, i as u64 + 1, "{id}: a gap at seq {seq}");
            if !before.log.contains_key(seq) {
                let was = staged.iter().find(|(c, s, _)| c == &id && s == seq).map(|(.., e)| e);
                assert_eq!(was, Some(entry), "{id}: seq {seq} came back but was never sent");
            }
        }
        if shard.conv_info(&conv).is_err() {
            assert!(before.log.is_empty() && !model.convs.contains_key(&id), "{id}: a committed conversation vanished");
            model.convs.remove(&id);
            continue;
        }
        let members = shard.members(&conv).expect("it exists").into_iter().collect();
        model.convs.insert(id, Conv { members, log: served });
    }
    model.poisoned = false;
}

pub fn run(data: &[u8]) {
    let Ok(ops) = Vec::<Op>::arbitrary_take_rest(Unstructured::new(data)) else { return };
    let disk = SimDisk::new(1);
    let mut shard = open(&disk);
    let mut model = Model { convs: BTreeMap::new(), staged: Vec::new(), made: BTreeMap::new(), poisoned: false };
    let mut ts = 1_000u64;
    let mut crashes = 0;
    for op in ops.into_iter().take(200) {
        ts += 1;
        match op {
            Op::Send { conv, sender, id, body } => {
                let from = user(sender);
                let c = if conv % 2 == 0 {
                    ConvId::dm(&from, &user(conv / 2))
                } else {
                    ConvId::new(&format!("g{}", conv / 2 % 3)).unwrap()
                };
                let (client, body) = (format!("m{}", id % 8), vec![b'a' + body % 3; 1 + body as usize % 40]);
                let req = SendRequest {
                    conv: &c,
                    sender: &from,
                    client_id: client.as_bytes(),
                    kind: "text",
                    body: &body,
                    ts_ms: ts,
                };
                let got = shard.send(req);
                if model.poisoned {
                    assert!(got.is_err(), "acknowledged while poisoned");
                    continue;
                }
                let member = match model.conv(c.as_str()) {
                    Some(m) => m.members.contains(from.as_str()),
                    None => c.dm_members().is_some(),
                };
                match (got, model.entry(c.as_str(), from.as_str(), &client)) {
                    (Err(Error::Poisoned(_)), _) => model.poisoned = true,
                    (Err(Error::Forbidden(_)) | Err(Error::NotFound), _) => {
                        assert!(!member, "{c}: a member's send refused")
                    }
                    (got, _) if !member => panic!("{c}: a non-member's send answered {got:?}"),
                    (Ok(a), Some((seq, was))) => {
                        assert!(a.dup && a.seq.0 == seq && was == body, "{c}: retry answered {a:?}, was {seq}")
                    }
                    (Err(Error::Conflict), Some((_, was))) => assert_ne!(was, body),
                    (Ok(a), None) => {
                        assert!(!a.dup, "{c}: a new id answered as a dup");
                        assert_eq!(a.seq.0, model.head(c.as_str()) + 1, "{c}: not the next seq");
                        if model.conv(c.as_str()).is_none() {
                            let (a, b) = c.dm_members().expect("only dms are made by a send");
                            let members = [a.as_str().to_string(), b.as_str().to_string()].into();
                            model.made.insert(c.to_string(), Conv { members, log: BTreeMap::new() });
                        }
                        let entry = Entry::Message { sender: from.as_str().into(), id: client, body };
                        model.staged.push((c.to_string(), a.seq.0, entry));
                    }
                    (got, was) => panic!("{c}: send answered {got:?} with the model at {was:?}"),
                }
            }
            Op::Group { conv, owner, members } => {
                let c = ConvId::new(&format!("g{}", conv % 3)).unwrap();
                let listed: Vec<UserId> = (0..4u8).filter(|i| members >> i & 1 == 1).map(user).collect();
                let got = shard.create(&c, ConvKind::Group, "", &user(owner), &listed, ts);
                if model.poisoned {
                    continue;
                }
                match got {
                    Ok(_) => {
                        assert!(model.conv(c.as_str()).is_none(), "{c} made twice");
                        let mut all: BTreeSet<String> = listed.iter().map(|u| u.as_str().to_string()).collect();
                        all.insert(user(owner).as_str().to_string());
                        model.made.insert(c.to_string(), Conv { members: all, log: BTreeMap::new() });
                    }
                    Err(Error::BadRequest(_)) => assert!(model.conv(c.as_str()).is_some(), "{c}: refused to make"),
                    Err(Error::Poisoned(_)) => model.poisoned = true,
                    Err(e) => panic!("{c}: create answered {e}"),
                }
            }
            Op::Change { conv, actor, add, remove } => {
                let c = ConvId::new(&format!("g{}", conv % 3)).unwrap();
                let add: Vec<UserId> = (0..4u8).filter(|i| add >> i & 1 == 1).map(user).collect();
                let remove: Vec<UserId> = (0..4u8).filter(|i| remove >> i & 1 == 1).map(user).collect();
                let got = shard.change_members(&c, &user(actor), &add, &remove, ts);
                if model.poisoned {
                    continue;
                }
                match got {
                    Ok(done) => {
                        let mut head = model.head(c.as_str());
                        let mut members = model.conv(c.as_str()).expect("changed, so it exists").members.clone();
                        for (who, change, appended) in done {
                            head += 1;
                            assert_eq!(appended.seq.0, head, "{c}: a change not at the next seq");
                            let fresh = match change {
                                MemberChange::Added => members.insert(who.as_str().to_string()),
                                MemberChange::Removed => members.remove(who.as_str()),
                            };
                            assert!(fresh, "{c}: a change that changed nothing was sequenced");
                            model.staged.push((c.to_string(), head, Entry::System));
                        }
                        match model.made.get_mut(c.as_str()) {
                            Some(m) => m.members = members,
                            None => model.convs.get_mut(c.as_str()).expect("it exists").members = members,
                        }
                    }
                    Err(Error::Poisoned(_)) => model.poisoned = true,
                    Err(Error::NotFound) => assert!(model.conv(c.as_str()).is_none(), "{c} not found"),
                    Err(Error::Forbidden(_)) => {}
                    Err(e) => panic!("{c}: change answered {e}"),
                }
            }
            Op::Commit => {
                if model.poisoned {
                    continue;
                }
                match shard.commit() {
                    Ok(_) => {
                        for (id, conv) in std::mem::take(&mut model.made) {
                            model.convs.insert(id, conv);
                        }
                        for (id, seq, entry) in std::mem::take(&mut model.staged) {
                            model.convs.get_mut(&id).expect("made before").log.insert(seq, entry);
                        }
                    }
                    Err(_) => model.poisoned = true,
                }
            }
            Op::FailNextSync => disk.borrow_mut().fail_next_sync = true,
            Op::Crash if crashes == CRASHES_MAX => {}
            Op::Crash => {
                crashes += 1;
                drop(shard);
                disk.borrow_mut().crash();
                disk.borrow_mut().fail_next_sync = false;
                shard = open(&disk);
                recover(&mut model, &mut shard);
            }
            Op::Read { conv, after, limit } => {
                if model.poisoned || !model.staged.is_empty() || !model.made.is_empty() {
                    continue;
                }
                let c = ConvId::new(&format!("g{}", conv % 3)).unwrap();
                let Some(m) = model.convs.get(c.as_str()) else { continue };
                let page =
                    shard.range(&c, None, Seq(after.into()), limit as usize).expect("a committed conversation reads");
                let expected: Vec<u64> =
                    m.log.range(after as u64 + 1..).map(|(s, _)| *s).take(page.messages.len()).collect();
                let got: Vec<u64> = page.messages.iter().map(|m| m.seq.0).collect();
                assert_eq!(got, expected, "{c}: range after {after}");
                assert_eq!(page.head.0, m.log.keys().next_back().copied().unwrap_or(0));
            }
        }
    }
}
