//! `switchboard-bench store`: durable appends through the production shard thread.
//!
//! Producers submit appends to each shard in jobs of `--job-appends` (as the edge's cross-core
//! queues deliver them), keeping `--jobs-in-flight` jobs outstanding. Every append is validated,
//! deduplicated, sequenced, encoded, checksummed, written and fsynced (group commit) before its
//! job completes; commit latency is submit → durable for each append. Then every shard's log is
//! reopened, all at once on a thread each (as the daemon opens them), cold (page cache dropped
//! for their files) and warm, three times each (medians reported), to measure recovery. With
//! `--paced-fraction`, each load runs again paced (open loop) at that fraction of the rate it
//! reached, for the latency with headroom. Last, the disk alone on the same files
//! ([`crate::disk_floor`]).

use crate::host::{self, Host};
use crate::redis;
use anyhow::Context;
use crossbeam_channel::{unbounded, RecvTimeoutError};
use hdrhistogram::Histogram;
use serde_json::json;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchboard_store::router::shard_for;
use switchboard_store::rt::{self, Commit, DriverKind};
use switchboard_store::storage::FsStorage;
use switchboard_store::{ConvId, Fsync, LogConfig, SendRequest, Shard, ShardConfig, UserId};

#[derive(clap::Args)]
pub struct Args {
    /// Shard counts to measure, one run each.
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    shards: Vec<usize>,
    /// Appends per run.
    #[arg(long, default_value_t = 4_000_000)]
    appends: u64,
    #[arg(long, default_value_t = 10_000)]
    conversations: u32,
    #[arg(long, default_value_t = 100)]
    body_bytes: usize,
    /// Appends per job handed to a shard.
    #[arg(long, default_value_t = 256)]
    job_appends: usize,
    /// Jobs each producer keeps outstanding.
    #[arg(long, default_value_t = 8)]
    jobs_in_flight: usize,
    /// After each run at full load, run again at this fraction of the rate it reached, paced
    /// (open loop: a job is due at its time whether or not earlier ones completed, and its
    /// latency counts from then), for the commit latency at a load that leaves headroom. 0
    /// skips it.
    #[arg(long, default_value_t = 0.7)]
    paced_fraction: f64,
    /// Where the data goes (a temporary folder inside it; must be a real disk for honest fsyncs).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// `never` is for comparison only: it is not durable.
    #[arg(long, default_value = "always")]
    fsync: String,
    /// Keep the data folders (and print where) instead of deleting them.
    #[arg(long)]
    keep: bool,
    /// The shard driver: `uring` (production) or `blocking` (pwrite + fdatasync), to compare.
    #[arg(long, default_value = "uring")]
    driver: String,
    /// Skip the Redis peer.
    #[arg(long)]
    no_redis: bool,
    /// A tiny run that only proves the harness works.
    #[arg(long)]
    smoke: bool,
    /// Print one JSON object as the last line of stdout.
    #[arg(long)]
    json: bool,
}

struct RunResult {
    shards: usize,
    appends: u64,
    wall_s: f64,
    shard_cpu_s: f64,
    latency_us: Histogram<u64>,
    log_bytes: u64,
    recovery_cold_s: f64,
    recovery_warm_s: f64,
    /// The same files read alone with `O_DIRECT` just before each cold open (median seconds);
    /// `None` where the filesystem refuses `O_DIRECT`.
    disk_read_s: Option<f64>,
    state_bytes_per_message: f64,
    dedup_bytes_per_message: f64,
    errors: u64,
    /// The same load paced at `--paced-fraction` of `appends_per_s`.
    paced: Option<Paced>,
}

/// A paced run: the rate it was given and reached, and its commit latencies.
struct Paced {
    target_per_s: f64,
    appends_per_s: f64,
    latency_us: Histogram<u64>,
}

impl Paced {
    fn ms(&self, q: f64) -> f64 {
        self.latency_us.value_at_quantile(q) as f64 / 1000.0
    }
}

