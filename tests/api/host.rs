//! Host-app endpoints: notify (single, batch, idempotent, collapsing) and broadcast.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{assert_error, data, spawn_app, spawn_app_with};

#[actix_web::test]
async fn notify_requires_the_host_api_key_and_writes_nothing_without_it() {
    let app = spawn_app().await;
    let body =
        json!({"user_id": "ana", "kind": "post_liked", "data": {"post_id": "p1", "by": "bob"}});
    let missing = app
        .client
        .post(app.url("/v1/notify"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_error(missing, StatusCode::UNAUTHORIZED, "unauthorized").await;
    let wrong = app
        .client
        .post(app.url("/v1/notify"))
        .header("X-Api-Key", "not-the-key")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_error(wrong, StatusCode::FORBIDDEN, "forbidden").await;
    let user_token = app.token("ana").await;
    let with_user_token = app
        .client
        .post(app.url("/v1/notify"))
        .bearer_auth(&user_token)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_error(with_user_token, StatusCode::UNAUTHORIZED, "unauthorized").await;
    assert_eq!(app.list(&user_token, "").await["notifications"], json!([]));
}

#[actix_web::test]
async fn a_retried_notify_with_the_same_idempotency_key_creates_nothing_new() {
    let app = spawn_app().await;
    let token = app.token("ana").await;
    let mut stream = app.open_stream(&token, None).await;
    stream.expect().await;
    let body = json!({"user_id": "ana", "kind": "post_liked",
        "data": {"post_id": "p1", "by": "bob"}, "idempotency_key": "like-42"});

    let first = app.notify(body.clone()).await;
    assert_eq!(first.status(), StatusCode::CREATED);
    let first: Value = first.json().await.unwrap();
    let retry = app.notify(body.clone()).await;
    assert_eq!(retry.status(), StatusCode::OK);
    let retry: Value = retry.json().await.unwrap();

    assert_eq!(first["results"][0]["outcome"], "created");
    assert_eq!(retry["results"][0]["outcome"], "duplicate");
    assert_eq!(retry["results"][0]["id"], first["results"][0]["id"]);
    assert_eq!(retry["results"][0]["cursor"], 1);
    let list = app.list(&token, "").await;
    assert_eq!(list["notifications"].as_array().unwrap().len(), 1);
    assert_eq!(
        list["notifications"][0]["data"]["count"], 1,
        "the retry did not count twice"
    );
    assert_eq!(stream.expect().await.id, "1");
    assert!(
        stream.is_quiet_for(Duration::from_millis(200)).await,
        "one live event only"
    );

    // Keys are per user: the same key for another user is another request.
    let mut for_bob = body.clone();
    for_bob["user_id"] = json!("bob");
    let bob = app.notify(for_bob).await;
    assert_eq!(bob.status(), StatusCode::CREATED);
    let bob: Value = bob.json().await.unwrap();
    assert_eq!(bob["results"][0]["outcome"], "created");
    assert_ne!(bob["results"][0]["id"], first["results"][0]["id"]);
}

#[actix_web::test]
async fn likes_of_the_same_unread_post_collapse_into_one_notification() {
    let app = spawn_app().await;
    let token = app.token("ana").await;
    let mut stream = app.open_stream(&token, None).await;
    stream.expect().await;

    let first = app.like("ana", "p1", "bob").await;
    app.like("ana", "p1", "cy").await;
    let third = app.like("ana", "p1", "dee").await;
    app.like("ana", "p2", "bob").await;
    assert_eq!(third["outcome"], "collapsed");
    assert_eq!(third["id"], first["id"]);

    let one = data(&stream.expect().await);
    let two = data(&stream.expect().await);
    let three = data(&stream.expect().await);
    assert_eq!(one["id"], first["id"]);
    assert_eq!(two["id"], first["id"], "an update of the same notification");
    assert_eq!(
        (
            one["cursor"].clone(),
            two["cursor"].clone(),
            three["cursor"].clone()
        ),
        (json!(1), json!(2), json!(3))
    );
    assert_eq!(three["data"]["text"], "dee and 2 others liked your post");
    assert_eq!(three["data"]["count"], 3);

    let list = app.list(&token, "").await;
    let items = list["notifications"].as_array().unwrap();
    assert_eq!(items.len(), 2, "one row per post, not one per like");
    assert_eq!(list["unread"], 2);

    // Once read, the next like of that post starts a new notification.
    let read = app
        .client
        .post(app.url("/v1/notifications/read"))
        .bearer_auth(&token)
        .json(&json!({"ids": [first["id"]]}))
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), StatusCode::OK);
    let again = app.like("ana", "p1", "eve").await;
    assert_eq!(again["outcome"], "created");
    assert_ne!(again["id"], first["id"]);
}

