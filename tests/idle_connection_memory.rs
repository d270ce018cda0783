//! An idle HTTP/1 connection holds no read or write buffer: the patch in
//! `vendor/actix-http/BELAY-PATCH.md`. Stock actix-http keeps an 8 KiB read and an 8 KiB write
//! buffer for the whole life of every connection. This binary counts, with its own allocator,
//! the heap bytes the real server holds per idle connection (kept alive after a request, and an
//! SSE stream after its first frame), so losing the patch fails here however fast or loaded the
//! machine is.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use belay::config::Settings;
use belay::startup::Application;

/// Heap bytes allocated and not yet freed, by anything in this process.
struct CountingAllocator {
    live: AtomicIsize,
}

#[global_allocator]
static HEAP: CountingAllocator = CountingAllocator {
    live: AtomicIsize::new(0),
};

// SAFETY: every call is forwarded to `System` with the caller's arguments unchanged.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as received.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            self.live.fetch_add(size(layout.size()), Ordering::Relaxed);
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as received.
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if !ptr.is_null() {
            self.live.fetch_add(size(layout.size()), Ordering::Relaxed);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded as received.
        unsafe { System.dealloc(ptr, layout) };
        self.live.fetch_sub(size(layout.size()), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded as received.
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            self.live
                .fetch_add(size(new_size) - size(layout.size()), Ordering::Relaxed);
        }
        new
    }
}

fn size(bytes: usize) -> isize {
    isize::try_from(bytes).unwrap_or(isize::MAX)
}

fn live_heap_bytes() -> isize {
    HEAP.live.load(Ordering::Relaxed)
}

/// Idle connections measured of each kind; enough that a few stray allocations elsewhere in the
/// process (a pool connection, a timer wheel level) add little per connection.
const CONNECTIONS: usize = 200;
/// Connections opened before the baseline, so that structures grown once (the runtime's slabs,
/// the hubs' maps) are not counted against the measured ones.
const WARM_UP_CONNECTIONS: usize = 40;
/// What an idle connection may hold. A kept-alive connection holds about 2.9 KiB and an SSE
/// stream with Belay's session about 3.5 KiB; stock actix-http adds its two 8 KiB buffers to each.
const MAX_HEAP_BYTES_PER_IDLE_CONNECTION: isize = 6 * 1024;
/// The heap counts as settled when it moves less than this between two samples...
const SETTLED_WITHIN_BYTES: isize = 1024;
/// ...taken this far apart...
const SETTLE_SAMPLE_EVERY: Duration = Duration::from_millis(100);
/// ...and is measured anyway after this long.
const SETTLE_AT_MOST: Duration = Duration::from_secs(3);
/// Bound on reading a response, so a broken build fails instead of hanging.
const READ_TIMEOUT: Duration = Duration::from_secs(10);
const JWT_SECRET: &str = "test-jwt-secret-0123456789abcdef";

#[actix_web::test]
async fn an_idle_http1_connection_holds_no_read_or_write_buffer() {
    // Arrange: the real server on port 0.
    let dir = tempfile::tempdir().expect("temp dir");
    let mut settings = Settings::load_with_env(None, Some(HashMap::new())).expect("settings");
    settings.server.port = 0;
    settings.server.workers = 2;
    settings.server.shutdown_timeout_secs = 1;
    settings.database.url = format!("sqlite://{}/belay.db", dir.path().display());
    settings.auth.jwt_secret = JWT_SECRET.to_owned().into();
    settings.auth.dev_secrets_file = dir.path().join("dev-secrets.json");
    let app = Application::build(settings).await.expect("app builds");
    let port = app.port();
    let shutdown = app.shutdown_handle();
    actix_web::rt::spawn(app.run());
    let health = |_| format!("GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n");
    let events = |i| {
        let token = token(&format!("idle-{i}"));
        format!(
            "GET /v1/events HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\
             Authorization: Bearer {token}\r\nAccept: text/event-stream\r\n\r\n"
        )
    };

    // Act: connections kept alive after one request, then SSE streams after their first frame.
    let (kept_alive, connections) = heap_per_idle_connection(port, health, response_read).await;
    // The server closes a kept-alive connection after 5 s idle, which would free its memory
    // before it was counted: on a machine that slow the number says nothing, and is not checked.
    let kept_alive_counted = all_open(&connections);
    let (streaming, _streams) = heap_per_idle_connection(port, events, first_frame_read).await;

    // Assert
    eprintln!(
        "heap bytes held per idle connection: {kept_alive} kept alive{}, {streaming} streaming SSE",
        if kept_alive_counted {
            ""
        } else {
            " (some closed by the server first: not checked)"
        }
    );
    let mut checked = vec![("SSE stream", streaming)];
    if kept_alive_counted {
        checked.push(("kept-alive connection", kept_alive));
    }
    for (what, held) in checked {
        assert!(
            held < MAX_HEAP_BYTES_PER_IDLE_CONNECTION,
            "an idle {what} holds {held} heap bytes (at most \
             {MAX_HEAP_BYTES_PER_IDLE_CONNECTION} expected): are the HTTP/1 read and write \
             buffers kept again? See vendor/actix-http/BELAY-PATCH.md"
        );
    }

    shutdown.shutdown().await;
}