impl RunResult {
    fn appends_per_s(&self) -> f64 {
        self.appends as f64 / self.wall_s
    }
    fn per_cpu_s(&self) -> f64 {
        self.appends as f64 / self.shard_cpu_s
    }
    fn ms(&self, q: f64) -> f64 {
        self.latency_us.value_at_quantile(q) as f64 / 1000.0
    }
    fn gib_per_s(&self, s: f64) -> f64 {
        self.log_bytes as f64 / (1u64 << 30) as f64 / s
    }
}

pub fn run(mut args: Args) -> anyhow::Result<()> {
    if args.smoke {
        args.appends = args.appends.min(20_000);
        args.conversations = args.conversations.min(1_000);
    }
    anyhow::ensure!(matches!(args.driver.as_str(), "uring" | "blocking"), "--driver must be uring or blocking");
    let fsync = match args.fsync.as_str() {
        "always" => Fsync::Always,
        "never" => Fsync::Never,
        other => anyhow::bail!("--fsync must be always or never, not {other}"),
    };
    let base = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&base)?;
    let host = Host::read();
    println!("switchboard-bench store");
    println!("host: {}", host.line());
    println!("data: {} ({})", base.display(), host::filesystem_of(&base));
    println!(
        "load: {} appends of {}-byte bodies over {} conversations, jobs of {} appends, {} jobs in flight per producer, fsync={}, driver={}",
        args.appends, args.body_bytes, args.conversations, args.job_appends, args.jobs_in_flight, args.fsync, args.driver
    );
    if fsync == Fsync::Never {
        println!("WARNING: fsync=never is not durable; these numbers are not comparable to durable systems");
    }
    let mut runs = Vec::new();
    let bar = crate::chart::Progress::new("store runs", args.shards.len());
    anyhow::ensure!((0.0..1.0).contains(&args.paced_fraction), "--paced-fraction must be at least 0 and below 1");
    // Every run's data stays until the end: deleting it would disturb the next run (with 700 MB
    // being deleted, an `fdatasync` beside it took up to 27 ms instead of 1, in a probe).
    let mut data = Vec::new();
    for &shards in &args.shards {
        let (mut r, dir) = run_once(&args, shards, fsync, &base, None)?;
        data.push(dir);
        eprintln!("  {shards} shard(s): {:.0} appends/s", r.appends_per_s());
        if args.paced_fraction > 0.0 {
            let target = r.appends_per_s() * args.paced_fraction;
            let (p, dir) = run_once(&args, shards, fsync, &base, Some(target))?;
            data.push(dir);
            eprintln!("  {shards} shard(s) paced at {target:.0}/s: p99 {:.2} ms", p.ms(0.99));
            r.paced = Some(Paced { target_per_s: target, appends_per_s: p.appends_per_s(), latency_us: p.latency_us });
        }
        bar.set(runs.len() + 1);
        runs.push(r);
    }
    bar.finish();
    // The disk alone, on the first run's log: what recovery's reads and the commits cost below
    // the store.
    let disk = match data.first() {
        Some(dir) => Some(crate::disk_floor::measure(&log_files(dir.path())?, &base)?),
        None => None,
    };
    let redis = if args.no_redis {
        None
    } else {
        let dir = tempfile::tempdir_in(&base)?;
        let requests = if args.smoke { 20_000 } else { args.appends.min(2_000_000) };
        match redis::xadd_always(dir.path(), requests, args.conversations, args.body_bytes) {
            Ok(r) => Some(r),
            Err(e) => {
                println!("redis peer not measured: {e:#}");
                None
            }
        }
    };

    println!();
    println!("full load ({} jobs of {} appends in flight per producer):", args.jobs_in_flight, args.job_appends);
    println!(
        "{:>6} {:>12} {:>16} {:>9} {:>9} {:>9} {:>16} {:>14} {:>14} {:>10} {:>10}",
        "shards",
        "appends/s",
        "per server CPU-s",
        "p50 ms",
        "p99 ms",
        "p999 ms",
        "recovery GiB/s",
        "(disk alone)",
        "(warm cache)",
        "RSS B/msg",
        "dedup B/msg"
    );
    for r in &runs {
        println!(
            "{:>6} {:>12.0} {:>16.0} {:>9.2} {:>9.2} {:>9.2} {:>16.2} {:>14} {:>14.2} {:>10.1} {:>10.1}",
            r.shards,
            r.appends_per_s(),
            r.per_cpu_s(),
            r.ms(0.5),
            r.ms(0.99),
            r.ms(0.999),
            r.gib_per_s(r.recovery_cold_s),
            r.disk_read_s.map_or("-".to_string(), |s| format!("{:.2}", r.gib_per_s(s))),
            r.gib_per_s(r.recovery_warm_s),
            r.state_bytes_per_message,
            r.dedup_bytes_per_message
        );
    }
    println!("(recovery: every shard's log reopened at once, a thread each, as the daemon opens them, from a cold");
    println!(" cache and a warm one; disk alone: the same files read with O_DIRECT just before each cold open)");
    if let Some(d) = &disk {
        println!();
        d.print();
    }
    if args.paced_fraction > 0.0 {
        println!();
        println!(
            "paced at {:.0}% of the full-load rate (open loop, latency from each job's due time):",
            args.paced_fraction * 100.0
        );
        println!(
            "{:>6} {:>12} {:>12} {:>9} {:>9} {:>9}",
            "shards", "target/s", "appends/s", "p50 ms", "p99 ms", "p999 ms"
        );
        for r in &runs {
            if let Some(p) = &r.paced {
                println!(
                    "{:>6} {:>12.0} {:>12.0} {:>9.2} {:>9.2} {:>9.2}",
                    r.shards,
                    p.target_per_s,
                    p.appends_per_s,
                    p.ms(0.5),
                    p.ms(0.99),
                    p.ms(0.999)
                );
            }
        }
    }
    if let Some(r) = &redis {
        println!(
            "redis XADD, appendfsync always: {:.0} appends/s, p99 {:.2} ms ({})",
            r.appends_per_s, r.p99_ms, r.command
        );
        if let Some(one) = runs.first() {
            println!("switchboard / redis: {:.2}x", one.appends_per_s() / r.appends_per_s);
        }
    }
    let errors: u64 = runs.iter().map(|r| r.errors).sum();
    anyhow::ensure!(errors == 0, "{errors} appends failed");
    if args.json {
        let first = runs.iter().find(|r| r.shards == 1).or(runs.first()).context("no run")?;
        let run_json: Vec<_> = runs
            .iter()
            .map(|r| {
                json!({
                    "shards": r.shards,
                    "appends": r.appends,
                    "appends_per_s": r.appends_per_s(),
                    "appends_per_server_cpu_s": r.per_cpu_s(),
                    "commit_p50_ms": r.ms(0.5),
                    "commit_p99_ms": r.ms(0.99),
                    "commit_p999_ms": r.ms(0.999),
                    "recovery_gib_per_s": r.gib_per_s(r.recovery_cold_s),
                    "recovery_warm_gib_per_s": r.gib_per_s(r.recovery_warm_s),
                    "recovery_disk_read_gib_per_s": r.disk_read_s.map(|s| r.gib_per_s(s)),
                    "state_bytes_per_message": r.state_bytes_per_message,
                    "dedup_bytes_per_message": r.dedup_bytes_per_message,
                    "paced": r.paced.as_ref().map(|p| json!({
                        "target_appends_per_s": p.target_per_s,
                        "appends_per_s": p.appends_per_s,
                        "commit_p50_ms": p.ms(0.5),
                        "commit_p99_ms": p.ms(0.99),
                        "commit_p999_ms": p.ms(0.999),
                    })),
                })
            })
            .collect();
        let out = json!({
            "scenario": "store",
            "host": host.line(),
            "fsync": args.fsync,
            "appends_per_s": first.appends_per_s(),
            "appends_per_server_cpu_s": first.per_cpu_s(),
            "commit_p99_ms": first.ms(0.99),
            "commit_p99_paced_ms": first.paced.as_ref().map(|p| p.ms(0.99)),
            "recovery_gib_per_s": first.gib_per_s(first.recovery_cold_s),
            "recovery_disk_read_gib_per_s": first.disk_read_s.map(|s| first.gib_per_s(s)),
            "redis_appends_per_s": redis.as_ref().map(|r| r.appends_per_s),
            "disk": disk.as_ref().map(|d| d.json()),
            "runs": run_json,
        });
        println!("{out}");
    }
    Ok(())
}

