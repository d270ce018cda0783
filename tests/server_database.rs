//! The `belay` binary on a database server (PostgreSQL, MariaDB): a SIGKILL mid-stream loses and
//! repeats nothing; a database that goes away gives 503s, never a hang, and everything recovers
//! by itself when it is back; one that is not there at start is waited for, then given up on.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use serde_json::{Value, json};
use support::process::{
    Running, free_port, json_of, signal, start_logging_to, start_with, wait_exit, wait_ready,
};
use support::proxy::{Proxy, through, upstream};
use support::{Database, Server, fresh_database};

const LIKES: usize = 240;

/// A node of `belay` in its own folder (its dev secrets live there, so a restart keeps tokens).
struct Node {
    dir: tempfile::TempDir,
    port: u16,
    base: String,
    env: Vec<(String, String)>,
}

impl Node {
    fn new(url: &str) -> Node {
        let port = free_port();
        Node {
            dir: tempfile::tempdir().unwrap(),
            port,
            base: format!("http://127.0.0.1:{port}"),
            env: vec![
                ("BELAY__DATABASE__URL".into(), url.into()),
                // Host calls are not rate limited; the stream's reconnects are one user's.
                ("BELAY__LIMITS__USER_REQUESTS_PER_SEC".into(), "0".into()),
            ],
        }
    }

    fn start(&self) -> Running {
        Running(start_with(self.dir.path(), self.port, &self.env_pairs()))
    }

    /// [`Node::start`], its log written to `log` instead of the test's output.
    fn start_logging_to(&self, log: &std::path::Path) -> Running {
        Running(start_logging_to(
            self.dir.path(),
            self.port,
            &self.env_pairs(),
            log,
        ))
    }

    fn env_pairs(&self) -> Vec<(&str, &str)> {
        self.env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect()
    }

    async fn token_and_key(&self, client: &reqwest::Client) -> (String, String) {
        let token = json_of(
            client
                .post(format!("{}/v1/dev/token", self.base))
                .json(&json!({"user_id": "ana"})),
        )
        .await["token"]
            .as_str()
            .unwrap()
            .to_owned();
        let key = json_of(client.get(format!("{}/v1/dev/config", self.base))).await["api_key"]
            .as_str()
            .unwrap()
            .to_owned();
        (token, key)
    }
}

/// Each server this machine has, with a fresh database on it.
async fn databases() -> Vec<Database> {
    let mut all = Vec::new();
    for server in [Server::Postgres, Server::MySql] {
        all.extend(fresh_database(server).await);
    }
    all
}

