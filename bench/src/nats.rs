//! The peer: Debian's `nats-server` with its WebSocket listener, started by the harness on
//! loopback for the same scenarios. NATS core is not durable (nothing is written to disk, no
//! acknowledgement means "stored"); Switchboard is. The numbers sit side by side with that said.

use crate::daemon::proc_usage;
use anyhow::{bail, Context};
use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Nats {
    child: Child,
    /// The WebSocket listener (`ws://ADDR/`).
    pub ws_addr: String,
    _dir: tempfile::TempDir,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Nats {
    pub fn start() -> anyhow::Result<Nats> {
        let bin = ["/usr/sbin/nats-server", "/usr/bin/nats-server"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .context("nats-server is not installed (apt-get install nats-server)")?;
        let dir = tempfile::tempdir()?;
        let (port, ws) = (free_port()?, free_port()?);
        let conf = dir.path().join("nats.conf");
        let mut f = std::fs::File::create(&conf)?;
        // The client limit and payload as generous as Switchboard's; no TLS on loopback.
        writeln!(f, "host: 127.0.0.1\nport: {port}\nmax_connections: 1000000\nwebsocket {{\n  host: 127.0.0.1\n  port: {ws}\n  no_tls: true\n}}")?;
        let child = Command::new(bin).arg("-c").arg(&conf).stdout(Stdio::null()).stderr(Stdio::null()).spawn()?;
        let ws_addr = format!("127.0.0.1:{ws}");
        let addr: SocketAddr = ws_addr.parse()?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(addr).is_err() {
            if Instant::now() > deadline {
                bail!("nats-server did not open {ws_addr}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Nats { child, ws_addr, _dir: dir })
    }

    pub fn usage(&self) -> (f64, u64) {
        proc_usage(self.child.id())
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a NATS client says first, and the `PING` whose `PONG` proves the connection is up.
pub const CONNECT: &[u8] = b"CONNECT {\"verbose\":false,\"pedantic\":false,\"protocol\":1}\r\nPING\r\n";
