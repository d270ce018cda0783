//! Web Push against a fake push service on loopback that decrypts each payload with the
//! browser's private key and checks the VAPID token against the server's public key.

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use p256::ecdsa::signature::Verifier as _;
use secrecy::ExposeSecret as _;
use serde_json::{Value, json};
use uuid::Uuid;

use super::*;
use crate::domain::{Cursor, Discipline, Event, Notification, UserId};
use crate::push::ManualClock;
use crate::push::fake::{FakeServer, Reply};

const SUBJECT: &str = "mailto:ops@belay.example";

/// A browser's side of a subscription: its ECDH key and auth secret.
struct Browser {
    secret: p256::SecretKey,
    auth: [u8; AUTH_BYTES],
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

    fn subscribe(&self, endpoint: &str) -> SubscriptionJson {
        SubscriptionJson {
            endpoint: endpoint.to_owned(),
            keys: SubscriptionKeys {
                p256dh: URL_SAFE_NO_PAD
                    .encode(self.secret.public_key().to_encoded_point(false).as_bytes()),
                auth: URL_SAFE_NO_PAD.encode(self.auth),
            },
        }
    }

    /// What the browser's push stack does on arrival: RFC 8291 decryption.
    fn decrypt(&self, body: &[u8]) -> Vec<u8> {
        let auth = web_push_native::Auth::from(self.auth);
        web_push_native::decrypt(body.to_vec(), &self.secret, &auth)
            .unwrap_or_else(|e| panic!("the payload does not decrypt: {e}"))
    }
}

/// Checks `Authorization: vapid t=<jwt>, k=<key>` as a push service does and returns the claims.
fn verify_vapid(header: &str, public_key: &str) -> Value {
    let params = header.strip_prefix("vapid ").expect("vapid scheme");
    let mut token = None;
    let mut key = None;
    for param in params.split(',') {
        let (name, value) = param.trim().split_once('=').expect("name=value");
        match name {
            "t" => token = Some(value.to_owned()),
            "k" => key = Some(value.to_owned()),
            other => panic!("unexpected parameter {other}"),
        }
    }
    let (token, key) = (token.expect("t="), key.expect("k="));
    assert_eq!(key, public_key, "k= is not the server's VAPID public key");

    let (signed, signature) = token.rsplit_once('.').expect("a JWS");
    let verifying =
        p256::ecdsa::VerifyingKey::from_sec1_bytes(&URL_SAFE_NO_PAD.decode(&key).unwrap()).unwrap();
    let signature =
        p256::ecdsa::Signature::from_slice(&URL_SAFE_NO_PAD.decode(signature).unwrap()).unwrap();
    verifying
        .verify(signed.as_bytes(), &signature)
        .expect("the VAPID token's ES256 signature verifies against the public key");
    let (header, claims) = signed.split_once('.').unwrap();
    let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).unwrap()).unwrap();
    assert_eq!(header["alg"], "ES256");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(claims).unwrap()).unwrap()
}

fn vapid() -> VapidKeys {
    let generated = generate_vapid_keys().unwrap();
    VapidKeys::from_private_key(generated.private_key.expose_secret(), SUBJECT).unwrap()
}

