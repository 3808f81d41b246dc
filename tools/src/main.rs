//! `switchboard-ctl`: the operator's command line.
//!
//! It mints development tokens (`token`); talks to a running node as a client (`send`,
//! `tail`, `history`, `presence`, `inbox`, `create`, `members`, in [`talk`]); looks at the
//! store offline (`log inspect`, `log verify`); writes the backplane's certificates
//! (`cluster certs`) and starts a local cluster (`cluster up`).

mod cluster_up;
mod talk;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use switchboard_edge::auth;
use switchboard_store::log::{Log, LogConfig};
use switchboard_store::record::{MemberChange, Record};
use switchboard_store::state::State;
use switchboard_store::storage::FsStorage;
use switchboard_store::{Error, Location};

#[derive(Parser)]
#[command(name = "switchboard-ctl", version, about = "Switchboard's operator command line")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print a JWT for USER, signed with the development secret in `<data-dir>/jwt.secret`
    /// (created if missing, as the daemon does).
    Token {
        user: String,
        #[arg(long, default_value = "./data")]
        data_dir: PathBuf,
        /// How long it is valid: 90s, 30m, 1h, 7d.
        #[arg(long, default_value = "1h")]
        ttl: String,
        /// An admin token (admin REST calls, sending as another user).
        #[arg(long)]
        admin: bool,
    },
    /// Send a message and print its ack (retried under the same id while the node answers
    /// `unavailable` or `rate_limited`).
    Send {
        #[command(flatten)]
        target: talk::Target,
        /// A user: the dm with them.
        #[arg(long)]
        to: Option<String>,
        #[arg(long)]
        conv: Option<String>,
        /// The message id (the deduplication key); made up if not given.
        #[arg(long)]
        id: Option<String>,
        #[arg(long)]
        kind: Option<String>,
        text: String,
    },
    /// Follow conversations live (all of the user's, or those given with --conv).
    Tail {
        #[command(flatten)]
        target: talk::Target,
        #[arg(long)]
        conv: Vec<String>,
        /// First print what came after this seq (of each --conv).
        #[arg(long)]
        after: Option<u64>,
    },
    /// A page of a conversation's history, newest first.
    History {
        #[command(flatten)]
        target: talk::Target,
        conv: String,
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// From a previous page's cursor (older messages).
        #[arg(long)]
        cursor: Option<String>,
        /// Oldest first, after this seq.
        #[arg(long)]
        after: Option<u64>,
    },
    /// Who is online, and when the others were last seen.
    Presence {
        #[command(flatten)]
        target: talk::Target,
        users: Vec<String>,
    },
    /// The user's conversations, with heads and unread counts.
    Inbox {
        #[command(flatten)]
        target: talk::Target,
    },
    /// Make a group or a channel (the caller owns it); prints its id.
    Create {
        #[command(flatten)]
        target: talk::Target,
        #[arg(long, value_parser = ["group", "channel"])]
        kind: String,
        #[arg(long)]
        title: Option<String>,
        /// Comma-separated users.
        #[arg(long)]
        members: Option<String>,
    },
    /// Add or remove members (the owner, or an admin token).
    Members {
        #[command(flatten)]
        target: talk::Target,
        conv: String,
        #[arg(long)]
        add: Option<String>,
        #[arg(long)]
        remove: Option<String>,
    },
    /// Look at a store shard's data folder offline (it is never modified).
    Log {
        #[command(subcommand)]
        command: LogCommand,
    },
    /// Several nodes as one cluster.
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },
}

