//! The SSE stream: framing, fan-out to sessions, resume, slow clients, caps, shutdown.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{WAIT, assert_error, data, spawn_app, spawn_app_with};

#[actix_web::test]
async fn a_stream_opens_with_retry_and_unread_then_delivers_named_events() {
    let app = spawn_app().await;
    let token = app.token("ana").await;

    let mut stream = app.open_stream(&token, None).await;
    let headers = &stream.response_headers;
    assert_eq!(headers["content-type"], "text/event-stream");
    assert_eq!(headers["cache-control"], "no-cache");
    assert_eq!(headers["x-accel-buffering"], "no");

    let unread = stream.expect().await;
    assert_eq!(unread.event, "unread");
    assert_eq!(data(&unread)["count"], 0);

    let stored = app.like("ana", "p1", "bob").await;
    let event = stream.expect().await;
    assert_eq!(event.event, "post_liked");
    assert_eq!(event.id, "1");
    let body = data(&event);
    assert_eq!(body["id"], stored["id"]);
    assert_eq!(body["cursor"], 1);
    assert_eq!(body["kind"], "post_liked");
    assert_eq!(body["data"]["text"], "bob liked your post");
    assert_eq!(body["read"], false);
}

#[actix_web::test]
async fn every_session_of_a_user_receives_the_event_and_no_other_user_does() {
    let app = spawn_app().await;
    let ana = app.token("ana").await;
    let bob = app.token("bob").await;
    let mut tab1 = app.open_stream(&ana, None).await;
    let mut tab2 = app.open_stream(&ana, None).await;
    let mut phone = app.open_stream(&ana, None).await;
    let mut other = app.open_stream(&bob, None).await;
    for s in [&mut tab1, &mut tab2, &mut phone, &mut other] {
        assert_eq!(s.expect().await.event, "unread");
    }

    app.like("ana", "p1", "cy").await;
    app.like("bob", "p2", "cy").await;

    for s in [&mut tab1, &mut tab2, &mut phone] {
        let event = s.expect().await;
        assert_eq!(data(&event)["data"]["post_id"], "p1");
    }
    let event = other.expect().await;
    assert_eq!(
        data(&event)["data"]["post_id"],
        "p2",
        "bob sees only his own event"
    );
    assert!(other.is_quiet_for(Duration::from_millis(200)).await);
}

#[actix_web::test]
async fn resume_with_last_event_id_replays_missed_events_once_in_order() {
    let app = spawn_app().await;
    let token = app.token("ana").await;
    let mut first = app.open_stream(&token, None).await;
    first.expect().await;
    for i in 1..=3 {
        app.like("ana", &format!("p{i}"), "bob").await;
    }
    assert_eq!(first.expect_skipping("unread").await.id, "1");
    assert_eq!(first.expect().await.id, "2");
    drop(first);
    for i in 4..=6 {
        app.like("ana", &format!("p{i}"), "bob").await;
    }

    let mut resumed = app.open_stream(&token, Some("2")).await;
    assert_eq!(resumed.expect().await.event, "unread");
    let mut got = Vec::new();
    for _ in 3..=6 {
        got.push(resumed.expect().await.id);
    }
    assert_eq!(got, ["3", "4", "5", "6"]);
    app.like("ana", "p7", "bob").await;
    assert_eq!(resumed.expect().await.id, "7", "then live events follow");
    assert!(
        resumed.is_quiet_for(Duration::from_millis(200)).await,
        "and nothing twice"
    );
}

#[actix_web::test]
async fn resume_past_read_and_collapsed_events_replays_what_is_stored_after_the_cursor() {
    let app = spawn_app().await;
    let token = app.token("ana").await;
    for i in 1..=4 {
        app.like("ana", &format!("p{i}"), "bob").await;
    }
    // 1..=3 read; a second like of p4 moves it from cursor 4 to 5.
    app.mark_read(&token, json!({"up_to": 3})).await;
    app.like("ana", "p4", "carl").await;

    // Missed 2, 3 (read) and 5 (unread): the summary lists only 5, so the store is read.
    let mut resumed = app.open_stream(&token, Some("1")).await;
    let unread = data(&resumed.expect().await);
    assert_eq!(
        (unread["count"].as_i64(), unread["cursor"].as_i64()),
        (Some(1), Some(5))
    );
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(resumed.expect().await.id);
    }
    assert_eq!(ids, ["2", "3", "5"]);
    assert!(resumed.is_quiet_for(Duration::from_millis(200)).await);

    // Missed only 5, which the summary lists: the same frame, once.
    let mut short = app.open_stream(&token, Some("4")).await;
    assert_eq!(short.expect().await.event, "unread");
    let replayed = short.expect().await;
    assert_eq!(
        (replayed.id.as_str(), replayed.event.as_str()),
        ("5", "post_liked")
    );
    assert_eq!(data(&replayed)["data"]["count"], 2, "the collapsed like");
    app.like("ana", "p6", "bob").await;
    assert_eq!(short.expect().await.id, "6", "then live events follow");
    assert!(short.is_quiet_for(Duration::from_millis(200)).await);
}

