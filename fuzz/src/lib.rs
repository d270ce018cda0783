//! The properties each fuzz target holds Belay's parsers of outside input to: nothing panics, a
//! refused input gets an error (a 4xx where it is an HTTP answer), and an accepted value
//! round-trips or keeps its invariants. One function per target, called by the target in
//! `fuzz_targets/` and, for every committed seed and regression input, by the ordinary test
//! run (`tests/fuzz_regressions.rs` includes this file).

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use actix_web::http::Uri;
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::test::TestRequest;
use belay::cluster::message::Message;
use belay::config::{Secrets, Settings};
use belay::domain::grade::{GradeScale, MAX_TIME_MS, MIN_TIME_MS, validate_time_ms};
use belay::domain::ids::{MAX_ID_LEN, truncate};
use belay::domain::preferences::{Preferences, PreferencesBody, settable_kinds};
use belay::domain::{
    Broadcast, Cursor, Discipline, Event, EventKind, Grade, IdempotencyKey, Notification, PostId,
    RouteId, Scope, UserId,
};
use belay::error::{ApiError, ErrorKind};
use belay::fuzzing;
use belay::http::auth::Authenticator;
use belay::http::devices::DeviceBody;
use belay::http::host::{BroadcastRequest, UniqueKeys};
use belay::matchmaking::policy::ArrivalRates;
use belay::push::fcm::{self, FcmToken, InvalidFcmToken, MAX_MESSAGE_BYTES, MAX_TOKEN_BYTES};
use belay::push::message::PushMessage;
use belay::push::webpush::{
    self, EndpointPolicy, Subscription, SubscriptionJson, SubscriptionKeys,
};
use belay::push::{Outcome, RETRY_AFTER_MAX, parse_retry_after};
use belay::sse::frame;
use belay::store::push::Platform;
use chrono::{DateTime, TimeZone, Utc};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use secrecy::SecretString;
use serde_json::Value;
use uuid::Uuid;

/// The checks of one target, over one input.
pub type Check = fn(&[u8]);

/// Every target by name, as its folder under `fuzz/seeds/` and its file under `fuzz_targets/`.
pub const TARGETS: &[(&str, Check)] = &[
    ("last_event_id", last_event_id),
    ("token", token),
    ("notify", notify),
    ("broadcast", broadcast),
    ("grade", grade),
    ("config_env", config_env),
    ("device", device),
    ("preferences", preferences),
    ("retry_after", retry_after),
    ("cluster_message", cluster_message),
];

/// The default `limits.max_batch`.
const MAX_BATCH: usize = 100;
/// The secret the token target signs its own claims with.
const JWT_SECRET: &str = "fuzz-secret";
/// `auth.rs` tolerates this much skew on `exp`.
const LEEWAY_SECS: u64 = 30;

fn text(data: &[u8]) -> Option<&str> {
    std::str::from_utf8(data).ok()
}

/// An HTTP answer to bad input is a 4xx, never a 500.
fn assert_client_error(error: &ApiError) {
    let status = error.kind.status();
    assert!(status.is_client_error(), "{status} for {error}");
    assert!(!error.message.is_empty(), "{error:?} has no message");
}

/// A request to `path` with `query` (bytes a client could not send are percent-encoded, as a
/// client would) and the headers that are valid header values.
fn request(path: &str, query: &[u8], headers: &[(&'static str, &[u8])]) -> actix_web::HttpRequest {
    let mut uri = format!("{path}?");
    for &b in query {
        if b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/?%".contains(&b) {
            uri.push(char::from(b));
        } else {
            uri.push_str(&format!("%{b:02X}"));
        }
    }
    let uri = if Uri::try_from(uri.as_str()).is_ok() {
        uri
    } else {
        path.to_owned()
    };
    let mut req = TestRequest::default().uri(&uri);
    for (name, value) in headers {
        if let Ok(value) = HeaderValue::from_bytes(value) {
            req = req.insert_header((HeaderName::from_static(name), value));
        }
    }
    req.to_http_request()
}

/// Splits at the first `\n`; no `\n` leaves the second part empty.
fn split_line(data: &[u8]) -> (&[u8], &[u8]) {
    match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[]),
    }
}

