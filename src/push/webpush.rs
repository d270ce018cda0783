//! Web Push for browsers without Firebase: the subscription a browser hands over (RFC 8030), the
//! payload encrypted to it with aes128gcm (RFC 8291, by `web-push-native`), and a VAPID token
//! (RFC 8292, ES256) that proves the push comes from the key the browser subscribed with.
//!
//! The VAPID key pair is the server's identity: browsers bind each subscription to its public
//! key (`applicationServerKey`), so a new key orphans every existing subscription.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::{URL_SAFE, URL_SAFE_NO_PAD};
use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rand::TryRngCore as _;
use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE, RETRY_AFTER};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use serde_json::json;
use web_push_native::p256;
use web_push_native::p256::elliptic_curve::sec1::ToEncodedPoint as _;
use web_push_native::p256::pkcs8::EncodePrivateKey as _;

use super::message::PushMessage;
use super::{Clock, Outcome, Retry, RetryCause, fit_text, http_client, parse_retry_after};

/// RFC 8291: a 4,096-byte record less its header (86), tag (16) and padding delimiter (1).
pub const MAX_PLAINTEXT_BYTES: usize = 3993;
/// Lifetime of a VAPID token; RFC 8292 allows at most 24 hours.
pub const VAPID_TOKEN_LIFETIME: Duration = Duration::from_secs(12 * 60 * 60);
/// Longest endpoint accepted; push services issue a few hundred bytes.
pub const MAX_ENDPOINT_BYTES: usize = 2048;
/// An uncompressed P-256 point: 0x04, then X and Y.
pub const P256DH_BYTES: usize = 65;
/// RFC 8291's authentication secret.
pub const AUTH_BYTES: usize = 16;
/// A P-256 private key as VAPID configuration holds it.
pub const VAPID_PRIVATE_KEY_BYTES: usize = 32;
/// How much of a push service's error text is kept in an outcome's reason.
const MAX_REASON_CHARS: usize = 300;

/// `PushSubscription.toJSON()`, as a browser hands it over.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionJson {
    pub endpoint: String,
    pub keys: SubscriptionKeys,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionKeys {
    /// The browser's ECDH public key, base64url.
    pub p256dh: String,
    /// The authentication secret, base64url.
    pub auth: String,
}

/// Which endpoints are acceptable. Plain http is only ever for a fake push service in tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndpointPolicy {
    HttpsOnly,
    AllowLoopbackHttp,
}

/// Why a subscription was refused; each names the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidSubscription {
    #[error("endpoint is not an absolute URL: {0}")]
    EndpointNotUrl(String),
    #[error("endpoint is {0} bytes long; at most {MAX_ENDPOINT_BYTES} are accepted")]
    EndpointTooLong(usize),
    #[error("endpoint must be an https URL, got scheme {0:?}")]
    EndpointNotHttps(String),
    #[error("endpoint must not carry a user name or password")]
    EndpointHasCredentials,
    #[error("keys.{field} is not base64url")]
    NotBase64Url { field: &'static str },
    #[error(
        "keys.p256dh must be {P256DH_BYTES} bytes (an uncompressed P-256 point), got {0} bytes"
    )]
    P256dhLength(usize),
    #[error("keys.p256dh is not an uncompressed point on the P-256 curve")]
    P256dhNotOnCurve,
    #[error("keys.auth must be {AUTH_BYTES} bytes, got {0} bytes")]
    AuthLength(usize),
}

/// A validated subscription: an endpoint the policy allows and keys of the right shape.
#[derive(Debug, Clone, PartialEq)]
pub struct Subscription {
    endpoint: reqwest::Url,
    p256dh: p256::PublicKey,
    auth: [u8; AUTH_BYTES],
}

