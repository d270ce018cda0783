//! Firebase Cloud Messaging HTTP v1: a service-account key becomes an OAuth2 access token
//! (RS256 JWT assertion, RFC 7523), cached until shortly before it expires, and each push is one
//! `POST {base_url}/v1/projects/{project}/messages:send` whose answer becomes an [`Outcome`].
//!
//! The whole message stays within [`MAX_MESSAGE_BYTES`]: the body is cut first, then the title,
//! always on a char boundary and before encoding, so the JSON is never broken. The key file's
//! own `token_uri` and `project_id` are used, which is also what lets tests point it at fakes.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, RETRY_AFTER};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::message::PushMessage;
use super::{Clock, Outcome, Retry, RetryCause, fit_text, http_client, parse_retry_after};

/// Where FCM lives; `push.fcm.base_url` replaces it in tests.
pub const DEFAULT_BASE_URL: &str = "https://fcm.googleapis.com";
/// The one OAuth2 scope sending needs.
pub const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";
/// RFC 7523's grant type for a JWT assertion.
pub const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// FCM's limit on a message; ours covers the whole request body, token and options included.
pub const MAX_MESSAGE_BYTES: usize = 4096;
/// Lifetime asked for in the assertion; Google accepts at most an hour.
pub const ASSERTION_LIFETIME: Duration = Duration::from_secs(60 * 60);
/// A cached access token is replaced this long before it expires, so no send races its expiry.
pub const TOKEN_REFRESH_MARGIN: Duration = Duration::from_secs(5 * 60);
/// Longest registration token accepted; real ones are about 160 bytes.
pub const MAX_TOKEN_BYTES: usize = 1024;
/// How much of a provider's error text is kept in an outcome's reason.
const MAX_REASON_CHARS: usize = 300;

/// The fields of a Google service-account key file that sending needs.
#[derive(Clone, Deserialize)]
pub struct ServiceAccount {
    pub project_id: String,
    pub client_email: String,
    private_key: SecretString,
    #[serde(default)]
    private_key_id: Option<String>,
    pub token_uri: String,
}

impl std::fmt::Debug for ServiceAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceAccount")
            .field("project_id", &self.project_id)
            .field("client_email", &self.client_email)
            .field("token_uri", &self.token_uri)
            .finish_non_exhaustive()
    }
}

impl ServiceAccount {
    pub fn from_json(text: &str) -> Result<ServiceAccount, FcmSetupError> {
        serde_json::from_str(text).map_err(FcmSetupError::Json)
    }

    /// Reads `push.fcm.credentials_file`.
    pub fn from_file(path: &Path) -> Result<ServiceAccount, FcmSetupError> {
        let text = std::fs::read_to_string(path).map_err(|source| FcmSetupError::Read {
            path: path.display().to_string(),
            source,
        })?;
        ServiceAccount::from_json(&text)
    }
}

/// Why an FCM client could not be built: each names the setting to fix.
#[derive(Debug, thiserror::Error)]
pub enum FcmSetupError {
    #[error("cannot read the FCM service-account file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("the FCM service-account file is not a service-account JSON key: {0}")]
    Json(serde_json::Error),
    #[error("the FCM service account's {0} is empty")]
    Empty(&'static str),
    #[error("the FCM service account's private_key is not an RSA private key in PEM form: {0}")]
    Key(jsonwebtoken::errors::Error),
    #[error("{what} must be an http or https URL, got {value:?}")]
    Url { what: &'static str, value: String },
    #[error("cannot build the HTTP client for FCM: {0}")]
    Client(reqwest::Error),
}

/// An FCM registration token, checked for shape before it is stored or sent.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FcmToken(String);

/// Why a registration token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidFcmToken {
    #[error("the FCM token is empty")]
    Empty,
    #[error("the FCM token is {0} bytes long; at most {MAX_TOKEN_BYTES} are accepted")]
    TooLong(usize),
    #[error(
        "the FCM token contains {found:?} at byte {at}; tokens are ASCII letters, digits and - _ : . / + ="
    )]
    BadChar { found: char, at: usize },
}

