//! The io_uring connection path under the edge cases of real sockets: a client with a tiny
//! receive window (the server's sends stall and resume), a peer that resets in the middle of
//! a frame, and one that resets while frames are queued for it. Nothing may panic, and the
//! server must let go of every socket (`switchboard_sockets`). Short sends themselves are
//! rare on a stream socket (io_uring retries a partial send itself), so their resumption is
//! tested on the gather in `shard::uring`.

mod support;

use serde_json::json;
use std::io::{Read, Write};
use std::time::{Duration, Instant};
use support::{frame, raw_upgraded, Server};

/// Sockets the server holds, less the scrape's own.
fn sockets(s: &Server) -> i64 {
    let (_, v) = s.http("GET", "/metrics", None, None);
    let text = v.as_str().expect("metrics text").to_string();
    let n: i64 = text
        .lines()
        .filter(|l| l.starts_with("switchboard_sockets{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<i64>().ok())
        .sum();
    n - 1
}

/// Waits (up to 10 s) for the server to hold `n` sockets; returns what it holds.
fn settle(s: &Server, n: i64) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let held = sockets(s);
        if held == n || Instant::now() > deadline {
            return held;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Closes with a reset (linger 0) instead of a FIN.
fn reset(stream: std::net::TcpStream) {
    socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO)).unwrap();
    drop(stream);
}

fn hello(s: &Server, user: &str) -> std::net::TcpStream {
    let mut raw = raw_upgraded(s, &format!("/v1/ws?token={}", s.token(user)));
    raw.write_all(&frame(true, 1, br#"{"t":"hello"}"#, true)).unwrap();
    let mut head = [0u8; 2];
    raw.read_exact(&mut head).unwrap();
    let mut welcome = vec![0u8; (head[1] & 0x7f) as usize];
    raw.read_exact(&mut welcome).unwrap();
    assert!(String::from_utf8_lossy(&welcome).contains("welcome"));
    raw
}

#[test]
fn resets_mid_frame_and_clean_closes_free_every_socket() {
    let s = Server::start(&[]);
    let base = sockets(&s);
    for i in 0..50 {
        let mut raw = hello(&s, &format!("r{i}"));
        let f = frame(true, 1, br#"{"t":"send","to":"someone","id":"half","body":"xxxxxxxxxxxxxxxx"}"#, true);
        raw.write_all(&f[..f.len() / 2]).unwrap();
        reset(raw);
    }
    assert_eq!(settle(&s, base), base, "sockets left behind by resets mid-frame");
    // And clean closes: the client's close frame, the server's, then the end of the stream.
    for i in 0..50 {
        let mut raw = hello(&s, &format!("c{i}"));
        raw.write_all(&frame(true, 8, &1000u16.to_be_bytes(), true)).unwrap();
        assert_eq!(support::raw_close_code(&mut raw), 1000);
    }
    assert_eq!(settle(&s, base), base, "sockets left behind by clean closes");
    let mut c = s.client("after");
    c.send(json!({"t":"ping","req":"p"}));
    c.expect("pong");
}

#[test]
fn a_reset_with_frames_queued_frees_the_socket() {
    let s = Server::start(&["--set", "shards=1"]);
    let base = sockets(&s);
    let sink = hello(&s, "sink");
    // Stop reading with a tiny receive buffer: the server's sends to it stall with frames
    // queued behind them.
    socket2::SockRef::from(&sink).set_recv_buffer_size(4096).unwrap();
    let mut sender = s.client("source");
    let body = "y".repeat(4000);
    for i in 0..100 {
        sender.send(json!({"t":"send","to":"sink","id":format!("q{i}"),"body":body}));
        sender.expect("ack");
    }
    assert_eq!(sockets(&s), base + 2);
    reset(sink);
    assert_eq!(settle(&s, base + 1), base + 1, "the reset socket was not let go");
    sender.send(json!({"t":"ping","req":"p"}));
    sender.expect("pong");
}

#[test]
fn a_reader_with_a_tiny_window_gets_every_frame_whole_and_in_order() {
    let s = Server::start(&["--set", "shards=1"]);
    let mut slow = hello(&s, "slow");
    // Small enough that one batch of frames never fits (the kernel doubles it).
    socket2::SockRef::from(&slow).set_recv_buffer_size(16 * 1024).unwrap();
    let mut sender = s.client("fast");
    // 150 messages of 6 KB: far more than the socket takes at once, less than the outbox.
    let n = 150;
    for i in 0..n {
        let body = format!("{i:05}{}", "z".repeat(6000));
        sender.send(json!({"t":"send","to":"slow","id":format!("s{i}"),"body":body}));
        sender.expect("ack");
    }
    // Every message arrives whole and in order.
    slow.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    for seq in 1..=n {
        let mut h = [0u8; 2];
        slow.read_exact(&mut h).unwrap();
        let len = match h[1] & 0x7f {
            126 => {
                let mut l = [0u8; 2];
                slow.read_exact(&mut l).unwrap();
                u16::from_be_bytes(l) as usize
            }
            n => n as usize,
        };
        let mut payload = vec![0u8; len];
        slow.read_exact(&mut payload).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&payload).unwrap();
        assert_eq!((v["t"].as_str(), v["seq"].as_u64()), (Some("msg"), Some(seq as u64)));
        let body = v["body"].as_str().unwrap();
        assert_eq!((&body[..5], body.len()), (format!("{:05}", seq - 1).as_str(), 6005));
    }
}
