//! Development helpers, routed only when `auth.dev_tokens` is on: mint a token for any user and
//! read the host API key, so the demo page works with no setup. Never enable in production.

use std::time::Duration;

use actix_web::{HttpResponse, web};
use secrecy::ExposeSecret;
use serde::Deserialize;

use super::AppState;
use crate::domain::UserId;
use crate::error::ApiError;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    user_id: UserId,
}

pub async fn token(
    body: web::Json<TokenRequest>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let ttl = Duration::from_secs(state.settings.auth.dev_token_ttl_secs);
    let (token, exp) = state.auth.mint(&body.user_id, ttl)?;
    let expires_at = chrono::DateTime::from_timestamp(i64::try_from(exp).unwrap_or(i64::MAX), 0);
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "token": token,
        "user_id": body.user_id,
        "expires_at": expires_at,
    })))
}

pub async fn config(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({ "api_key": state.secrets.api_key.expose_secret() }))
}
