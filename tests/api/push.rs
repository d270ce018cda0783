//! Push for offline climbers, end to end: the real server with its store (SQLite, or the
//! server `BELAY_TEST_BACKEND` names), a fake OAuth token endpoint and a fake FCM on loopback
//! that check what they receive, and a fake Web Push service that decrypts each payload with
//! the browser's key.

use std::collections::HashSet;
use std::io::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use belay::push::fake::{FakeServer, Recorded, Reply};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use reqwest::StatusCode;
use serde_json::{Value, json};
use web_push_native::p256;
use web_push_native::p256::elliptic_curve::sec1::ToEncodedPoint as _;

use crate::helpers::{TestApp, WAIT, assert_error, spawn_app_with};

const PRIVATE_KEY: &str = include_str!("../../src/push/testdata/service-account-key.pem");
const PUBLIC_KEY: &str = include_str!("../../src/push/testdata/service-account-public.pem");
const PROJECT: &str = "belay-test";
const DEVICE: &str = "dTk2:APA91bH-example_registration.token";

/// A fake OAuth token endpoint and a fake FCM: the first issues access tokens for assertions
/// signed with the service account's key; the second refuses any bearer it did not issue,
/// then answers through `answer` (given the request's number, from 0).
struct Fcm {
    _oauth: FakeServer,
    fcm: FakeServer,
    credentials: tempfile::NamedTempFile,
}

impl Fcm {
    fn start(answer: impl Fn(usize) -> Reply + Send + Sync + 'static) -> Fcm {
        let issued: Arc<Mutex<HashSet<String>>> = Arc::default();
        let minted = issued.clone();
        let oauth = FakeServer::start(move |request| {
            let form = request.form();
            let assertion = form
                .iter()
                .find(|(k, _)| k == "assertion")
                .map(|(_, v)| v.clone())
                .unwrap_or_default();
            let mut validation = Validation::new(Algorithm::RS256);
            validation.validate_aud = false;
            let key = DecodingKey::from_rsa_pem(PUBLIC_KEY.as_bytes()).unwrap();
            if jsonwebtoken::decode::<Value>(&assertion, &key, &validation).is_err() {
                return Reply::json(400, json!({"error": "invalid_grant"}));
            }
            let token = format!("access-{}", uuid::Uuid::new_v4());
            minted.lock().unwrap().insert(token.clone());
            Reply::json(
                200,
                json!({"access_token": token, "expires_in": 3600, "token_type": "Bearer"}),
            )
        });
        let count = Mutex::new(0usize);
        let fcm = FakeServer::start(move |request| {
            let bearer = request
                .header("authorization")
                .and_then(|h| h.strip_prefix("Bearer "))
                .unwrap_or_default()
                .to_owned();
            if !issued.lock().unwrap().contains(&bearer) {
                return Reply::json(
                    401,
                    json!({"error": {"code": 401, "status": "UNAUTHENTICATED"}}),
                );
            }
            let mut n = count.lock().unwrap();
            let reply = answer(*n);
            *n += 1;
            reply
        });
        let mut credentials = tempfile::NamedTempFile::new().unwrap();
        let account = json!({
            "type": "service_account",
            "project_id": PROJECT,
            "private_key_id": "key-1",
            "private_key": PRIVATE_KEY,
            "client_email": "push@belay-test.iam.gserviceaccount.com",
            "token_uri": format!("{}/token", oauth.url),
        });
        credentials
            .write_all(account.to_string().as_bytes())
            .unwrap();
        Fcm {
            _oauth: oauth,
            fcm,
            credentials,
        }
    }

    fn ok() -> Fcm {
        Fcm::start(|n| {
            Reply::json(
                200,
                json!({"name": format!("projects/{PROJECT}/messages/{n}")}),
            )
        })
    }

    /// The sends FCM accepted the bearer of.
    fn sends(&self) -> Vec<Value> {
        self.fcm
            .requests()
            .iter()
            .filter(|r| r.path.ends_with("/messages:send"))
            .map(Recorded::json)
            .collect()
    }