/// Sends like `i` (post `p{i}`, key `like-{i}`) until the node accepts it; returns the status
/// codes of the attempts that failed.
async fn send_like(client: &reqwest::Client, base: &str, key: &str, i: usize) -> Vec<u16> {
    let body = json!({
        "user_id": "ana", "kind": "post_liked", "idempotency_key": format!("like-{i}"),
        "data": {"post_id": format!("p{i}"), "by": "bob"},
    });
    let mut failures = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let sent = client
            .post(format!("{base}/v1/notify"))
            .header("X-Api-Key", key)
            .timeout(Duration::from_secs(20))
            .json(&body)
            .send()
            .await;
        match sent {
            Ok(r) if r.status().is_success() => return failures,
            Ok(r) => {
                let status = r.status().as_u16();
                let body: Value = r.json().await.unwrap_or(Value::Null);
                assert!(
                    status == 503 && body["error"] == "unavailable",
                    "only a clear 503 while the database is away: {status} {body}"
                );
                failures.push(status);
            }
            Err(error) => {
                assert!(!error.is_timeout(), "a notify hung: {error}");
                failures.push(0);
            }
        }
        assert!(Instant::now() < deadline, "like {i} was never accepted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Reads Ana's stream from the start (reconnecting with the last id whenever it ends) until
/// cursor `until`; returns every stored event's id in arrival order.
async fn read_stream(base: String, token: String, until: i64) -> Vec<i64> {
    let client = support::process::client();
    let mut seen: Vec<i64> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(90);
    while seen.last().copied().unwrap_or(0) < until {
        assert!(
            Instant::now() < deadline,
            "stream stopped at {:?}",
            seen.last()
        );
        let last = seen.last().copied().unwrap_or(0);
        let request = client
            .get(format!("{base}/v1/events"))
            .bearer_auth(&token)
            .header("Last-Event-ID", last.to_string());
        let Ok(response) = request.send().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        if !response.status().is_success() {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        let mut events = response.bytes_stream().eventsource();
        while let Ok(Some(Ok(event))) =
            tokio::time::timeout(Duration::from_secs(15), events.next()).await
        {
            if event.event == "post_liked" {
                seen.push(event.id.parse().unwrap());
                if seen.last().copied() == Some(until) {
                    break;
                }
            }
        }
    }
    seen
}

#[tokio::test]
async fn a_sigkill_mid_stream_on_a_database_server_loses_and_repeats_nothing() {
    for database in databases().await {
        let name = database.server.name();
        let node = Node::new(&database.url);
        let client = support::process::client();
        let mut child = node.start();
        wait_ready(&client, &node.base).await;
        let (token, key) = node.token_and_key(&client).await;
        let reader = tokio::spawn(read_stream(node.base.clone(), token, LIKES as i64));

        // The host app sends likes one after another, retrying each (same key) until accepted;
        // the node is killed a third of the way through and started again.
        let sender = tokio::spawn({
            let (base, key) = (node.base.clone(), key.clone());
            async move {
                let client = support::process::client();
                for i in 1..=LIKES {
                    send_like(&client, &base, &key, i).await;
                }
            }
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        signal(&child.0, "KILL");
        wait_exit(&mut child.0);
        child = node.start();
        wait_ready(&client, &node.base).await;

        sender.await.unwrap();
        let seen = reader.await.unwrap();
        assert_eq!(
            seen,
            (1..=LIKES as i64).collect::<Vec<_>>(),
            "{name}: every like once, in order"
        );
        signal(&child.0, "TERM");
        assert!(wait_exit(&mut child.0).success(), "{name}");
    }
}

#[tokio::test]
async fn a_database_gone_for_ten_seconds_gives_503s_then_everything_recovers() {
    for database in databases().await {
        let server = database.server;
        let name = server.name();
        let mut proxy = Proxy::start(upstream(server)).await;
        let node = Node::new(&through(&database.url, server, &proxy));
        let client = support::process::client();
        let mut child = node.start();
        wait_ready(&client, &node.base).await;
        let (token, key) = node.token_and_key(&client).await;
        let reader = tokio::spawn(read_stream(node.base.clone(), token, 40));
        for i in 1..=20 {
            assert!(send_like(&client, &node.base, &key, i).await.is_empty());
        }

        proxy.cut();
        let away = Instant::now();
        // Readiness says so, and a notify is answered 503 promptly (no hang), with a JSON body.
        let ready = client
            .get(format!("{}/readyz", node.base))
            .timeout(Duration::from_secs(15))
            .send()
            .await
            .unwrap();
        assert_eq!(
            ready.status(),
            503,
            "{name}: /readyz while the database is away"
        );
        let sender = tokio::spawn({
            let (base, key) = (node.base.clone(), key.clone());
            async move {
                let client = support::process::client();
                let mut refused = 0;
                for i in 21..=40 {
                    refused += send_like(&client, &base, &key, i).await.len();
                }
                refused
            }
        });
        tokio::time::sleep(Duration::from_secs(10).saturating_sub(away.elapsed())).await;
        proxy.resume().await;

        let refused = sender.await.unwrap();
        assert!(
            refused > 0,
            "{name}: notifies were refused while it was away"
        );
        wait_ready(&client, &node.base).await;
        let seen = reader.await.unwrap();
        assert_eq!(
            seen,
            (1..=40).collect::<Vec<_>>(),
            "{name}: nothing lost or repeated"
        );
        signal(&child.0, "TERM");
        assert!(wait_exit(&mut child.0).success(), "{name}");
    }
}

#[tokio::test]
async fn a_database_missing_at_start_is_waited_for_then_given_up_on() {
    for database in databases().await {
        let server = database.server;
        let name = server.name();
        let mut proxy = Proxy::start(upstream(server)).await;
        proxy.cut();
        let mut node = Node::new(&through(&database.url, server, &proxy));
        node.env
            .push(("BELAY__DATABASE__CONNECT_TIMEOUT_SECS".into(), "2".into()));
        let started = Instant::now();
        let mut child = node.start();
        let status = wait_exit(&mut child.0);
        assert!(!status.success(), "{name}: exits non-zero when it gives up");
        assert!(
            started.elapsed() >= Duration::from_secs(1),
            "{name}: it retried before giving up"
        );

        // With time to spare, a database that turns up is used.
        node.env.pop();
        let mut child = node.start();
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        assert!(
            child.0.try_wait().unwrap().is_none(),
            "{name}: still waiting"
        );
        proxy.resume().await;
        let client = support::process::client();
        wait_ready(&client, &node.base).await;
        signal(&child.0, "TERM");
        assert!(wait_exit(&mut child.0).success(), "{name}");
    }
}

/// A database that hangs (connections open, nothing answers: a frozen server, a network that
/// drops packets) instead of refusing: every request is still answered, 503 with `Retry-After`
/// within `server.request_timeout_secs`, `/readyz` says so at once, and a graceful stop ends the
/// process cleanly although handlers were waiting on the database.
#[tokio::test]
async fn a_database_that_hangs_gives_503s_in_time_and_a_stop_still_exits_cleanly() {
    for database in databases().await {
        let server = database.server;
        let name = server.name();
        let mut proxy = Proxy::start(upstream(server)).await;
        let mut node = Node::new(&through(&database.url, server, &proxy));
        node.env.extend([
            ("BELAY__SERVER__REQUEST_TIMEOUT_SECS".into(), "3".into()),
            ("BELAY__SERVER__BODY_TIMEOUT_SECS".into(), "2".into()),
        ]);
        let log = node.dir.path().join("stderr.log");
        let mut running = node.start_logging_to(&log);
        let client = support::process::client();
        wait_ready(&client, &node.base).await;
        let (token, key) = node.token_and_key(&client).await;

        proxy.stall();
        let like =
            json!({"user_id": "ana", "kind": "post_liked", "data": {"post_id": "p", "by": "zoe"}});
        let requests = [
            client
                .get(format!("{}/v1/notifications", node.base))
                .bearer_auth(&token),
            client
                .get(format!("{}/v1/preferences", node.base))
                .bearer_auth(&token),
            client.get(format!("{}/readyz", node.base)),
            client
                .post(format!("{}/v1/notify", node.base))
                .header("X-Api-Key", &key)
                .json(&like),
        ];
        let answers = futures_util::future::join_all(requests.into_iter().map(|r| async move {
            let response = r.timeout(Duration::from_secs(20)).send().await.unwrap();
            let retry_after = response.headers().get("retry-after").is_some();
            (
                response.status(),
                retry_after,
                response.json::<Value>().await.unwrap(),
            )
        }))
        .await;
        for (status, retry_after, body) in &answers {
            assert_eq!(status.as_u16(), 503, "{name}: {body}");
            assert_eq!(body["error"], "unavailable", "{name}: {body}");
            assert!(*retry_after, "{name}: Retry-After with {body}");
        }
        // The list, the preferences and the notify were answered by the deadline (not by the
        // writer's own 10 s attempt limit, nor by the client giving up); `/readyz` by its own
        // 2 s wait.
        let timed_out =
            support::process::metric(&client, &node.base, "belay_requests_timed_out_total").await;
        assert!(
            timed_out >= 3.0,
            "{name}: {timed_out} answered by the deadline"
        );

        signal(&running.0, "TERM");
        let status = wait_exit(&mut running.0);
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(
            status.success() && !text.contains("panicked"),
            "{name}: the node ended with {status}; its log:\n{text}"
        );
    }
}
