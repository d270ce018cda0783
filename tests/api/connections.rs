//! Connections that would hold the server up: a body that trickles in, and more connections
//! from one address than its cap.

use std::net::SocketAddr;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{TestApp, WAIT, spawn_app_with};

/// A connection to `app` from `source` (any 127.0.0.0/8 address), so that what a test holds
/// is counted apart from the helper client's pooled connections.
async fn connect_from(app: &TestApp, source: [u8; 4]) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::from((source, 0)))
        .expect("binding a loopback source address");
    let address: SocketAddr = app.address.trim_start_matches("http://").parse().unwrap();
    socket.connect(address).await.unwrap()
}

/// Everything the server writes until it closes the connection.
async fn read_until_closed(stream: &mut TcpStream) -> String {
    let mut answer = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut answer))
        .await
        .expect("the server closes the connection")
        .expect("reading the answer");
    String::from_utf8_lossy(&answer).into_owned()
}

#[actix_web::test]
async fn a_body_that_trickles_in_gets_408_and_its_connection_is_closed() {
    let app = spawn_app_with(|settings| settings.server.body_timeout_secs = 1).await;
    let body =
        json!({"user_id": "ana", "kind": "post_liked", "data": {"post_id": "p", "by": "bob"}})
            .to_string();
    let mut stream = connect_from(&app, [127, 0, 0, 1]).await;
    let head = format!(
        "POST /v1/notify HTTP/1.1\r\nHost: x\r\nX-Api-Key: {}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n",
        app.api_key,
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();

    // One byte every 300 ms: the whole body would take far longer than the 1 s allowed.
    let started = tokio::time::Instant::now();
    let mut sent = 0;
    let answer = loop {
        let mut peek = [0u8; 1];
        tokio::select! {
            read = stream.peek(&mut peek) => {
                read.unwrap();
                break read_until_closed(&mut stream).await;
            }
            _ = tokio::time::sleep(Duration::from_millis(300)) => {
                assert!(sent < body.len() - 1, "the whole body was sent without an answer");
                stream.write_all(&body.as_bytes()[sent..=sent]).await.unwrap();
                sent += 1;
            }
        }
    };

    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains(r#""error":"request_timeout""#), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
    assert!(started.elapsed() < WAIT);
    let token = app.token("ana").await;
    assert_eq!(app.list(&token, "").await["notifications"], json!([]));
}

#[actix_web::test]
async fn a_body_that_arrives_in_time_is_served() {
    let app = spawn_app_with(|settings| settings.server.body_timeout_secs = 1).await;
    let response = app
        .notify(
            json!({"user_id": "ana", "kind": "post_liked", "data": {"post_id": "p", "by": "bob"}}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
}

#[actix_web::test]
async fn connections_over_the_per_ip_cap_are_answered_503_and_closed_at_once() {
    let app = spawn_app_with(|settings| settings.limits.connections_per_ip = 3).await;
    let source = [127, 0, 0, 7];
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(connect_from(&app, source).await);
    }
    // The three are admitted: each is served.
    for stream in &mut held {
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).await.unwrap();
        assert_eq!(&head, b"HTTP/1.1 200");
    }

    let mut over = connect_from(&app, source).await;
    let answer = read_until_closed(&mut over).await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(
        answer.contains(r#""error":"too_many_connections""#),
        "{answer}"
    );

    // Another address is not held back by this one's cap.
    let mut other = connect_from(&app, [127, 0, 0, 8]).await;
    other
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    assert!(
        read_until_closed(&mut other)
            .await
            .starts_with("HTTP/1.1 200")
    );

    // Once one of the three closes, its place is free again.
    drop(held.pop());
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let mut again = connect_from(&app, source).await;
        again
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let answer = read_until_closed(&mut again).await;
        if answer.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the closed connection's place was not given back: {answer}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        app.metric("belay_connections_refused_total{cap=\"per_ip\"}")
            .await
            >= 1
    );
}