fn start_of_test() -> DateTime<Utc> {
    DateTime::from_timestamp(Utc::now().timestamp(), 0).unwrap()
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

struct Setup {
    service: FakeServer,
    browser: Browser,
    subscription: Subscription,
    clock: Arc<ManualClock>,
    client: WebPushClient,
}

fn setup(script: Vec<Reply>) -> Setup {
    let service = FakeServer::scripted(script, Reply::new(201, ""));
    let browser = Browser::new();
    let subscription = Subscription::parse(
        &browser.subscribe(&format!("{}/push/v2/sub-123", service.url)),
        EndpointPolicy::AllowLoopbackHttp,
    )
    .unwrap();
    let clock = ManualClock::new(start_of_test());
    let client = WebPushClient::new(vapid(), clock.clone()).unwrap();
    Setup {
        service,
        browser,
        subscription,
        clock,
        client,
    }
}

#[actix_web::test]
async fn a_push_is_encrypted_to_the_subscription_and_signed_with_vapid() {
    let s = setup(vec![]);
    let now = s.clock.now();

    let outcome = s.client.send(&s.subscription, &match_found(now, 30)).await;

    assert_eq!(outcome, Outcome::Sent);
    let requests = s.service.requests();
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    assert_eq!(request.method, "POST");
    assert_eq!(request.path, "/push/v2/sub-123");
    assert_eq!(request.header("ttl"), Some("30"));
    assert_eq!(request.header("urgency"), Some("high"));
    assert_eq!(request.header("content-encoding"), Some("aes128gcm"));
    assert_eq!(
        request.header("content-type"),
        Some("application/octet-stream")
    );
    let topic = request.header("topic").unwrap();
    assert_eq!(topic.len(), 32);
    assert!(
        topic
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    );

    let plaintext = s.browser.decrypt(&request.body);
    let payload: Value = serde_json::from_slice(&plaintext).unwrap();
    assert_eq!(
        payload,
        json!({
            "title": "Match found",
            "body": "bob is waiting — ready in 30 s",
            "data": {"kind": "match_found", "notification_id": Uuid::from_u128(0xabc).to_string(), "cursor": "17"},
            "tag": format!("match:{}", Uuid::from_u128(7)),
        })
    );

    let claims = verify_vapid(
        request.header("authorization").unwrap(),
        &s.client.vapid_public_key(),
    );
    // The audience is the push service's origin, port included.
    assert_eq!(claims["aud"], s.service.url.as_str());
    assert_eq!(claims["sub"], SUBJECT);
    assert_eq!(claims["exp"], now.timestamp() + 12 * 60 * 60);
}

#[test]
fn the_fake_push_service_decrypts_the_rfc_8291_example() {
    // RFC 8291 appendix A: the receiver's key, auth secret and the encrypted message.
    let decode = |s: &str| URL_SAFE_NO_PAD.decode(s).unwrap();
    let browser = Browser {
        secret: p256::SecretKey::from_slice(&decode("q1dXpw3UpT5VOmu_cf_v6ih07Aems3njxI-JWgLcM94"))
            .unwrap(),
        auth: decode("BTBZMqHH6r4Tts7J_aSIgg").try_into().unwrap(),
    };
    let message = decode(
        "DGv6ra1nlYgDCS1FRnbzlwAAEABBBP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27mlmlMoZIIgDll6e3vCYLocInmYWAmS6TlzAC8wEqKK6PBru3jl7A_yl95bQpu6cVPTpK4Mqgkf1CXztLVBSt2Ks3oZwbuwXPXLWyouBWLVWGNWQexSgSxsj_Qulcy4a-fN",
    );
    assert_eq!(
        browser.decrypt(&message),
        b"When I grow up, I want to be a watermelon"
    );
}

#[actix_web::test]
async fn push_service_answers_become_outcomes() {
    let script = vec![
        Reply::new(201, ""),
        Reply::new(202, ""),
        Reply::new(404, "Not Found"),
        Reply::new(410, "push subscription has unsubscribed or expired."),
        Reply::new(429, "slow down").with_header("retry-after", "5"),
        Reply::new(429, "slow down"),
        Reply::new(503, "unavailable"),
        Reply::new(400, "bad encryption"),
        Reply::new(401, "invalid JWT"),
        Reply::new(403, "the VAPID key does not match"),
        Reply::new(413, "too large"),
    ];
    let n = script.len();
    let s = setup(script);
    let message = match_found(s.clock.now(), 600);
    let mut outcomes = Vec::new();
    for _ in 0..n {
        outcomes.push(s.client.send(&s.subscription, &message).await);
    }

    let labels: Vec<_> = outcomes.iter().map(Outcome::label).collect();
    assert_eq!(
        labels,
        [
            "sent",
            "sent",
            "device_removed",
            "device_removed",
            "retried",
            "retried",
            "retried",
            "failed",
            "config_fault",
            "config_fault",
            "failed",
        ]
    );
    match &outcomes[4] {
        Outcome::Retry(retry) => {
            assert_eq!(retry.cause, RetryCause::Quota);
            assert_eq!(retry.retry_after, Some(Duration::from_secs(5)));
        }
        other => panic!("{other:?}"),
    }
    match &outcomes[5] {
        Outcome::Retry(retry) => assert_eq!(retry.delay(0, 0.0), crate::push::QUOTA_MIN_WAIT),
        other => panic!("{other:?}"),
    }
    match &outcomes[3] {
        Outcome::RemoveDevice { reason } => assert!(reason.contains("410"), "{reason}"),
        other => panic!("{other:?}"),
    }
}

#[actix_web::test]
async fn long_text_is_cut_to_3993_bytes_of_plaintext() {
    let s = setup(vec![]);
    let mut message = match_found(s.clock.now(), 30);
    message.body = "Ünïcødé \"quoted\" 🧗\n".repeat(400);
    message.title = "Tïtle 🧗".to_owned();

    assert_eq!(
        s.client.send(&s.subscription, &message).await,
        Outcome::Sent
    );

    let plaintext = s.browser.decrypt(&s.service.requests()[0].body);
    assert!(
        plaintext.len() <= MAX_PLAINTEXT_BYTES,
        "{}",
        plaintext.len()
    );
    assert!(
        plaintext.len() > MAX_PLAINTEXT_BYTES - 64,
        "cut far too much"
    );
    let payload: Value = serde_json::from_slice(&plaintext).unwrap();
    assert_eq!(payload["title"], "Tïtle 🧗");
    let body = payload["body"].as_str().unwrap();
    assert!(body.ends_with('…'));
    assert!(message.body.starts_with(body.trim_end_matches('…')));
}

#[actix_web::test]
async fn an_expired_push_is_not_sent() {
    let s = setup(vec![]);
    let message = match_found(s.clock.now(), 30);
    s.clock.advance(chrono::Duration::seconds(30));

    assert_eq!(
        s.client.send(&s.subscription, &message).await,
        Outcome::Expired
    );
    assert!(s.service.requests().is_empty());
}

#[actix_web::test]
async fn an_unreachable_push_service_means_retry() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}/push", closed.local_addr().unwrap());
    drop(closed);
    let browser = Browser::new();
    let subscription = Subscription::parse(
        &browser.subscribe(&endpoint),
        EndpointPolicy::AllowLoopbackHttp,
    )
    .unwrap();
    let clock = ManualClock::new(start_of_test());
    let client = WebPushClient::new(vapid(), clock.clone()).unwrap();

    let outcome = client
        .send(&subscription, &match_found(clock.now(), 30))
        .await;

    assert_eq!(outcome.label(), "retried", "{outcome:?}");
}