impl Subscription {
    pub fn parse(
        json: &SubscriptionJson,
        policy: EndpointPolicy,
    ) -> Result<Subscription, InvalidSubscription> {
        let raw = json.endpoint.trim();
        if raw.len() > MAX_ENDPOINT_BYTES {
            return Err(InvalidSubscription::EndpointTooLong(raw.len()));
        }
        let endpoint = reqwest::Url::parse(raw)
            .map_err(|e| InvalidSubscription::EndpointNotUrl(e.to_string()))?;
        // What is stored and read back before each push is the parsed URL, whose escapes can make
        // it several times longer than the text sent: the cap holds for that too.
        if endpoint.as_str().len() > MAX_ENDPOINT_BYTES {
            return Err(InvalidSubscription::EndpointTooLong(
                endpoint.as_str().len(),
            ));
        }
        if !endpoint.has_host() {
            return Err(InvalidSubscription::EndpointNotUrl(
                "it names no host".to_owned(),
            ));
        }
        let allowed = match endpoint.scheme() {
            "https" => true,
            "http" => policy == EndpointPolicy::AllowLoopbackHttp && is_loopback(&endpoint),
            _ => false,
        };
        if !allowed {
            return Err(InvalidSubscription::EndpointNotHttps(
                endpoint.scheme().to_owned(),
            ));
        }
        if !endpoint.username().is_empty() || endpoint.password().is_some() {
            return Err(InvalidSubscription::EndpointHasCredentials);
        }

        let p256dh = base64url("p256dh", &json.keys.p256dh)?;
        if p256dh.len() != P256DH_BYTES {
            return Err(InvalidSubscription::P256dhLength(p256dh.len()));
        }
        // A 65-byte SEC1 string that is not 0x04 || X || Y on the curve is refused here too.
        let p256dh = p256::PublicKey::from_sec1_bytes(&p256dh)
            .map_err(|_| InvalidSubscription::P256dhNotOnCurve)?;
        let auth = base64url("auth", &json.keys.auth)?;
        let auth: [u8; AUTH_BYTES] = auth
            .as_slice()
            .try_into()
            .map_err(|_| InvalidSubscription::AuthLength(auth.len()))?;
        Ok(Subscription {
            endpoint,
            p256dh,
            auth,
        })
    }

    pub fn endpoint(&self) -> &str {
        self.endpoint.as_str()
    }

    /// The push service's origin: the VAPID token's audience.
    pub fn origin(&self) -> String {
        self.endpoint.origin().ascii_serialization()
    }

    /// The canonical form to store: unpadded base64url keys.
    pub fn to_json(&self) -> SubscriptionJson {
        SubscriptionJson {
            endpoint: self.endpoint.to_string(),
            keys: SubscriptionKeys {
                p256dh: URL_SAFE_NO_PAD.encode(self.p256dh.to_encoded_point(false).as_bytes()),
                auth: URL_SAFE_NO_PAD.encode(self.auth),
            },
        }
    }
}

fn is_loopback(url: &reqwest::Url) -> bool {
    let Some(host) = url.host_str() else {
        return false;
    };
    // IPv6 hosts come bracketed: `[::1]`.
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Browsers send unpadded base64url; padded input is accepted as well.
fn base64url(field: &'static str, raw: &str) -> Result<Vec<u8>, InvalidSubscription> {
    let raw = raw.trim();
    let decoded = if raw.ends_with('=') {
        URL_SAFE.decode(raw)
    } else {
        URL_SAFE_NO_PAD.decode(raw)
    };
    decoded.map_err(|_| InvalidSubscription::NotBase64Url { field })
}

/// Why the VAPID configuration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidVapidKey {
    #[error("the VAPID private key is not base64url")]
    NotBase64Url,
    #[error(
        "the VAPID private key must be {VAPID_PRIVATE_KEY_BYTES} bytes (a raw P-256 scalar), got {0} bytes"
    )]
    Length(usize),
    #[error("the VAPID private key is not a valid P-256 scalar")]
    NotAScalar,
    #[error("the VAPID subject must be a mailto: or https: URL, got {0:?}")]
    Subject(String),
}

/// The server's VAPID identity: an ES256 key and the contact push services may write to.
pub struct VapidKeys {
    signing: EncodingKey,
    public: Vec<u8>,
    subject: String,
}

