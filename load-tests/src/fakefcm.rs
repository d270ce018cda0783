//! `fake-fcm`: a fake OAuth token endpoint and a fake FCM HTTP v1 on one loopback port, as a
//! process of its own, so a Belay node started separately can push to it under load.
//!
//! - `POST /token` checks the RS256 assertion against the test service account's public key
//!   (`src/push/testdata/`) and issues an access token.
//! - `POST /v1/projects/<p>/messages:send` refuses a bearer it did not issue (401), otherwise
//!   answers after `--latency-ms`: 404 `UNREGISTERED` for `--dead-percent` of the registration
//!   tokens (chosen by a hash of the token, so a dead token stays dead), 503 `UNAVAILABLE` with
//!   `Retry-After: 1` for `--unavailable-percent` of the requests, 200 otherwise.
//! - `GET /stats` returns what arrived: counts per status, and per send its arrival time (Unix
//!   µs, the clock the `push` scenario stamps its events with), `data.notification_id`,
//!   `data.kind` and the status answered.

use std::collections::{BTreeMap, HashSet};
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use belay::push::fake::{FakeServer, Recorded, Reply};
use clap::{Args, value_parser};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Serialize;
use serde_json::{Value, json};

const PRIVATE_KEY: &str = include_str!("../../src/push/testdata/service-account-key.pem");
const PUBLIC_KEY: &str = include_str!("../../src/push/testdata/service-account-public.pem");

#[derive(Debug, Args)]
pub struct FakeFcmArgs {
    /// Loopback port of both the token endpoint and FCM.
    #[arg(long)]
    pub port: u16,
    /// Milliseconds FCM takes to answer a send.
    #[arg(long, default_value_t = 50, value_parser = value_parser!(u64).range(0..=60_000))]
    pub latency_ms: u64,
    /// Share of registration tokens (by hash) answered 404 UNREGISTERED, in percent.
    #[arg(long, default_value_t = 0.0)]
    pub dead_percent: f64,
    /// Share of sends answered 503 UNAVAILABLE with `Retry-After: 1`, in percent.
    #[arg(long, default_value_t = 0.0)]
    pub unavailable_percent: f64,
    /// Where to write the service-account JSON (token_uri pointing here, the test key).
    #[arg(long)]
    pub credentials_out: PathBuf,
    /// Project id written into the service account.
    #[arg(long, default_value = "belay-load")]
    pub project: String,
    /// The fake stops by itself after this many seconds.
    #[arg(long, default_value_t = 900, value_parser = value_parser!(u64).range(1..=3600))]
    pub lifetime: u64,
}

/// One send as FCM saw it.
#[derive(Serialize, Clone)]
struct Send {
    /// Arrival, Unix µs.
    at_us: u64,
    notification_id: String,
    kind: String,
    status: u16,
}

#[derive(Default)]
struct Log {
    issued: HashSet<String>,
    token_requests: u64,
    token_refusals: u64,
    by_status: BTreeMap<u16, u64>,
    sends: Vec<Send>,
}

pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or_default()
}

/// FNV-1a: stable across runs and builds, so the same tokens are dead every time.
fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Whether `key` falls within `percent` of the hash space.
fn chosen(key: &[u8], percent: f64) -> bool {
    percent > 0.0 && (fnv(key) % 1_000_000) as f64 / 10_000.0 < percent
}

fn google_error(status: u16, name: &str, fcm_code: Option<&str>) -> Reply {
    let mut error = json!({"code": status, "message": name, "status": name});
    if let Some(code) = fcm_code {
        error["details"] = json!([{
            "@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError",
            "errorCode": code,
        }]);
    }
    Reply::json(status, json!({ "error": error }))
}

struct Fake {
    args: FakeFcmArgs,
    log: Mutex<Log>,
    key: DecodingKey,
}

impl Fake {
    fn log(&self) -> std::sync::MutexGuard<'_, Log> {
        self.log.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn answer(&self, request: &Recorded) -> Reply {
        let path = request.path.split('?').next().unwrap_or_default();
        match (request.method.as_str(), path) {
            ("POST", "/token") => self.token(request),
            ("GET", "/stats") => self.stats(),
            ("POST", p) if p.ends_with("/messages:send") => self.send(request),
            _ => google_error(404, "NOT_FOUND", None),
        }
    }