#[test]
fn subscriptions_are_checked_field_by_field() {
    let browser = Browser::new();
    let good = browser.subscribe("https://fcm.googleapis.com/fcm/send/abc:def");
    let parse = |json: &SubscriptionJson| Subscription::parse(json, EndpointPolicy::HttpsOnly);
    let error = |json: SubscriptionJson| parse(&json).unwrap_err().to_string();

    let subscription = parse(&good).unwrap();
    assert_eq!(subscription.origin(), "https://fcm.googleapis.com");
    assert_eq!(subscription.to_json(), good);

    let mut json = good.clone();
    json.endpoint = "http://push.example.com/x".to_owned();
    assert_eq!(
        error(json),
        "endpoint must be an https URL, got scheme \"http\""
    );
    let mut json = good.clone();
    json.endpoint = "not a url".to_owned();
    assert!(error(json).starts_with("endpoint is not an absolute URL"));
    let mut json = good.clone();
    json.endpoint = format!(
        "https://push.example.com/{}",
        "a".repeat(MAX_ENDPOINT_BYTES)
    );
    assert!(error(json).contains("at most 2048"));
    // Under the cap as sent, over it once escaped (`é` is `%C3%A9`), as it would be stored.
    let mut json = good.clone();
    json.endpoint = format!("https://push.example.com/{}", "é".repeat(1000));
    assert!(json.endpoint.len() <= MAX_ENDPOINT_BYTES);
    assert!(error(json).contains("at most 2048"));
    let mut json = good.clone();
    json.endpoint = "https://user:pw@push.example.com/x".to_owned();
    assert_eq!(
        error(json),
        "endpoint must not carry a user name or password"
    );

    let mut json = good.clone();
    json.keys.p256dh = "not base64!".to_owned();
    assert_eq!(error(json), "keys.p256dh is not base64url");
    let mut json = good.clone();
    // The compressed form of a point: 33 bytes.
    json.keys.p256dh = URL_SAFE_NO_PAD.encode(
        browser
            .secret
            .public_key()
            .to_encoded_point(true)
            .as_bytes(),
    );
    assert_eq!(
        error(json),
        "keys.p256dh must be 65 bytes (an uncompressed P-256 point), got 33 bytes"
    );
    let mut json = good.clone();
    let mut off_curve = [7u8; P256DH_BYTES];
    off_curve[0] = 4;
    json.keys.p256dh = URL_SAFE_NO_PAD.encode(off_curve);
    assert_eq!(
        error(json),
        "keys.p256dh is not an uncompressed point on the P-256 curve"
    );
    let mut json = good.clone();
    json.keys.auth = URL_SAFE_NO_PAD.encode([1u8; 12]);
    assert_eq!(error(json), "keys.auth must be 16 bytes, got 12 bytes");
    let mut json = good.clone();
    json.keys.auth = "+/+/".to_owned();
    assert_eq!(error(json), "keys.auth is not base64url");

    // Padded base64url, as some libraries write it, is accepted.
    let mut json = good.clone();
    json.keys.auth = format!("{}==", json.keys.auth);
    assert!(parse(&json).is_ok());
}

