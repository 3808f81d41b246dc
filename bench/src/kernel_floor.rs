//! `kernel-floor`: what the kernel alone charges, over loopback on this host, for the two things
//! every server-side operation of the edge is made of, with no server code at all:
//!
//! - **A small send on its own TCP connection.** One thread sends a message of `--bytes` to
//!   each of `--connections` connections in turn, `--rounds` times, while a second thread reads
//!   them all (epoll). Every delivery is at least one such send, so the sends per sender
//!   CPU-second bound any server's deliveries per server CPU-second on the same host when each
//!   goes out on its own (no messages coalesced per connection). Two ways to send: `write`, one
//!   system call each; `uring`, submitted to an io_uring in batches (`--batch` per
//!   `io_uring_enter`), as the edge does.
//! - **A connection with one request and one response.** One thread accepts, reads a small
//!   request, writes a small response and closes, `--accepts` times, while four others connect,
//!   write, read and close. An edge connection with its upgrade and `hello` is at least this
//!   (it has one more exchange, and the WebSocket and JWT work).

use crate::host::{self, Host};
use anyhow::{bail, Context};
use io_uring::{opcode, types, IoUring};
use serde_json::json;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::io::AsRawFd;

#[derive(clap::Args)]
pub struct Args {
    /// Connections the sends go to.
    #[arg(long, default_value_t = 1000)]
    pub connections: usize,
    /// Messages sent to every connection.
    #[arg(long, default_value_t = 100)]
    pub rounds: usize,
    #[arg(long, default_value_t = 100)]
    pub bytes: usize,
    /// Sends per `io_uring_enter` in the `uring` mode.
    #[arg(long, default_value_t = 256)]
    pub batch: usize,
    /// Connections accepted, one request and response each, closed.
    #[arg(long, default_value_t = 10_000)]
    pub accepts: usize,
    #[arg(long)]
    pub smoke: bool,
    #[arg(long)]
    pub json: bool,
}

struct Measured {
    mode: &'static str,
    sends: usize,
    sender_cpu_s: f64,
    receiver_cpu_s: f64,
    wall_s: f64,
}

impl Measured {
    fn sends_per_cpu_s(&self) -> f64 {
        self.sends as f64 / self.sender_cpu_s
    }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let (connections, rounds, accepts) =
        if args.smoke { (50, 10, 100) } else { (args.connections, args.rounds, args.accepts) };
    if connections == 0 || rounds == 0 || args.bytes == 0 || args.batch == 0 || accepts == 0 {
        bail!("--connections, --rounds, --bytes, --batch and --accepts must be at least 1");
    }
    println!("{}", Host::read().line());
    println!(
        "{connections} loopback TCP connections, {rounds} messages of {} bytes to each, one send per message",
        args.bytes
    );
    let mut results = Vec::new();
    for mode in ["write", "uring"] {
        let m = measure(mode, connections, rounds, args.bytes, args.batch)?;
        println!(
            "{:>6}: {:.2} µs of sender CPU per send ({:.0} sends per sender CPU-s), {:.2} µs of receiver CPU per message, {:.2} s",
            m.mode,
            m.sender_cpu_s * 1e6 / m.sends as f64,
            m.sends_per_cpu_s(),
            m.receiver_cpu_s * 1e6 / m.sends as f64,
            m.wall_s
        );
        results.push(m);
    }
    let (server_cpu_s, process_cpu_s) = measure_accepts(accepts)?;
    println!(
        "accept, read, write, close: {:.2} µs of the accepting thread's CPU per connection ({:.0} per its CPU-s), {:.2} µs for both ends",
        server_cpu_s * 1e6 / accepts as f64,
        accepts as f64 / server_cpu_s,
        process_cpu_s * 1e6 / accepts as f64
    );
    if args.json {
        let modes: serde_json::Map<String, serde_json::Value> = results
            .iter()
            .map(|m| {
                let v = json!({
                    "sends": m.sends,
                    "sender_us_per_send": m.sender_cpu_s * 1e6 / m.sends as f64,
                    "sends_per_sender_cpu_s": m.sends_per_cpu_s(),
                    "receiver_us_per_message": m.receiver_cpu_s * 1e6 / m.sends as f64,
                });
                (m.mode.to_string(), v)
            })
            .collect();
        let accepted = json!({
            "connections": accepts,
            "server_us_per_connection": server_cpu_s * 1e6 / accepts as f64,
            "connections_per_server_cpu_s": accepts as f64 / server_cpu_s,
            "both_ends_us_per_connection": process_cpu_s * 1e6 / accepts as f64,
        });
        let all = json!({
            "scenario": "kernel-floor",
            "connections": connections,
            "bytes": args.bytes,
            "sends": modes,
            "accepts": accepted,
        });
        println!("{all}");
    }
    Ok(())
}

