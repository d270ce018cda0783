//! The OpenAPI 3.1 document of the HTTP surface, generated from the handlers' annotations and the
//! types they send and receive, served at `GET /openapi.json`.

use actix_web::{HttpResponse, web};
use serde_json::Value;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{
    AppState, ascents, auth, dev, devices, events, health, host, matchmaking, notifications,
    preferences, presence,
};
use crate::config::Settings;
use crate::domain::{Broadcast, Notification, UnreadSummary};
use crate::error::ErrorBody;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Belay",
        description = "The real-time notification engine of a climbing app: Server-Sent Events \
            streams for users, and a server-to-server API for the host app. Errors are \
            `{\"error\", \"message\"}` with the status of the error kind. An unknown path gives \
            404 `not_found`, another method on a known path 405 `method_not_allowed`."
    ),
    paths(
        events::stream,
        notifications::list,
        notifications::mark_read,
        host::notify,
        host::broadcast,
        presence::presence,
        matchmaking::join_queue,
        matchmaking::leave_queue,
        matchmaking::me_match,
        matchmaking::create_challenge,
        matchmaking::accept_challenge,
        matchmaking::decline_challenge,
        matchmaking::get_match,
        matchmaking::ready,
        matchmaking::cancel,
        matchmaking::report_result,
        matchmaking::leaderboard,
        ascents::log_ascent,
        devices::register,
        devices::list,
        devices::remove,
        devices::vapid_key,
        preferences::get,
        preferences::put,
        dev::token,
        dev::config,
        health::healthz,
        health::readyz,
        health::metrics,
        openapi_json,
    ),
    // The frames of `GET /v1/events`: no operation refers to them, so they are listed here.
    components(schemas(Notification, UnreadSummary, Broadcast)),
    modifiers(&SecuritySchemes),
    tags(
        (name = "user", description = "A climber, by JWT: notifications, duels, ascents"),
        (name = "host", description = "The host app, by API key"),
        (name = "public", description = "Anyone: what a browser needs before signing in"),
        (name = "dev", description = "Only when `auth.dev_tokens = true`"),
        (name = "ops", description = "Health, metrics and this document"),
    )
)]
pub struct ApiDoc;

/// `bearer` for climbers, `api_key` for the host app: the names the operations refer to.
struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(format!(
                        "A JWT signed HS256 with `auth.jwt_secret`, `sub` = user id, `exp` \
                         required. Also accepted as the `{}` cookie or the `access_token` query \
                         parameter, for EventSource.",
                        auth::TOKEN_COOKIE
                    )))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                auth::API_KEY_HEADER,
                "The host app's key, `auth.api_key`",
            ))),
        );
    }
}

/// This document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "ops",
    operation_id = "openapi",
    responses((status = 200, description = "The OpenAPI 3.1 document", body = Object))
)]
pub async fn openapi_json(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(state.openapi.clone())
}

/// The document of a node with these settings: the limits that are configuration (page sizes,
/// batch and id list lengths) are written in as the `maximum` or `maxItems` this node enforces,
/// so a request that the document allows is one the node accepts. Built once, at start.
pub fn document(settings: &Settings) -> String {
    let Ok(mut doc) = serde_json::to_value(ApiDoc::openapi()) else {
        return String::new();
    };
    let limits = &settings.limits;
    if let Some(limit) = query_param(&mut doc, "/v1/leaderboard", "get", "limit") {
        limit["schema"]["maximum"] = settings.matchmaking.max_leaderboard_page.into();
    }
    if let Some(limit) = query_param(&mut doc, "/v1/notifications", "get", "limit") {
        limit["schema"]["maximum"] = limits.max_page.into();
    }
    if let Some(ids) = doc.pointer_mut("/components/schemas/ReadRequest/oneOf/0/properties/ids") {
        ids["maxItems"] = limits.max_read_ids.into();
    }
    if let Some(events) =
        doc.pointer_mut("/components/schemas/NotifyRequest/oneOf/1/properties/events")
    {
        events["maxItems"] = limits.max_batch.into();
    }
    doc.to_string()
}

/// The query parameter `name` of an operation.
fn query_param<'a>(
    doc: &'a mut Value,
    path: &str,
    method: &str,
    name: &str,
) -> Option<&'a mut Value> {
    doc["paths"][path][method]["parameters"]
        .as_array_mut()?
        .iter_mut()
        .find(|p| p["name"] == name && p["in"] == "query")
}

/// Refusals of every endpoint that takes a JSON body.
#[derive(utoipa::IntoResponses)]
pub enum JsonBodyRefusal {
    /// `payload_too_large`: body over `server.body_limit_bytes` (64 KiB by default)
    #[response(status = 413)]
    TooLarge(ErrorBody<'static>),
    /// `unsupported_media_type`: not `application/json`
    #[response(status = 415)]
    NotJson(ErrorBody<'static>),
}

/// Refusals of the host endpoints.
#[derive(utoipa::IntoResponses)]
pub enum HostKeyRefusal {
    /// `unauthorized`: no `X-Api-Key` header
    #[response(status = 401)]
    MissingKey(ErrorBody<'static>),
    /// `forbidden`: the API key is not valid
    #[response(status = 403)]
    WrongKey(ErrorBody<'static>),
}

/// Refusals of every endpoint of a climber, by JWT.
#[derive(utoipa::IntoResponses)]
pub enum BearerRefusal {
    /// `unauthorized`: no valid token
    #[response(status = 401)]
    NoToken(ErrorBody<'static>),
    /// `rate_limited`: over the per-user request rate
    #[response(
        status = 429,
        headers(("Retry-After" = u64, description = "Seconds until a request is allowed"))
    )]
    RateLimited(ErrorBody<'static>),
}

/// Refusal of every endpoint that hands its work to the matchmaker.
#[derive(utoipa::IntoResponses)]
pub enum MatchmakerRefusal {
    /// `unavailable`: the matchmaker is not running
    #[response(status = 503)]
    Unavailable(ErrorBody<'static>),
}
