//! Who is calling: climbers by JWT (HS256, `sub` = user id) from the `Authorization: Bearer`
//! header, the `belay_token` cookie or the `access_token` query parameter (for EventSource,
//! which cannot set headers; such URLs can end up in logs, so prefer the cookie or header);
//! the host app by its `X-Api-Key`.

use std::future::{Ready, ready};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actix_web::{FromRequest, HttpRequest, dev::Payload, web};
use jsonwebtoken::errors::ErrorKind as JwtErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};

use crate::config::Secrets;
use crate::domain::UserId;
use crate::error::ApiError;
use crate::http::AppState;

pub const TOKEN_COOKIE: &str = "belay_token";
pub const API_KEY_HEADER: &str = "X-Api-Key";
/// Longest accepted token, in bytes.
const MAX_TOKEN_LEN: usize = 4096;
/// Clock skew tolerated on `exp`.
const LEEWAY_SECS: u64 = 30;

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    #[serde(default)]
    iat: u64,
}

pub struct Authenticator {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    api_key: secrecy::SecretString,
}

impl Authenticator {
    pub fn new(secrets: &Secrets) -> Self {
        let secret = secrets.jwt_secret.expose_secret().as_bytes();
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = LEEWAY_SECS;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Authenticator {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            api_key: secrets.api_key.clone(),
        }
    }

    /// Mints a token for `user` valid for `ttl`.
    pub fn mint(&self, user: &UserId, ttl: Duration) -> anyhow::Result<(String, u64)> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
        let exp = now + ttl.as_secs();
        let claims = Claims {
            sub: user.to_string(),
            exp,
            iat: now,
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)?;
        Ok((token, exp))
    }

    pub fn verify(&self, token: &str) -> Result<UserId, ApiError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(ApiError::unauthorized("token is too long"));
        }
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| match e.kind() {
                JwtErrorKind::ExpiredSignature => ApiError::unauthorized("token expired"),
                JwtErrorKind::InvalidSignature => {
                    ApiError::unauthorized("token signature is invalid")
                }
                _ => ApiError::unauthorized("token is invalid"),
            })?;
        UserId::parse(data.claims.sub).map_err(|e| {
            ApiError::unauthorized(format!("token subject is not a valid user id: {e}"))
        })
    }

    /// Compares in time independent of where the keys differ.
    pub fn api_key_matches(&self, presented: &str) -> bool {
        let expected = self.api_key.expose_secret().as_bytes();
        let presented = presented.as_bytes();
        if expected.len() != presented.len() {
            return false;
        }
        expected
            .iter()
            .zip(presented)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

#[derive(Deserialize)]
struct TokenQuery {
    access_token: Option<String>,
}

/// The token of an `Authorization: Bearer <token>` value. The scheme name is case-insensitive
/// (RFC 9110 section 11.1, formerly RFC 7235), so `bearer` and `BEARER` are the same scheme.
pub(crate) fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim_start().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

pub(crate) fn token_from(req: &HttpRequest) -> Option<String> {
    if let Some(value) = req.headers().get(actix_web::http::header::AUTHORIZATION) {
        return bearer_token(value.to_str().ok()?).map(str::to_owned);
    }
    if let Some(cookie) = req.cookie(TOKEN_COOKIE) {
        return Some(cookie.value().to_owned());
    }
    web::Query::<TokenQuery>::from_query(req.query_string())
        .ok()?
        .into_inner()
        .access_token
}

fn state(req: &HttpRequest) -> Result<&web::Data<AppState>, ApiError> {
    req.app_data::<web::Data<AppState>>()
        .ok_or_else(|| ApiError::internal(anyhow::anyhow!("app state missing")))
}

/// An authenticated climber, within their request rate limit.
#[derive(Debug, Clone)]
pub struct AuthUser(pub UserId);

impl FromRequest for AuthUser {
    type Error = ApiError;
    type Future = Ready<Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready((|| {
            let token = token_from(req).ok_or_else(|| {
                ApiError::unauthorized(
                    "missing token: send Authorization: Bearer, the belay_token cookie or access_token",
                )
            })?;
            let state = state(req)?;
            let user = state.auth.verify(&token)?;
            state
                .rate_limiter
                .check(&user, std::time::Instant::now())
                .map_err(|wait| {
                    ApiError::new(
                        crate::error::ErrorKind::RateLimited,
                        format!("too many requests; retry in {} ms", wait.as_millis().max(1)),
                    )
                    .retry_after(wait)
                })?;
            Ok(AuthUser(user))
        })())
    }
}

/// The host app, proven by its API key.
#[derive(Debug, Clone, Copy)]
pub struct HostApp;

impl FromRequest for HostApp {
    type Error = ApiError;
    type Future = Ready<Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready((|| {
            let key = req
                .headers()
                .get(API_KEY_HEADER)
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| ApiError::unauthorized("missing X-Api-Key header"))?;
            if state(req)?.auth.api_key_matches(key) {
                Ok(HostApp)
            } else {
                Err(ApiError::new(
                    crate::error::ErrorKind::Forbidden,
                    "API key is not valid",
                ))
            }
        })())
    }
}

#[cfg(test)]
mod tests {
    use super::bearer_token;

    #[test]
    fn the_bearer_scheme_is_matched_in_any_case() {
        for value in ["Bearer abc", "bearer abc", "BEARER abc", "bEaReR   abc "] {
            assert_eq!(bearer_token(value), Some("abc"), "{value:?}");
        }
        for value in [
            "Basic abc",
            "Bearerabc",
            "Bearer",
            "Bearer   ",
            "Token abc",
            "",
        ] {
            assert_eq!(bearer_token(value), None, "{value:?}");
        }
    }
}
