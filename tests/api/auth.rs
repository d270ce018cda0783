//! Authentication of climbers (JWT) and of the dev-token endpoint.

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{EncodingKey, Header};
use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{JWT_SECRET, SseClient, assert_error, spawn_app, spawn_app_with};

fn token_with(secret: &str, sub: &str, exp_offset: i64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let claims = json!({"sub": sub, "exp": now + exp_offset, "iat": now});
    jsonwebtoken::encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

#[actix_web::test]
async fn a_host_signed_token_works_from_header_cookie_or_query() {
    let app = spawn_app().await;
    let token = token_with(JWT_SECRET, "ana", 600);
    let header = app.client.get(app.url("/v1/events")).bearer_auth(&token);
    let cookie = app
        .client
        .get(app.url("/v1/events"))
        .header("Cookie", format!("belay_token={token}"));
    let query = app
        .client
        .get(app.url(&format!("/v1/events?access_token={token}")));
    for request in [header, cookie, query] {
        let mut stream = SseClient::open(request).await;
        assert_eq!(stream.expect().await.event, "unread");
    }
}

/// Authentication scheme names are case-insensitive (RFC 9110 section 11.1).
#[actix_web::test]
async fn the_bearer_scheme_is_accepted_in_any_case() {
    let app = spawn_app().await;
    let token = token_with(JWT_SECRET, "ana", 600);
    for scheme in ["Bearer", "bearer", "BEARER"] {
        let response = app
            .client
            .get(app.url("/v1/notifications"))
            .header("Authorization", format!("{scheme} {token}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{scheme}");
    }
}

#[actix_web::test]
async fn missing_bad_foreign_and_expired_tokens_get_401() {
    let app = spawn_app().await;
    let cases = [
        None,
        Some("garbage".to_owned()),
        Some(token_with("some-other-secret", "ana", 600)),
        Some(token_with(JWT_SECRET, "ana", -3600)),
        Some(token_with(JWT_SECRET, "not a valid id", 600)),
    ];
    for token in cases {
        for path in ["/v1/events", "/v1/notifications"] {
            let mut request = app.client.get(app.url(path));
            if let Some(t) = &token {
                request = request.bearer_auth(t);
            }
            let response = request.send().await.unwrap();
            assert_eq!(response.headers()["www-authenticate"], "Bearer");
            assert_error(response, StatusCode::UNAUTHORIZED, "unauthorized").await;
        }
    }
}

#[actix_web::test]
async fn an_expired_token_is_reported_as_expired() {
    let app = spawn_app().await;
    let response = app
        .get_as(&token_with(JWT_SECRET, "ana", -3600), "/v1/notifications")
        .await;
    let body = assert_error(response, StatusCode::UNAUTHORIZED, "unauthorized").await;
    assert_eq!(body["message"], "token expired");
}

#[actix_web::test]
async fn dev_tokens_exist_only_when_enabled() {
    let app = spawn_app_with(|s| s.auth.dev_tokens = false).await;
    let response = app
        .client
        .post(app.url("/v1/dev/token"))
        .json(&json!({"user_id": "ana"}))
        .send()
        .await
        .unwrap();
    assert_error(response, StatusCode::NOT_FOUND, "not_found").await;
    let config = app
        .client
        .get(app.url("/v1/dev/config"))
        .send()
        .await
        .unwrap();
    assert_error(config, StatusCode::NOT_FOUND, "not_found").await;
}

#[actix_web::test]
async fn a_dev_token_is_a_token_for_that_user() {
    let app = spawn_app().await;
    let token = app.token("ana").await;
    app.like("ana", "p1", "bob").await;
    let list = app.list(&token, "").await;
    assert_eq!(list["notifications"].as_array().unwrap().len(), 1);
    let bad = app
        .client
        .post(app.url("/v1/dev/token"))
        .json(&json!({"user_id": "a b"}))
        .send()
        .await
        .unwrap();
    assert_error(bad, StatusCode::BAD_REQUEST, "invalid_request").await;
}

#[actix_web::test]
async fn requests_beyond_the_per_user_rate_get_429_with_retry_after() {
    let app = spawn_app_with(|s| {
        s.limits.user_requests_per_sec = 1;
        s.limits.user_request_burst = 3;
    })
    .await;
    let ana = app.token("ana").await;
    let bob = app.token("bob").await;
    for _ in 0..3 {
        assert_eq!(
            app.get_as(&ana, "/v1/notifications").await.status(),
            StatusCode::OK
        );
    }
    let limited = app.get_as(&ana, "/v1/notifications").await;
    assert_eq!(limited.headers()["retry-after"], "1");
    assert_error(limited, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
    let stream = app.events_response(&ana).await;
    assert_error(stream, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
    assert_eq!(
        app.get_as(&bob, "/v1/notifications").await.status(),
        StatusCode::OK,
        "per user"
    );
}

#[actix_web::test]
async fn pages_of_allowed_origins_may_use_the_stream_from_the_browser() {
    let app =
        spawn_app_with(|s| s.server.cors_allowed_origins = vec!["https://app.example".into()])
            .await;
    let preflight = app
        .client
        .request(reqwest::Method::OPTIONS, app.url("/v1/notifications"))
        .header("Origin", "https://app.example")
        .header("Access-Control-Request-Method", "GET")
        .header("Access-Control-Request-Headers", "authorization")
        .send()
        .await
        .unwrap();
    assert!(preflight.status().is_success());
    assert_eq!(
        preflight.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    assert_eq!(
        preflight.headers()["access-control-allow-credentials"],
        "true"
    );

    let token = app.token("ana").await;
    let stream = app
        .client
        .get(app.url("/v1/events"))
        .header("Origin", "https://app.example")
        .header("Cookie", format!("belay_token={token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), StatusCode::OK);
    assert_eq!(
        stream.headers()["access-control-allow-origin"],
        "https://app.example"
    );

    let foreign = app
        .client
        .get(app.url("/v1/notifications"))
        .header("Origin", "https://evil.example")
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert!(
        foreign
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );
}

#[actix_web::test]
async fn without_configured_origins_no_cors_headers_are_sent() {
    let app = spawn_app().await;
    let token = app.token("ana").await;
    let response = app
        .client
        .get(app.url("/v1/notifications"))
        .header("Origin", "https://app.example")
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );
}