#[actix_web::test]
async fn resume_also_works_with_the_last_event_id_query_parameter() {
    let app = spawn_app().await;
    let token = app.token("ana").await;
    for i in 1..=3 {
        app.like("ana", &format!("p{i}"), "bob").await;
    }
    let request = app
        .client
        .get(app.url(&format!("/v1/events?last_event_id=1&access_token={token}")));
    let mut stream = crate::helpers::SseClient::open(request).await;
    assert_eq!(stream.expect().await.event, "unread");
    assert_eq!(stream.expect().await.id, "2");
    assert_eq!(stream.expect().await.id, "3");
}

/// Sends `total` likes to `user` from four concurrent writers, so that commits and publishes
/// interleave across workers.
fn likes_from_four_writers(
    app: &crate::helpers::TestApp,
    user: &'static str,
    total: i64,
) -> actix_web::rt::task::JoinHandle<()> {
    let (client, url, key) = (
        app.client.clone(),
        app.url("/v1/notify"),
        app.api_key.clone(),
    );
    actix_web::rt::spawn(async move {
        let tasks = (0..4).map(|w| {
            let (client, url, key) = (client.clone(), url.clone(), key.clone());
            async move {
                for i in 0..total / 4 {
                    let body = json!({"user_id": user, "kind": "post_liked",
                        "data": {"post_id": format!("w{w}-{i}"), "by": "bob"}});
                    let r = client
                        .post(&url)
                        .header("X-Api-Key", &key)
                        .json(&body)
                        .send()
                        .await;
                    assert!(r.expect("notify").status().is_success());
                }
            }
        });
        futures_util::future::join_all(tasks).await;
    })
}

/// Reconnects again and again while another task writes 1,000 events for the same user: the
/// client ends up with every cursor exactly once, in order.
#[actix_web::test]
async fn resume_while_another_task_writes_1000_events_loses_and_repeats_nothing() {
    const TOTAL: i64 = 1000;
    let app = spawn_app().await;
    let token = app.token("ana").await;

    let writer = likes_from_four_writers(&app, "ana", TOTAL);

    let mut received: Vec<i64> = Vec::new();
    // "0" asks for everything from the start; without an id the stream would begin live.
    let mut last = Some("0".to_owned());
    let mut reconnects = 0;
    while received.len() < TOTAL as usize {
        let mut stream = app.open_stream(&token, last.as_deref()).await;
        reconnects += 1;
        // Read a varying number of events, then drop the connection mid-stream.
        let take = 37 + reconnects * 13;
        let mut read = 0;
        while read < take && received.len() < TOTAL as usize {
            let event = stream.expect().await;
            if event.event == "unread" {
                continue;
            }
            let cursor: i64 = event.id.parse().unwrap();
            assert_eq!(data(&event)["cursor"], cursor);
            received.push(cursor);
            last = Some(event.id);
            read += 1;
        }
    }
    writer.await.unwrap();

    let expected: Vec<i64> = (1..=TOTAL).collect();
    assert_eq!(received, expected, "every event exactly once, in order");
    assert!(reconnects > 5, "the test reconnected {reconnects} times");
}

