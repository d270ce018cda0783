//! A lean HTTP/1.1 client for long-lived SSE streams: one `GET`, the response head, then the
//! body split into SSE frames at blank lines, with chunked transfer decoding. It binds a chosen
//! source address (so many processes can spread over 127.0.0.x and their ephemeral ports), keeps
//! no buffer per stream beyond a partial frame, and hands each frame to the caller as bytes: the
//! caller decides how much of it to parse.

use std::cell::RefCell;
use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr};
use std::ops::ControlFlow;

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Largest response head accepted.
const MAX_HEAD: usize = 16 * 1024;
/// Largest partial frame kept between reads; a stream that exceeds it is malformed for us.
const MAX_FRAME: usize = 1024 * 1024;
/// One read buffer per thread, shared by every stream of that thread: a read copies what it got
/// into the stream's partial frame before the next await.
const READ_BUFFER: usize = 64 * 1024;

thread_local! {
    static READ_BUF: RefCell<Vec<u8>> = RefCell::new(vec![0; READ_BUFFER]);
}

/// What to open: the server's address, the local address to bind, and the request.
#[derive(Debug, Clone)]
pub struct StreamRequest {
    pub dest: SocketAddr,
    pub source: Option<IpAddr>,
    /// Path and query, e.g. `/v1/events`.
    pub path: String,
    /// Extra header lines, each `Name: value`.
    pub headers: Vec<String>,
}

/// How a stream ended.
#[derive(Debug)]
pub enum End {
    /// The server closed the connection (or ended the chunked body).
    Closed,
    /// The frame callback asked to stop; frames already read stay buffered for the next call.
    Stopped,
}

/// An open SSE response.
pub struct SseStream {
    tcp: TcpStream,
    body: Body,
    /// Decoded body bytes not yet split into frames.
    pending: Vec<u8>,
    /// Raw bytes read with the head that belong to the body, decoded on the first read.
    leftover: Vec<u8>,
    ended: bool,
}

/// Lets the kernel choose the local port at `connect` (by the whole address pair) instead of at
/// `bind`, where each call searches every port bound on the source address: with thousands of
/// sockets on one address that search was most of the client's CPU. Best effort: without it
/// the bind still works, only slower.
fn bind_address_no_port(socket: &TcpSocket) {
    use std::os::fd::AsRawFd;
    let on: libc::c_int = 1;
    // SAFETY: a valid socket descriptor, and an option value of the size given.
    let _ = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            std::ptr::from_ref(&on).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
}

impl SseStream {
    /// Connects, sends the request and reads the response head; fails on any status but 200.
    pub async fn open(req: &StreamRequest) -> Result<Self> {
        let socket = match req.dest {
            SocketAddr::V4(_) => TcpSocket::new_v4(),
            SocketAddr::V6(_) => TcpSocket::new_v6(),
        }
        .context("creating a socket")?;
        if let Some(source) = req.source {
            bind_address_no_port(&socket);
            socket
                .bind(SocketAddr::new(source, 0))
                .with_context(|| format!("binding source address {source}"))?;
        }
        let mut tcp = socket
            .connect(req.dest)
            .await
            .with_context(|| format!("connecting to {}", req.dest))?;
        tcp.set_nodelay(true).context("setting TCP_NODELAY")?;
        let mut head = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\nCache-Control: no-cache\r\n",
            req.path, req.dest
        );
        for line in &req.headers {
            head.push_str(line);
            head.push_str("\r\n");
        }
        head.push_str("\r\n");
        tcp.write_all(head.as_bytes())
            .await
            .context("sending the request")?;

