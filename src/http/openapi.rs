//! The OpenAPI 3.1 document of the HTTP surface, generated from the handlers' annotations and the
//! types they send and receive, served at `GET /openapi.json`.

use actix_web::{HttpResponse, web};
use serde_json::{Value, json};
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
    describe_preferences(&mut doc, settings);
    name_event_kinds(&mut doc);
    add_links(&mut doc);
    add_unavailable(&mut doc, settings.server.request_timeout_secs);
    doc.to_string()
}

/// Every operation can answer 503 `unavailable`: a store it cannot reach, or no answer within
/// `server.request_timeout_secs` (`http::deadline`). Operations that describe a 503 of their own
/// keep theirs.
fn add_unavailable(doc: &mut Value, request_timeout_secs: u64) {
    let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) else {
        return;
    };
    let unavailable = json!({
        "description": format!(
            "`unavailable`: the store cannot be reached, or the request had no answer within \
             {request_timeout_secs} s (`server.request_timeout_secs`); try again after \
             `Retry-After`"
        ),
        "headers": {"Retry-After": {
            "description": "Seconds to wait before trying again",
            "schema": {"type": "integer", "format": "int64", "minimum": 0}
        }},
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
    });
    for item in paths.values_mut().filter_map(Value::as_object_mut) {
        for operation in item.values_mut() {
            if let Some(responses) = operation
                .get_mut("responses")
                .and_then(Value::as_object_mut)
            {
                responses
                    .entry("503")
                    .or_insert_with(|| unavailable.clone());
            }
        }
    }
}

/// One named schema per event kind (`MatchFoundEvent`, …): the branches of `Event`, which the
/// stream's frames, the notification list and broadcasts all carry.
fn name_event_kinds(doc: &mut Value) {
    let Some(branches) = doc
        .pointer_mut("/components/schemas/Event/oneOf")
        .and_then(Value::as_array_mut)
    else {
        return;
    };
    let mut named = Vec::new();
    for branch in branches.iter_mut() {
        let Some(kind) = branch
            .pointer("/properties/kind/enum/0")
            .and_then(Value::as_str)
            .map(str::to_owned)
        else {
            continue;
        };
        let name: String = kind
            .split('_')
            .map(|word| {
                let mut chars = word.chars();
                chars.next().map_or_else(String::new, |first| {
                    first.to_ascii_uppercase().to_string() + chars.as_str()
                })
            })
            .chain(["Event".to_owned()])
            .collect();
        let reference = json!({ "$ref": format!("#/components/schemas/{name}") });
        let mut schema = std::mem::replace(branch, reference);
        schema["description"] =
            format!("`{kind}`: the SSE `event:` name and the `kind` field").into();
        named.push((name, schema));
    }
    if let Some(schemas) = doc
        .pointer_mut("/components/schemas")
        .and_then(Value::as_object_mut)
    {
        schemas.extend(named);
    }
}

/// What `PUT /v1/preferences` accepts, exactly: kinds by name (`push: false` for those this
/// node never pushes, `push.kinds`), IANA time zones, `HH:MM` times.
fn describe_preferences(doc: &mut Value, settings: &Settings) {
    let Some(body) = doc.pointer_mut("/components/schemas/PreferencesBody/properties") else {
        return;
    };
    let pushable = settings.push.push_kinds().unwrap_or_default();
    let kinds: serde_json::Map<String, Value> = crate::domain::preferences::settable_kinds()
        .map(|kind| {
            let push = if pushable.contains(&kind) {
                json!({"type": "boolean"})
            } else {
                json!({"type": "boolean", "enum": [false],
                    "description": "This server never pushes this kind (`push.kinds`)"})
            };
            let setting = json!({
                "type": "object",
                "properties": {"live": {"type": "boolean"}, "push": push},
                "required": ["live", "push"],
                "additionalProperties": false,
            });
            (kind.as_str().to_owned(), setting)
        })
        .collect();
    let description = body["kinds"]["description"].clone();
    body["kinds"] = json!({
        "type": "object",
        "description": description,
        "properties": kinds,
        "additionalProperties": false,
    });
    let zones: Vec<&str> = chrono_tz::TZ_VARIANTS.iter().map(|tz| tz.name()).collect();
    body["time_zone"]["enum"] = json!(zones);
    if let Some(types) = body["time_zone"]["type"].as_array()
        && types.iter().any(|t| t == "null")
    {
        // `null` stays allowed: it means the default, UTC.
        body["time_zone"]["enum"]
            .as_array_mut()
            .into_iter()
            .for_each(|e| e.push(Value::Null));
    }
    let time = json!({"type": "string", "pattern": "^([01][0-9]|2[0-3]):[0-5][0-9]$"});
    if let Some(quiet) = doc.pointer_mut("/components/schemas/QuietHoursBody/properties") {
        for field in ["start", "end"] {
            let description = quiet[field]["description"].clone();
            quiet[field] = time.clone();
            quiet[field]["description"] = description;
        }
    }
}

/// OpenAPI links from the answers that carry a match or challenge id to the operations that
/// take it, so that a client (or a stateful test) can follow a duel from one call to the next.
fn add_links(doc: &mut Value) {
    let link = |operation: &str, pointer: &str| json!({"operationId": operation, "parameters": {"id": format!("$response.body#{pointer}")}});
    let match_ops = |pointer: &str| {
        json!({
            "GetMatch": link("get_match", pointer),
            "ReadyMatch": link("ready_match", pointer),
            "CancelMatch": link("cancel_match", pointer),
            "ReportResult": link("report_result", pointer),
        })
    };
    let challenge_ops = |pointer: &str| {
        json!({
            "AcceptChallenge": link("accept_challenge", pointer),
            "DeclineChallenge": link("decline_challenge", pointer),
        })
    };
    let mut me = match_ops("/match/match_id");
    if let (Some(me), Value::Object(incoming)) = (
        me.as_object_mut(),
        challenge_ops("/challenges/incoming/0/challenge_id"),
    ) {
        me.extend(incoming);
    }
    let links = [
        ("/v1/me/match", "get", "200", me.clone()),
        ("/v1/queue", "post", "201", me),
        (
            "/v1/challenges",
            "post",
            "201",
            challenge_ops("/challenge_id"),
        ),
        (
            "/v1/challenges/{id}/accept",
            "post",
            "200",
            match_ops("/match_id"),
        ),
        (
            "/v1/matches/{id}/ready",
            "post",
            "200",
            match_ops("/match_id"),
        ),
    ];
    for (path, method, status, links) in links {
        let response = &mut doc["paths"][path][method]["responses"][status];
        if response.is_object() {
            response["links"] = links;
        }
    }
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
    /// `request_timeout`: the body did not arrive within `server.body_timeout_secs` (5 s by
    /// default) of the request's head; the connection is closed
    #[response(status = 408)]
    TimedOut(ErrorBody<'static>),
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