#[test]
fn plain_http_is_accepted_only_for_loopback_and_only_when_asked() {
    let browser = Browser::new();
    let check =
        |endpoint: &str, policy| Subscription::parse(&browser.subscribe(endpoint), policy).is_ok();
    use EndpointPolicy::{AllowLoopbackHttp, HttpsOnly};
    assert!(!check("http://127.0.0.1:8080/push", HttpsOnly));
    assert!(check("http://127.0.0.1:8080/push", AllowLoopbackHttp));
    assert!(check("http://[::1]:8080/push", AllowLoopbackHttp));
    assert!(check("http://localhost/push", AllowLoopbackHttp));
    assert!(!check("http://push.example.com/push", AllowLoopbackHttp));
    assert!(!check("http://10.0.0.1/push", AllowLoopbackHttp));
    assert!(!check("ftp://127.0.0.1/push", AllowLoopbackHttp));
    assert!(check("https://push.example.com/push", HttpsOnly));
}

#[test]
fn generated_vapid_keys_load_back_with_a_browser_ready_public_key() {
    let generated = generate_vapid_keys().unwrap();
    let private = generated.private_key.expose_secret();
    assert_eq!(URL_SAFE_NO_PAD.decode(private).unwrap().len(), 32);
    let public = URL_SAFE_NO_PAD.decode(&generated.public_key).unwrap();
    assert_eq!(public.len(), 65);
    assert_eq!(public[0], 0x04, "uncompressed point");

    let keys = VapidKeys::from_private_key(private, SUBJECT).unwrap();
    assert_eq!(keys.public_key(), generated.public_key);
    assert!(!format!("{keys:?}").contains(private));
    assert_ne!(
        generate_vapid_keys().unwrap().public_key,
        generated.public_key
    );
}

#[test]
fn vapid_configuration_problems_are_named() {
    let private = generate_vapid_keys().unwrap().private_key;
    let private = private.expose_secret();
    let error = |key: &str, subject: &str| {
        VapidKeys::from_private_key(key, subject)
            .unwrap_err()
            .to_string()
    };
    assert_eq!(
        error(private, "ops@belay.example"),
        "the VAPID subject must be a mailto: or https: URL, got \"ops@belay.example\""
    );
    assert_eq!(
        error("not base64!", SUBJECT),
        "the VAPID private key is not base64url"
    );
    assert_eq!(
        error(&URL_SAFE_NO_PAD.encode([1u8; 16]), SUBJECT),
        "the VAPID private key must be 32 bytes (a raw P-256 scalar), got 16 bytes"
    );
    assert_eq!(
        error(&URL_SAFE_NO_PAD.encode([0u8; 32]), SUBJECT),
        "the VAPID private key is not a valid P-256 scalar"
    );
    assert!(VapidKeys::from_private_key(private, "https://belay.example").is_ok());
    // A padded key, as some generators print it, loads too.
    assert!(VapidKeys::from_private_key(&format!("{private}="), SUBJECT).is_ok());
}
