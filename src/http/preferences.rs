//! `GET /v1/preferences`, `PUT /v1/preferences`: per kind, live and push on or off, and quiet
//! hours in the climber's time zone (`domain/preferences.rs` holds the rules).

use crate::http::body::Body;
use actix_web::{HttpResponse, web};
use chrono::Utc;

use super::openapi::{BearerRefusal, JsonBodyRefusal};
use super::{AppState, auth::AuthUser};
use crate::domain::preferences::{Preferences, PreferencesBody};
use crate::domain::{EventKind, UserId};
use crate::error::{ApiError, ErrorBody};

/// The kinds this server pushes at all (`push.kinds`).
fn pushable(state: &AppState) -> impl Fn(EventKind) -> bool + use<> {
    let kinds = state.settings.push.push_kinds().unwrap_or_default();
    move |kind| kinds.contains(&kind)
}

/// A climber's preferences as stored, or the defaults.
pub async fn preferences_of(state: &AppState, user: &UserId) -> Result<Preferences, ApiError> {
    let stored = state.store.preferences(user).await?;
    Ok(Preferences::from_stored(stored.as_deref()))
}

#[utoipa::path(
    get,
    path = "/v1/preferences",
    tag = "user",
    summary = "The caller's notification preferences",
    description = "Every kind with its `live` and `push` switch as in effect, the time zone \
        and the quiet hours.",
    security(("bearer" = [])),
    responses(
        (status = 200, body = PreferencesBody),
        BearerRefusal,
    )
)]
pub async fn get(
    AuthUser(user): AuthUser,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let preferences = preferences_of(&state, &user).await?;
    Ok(HttpResponse::Ok().json(preferences.to_body(pushable(&state))))
}

#[utoipa::path(
    put,
    path = "/v1/preferences",
    tag = "user",
    summary = "Replaces the caller's notification preferences",
    description = "Kinds left out take their defaults. A muted kind is still stored and listed; \
        `live: false` keeps it off the stream, `push: false` off the devices. In quiet hours only \
        `match_found` and `opponent_ready` are pushed.",
    request_body = PreferencesBody,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The preferences now in effect", body = PreferencesBody),
        (status = 400, body = ErrorBody, description = "`invalid_json`: malformed JSON; \
            `invalid_request`: an unknown field or kind, a kind this server never pushes given \
            `push: true`, a time zone that is not an IANA name, or a time not `HH:MM`"),
        BearerRefusal,
        JsonBodyRefusal,
    )
)]
pub async fn put(
    AuthUser(user): AuthUser,
    body: Body<PreferencesBody>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let preferences = Preferences::from_body(&body).map_err(ApiError::bad_request)?;
    let pushable = pushable(&state);
    for (name, setting) in &body.kinds {
        if setting.push && EventKind::parse(name).is_some_and(|kind| !pushable(kind)) {
            return Err(ApiError::bad_request(format!(
                "kinds.{name}.push: this server never pushes {name} (push.kinds)"
            )));
        }
    }
    let stored = serde_json::to_string(&preferences.to_stored())
        .map_err(|e| anyhow::anyhow!("encoding preferences: {e}"))?;
    state
        .store
        .set_preferences(&user, &stored, Utc::now())
        .await?;
    Ok(HttpResponse::Ok().json(preferences.to_body(pushable)))
}
