//! A blocking QUIC client for the tests, over the library's own client
//! (`switchboard_edge::quic::client`), which trusts the node's development certificate by the
//! hash `GET /dev/quic` serves, as a browser does.

use super::Server;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::time::Duration;
use switchboard_edge::quic::client::{parse_sha256, Client, Closed, Trust};
use switchboard_edge::ws::handshake::Encoding;

pub struct Quic {
    rt: tokio::runtime::Runtime,
    pub endpoint: quinn::Endpoint,
    pub client: Client,
}

/// The node's QUIC address and how to trust it.
pub fn quic_of(server: &Server) -> (SocketAddr, Trust) {
    let (status, v) = server.http("GET", "/dev/quic", None, None);
    assert_eq!(status, 200, "{v}");
    let addr = v["addr"].as_str().unwrap().parse().unwrap();
    let hash = parse_sha256(v["cert_sha256"].as_str().expect("a development certificate")).unwrap();
    (addr, Trust::Sha256(hash))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

impl Quic {
    /// A connection in JSON that has opened its stream (nothing sent yet).
    pub fn connect(server: &Server) -> Quic {
        Quic::connect_with(server, Encoding::Json)
    }

    pub fn connect_with(server: &Server, encoding: Encoding) -> Quic {
        Quic::try_connect_alpn(
            server,
            if encoding == Encoding::Binary { b"switchboard/1+bin" } else { b"switchboard/1" },
        )
        .unwrap()
    }

    /// Connects offering `alpn` only.
    pub fn try_connect_alpn(server: &Server, alpn: &[u8]) -> Result<Quic, String> {
        let (addr, trust) = quic_of(server);
        let rt = runtime();
        let endpoint =
            rt.block_on(async { switchboard_edge::quic::client::endpoint("127.0.0.1:0".parse().unwrap()) }).unwrap();
        let client = rt.block_on(Client::connect_alpn(&endpoint, addr, &trust, alpn, 1 << 20))?;
        Ok(Quic { rt, endpoint, client })
    }

    /// A connection that said hello as `user` and got its welcome.
    pub fn hello(server: &Server, user: &str) -> Quic {
        let mut q = Quic::connect(server);
        q.send(json!({"t":"hello","token": server.token(user)}));
        let w = q.expect("welcome");
        assert_eq!(w["user"], user);
        q
    }

    pub fn send(&mut self, v: Value) {
        self.send_bytes(v.to_string().as_bytes());
    }

    pub fn send_bytes(&mut self, frame: &[u8]) {
        self.rt.block_on(self.client.send(frame)).unwrap()
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.rt.block_on(self.client.send_raw(bytes)).unwrap()
    }

    /// The next frame as bytes, within 10 s; `Err` once the connection has closed.
    pub fn recv_bytes(&mut self) -> Result<bytes::Bytes, Closed> {
        let client = &mut self.client;
        match self.rt.block_on(async { tokio::time::timeout(Duration::from_secs(10), client.recv()).await }) {
            Ok(r) => r,
            Err(_) => panic!("nothing within 10 s"),
        }
    }

    /// The next protocol frame, skipping the server's heartbeat pings.
    pub fn recv(&mut self) -> Value {
        loop {
            let bytes = self.recv_bytes().unwrap_or_else(|c| panic!("closed: {c:?}"));
            let v: Value = serde_json::from_slice(&bytes).unwrap();
            if v["t"] != "ping" {
                return v;
            }
        }
    }

    pub fn expect(&mut self, t: &str) -> Value {
        let v = self.recv();
        assert_eq!(v["t"], t, "expected {t}, got {v}");
        v
    }

    /// Reads until the connection closes; returns the close code the server gave.
    pub fn closed(&mut self) -> Closed {
        loop {
            match self.recv_bytes() {
                Ok(_) => continue,
                Err(c) => return c,
            }
        }
    }

    /// Moves the client's socket to a new local port (connection migration).
    pub fn rebind(&mut self) -> SocketAddr {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = socket.local_addr().unwrap();
        let _guard = self.rt.enter();
        self.endpoint.rebind(socket).unwrap();
        addr
    }

    /// The server's view of this client's address... as the client sees its own.
    pub fn local_port(&self) -> u16 {
        self.endpoint.local_addr().unwrap().port()
    }

    pub fn finish(&mut self) {
        self.client.finish()
    }
}