        let mut raw = Vec::with_capacity(1024);
        let head_end = loop {
            if let Some(pos) = memchr::memmem::find(&raw, b"\r\n\r\n") {
                break pos + 4;
            }
            if raw.len() > MAX_HEAD {
                bail!("response head larger than {MAX_HEAD} bytes");
            }
            let mut chunk = [0u8; 2048];
            let n = tcp
                .read(&mut chunk)
                .await
                .context("reading the response head")?;
            if n == 0 {
                bail!("connection closed before the response head");
            }
            raw.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&raw[..head_end]).into_owned();
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse::<u16>().ok())
            .unwrap_or(0);
        if status != 200 {
            let body = String::from_utf8_lossy(&raw[head_end..]);
            let body: String = body.chars().take(200).collect();
            bail!("HTTP {status}: {}", body.trim());
        }
        let chunked = head.lines().any(|line| {
            let lower = line.to_ascii_lowercase();
            lower.starts_with("transfer-encoding:") && lower.contains("chunked")
        });
        Ok(Self {
            tcp,
            body: if chunked {
                Body::Chunked(Chunked::default())
            } else {
                Body::Identity
            },
            pending: Vec::new(),
            leftover: raw.split_off(head_end),
            ended: false,
        })
    }

    /// Calls `on_frame` with each complete frame (without its blank line) until the stream ends
    /// or the callback breaks.
    pub async fn frames(
        &mut self,
        mut on_frame: impl FnMut(&[u8]) -> ControlFlow<()>,
    ) -> Result<End> {
        if !self.leftover.is_empty() {
            let raw = std::mem::take(&mut self.leftover);
            self.ended |= self.body.decode(&raw, &mut self.pending);
        }
        loop {
            if split_frames(&mut self.pending, &mut on_frame).is_break() {
                return Ok(End::Stopped);
            }
            if self.ended {
                return Ok(End::Closed);
            }
            if self.pending.len() > MAX_FRAME {
                bail!("an SSE frame larger than {MAX_FRAME} bytes");
            }
            if self.pending.is_empty() && self.pending.capacity() > 4096 {
                // A burst grew it; idle streams should not keep it.
                self.pending = Vec::new();
            }
            self.tcp
                .readable()
                .await
                .context("waiting for the stream")?;
            let read = READ_BUF.with_borrow_mut(|buf| match self.tcp.try_read(buf) {
                Ok(0) => Ok(true),
                Ok(n) => Ok(self.body.decode(&buf[..n], &mut self.pending)),
                Err(err) if err.kind() == ErrorKind::WouldBlock => Ok(false),
                Err(err) => Err(err),
            });
            self.ended = read.context("reading the stream")?;
        }
    }
}

/// Splits complete frames off the front of `pending` and hands them to `on_frame`.
fn split_frames(
    pending: &mut Vec<u8>,
    on_frame: &mut impl FnMut(&[u8]) -> ControlFlow<()>,
) -> ControlFlow<()> {
    let mut start = 0;
    let mut flow = ControlFlow::Continue(());
    while let Some(pos) = memchr::memmem::find(&pending[start..], b"\n\n") {
        let mut frame = &pending[start..start + pos];
        start += pos + 2;
        // Extra blank lines between frames are no frames.
        while let [b'\n', rest @ ..] = frame {
            frame = rest;
        }
        if !frame.is_empty() && on_frame(frame).is_break() {
            flow = ControlFlow::Break(());
            break;
        }
    }
    pending.drain(..start);
    flow
}

/// How the response body is framed on the wire.
enum Body {
    Identity,
    Chunked(Chunked),
}

impl Body {
    /// Appends the payload bytes of `raw` to `out`; true when the body has ended.
    fn decode(&mut self, raw: &[u8], out: &mut Vec<u8>) -> bool {
        match self {
            Body::Identity => {
                out.extend_from_slice(raw);
                false
            }
            Body::Chunked(chunked) => chunked.decode(raw, out),
        }
    }
}

/// Incremental `Transfer-Encoding: chunked` decoder.
#[derive(Default)]
struct Chunked {
    state: ChunkState,
    size: usize,
    in_extension: bool,
}

#[derive(Default, Clone, Copy)]
enum ChunkState {
    #[default]
    Size,
    Data(usize),
    /// The CRLF after a chunk's data.
    AfterData,
    Done,
}