impl FcmToken {
    pub fn parse(raw: &str) -> Result<FcmToken, InvalidFcmToken> {
        if raw.is_empty() {
            return Err(InvalidFcmToken::Empty);
        }
        if raw.len() > MAX_TOKEN_BYTES {
            return Err(InvalidFcmToken::TooLong(raw.len()));
        }
        let allowed = |c: char| c.is_ascii_alphanumeric() || "-_:./+=".contains(c);
        if let Some((at, found)) = raw.char_indices().find(|&(_, c)| !allowed(c)) {
            return Err(InvalidFcmToken::BadChar { found, at });
        }
        Ok(FcmToken(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[derive(Serialize)]
struct AssertionClaims<'a> {
    iss: &'a str,
    scope: &'a str,
    aud: &'a str,
    iat: i64,
    exp: i64,
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: SecretString,
    expires_in: u64,
}

struct AccessToken {
    value: SecretString,
    refresh_at: DateTime<Utc>,
}

/// Sends pushes through FCM HTTP v1. Cheap to share behind an `Arc`; concurrency is the
/// caller's to bound.
pub struct FcmClient {
    http: reqwest::Client,
    send_url: String,
    client_email: String,
    token_uri: String,
    key_id: Option<String>,
    key: EncodingKey,
    /// Held across a refresh, so concurrent sends wait for one token request instead of each
    /// making their own.
    token: tokio::sync::Mutex<Option<AccessToken>>,
    clock: Arc<dyn Clock>,
}

impl FcmClient {
    /// A client for `account`'s project, sending to `base_url` (normally [`DEFAULT_BASE_URL`]).
    pub fn new(
        account: ServiceAccount,
        base_url: &str,
        clock: Arc<dyn Clock>,
    ) -> Result<FcmClient, FcmSetupError> {
        for (field, value) in [
            ("project_id", &account.project_id),
            ("client_email", &account.client_email),
            ("token_uri", &account.token_uri),
        ] {
            if value.trim().is_empty() {
                return Err(FcmSetupError::Empty(field));
            }
        }
        if account.private_key.expose_secret().trim().is_empty() {
            return Err(FcmSetupError::Empty("private_key"));
        }
        check_url("the FCM service account's token_uri", &account.token_uri)?;
        check_url("push.fcm.base_url", base_url)?;
        let key = EncodingKey::from_rsa_pem(account.private_key.expose_secret().as_bytes())
            .map_err(FcmSetupError::Key)?;
        let project: String = url_path_segment(&account.project_id);
        Ok(FcmClient {
            http: http_client().map_err(FcmSetupError::Client)?,
            send_url: format!(
                "{}/v1/projects/{project}/messages:send",
                base_url.trim_end_matches('/')
            ),
            client_email: account.client_email,
            token_uri: account.token_uri,
            key_id: account.private_key_id,
            key,
            token: tokio::sync::Mutex::new(None),
            clock,
        })
    }

    /// Where sends go.
    pub fn send_url(&self) -> &str {
        &self.send_url
    }

    /// Sends `message` to one device. Never panics and never retries on its own except once
    /// with a fresh access token when FCM refuses the cached one.
    pub async fn send(&self, token: &FcmToken, message: &PushMessage) -> Outcome {
        let now = self.clock.now();
        let body = match message_body(token, message, now) {
            Ok(Some(body)) => body,
            Ok(None) => return Outcome::Expired,
            Err(reason) => return Outcome::Failed { reason },
        };
        let mut fresh_token_tried = false;
        loop {
            let bearer = match self.access_token().await {
                Ok(bearer) => bearer,
                Err(outcome) => return outcome,
            };
            let sent = self
                .http
                .post(&self.send_url)
                .bearer_auth(bearer.expose_secret())
                .header(CONTENT_TYPE, "application/json; charset=utf-8")
                .body(body.clone())
                .send()
                .await;
            let response = match sent {
                Ok(response) => response,
                Err(e) => return unavailable(format!("FCM did not answer: {e}"), None),
            };
            let status = response.status();
            let retry_after = retry_after(&response, self.clock.now());
            let text = match response.text().await {
                Ok(text) => text,
                Err(e) => return unavailable(format!("FCM's answer broke off: {e}"), retry_after),
            };
            // 401 without THIRD_PARTY_AUTH_ERROR: FCM refused our access token (revoked or
            // expired early). One fresh token settles that; a second refusal is a real fault.
            if status == StatusCode::UNAUTHORIZED
                && !fresh_token_tried
                && fcm_error_code(&text).as_deref() != Some("THIRD_PARTY_AUTH_ERROR")
            {
                fresh_token_tried = true;
                self.forget_token(&bearer).await;
                continue;
            }
            return classify(status.as_u16(), retry_after, &text);
        }
    }

    /// The cached access token, or a fresh one when it is near expiry.
    async fn access_token(&self) -> Result<SecretString, Outcome> {
        let mut cached = self.token.lock().await;
        let now = self.clock.now();
        if let Some(token) = cached.as_ref()
            && now < token.refresh_at
        {
            return Ok(token.value.clone());
        }
        let fresh = self.fetch_token(now).await?;
        let value = fresh.value.clone();
        *cached = Some(fresh);
        Ok(value)
    }

    async fn forget_token(&self, refused: &SecretString) {
        let mut cached = self.token.lock().await;
        if cached
            .as_ref()
            .is_some_and(|t| t.value.expose_secret() == refused.expose_secret())
        {
            *cached = None;
        }
    }

    async fn fetch_token(&self, now: DateTime<Utc>) -> Result<AccessToken, Outcome> {
        let claims = AssertionClaims {
            iss: &self.client_email,
            scope: SCOPE,
            aud: &self.token_uri,
            iat: now.timestamp(),
            exp: now.timestamp() + seconds(ASSERTION_LIFETIME),
        };
        let mut header = Header::new(Algorithm::RS256);
        header.kid.clone_from(&self.key_id);
        let assertion = jsonwebtoken::encode(&header, &claims, &self.key).map_err(|e| {
            Outcome::ConfigFault {
                reason: format!(
                    "cannot sign the FCM token request with the service account key: {e}"
                ),
            }
        })?;
        let sent = self
            .http
            .post(&self.token_uri)
            .form(&[
                ("grant_type", GRANT_TYPE),
                ("assertion", assertion.as_str()),
            ])
            .send()
            .await;
        let response = match sent {
            Ok(response) => response,
            Err(e) => {
                return Err(unavailable(
                    format!("the OAuth token endpoint did not answer: {e}"),
                    None,
                ));
            }
        };
        let status = response.status();
        let retry_after = retry_after(&response, self.clock.now());
        let text = response.text().await.unwrap_or_default();
        if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
            return Err(unavailable(
                format!(
                    "the OAuth token endpoint answered {status}: {}",
                    excerpt(&text)
                ),
                retry_after,
            ));
        }
        if !status.is_success() {
            return Err(Outcome::ConfigFault {
                reason: format!(
                    "the OAuth token endpoint refused the service account key ({status}): {}",
                    excerpt(&text)
                ),
            });
        }
        let answer: TokenAnswer =
            serde_json::from_str(&text).map_err(|e| Outcome::ConfigFault {
                reason: format!("the OAuth token endpoint's answer is not an access token: {e}"),
            })?;
        let lifetime = Duration::from_secs(answer.expires_in);
        // A token that lives less than twice the margin is refreshed at half its life instead.
        let early = TOKEN_REFRESH_MARGIN.min(lifetime / 2);
        Ok(AccessToken {
            value: answer.access_token,
            refresh_at: now
                .checked_add_signed(chrono_duration(lifetime - early))
                .unwrap_or(DateTime::<Utc>::MAX_UTC),
        })
    }
}

/// The request body for `token` and `message` as of `now`: `Ok(None)` when the message has
/// expired, `Err` when it cannot be made to fit [`MAX_MESSAGE_BYTES`].
pub fn message_body(
    token: &FcmToken,
    message: &PushMessage,
    now: DateTime<Utc>,
) -> Result<Option<String>, String> {
    let Some(ttl) = message.ttl(now) else {
        return Ok(None);
    };
    let collapse_id = message.collapse_id();
    let topic = message.topic();
    let ttl_seconds = ttl.as_secs();
    let encode = |title: &str, body: &str| -> String {
        let mut android = json!({
            "priority": message.urgency.android(),
            "ttl": format!("{ttl_seconds}s"),
        });
        let mut apns_headers = json!({
            "apns-expiration": (now.timestamp() + seconds(ttl)).to_string(),
            "apns-priority": message.urgency.apns(),
        });
        let mut webpush_headers = json!({
            "TTL": ttl_seconds.to_string(),
            "Urgency": message.urgency.web_push(),
        });
        if let Some(id) = &collapse_id {
            android["collapse_key"] = json!(id);
            apns_headers["apns-collapse-id"] = json!(id);
        }
        if let Some(topic) = &topic {
            webpush_headers["Topic"] = json!(topic);
        }
        json!({
            "message": {
                "token": token.as_str(),
                "notification": { "title": title, "body": body },
                "data": message.data,
                "android": android,
                "apns": { "headers": apns_headers },
                "webpush": { "headers": webpush_headers },
            }
        })
        .to_string()
    };
    let (title, body) = fit_text(&message.title, &message.body, MAX_MESSAGE_BYTES, |t, b| {
        encode(t, b).len()
    })
    .ok_or_else(|| {
        format!("the FCM message exceeds {MAX_MESSAGE_BYTES} bytes even without title and body")
    })?;
    Ok(Some(encode(&title, &body)))
}

/// What FCM's answer means for the device and the job.
pub fn classify(status: u16, retry_after: Option<Duration>, body: &str) -> Outcome {
    if (200..300).contains(&status) {
        return Outcome::Sent;
    }
    let error = serde_json::from_str::<ErrorBody>(body)
        .map(|b| b.error)
        .unwrap_or_default();
    let code = error.code().unwrap_or_default().to_owned();
    let text = if error.message.is_empty() {
        body
    } else {
        &error.message
    };
    let reason = format!(
        "FCM {status} {}: {}",
        if code.is_empty() {
            "(no error code)"
        } else {
            &code
        },
        excerpt(text)
    );
    match (status, code.as_str()) {
        (_, "UNREGISTERED" | "SENDER_ID_MISMATCH") => Outcome::RemoveDevice { reason },
        (_, "THIRD_PARTY_AUTH_ERROR") => Outcome::ConfigFault { reason },
        (429, _) | (_, "QUOTA_EXCEEDED" | "RESOURCE_EXHAUSTED") => Outcome::Retry(Retry {
            cause: RetryCause::Quota,
            retry_after,
            reason,
        }),
        (500..=599, _) | (_, "UNAVAILABLE" | "INTERNAL") => Outcome::Retry(Retry {
            cause: RetryCause::Unavailable,
            retry_after,
            reason,
        }),
        (400, _) | (_, "INVALID_ARGUMENT") => {
            if error.is_about_the_token() {
                Outcome::RemoveDevice { reason }
            } else {
                Outcome::Failed { reason }
            }
        }
        // Our access token or project is not allowed, or the URL names no project: setup.
        (401 | 403 | 404, _) => Outcome::ConfigFault { reason },
        _ => Outcome::Failed { reason },
    }
}

/// `{"error": {"code", "message", "status", "details": [...]}}`, as Google APIs answer.
#[derive(Deserialize, Default)]
struct ErrorBody {
    #[serde(default)]
    error: ErrorDetail,
}

#[derive(Deserialize, Default)]
struct ErrorDetail {
    #[serde(default)]
    message: String,
    #[serde(default)]
    status: String,
    #[serde(default)]
    details: Vec<Detail>,
}

#[derive(Deserialize, Default)]
struct Detail {
    #[serde(default, rename = "errorCode")]
    error_code: Option<String>,
    #[serde(default, rename = "fieldViolations")]
    field_violations: Vec<FieldViolation>,
}

#[derive(Deserialize, Default)]
struct FieldViolation {
    #[serde(default)]
    field: String,
    #[serde(default)]
    description: String,
}

impl ErrorDetail {
    /// FCM's own `details[].errorCode`, else the canonical `status`.
    fn code(&self) -> Option<&str> {
        self.details
            .iter()
            .find_map(|d| d.error_code.as_deref())
            .or((!self.status.is_empty()).then_some(self.status.as_str()))
    }

    /// An `INVALID_ARGUMENT` names the token when a field violation points at `message.token`
    /// or the text speaks of the registration token; anything else is about our payload.
    fn is_about_the_token(&self) -> bool {
        let names_token = |text: &str| text.to_ascii_lowercase().contains("registration token");
        names_token(&self.message)
            || self
                .details
                .iter()
                .flat_map(|d| &d.field_violations)
                .any(|v| {
                    v.field == "message.token"
                        || (v.field.is_empty() && names_token(&v.description))
                })
    }
}

fn fcm_error_code(body: &str) -> Option<String> {
    let error = serde_json::from_str::<ErrorBody>(body).ok()?.error;
    error.code().map(str::to_owned)
}

fn unavailable(reason: String, retry_after: Option<Duration>) -> Outcome {
    Outcome::Retry(Retry {
        cause: RetryCause::Unavailable,
        retry_after,
        reason,
    })
}

fn retry_after(response: &reqwest::Response, now: DateTime<Utc>) -> Option<Duration> {
    let value = response.headers().get(RETRY_AFTER)?.to_str().ok()?;
    parse_retry_after(value, now)
}

fn check_url(what: &'static str, value: &str) -> Result<(), FcmSetupError> {
    match reqwest::Url::parse(value) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.has_host() => Ok(()),
        _ => Err(FcmSetupError::Url {
            what,
            value: value.to_owned(),
        }),
    }
}

/// Project ids are `[a-z0-9-]`; anything else is percent-encoded rather than trusted in a path.
fn url_path_segment(raw: &str) -> String {
    raw.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.' {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn excerpt(text: &str) -> &str {
    crate::domain::ids::truncate(text.trim(), MAX_REASON_CHARS)
}

fn seconds(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

fn chrono_duration(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

#[cfg(test)]
mod tests;