impl std::fmt::Debug for VapidKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VapidKeys")
            .field("public_key", &self.public_key())
            .field("subject", &self.subject)
            .finish_non_exhaustive()
    }
}

impl VapidKeys {
    /// From the configured base64url private key (32 bytes) and subject
    /// (`mailto:ops@example.com` or an https URL).
    pub fn from_private_key(
        private_key: &str,
        subject: &str,
    ) -> Result<VapidKeys, InvalidVapidKey> {
        if !(subject.starts_with("mailto:") || subject.starts_with("https://"))
            || subject.len() <= "https://".len()
        {
            return Err(InvalidVapidKey::Subject(subject.to_owned()));
        }
        let raw = private_key.trim().trim_end_matches('=');
        let bytes = URL_SAFE_NO_PAD
            .decode(raw)
            .map_err(|_| InvalidVapidKey::NotBase64Url)?;
        if bytes.len() != VAPID_PRIVATE_KEY_BYTES {
            return Err(InvalidVapidKey::Length(bytes.len()));
        }
        let secret =
            p256::SecretKey::from_slice(&bytes).map_err(|_| InvalidVapidKey::NotAScalar)?;
        let der = secret
            .to_pkcs8_der()
            .map_err(|_| InvalidVapidKey::NotAScalar)?;
        Ok(VapidKeys {
            signing: EncodingKey::from_ec_der(der.as_bytes()),
            public: secret
                .public_key()
                .to_encoded_point(false)
                .as_bytes()
                .to_vec(),
            subject: subject.to_owned(),
        })
    }

    /// The public key as browsers' `applicationServerKey` takes it: the uncompressed point,
    /// unpadded base64url.
    pub fn public_key(&self) -> String {
        URL_SAFE_NO_PAD.encode(&self.public)
    }

    /// `Authorization: vapid t=<jwt>, k=<public key>` for a push service at `audience`.
    pub fn authorization(
        &self,
        audience: &str,
        now: DateTime<Utc>,
    ) -> Result<String, jsonwebtoken::errors::Error> {
        #[derive(Serialize)]
        struct Claims<'a> {
            aud: &'a str,
            exp: i64,
            sub: &'a str,
        }
        let lifetime = i64::try_from(VAPID_TOKEN_LIFETIME.as_secs()).unwrap_or(i64::MAX);
        let claims = Claims {
            aud: audience,
            exp: now.timestamp().saturating_add(lifetime),
            sub: &self.subject,
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::ES256), &claims, &self.signing)?;
        Ok(format!("vapid t={token}, k={}", self.public_key()))
    }
}

/// A new VAPID key pair, both halves unpadded base64url.
pub struct GeneratedVapidKeys {
    /// Goes into configuration; never logged.
    pub private_key: SecretString,
    /// What browsers subscribe with; also derivable from the private key.
    pub public_key: String,
}

/// Generates a VAPID key pair from the operating system's random source.
pub fn generate_vapid_keys() -> Result<GeneratedVapidKeys, rand::rand_core::OsError> {
    loop {
        let mut bytes = [0u8; VAPID_PRIVATE_KEY_BYTES];
        rand::rngs::OsRng.try_fill_bytes(&mut bytes)?;
        // All but about 2^-32 of 32-byte strings are valid scalars; draw again otherwise.
        if let Ok(secret) = p256::SecretKey::from_slice(&bytes) {
            return Ok(GeneratedVapidKeys {
                private_key: SecretString::from(URL_SAFE_NO_PAD.encode(secret.to_bytes())),
                public_key: URL_SAFE_NO_PAD
                    .encode(secret.public_key().to_encoded_point(false).as_bytes()),
            });
        }
    }
}

/// The plaintext a service worker receives: title, body, the resume data, and a `tag` so that
/// a newer push for the same thing replaces the older notification. Cut to
/// [`MAX_PLAINTEXT_BYTES`] like FCM's messages.
pub fn payload(message: &PushMessage) -> Result<Vec<u8>, String> {
    let encode = |title: &str, body: &str| {
        let mut value = json!({ "title": title, "body": body, "data": message.data });
        if let Some(tag) = &message.collapse_key {
            value["tag"] = json!(tag);
        }
        value.to_string()
    };
    let (title, body) = fit_text(
        &message.title,
        &message.body,
        MAX_PLAINTEXT_BYTES,
        |t, b| encode(t, b).len(),
    )
    .ok_or_else(|| {
        format!(
            "the Web Push payload exceeds {MAX_PLAINTEXT_BYTES} bytes even without title and body"
        )
    })?;
    Ok(encode(&title, &body).into_bytes())
}