impl Chunked {
    fn decode(&mut self, mut raw: &[u8], out: &mut Vec<u8>) -> bool {
        while !raw.is_empty() {
            match self.state {
                ChunkState::Size => {
                    let byte = raw[0];
                    raw = &raw[1..];
                    match byte {
                        b'\n' => {
                            self.state = if self.size == 0 {
                                ChunkState::Done
                            } else {
                                ChunkState::Data(self.size)
                            };
                            self.size = 0;
                            self.in_extension = false;
                        }
                        b';' => self.in_extension = true,
                        _ if self.in_extension => {}
                        _ => {
                            if let Some(digit) = (byte as char).to_digit(16) {
                                self.size = self.size.saturating_mul(16) + digit as usize;
                            }
                        }
                    }
                }
                ChunkState::Data(left) => {
                    let take = left.min(raw.len());
                    out.extend_from_slice(&raw[..take]);
                    raw = &raw[take..];
                    self.state = if take == left {
                        ChunkState::AfterData
                    } else {
                        ChunkState::Data(left - take)
                    };
                }
                ChunkState::AfterData => {
                    let byte = raw[0];
                    raw = &raw[1..];
                    if byte == b'\n' {
                        self.state = ChunkState::Size;
                    }
                }
                ChunkState::Done => return true,
            }
        }
        matches!(self.state, ChunkState::Done)
    }
}

/// The value of the first `name: value` line of a frame, e.g. `field(frame, b"event")`.
pub fn field<'a>(frame: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    frame.split(|&b| b == b'\n').find_map(|line| {
        let rest = line.strip_prefix(name)?.strip_prefix(b":")?;
        Some(rest.strip_prefix(b" ").unwrap_or(rest))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bound_stream_socket_leaves_its_port_to_connect() -> Result<()> {
        use std::os::fd::AsRawFd;
        let socket = TcpSocket::new_v4()?;
        bind_address_no_port(&socket);
        let mut on: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: a valid socket descriptor, and a value buffer of the size given.
        let read = unsafe {
            libc::getsockopt(
                socket.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_BIND_ADDRESS_NO_PORT,
                std::ptr::from_mut(&mut on).cast(),
                &mut len,
            )
        };
        assert_eq!((read, on), (0, 1));
        // Bound to an address with port 0, it has no port until it connects.
        socket.bind("127.0.0.1:0".parse()?)?;
        assert_eq!(socket.local_addr()?.port(), 0);
        Ok(())
    }

    fn frames_of(body: &mut Body, pieces: &[&[u8]]) -> (Vec<String>, bool) {
        let mut pending = Vec::new();
        let mut frames = Vec::new();
        let mut ended = false;
        for piece in pieces {
            ended |= body.decode(piece, &mut pending);
            let _ = split_frames(&mut pending, &mut |f: &[u8]| {
                frames.push(String::from_utf8_lossy(f).into_owned());
                ControlFlow::Continue(())
            });
        }
        (frames, ended)
    }

    #[test]
    fn chunked_frames_split_anywhere_are_reassembled() {
        let wire = b"d\r\nevent: a\ndata\r\n5\r\n: 1\n\n\r\n12;ext=1\r\nevent: b\ndata: 2\n\n\r\n0\r\n\r\n";
        for cut in 0..wire.len() {
            let (left, right) = wire.split_at(cut);
            let (frames, ended) = frames_of(&mut Body::Chunked(Chunked::default()), &[left, right]);
            assert_eq!(
                frames,
                ["event: a\ndata: 1", "event: b\ndata: 2"],
                "cut at {cut}"
            );
            assert!(ended);
        }
    }

    #[test]
    fn identity_body_passes_through() {
        let (frames, ended) =
            frames_of(&mut Body::Identity, &[b"\n: hi\n\nid: 1\nda", b"ta: x\n\n"]);
        assert_eq!(frames, [": hi", "id: 1\ndata: x"]);
        assert!(!ended);
    }

    #[test]
    fn field_reads_the_first_matching_line() {
        let frame = b"id: 7\nevent: new_post\ndata: {}";
        assert_eq!(field(frame, b"event"), Some(&b"new_post"[..]));
        assert_eq!(field(frame, b"id"), Some(&b"7"[..]));
        assert_eq!(field(frame, b"retry"), None);
    }
}