    fn token(&self, request: &Recorded) -> Reply {
        let assertion = request
            .form()
            .into_iter()
            .find(|(k, _)| k == "assertion")
            .map(|(_, v)| v)
            .unwrap_or_default();
        let mut validation = Validation::new(Algorithm::RS256);
        validation.validate_aud = false;
        let mut log = self.log();
        log.token_requests += 1;
        if jsonwebtoken::decode::<Value>(&assertion, &self.key, &validation).is_err() {
            log.token_refusals += 1;
            return Reply::json(400, json!({"error": "invalid_grant"}));
        }
        let token = format!(
            "fake-access-{}-{:x}",
            log.issued.len(),
            fnv(&now_us().to_le_bytes())
        );
        log.issued.insert(token.clone());
        Reply::json(
            200,
            json!({"access_token": token, "expires_in": 3600, "token_type": "Bearer"}),
        )
    }

    fn send(&self, request: &Recorded) -> Reply {
        let at_us = now_us();
        let latency = Duration::from_millis(self.args.latency_ms);
        let bearer = request
            .header("authorization")
            .and_then(|h| h.strip_prefix("Bearer "))
            .unwrap_or_default();
        let body: Value = serde_json::from_slice(&request.body).unwrap_or_default();
        let message = &body["message"];
        let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
        let mut log = self.log();
        let number = log.sends.len() as u64;
        let reply = if !log.issued.contains(bearer) {
            google_error(401, "UNAUTHENTICATED", None)
        } else if chosen(text(&message["token"]).as_bytes(), self.args.dead_percent) {
            google_error(404, "NOT_FOUND", Some("UNREGISTERED"))
        } else if chosen(
            &number.wrapping_mul(0x9e37_79b9_7f4a_7c15).to_le_bytes(),
            self.args.unavailable_percent,
        ) {
            google_error(503, "UNAVAILABLE", Some("UNAVAILABLE")).with_header("retry-after", "1")
        } else {
            Reply::json(
                200,
                json!({"name": format!("projects/{}/messages/{number}", self.args.project)}),
            )
        };
        *log.by_status.entry(reply.status).or_default() += 1;
        log.sends.push(Send {
            at_us,
            notification_id: text(&message["data"]["notification_id"]),
            kind: text(&message["data"]["kind"]),
            status: reply.status,
        });
        reply.after(latency)
    }

    fn stats(&self) -> Reply {
        let log = self.log();
        Reply::json(
            200,
            json!({
                "token_requests": log.token_requests,
                "token_refusals": log.token_refusals,
                "by_status": log.by_status,
                "sends": log.sends,
            }),
        )
    }
}

pub fn run(args: FakeFcmArgs) -> Result<()> {
    let key = DecodingKey::from_rsa_pem(PUBLIC_KEY.as_bytes()).context("the test public key")?;
    let account = json!({
        "type": "service_account",
        "project_id": args.project,
        "private_key_id": "belay-load",
        "private_key": PRIVATE_KEY,
        "client_email": "push@belay-load.iam.gserviceaccount.com",
        "token_uri": format!("http://127.0.0.1:{}/token", args.port),
    });
    let mut file = std::fs::File::create(&args.credentials_out)
        .with_context(|| format!("creating {}", args.credentials_out.display()))?;
    file.write_all(account.to_string().as_bytes())
        .with_context(|| format!("writing {}", args.credentials_out.display()))?;
    let lifetime = Duration::from_secs(args.lifetime);
    let port = args.port;
    eprintln!(
        "fake FCM on http://127.0.0.1:{port}: {} ms, {}% dead tokens, {}% 503; credentials in {}",
        args.latency_ms,
        args.dead_percent,
        args.unavailable_percent,
        args.credentials_out.display()
    );
    let fake = Arc::new(Fake {
        args,
        log: Mutex::default(),
        key,
    });
    actix_web::rt::System::new().block_on(async move {
        let _server = FakeServer::start_on(port, false, move |request| fake.answer(request));
        actix_web::rt::time::sleep(lifetime).await;
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dead_share_is_about_what_was_asked_and_stable() {
        let dead = (0..100_000)
            .filter(|i| chosen(format!("token-{i}").as_bytes(), 1.0))
            .count();
        assert!((800..1200).contains(&dead), "{dead}");
        assert_eq!(chosen(b"token-7", 1.0), chosen(b"token-7", 1.0));
        assert!(!chosen(b"token-7", 0.0));
    }
}