#[derive(Subcommand)]
enum ClusterCommand {
    /// Write a cluster CA and a certificate per node for the backplane's mutual TLS:
    /// `DIR/ca.pem`, `DIR/ca.key`, `DIR/node-<i>.pem`, `DIR/node-<i>.key` (keys mode 0600).
    /// A folder that already holds them all is left as it is.
    Certs {
        /// How many nodes (ids 1..=N).
        #[arg(long)]
        nodes: u16,
        dir: PathBuf,
    },
    /// Start nodes 1..=N on loopback as one cluster: node i on ports P+10(i-1) (WebSocket,
    /// REST, metrics), +1 (QUIC), +2 (backplane), data in `DIR/node-<i>`, one JWT secret
    /// DIR/jwt.secret for all. Writes DIR/cluster.json once every node answers /readyz; stops
    /// them all on SIGINT or SIGTERM.
    Up {
        #[arg(long, default_value_t = 3)]
        nodes: u16,
        /// The last K nodes get role `edge`.
        #[arg(long, default_value_t = 0)]
        edge_only: u16,
        #[arg(long, default_value = "./cluster")]
        dir: PathBuf,
        #[arg(long, default_value_t = 7500)]
        base_port: u16,
        /// The daemon binary (default: `switchboard` beside this one).
        #[arg(long)]
        server: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum LogCommand {
    /// Print every record, one line each.
    Inspect {
        /// A store shard's data folder (the one holding `meta` and the `.log` segments).
        dir: PathBuf,
        /// Only records of this conversation.
        #[arg(long)]
        conv: Option<String>,
        /// Stop after this many records.
        #[arg(long)]
        limit: Option<u64>,
        /// Bytes of each body to show.
        #[arg(long, default_value_t = 60)]
        body_bytes: usize,
    },
    /// Check every checksum and invariant; exit 1 if anything is damaged.
    Verify {
        /// A store shard's data folder.
        dir: PathBuf,
    },
}

/// Failures are one line that says what to do, and exit code 1 (never a backtrace).
fn main() {
    if let Err(e) = run(Cli::parse().command) {
        eprintln!("switchboard-ctl: {e:#}");
        std::process::exit(1);
    }
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Send { target, to, conv, id, kind, text } => talk::send(&target, to, conv, id, kind, text),
        Command::Tail { target, conv, after } => talk::tail(&target, conv, after),
        Command::History { target, conv, limit, cursor, after } => talk::history(&target, &conv, limit, cursor, after),
        Command::Presence { target, users } => talk::presence(&target, &users),
        Command::Inbox { target } => talk::inbox(&target),
        Command::Create { target, kind, title, members } => talk::create(&target, &kind, title, &members),
        Command::Members { target, conv, add, remove } => talk::members(&target, &conv, &add, &remove),
        Command::Token { user, data_dir, ttl, admin } => token(&user, &data_dir, &ttl, admin),
        Command::Log { command: LogCommand::Inspect { dir, conv, limit, body_bytes } } => {
            inspect(dir, conv, limit, body_bytes)
        }
        Command::Log { command: LogCommand::Verify { dir } } => verify(dir),
        Command::Cluster { command: ClusterCommand::Up { nodes, edge_only, dir, base_port, server } } => {
            cluster_up::run(cluster_up::Up { nodes, edge_only, dir, base_port, server })
        }
        Command::Cluster { command: ClusterCommand::Certs { nodes, dir } } => {
            if nodes == 0 {
                bail!("--nodes must be at least 1");
            }
            switchboard_backplane::tls::write_cluster_certs(nodes, &dir)?;
            println!("cluster certificates for nodes 1..={nodes} in {}", dir.display());
            Ok(())
        }
    }
}

fn token(user: &str, data_dir: &std::path::Path, ttl: &str, admin: bool) -> anyhow::Result<()> {
    let user = switchboard_store::UserId::new(user).map_err(|e| anyhow::anyhow!("{e}"))?;
    let ttl_s = auth::parse_ttl(ttl).with_context(|| format!("--ttl {ttl:?}: use a number and s, m, h or d"))?;
    let (secret, created) = auth::dev_secret(data_dir).with_context(|| format!("reading {}", data_dir.display()))?;
    if created {
        eprintln!("created a development secret in {}", data_dir.join(auth::DEV_SECRET_FILE).display());
    }
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
    println!("{}", auth::mint_hs256(&secret, &user, now, ttl_s, admin));
    Ok(())
}

fn read_only_config() -> LogConfig {
    LogConfig { read_only: true, ..LogConfig::default() }
}

fn inspect(dir: PathBuf, conv: Option<String>, limit: Option<u64>, body_bytes: usize) -> anyhow::Result<()> {
    let storage = FsStorage::open_read_only(&dir).with_context(|| format!("opening {}", dir.display()))?;
    let mut shown = 0u64;
    let limit = limit.unwrap_or(u64::MAX);
    let result = Log::open(storage, read_only_config(), &mut |loc: Location, rec: &Record<'_>| {
        if shown >= limit || conv.as_deref().is_some_and(|c| c != rec.conv()) {
            return Ok(());
        }
        shown += 1;
        let at = format!("{:>10} @{:<10}", loc.offset.0, loc.position.0);
        match rec {
            Record::Message(m) => {
                let body = &m.body[..m.body.len().min(body_bytes)];
                let effect = match m.effect {
                    Some((MemberChange::Added, u)) => format!(" +member {u}"),
                    Some((MemberChange::Removed, u)) => format!(" -member {u}"),
                    None => String::new(),
                };
                println!(
                    "{at} msg     {} seq={} ts={} from={} id={:?} kind={}{effect} body={}{}",
                    m.conv,
                    m.seq.0,
                    m.ts_ms,
                    m.sender,
                    String::from_utf8_lossy(m.client_id),
                    m.kind,
                    String::from_utf8_lossy(body),
                    if m.body.len() > body_bytes { "…" } else { "" }
                );
            }
            Record::Conv(c) => println!(
                "{at} conv    {} kind={} owner={} floor={} head={} title={:?}",
                c.conv,
                c.kind.as_str(),
                c.owner,
                c.floor.0,
                c.head.0,
                c.title
            ),
            Record::Members(m) => println!("{at} members {} +{}", m.conv, m.users.join(",")),
            Record::Cursor(c) => {
                println!("{at} cursor  {} user={} {:?}={}", c.conv, c.user, c.kind, c.seq.0)
            }
        }
        Ok(())
    });
    match result {
        Ok((_, recovery)) => {
            eprintln!(
                "{} records in {} segments, {} bytes{}",
                recovery.records,
                recovery.segments,
                recovery.bytes,
                torn_note(recovery.torn_bytes_cut)
            );
            Ok(())
        }
        Err(e) => bail!("{e}"),
    }
}

