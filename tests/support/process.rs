//! Starting and stopping the `belay` binary from tests.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::Value;

pub const WAIT: Duration = Duration::from_secs(20);

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts `belay` in `dir` on `port`, with extra environment variables.
pub fn start_with(dir: &Path, port: u16, env: &[(&str, &str)]) -> Child {
    start(dir, port, env, Stdio::inherit())
}

/// [`start_with`], its log (standard error) written to `log` instead of the test's output.
pub fn start_logging_to(dir: &Path, port: u16, env: &[(&str, &str)], log: &Path) -> Child {
    let file = std::fs::File::create(log).expect("a log file");
    start(dir, port, env, Stdio::from(file))
}

fn start(dir: &Path, port: u16, env: &[(&str, &str)], stderr: Stdio) -> Child {
    Command::new(env!("CARGO_BIN_EXE_belay"))
        .current_dir(dir)
        .env("BELAY__SERVER__PORT", port.to_string())
        .env("BELAY__SERVER__WORKERS", "2")
        .env("RUST_LOG", "warn")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("belay starts")
}

/// An HTTP client for the tests (the process's TLS provider installed first, as Belay's own
/// reqwest build needs).
pub fn client() -> reqwest::Client {
    belay::push::install_tls_provider();
    reqwest::Client::new()
}

pub async fn wait_ready(client: &reqwest::Client, base: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Ok(r) = client.get(format!("{base}/readyz")).send().await
            && r.status().is_success()
        {
            return;
        }
        assert!(Instant::now() < deadline, "belay did not become ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends `signal` (`TERM`, `KILL`) to the process.
pub fn signal(child: &Child, signal: &str) {
    let status = Command::new("kill")
        .args([format!("-{signal}"), child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

pub fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("belay did not exit in time");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The next SSE event, `None` at the end of the stream; fails after [`WAIT`].
pub async fn next<S, E>(events: &mut S) -> Option<eventsource_stream::Event>
where
    S: futures_util::Stream<Item = Result<eventsource_stream::Event, E>> + Unpin,
    E: std::fmt::Debug,
{
    let item = tokio::time::timeout(WAIT, events.next())
        .await
        .expect("an event in time");
    item.map(|r| r.expect("stream error"))
}

/// The value of the series `name` (no labels) in the `/metrics` of the node at `base`.
pub async fn metric(client: &reqwest::Client, base: &str, name: &str) -> f64 {
    let text = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{name} in /metrics"))
}

pub async fn json_of(request: reqwest::RequestBuilder) -> Value {
    request.send().await.unwrap().json().await.unwrap()
}

/// A `belay` process that is killed when the guard goes, so a failing test leaves none behind.
pub struct Running(pub Child);

impl Drop for Running {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}
