//! The load client's WebSocket, on monoio (io_uring where the kernel has it): thread-per-core
//! like the server, so that thousands of paced senders cost a few threads, not one each.
//!
//! Just what a load generator needs: the opening handshake, masked text frames out, and
//! server frames in (unmasked). `Reader::next` skips pings, which is fine for runs shorter
//! than the server's heartbeat timeout; longer ones answer them (`next_frame`, `send_pong`).

use bytes::{Buf, Bytes, BytesMut};
use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt, OwnedReadHalf, OwnedWriteHalf, Splitable};
use monoio::net::TcpStream;
use std::io;
use std::net::SocketAddr;

async fn read_more<R: AsyncReadRent>(r: &mut R, buf: &mut BytesMut) -> io::Result<usize> {
    buf.reserve(16 * 1024);
    let (len, cap) = (buf.len(), buf.capacity());
    let (res, slice) = r.read(std::mem::take(buf).slice_mut(len..cap)).await;
    *buf = slice.into_inner();
    res
}

/// Upgrades a connected stream to a WebSocket on `path`.
pub async fn upgrade(stream: TcpStream, addr: SocketAddr, path: &str) -> io::Result<(Reader, Writer)> {
    upgrade_with(stream, addr, path, Encoding::Json).await
}

/// PROTOCOL.md's two encodings, chosen at the upgrade.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    Json,
    Binary,
}

/// [`upgrade`], asking for `encoding`.
pub async fn upgrade_with(
    mut stream: TcpStream,
    addr: SocketAddr,
    path: &str,
    encoding: Encoding,
) -> io::Result<(Reader, Writer)> {
    stream.set_nodelay(true)?;
    let protocol = match encoding {
        Encoding::Json => "",
        Encoding::Binary => "Sec-WebSocket-Protocol: switchboard.v1.bin\r\n",
    };
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{protocol}\r\n"
    );
    stream.write_all(request.into_bytes()).await.0?;
    let mut buf = BytesMut::new();
    let end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        if read_more(&mut stream, &mut buf).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    };
    if !buf.starts_with(b"HTTP/1.1 101") {
        let head = String::from_utf8_lossy(&buf[..end]).to_string();
        return Err(io::Error::other(format!("upgrade refused: {head}")));
    }
    buf.advance(end);
    let (r, w) = stream.into_split();
    Ok((Reader { r, buf }, Writer { w }))
}

pub struct Reader {
    r: OwnedReadHalf<TcpStream>,
    buf: BytesMut,
}

impl Reader {
    /// The next data frame's payload (control frames are skipped). `None`: the connection
    /// ended without a close frame; a close frame is an error naming its code.
    pub async fn next(&mut self) -> io::Result<Option<Bytes>> {
        loop {
            match self.next_frame().await? {
                Some((0x1 | 0x2, payload)) => return Ok(Some(payload)),
                Some(_) => continue,
                None => return Ok(None),
            }
        }
    }

    /// The next frame of any kind but close, with its opcode: a client that stays connected
    /// for longer than the server's heartbeat answers each ping (`0x9`) with a pong.
    pub async fn next_frame(&mut self) -> io::Result<Option<(u8, Bytes)>> {
        loop {
            match self.parse()? {
                Some((0x8, payload)) => return Err(closed(&payload)),
                Some(frame) => return Ok(Some(frame)),
                None => {}
            }
            if read_more(&mut self.r, &mut self.buf).await? == 0 {
                return Ok(None);
            }
        }
    }

    /// Reads to the end, handing each data frame's payload to `each`: the close code the
    /// server sent, or `None` if the connection ended without a close frame.
    pub async fn read_to_close(&mut self, mut each: impl FnMut(&[u8])) -> io::Result<Option<u16>> {
        loop {
            match self.parse()? {
                Some((0x8, payload)) => {
                    return Ok(Some(payload.get(..2).map(|c| u16::from_be_bytes([c[0], c[1]])).unwrap_or(1005)))
                }
                Some((0x1 | 0x2, payload)) => each(&payload),
                Some(_) => {}
                None => {
                    if read_more(&mut self.r, &mut self.buf).await? == 0 {
                        return Ok(None);
                    }
                }
            }
        }
    }

    fn parse(&mut self) -> io::Result<Option<(u8, Bytes)>> {
        let b = &self.buf[..];
        if b.len() < 2 {
            return Ok(None);
        }
        let opcode = b[0] & 0x0f;
        let (len, header) = match b[1] & 0x7f {
            126 if b.len() >= 4 => (u16::from_be_bytes([b[2], b[3]]) as usize, 4),
            127 if b.len() >= 10 => (u64::from_be_bytes(b[2..10].try_into().expect("8 bytes")) as usize, 10),
            126 | 127 => return Ok(None),
            n => (n as usize, 2),
        };
        if b[1] & 0x80 != 0 {
            return Err(io::Error::other("a server frame must not be masked"));
        }
        if b.len() < header + len {
            return Ok(None);
        }
        self.buf.advance(header);
        Ok(Some((opcode, self.buf.split_to(len).freeze())))
    }
}