fn torn_note(torn: u64) -> String {
    match torn {
        0 => String::new(),
        n => format!("; a torn tail of {n} bytes (an interrupted commit, never acknowledged) would be cut on open"),
    }
}

fn verify(dir: PathBuf) -> anyhow::Result<()> {
    let storage = FsStorage::open_read_only(&dir).with_context(|| format!("opening {}", dir.display()))?;
    let mut state = State::default();
    let mut messages = 0u64;
    let result = Log::open(storage, read_only_config(), &mut |loc: Location, rec: &Record<'_>| {
        messages += matches!(rec, Record::Message(_)) as u64;
        state.replay(loc, rec, Default::default())
    })
    .and_then(|(mut log, recovery)| {
        state.finish_replay();
        state.check_complete()?;
        // Walk every conversation's chain from its head once more, through the random-read path
        // (record CRCs, prev pointers), as history reads will.
        let mut chained = 0u64;
        for c in state.conversations() {
            let mut at = c.head_location;
            let mut seq = c.head;
            while let Some(loc) = at {
                if seq < c.floor {
                    break;
                }
                match log.read(loc)? {
                    Record::Message(m) if m.conv == &*c.id && m.seq == seq => at = m.prev,
                    _ => {
                        return Err(Error::Corrupt {
                            file: "log".into(),
                            position: loc.position.0,
                            reason: format!("{} seq {} is not where its successor points", c.id, seq.0),
                        })
                    }
                }
                chained += 1;
                seq.0 -= 1;
            }
        }
        Ok((recovery, chained))
    });
    match result {
        Ok((recovery, chained)) => {
            println!(
                "ok: {} records ({messages} messages, {chained} reached through their chains) in {} segments, {} bytes, {} conversations{}",
                recovery.records,
                recovery.segments,
                recovery.bytes,
                state.conversations().count(),
                torn_note(recovery.torn_bytes_cut)
            );
            Ok(())
        }
        Err(e) => {
            println!("damaged: {e}");
            std::process::exit(1);
        }
    }
}