/// A conversation and one of its two members, who sends.
type Target = (ConvId, UserId);

/// One run: `shards` shards under the full closed-loop load, or with `paced` the same appends at
/// that total rate. A paced run measures no recovery. Returns the run's data folder too, for
/// the caller to delete when nothing is being measured.
fn run_once(
    args: &Args,
    shards: usize,
    fsync: Fsync,
    base: &Path,
    paced: Option<f64>,
) -> anyhow::Result<(RunResult, tempfile::TempDir)> {
    let mut root = tempfile::tempdir_in(base)?;
    if args.keep {
        root.disable_cleanup(true);
        println!("keeping {shards}-shard data in {}", root.path().display());
    }
    let config = ShardConfig { log: LogConfig { fsync, ..LogConfig::default() }, ..ShardConfig::default() };
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut targets: Vec<Vec<Target>> = vec![Vec::new(); shards];
    for k in 0..args.conversations {
        let (a, b) = (UserId::new(&format!("u{k}"))?, UserId::new(&format!("v{k}"))?);
        let c = ConvId::dm(&a, &b);
        targets[shard_for(&c, shards)].push((c, a));
    }
    let body: Arc<[u8]> = format!("\"{}\"", "x".repeat(args.body_bytes.saturating_sub(2))).into_bytes().into();
    let mut handles = Vec::new();
    let mut threads = Vec::new();
    for i in 0..shards {
        let kind = if args.driver == "blocking" { DriverKind::Blocking } else { DriverKind::Uring };
        let (h, t, used) =
            rt::spawn(&root.path().join(format!("shard-{i}")), config.clone(), 1024, Some(i % cpus), kind)?;
        if used != kind {
            println!("note: shard {i} runs the {used:?} driver ({kind:?} unavailable)");
        }
        handles.push(h);
        threads.push(t);
    }
    let started = Instant::now();
    let cpu_before = host::process_cpu_s() - host::thread_cpu_s();
    let per_producer = args.appends / shards as u64;
    let producers: Vec<_> = (0..shards)
        .map(|p| {
            let handle = handles[p].clone();
            let targets = Arc::new(std::mem::take(&mut targets[p]));
            let body = body.clone();
            let load = Load {
                appends: per_producer,
                job_appends: args.job_appends,
                window: args.jobs_in_flight,
                rate: paced.map(|r| r / shards as f64),
            };
            std::thread::spawn(move || produce(p, handle, targets, body, load))
        })
        .collect();
    let mut latency_us = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let (mut errors, mut producer_cpu_s) = (0, 0.0);
    for p in producers {
        let (h, e, cpu) = p.join().expect("producer panicked");
        latency_us.add(h)?;
        errors += e;
        producer_cpu_s += cpu;
    }
    let wall_s = started.elapsed().as_secs_f64();
    // The server's CPU: the whole process (shard threads, and the kernel's io_uring workers,
    // which belong to it) less the producers and this thread.
    let shard_cpu_s = host::process_cpu_s() - host::thread_cpu_s() - cpu_before - producer_cpu_s;
    drop(handles);
    for t in threads {
        t.join().expect("shard thread panicked");
    }
    // Recovery: every shard's log reopened, all at once as the daemon opens them (a thread each),
    // three times with their pages dropped from the cache, then three times warm; the median of
    // each (one open on this shared host swings by a third either way). A cold open reads around
    // the cache (`O_DIRECT`) and leaves it cold, so the cache is filled before the warm ones.
    // Before each cold open, the same files are read alone with `O_DIRECT` (as a cold open
    // reads them): what the disk gives at that moment, which no recovery beats.
    let (mut cold, mut warm, mut log_bytes, mut state_bytes, mut dedup_bytes) = (vec![], vec![], 0, 0i64, 0usize);
    let mut disk_reads = vec![];
    let dirs: Vec<_> =
        (0..shards).filter(|_| paced.is_none()).map(|i| root.path().join(format!("shard-{i}"))).collect();
    if !dirs.is_empty() {
        let files = log_files(root.path())?;
        for pass in 0..2 * RECOVERY_PASSES {
            let is_cold = pass < RECOVERY_PASSES;
            for dir in &dirs {
                match pass {
                    _ if is_cold => drop_page_cache(dir)?,
                    RECOVERY_PASSES => fill_page_cache(dir)?,
                    _ => {}
                }
            }
            if is_cold {
                disk_reads.extend(crate::disk_floor::direct_read(&files)?);
            }
            let rss = host::rss_bytes() as i64;
            let t = Instant::now();
            let opened = Shard::open_at_once(&dirs, &config)?;
            let s = t.elapsed().as_secs_f64();
            if pass == 0 {
                log_bytes = opened.iter().map(|(_, recovery)| recovery.bytes).sum();
                state_bytes = host::rss_bytes() as i64 - rss;
                dedup_bytes = opened.iter().map(|(shard, _)| shard.state().dedup.memory_bytes()).sum();
            }
            if is_cold { &mut cold } else { &mut warm }.push(s);
        }
    }
    let (cold, warm) = (median(&mut cold), median(&mut warm));
    let disk_read_s = (!disk_reads.is_empty()).then(|| median(&mut disk_reads));
    let result = RunResult {
        shards,
        appends: per_producer * shards as u64,
        wall_s,
        shard_cpu_s,
        latency_us,
        log_bytes,
        recovery_cold_s: cold,
        recovery_warm_s: warm,
        disk_read_s,
        state_bytes_per_message: state_bytes.max(0) as f64 / (per_producer * shards as u64) as f64,
        dedup_bytes_per_message: dedup_bytes as f64 / (per_producer * shards as u64) as f64,
        errors,
        paced: None,
    };
    Ok((result, root))
}

