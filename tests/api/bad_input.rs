//! Bad input gets a 4xx with a JSON error body and changes nothing.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{TestApp, assert_error, spawn_app};

async fn nothing_stored(app: &TestApp, user: &str) {
    let token = app.token(user).await;
    assert_eq!(
        app.list(&token, "").await["notifications"],
        json!([]),
        "nothing was written"
    );
}

fn like(user: &str) -> Value {
    json!({"user_id": user, "kind": "post_liked", "data": {"post_id": "p1", "by": "bob"}})
}

#[actix_web::test]
async fn malformed_or_mistyped_notify_bodies_are_refused() {
    let app = spawn_app().await;
    let raw = |body: &'static str, content_type: &'static str| {
        app.host_post("/v1/notify")
            .header("Content-Type", content_type)
            .body(body)
            .send()
    };
    assert_error(
        raw("{bad json", "application/json").await.unwrap(),
        StatusCode::BAD_REQUEST,
        "invalid_json",
    )
    .await;
    assert_error(
        raw("", "application/json").await.unwrap(),
        StatusCode::BAD_REQUEST,
        "invalid_json",
    )
    .await;
    assert_error(
        raw("[1,2]", "application/json").await.unwrap(),
        StatusCode::BAD_REQUEST,
        "invalid_request",
    )
    .await;
    assert_error(
        raw(r#"{"user_id":"ana"}"#, "text/plain").await.unwrap(),
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    )
    .await;

    let cases = [
        (
            json!({"user_id": "ana", "kind": "nope", "data": {}}),
            "unknown_kind",
        ),
        (
            json!({"user_id": "ana", "kind": "rank_changed", "data": {}}),
            "kind_not_allowed",
        ),
        (
            json!({"user_id": "ana", "kind": "post_liked", "data": {"post_id": "p1"}}),
            "invalid_data",
        ),
        (
            json!({"user_id": "ana", "kind": "post_liked", "data": {"post_id": 5, "by": "b"}}),
            "invalid_data",
        ),
        (
            json!({"user_id": "ana", "kind": "post_liked", "data": {"post_id": "x".repeat(65), "by": "b"}}),
            "invalid_data",
        ),
        (
            json!({"user_id": "", "kind": "post_liked", "data": {"post_id": "p", "by": "b"}}),
            "invalid_request",
        ),
        (
            json!({"user_id": "a/b", "kind": "post_liked", "data": {"post_id": "p", "by": "b"}}),
            "invalid_request",
        ),
        (
            json!({"kind": "post_liked", "data": {"post_id": "p", "by": "b"}}),
            "invalid_request",
        ),
        (
            json!({"user_id": "ana", "kind": "post_liked", "data": {"post_id": "p", "by": "b"}, "extra": 1}),
            "invalid_request",
        ),
        (
            json!({"user_id": "ana", "kind": "post_liked", "data": {"post_id": "p", "by": "b"}, "idempotency_key": ""}),
            "invalid_request",
        ),
        (json!({"events": []}), "invalid_request"),
        (json!({"events": "nope"}), "invalid_request"),
    ];
    for (body, kind) in cases {
        let response = app.notify(body.clone()).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{body}");
        assert_error(response, StatusCode::BAD_REQUEST, kind).await;
    }
    nothing_stored(&app, "ana").await;
}

/// A key given twice is refused, in a single body, a batch and each of its items, as the typed
/// bodies of the other endpoints refuse it: the last `user_id` or `idempotency_key` must not
/// win silently.
#[actix_web::test]
async fn repeated_keys_in_notify_and_broadcast_bodies_are_refused() {
    let app = spawn_app().await;
    let raw = |path: &'static str, body: String| {
        app.host_post(path)
            .header("Content-Type", "application/json")
            .body(body)
            .send()
    };
    let data = r#""data":{"post_id":"p1","by":"cy"}"#;
    let single_user = format!(r#"{{"user_id":"ana","user_id":"bob","kind":"post_liked",{data}}}"#);
    let single_key = format!(
        r#"{{"user_id":"ana","kind":"post_liked",{data},"idempotency_key":"a","idempotency_key":"b"}}"#
    );
    let item = format!(r#"{{"user_id":"ana","kind":"post_liked",{data}}}"#);
    let batch_twice = format!(r#"{{"events":[{item}],"events":[{item}]}}"#);
    let batch_item = format!(
        r#"{{"events":[{item},{{"user_id":"bob","kind":"post_liked",{data},"user_id":"ana"}}]}}"#
    );
    let in_data =
        r#"{"user_id":"ana","kind":"post_liked","data":{"post_id":"p1","post_id":"p2","by":"cy"}}"#;
    for (body, field) in [
        (single_user, "user_id"),
        (single_key, "idempotency_key"),
        (batch_twice, "events"),
        (batch_item, "user_id"),
        (in_data.to_owned(), "post_id"),
    ] {
        let refused = assert_error(
            raw("/v1/notify", body.clone()).await.unwrap(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        )
        .await;
        assert!(
            refused["message"]
                .as_str()
                .unwrap()
                .contains(&format!("duplicate field `{field}`")),
            "{body}: {refused}"
        );
    }
    for body in [
        r#"{"kind":"new_post","kind":"new_post","data":{"post_id":"p","by":"b","title":"t"}}"#,
        r#"{"kind":"new_post","data":{"post_id":"p","by":"b","title":"t","title":"u"}}"#,
    ] {
        assert_error(
            raw("/v1/broadcast", body.to_owned()).await.unwrap(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        )
        .await;
    }
    nothing_stored(&app, "ana").await;
    nothing_stored(&app, "bob").await;
}

#[actix_web::test]
async fn a_batch_with_one_bad_event_writes_none_of_it() {
    let app = spawn_app().await;
    let response = app
        .notify(json!({"events": [like("ana"), like("ana"), {"user_id": "ana", "kind": "nope", "data": {}}]}))
        .await;
    let body = assert_error(response, StatusCode::BAD_REQUEST, "unknown_kind").await;
    assert!(
        body["message"].as_str().unwrap().starts_with("events[2]"),
        "{body}"
    );
    let too_many: Vec<Value> = (0..101).map(|_| like("ana")).collect();
    let response = app.notify(json!({ "events": too_many })).await;
    assert_error(response, StatusCode::BAD_REQUEST, "invalid_request").await;
    nothing_stored(&app, "ana").await;
}

#[actix_web::test]
async fn oversized_bodies_get_413_and_write_nothing() {
    let app = spawn_app().await;
    let mut body = like("ana");
    body["data"]["padding"] = json!("x".repeat(70 * 1024));
    let response = app.notify(body).await;
    assert_error(response, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large").await;
    nothing_stored(&app, "ana").await;
}

#[actix_web::test]
async fn bad_cursors_and_list_parameters_are_refused() {
    let app = spawn_app().await;
    let token = app.token("ana").await;
    for id in ["abc", "-1", "1.5", "99999999999999999999"] {
        let response = app
            .client
            .get(app.url("/v1/events"))
            .bearer_auth(&token)
            .header("Last-Event-ID", id)
            .send()
            .await
            .unwrap();
        assert_error(response, StatusCode::BAD_REQUEST, "invalid_cursor").await;
    }
    let response = app.get_as(&token, "/v1/events?last_event_id=x").await;
    assert_error(response, StatusCode::BAD_REQUEST, "invalid_cursor").await;
    for (query, kind) in [
        ("?after=x", "invalid_cursor"),
        ("?before=-3", "invalid_cursor"),
        ("?limit=0", "invalid_request"),
        ("?limit=100000", "invalid_request"),
        ("?limit=abc", "invalid_request"),
        ("?unread=maybe", "invalid_request"),
    ] {
        let response = app
            .get_as(&token, &format!("/v1/notifications{query}"))
            .await;
        assert_error(response, StatusCode::BAD_REQUEST, kind).await;
    }
}

#[actix_web::test]
async fn read_requests_need_exactly_one_valid_selector() {
    let app = spawn_app().await;
    let token = app.token("ana").await;
    app.like("ana", "p1", "bob").await;
    for body in [
        json!({}),
        json!({"all": true, "up_to": 3}),
        json!({"ids": []}),
        json!({"ids": ["not-a-uuid"]}),
        json!({"up_to": "x"}),
        json!({"up_to": -1}),
        json!({"everything": true}),
    ] {
        let response = app
            .client
            .post(app.url("/v1/notifications/read"))
            .bearer_auth(&token)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{body}");
        assert_error(response, StatusCode::BAD_REQUEST, "invalid_request").await;
    }
    assert_eq!(
        app.list(&token, "").await["unread"],
        1,
        "nothing was marked"
    );
}

#[actix_web::test]
async fn unknown_paths_and_methods_get_json_errors() {
    let app = spawn_app().await;
    let response = app.client.get(app.url("/v1/nope")).send().await.unwrap();
    assert_error(response, StatusCode::NOT_FOUND, "not_found").await;
    // A 405 says which methods the path has (RFC 9110 section 15.5.6).
    for (method, path, allow) in [
        (reqwest::Method::GET, "/v1/notify", "POST"),
        (reqwest::Method::PUT, "/v1/events", "GET"),
        (reqwest::Method::PATCH, "/v1/queue", "POST, DELETE"),
        (reqwest::Method::POST, "/readyz", "GET"),
    ] {
        let response = app
            .client
            .request(method.clone(), app.url(path))
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.headers().get("allow").map(|v| v.to_str().unwrap()),
            Some(allow),
            "{method} {path}"
        );
        assert_error(
            response,
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        )
        .await;
    }
    let response = app
        .host_post("/v1/broadcast")
        .json(&json!({"kind": "new_post", "data": {"post_id": "p", "by": "b", "title": "x".repeat(201)}}))
        .send()
        .await
        .unwrap();
    assert_error(response, StatusCode::BAD_REQUEST, "invalid_data").await;
}

#[actix_web::test]
async fn health_and_readiness_answer() {
    let app = spawn_app().await;
    let health = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    let ready = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), StatusCode::OK);
    assert_eq!(ready.json::<Value>().await.unwrap()["status"], "ready");
    let page = app.client.get(app.url("/")).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    assert!(page.text().await.unwrap().contains("EventSource"));
}

#[actix_web::test]
async fn typed_bodies_must_be_json_objects_not_arrays_of_their_fields() {
    let app = spawn_app().await;
    let ana = app.token("ana").await;
    let user_post = |method: reqwest::Method, path: &str, body: &str| {
        app.client
            .request(method, app.url(path))
            .bearer_auth(&ana)
            .header("Content-Type", "application/json")
            .body(body.to_owned())
            .send()
    };
    // Each array holds the fields in declaration order: what serde's derived structs would take.
    let post = reqwest::Method::POST;
    let cases = [
        (post.clone(), "/v1/queue", r#"["boulder", null]"#),
        (post.clone(), "/v1/challenges", r#"["bob", "lead"]"#),
        (
            post.clone(),
            "/v1/ascents",
            r#"["r1", "boulder", "7A", null]"#,
        ),
        (post.clone(), "/v1/notifications/read", "[[]]"),
        (post.clone(), "/v1/devices", r#"["fcm", "token"]"#),
        (
            reqwest::Method::PUT,
            "/v1/preferences",
            r#"[{}, "UTC", null]"#,
        ),
        (post.clone(), "/v1/dev/token", r#"["bob"]"#),
    ];
    for (method, path, body) in cases {
        let refused = assert_error(
            user_post(method, path, body).await.unwrap(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        )
        .await;
        let message = refused["message"].as_str().unwrap();
        assert!(
            message.contains("expected a JSON object"),
            "{path}: {refused}"
        );
    }
    let broadcast = app
        .host_post("/v1/broadcast")
        .header("Content-Type", "application/json")
        .body(r#"["new_post", {"post_id": "p", "by": "b", "title": "t"}]"#)
        .send()
        .await
        .unwrap();
    assert_error(broadcast, StatusCode::BAD_REQUEST, "invalid_request").await;

    let me: Value = app.get_as(&ana, "/v1/me/match").await.json().await.unwrap();
    assert_eq!(me["queue"], Value::Null, "the array join changed nothing");
    assert_eq!(me["challenges"]["outgoing"], json!([]));
    nothing_stored(&app, "ana").await;
}