pub struct Writer {
    w: OwnedWriteHalf<TcpStream>,
}

/// The error for a close frame from the server.
fn closed(payload: &[u8]) -> io::Error {
    let code = payload.get(..2).map(|c| u16::from_be_bytes([c[0], c[1]])).unwrap_or(1005);
    let reason = String::from_utf8_lossy(payload.get(2..).unwrap_or(&[])).to_string();
    io::Error::other(format!("closed by the server: {code} {reason}"))
}

/// A masked text frame (the mask is fixed: masking is for proxies, not secrecy).
pub fn text_frame(payload: &[u8], out: &mut Vec<u8>) {
    frame(0x1, payload, out)
}

fn frame(opcode: u8, payload: &[u8], out: &mut Vec<u8>) {
    const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];
    out.push(0x80 | opcode);
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n < 65536 => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&KEY);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ KEY[i % 4]));
}

impl Writer {
    /// A binary frame (NATS speaks binary frames).
    pub async fn send_binary(&mut self, payload: &[u8]) -> io::Result<()> {
        let mut f = Vec::with_capacity(payload.len() + 14);
        frame(0x2, payload, &mut f);
        self.w.write_all(f).await.0.map(drop)
    }

    /// The answer to a ping, with its payload.
    pub async fn send_pong(&mut self, payload: &[u8]) -> io::Result<()> {
        let mut f = Vec::with_capacity(payload.len() + 6);
        frame(0xA, payload, &mut f);
        self.w.write_all(f).await.0.map(drop)
    }

    /// A close frame with code 1000.
    pub async fn send_close(&mut self) -> io::Result<()> {
        let mut f = Vec::with_capacity(8);
        frame(0x8, &1000u16.to_be_bytes(), &mut f);
        self.w.write_all(f).await.0.map(drop)
    }

    pub async fn send_text(&mut self, payload: &[u8]) -> io::Result<()> {
        let mut frame = Vec::with_capacity(payload.len() + 14);
        text_frame(payload, &mut frame);
        self.w.write_all(frame).await.0.map(drop)
    }
}

/// Connects, says `hello`, and waits for `welcome`.
pub async fn session(addr: SocketAddr, token: &str) -> io::Result<(Reader, Writer)> {
    session_on(TcpStream::connect(addr).await?, addr, token).await
}

/// [`session`] in `encoding`: in binary, `hello` and every frame after it are binary frames
/// (`switchboard_edge::proto::binary`), and a server frame starts with its type byte.
pub async fn session_in(addr: SocketAddr, token: &str, encoding: Encoding) -> io::Result<(Reader, Writer)> {
    if encoding == Encoding::Json {
        return session(addr, token).await;
    }
    let stream = TcpStream::connect(addr).await?;
    let (mut r, mut w) = upgrade_with(stream, addr, &format!("/v1/ws?token={token}"), encoding).await?;
    let hello = switchboard_edge::proto::ClientFrame::Hello { token: None, device: None };
    w.send_binary(&switchboard_edge::proto::binary::encode_client(&hello, None)).await?;
    match r.next().await? {
        Some(p) if p.first() == Some(&switchboard_edge::proto::binary::server_type::WELCOME) => Ok((r, w)),
        other => Err(io::Error::other(format!("expected a binary welcome, got {other:?}"))),
    }
}

/// [`session`] on a connected stream.
pub async fn session_on(stream: TcpStream, addr: SocketAddr, token: &str) -> io::Result<(Reader, Writer)> {
    let (mut r, mut w) = upgrade(stream, addr, &format!("/v1/ws?token={token}")).await?;
    w.send_text(br#"{"t":"hello"}"#).await?;
    match r.next().await? {
        Some(p) if contains(&p, b"\"welcome\"") => Ok((r, w)),
        other => Err(io::Error::other(format!("expected welcome, got {other:?}"))),
    }
}

/// Whether `text` holds `needle` (a frame's type, say `"\"msg\""`).
pub fn contains(text: &[u8], needle: &[u8]) -> bool {
    text.windows(needle.len()).any(|w| w == needle)
}

/// The number after `"key":` in a JSON text (what the load generator reads of each frame,
/// without parsing it all).
pub fn number_after(text: &[u8], key: &[u8]) -> Option<u64> {
    let at = text.windows(key.len()).position(|w| w == key)? + key.len();
    let digits = text[at..].iter().take_while(|c| c.is_ascii_digit()).count();
    std::str::from_utf8(&text[at..at + digits]).ok()?.parse().ok()
}