/// Streams opened at the head while four tasks write: the connect reads the head and the
/// stream goes on from it with nothing missed, whether the client sent no id or its last one.
#[actix_web::test]
async fn streams_opened_while_events_are_written_go_on_from_the_head_without_a_gap() {
    const TOTAL: i64 = 800;
    const READ_PER_STREAM: i64 = 15;
    let app = spawn_app().await;
    let token = app.token("ana").await;
    let writer = likes_from_four_writers(&app, "ana", TOTAL);

    let mut streams = 0;
    let mut last: Option<String> = None;
    loop {
        // Every other stream resumes from the last id read, the others ask for no past.
        let resume = if streams % 2 == 1 { last.clone() } else { None };
        let mut stream = app.open_stream(&token, resume.as_deref()).await;
        streams += 1;
        let summary = stream.expect().await;
        assert_eq!(summary.event, "unread");
        let head = data(&summary)["cursor"].as_i64().unwrap();
        let from = match &resume {
            Some(id) => id.parse::<i64>().unwrap().min(head),
            None => head,
        };
        if from + READ_PER_STREAM > TOTAL {
            break;
        }
        for expected in from + 1..=from + READ_PER_STREAM {
            let event = stream.expect().await;
            assert_eq!(
                event.id,
                expected.to_string(),
                "stream {streams} (resume {resume:?}, head {head})"
            );
            last = Some(event.id);
        }
    }
    writer.await.unwrap();
    assert!(
        streams > 5,
        "only {streams} streams opened during the writes"
    );
}