/// Sends pushes to browsers' push services.
pub struct WebPushClient {
    http: reqwest::Client,
    vapid: VapidKeys,
    clock: Arc<dyn Clock>,
}

impl WebPushClient {
    pub fn new(vapid: VapidKeys, clock: Arc<dyn Clock>) -> Result<WebPushClient, reqwest::Error> {
        Ok(WebPushClient {
            http: http_client()?,
            vapid,
            clock,
        })
    }

    /// For `GET /v1/push/vapid-key`.
    pub fn vapid_public_key(&self) -> String {
        self.vapid.public_key()
    }

    pub async fn send(&self, subscription: &Subscription, message: &PushMessage) -> Outcome {
        let now = self.clock.now();
        let Some(ttl) = message.ttl(now) else {
            return Outcome::Expired;
        };
        let plaintext = match payload(message) {
            Ok(plaintext) => plaintext,
            Err(reason) => return Outcome::Failed { reason },
        };
        let auth = web_push_native::Auth::from(subscription.auth);
        let encrypted = match web_push_native::encrypt(plaintext, &subscription.p256dh, &auth) {
            Ok(encrypted) => encrypted,
            Err(e) => {
                return Outcome::Failed {
                    reason: format!("cannot encrypt the Web Push payload: {e}"),
                };
            }
        };
        let authorization = match self.vapid.authorization(&subscription.origin(), now) {
            Ok(authorization) => authorization,
            Err(e) => {
                return Outcome::ConfigFault {
                    reason: format!("cannot sign the VAPID token: {e}"),
                };
            }
        };
        let mut request = self
            .http
            .post(subscription.endpoint.clone())
            .header("TTL", ttl.as_secs().to_string())
            .header("Urgency", message.urgency.web_push())
            .header(CONTENT_ENCODING, "aes128gcm")
            .header(CONTENT_TYPE, "application/octet-stream")
            .header(AUTHORIZATION, authorization)
            .body(encrypted);
        if let Some(topic) = message.topic() {
            request = request.header("Topic", topic);
        }
        let response = match request.send().await {
            Ok(response) => response,
            Err(e) => {
                return Outcome::Retry(Retry {
                    cause: RetryCause::Unavailable,
                    retry_after: None,
                    reason: format!("the push service did not answer: {e}"),
                });
            }
        };
        let status = response.status();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, self.clock.now()));
        let text = response.text().await.unwrap_or_default();
        classify(status, retry_after, &text)
    }
}

/// What a push service's answer means (RFC 8030 section 5 and the services' own conventions).
pub fn classify(status: StatusCode, retry_after: Option<Duration>, body: &str) -> Outcome {
    let reason = format!(
        "push service answered {status}: {}",
        crate::domain::ids::truncate(body.trim(), MAX_REASON_CHARS)
    );
    match status.as_u16() {
        200..=299 => Outcome::Sent,
        // The subscription expired or the user revoked it.
        404 | 410 => Outcome::RemoveDevice { reason },
        429 => Outcome::Retry(Retry {
            cause: RetryCause::Quota,
            retry_after,
            reason,
        }),
        500..=599 => Outcome::Retry(Retry {
            cause: RetryCause::Unavailable,
            retry_after,
            reason,
        }),
        // The VAPID token was refused: our key or subject. A subscription made under an earlier
        // VAPID key answers 403 too, so a rotation shows here as a burst of faults.
        401 | 403 => Outcome::ConfigFault { reason },
        // 400 malformed, 413 too large: our request is wrong.
        _ => Outcome::Failed { reason },
    }
}

#[cfg(test)]
mod tests;