/// The heap bytes each of `CONNECTIONS` idle connections holds, each opened with the request
/// `request(i)` and read until `read` says its answer is in; and the connections, open.
async fn heap_per_idle_connection(
    port: u16,
    request: impl Fn(usize) -> String,
    read: fn(&[u8]) -> bool,
) -> (isize, Vec<TcpStream>) {
    // Everything is formatted before the count starts.
    let mut requests: Vec<String> = (0..WARM_UP_CONNECTIONS + CONNECTIONS)
        .map(request)
        .collect();
    let measured = requests.split_off(WARM_UP_CONNECTIONS);
    let (mut connections, _) = open(port, requests, read).await;
    let before = settled_live_heap_bytes().await;
    let (measured, _requests) = open(port, measured, read).await;
    let after = settled_live_heap_bytes().await;
    let per_connection = (after - before) / size(measured.len());
    connections.extend(measured);
    (per_connection, connections)
}

/// A user token as `/v1/dev/token` mints it.
fn token(user: &str) -> String {
    #[derive(serde::Serialize)]
    struct Claims<'a> {
        sub: &'a str,
        exp: u64,
    }
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
        + 3600;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &Claims { sub: user, exp },
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .expect("token")
}

/// Opens one connection per request on blocking sockets off the server's threads (a plain
/// socket allocates nothing on the heap), each read until `read` says its answer is in. The
/// requests come back with the connections, so that freeing them is not counted against them.
async fn open(
    port: u16,
    requests: Vec<String>,
    read: fn(&[u8]) -> bool,
) -> (Vec<TcpStream>, Vec<String>) {
    actix_web::rt::task::spawn_blocking(move || {
        let connections = requests
            .iter()
            .map(|request| connect(port, request, read))
            .collect();
        (connections, requests)
    })
    .await
    .expect("client thread")
}

fn connect(port: u16, request: &str, read: fn(&[u8]) -> bool) -> TcpStream {
    let mut connection = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    connection
        .set_read_timeout(Some(READ_TIMEOUT))
        .expect("read timeout");
    connection
        .write_all(request.as_bytes())
        .expect("send request");
    let mut received = Vec::new();
    let mut chunk = [0_u8; 1024];
    while !read(&received) {
        let n = connection.read(&mut chunk).expect("read answer");
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&received));
        received.extend_from_slice(&chunk[..n]);
    }
    assert!(
        received.starts_with(b"HTTP/1.1 200"),
        "refused: {}",
        String::from_utf8_lossy(&received)
    );
    connection
}

/// Whether the server has closed none of `connections`.
fn all_open(connections: &[TcpStream]) -> bool {
    connections.iter().all(|connection| {
        connection.set_nonblocking(true).expect("non-blocking");
        let open = matches!(
            connection.peek(&mut [0_u8; 1]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock
        );
        connection.set_nonblocking(false).expect("blocking");
        open
    })
}

/// A whole response with a `Content-Length`.
fn response_read(received: &[u8]) -> bool {
    let text = String::from_utf8_lossy(received);
    let Some(head_end) = text.find("\r\n\r\n") else {
        return false;
    };
    let length = text[..head_end]
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    received.len() >= head_end + 4 + length
}

/// The response head and the whole `unread` frame that every stream opens with.
fn first_frame_read(received: &[u8]) -> bool {
    let text = String::from_utf8_lossy(received);
    text.find("event: unread")
        .is_some_and(|at| text[at..].contains("\n\n"))
}

/// The live heap once it stops moving (the last writes flushed, the last wake-ups done).
async fn settled_live_heap_bytes() -> isize {
    let started = std::time::Instant::now();
    let mut last = live_heap_bytes();
    loop {
        actix_web::rt::time::sleep(SETTLE_SAMPLE_EVERY).await;
        let now = live_heap_bytes();
        if (now - last).abs() < SETTLED_WITHIN_BYTES || started.elapsed() > SETTLE_AT_MOST {
            return now;
        }
        last = now;
    }
}