/// An `EventSource` resumes from the last `id:` it saw. A stream that opens at the head gives one
/// on its `unread` frame, and one that replays does not (it would skip the replay), so a client
/// that keeps dropping before it sees a stored event, while events are written, still gets every
/// event as its own frame in the end.
#[actix_web::test]
async fn a_stream_that_drops_before_its_first_stored_event_resumes_without_losing_any() {
    const TOTAL: i64 = 200;
    let app = spawn_app().await;
    let token = app.token("ana").await;
    for i in 1..=5 {
        app.like("ana", &format!("early-{i}"), "bob").await;
    }

    // The resume point, kept across connections as an EventSource keeps it.
    let mut last: Option<String> = None;
    let mut stream = app.open_stream(&token, None).await;
    let summary = stream.expect().await;
    assert_eq!(
        (summary.event.as_str(), summary.id.as_str()),
        ("unread", "5"),
        "a stream at the head opens with its resume point"
    );
    last = Some(summary.id).filter(|id| !id.is_empty()).or(last);
    drop(stream);

    let writer = likes_from_four_writers(&app, "ana", TOTAL);
    let mut replayed_summaries = 0;
    for _ in 0..20 {
        let mut stream = app.open_stream(&token, last.as_deref()).await;
        let summary = stream.expect().await;
        assert_eq!(summary.event, "unread");
        if data(&summary)["cursor"].as_i64() > Some(5) {
            replayed_summaries += 1;
            assert_eq!(summary.id, "", "a replay follows: no id on the summary");
        }
        last = Some(summary.id).filter(|id| !id.is_empty()).or(last);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    writer.await.unwrap();
    assert!(
        replayed_summaries > 0,
        "events were written between the connects"
    );
    assert_eq!(last.as_deref(), Some("5"));

    let mut stream = app.open_stream(&token, last.as_deref()).await;
    assert_eq!(stream.expect().await.event, "unread");
    for cursor in 6..=5 + TOTAL {
        let event = stream.expect().await;
        assert_eq!(
            (event.event.as_str(), event.id),
            ("post_liked", cursor.to_string())
        );
    }
    assert!(stream.is_quiet_for(Duration::from_millis(200)).await);
}

#[actix_web::test]
async fn a_cursor_ahead_of_the_store_restarts_at_the_head() {
    let app = spawn_app().await;
    let token = app.token("ana").await;
    app.like("ana", "p1", "bob").await;
    let mut stream = app.open_stream(&token, Some("999")).await;
    let summary = stream.expect().await;
    assert_eq!(summary.event, "unread");
    assert_eq!(
        summary.id, "1",
        "the client's resume point moves back to the head"
    );
    app.like("ana", "p2", "bob").await;
    assert_eq!(stream.expect().await.id, "2");
}

#[actix_web::test]
async fn the_unread_summary_lists_the_newest_unread_notifications() {
    let app = spawn_app().await;
    let token = app.token("ana").await;
    for i in 1..=12 {
        app.like("ana", &format!("p{i}"), "bob").await;
    }
    let mut stream = app.open_stream(&token, None).await;
    let unread = data(&stream.expect().await);
    assert_eq!(unread["count"], 12);
    let latest = unread["latest"].as_array().unwrap();
    assert_eq!(latest.len(), 10);
    assert_eq!(latest[0]["cursor"], 12);
    assert_eq!(unread["cursor"], 12, "the cursor the count was taken at");
    assert!(
        stream.is_quiet_for(Duration::from_millis(200)).await,
        "no replay without a cursor"
    );

    // Resuming: the count (and its cursor) covers the replayed events too, so a client that adds
    // replayed events with a cursor above it counts each unread event once.
    let mut resumed = app.open_stream(&token, Some("5")).await;
    let summary = resumed.expect().await;
    assert_eq!(
        summary.id, "",
        "a replay follows: the summary moves no resume point"
    );
    let unread = data(&summary);
    assert_eq!(
        (unread["count"].as_i64(), unread["cursor"].as_i64()),
        (Some(12), Some(12))
    );
    assert_eq!(resumed.expect().await.id, "6");
    app.like("ana", "p13", "bob").await;
    let mut ids = Vec::new();
    for _ in 6..=12 {
        ids.push(resumed.expect().await.id);
    }
    assert_eq!(ids.last().map(String::as_str), Some("13"));
}

/// A client with a tiny receive buffer that sends its request and then reads nothing.
async fn stalled_client(app: &crate::helpers::TestApp, token: &str) -> tokio::net::TcpStream {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let address = app.address.trim_start_matches("http://").parse().unwrap();
    let mut stream = socket.connect(address).await.unwrap();
    let request = format!(
        "GET /v1/events HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {token}\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");
    stream
}

/// Reads what the server wrote until the chunked body ends; returns every `id:` seen, in order.
async fn read_to_end_of_body(stream: &mut tokio::net::TcpStream) -> Vec<i64> {
    use tokio::io::AsyncReadExt;
    let mut seen = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    while !seen.ends_with(b"\r\n0\r\n\r\n") {
        let n = tokio::time::timeout(WAIT, stream.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        if n == 0 {
            break;
        }
        seen.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&seen)
        .lines()
        .filter_map(|l| l.strip_prefix("id: ")?.parse().ok())
        .collect()
}

#[actix_web::test]
async fn a_client_that_does_not_read_is_closed_while_a_fast_one_keeps_receiving() {
    const BATCH: i64 = 10;
    const MAX_BATCHES: i64 = 3000;
    let app = spawn_app_with(|s| s.sse.queue_capacity = 16).await;
    let token = app.token("ana").await;
    let mut fast = app.open_stream(&token, None).await;
    fast.expect().await;
    let mut slow = stalled_client(&app, &token).await;
    app.wait_metric("belay_sessions_open", 2).await;

    // Socket buffers fill first, then the slow session's queue; the fast client reads it all.
    let mut last = 0;
    for b in 0..MAX_BATCHES {
        let events: Vec<_> = (0..BATCH)
            .map(|i| {
                json!({"user_id": "ana", "kind": "post_liked",
                "data": {"post_id": format!("post-{b}-{i}-{}", "x".repeat(40)), "by": "bob"}})
            })
            .collect();
        assert_eq!(
            app.notify(json!({ "events": events })).await.status(),
            StatusCode::CREATED
        );
        for _ in 0..BATCH {
            last += 1;
            assert_eq!(
                fast.expect().await.id,
                last.to_string(),
                "the fast client keeps up"
            );
        }
        if app.metric("belay_sessions_closed_slow_total").await == 1 {
            break;
        }
    }
    assert_eq!(
        app.metric("belay_sessions_closed_slow_total").await,
        1,
        "slow client closed"
    );
    app.wait_metric("belay_sessions_open", 1).await;

    // The slow client's stream ends: what it got is every cursor from its start (the head on
    // the opening `unread` frame: 0, or later when the first notifies committed before the
    // stream read it) once and in order; it resumes from there and misses nothing.
    let seen = read_to_end_of_body(&mut slow).await;
    let start = seen.first().copied().expect("the opening unread frame");
    let from = seen.last().copied().unwrap_or_default();
    assert!(
        start < last,
        "the slow stream opened before the last notify"
    );
    assert_eq!(
        seen,
        (start..=from).collect::<Vec<_>>(),
        "the slow client's ids"
    );
    assert!(
        from < last,
        "the slow client fell behind ({from} of {last})"
    );
    let mut resumed = app.open_stream(&token, Some(&from.to_string())).await;
    resumed.expect().await;
    for cursor in (from + 1)..=last {
        assert_eq!(resumed.expect().await.id, cursor.to_string());
    }
}

/// Connections start with a small read buffer that grows on demand: a request head several
/// times its size (long cookies, proxy headers) still opens a stream, and a large notify body
/// sent on top of long headers is read whole.
#[actix_web::test]
async fn requests_with_heads_and_bodies_larger_than_the_first_read_buffer_are_read_whole() {
    let app = spawn_app().await;
    let token = app.token("ana").await;
    let padding = "x".repeat(6 * 1024);
    let request = app
        .client
        .get(app.url("/v1/events"))
        .bearer_auth(&token)
        .header("Cookie", format!("host_session={padding}"))
        .header("X-Forwarded-For", "203.0.113.7, 198.51.100.1");
    let mut stream = crate::helpers::SseClient::open(request).await;
    assert_eq!(stream.expect().await.event, "unread");

    let events: Vec<_> = (0..100)
        .map(|i| {
            json!({"user_id": "ana", "kind": "post_liked",
            "data": {"post_id": format!("a-rather-long-post-id-{i:040}"), "by": "bob"}})
        })
        .collect();
    let response = app
        .host_post("/v1/notify")
        .header("X-Padding", &padding)
        .json(&json!({ "events": events }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    for cursor in 1..=100 {
        assert_eq!(stream.expect().await.id, cursor.to_string());
    }
}

#[actix_web::test]
async fn sessions_beyond_the_per_user_cap_get_429() {
    let app = spawn_app_with(|s| s.sse.max_sessions_per_user = 2).await;
    let token = app.token("ana").await;
    let _a = app.open_stream(&token, None).await;
    let _b = app.open_stream(&token, None).await;
    let third = app.events_response(&token).await;
    assert_error(third, StatusCode::TOO_MANY_REQUESTS, "too_many_sessions").await;
    let other = app.token("bob").await;
    let _c = app.open_stream(&other, None).await;
    drop(_a);
    app.wait_metric("belay_sessions_open", 2).await;
    let _d = app.open_stream(&token, None).await;
}

#[actix_web::test]
async fn closed_sessions_leave_the_registry_after_10k_connects_and_disconnects() {
    const CONNECTS: usize = 10_000;
    const PARALLEL: usize = 50;
    let app = spawn_app_with(|s| {
        s.sse.max_sessions_per_user = 1_000;
        s.limits.user_requests_per_sec = 0;
    })
    .await;
    let token = app.token("ana").await;
    let opened = futures_util::stream::iter(0..CONNECTS)
        .map(|_| {
            let request = app.client.get(app.url("/v1/events")).bearer_auth(&token);
            async move {
                let mut stream = crate::helpers::SseClient::open(request).await;
                assert_eq!(stream.expect().await.event, "unread");
            }
        })
        .buffer_unordered(PARALLEL);
    use futures_util::StreamExt as _;
    assert_eq!(opened.count().await, CONNECTS);
    app.wait_metric("belay_sessions_open", 0).await;
    assert_eq!(
        app.metric("belay_sessions_opened_total").await,
        CONNECTS as i64
    );
    // The per-user slots came back too.
    let _again = app.open_stream(&token, None).await;
}

#[actix_web::test]
async fn idle_streams_get_heartbeat_comments() {
    let app = spawn_app_with(|s| s.sse.heartbeat_secs = 1).await;
    let token = app.token("ana").await;
    let response = app.events_response(&token).await;
    let mut body = response.bytes_stream();
    let mut seen = String::new();
    let found = tokio::time::timeout(WAIT, async {
        use futures_util::StreamExt as _;
        while let Some(chunk) = body.next().await {
            seen.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
            if seen.contains("\n: heartbeat\n") || seen.starts_with(": heartbeat\n") {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(found, Ok(true), "got {seen:?}");
    assert!(
        seen.starts_with("retry: 3000\n\n"),
        "retry hint first: {seen:?}"
    );
}

#[actix_web::test]
async fn graceful_shutdown_ends_open_streams_cleanly() {
    let app = spawn_app().await;
    let token = app.token("ana").await;
    let mut stream = app.open_stream(&token, None).await;
    stream.expect().await;
    app.like("ana", "p1", "bob").await;
    assert_eq!(stream.expect().await.id, "1");

    let stopping = actix_web::rt::spawn({
        let handle = app.shutdown.clone();
        async move { handle.shutdown().await }
    });
    assert!(
        stream.next().await.is_none(),
        "the stream ends instead of hanging"
    );
    tokio::time::timeout(WAIT, stopping).await.unwrap().unwrap();
}

#[actix_web::test]
async fn marking_read_in_one_tab_updates_the_unread_count_in_the_others() {
    let app = spawn_app().await;
    let token = app.token("ana").await;
    app.like("ana", "p1", "bob").await;
    app.like("ana", "p2", "bob").await;
    let mut other_tab = app.open_stream(&token, None).await;
    assert_eq!(data(&other_tab.expect().await)["count"], 2);

    app.mark_read(&token, json!({"up_to": 1})).await;

    let update = other_tab.expect().await;
    assert_eq!(update.event, "unread");
    // The count and the cursor it covers: both likes are at or below it, one of them unread.
    assert_eq!(data(&update), json!({"count": 1, "cursor": 2}));

    // A like after the read is above that cursor, so a client adds it to the count.
    app.like("ana", "p3", "bob").await;
    let like = other_tab.expect().await;
    assert_eq!(like.id, "3");
    app.mark_read(&token, json!({"up_to": 2})).await;
    assert_eq!(
        data(&other_tab.expect().await),
        json!({"count": 1, "cursor": 3})
    );
}

/// A burst far larger than a session's queue, sent in concurrent batches that the store commits
/// together: a client that keeps reading is not mistaken for a slow one, even with a queue
/// smaller than the hub's fan-out turn.
#[actix_web::test]
async fn a_burst_larger_than_the_queue_reaches_a_reading_client_without_closing_it() {
    const BATCHES: usize = 20;
    const PER_BATCH: usize = 100;
    let app = spawn_app_with(|s| s.sse.queue_capacity = 8).await;
    let token = app.token("ana").await;
    let mut stream = app.open_stream(&token, None).await;
    stream.expect().await;

    // The client reads while the host sends.
    let sender = {
        let (client, url, key) = (
            app.client.clone(),
            app.url("/v1/notify"),
            app.api_key.clone(),
        );
        actix_web::rt::spawn(async move {
            let sends = (0..BATCHES).map(|b| {
                let events: Vec<_> = (0..PER_BATCH)
                    .map(|i| {
                        json!({"user_id": "ana", "kind": "post_liked",
                        "data": {"post_id": format!("burst-{b}-{i}"), "by": "bob"}})
                    })
                    .collect();
                client
                    .post(&url)
                    .header("X-Api-Key", &key)
                    .json(&json!({ "events": events }))
                    .send()
            });
            for response in futures_util::future::join_all(sends).await {
                assert_eq!(response.unwrap().status(), StatusCode::CREATED);
            }
        })
    };
    for cursor in 1..=(BATCHES * PER_BATCH) {
        let Some(event) = stream.next().await else {
            panic!("closed after {}", cursor - 1)
        };
        assert_eq!(event.id, cursor.to_string());
    }
    sender.await.unwrap();
    assert_eq!(app.metric("belay_sessions_closed_slow_total").await, 0);
}

#[actix_web::test]
async fn a_catch_up_whose_reads_fail_for_a_moment_is_tried_again_and_the_stream_stays_open() {
    if let Some(server) = crate::helpers::server_backend() {
        eprintln!("skipped on {server:?}: the table is hidden with SQLite's ALTER TABLE");
        return;
    }
    let app = spawn_app().await;
    let token = app.token("ana").await;
    app.like("ana", "p1", "bob").await;
    app.like("ana", "p2", "bob").await;

    // The notifications cannot be read for a moment (a pool exhausted by a reconnect storm, a
    // database that blinked): the stream's connect catch-up fails.
    let db = sqlx::SqlitePool::connect(&format!("sqlite://{}", app.db_path.display()))
        .await
        .unwrap();
    let hide = |sql: &'static str| sqlx::query(sql).execute(&db);
    hide("ALTER TABLE notifications RENAME TO notifications_away")
        .await
        .unwrap();
    let mut resumed = app.open_stream(&token, Some("1")).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while app.metric("belay_catch_up_retries_total").await < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no catch-up retried"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    hide("ALTER TABLE notifications_away RENAME TO notifications")
        .await
        .unwrap();

    // The retry reads from the client's Last-Event-ID as the first attempt would have.
    assert_eq!(resumed.expect().await.event, "unread");
    assert_eq!(resumed.expect().await.id, "2");
    app.like("ana", "p3", "bob").await;
    assert_eq!(resumed.expect().await.id, "3", "then live events follow");
    assert!(resumed.is_quiet_for(Duration::from_millis(200)).await);
    assert_eq!(app.metric("belay_sessions_closed_catch_up_total").await, 0);
}
