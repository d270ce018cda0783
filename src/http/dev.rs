//! Development helpers, routed only when `auth.dev_tokens` is on: mint a token for any user and
//! read the host API key, so the demo page works with no setup. Never enable in production.

use crate::http::body::Body;
use std::time::Duration;

use actix_web::{HttpResponse, web};
use chrono::{DateTime, Utc};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::AppState;
use super::openapi::JsonBodyRefusal;
use crate::domain::UserId;
use crate::error::{ApiError, ErrorBody};

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    user_id: UserId,
}

#[derive(Serialize, ToSchema)]
pub struct TokenResponse {
    /// A user JWT, for `Authorization: Bearer`.
    token: String,
    user_id: UserId,
    #[schema(required = true)]
    expires_at: Option<DateTime<Utc>>,
}

/// Mints a user token for any user id.
///
/// Exists only when `auth.dev_tokens = true`; never enable it in production.
#[utoipa::path(
    post,
    path = "/v1/dev/token",
    tag = "dev",
    operation_id = "dev_token",
    request_body = TokenRequest,
    responses(
        (status = 200, description = "A token valid for `auth.dev_token_ttl_secs`",
            body = TokenResponse),
        (status = 400, body = ErrorBody, description = "`invalid_json`: malformed JSON; \
            `invalid_request`: a missing or unknown field, or an invalid `user_id`"),
        JsonBodyRefusal,
    )
)]
pub async fn token(
    body: Body<TokenRequest>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let ttl = Duration::from_secs(state.settings.auth.dev_token_ttl_secs);
    let TokenRequest { user_id } = body.into_inner();
    let (token, exp) = state.auth.mint(&user_id, ttl)?;
    let expires_at = DateTime::from_timestamp(i64::try_from(exp).unwrap_or(i64::MAX), 0);
    Ok(HttpResponse::Ok().json(TokenResponse {
        token,
        user_id,
        expires_at,
    }))
}

#[derive(Serialize, ToSchema)]
pub struct DevConfigResponse {
    /// The host app's key, for `X-Api-Key`.
    api_key: String,
}

/// The host API key, so the demo page can send notifications.
///
/// Exists only when `auth.dev_tokens = true`; never enable it in production.
#[utoipa::path(
    get,
    path = "/v1/dev/config",
    tag = "dev",
    operation_id = "dev_config",
    responses((status = 200, description = "The host API key", body = DevConfigResponse))
)]
pub async fn config(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().json(DevConfigResponse {
        api_key: state.secrets.api_key.expose_secret().to_owned(),
    })
}