/// What `GET /v1/events` resumes after, given the raw value it reads: nothing when absent or
/// blank, else the cursor (whose own properties the `grade` target checks).
fn model_resume(raw: Option<&str>) -> Result<Option<Cursor>, ()> {
    match raw.map(str::trim) {
        None | Some("") => Ok(None),
        Some(raw) => Cursor::parse(raw).map(Some).map_err(drop),
    }
}

/// `Last-Event-ID` (header) and `last_event_id` (query) of `GET /v1/events`.
/// Input: `<header value>\n<query string>`; an empty first line sends no header.
pub fn last_event_id(data: &[u8]) {
    let (header, query) = split_line(data);
    let headers: &[(&'static str, &[u8])] = if header.is_empty() {
        &[]
    } else {
        &[("last-event-id", header)]
    };
    let req = request("/v1/events", query, headers);
    let Some(result) = fuzzing::resume_cursor(&req) else {
        return;
    };
    let expected = match req.headers().get("last-event-id") {
        Some(value) => match value.to_str() {
            Ok(value) => model_resume(Some(value)),
            Err(_) => Err(()),
        },
        None => {
            let query = form_urlencoded::parse(req.query_string().as_bytes())
                .filter(|(k, _)| k == "last_event_id")
                .map(|(_, v)| v.into_owned())
                .last();
            model_resume(query.as_deref())
        }
    };
    match (&result, expected) {
        (Ok(got), Ok(want)) => assert_eq!(*got, want),
        (Err(e), Err(())) => {
            assert_eq!(e.kind, ErrorKind::InvalidCursor);
            assert_client_error(e);
        }
        (got, want) => panic!("resume cursor {got:?}, expected {want:?}"),
    }
    if let Ok(Some(cursor)) = result {
        assert!(cursor.0 >= 0);
        assert_eq!(Cursor::parse(&cursor.to_string()), Ok(cursor));
    }
}

/// Token extraction (`Authorization`, `belay_token` cookie, `access_token` query) and the JWT
/// checks. Input: lines `<authorization>\n<cookie>\n<query>\n<algorithm byte><claims JSON>`;
/// the claims are signed with the right secret, so the checks after the signature are reached.
pub fn token(data: &[u8]) {
    let (authorization, rest) = split_line(data);
    let (cookie, rest) = split_line(rest);
    let (query, claims) = split_line(rest);
    let mut headers: Vec<(&'static str, &[u8])> = Vec::new();
    if !authorization.is_empty() {
        headers.push(("authorization", authorization));
    }
    if !cookie.is_empty() {
        headers.push(("cookie", cookie));
    }
    let req = request("/v1/events", query, &headers);
    let found = fuzzing::token_from(&req);

    if let Some(value) = req.headers().get("authorization") {
        // The header decides alone, even when it is not a Bearer one.
        let expected = value
            .to_str()
            .ok()
            .and_then(fuzzing::bearer_token)
            .map(str::to_owned);
        assert_eq!(found, expected);
    }
    if let Some(value) = text(authorization)
        && let Some(token) = fuzzing::bearer_token(value)
    {
        let (scheme, _) = value.trim_start().split_at(6);
        assert!(scheme.eq_ignore_ascii_case("bearer"), "{value:?}");
        assert!(!token.is_empty() && token.trim() == token, "{token:?}");
        assert!(value.contains(token));
    }

    let secrets = Secrets {
        jwt_secret: SecretString::from(JWT_SECRET),
        api_key: SecretString::from("fuzz-key"),
    };
    let auth = Authenticator::new(&secrets);
    // Nothing the input says is signed with the secret.
    if let Some(token) = &found {
        match auth.verify(token) {
            Ok(user) => panic!("an unsigned token was accepted for {user}: {token:?}"),
            Err(e) => assert_eq!(e.kind, ErrorKind::Unauthorized),
        }
    }

    let Some((&alg, claims)) = claims.split_first() else {
        return;
    };
    let Ok(claims) = serde_json::from_slice::<Value>(claims) else {
        return;
    };
    let algorithm = [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512][usize::from(alg % 3)];
    let key = EncodingKey::from_secret(JWT_SECRET.as_bytes());
    let Ok(signed) = jsonwebtoken::encode(&Header::new(algorithm), &claims, &key) else {
        return;
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    match auth.verify(&signed) {
        Ok(user) => {
            assert_eq!(algorithm, Algorithm::HS256, "only HS256 is accepted");
            assert_eq!(claims["sub"].as_str(), Some(user.as_str()));
            let exp = claims["exp"].as_u64();
            assert!(
                exp.is_some_and(|exp| exp.saturating_add(LEEWAY_SECS) >= now),
                "an expired token was accepted: {claims}"
            );
        }
        Err(e) => assert_eq!(e.kind, ErrorKind::Unauthorized),
    }
    if let Some(Ok(user)) = claims["sub"].as_str().map(UserId::parse) {
        let minted = auth.mint(&user, std::time::Duration::from_secs(60));
        let Ok((minted, _)) = minted else {
            panic!("cannot mint a token for {user}");
        };
        assert_eq!(auth.verify(&minted).ok(), Some(user));
    }
}

/// An accepted event is stored as `(kind, data)` text and comes back the same, its SSE frame
/// holds exactly its lines, and its push fits FCM's size limit.
fn assert_event_survives_the_engine(event: &Event) {
    let Ok(data) = event.data_json_text() else {
        panic!("cannot store {event:?}");
    };
    match Event::from_stored(event.kind().as_str(), &data) {
        Ok(back) => assert_eq!(&back, event),
        Err(e) => panic!("stored {event:?} does not read back: {e}"),
    }
    let at = Utc
        .timestamp_opt(1_800_000_000, 0)
        .single()
        .unwrap_or_default();
    let notification = Notification {
        id: Uuid::from_u128(7),
        cursor: Cursor(7),
        event: event.clone(),
        created_at: at,
        updated_at: at,
        read: false,
    };
    let Ok(bytes) = frame::user_event(&notification) else {
        panic!("cannot frame {event:?}");
    };
    assert_frame(&bytes, event.kind(), 3);
    let recipient = UserId::parse("recipient").unwrap_or_else(|e| panic!("{e}"));
    let push = PushMessage::for_notification(&notification, &recipient, at);
    let token = FcmToken::parse(&"t".repeat(MAX_TOKEN_BYTES)).unwrap_or_else(|e| panic!("{e}"));
    match fcm::message_body(&token, &push, at) {
        Ok(Some(body)) => assert!(body.len() <= MAX_MESSAGE_BYTES, "{}", body.len()),
        Ok(None) => {}
        Err(e) => panic!("the push of {event:?} does not fit: {e}"),
    }
    if let Ok(payload) = webpush::payload(&push) {
        assert!(payload.len() <= webpush::MAX_PLAINTEXT_BYTES);
    }
}

/// An SSE frame of `lines` lines (`id:`, `event:`, `data:`, or without `id:`), then a blank
/// line: text from the input cannot add a line or end the frame early.
fn assert_frame(bytes: &[u8], kind: EventKind, lines: usize) {
    let Ok(text) = std::str::from_utf8(bytes) else {
        panic!("a frame is not UTF-8");
    };
    let body = text
        .strip_suffix("\n\n")
        .unwrap_or_else(|| panic!("{text:?}"));
    assert_eq!(body.split('\n').count(), lines, "{text:?}");
    assert!(!body.contains('\r'), "{text:?}");
    assert_eq!(frame::kind_of(bytes), Some(kind));
}

/// `POST /v1/notify` (one item or a batch), after the JSON extractor that refuses a repeated
/// key at any depth. Input: the body.
pub fn notify(data: &[u8]) {
    let unique = serde_json::from_slice::<UniqueKeys>(data);
    let plain = serde_json::from_slice::<Value>(data);
    let value = match (unique, plain) {
        (Ok(UniqueKeys(value)), Ok(plain)) => {
            assert_eq!(value, plain, "UniqueKeys reads JSON as serde_json does");
            value
        }
        (Ok(UniqueKeys(value)), Err(e)) => panic!("{value} accepted, serde_json says {e}"),
        (Err(e), Ok(_)) => {
            assert!(e.is_data(), "{e}");
            assert!(e.to_string().starts_with("duplicate field"), "{e}");
            return;
        }
        (Err(_), Err(_)) => return,
    };
    for max_batch in [MAX_BATCH, 2] {
        match fuzzing::parse_notify(value.clone(), max_batch) {
            Ok(events) => {
                let expected = match value.get("events").and_then(Value::as_array) {
                    Some(items) => items.len(),
                    None => 1,
                };
                assert_eq!(events.len(), expected);
                assert!((1..=max_batch).contains(&events.len()));
                for new in &events {
                    assert!(new.event.kind().host_may_notify(), "{:?}", new.event);
                    assert_eq!(UserId::parse(new.user.as_str()).as_ref(), Ok(&new.user));
                    if let Some(key) = &new.idempotency_key {
                        assert_eq!(IdempotencyKey::parse(key.as_str()).as_ref(), Ok(key));
                    }
                    assert_event_survives_the_engine(&new.event);
                }
            }
            Err(e) => assert_client_error(&e),
        }
    }
}

/// `POST /v1/broadcast`, after the JSON extractor. Input: the body.
pub fn broadcast(data: &[u8]) {
    let Ok(body) = serde_json::from_slice::<BroadcastRequest>(data) else {
        return;
    };
    // No key repeats anywhere in an accepted body: serde refuses repeated fields, and `data`
    // is read through `UniqueKeys`.
    assert!(
        serde_json::from_slice::<UniqueKeys>(data).is_ok(),
        "a broadcast body with a repeated key was accepted"
    );
    match fuzzing::parse_broadcast(body) {
        Ok(event) => {
            assert!(event.kind().host_may_broadcast(), "{event:?}");
            if let Event::NewPost { title, .. } = &event {
                assert!(title.chars().count() <= belay::domain::event::MAX_TITLE_CHARS);
            }
            let sent_at = Utc
                .timestamp_opt(1_800_000_000, 0)
                .single()
                .unwrap_or_default();
            let wire = Broadcast {
                event: event.clone(),
                sent_at,
            };
            let Ok(bytes) = frame::broadcast(&wire) else {
                panic!("cannot frame {event:?}");
            };
            assert_frame(&bytes, event.kind(), 2);
            let json = serde_json::to_string(&wire).unwrap_or_else(|e| panic!("{e}"));
            match serde_json::from_str::<Broadcast>(&json) {
                Ok(back) => assert_eq!(back, wire),
                Err(e) => panic!("{json} does not read back: {e}"),
            }
            assert_event_survives_the_engine(&event);
        }
        Err(e) => assert_client_error(&e),
    }
}

fn assert_id<T, E>(raw: &str, parse: fn(String) -> Result<T, E>, as_str: fn(&T) -> &str)
where
    T: serde::de::DeserializeOwned + serde::Serialize + PartialEq + std::fmt::Debug,
    E: std::fmt::Debug,
{
    let parsed = parse(raw.to_owned());
    let via_serde = serde_json::from_value::<T>(Value::String(raw.to_owned()));
    assert_eq!(parsed.is_ok(), via_serde.is_ok(), "{raw:?}");
    if let Ok(id) = parsed {
        assert_eq!(as_str(&id), raw);
        assert!((1..=MAX_ID_LEN).contains(&raw.len()));
        assert!(
            raw.chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.@:-".contains(c))
        );
        assert_eq!(
            serde_json::to_value(&id).ok(),
            Some(Value::String(raw.into()))
        );
    }
}

/// Grades, speed times, disciplines, kinds, ids and cursors; and the body of
/// `POST /v1/ascents`. Input: one text value, or an ascent body.
pub fn grade(data: &[u8]) {
    if let Ok(body) = serde_json::from_slice::<belay::http::ascents::AscentBody>(data) {
        if let Some(grade) = &body.grade {
            let _ = Grade::parse(body.discipline, grade);
        }
        if let Some(ms) = body.time_ms {
            let _ = validate_time_ms(ms);
        }
    }
    let Some(raw) = text(data) else {
        return;
    };
    for discipline in Discipline::ALL {
        match Grade::parse(discipline, raw) {
            Ok(grade) => {
                assert_ne!(discipline, Discipline::Speed);
                assert!(grade.as_str().eq_ignore_ascii_case(raw.trim()), "{raw:?}");
                assert_eq!(Grade::parse(discipline, grade.as_str()), Ok(grade.clone()));
                assert!(grade.difficulty() >= 1);
                let scales: &[GradeScale] = match discipline {
                    Discipline::Lead => &[GradeScale::French],
                    _ => &[GradeScale::Font, GradeScale::VScale],
                };
                assert!(scales.contains(&grade.scale()));
            }
            Err(e) => assert!(!e.is_empty()),
        }
    }
    let discipline = Discipline::parse(raw);
    let via_serde = serde_json::from_value::<Discipline>(Value::String(raw.to_owned()));
    assert_eq!(discipline.as_ref().ok(), via_serde.as_ref().ok(), "{raw:?}");
    if let Ok(d) = discipline {
        assert_eq!(d.as_str(), raw);
    }
    let kind = EventKind::parse(raw);
    let via_serde = serde_json::from_value::<EventKind>(Value::String(raw.to_owned()));
    assert_eq!(kind, via_serde.ok(), "{raw:?}");
    if let Some(k) = kind {
        assert_eq!(k.as_str(), raw);
    }
    assert_id(raw, UserId::parse, UserId::as_str);
    assert_id(raw, PostId::parse, PostId::as_str);
    assert_id(raw, RouteId::parse, RouteId::as_str);
    assert_id(raw, Scope::parse, Scope::as_str);
    assert_id(raw, IdempotencyKey::parse, IdempotencyKey::as_str);
    match Cursor::parse(raw) {
        Ok(cursor) => {
            assert!(cursor.0 >= 0);
            assert_eq!(raw.trim().parse::<i64>(), Ok(cursor.0));
            assert_eq!(Cursor::parse(&cursor.to_string()), Ok(cursor));
        }
        Err(e) => assert!(!e.is_empty()),
    }
    if let Ok(ms) = raw.trim().parse::<u64>() {
        match validate_time_ms(ms) {
            Ok(kept) => assert!(kept == ms && (MIN_TIME_MS..=MAX_TIME_MS).contains(&ms)),
            Err(_) => assert!(!(MIN_TIME_MS..=MAX_TIME_MS).contains(&ms)),
        }
    }
    for max in [0, 1, 8, 32, 40] {
        let cut = truncate(raw, max);
        assert!(raw.starts_with(cut) && cut.chars().count() <= max);
    }
}

/// Settings from `BELAY__SECTION__KEY` variables over the embedded defaults. Input: lines
/// `NAME=VALUE`; the process environment is not read.
pub fn config_env(data: &[u8]) {
    let Some(raw) = text(data) else {
        return;
    };
    let env: HashMap<String, String> = raw
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let Ok(settings) = Settings::load_with_env(None, Some(env)) else {
        return;
    };
    // What start-up derives from accepted settings must not fail.
    assert!(settings.push.push_kinds().is_ok());
    let timing = settings.matchmaking.timing();
    assert!(timing.ready_ms > 0 && timing.challenge_ms > 0 && timing.result_ms > 0);
    assert!(settings.heartbeat().as_secs() >= 1);
    assert!(belay::store::Kind::of(&settings.database.url).is_ok());
    let _ = settings.database.url_for_logs();
    if let Some(url) = settings.redis.url() {
        assert!(url.starts_with("redis://"), "{url}");
    }
    assert!(settings.sse.queue_capacity >= 4 && settings.limits.max_batch >= 1);
    // The matchmaker runs on the configured policy whatever its numbers: a gap it says a
    // ticket accepts after a wait is within the window at that wait.
    let policy = &settings.matchmaking.policy;
    let mut rates = ArrivalRates::default();
    for (at, rating) in [
        (0, 1500.0),
        (1_000, 1200.0),
        (2_000, 1800.0),
        (60_000, 1510.0),
    ] {
        rates.record(policy, rating, at);
    }
    let (fair, queue) = rates.per_sec(policy, 1500.0, policy.fair_gap, 61_000);
    let hold = policy.hold_for(fair, queue);
    for gap in [0.0, 35.0, 70.0, 300.0, 1e6] {
        if let Some(wait) = policy.wait_for_gap(hold, gap) {
            let window = policy.window(hold, wait);
            assert!(gap <= window, "gap {gap} after {wait} ms, window {window}");
        }
    }
}

/// `POST /v1/devices` (FCM tokens, Web Push subscriptions) after the JSON extractor; the input
/// as a raw FCM token too. Input: the body.
pub fn device(data: &[u8]) {
    if let Some(raw) = text(data) {
        match FcmToken::parse(raw) {
            Ok(token) => {
                assert_eq!(token.as_str(), raw);
                assert!(!raw.is_empty() && raw.len() <= MAX_TOKEN_BYTES);
            }
            Err(InvalidFcmToken::BadChar { found, at }) => {
                assert!(raw[at..].starts_with(found), "{raw:?} {at} {found:?}");
            }
            Err(_) => {}
        }
    }
    let mut accepted_https_only = false;
    for policy in [EndpointPolicy::HttpsOnly, EndpointPolicy::AllowLoopbackHttp] {
        let Ok(body) = serde_json::from_slice::<DeviceBody>(data) else {
            return;
        };
        let subscription = body.subscription.clone();
        let device = match fuzzing::parse_device(body, policy) {
            Ok(device) => device,
            Err(e) => {
                assert_client_error(&e);
                assert!(!accepted_https_only, "loopback policy refuses more: {e}");
                continue;
            }
        };
        accepted_https_only |= policy == EndpointPolicy::HttpsOnly;
        match device.platform {
            Platform::Fcm => {
                let token = FcmToken::parse(&device.token).unwrap_or_else(|e| panic!("{e}"));
                assert!(device.p256dh.is_none() && device.auth.is_none());
                let (push, now) = fcm_probe();
                match fcm::message_body(&token, &push, now) {
                    Ok(Some(body)) => assert!(body.len() <= MAX_MESSAGE_BYTES),
                    other => panic!("a push to an accepted token: {other:?}"),
                }
            }
            Platform::Webpush => {
                let Some(original) = subscription else {
                    panic!("a webpush device without a subscription");
                };
                let first = Subscription::parse(&original, policy)
                    .unwrap_or_else(|e| panic!("accepted, then refused: {e}"));
                // What the push actor reads back from the stored row.
                let stored = SubscriptionJson {
                    endpoint: device.token.clone(),
                    keys: SubscriptionKeys {
                        p256dh: device.p256dh.clone().unwrap_or_default(),
                        auth: device.auth.clone().unwrap_or_default(),
                    },
                };
                match Subscription::parse(&stored, policy) {
                    Ok(again) => assert_eq!(again, first, "the stored row reads back otherwise"),
                    Err(e) => panic!("the stored row of an accepted device is refused: {e}"),
                }
                match Subscription::parse(&first.to_json(), policy) {
                    Ok(again) => assert_eq!(again, first),
                    Err(e) => panic!("the canonical form is refused: {e}"),
                }
                let _ = first.origin();
            }
        }
    }
}

/// A push of the longest ids and when it was made, to check that an accepted token leaves room
/// for it.
fn fcm_probe() -> (PushMessage, DateTime<Utc>) {
    let long = "x".repeat(MAX_ID_LEN);
    let id = |s: &str| PostId::parse(s).unwrap_or_else(|e| panic!("{e}"));
    let user = |s: &str| UserId::parse(s).unwrap_or_else(|e| panic!("{e}"));
    let at = Utc
        .timestamp_opt(1_800_000_000, 0)
        .single()
        .unwrap_or_default();
    let event = Event::PostLiked(belay::domain::PostLiked::new(id(&long), user(&long)));
    let notification = Notification {
        id: Uuid::from_u128(u128::MAX),
        cursor: Cursor(i64::MAX),
        event,
        created_at: at,
        updated_at: at,
        read: false,
    };
    let push = PushMessage::for_notification(&notification, &user("someone"), at);
    (push, at)
}

/// `PUT /v1/preferences` after the JSON extractor, and preferences read back from the store.
/// Input: the body.
pub fn preferences(data: &[u8]) {
    if let Some(raw) = text(data) {
        let _ = Preferences::from_stored(Some(raw));
    }
    let Ok(body) = serde_json::from_slice::<PreferencesBody>(data) else {
        return;
    };
    let Ok(prefs) = Preferences::from_body(&body) else {
        return;
    };
    let stored = prefs.to_stored();
    assert_eq!(Preferences::from_body(&stored).as_ref(), Ok(&prefs));
    let json = serde_json::to_string(&stored).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(Preferences::from_stored(Some(&json)), prefs);
    let shown = prefs.to_body(|_| true);
    assert_eq!(shown.kinds.len(), settable_kinds().count());
    assert_eq!(
        Preferences::from_body(&shown).map(|p| p.live_mask()),
        Ok(prefs.live_mask())
    );
    let mask = prefs.live_mask();
    // Instants across a few years, from the input, in the climber's zone.
    let seed = data
        .iter()
        .fold(0i64, |h, &b| h.wrapping_mul(31).wrapping_add(i64::from(b)));
    let at = Utc
        .timestamp_opt(1_700_000_000 + seed.rem_euclid(200_000_000), 0)
        .single()
        .unwrap_or_default();
    for kind in settable_kinds() {
        assert_eq!(mask.mutes(kind), !prefs.live(kind));
        let _ = prefs.push(kind, at, |_| true);
    }
}

/// What push providers answer: `Retry-After`, and the error bodies of FCM and Web Push.
/// Input: `<status>\n<Retry-After value>\n<body>`.
pub fn retry_after(data: &[u8]) {
    let (status, rest) = split_line(data);
    let (value, body) = split_line(rest);
    let now: DateTime<Utc> = Utc
        .timestamp_opt(1_800_000_000, 0)
        .single()
        .unwrap_or_default();
    let retry = text(value).and_then(|value| {
        let parsed = parse_retry_after(value, now);
        if let Some(delay) = parsed {
            assert!(delay <= RETRY_AFTER_MAX, "{delay:?}");
            if let Ok(seconds) = value.trim().parse::<u64>() {
                assert_eq!(delay.as_secs(), seconds.min(RETRY_AFTER_MAX.as_secs()));
            }
        }
        for extreme in [DateTime::<Utc>::MIN_UTC, DateTime::<Utc>::MAX_UTC] {
            if let Some(delay) = parse_retry_after(value, extreme) {
                assert!(delay <= RETRY_AFTER_MAX);
            }
        }
        parsed
    });
    let status = text(status)
        .and_then(|s| s.trim().parse::<u16>().ok())
        .unwrap_or(500);
    let body = String::from_utf8_lossy(body);
    let outcome = fcm::classify(status, retry, &body);
    assert_eq!(
        matches!(outcome, Outcome::Sent),
        (200..300).contains(&status),
        "{outcome:?}"
    );
    if let Ok(code) = reqwest::StatusCode::from_u16(status) {
        let outcome = webpush::classify(code, retry, &body);
        if let Outcome::RemoveDevice { reason } | Outcome::Failed { reason } = &outcome {
            assert!(reason.chars().count() <= 400, "{}", reason.len());
        }
    }
}

/// Frames from other nodes, as read from Redis. Input: the message bytes.
pub fn cluster_message(data: &[u8]) {
    if let Some(messages) = belay::cluster::message::decode_any(data) {
        let encoded: Vec<Vec<u8>> = messages.iter().map(Message::encode).collect();
        let again = match Message::decode(data) {
            Some(_) => encoded.first().cloned().unwrap_or_default(),
            None => {
                let slices: Vec<&[u8]> = encoded.iter().map(Vec::as_slice).collect();
                belay::cluster::message::encode_batch("n", &slices)
            }
        };
        assert_eq!(
            belay::cluster::message::decode_any(&again).as_ref(),
            Some(&messages)
        );
    }
    let Some(message) = Message::decode(data) else {
        return;
    };
    assert!(!message.node.contains([' ', '\n']), "{:?}", message.node);
    assert!(data.ends_with(&message.frame));
    assert_eq!(Message::decode(&message.encode()).as_ref(), Some(&message));
    if let Some(user) = message.user() {
        assert_eq!(UserId::parse(user.as_str()).as_ref(), Ok(user));
    }
}