/// What one producer sends.
struct Load {
    appends: u64,
    job_appends: usize,
    /// Jobs outstanding at most, at full load.
    window: usize,
    /// Appends per second, paced; `None`: as fast as the window allows.
    rate: Option<f64>,
}

/// Recovery is measured this many times cold and as many warm; the median of each is reported.
const RECOVERY_PASSES: usize = 3;

/// The middle value (0 for none).
fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// Jobs a paced producer may have outstanding before it stops to wait (their latency still
/// counts from their due time, so a shard that falls behind shows in the numbers).
const PACED_WINDOW: usize = 1024;

/// One producer: jobs of `job_appends` appends to random conversations of its shard. At full
/// load `window` jobs are outstanding; paced, job `k` is due at `k * job_appends / rate`
/// seconds and its latency counts from then. Returns the commit latency of every append, the
/// count of failures and the producer's CPU seconds.
fn produce(
    p: usize,
    handle: rt::ShardHandle<FsStorage>,
    targets: Arc<Vec<Target>>,
    body: Arc<[u8]>,
    load: Load,
) -> (Histogram<u64>, u64, f64) {
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
    let (done_tx, done_rx) = unbounded::<(Instant, u64, bool)>();
    let mut rng_state = 0x9E3779B97F4A7C15u64 ^ p as u64;
    let (mut submitted, mut in_flight, mut failed) = (0u64, 0usize, 0u64);
    let ts_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    let window = if load.rate.is_some() { PACED_WINDOW } else { load.window };
    let start = Instant::now();
    let due = |submitted: u64| load.rate.map(|r| start + Duration::from_secs_f64(submitted as f64 / r));
    while submitted < load.appends || in_flight > 0 {
        while submitted < load.appends && in_flight < window {
            let t0 = match due(submitted) {
                Some(t) if t > Instant::now() => break,
                Some(t) => t,
                None => Instant::now(),
            };
            let n = (load.appends - submitted).min(load.job_appends as u64);
            let picks: Vec<(u32, u64)> = (0..n)
                .map(|i| {
                    rng_state ^= rng_state << 13;
                    rng_state ^= rng_state >> 7;
                    rng_state ^= rng_state << 17;
                    ((rng_state % targets.len() as u64) as u32, submitted + i)
                })
                .collect();
            let (targets, body, done) = (targets.clone(), body.clone(), done_tx.clone());
            handle
                .write_blocking(Box::new(move |shard| {
                    let ids: Vec<([u8; 24], usize)> = picks
                        .iter()
                        .map(|&(_, seq)| {
                            let mut id = [0u8; 24];
                            let len = client_id(&mut id, p, seq);
                            (id, len)
                        })
                        .collect();
                    let reqs: Vec<SendRequest> = picks
                        .iter()
                        .zip(&ids)
                        .map(|(&(k, _), (id, len))| {
                            let (conv, sender) = &targets[k as usize];
                            SendRequest { conv, sender, client_id: &id[..*len], kind: "text", body: &body, ts_ms }
                        })
                        .collect();
                    let mut results = Vec::with_capacity(reqs.len());
                    shard.send_many(&reqs, &mut results);
                    let ok = results.iter().filter(|r| r.is_ok()).count() as u64;
                    let total = n;
                    Box::new(move |commit: &Commit| {
                        let _ = done.send((t0, total, *commit == Commit::Durable && ok == total));
                    })
                }))
                .expect("shard stopped");
            submitted += n;
            in_flight += 1;
        }
        // Wait for a completion, or (paced) only until the next job is due.
        let wait = match due(submitted).filter(|_| submitted < load.appends && in_flight < window) {
            Some(t) => t.saturating_duration_since(Instant::now()),
            None => Duration::from_secs(60),
        };
        let (t0, count, ok) = match done_rx.recv_timeout(wait) {
            Ok(done) => done,
            Err(RecvTimeoutError::Timeout) if wait < Duration::from_secs(60) => continue,
            Err(e) => panic!("a job never completed: {e}"),
        };
        hist.record_n(t0.elapsed().as_micros().max(1) as u64, count).unwrap();
        failed += if ok { 0 } else { count };
        in_flight -= 1;
    }
    (hist, failed, host::thread_cpu_s())
}

