//! Damaged data folders on real files: truncation at random offsets, flipped bits, appended
//! junk, deleted index and segment files. Opening never panics; it either reports the damage
//! (`Error::Corrupt`) or opens, and then every record it serves is exactly what was written.

mod common;
use common::*;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::path::Path;
use switchboard_store::storage::FsStorage;
use switchboard_store::*;

const DAMAGES: u64 = 400;

type Truth = BTreeMap<String, BTreeMap<u64, Vec<u8>>>;

fn build(dir: &Path) -> Truth {
    let (mut s, _) = Shard::open(FsStorage::open(dir).unwrap(), small_config()).unwrap();
    let mut truth = Truth::new();
    let mut rng = SmallRng::seed_from_u64(7);
    for i in 0..600u64 {
        let (a, b) = (user(&format!("u{}", i % 5)), user(&format!("u{}", i % 3)));
        let c = ConvId::dm(&a, &b);
        let body = format!("{i}-{}", "y".repeat(rng.gen_range(0..120))).into_bytes();
        let ap = send(&mut s, &c, &a, &format!("id{i}"), &body).unwrap();
        truth.entry(c.to_string()).or_default().insert(ap.seq.0, body);
        if rng.gen_bool(0.3) {
            s.commit().unwrap();
        }
    }
    s.commit().unwrap();
    assert!(s.log().segments().len() > 5, "the data spans several segments");
    truth
}

fn damage(dir: &Path, rng: &mut SmallRng) -> String {
    let mut names: Vec<_> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.retain(|n| n != "LOCK");
    names.sort();
    let name = names[rng.gen_range(0..names.len())].clone();
    let path = dir.join(&name);
    let mut bytes = std::fs::read(&path).unwrap();
    let what = match rng.gen_range(0..5) {
        0 => {
            let at = rng.gen_range(0..=bytes.len());
            bytes.truncate(at);
            format!("truncate {name} at {at}")
        }
        1 if !bytes.is_empty() => {
            let bit = rng.gen_range(0..bytes.len() * 8);
            bytes[bit / 8] ^= 1 << (bit % 8);
            format!("flip bit {bit} of {name}")
        }
        2 => {
            let n = rng.gen_range(1..300);
            bytes.extend((0..n).map(|_| rng.gen::<u8>()));
            format!("append {n} junk bytes to {name}")
        }
        3 => {
            std::fs::remove_file(&path).unwrap();
            return format!("delete {name}");
        }
        _ => {
            // Junk over a whole random range.
            if bytes.is_empty() {
                return "nothing".into();
            }
            let a = rng.gen_range(0..bytes.len());
            let b = (a + rng.gen_range(1..64)).min(bytes.len());
            rng.fill(&mut bytes[a..b]);
            format!("overwrite {name} {a}..{b}")
        }
    };
    std::fs::write(&path, bytes).unwrap();
    what
}

#[test]
fn damaged_folders_never_panic_and_never_serve_corrupt_records() {
    let original = tempfile::tempdir().unwrap();
    let truth = build(original.path());
    let mut rng = SmallRng::seed_from_u64(42);
    let (mut opened, mut reported) = (0, 0);
    for _ in 0..DAMAGES {
        let dir = tempfile::tempdir().unwrap();
        copy_dir(original.path(), dir.path());
        let what = damage(dir.path(), &mut rng);
        match Shard::open(FsStorage::open(dir.path()).unwrap(), small_config()) {
            Err(Error::Corrupt { .. }) => reported += 1,
            Err(e) => panic!("{what}: unexpected error {e}"),
            Ok((mut s, _)) => {
                opened += 1;
                for (c, msgs) in &truth {
                    let (_, all) = match read_all(&mut s, &conv(c), 50) {
                        Ok(p) => p,
                        Err(Error::NotFound) | Err(Error::Corrupt { .. }) => continue,
                        Err(e) => panic!("{what}: {e}"),
                    };
                    for m in all {
                        assert_eq!(
                            Some(&m.body.to_vec()),
                            msgs.get(&m.seq.0),
                            "{what}: {c} seq {} served wrong",
                            m.seq.0
                        );
                    }
                }
                // And it accepts appends again after cutting whatever it cut.
                let a = user("u1");
                send(&mut s, &ConvId::dm(&a, &user("u9")), &a, "after", b"ok").unwrap();
                s.commit().unwrap();
            }
        }
    }
    println!("{DAMAGES} damaged folders: {opened} opened and served only intact records, {reported} reported corrupt");
    assert!(opened > 0 && reported > 0);
}

/// Files removed whole leave nothing to checksum, so these are refused by what the folder's
/// shape says: a meta file with no segment left, or a last segment that is sealed (its index
/// is written only once the segment after it is durable). Opened, either would serve the
/// lost messages as never written. A creation that a crash cut short (only the first segment,
/// empty, without a meta file) held nothing and opens.
#[test]
fn removed_segments_are_refused_not_served_as_empty() {
    let original = tempfile::tempdir().unwrap();
    build(original.path());
    let names = |dir: &Path| -> Vec<String> {
        let mut n: Vec<_> =
            std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        n.sort();
        n
    };
    let refused = |remove: &dyn Fn(&str) -> bool| {
        let dir = tempfile::tempdir().unwrap();
        copy_dir(original.path(), dir.path());
        for name in names(dir.path()).into_iter().filter(|n| remove(n)) {
            std::fs::remove_file(dir.path().join(name)).unwrap();
        }
        match Shard::open(FsStorage::open(dir.path()).unwrap(), small_config()) {
            Err(Error::Corrupt { reason, .. }) => reason,
            Err(e) => panic!("unexpected error {e}"),
            Ok(_) => panic!("opened a folder with its segments removed"),
        }
    };
    let every_segment = refused(&|n| n.ends_with(".log"));
    assert!(every_segment.contains("every log segment is gone"), "{every_segment}");
    let last = names(original.path()).into_iter().rfind(|n| n.ends_with(".log")).unwrap();
    let last_segment = refused(&|n| n == last);
    assert!(last_segment.contains("the segments after it are gone"), "{last_segment}");

    let interrupted = tempfile::tempdir().unwrap();
    std::fs::write(interrupted.path().join("00000000000000000000.log"), b"").unwrap();
    let (mut s, _) = Shard::open(FsStorage::open(interrupted.path()).unwrap(), small_config()).unwrap();
    let a = user("u1");
    send(&mut s, &ConvId::dm(&a, &user("u2")), &a, "first", b"ok").unwrap();
    s.commit().unwrap();
}
