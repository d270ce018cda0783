//! The `belay` binary itself: embedded defaults from an empty folder, environment overrides,
//! SIGTERM, and a restart that keeps events and tokens.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::process::Child;

use eventsource_stream::Eventsource;
use serde_json::{Value, json};
use support::process::{free_port, json_of, next, signal, start_with, wait_exit, wait_ready};

fn start(dir: &Path, port: u16) -> Child {
    start_with(dir, port, &[])
}

fn terminate(child: &Child) {
    signal(child, "TERM");
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
    let client = support::process::client();
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
