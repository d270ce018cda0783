//! Three `belay` nodes behind nginx, run with the repository's own proxy settings
//! (`deploy/nginx/belay.conf`), on one PostgreSQL database (and again on MariaDB) and one Redis:
//! a node is SIGKILLed while 5,000 events flow to 100 users whose clients reconnect through the
//! proxy with `Last-Event-ID`. Every user gets every event once, in cursor order.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use serde_json::json;
use support::process::{Running, client, free_port, json_of, signal, start_with, wait_ready};
use support::redis::{shared, unique_prefix};
use support::{Server, fresh_database, services_required};

const API_KEY: &str = "proxy-test-key";
const JWT_SECRET: &str = "proxy-test-secret-0123456789";
const USERS: usize = 100;
const PER_USER: usize = 50;
/// Events per notify request.
const BATCH: usize = 10;

/// nginx from its own prefix (its own config, pid file and logs), never the system service.
struct Nginx {
    port: u16,
    _process: Running,
    _dir: tempfile::TempDir,
}

impl Nginx {
    fn start(upstreams: &[u16]) -> Option<Nginx> {
        let Ok(path) = which("nginx") else {
            assert!(
                !services_required(),
                "nginx is required (BELAY_TEST_REQUIRE_SERVICES) but not installed"
            );
            eprintln!("skipping: nginx is not installed (apt-get install nginx-light)");
            return None;
        };
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let servers: String = upstreams
            .iter()
            .map(|p| format!("        server 127.0.0.1:{p} max_fails=1 fail_timeout=2s;\n"))
            .collect();
        let locations = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/nginx/belay.conf");
        let prefix = dir.path().display();
        // One process (no master): the guard's kill then leaves no orphaned worker behind.
        let conf = format!(
            "user root;\nmaster_process off;\nworker_processes 1;\npid {prefix}/nginx.pid;\nerror_log {prefix}/error.log warn;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n    access_log off;\n    client_body_temp_path {prefix}/body;\n    \
             proxy_temp_path {prefix}/proxy;\n    upstream belay_nodes {{\n{servers}        keepalive 32;\n    }}\n    \
             server {{\n        listen 127.0.0.1:{port};\n        include {locations};\n    }}\n}}\n",
            locations = locations.display()
        );
        std::fs::write(dir.path().join("nginx.conf"), conf).unwrap();
        let process = Command::new(path)
            .args([
                "-p",
                &prefix.to_string(),
                "-c",
                "nginx.conf",
                "-g",
                "daemon off;",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        Some(Nginx {
            port,
            _process: Running(process),
            _dir: dir,
        })
    }
}

fn which(program: &str) -> Result<String, ()> {
    let out = Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .map_err(|_| ())?;
    let path = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if out.status.success() && !path.is_empty() {
        Ok(path)
    } else {
        Err(())
    }
}

fn start_node(dir: &Path, port: u16, database: &str, redis: &str, prefix: &str) -> Running {
    Running(start_with(
        dir,
        port,
        &[
            ("BELAY__DATABASE__URL", database),
            ("BELAY__REDIS__URL", redis),
            ("BELAY__CLUSTER__KEY_PREFIX", prefix),
            ("BELAY__AUTH__API_KEY", API_KEY),
            ("BELAY__AUTH__JWT_SECRET", JWT_SECRET),
            ("BELAY__LIMITS__USER_REQUESTS_PER_SEC", "0"),
            ("BELAY__SSE__RETRY_MS", "100"),
        ],
    ))
}

/// Reads `user`'s stream through the proxy from the start, reconnecting with the last id
/// whenever it ends, until the last event; returns the cursors in arrival order.
async fn read_all(base: String, token: String, reconnects: Arc<AtomicUsize>) -> Vec<i64> {
    let http = client();
    let mut seen: Vec<i64> = Vec::with_capacity(PER_USER);
    let deadline = Instant::now() + Duration::from_secs(120);
    while seen.len() < PER_USER && seen.last().copied().unwrap_or(0) < PER_USER as i64 {
        assert!(Instant::now() < deadline, "stream stuck after {seen:?}");
        let last = seen.last().copied().unwrap_or(0);
        let response = http
            .get(format!("{base}/v1/events"))
            .bearer_auth(&token)
            .header("Last-Event-ID", last.to_string())
            .send()
            .await;
        let response = match response {
            Ok(r) if r.status().is_success() => r,
            _ => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let mut events = response.bytes_stream().eventsource();
        while let Ok(Some(Ok(event))) =
            tokio::time::timeout(Duration::from_secs(20), events.next()).await
        {
            if event.event == "post_liked" {
                seen.push(event.id.parse().unwrap());
                if seen.last().copied() == Some(PER_USER as i64) {
                    return seen;
                }
            }
        }
        reconnects.fetch_add(1, Ordering::Relaxed);
    }
    seen
}

#[tokio::test]
async fn a_node_killed_mid_stream_behind_the_proxy_loses_and_repeats_nothing() {
    node_killed_behind_the_proxy(Server::Postgres).await;
}

#[tokio::test]
async fn a_node_killed_mid_stream_behind_the_proxy_loses_and_repeats_nothing_on_mariadb() {
    node_killed_behind_the_proxy(Server::MySql).await;
}

async fn node_killed_behind_the_proxy(server: Server) {
    let Some(redis) = shared() else { return };
    let Some(database) = fresh_database(server).await else {
        return;
    };
    let prefix = unique_prefix();
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let mut nodes: Vec<Running> = dirs
        .iter()
        .zip(&ports)
        .map(|(dir, port)| start_node(dir.path(), *port, &database.url, &redis, &prefix))
        .collect();
    for port in &ports {
        wait_ready(&client(), &format!("http://127.0.0.1:{port}")).await;
    }
    let Some(nginx) = Nginx::start(&ports) else {
        return;
    };
    let base = format!("http://127.0.0.1:{}", nginx.port);
    wait_ready(&client(), &base).await;

    // Tokens are minted through the proxy: every node shares the JWT secret.
    let mut readers = Vec::new();
    let reconnects = Arc::new(AtomicUsize::new(0));
    for u in 0..USERS {
        let token = json_of(
            client()
                .post(format!("{base}/v1/dev/token"))
                .json(&json!({"user_id": format!("climber{u}")})),
        )
        .await["token"]
            .as_str()
            .unwrap()
            .to_owned();
        readers.push(tokio::spawn(read_all(
            base.clone(),
            token,
            reconnects.clone(),
        )));
    }

    // The host app sends 5,000 likes through the proxy, in batches, each retried (same keys)
    // until accepted; a node is killed after a fifth of them.
    let sender = tokio::spawn({
        let base = base.clone();
        async move {
            let http = client();
            let mut refused = 0;
            let all: Vec<(usize, usize)> = (1..=PER_USER)
                .flat_map(|n| (0..USERS).map(move |u| (u, n)))
                .collect();
            for chunk in all.chunks(BATCH) {
                let events: Vec<_> = chunk
                    .iter()
                    .map(|(u, n)| {
                        json!({
                            "user_id": format!("climber{u}"), "kind": "post_liked",
                            "idempotency_key": format!("like-{u}-{n}"),
                            "data": {"post_id": format!("p{n}"), "by": "fan"},
                        })
                    })
                    .collect();
                let deadline = Instant::now() + Duration::from_secs(60);
                loop {
                    let sent = http
                        .post(format!("{base}/v1/notify"))
                        .header("X-Api-Key", API_KEY)
                        .json(&json!({ "events": events }))
                        .send()
                        .await;
                    if matches!(&sent, Ok(r) if r.status().is_success()) {
                        break;
                    }
                    refused += 1;
                    assert!(Instant::now() < deadline, "a batch was never accepted");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            refused
        }
    });
    tokio::time::sleep(Duration::from_millis(800)).await;
    signal(&nodes[0].0, "KILL");
    let started = Instant::now();
    while nodes[0].0.try_wait().unwrap().is_none() {
        assert!(started.elapsed() < Duration::from_secs(10));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let refused = sender.await.unwrap();
    for (u, reader) in readers.into_iter().enumerate() {
        let seen = reader.await.unwrap();
        assert_eq!(
            seen,
            (1..=PER_USER as i64).collect::<Vec<_>>(),
            "climber{u}: every event once, in order"
        );
    }
    eprintln!(
        "{} stream reconnects through the proxy, {refused} notify retries",
        reconnects.load(Ordering::Relaxed)
    );
    for node in &nodes[1..] {
        signal(&node.0, "TERM");
    }
    nodes.clear();
    drop(nginx);
}
