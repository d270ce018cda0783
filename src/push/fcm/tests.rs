//! FCM against a fake OAuth token endpoint and a fake FCM on loopback: the token endpoint checks
//! each assertion against the service account's public key, FCM checks the bearer token.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Value, json};
use uuid::Uuid;

use super::*;
use crate::domain::{Cursor, Discipline, Event, Notification, UserId};
use crate::push::fake::{FakeServer, Recorded, Reply};
use crate::push::{ManualClock, QUOTA_MIN_WAIT};

const PRIVATE_KEY: &str = include_str!("../testdata/service-account-key.pem");
const PUBLIC_KEY: &str = include_str!("../testdata/service-account-public.pem");
const PROJECT: &str = "belay-test";
const CLIENT_EMAIL: &str = "push@belay-test.iam.gserviceaccount.com";
const DEVICE: &str = "dTk2:APA91bH-example_registration.token";
const TOKEN_LIFETIME_SECS: i64 = 3600;

fn account_json(token_uri: &str) -> String {
    json!({
        "type": "service_account",
        "project_id": PROJECT,
        "private_key_id": "key-1",
        "private_key": PRIVATE_KEY,
        "client_email": CLIENT_EMAIL,
        "client_id": "1234",
        "token_uri": token_uri,
    })
    .to_string()
}