#[actix_web::test]
async fn a_batch_is_stored_for_several_users_in_one_request() {
    let app = spawn_app().await;
    let response = app
        .notify(json!({"events": [
            {"user_id": "ana", "kind": "post_liked", "data": {"post_id": "p1", "by": "bob"}},
            {"user_id": "cy", "kind": "post_liked", "data": {"post_id": "p9", "by": "bob"}},
            {"user_id": "ana", "kind": "post_liked", "data": {"post_id": "p2", "by": "bob"}},
        ]}))
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let body: Value = response.json().await.unwrap();
    let cursors: Vec<_> = body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["user_id"].as_str().unwrap().to_owned(),
                r["cursor"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        cursors,
        [("ana".into(), 1), ("cy".into(), 1), ("ana".into(), 2)]
    );
}

#[actix_web::test]
async fn a_broadcast_reaches_every_connected_user_and_is_not_stored() {
    let app = spawn_app().await;
    let ana = app.token("ana").await;
    let bob = app.token("bob").await;
    let mut a = app.open_stream(&ana, None).await;
    let mut b = app.open_stream(&bob, None).await;
    a.expect().await;
    b.expect().await;

    let response = app
        .host_post("/v1/broadcast")
        .json(&json!({"kind": "new_post", "data": {"post_id": "p1", "by": "cy", "title": "New boulder"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);

    for stream in [&mut a, &mut b] {
        let event = stream.expect().await;
        assert_eq!(event.event, "new_post");
        assert_eq!(data(&event)["data"]["title"], "New boulder");
    }
    assert_eq!(app.list(&ana, "").await["notifications"], json!([]));
}

/// Broadcasts that wait together are offered to a session together, never more at once than
/// half its queue: a client that keeps reading gets every one and is not closed as slow.
#[actix_web::test]
async fn broadcasts_published_together_reach_a_reading_client_with_a_small_queue() {
    const BROADCASTS: usize = 200;
    let app = spawn_app_with(|s| s.sse.queue_capacity = 4).await;
    let ana = app.token("ana").await;
    let mut stream = app.open_stream(&ana, None).await;
    stream.expect().await;

    let sends = (0..BROADCASTS).map(|i| {
        app.host_post("/v1/broadcast")
            .json(&json!({"kind": "new_post", "data": {"post_id": format!("p{i}"), "by": "cy", "title": "t"}}))
            .send()
    });
    for response in futures_util::future::join_all(sends).await {
        assert_eq!(response.unwrap().status(), StatusCode::ACCEPTED);
    }
    let mut posts = Vec::new();
    for _ in 0..BROADCASTS {
        let Some(event) = stream.next().await else {
            panic!("closed after {} broadcasts", posts.len())
        };
        posts.push(data(&event)["data"]["post_id"].as_str().unwrap().to_owned());
    }
    posts.sort();
    posts.dedup();
    assert_eq!(posts.len(), BROADCASTS);
    assert_eq!(app.metric("belay_sessions_closed_slow_total").await, 0);
}

#[actix_web::test]
async fn the_host_cannot_send_kinds_that_belay_produces() {
    let app = spawn_app().await;
    let forged = app
        .notify(json!({"user_id": "ana", "kind": "match_found", "data": {
            "match_id": uuid::Uuid::new_v4(), "opponent": "bob", "discipline": "boulder",
            "ready_deadline": "2030-01-01T00:00:00Z"}}))
        .await;
    assert_error(forged, StatusCode::BAD_REQUEST, "kind_not_allowed").await;
    let wrong_way = app
        .host_post("/v1/broadcast")
        .json(&json!({"kind": "post_liked", "data": {"post_id": "p", "by": "b"}}))
        .send()
        .await
        .unwrap();
    assert_error(wrong_way, StatusCode::BAD_REQUEST, "kind_not_allowed").await;
}