/// Writes `p<producer>-<n>` into `buf` without allocating; returns its length.
fn client_id(buf: &mut [u8; 24], producer: usize, n: u64) -> usize {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut v = n;
    loop {
        i -= 1;
        digits[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    buf[0] = b'p';
    buf[1] = b'0' + (producer % 10) as u8;
    buf[2] = b'-';
    let tail = &digits[i..];
    buf[3..3 + tail.len()].copy_from_slice(tail);
    3 + tail.len()
}

/// Evicts the folder's files from the page cache so the next read comes from the disk.
fn drop_page_cache(dir: &Path) -> anyhow::Result<()> {
    for e in std::fs::read_dir(dir)? {
        drop_file_cache(&e?.path())?;
    }
    Ok(())
}

/// Reads the folder's files whole, so that the page cache holds them.
fn fill_page_cache(dir: &Path) -> anyhow::Result<()> {
    for e in std::fs::read_dir(dir)? {
        read_through_cache(&e?.path())?;
    }
    Ok(())
}

/// Reads a file whole with `read`, through the page cache, as `cat` does.
pub fn read_through_cache(path: &Path) -> std::io::Result<()> {
    let (mut f, mut buf) = (std::fs::File::open(path)?, vec![0u8; 1 << 20]);
    while std::io::Read::read(&mut f, &mut buf)? > 0 {}
    Ok(())
}

/// Evicts one file from the page cache (written back first, so that all of it can go).
pub fn drop_file_cache(path: &Path) -> anyhow::Result<()> {
    let f = std::fs::File::open(path)?;
    f.sync_all()?;
    // Safety: advisory call on a descriptor we own.
    unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    Ok(())
}

/// The log files under a run's data folder (`shard-*/*.log`), in order.
fn log_files(root: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for shard in std::fs::read_dir(root)? {
        for e in std::fs::read_dir(shard?.path())? {
            let path = e?.path();
            if path.extension().is_some_and(|x| x == "log") {
                files.push(path);
            }
        }
    }
    files.sort();
    Ok(files)
}