/// A token endpoint that issues `access-1`, `access-2`, … for assertions signed by the service
/// account's key and answers `invalid_grant` otherwise.
fn token_endpoint() -> FakeServer {
    let issued = AtomicUsize::new(0);
    FakeServer::start(move |request| {
        let form = request.form();
        let field = |name: &str| {
            form.iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        let mut validation = Validation::new(Algorithm::RS256);
        // The audience is checked in the tests, which know the endpoint's URL.
        validation.validate_aud = false;
        let key = DecodingKey::from_rsa_pem(PUBLIC_KEY.as_bytes()).unwrap();
        let verified = jsonwebtoken::decode::<Value>(&field("assertion"), &key, &validation);
        if field("grant_type") != GRANT_TYPE || verified.is_err() {
            return Reply::json(
                400,
                json!({"error": "invalid_grant", "error_description": "Invalid JWT Signature."}),
            );
        }
        let n = issued.fetch_add(1, Ordering::SeqCst) + 1;
        Reply::json(
            200,
            json!({
                "access_token": format!("access-{n}"),
                "expires_in": TOKEN_LIFETIME_SECS,
                "token_type": "Bearer",
            }),
        )
    })
}

/// A fake FCM: refuses any bearer the token endpoint did not issue, then answers from `script`
/// and `fallback`.
fn fcm(script: Vec<Reply>, fallback: Reply) -> FakeServer {
    let script = std::sync::Mutex::new(std::collections::VecDeque::from(script));
    FakeServer::start(move |request| {
        let bearer = request.header("authorization").unwrap_or_default();
        if !bearer.starts_with("Bearer access-") {
            return Reply::json(
                401,
                json!({"error": {"code": 401, "message": "Request had invalid authentication credentials.", "status": "UNAUTHENTICATED"}}),
            );
        }
        script
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or_else(|| fallback.clone())
    })
}

fn ok() -> Reply {
    Reply::json(
        200,
        json!({"name": format!("projects/{PROJECT}/messages/0:1700000000000000%abc")}),
    )
}

fn fcm_error(status: u16, canonical: &str, message: &str, details: Value) -> Reply {
    Reply::json(
        status,
        json!({"error": {"code": status, "message": message, "status": canonical, "details": details}}),
    )
}

fn fcm_code(code: &str) -> Value {
    json!({"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": code})
}

fn start_of_test() -> DateTime<Utc> {
    // Whole seconds, so that iat/exp compare exactly.
    DateTime::from_timestamp(Utc::now().timestamp(), 0).unwrap()
}

struct Setup {
    tokens: FakeServer,
    fcm: FakeServer,
    clock: Arc<ManualClock>,
    client: FcmClient,
}

fn setup(script: Vec<Reply>, fallback: Reply) -> Setup {
    let tokens = token_endpoint();
    let fcm = fcm(script, fallback);
    let clock = ManualClock::new(start_of_test());
    let account =
        ServiceAccount::from_json(&account_json(&format!("{}/token", tokens.url))).unwrap();
    let client = FcmClient::new(account, &fcm.url, clock.clone()).unwrap();
    Setup {
        tokens,
        fcm,
        clock,
        client,
    }
}

fn match_found(now: DateTime<Utc>, ready_in_secs: i64) -> PushMessage {
    let notification = Notification {
        id: Uuid::from_u128(0xabc),
        cursor: Cursor(17),
        event: Event::MatchFound {
            match_id: Uuid::from_u128(7),
            opponent: UserId::parse("bob").unwrap(),
            discipline: Discipline::Boulder,
            ready_deadline: now + chrono::Duration::seconds(ready_in_secs),
        },
        created_at: now,
        updated_at: now,
        read: false,
    };
    PushMessage::for_notification(&notification, &UserId::parse("ana").unwrap(), now)
}

fn device() -> FcmToken {
    FcmToken::parse(DEVICE).unwrap()
}

fn assertion_claims(request: &Recorded, token_uri: &str) -> (Value, jsonwebtoken::Header) {
    let form = request.form();
    let assertion = &form.iter().find(|(k, _)| k == "assertion").unwrap().1;
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_audience(&[token_uri]);
    validation.set_issuer(&[CLIENT_EMAIL]);
    validation.set_required_spec_claims(&["exp", "iat", "aud", "iss"]);
    let key = DecodingKey::from_rsa_pem(PUBLIC_KEY.as_bytes()).unwrap();
    let data = jsonwebtoken::decode::<Value>(assertion, &key, &validation).unwrap();
    (data.claims, data.header)
}

#[actix_web::test]
async fn a_push_goes_out_in_fcm_v1_shape_with_the_issued_bearer_token() {
    let s = setup(vec![], ok());
    let now = s.clock.now();

    let outcome = s.client.send(&device(), &match_found(now, 30)).await;

    assert_eq!(outcome, Outcome::Sent);
    let token_requests = s.tokens.requests();
    assert_eq!(token_requests.len(), 1);
    let token_uri = format!("{}/token", s.tokens.url);
    let (claims, header) = assertion_claims(&token_requests[0], &token_uri);
    assert_eq!(header.alg, Algorithm::RS256);
    assert_eq!(header.kid.as_deref(), Some("key-1"));
    assert_eq!(claims["iss"], CLIENT_EMAIL);
    assert_eq!(claims["scope"], SCOPE);
    assert_eq!(claims["aud"], token_uri.as_str());
    assert_eq!(claims["iat"], now.timestamp());
    assert_eq!(claims["exp"], now.timestamp() + 3600);
    let form = token_requests[0].form();
    assert!(form.contains(&("grant_type".to_owned(), GRANT_TYPE.to_owned())));

    let sends = s.fcm.requests();
    assert_eq!(sends.len(), 1);
    let send = &sends[0];
    assert_eq!(send.method, "POST");
    assert_eq!(send.path, format!("/v1/projects/{PROJECT}/messages:send"));
    assert_eq!(send.header("authorization"), Some("Bearer access-1"));
    assert!(send.body.len() <= MAX_MESSAGE_BYTES);
    let body = send.json();
    let message = &body["message"];
    assert_eq!(message["token"], DEVICE);
    assert_eq!(message["notification"]["title"], "Match found");
    assert_eq!(
        message["notification"]["body"],
        "bob is waiting — ready in 30 s"
    );
    assert_eq!(
        message["data"],
        json!({"kind": "match_found", "notification_id": Uuid::from_u128(0xabc).to_string(), "cursor": "17"})
    );
    let data = message["data"].as_object().unwrap();
    assert!(data.values().all(Value::is_string));
    let collapse = format!("match:{}", Uuid::from_u128(7));
    assert_eq!(
        message["android"],
        json!({"priority": "HIGH", "ttl": "30s", "collapse_key": collapse})
    );
    assert_eq!(
        message["apns"]["headers"],
        json!({
            "apns-expiration": (now.timestamp() + 30).to_string(),
            "apns-priority": "10",
            "apns-collapse-id": collapse,
        })
    );
    let webpush = &message["webpush"]["headers"];
    assert_eq!(webpush["TTL"], "30");
    assert_eq!(webpush["Urgency"], "high");
    assert_eq!(webpush["Topic"].as_str().map(str::len), Some(32));
}

#[actix_web::test]
async fn one_access_token_serves_many_sends_until_shortly_before_it_expires() {
    let s = setup(vec![], ok());
    let now = s.clock.now();
    let message = match_found(now, 24 * 3600);
    let token = device();

    // Ten sends at once: one token request, the others wait for it.
    let sends = (0..10).map(|_| s.client.send(&token, &message));
    let outcomes = futures_util::future::join_all(sends).await;
    assert!(outcomes.iter().all(|o| *o == Outcome::Sent), "{outcomes:?}");
    assert_eq!(s.tokens.requests().len(), 1);

    // Just before the refresh point (expiry minus five minutes) the token still serves.
    s.clock
        .advance(chrono::Duration::seconds(TOKEN_LIFETIME_SECS - 5 * 60 - 1));
    assert_eq!(s.client.send(&token, &message).await, Outcome::Sent);
    assert_eq!(s.tokens.requests().len(), 1);

    // At the refresh point a new one is fetched and used.
    s.clock.advance(chrono::Duration::seconds(1));
    assert_eq!(s.client.send(&token, &message).await, Outcome::Sent);
    let token_requests = s.tokens.requests();
    assert_eq!(token_requests.len(), 2);
    let token_uri = format!("{}/token", s.tokens.url);
    let (claims, _) = assertion_claims(&token_requests[1], &token_uri);
    assert_eq!(
        claims["iat"],
        now.timestamp() + TOKEN_LIFETIME_SECS - 5 * 60
    );
    let bearers: Vec<_> = s
        .fcm
        .requests()
        .iter()
        .map(|r| r.header("authorization").unwrap_or_default().to_owned())
        .collect();
    assert_eq!(bearers.len(), 12);
    assert!(bearers[..11].iter().all(|b| b == "Bearer access-1"));
    assert_eq!(bearers[11], "Bearer access-2");
}

#[actix_web::test]
async fn fcm_answers_become_outcomes() {
    let token_about = fcm_error(
        400,
        "INVALID_ARGUMENT",
        "Request contains an invalid argument.",
        json!([
            fcm_code("INVALID_ARGUMENT"),
            {"@type": "type.googleapis.com/google.rpc.BadRequest",
             "fieldViolations": [{"field": "message.token", "description": "Invalid registration token"}]}
        ]),
    );
    let payload_about = fcm_error(
        400,
        "INVALID_ARGUMENT",
        "Invalid value at 'message.android.ttl' (type.googleapis.com/google.protobuf.Duration), \"30\"",
        json!([
            fcm_code("INVALID_ARGUMENT"),
            {"@type": "type.googleapis.com/google.rpc.BadRequest",
             "fieldViolations": [{"field": "message.android.ttl", "description": "Invalid value at 'message.android.ttl'"}]}
        ]),
    );
    let quota = |retry_after: Option<&str>| {
        let reply = fcm_error(
            429,
            "RESOURCE_EXHAUSTED",
            "Quota exceeded for quota metric 'Send requests'",
            json!([fcm_code("QUOTA_EXCEEDED")]),
        );
        match retry_after {
            Some(v) => reply.with_header("retry-after", v),
            None => reply,
        }
    };
    let script = vec![
        fcm_error(
            404,
            "NOT_FOUND",
            "Requested entity was not found.",
            json!([fcm_code("UNREGISTERED")]),
        ),
        fcm_error(
            403,
            "PERMISSION_DENIED",
            "SenderId mismatch",
            json!([fcm_code("SENDER_ID_MISMATCH")]),
        ),
        token_about,
        payload_about,
        quota(Some("17")),
        quota(None),
        fcm_error(
            503,
            "UNAVAILABLE",
            "The service is currently unavailable.",
            json!([]),
        )
        .with_header("retry-after", "9"),
        fcm_error(500, "INTERNAL", "Internal error encountered.", json!([])),
        fcm_error(
            401,
            "UNAUTHENTICATED",
            "Auth error from APNS or Web Push Service",
            json!([fcm_code("THIRD_PARTY_AUTH_ERROR")]),
        ),
    ];
    let s = setup(script, ok());
    let message = match_found(s.clock.now(), 600);
    let mut outcomes = Vec::new();
    for _ in 0..10 {
        outcomes.push(s.client.send(&device(), &message).await);
    }

    let labels: Vec<_> = outcomes.iter().map(Outcome::label).collect();
    assert_eq!(
        labels,
        [
            "device_removed",
            "device_removed",
            "device_removed",
            "failed",
            "retried",
            "retried",
            "retried",
            "retried",
            "config_fault",
            // 503 then success: the same push goes through once FCM is back.
            "sent",
        ]
    );
    let retry = |i: usize| match &outcomes[i] {
        Outcome::Retry(retry) => retry.clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!(retry(4).cause, RetryCause::Quota);
    assert_eq!(retry(4).retry_after, Some(Duration::from_secs(17)));
    assert_eq!(retry(4).delay(0, 0.0), Duration::from_secs(17));
    assert_eq!(retry(5).retry_after, None);
    assert_eq!(retry(5).delay(0, 0.0), QUOTA_MIN_WAIT);
    assert_eq!(retry(6).cause, RetryCause::Unavailable);
    assert_eq!(retry(6).delay(0, 1.0), Duration::from_secs(9));
    assert_eq!(retry(7).retry_after, None);
    assert!(retry(7).delay(2, 0.0) >= Duration::from_secs(2));
    match &outcomes[0] {
        Outcome::RemoveDevice { reason } => {
            assert!(reason.contains("UNREGISTERED"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    // 401 THIRD_PARTY_AUTH_ERROR is not our access token: no new token was fetched for it.
    assert_eq!(s.tokens.requests().len(), 1);
}

#[actix_web::test]
async fn a_token_endpoint_that_refuses_the_key_is_a_configuration_fault() {
    let tokens = FakeServer::scripted(
        vec![],
        Reply::json(
            400,
            json!({"error": "invalid_grant", "error_description": "Invalid JWT Signature."}),
        ),
    );
    let fcm = fcm(vec![], ok());
    let clock = ManualClock::new(start_of_test());
    let account = ServiceAccount::from_json(&account_json(&tokens.url)).unwrap();
    let client = FcmClient::new(account, &fcm.url, clock.clone()).unwrap();

    let outcome = client.send(&device(), &match_found(clock.now(), 30)).await;

    match outcome {
        Outcome::ConfigFault { reason } => {
            assert!(
                reason.contains("refused the service account key"),
                "{reason}"
            );
            assert!(reason.contains("invalid_grant"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    assert!(fcm.requests().is_empty());
}

#[actix_web::test]
async fn a_token_endpoint_that_is_down_means_retry() {
    let tokens = FakeServer::scripted(
        vec![],
        Reply::new(503, "busy").with_header("retry-after", "4"),
    );
    let fcm = fcm(vec![], ok());
    let clock = ManualClock::new(start_of_test());
    let account = ServiceAccount::from_json(&account_json(&tokens.url)).unwrap();
    let client = FcmClient::new(account, &fcm.url, clock.clone()).unwrap();

    let outcome = client.send(&device(), &match_found(clock.now(), 30)).await;

    match outcome {
        Outcome::Retry(retry) => {
            assert_eq!(retry.cause, RetryCause::Unavailable);
            assert_eq!(retry.retry_after, Some(Duration::from_secs(4)));
        }
        other => panic!("{other:?}"),
    }
    assert!(fcm.requests().is_empty());
}

#[actix_web::test]
async fn a_refused_access_token_is_replaced_once() {
    let unauthenticated = fcm_error(
        401,
        "UNAUTHENTICATED",
        "Request had invalid authentication credentials.",
        json!([]),
    );
    let s = setup(vec![unauthenticated.clone()], ok());
    let message = match_found(s.clock.now(), 30);

    assert_eq!(s.client.send(&device(), &message).await, Outcome::Sent);
    assert_eq!(s.tokens.requests().len(), 2);
    let bearers: Vec<_> = s
        .fcm
        .requests()
        .iter()
        .map(|r| r.header("authorization").unwrap_or_default().to_owned())
        .collect();
    assert_eq!(bearers, ["Bearer access-1", "Bearer access-2"]);

    // Refused twice in a row: a fault in our setup, not something to loop on.
    let s = setup(vec![unauthenticated.clone(), unauthenticated], ok());
    let outcome = s.client.send(&device(), &message).await;
    assert_eq!(outcome.label(), "config_fault", "{outcome:?}");
    assert_eq!(s.fcm.requests().len(), 2);
}

#[actix_web::test]
async fn an_unreachable_fcm_means_retry() {
    let tokens = token_endpoint();
    // Bind and drop a listener: nothing answers on that port afterwards.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let clock = ManualClock::new(start_of_test());
    let account = ServiceAccount::from_json(&account_json(&tokens.url)).unwrap();
    let client = FcmClient::new(account, &url, clock.clone()).unwrap();

    let outcome = client.send(&device(), &match_found(clock.now(), 30)).await;

    match outcome {
        Outcome::Retry(retry) => assert_eq!(retry.cause, RetryCause::Unavailable),
        other => panic!("{other:?}"),
    }
}

#[actix_web::test]
async fn an_expired_push_is_not_sent() {
    let s = setup(vec![], ok());
    let message = match_found(s.clock.now(), 30);
    s.clock.advance(chrono::Duration::seconds(31));

    assert_eq!(s.client.send(&device(), &message).await, Outcome::Expired);
    assert!(s.fcm.requests().is_empty());
    assert!(s.tokens.requests().is_empty());
}

#[actix_web::test]
async fn long_text_is_cut_to_4096_bytes_on_char_boundaries() {
    let s = setup(vec![], ok());
    let now = s.clock.now();
    let mut message = match_found(now, 30);
    // Multi-byte characters and characters JSON escapes, far beyond the limit.
    message.body = "Ünïcødé \"quoted\" 🧗\n\u{1}".repeat(400);
    message.title = "Tïtle 🧗 ".repeat(10);

    assert_eq!(s.client.send(&device(), &message).await, Outcome::Sent);

    let sent = &s.fcm.requests()[0];
    assert!(sent.body.len() <= MAX_MESSAGE_BYTES, "{}", sent.body.len());
    assert!(sent.body.len() > MAX_MESSAGE_BYTES - 64, "cut far too much");
    let body = sent.json();
    let notification = &body["message"]["notification"];
    assert_eq!(notification["title"], message.title.as_str());
    let cut = notification["body"].as_str().unwrap();
    assert!(cut.ends_with('…'));
    assert!(message.body.starts_with(cut.trim_end_matches('…')));
}

#[test]
fn a_title_alone_too_long_is_cut_after_the_body() {
    let now = start_of_test();
    let mut message = match_found(now, 30);
    message.title = "é".repeat(3000);
    message.body = "short".to_owned();

    let body = message_body(&device(), &message, now).unwrap().unwrap();

    assert!(body.len() <= MAX_MESSAGE_BYTES);
    let json: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["message"]["notification"]["body"], "");
    let title = json["message"]["notification"]["title"].as_str().unwrap();
    assert!(title.starts_with("éé") && title.ends_with('…'));
}

#[test]
fn a_message_that_cannot_fit_is_our_bug_not_a_panic() {
    let now = start_of_test();
    let mut message = match_found(now, 30);
    message
        .data
        .insert("padding".to_owned(), "x".repeat(MAX_MESSAGE_BYTES));
    let error = message_body(&device(), &message, now).unwrap_err();
    assert!(error.contains("4096"), "{error}");
}

#[test]
fn classify_reads_error_details_and_field_violations() {
    let classify_json = |status: u16, body: Value| classify(status, None, &body.to_string());
    // The token named only in the message text.
    let outcome = classify_json(
        400,
        json!({"error": {"code": 400, "status": "INVALID_ARGUMENT",
            "message": "The registration token is not a valid FCM registration token",
            "details": [fcm_code("INVALID_ARGUMENT")]}}),
    );
    assert_eq!(outcome.label(), "device_removed");
    // A permission problem of the project, not of the device.
    let outcome = classify_json(
        403,
        json!({"error": {"code": 403, "status": "PERMISSION_DENIED",
            "message": "Permission 'cloudmessaging.messages.create' denied"}}),
    );
    assert_eq!(outcome.label(), "config_fault");
    // A proxy's HTML 502: transient.
    assert_eq!(
        classify(502, None, "<html>Bad Gateway</html>").label(),
        "retried"
    );
    // 404 without UNREGISTERED: the URL or project is wrong, the device may be fine.
    assert_eq!(classify(404, None, "Not Found").label(), "config_fault");
    assert_eq!(classify(200, None, "{}"), Outcome::Sent);
    assert_eq!(classify(413, None, "").label(), "failed");
}

#[test]
fn bad_tokens_are_refused_with_clear_errors() {
    assert_eq!(FcmToken::parse(""), Err(InvalidFcmToken::Empty));
    assert_eq!(
        FcmToken::parse(&"a".repeat(MAX_TOKEN_BYTES + 1)),
        Err(InvalidFcmToken::TooLong(MAX_TOKEN_BYTES + 1))
    );
    let error = FcmToken::parse("abc def").unwrap_err();
    assert_eq!(error, InvalidFcmToken::BadChar { found: ' ', at: 3 });
    assert_eq!(
        error.to_string(),
        "the FCM token contains ' ' at byte 3; tokens are ASCII letters, digits and - _ : . / + ="
    );
    assert!(FcmToken::parse("\"quoted\"").is_err());
    assert_eq!(FcmToken::parse(DEVICE).unwrap().as_str(), DEVICE);
}

#[test]
fn service_account_problems_name_what_to_fix() {
    let clock = ManualClock::new(start_of_test());
    let no_key = json!({"project_id": PROJECT, "client_email": CLIENT_EMAIL, "token_uri": "https://oauth2.googleapis.com/token"});
    let error = ServiceAccount::from_json(&no_key.to_string()).unwrap_err();
    assert!(error.to_string().contains("private_key"), "{error}");

    let mut bad_key: Value = serde_json::from_str(&account_json("https://x.test/token")).unwrap();
    bad_key["private_key"] =
        json!("-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n");
    let account = ServiceAccount::from_json(&bad_key.to_string()).unwrap();
    let error = FcmClient::new(account, DEFAULT_BASE_URL, clock.clone())
        .err()
        .unwrap();
    assert!(matches!(error, FcmSetupError::Key(_)), "{error}");
    // The key never shows in errors or debug output.
    let account = ServiceAccount::from_json(&account_json("https://x.test/token")).unwrap();
    assert!(!format!("{account:?}").contains("PRIVATE KEY"));

    let account = ServiceAccount::from_json(&account_json("ftp://x.test/token")).unwrap();
    let error = FcmClient::new(account, DEFAULT_BASE_URL, clock.clone())
        .err()
        .unwrap();
    assert_eq!(
        error.to_string(),
        "the FCM service account's token_uri must be an http or https URL, got \"ftp://x.test/token\""
    );

    let mut empty: Value = serde_json::from_str(&account_json("https://x.test/token")).unwrap();
    empty["project_id"] = json!("");
    let account = ServiceAccount::from_json(&empty.to_string()).unwrap();
    let error = FcmClient::new(account, DEFAULT_BASE_URL, clock)
        .err()
        .unwrap();
    assert_eq!(
        error.to_string(),
        "the FCM service account's project_id is empty"
    );

    let error = ServiceAccount::from_file(Path::new("/nonexistent/belay-sa.json")).unwrap_err();
    assert!(
        error.to_string().contains("/nonexistent/belay-sa.json"),
        "{error}"
    );
}
