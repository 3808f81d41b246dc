//! `switchboard`: the daemon. `switchboard [--config FILE] [--listen ADDR] [--quic-listen ADDR] [--data-dir DIR]
//! [--shards N] [--echo-endpoint] [--print-config] [--set KEY=VALUE]…`

use clap::Parser;
use std::path::PathBuf;
use switchboard_edge::config::Config;

#[cfg(not(feature = "system-alloc"))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "switchboard", version, about = "Switchboard: a real-time chat server")]
struct Cli {
    /// A TOML file of settings (docs/configuration.md).
    #[arg(long)]
    config: Option<PathBuf>,
    /// WebSocket, REST and metrics address.
    #[arg(long)]
    listen: Option<String>,
    /// QUIC and WebTransport address (UDP); "" turns QUIC off.
    #[arg(long)]
    quic_listen: Option<String>,
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Shards (threads, one per core); 0: one per available core.
    #[arg(long)]
    shards: Option<usize>,
    /// Serve a raw WebSocket echo at /v1/echo (conformance suites).
    #[arg(long)]
    echo_endpoint: bool,
    /// Any other key: --set heartbeat_ms=10000.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Print the effective configuration and exit.
    #[arg(long)]
    print_config: bool,
    /// Seed a dm, a group and a channel with a few messages (alice, bob, carol, dave), so a
    /// first look is not an empty room. Needs the development secret.
    #[arg(long)]
    demo: bool,
}

/// Logs on stderr, as people or collectors read them (`log_format`).
fn init_logs(format: &str) {
    use std::io::IsTerminal;
    let logs = tracing_subscriber::fmt().with_env_filter(env_filter()).with_writer(std::io::stderr);
    if format == "json" {
        logs.json().init();
    } else {
        logs.with_ansi(std::io::stderr().is_terminal()).init();
    }
}

fn main() {
    let cli = Cli::parse();
    let mut flags: Vec<(String, String)> = Vec::new();
    if let Some(l) = cli.listen {
        flags.push(("listen".into(), format!("{l:?}")));
    }
    if let Some(q) = cli.quic_listen {
        flags.push(("quic_listen".into(), format!("{q:?}")));
    }
    if let Some(d) = cli.data_dir {
        flags.push(("data_dir".into(), format!("{:?}", d.display().to_string())));
    }
    if let Some(s) = cli.shards {
        flags.push(("shards".into(), s.to_string()));
    }
    if cli.echo_endpoint {
        flags.push(("echo_endpoint".into(), "true".into()));
    }
    for kv in &cli.set {
        match kv.split_once('=') {
            Some((k, v)) => flags.push((k.trim().to_string(), v.to_string())),
            None => fail(&format!("--set {kv}: expected KEY=VALUE")),
        }
    }
    let flags: Vec<(&str, String)> = flags.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    let config = Config::load(cli.config.as_deref(), std::env::vars(), &flags).unwrap_or_else(|e| fail(&e.to_string()));
    if cli.print_config {
        print!("{}", config.to_toml());
        return;
    }
    init_logs(&config.log_format);
    let heartbeat_ms = config.heartbeat_ms;
    let daemon = switchboard_edge::daemon::start(config).unwrap_or_else(|e| fail(&e));
    let addr = daemon.addr;
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    // Nobody may be reading stdout (a closed pipe is no reason to stop serving).
    let _ = writeln!(
        out,
        "switchboard listening on ws://{addr}/v1/ws (REST http://{addr}/v1, metrics http://{addr}/metrics)"
    );
    if let Some(q) = &daemon.quic {
        let trust = match &q.dev {
            Some(dev) => format!(
                "; development certificate {} (SHA-256 {}, at http://{addr}/dev/quic)",
                dev.cert_file.display(),
                switchboard_edge::quic::hex(&dev.sha256)
            ),
            None => String::new(),
        };
        let _ = writeln!(
            out,
            "QUIC on udp://{} (ALPN switchboard/1, switchboard/1+bin), WebTransport https://{}/v1/wt{trust}",
            q.addr, q.addr
        );
    }
    let _ = writeln!(out, "data in {}", daemon.data_dir.display());
    if daemon.dev_secret().is_some() && !daemon.tls {
        let _ = writeln!(out, "chat in the browser: open http://{addr}/ and sign in with any name");
    }
    if let Some(line) = &daemon.cluster_line {
        let _ = writeln!(out, "{line}");
    }
    if daemon.dev_secret().is_some() {
        let _ = writeln!(
            out,
            "development auth: tokens are signed with {}{}; get one with: cargo run -p switchboard-tools --bin switchboard-ctl -- token alice --data-dir {}",
            daemon.data_dir.join("jwt.secret").display(),
            if daemon.dev_secret_created { " (just created)" } else { "" },
            daemon.data_dir.display()
        );
    }
    if cli.demo {
        let Some(secret) = daemon.dev_secret().filter(|_| !daemon.tls) else {
            fail("--demo signs its people in with the development secret over plain HTTP: run it without jwt_secret_file, a public key or TLS");
        };
        let mut at = addr;
        if at.ip().is_unspecified() {
            at.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        match switchboard_edge::demo::seed(at, secret, &daemon.data_dir) {
            Ok(_) => {
                let _ = writeln!(
                    out,
                    "demo: a dm, the group Team and the channel Announcements are seeded; sign in as {}",
                    switchboard_edge::demo::USERS.join(", ")
                );
            }
            Err(e) => fail(&format!("--demo: {e}")),
        }
    }
    let _ = out.flush();
    drop(out);

    let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT])
        .unwrap_or_else(|e| fail(&format!("signals: {e}")));
    if let Some(sig) = signals.forever().next() {
        tracing::info!("signal {sig}: draining");
        daemon.drain(heartbeat_ms.min(5_000));
        daemon.wait();
        tracing::info!("drained; bye");
    }
}

fn env_filter() -> tracing_subscriber::EnvFilter {
    tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
}

fn fail(why: &str) -> ! {
    eprintln!("switchboard: {why}");
    std::process::exit(2)
}
