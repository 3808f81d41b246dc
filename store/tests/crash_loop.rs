//! A real-process crash loop. The child appends through the production shard thread (real
//! files, fsync) and prints a line for every acknowledged message; the parent kills it with
//! SIGKILL at a random moment, reopens the data folder and checks that every acknowledged
//! message is there with the seq it was acknowledged with, seqs gap-free, no duplicates. Each
//! child begins by re-sending the last few messages of the one before: retries across a crash
//! must come back as duplicates with their original seq.
//!
//! `CRASH_LOOP_ITERATIONS` (default 25) sets the number of kills.

use rand::Rng;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use switchboard_store::rt::{self, Commit, DriverKind};
use switchboard_store::storage::FsStorage;
use switchboard_store::*;

const WRITERS: usize = 16;
const RETRIES: u64 = 3;

fn conv_of(w: usize) -> ConvId {
    ConvId::dm(&UserId::new(&format!("w{w}")).unwrap(), &UserId::new("sink").unwrap())
}

fn main() {
    let mut args = std::env::args().skip(1);
    if args.next().as_deref() == Some("--child") {
        return child(Path::new(&args.next().expect("data dir")));
    }
    let iterations: usize = std::env::var("CRASH_LOOP_ITERATIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(25);
    let dir = tempfile::tempdir().unwrap();
    // conv → seq → id, as acknowledged to the child.
    let mut acked: BTreeMap<String, BTreeMap<u64, String>> = BTreeMap::new();
    let mut total = 0;
    for i in 0..iterations {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .arg("--child")
            .arg(dir.path())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let ready = rx.recv_timeout(Duration::from_secs(30)).expect("child did not start");
        assert_eq!(ready, "READY");
        std::thread::sleep(Duration::from_millis(rand::thread_rng().gen_range(20..400)));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        reader.join().unwrap();
        let mut acks = 0;
        for line in rx.try_iter() {
            let mut f = line.split(' ');
            let (tag, conv, seq, id, dup) =
                (f.next(), f.next().unwrap(), f.next().unwrap(), f.next().unwrap(), f.next());
            assert_eq!(tag, Some("ACK"));
            let seq: u64 = seq.parse().unwrap();
            let known = acked.entry(conv.to_string()).or_default();
            match known.get(&seq) {
                Some(prev) => assert_eq!(prev, id, "iteration {i}: {conv} seq {seq} acked for two ids"),
                // A dup of a message never acked: it became durable just before a kill.
                None => {
                    assert!(matches!(dup, Some("new" | "dup")));
                    known.insert(seq, id.to_string());
                }
            }
            acks += 1;
        }
        total += acks;
        verify(dir.path(), &acked, i);
    }
    let convs = acked.len();
    println!("crash_loop: {iterations} kills, {total} acknowledgements, {convs} conversations, 0 lost");
    println!("{iterations} passed, 0 failed");
}

/// Reopens the store and demands every acknowledged message, gap-free, without duplicates.
fn verify(dir: &Path, acked: &BTreeMap<String, BTreeMap<u64, String>>, i: usize) {
    // Every other check rebuilds the dedup index on a helper thread.
    let config = ShardConfig {
        parallel_dedup_rebuild_bytes_min: if i.is_multiple_of(2) { 0 } else { u64::MAX },
        ..ShardConfig::default()
    };
    let (mut shard, recovery) = Shard::open(FsStorage::open(dir).unwrap(), config)
        .unwrap_or_else(|e| panic!("iteration {i}: reopen failed: {e}"));
    for (conv, msgs) in acked {
        let c = ConvId::new(conv).unwrap();
        let head = shard.conv_info(&c).unwrap().head.0;
        let mut after = Seq(0);
        let mut all = Vec::new();
        loop {
            let page = shard.range(&c, None, after, 1000).unwrap();
            assert_eq!(page.gap, None);
            all.extend(page.messages);
            after = page.upto;
            if !page.more {
                break;
            }
        }
        assert_eq!(all.len() as u64, head, "iteration {i}: {conv}");
        for (n, m) in all.iter().enumerate() {
            assert_eq!(m.seq.0, n as u64 + 1, "iteration {i}: {conv} has a seq gap");
            assert_eq!(m.body, m.client_id, "iteration {i}: body and id travel together");
        }
        let mut ids: Vec<&[u8]> = all.iter().map(|m| &m.client_id[..]).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), all.len(), "iteration {i}: {conv} holds a duplicate");
        for (seq, id) in msgs {
            let m = all.get(*seq as usize - 1).unwrap_or_else(|| panic!("iteration {i}: {conv} lost acked seq {seq}"));
            assert_eq!(m.client_id, id.as_bytes(), "iteration {i}: {conv} seq {seq} changed");
        }
    }
    assert!(recovery.records > 0 || acked.is_empty());
}

/// The child: WRITERS threads, one conversation each, one message in flight each, through the
/// production shard thread. Message n of writer w has id and body `w-n`.
fn child(dir: &Path) {
    let driver =
        if std::env::var_os("CRASH_LOOP_BLOCKING").is_some() { DriverKind::Blocking } else { DriverKind::Uring };
    // The child always rebuilds its dedup index on a helper thread: its retries check it.
    let config = ShardConfig { parallel_dedup_rebuild_bytes_min: 0, ..ShardConfig::default() };
    let (handle, _thread, _) = rt::spawn(dir, config, 4096, None, driver).expect("open store");
    // Where each writer starts: a few messages back, so that the first sends are retries.
    let (tx, rx) = mpsc::channel();
    handle
        .read(Box::new(move |shard| {
            let heads: Vec<u64> = (0..WRITERS).map(|w| shard.conv_info(&conv_of(w)).map_or(0, |c| c.head.0)).collect();
            tx.send(heads).unwrap();
        }))
        .unwrap();
    let heads = rx.recv().unwrap();
    println!("READY");
    let started = Instant::now();
    let threads: Vec<_> = (0..WRITERS)
        .map(|w| {
            let handle = handle.clone();
            let start = heads[w].saturating_sub(RETRIES);
            std::thread::spawn(move || {
                let conv = conv_of(w);
                let sender = UserId::new(&format!("w{w}")).unwrap();
                for n in start.. {
                    let id = format!("{w}-{n}");
                    let (tx, rx) = mpsc::channel();
                    let (conv2, sender2) = (conv.clone(), sender.clone());
                    handle
                        .write_blocking(Box::new(move |shard| {
                            let req = SendRequest {
                                conv: &conv2,
                                sender: &sender2,
                                client_id: id.as_bytes(),
                                kind: "text",
                                body: id.as_bytes(),
                                ts_ms: 0,
                            };
                            let r = shard.send(req).map_err(|e| e.to_string());
                            Box::new(move |commit: &Commit| {
                                let _ = tx.send((r, commit.clone(), id));
                            })
                        }))
                        .unwrap();
                    let (r, commit, id) = rx.recv().unwrap();
                    assert_eq!(commit, Commit::Durable);
                    let a = r.unwrap();
                    let mut out = std::io::stdout().lock();
                    let dup = if a.dup { "dup" } else { "new" };
                    writeln!(out, "ACK {} {} {id} {dup}", conv, a.seq.0).unwrap();
                    out.flush().unwrap();
                    if started.elapsed() > Duration::from_secs(60) {
                        return;
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}
