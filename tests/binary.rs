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

/// Sends `request` on a new connection and returns the status line of the answer.
async fn raw_status(address: &str, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(support::process::WAIT, stream.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    answer.lines().next().unwrap_or_default().to_owned()
}

/// What a client gets wrong is answered with a 4xx and logged below `error`: one client must not
/// be able to fill the error log.
#[tokio::test]
async fn malformed_requests_from_a_client_are_not_logged_as_errors() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let address = format!("127.0.0.1:{port}");
    let base = format!("http://{address}");
    let client = support::process::client();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_belay"))
        .current_dir(dir.path())
        .env("BELAY__SERVER__PORT", port.to_string())
        .env("BELAY__SERVER__WORKERS", "2")
        .env("BELAY__LOG__FORMAT", "json")
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("belay starts");
    let mut child = support::process::Running(child);
    wait_ready(&client, &base).await;

    let malformed: [&[u8]; 4] = [
        b"GARBAGE\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nNo colon here\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
        b"POST /v1/dev/token HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
    ];
    for request in malformed {
        let status = raw_status(&address, request).await;
        assert!(
            status.starts_with("HTTP/1.1 400"),
            "{:?}: {status}",
            String::from_utf8_lossy(request)
        );
    }
    let refused = [
        client
            .post(format!("{base}/v1/dev/token"))
            .header("content-type", "application/json")
            .body("{"),
        client
            .get(format!("{base}/v1/events"))
            .bearer_auth("not-a-token"),
        client
            .get(format!("{base}/v1/events"))
            .header("Authorization", "Basic YTpi"),
        client
            .get(format!("{base}/v1/notifications?after=-1"))
            .bearer_auth("x"),
        client.delete(format!("{base}/v1/notify")),
        client.get(format!("{base}/v1/nope")),
    ];
    for request in refused {
        let response = request.send().await.unwrap();
        assert!(response.status().is_client_error(), "{response:?}");
    }

    signal(&child.0, "TERM");
    assert!(wait_exit(&mut child.0).success());
    let mut log = String::new();
    std::io::Read::read_to_string(&mut child.0.stdout.take().unwrap(), &mut log).unwrap();
    let errors: Vec<&str> = log
        .lines()
        .filter(|line| line.contains(r#""level":"ERROR""#))
        .collect();
    assert!(errors.is_empty(), "logged as errors: {errors:#?}");
    assert!(
        log.contains(r#""level":"INFO""#),
        "the log was captured: {log}"
    );
}

/// Raises this test process's soft open-file limit to its hard one, for the many connections a
/// test opens.
fn raise_own_file_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed to them.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        limit.rlim_cur = limit.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
    }
}

/// user+system CPU time of `pid` so far, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat.rsplit_once(") ").unwrap().1.split(' ').collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// With an open-file limit of 1,024 and 1,100 streams asked for, the node admits what its
/// derived cap allows, answers the rest 503 at once instead of failing `accept`, and serves a
/// fresh connection again as soon as some close.
#[tokio::test]
async fn at_its_open_file_limit_the_node_refuses_early_and_recovers() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    raise_own_file_limit();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let address = format!("127.0.0.1:{port}");
    let base = format!("http://{address}");
    support::process::client();
    // No idle connection kept: each request's connection is gone before the streams open.
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let child = std::process::Command::new("sh")
        .args([
            "-c",
            r#"ulimit -n 1024 && exec "$0""#,
            env!("CARGO_BIN_EXE_belay"),
        ])
        .current_dir(dir.path())
        .env("BELAY__SERVER__PORT", port.to_string())
        .env("BELAY__SERVER__WORKERS", "2")
        .env("BELAY__LIMITS__CONNECTIONS_PER_IP", "0")
        .env("BELAY__LIMITS__USER_REQUESTS_PER_SEC", "0")
        .env("BELAY__SSE__MAX_SESSIONS_PER_USER", "2000")
        .env("BELAY__LOG__FORMAT", "json")
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("belay starts");
    let mut child = support::process::Running(child);
    wait_ready(&client, &base).await;
    let token = json_of(
        client
            .post(format!("{base}/v1/dev/token"))
            .json(&json!({"user_id": "ana"})),
    )
    .await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let request =
        format!("GET /v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n");

    let mut streams = Vec::new();
    let (mut admitted, mut refused) = (0, 0);
    for _ in 0..1_100 {
        let mut stream = tokio::net::TcpStream::connect(&address).await.unwrap();
        // A refused connection may be closed before the request is written.
        let _ = stream.write_all(request.as_bytes()).await;
        let mut head = [0u8; 12];
        match tokio::time::timeout(support::process::WAIT, stream.read_exact(&mut head)).await {
            Ok(Ok(_)) if &head == b"HTTP/1.1 200" => {
                admitted += 1;
                streams.push(stream);
            }
            Ok(Ok(_)) if &head == b"HTTP/1.1 503" => refused += 1,
            other => panic!("neither a stream nor a refusal: {other:?} {head:?}"),
        }
    }
    let pid = child.0.id();
    let before = cpu_ticks(pid);
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let idle_ticks = cpu_ticks(pid) - before;
    println!("admitted {admitted}, refused {refused}; CPU at the limit: {idle_ticks} ticks in 3 s");
    assert!(
        refused > 0 && admitted > 500,
        "admitted {admitted}, refused {refused}"
    );
    assert_eq!(admitted + refused, 1_100);

    // At the cap a fresh connection is refused; once some streams close it is served.
    let at_cap = client.get(format!("{base}/healthz")).send().await;
    assert!(
        at_cap.map_or(true, |r| r.status() == 503),
        "served above the cap"
    );
    streams.truncate(streams.len() - 20);
    let deadline = std::time::Instant::now() + support::process::WAIT;
    loop {
        if let Ok(r) = client.get(format!("{base}/healthz")).send().await
            && r.status().is_success()
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no fresh connection was served"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    drop(streams);
    signal(&child.0, "TERM");
    assert!(wait_exit(&mut child.0).success());
    let mut log = String::new();
    std::io::Read::read_to_string(&mut child.0.stdout.take().unwrap(), &mut log).unwrap();
    assert!(
        log.contains(r#""open_files":1024"#),
        "the cap was derived from the limit: {log}"
    );
    let errors: Vec<&str> = log
        .lines()
        .filter(|line| line.contains(r#""level":"ERROR""#))
        .collect();
    assert!(errors.is_empty(), "logged as errors: {errors:#?}");
}