fn measure(
    mode: &'static str,
    connections: usize,
    rounds: usize,
    bytes: usize,
    batch: usize,
) -> anyhow::Result<Measured> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let (mut readers, mut senders) = (Vec::with_capacity(connections), Vec::with_capacity(connections));
    for _ in 0..connections {
        let r = TcpStream::connect(addr).context("connect (the open-files limit bounds --connections)")?;
        let (s, _) = listener.accept()?;
        r.set_nodelay(true)?;
        s.set_nodelay(true)?;
        readers.push(r);
        senders.push(s);
    }
    let expected = (connections * rounds * bytes) as u64;
    let receiver = std::thread::spawn(move || read_all(readers, expected));
    let message = vec![b'x'; bytes];
    // The sender's CPU is the process's less the reader's: io_uring may hand a send to a kernel
    // worker thread, which belongs to the process.
    let (cpu, started) = (host::process_cpu_s(), std::time::Instant::now());
    match mode {
        "write" => {
            for _ in 0..rounds {
                for s in senders.iter_mut() {
                    s.write_all(&message)?;
                }
            }
        }
        _ => send_uring(&senders, rounds, &message, batch)?,
    }
    let receiver_cpu_s = receiver.join().expect("the reader panicked")?;
    let sender_cpu_s = host::process_cpu_s() - cpu - receiver_cpu_s;
    Ok(Measured {
        mode,
        sends: connections * rounds,
        sender_cpu_s,
        receiver_cpu_s,
        wall_s: started.elapsed().as_secs_f64(),
    })
}

const ACCEPT_CLIENTS: usize = 4;

/// Accepts `n` connections one after another (from a few clients at once), each with one small request and response; returns
/// the accepting thread's CPU and the process's (both ends).
fn measure_accepts(n: usize) -> anyhow::Result<(f64, f64)> {
    const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    const RESPONSE: &[u8] = b"HTTP/1.1 204 No Content\r\n\r\n";
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let server = std::thread::spawn(move || -> anyhow::Result<f64> {
        let cpu = host::thread_cpu_s();
        let mut buf = [0u8; 256];
        for _ in 0..n {
            let (mut s, _) = listener.accept()?;
            let mut got = 0;
            while got < REQUEST.len() {
                match s.read(&mut buf[got..])? {
                    0 => bail!("a client closed before its request"),
                    k => got += k,
                }
            }
            s.write_all(RESPONSE)?;
        }
        Ok(host::thread_cpu_s() - cpu)
    });
    // Several clients at once, so that the acceptor finds connections waiting rather than
    // sleeping between them (a busy server's case).
    let process = host::process_cpu_s();
    let clients: Vec<_> = (0..ACCEPT_CLIENTS)
        .map(|i| {
            let count = n / ACCEPT_CLIENTS + usize::from(i < n % ACCEPT_CLIENTS);
            std::thread::spawn(move || -> std::io::Result<()> {
                let mut buf = [0u8; 256];
                for _ in 0..count {
                    let mut c = TcpStream::connect(addr)?;
                    c.write_all(REQUEST)?;
                    c.read_exact(&mut buf[..RESPONSE.len()])?;
                }
                Ok(())
            })
        })
        .collect();
    for c in clients {
        c.join().expect("a client panicked")?;
    }
    let server_cpu_s = server.join().expect("the acceptor panicked")?;
    Ok((server_cpu_s, host::process_cpu_s() - process))
}

/// One `IORING_OP_SEND` per message, `batch` submitted per enter; every completion must carry
/// the whole message (a short send is an error here: the socket buffers hold all of a round).
fn send_uring(senders: &[TcpStream], rounds: usize, message: &[u8], batch: usize) -> anyhow::Result<()> {
    let mut ring = IoUring::new(batch.next_power_of_two() as u32)?;
    let fds: Vec<_> = senders.iter().map(|s| s.as_raw_fd()).collect();
    let mut sends = fds.iter().cycle().take(fds.len() * rounds).peekable();
    while sends.peek().is_some() {
        let mut queued = 0;
        for &fd in sends.by_ref().take(batch) {
            let e = opcode::Send::new(types::Fd(fd), message.as_ptr(), message.len() as u32).build();
            // Safety: `message` outlives the submission: every one is completed below before it
            // is dropped.
            unsafe { ring.submission().push(&e) }.map_err(|_| anyhow::anyhow!("submission queue full"))?;
            queued += 1;
        }
        ring.submit_and_wait(queued)?;
        for c in ring.completion() {
            if c.result() != message.len() as i32 {
                bail!("a send completed with {} (wanted {})", c.result(), message.len());
            }
        }
    }
    Ok(())
}

/// Reads every connection until `expected` bytes arrived in all; returns the thread's CPU.
fn read_all(readers: Vec<TcpStream>, expected: u64) -> anyhow::Result<f64> {
    // Safety: plain epoll calls on descriptors this function owns until it returns.
    let epoll = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if epoll < 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    for (i, r) in readers.iter().enumerate() {
        r.set_nonblocking(true)?;
        let mut ev = libc::epoll_event { events: libc::EPOLLIN as u32, u64: i as u64 };
        // Safety: as above.
        if unsafe { libc::epoll_ctl(epoll, libc::EPOLL_CTL_ADD, r.as_raw_fd(), &mut ev) } != 0 {
            return Err(std::io::Error::last_os_error().into());
        }
    }
    let cpu = host::thread_cpu_s();
    let (mut got, mut buf) = (0u64, vec![0u8; 1 << 16]);
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 1024];
    while got < expected {
        // Safety: `events` has room for 1024 entries.
        let n = unsafe { libc::epoll_wait(epoll, events.as_mut_ptr(), 1024, 10_000) };
        if n == 0 {
            bail!("no data for 10 s ({got} of {expected} bytes arrived)");
        }
        for e in &events[..n.max(0) as usize] {
            let mut r = &readers[e.u64 as usize];
            loop {
                match r.read(&mut buf) {
                    Ok(0) => bail!("a connection closed early"),
                    Ok(k) => got += k as u64,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
    let cpu = host::thread_cpu_s() - cpu;
    // Safety: closing the descriptor made above.
    unsafe { libc::close(epoll) };
    Ok(cpu)
}
