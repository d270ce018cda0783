//! The `belay` binary itself: embedded defaults from an empty folder, environment overrides,
//! SIGTERM, and a restart that keeps events and tokens.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(20);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start(dir: &Path, port: u16) -> Child {
    Command::new(env!("CARGO_BIN_EXE_belay"))
        .current_dir(dir)
        .env("BELAY__SERVER__PORT", port.to_string())
        .env("BELAY__SERVER__WORKERS", "2")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("belay starts")
}

async fn wait_ready(client: &reqwest::Client, base: &str) {
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

fn terminate(child: &Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("belay did not exit after SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The next SSE event, `None` at the end of the stream; fails after [`WAIT`].
async fn next<S, E>(events: &mut S) -> Option<eventsource_stream::Event>
where
    S: futures_util::Stream<Item = Result<eventsource_stream::Event, E>> + Unpin,
    E: std::fmt::Debug,
{
    let item = tokio::time::timeout(WAIT, events.next())
        .await
        .expect("an event in time");
    item.map(|r| r.expect("stream error"))
}

async fn json_of(request: reqwest::RequestBuilder) -> Value {
    request.send().await.unwrap().json().await.unwrap()
}

async fn like(client: &reqwest::Client, base: &str, key: &str, post: &str) -> Value {
    let body =
        json!({"user_id": "ana", "kind": "post_liked", "data": {"post_id": post, "by": "bob"}});
    json_of(
        client
            .post(format!("{base}/v1/notify"))
            .header("X-Api-Key", key)
            .json(&body),
    )
    .await
}

#[tokio::test]
async fn the_binary_runs_from_an_empty_folder_stops_on_sigterm_and_restarts_without_loss() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let mut child = start(dir.path(), port);
    wait_ready(&client, &base).await;
    assert!(
        dir.path().join("data/belay.db").exists(),
        "SQLite file under ./data"
    );

    let token = json_of(
        client
            .post(format!("{base}/v1/dev/token"))
            .json(&json!({"user_id": "ana"})),
    )
    .await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let key = json_of(client.get(format!("{base}/v1/dev/config"))).await["api_key"]
        .as_str()
        .unwrap()
        .to_owned();

    let response = client
        .get(format!("{base}/v1/events"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    let mut events = response.bytes_stream().eventsource();
    assert_eq!(next(&mut events).await.unwrap().event, "unread");
    like(&client, &base, &key, "p1").await;
    assert_eq!(next(&mut events).await.unwrap().id, "1");

    terminate(&child);
    assert!(
        next(&mut events).await.is_none(),
        "SIGTERM ends the stream cleanly"
    );
    assert!(wait_exit(&mut child).success(), "and the process exits 0");

    // Restarted in the same folder: the old token still works and nothing was lost.
    let mut child = start(dir.path(), port);
    wait_ready(&client, &base).await;
    like(&client, &base, &key, "p2").await;
    let response = client
        .get(format!("{base}/v1/events"))
        .bearer_auth(&token)
        .header("Last-Event-ID", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut events = response.bytes_stream().eventsource();
    assert_eq!(next(&mut events).await.unwrap().event, "unread");
    let resumed = next(&mut events).await.unwrap();
    assert_eq!(
        (resumed.id.as_str(), resumed.event.as_str()),
        ("2", "post_liked")
    );
    terminate(&child);
    assert!(wait_exit(&mut child).success());
}