    /// Waits until FCM has seen `n` sends, and returns them.
    async fn wait_sends(&self, n: usize) -> Vec<Value> {
        let started = Instant::now();
        loop {
            let sends = self.sends();
            if sends.len() >= n {
                return sends;
            }
            assert!(
                started.elapsed() < WAIT,
                "FCM saw {} sends, expected {n}",
                sends.len()
            );
            actix_web::rt::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn spawn_with_push(fcm: &Fcm, grace_ms: u64) -> TestApp {
    let path = fcm.credentials.path().display().to_string();
    let base = fcm.fcm.url.clone();
    spawn_app_with(move |s| {
        s.push.fcm.credentials_file = path;
        s.push.fcm.base_url = base;
        s.push.grace_ms = grace_ms;
        s.push.poll_ms = 50;
    })
    .await
}

async fn register(app: &TestApp, token: &str, body: Value) -> reqwest::Response {
    app.client
        .post(app.url("/v1/devices"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap()
}

async fn register_fcm(app: &TestApp, token: &str, device: &str) -> Value {
    let response = register(app, token, json!({"platform": "fcm", "token": device})).await;
    assert!(response.status().is_success(), "{}", response.status());
    response.json().await.unwrap()
}

async fn devices(app: &TestApp, token: &str) -> Vec<Value> {
    let response = app.get_as(token, "/v1/devices").await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    body["devices"].as_array().unwrap().clone()
}

async fn put_preferences(app: &TestApp, token: &str, body: Value) -> reqwest::Response {
    app.client
        .put(app.url("/v1/preferences"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap()
}

/// Long enough for a due job to be taken and sent: grace, a poll, a send.
async fn settle(grace_ms: u64) {
    actix_web::rt::time::sleep(Duration::from_millis(grace_ms + 600)).await;
}

#[actix_web::test]
async fn an_offline_climber_is_pushed_through_fcm_with_the_cursor_to_resume_from() {
    let fcm = Fcm::ok();
    let app = spawn_with_push(&fcm, 0).await;
    let ana = app.token("ana").await;
    let device = register_fcm(&app, &ana, DEVICE).await;
    assert_eq!(device["platform"], "fcm");
    assert_eq!(device["token"], DEVICE);

    let stored = app.like("ana", "p1", "bob").await;

    let sends = fcm.wait_sends(1).await;
    let message = &sends[0]["message"];
    assert_eq!(message["token"], DEVICE);
    assert_eq!(message["data"]["kind"], "post_liked");
    assert_eq!(message["data"]["notification_id"], stored["id"]);
    assert_eq!(
        message["data"]["cursor"],
        stored["cursor"].as_i64().unwrap().to_string()
    );
    for value in message["data"].as_object().unwrap().values() {
        assert!(value.is_string(), "FCM takes string data only: {value}");
    }
    assert!(
        !message["notification"]["title"]
            .as_str()
            .unwrap()
            .is_empty()
    );
    assert!(message["android"]["ttl"].as_str().unwrap().ends_with('s'));
    app.wait_metric(
        "belay_push_sends_total{provider=\"fcm\",outcome=\"sent\"}",
        1,
    )
    .await;
    settle(0).await;
    assert_eq!(fcm.sends().len(), 1, "one event, one device: one push");
}

#[actix_web::test]
async fn a_climber_with_a_live_stream_or_who_comes_online_within_the_grace_gets_no_push() {
    let fcm = Fcm::ok();
    // A grace that a loaded machine cannot outrun between the like and the late connect.
    let app = spawn_with_push(&fcm, 3000).await;
    let ana = app.token("ana").await;
    let cleo = app.token("cleo").await;
    register_fcm(&app, &ana, DEVICE).await;
    register_fcm(&app, &cleo, "cleo-device-token").await;

    // Ana is online when the event happens: no job at all.
    let mut stream = app.open_stream(&ana, None).await;
    stream.expect().await;
    app.like("ana", "p1", "bob").await;
    // Cleo comes online within the grace after hers.
    app.like("cleo", "p2", "bob").await;
    let mut late = app.open_stream(&cleo, None).await;
    late.expect().await;

    settle(3000).await;
    assert!(fcm.sends().is_empty(), "{:?}", fcm.sends());
    app.wait_metric("belay_push_skipped_total{reason=\"online\"}", 1)
        .await;

    // Offline again: the next one is pushed.
    drop(stream);
    drop(late);
    actix_web::rt::time::sleep(Duration::from_millis(200)).await;
    app.like("ana", "p3", "bob").await;
    let sends = fcm.wait_sends(1).await;
    assert_eq!(sends[0]["message"]["token"], DEVICE);
}

#[actix_web::test]
async fn a_muted_kind_is_stored_but_not_pushed_and_quiet_hours_let_only_the_ready_check_through() {
    let fcm = Fcm::ok();
    let app = spawn_with_push(&fcm, 0).await;
    let ana = app.token("ana").await;
    let bob = app.token("bob").await;
    register_fcm(&app, &ana, DEVICE).await;

    let response = put_preferences(
        &app,
        &ana,
        json!({"kinds": {"post_liked": {"live": true, "push": false}}}),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    let shown: Value = response.json().await.unwrap();
    assert_eq!(shown["kinds"]["post_liked"]["push"], false);
    assert_eq!(shown["kinds"]["match_found"]["push"], true);
    app.like("ana", "p1", "bob").await;
    settle(0).await;
    assert!(fcm.sends().is_empty());
    assert_eq!(
        app.list(&ana, "").await["notifications"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    app.wait_metric("belay_push_skipped_total{reason=\"muted\"}", 1)
        .await;

    // Quiet hours around now, in Tokyo: a rank change waits, a match found does not.
    let tokyo = chrono::Utc::now().with_timezone(&chrono_tz::Asia::Tokyo);
    let hour = |h: i64| {
        (tokyo + chrono::Duration::hours(h))
            .format("%H:%M")
            .to_string()
    };
    let response = put_preferences(
        &app,
        &ana,
        json!({"time_zone": "Asia/Tokyo", "quiet_hours": {"start": hour(-1), "end": hour(1)}}),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    app.like("ana", "p2", "cleo").await;
    for token in [&ana, &bob] {
        let response = app
            .client
            .post(app.url("/v1/queue"))
            .bearer_auth(token)
            .json(&json!({"discipline": "boulder"}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
    }
    let sends = fcm.wait_sends(1).await;
    settle(0).await;
    let kinds: Vec<&str> = fcm
        .sends()
        .iter()
        .map(|s| {
            s["message"]["data"]["kind"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .map(|k| {
            if k == "match_found" {
                "match_found"
            } else {
                "other"
            }
        })
        .collect();
    assert_eq!(kinds, ["match_found"], "{sends:?}");
    app.wait_metric("belay_push_skipped_total{reason=\"quiet_hours\"}", 1)
        .await;
}

#[actix_web::test]
async fn a_dead_token_removes_the_device_and_a_flaky_fcm_loses_nothing() {
    // The first send: UNREGISTERED. Then two 503s, then success.
    let fcm = Fcm::start(|n| match n {
        0 => Reply::json(
            404,
            json!({"error": {"code": 404, "status": "NOT_FOUND", "details": [{
                "@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError",
                "errorCode": "UNREGISTERED"}]}}),
        ),
        1 | 2 => Reply::json(
            503,
            json!({"error": {"code": 503, "status": "UNAVAILABLE"}}),
        )
        .with_header("retry-after", "0"),
        _ => Reply::json(200, json!({"name": "projects/p/messages/1"})),
    });
    let app = spawn_with_push(&fcm, 0).await;
    let ana = app.token("ana").await;
    register_fcm(&app, &ana, DEVICE).await;
    app.like("ana", "p1", "bob").await;
    fcm.wait_sends(1).await;
    let started = Instant::now();
    while !devices(&app, &ana).await.is_empty() {
        assert!(started.elapsed() < WAIT, "the dead device was not removed");
        actix_web::rt::time::sleep(Duration::from_millis(20)).await;
    }

    register_fcm(&app, &ana, "a-fresh-token").await;
    app.like("ana", "p2", "bob").await;
    let sends = fcm.wait_sends(4).await;
    assert!(
        sends[1..]
            .iter()
            .all(|s| s["message"]["token"] == "a-fresh-token")
    );
    app.wait_metric(
        "belay_push_sends_total{provider=\"fcm\",outcome=\"retried\"}",
        2,
    )
    .await;
    app.wait_metric(
        "belay_push_sends_total{provider=\"fcm\",outcome=\"sent\"}",
        1,
    )
    .await;
    settle(0).await;
    assert_eq!(
        fcm.sends().len(),
        4,
        "sent once it went through, never again"
    );
}

#[actix_web::test]
async fn a_restart_between_the_event_and_the_send_still_sends_it_once() {
    let fcm = Fcm::ok();
    let app = spawn_with_push(&fcm, 800).await;
    let ana = app.token("ana").await;
    register_fcm(&app, &ana, DEVICE).await;
    app.like("ana", "p1", "bob").await;
    let app = app.restart().await;
    let sends = fcm.wait_sends(1).await;
    assert_eq!(sends[0]["message"]["data"]["kind"], "post_liked");
    settle(800).await;
    assert_eq!(fcm.sends().len(), 1);
    drop(app);
}

#[actix_web::test]
async fn registering_a_known_token_refreshes_it_and_a_token_follows_its_new_climber() {
    let fcm = Fcm::ok();
    let app = spawn_with_push(&fcm, 0).await;
    let ana = app.token("ana").await;
    let bob = app.token("bob").await;
    let response = register(&app, &ana, json!({"platform": "fcm", "token": DEVICE})).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let first: Value = response.json().await.unwrap();
    let response = register(&app, &ana, json!({"platform": "fcm", "token": DEVICE})).await;
    assert_eq!(response.status(), StatusCode::OK);
    let again: Value = response.json().await.unwrap();
    assert_eq!(first["id"], again["id"]);
    assert_eq!(devices(&app, &ana).await.len(), 1);

    // The phone changes hands.
    register_fcm(&app, &bob, DEVICE).await;
    assert!(devices(&app, &ana).await.is_empty());
    assert_eq!(devices(&app, &bob).await.len(), 1);

    // Only its owner removes it.
    let id = first["id"].as_str().unwrap();
    let response = app
        .client
        .delete(app.url(&format!("/v1/devices/{id}")))
        .bearer_auth(&ana)
        .send()
        .await
        .unwrap();
    assert_error(response, StatusCode::NOT_FOUND, "not_found").await;
    let response = app
        .client
        .delete(app.url(&format!("/v1/devices/{id}")))
        .bearer_auth(&bob)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert!(devices(&app, &bob).await.is_empty());
}

#[actix_web::test]
async fn bad_registrations_and_preferences_get_a_clear_400_and_store_nothing() {
    let fcm = Fcm::ok();
    let app = spawn_with_push(&fcm, 0).await;
    let ana = app.token("ana").await;
    for (body, says) in [
        (json!({"platform": "fcm"}), "takes a token"),
        (json!({"platform": "fcm", "token": "has spaces"}), "token:"),
        (
            json!({"platform": "fcm", "token": "x".repeat(5000)}),
            "at most",
        ),
        (json!({"platform": "apns", "token": "abc"}), "apns"),
        (
            json!({"platform": "fcm", "token": "abc", "extra": 1}),
            "extra",
        ),
        (
            json!({"platform": "webpush", "subscription": {"endpoint": "http://push.example/x",
                "keys": {"p256dh": "AAAA", "auth": "AAAA"}}}),
            "https",
        ),
    ] {
        let response = register(&app, &ana, body.clone()).await;
        let error = assert_error(response, StatusCode::BAD_REQUEST, "invalid_request").await;
        assert!(
            error["message"].as_str().unwrap().contains(says),
            "{body}: {error}"
        );
    }
    // Web Push is not configured on this node: a clear refusal, not a silent store.
    let browser = Browser::new();
    let response = register(
        &app,
        &ana,
        json!({"platform": "webpush", "subscription": browser.subscribe("https://push.example/x")}),
    )
    .await;
    assert_error(response, StatusCode::CONFLICT, "push_not_enabled").await;
    assert!(devices(&app, &ana).await.is_empty());
    let response = app
        .client
        .get(app.url("/v1/push/vapid-key"))
        .send()
        .await
        .unwrap();
    assert_error(response, StatusCode::NOT_FOUND, "not_found").await;

    let before: Value = app
        .get_as(&ana, "/v1/preferences")
        .await
        .json()
        .await
        .unwrap();
    for (body, says) in [
        (
            json!({"kinds": {"likes": {"live": true, "push": true}}}),
            "unknown kind",
        ),
        (
            json!({"kinds": {"new_post": {"live": true, "push": true}}}),
            "never pushes",
        ),
        (json!({"kinds": {"post_liked": {"live": true}}}), "push"),
        (json!({"time_zone": "Mars/Olympus"}), "time_zone"),
        (
            json!({"quiet_hours": {"start": "25:00", "end": "07:00"}}),
            "quiet_hours.start",
        ),
    ] {
        let response = put_preferences(&app, &ana, body.clone()).await;
        let error = assert_error(response, StatusCode::BAD_REQUEST, "invalid_request").await;
        assert!(
            error["message"].as_str().unwrap().contains(says),
            "{body}: {error}"
        );
    }
    let after: Value = app
        .get_as(&ana, "/v1/preferences")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(before, after);
    assert_eq!(after["time_zone"], "UTC");
}

/// A browser's side of a Web Push subscription.
struct Browser {
    secret: p256::SecretKey,
    auth: [u8; 16],
}

impl Browser {
    fn new() -> Browser {
        let secret = loop {
            if let Ok(secret) = p256::SecretKey::from_slice(&rand::random::<[u8; 32]>()) {
                break secret;
            }
        };
        Browser {
            secret,
            auth: rand::random(),
        }
    }

    /// `PushSubscription.toJSON()`.
    fn subscribe(&self, endpoint: &str) -> Value {
        json!({
            "endpoint": endpoint,
            "expirationTime": null,
            "keys": {
                "p256dh": URL_SAFE_NO_PAD.encode(self.secret.public_key().to_encoded_point(false).as_bytes()),
                "auth": URL_SAFE_NO_PAD.encode(self.auth),
            }
        })
    }

    fn decrypt(&self, body: &[u8]) -> Value {
        let auth = web_push_native::Auth::from(self.auth);
        let plain = web_push_native::decrypt(body.to_vec(), &self.secret, &auth)
            .unwrap_or_else(|e| panic!("the payload does not decrypt: {e}"));
        serde_json::from_slice(&plain).unwrap()
    }
}

#[actix_web::test]
async fn a_browser_gets_its_push_encrypted_to_its_subscription_and_signed_with_vapid() {
    let service = FakeServer::start(|_| Reply::new(201, ""));
    let keys = belay::push::webpush::generate_vapid_keys().unwrap();
    let private = secrecy::ExposeSecret::expose_secret(&keys.private_key).to_owned();
    let app = spawn_app_with(move |s| {
        s.push.webpush.vapid_private_key = private.into();
        s.push.webpush.allow_loopback_http = true;
        s.push.grace_ms = 0;
        s.push.poll_ms = 50;
    })
    .await;
    let response = app
        .client
        .get(app.url("/v1/push/vapid-key"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let served: Value = response.json().await.unwrap();
    assert_eq!(served["public_key"], keys.public_key);

    let ana = app.token("ana").await;
    let browser = Browser::new();
    let endpoint = format!("{}/push/ana-browser", service.url);
    let response = register(
        &app,
        &ana,
        json!({"platform": "webpush", "subscription": browser.subscribe(&endpoint)}),
    )
    .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let device: Value = response.json().await.unwrap();
    assert_eq!(device["endpoint"], endpoint);
    // FCM is not configured: FCM tokens are refused.
    let response = register(&app, &ana, json!({"platform": "fcm", "token": DEVICE})).await;
    assert_error(response, StatusCode::CONFLICT, "push_not_enabled").await;

    let stored = app.like("ana", "p1", "bob").await;
    let started = Instant::now();
    let request = loop {
        if let Some(request) = service.requests().into_iter().next() {
            break request;
        }
        assert!(started.elapsed() < WAIT, "no push reached the push service");
        actix_web::rt::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(request.path, "/push/ana-browser");
    assert_eq!(request.header("content-encoding"), Some("aes128gcm"));
    assert!(request.header("ttl").unwrap().parse::<u64>().unwrap() > 0);
    assert!(request.header("urgency").is_some());
    let authorization = request.header("authorization").unwrap();
    assert!(authorization.starts_with("vapid t="), "{authorization}");
    assert!(authorization.ends_with(&format!("k={}", keys.public_key)));
    let payload = browser.decrypt(&request.body);
    assert_eq!(payload["data"]["kind"], "post_liked");
    assert_eq!(payload["data"]["notification_id"], stored["id"]);
    app.wait_metric(
        "belay_push_sends_total{provider=\"webpush\",outcome=\"sent\"}",
        1,
    )
    .await;
}

#[actix_web::test]
async fn a_kind_muted_on_the_live_stream_moves_the_cursor_but_sends_no_event() {
    let app = spawn_app_with(|_| {}).await;
    let ana = app.token("ana").await;
    let response = put_preferences(
        &app,
        &ana,
        json!({"kinds": {"post_liked": {"live": false, "push": true}}}),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);

    let mut stream = app.open_stream(&ana, None).await;
    assert_eq!(stream.expect().await.event, "unread");
    app.like("ana", "p1", "bob").await;
    let response = app
        .client
        .post(app.url("/v1/ascents"))
        .bearer_auth(&ana)
        .json(&json!({"route_id": "r1", "discipline": "boulder", "grade": "7A+"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    // The like (cursor 1) sends only its id; the first real event is the ascent's.
    let event = loop {
        let event = stream.expect().await;
        if !event.data.is_empty() {
            break event;
        }
    };
    assert_eq!(event.event, "route_completed");
    assert_eq!(event.id, "2");
    assert_eq!(
        app.list(&ana, "").await["notifications"]
            .as_array()
            .unwrap()
            .len(),
        3,
        "the muted like is stored and listed"
    );

    // A replay from the start: the like's cursor is there, its event is not.
    let mut raw = app
        .client
        .get(app.url("/v1/events"))
        .bearer_auth(&ana)
        .header("Last-Event-ID", "0")
        .send()
        .await
        .unwrap();
    let mut text = String::new();
    let started = Instant::now();
    while !text.contains("event: personal_record") {
        assert!(started.elapsed() < WAIT, "the replay did not come: {text}");
        let chunk = tokio::time::timeout(WAIT, raw.chunk())
            .await
            .unwrap()
            .unwrap();
        text.push_str(&String::from_utf8_lossy(&chunk.unwrap_or_default()));
    }
    assert!(
        text.contains("\nid: 1\n\n") || text.starts_with("id: 1\n\n"),
        "{text}"
    );
    assert!(!text.contains("event: post_liked"), "{text}");
    assert!(text.contains("id: 2\nevent: route_completed"), "{text}");
}

#[actix_web::test]
async fn the_service_worker_is_served_as_javascript_at_the_root_of_the_site() {
    let app = crate::helpers::spawn_app().await;

    let response = app.client.get(app.url("/sw.js")).send().await.unwrap();

    assert_eq!(response.status(), StatusCode::OK);
    // Browsers refuse to register a worker served with any other type.
    let content_type = response.headers()["content-type"].to_str().unwrap();
    assert!(
        content_type.starts_with("text/javascript"),
        "{content_type}"
    );
    let script = response.text().await.unwrap();
    for handler in [
        "'push'",
        "showNotification",
        "'notificationclick'",
        "openWindow",
    ] {
        assert!(script.contains(handler), "the worker lacks {handler}");
    }
}
