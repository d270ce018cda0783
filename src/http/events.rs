//! `GET /v1/events`: the SSE stream of the authenticated user, resumable with `Last-Event-ID`
//! (header) or `last_event_id` (query, for clients that cannot set headers).

use std::cell::RefCell;
use std::rc::Rc;

use actix::Actor;
use actix_web::http::header::{CacheControl, CacheDirective, ContentEncoding};
use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;
use utoipa::IntoParams;

use super::{AppState, WorkerHub, auth::AuthUser};
use crate::actors::SessionActor;
use crate::actors::session::SessionSetup;
use crate::domain::Cursor;
use crate::error::{ApiError, ErrorBody, ErrorKind};
use crate::sse::{Outbox, SessionBody};

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Resume after this cursor, for clients that cannot set headers; the `Last-Event-ID`
    /// header wins when both are sent.
    #[param(value_type = Option<Cursor>)]
    last_event_id: Option<String>,
}

pub(crate) fn resume_cursor(
    req: &HttpRequest,
    query: &EventsQuery,
) -> Result<Option<Cursor>, ApiError> {
    let header = req.headers().get("Last-Event-ID");
    let raw = match header {
        Some(value) => Some(value.to_str().map_err(|_| {
            ApiError::new(ErrorKind::InvalidCursor, "Last-Event-ID is not valid text")
        })?),
        None => query.last_event_id.as_deref(),
    };
    match raw.map(str::trim) {
        None | Some("") => Ok(None),
        Some(raw) => Cursor::parse(raw)
            .map(Some)
            .map_err(|e| ApiError::new(ErrorKind::InvalidCursor, format!("Last-Event-ID: {e}"))),
    }
}

/// The user's live stream of Server-Sent Events.
///
/// Frames, in this order:
///
/// - `retry: <sse.retry_ms>`: the reconnect hint, first.
/// - `event: unread`, `data:` an `UnreadSummary` with `cursor` (the head the count was taken at:
///   replayed events at or below it are in `count`) and `latest` (the newest unread
///   notifications): always next. Its `id` is the head when the stream starts there (nothing to
///   replay), so a client that drops before its first stored event resumes from it; when a
///   replay follows it has no `id`.
/// - Missed events after `Last-Event-ID` (or `last_event_id`), oldest first, then live ones:
///   `id: <cursor>`, `event: <kind>`, `data:` a `Notification`. The `id` is the user's cursor,
///   which is what an `EventSource` sends back as `Last-Event-ID` when it reconnects. A collapsed
///   `post_liked` arrives again under a new cursor with the same notification `id`: replace by
///   `id`.
/// - `event: <kind>`, `data:` a `Broadcast`: sent to every connected user, not stored, no `id`.
/// - `event: unread`, `data:` an `UnreadSummary` without `latest`: when a read changed the count.
/// - `: heartbeat`: a comment every `sse.heartbeat_secs` (15 s by default) on an idle stream.
///
/// Every event arrives once and in cursor order. A client that does not read has its stream
/// closed when its queue fills; it resumes with `Last-Event-ID` and misses nothing. A cursor
/// beyond the user's newest event starts at the newest. Browsers may send the token as the
/// `belay_token` cookie or the `access_token` query parameter, since `EventSource` cannot set
/// headers.
#[utoipa::path(
    get,
    path = "/v1/events",
    tag = "user",
    operation_id = "events",
    params(
        ("Last-Event-ID" = Option<Cursor>, Header, nullable = false,
            description = "Resume after this cursor: the `id` of the last event received"),
        EventsQuery,
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The stream, open until the client or the server ends it. \
            Each frame's `event:` is its kind and its `data:` one JSON object: `unread` first \
            (`UnreadSummary`); a stored event as a `Notification`, with `id:` its cursor; a \
            broadcast as a `Broadcast`, without `id:`. The kinds and their `data` are the \
            `*Event` schemas (`MatchFoundEvent`, …). A muted kind's frame is `id:` alone.",
            content_type = "text/event-stream", body = String),
        (status = 400, body = ErrorBody,
            description = "`invalid_cursor`: `Last-Event-ID` (or `last_event_id`) is not a \
                non-negative integer"),
        (status = 401, body = ErrorBody, description = "`unauthorized`: no valid token"),
        (status = 429, body = ErrorBody, description = "`too_many_sessions`: the user already has \
            `sse.max_sessions_per_user` streams (8 by default) on this node; `rate_limited`: over \
            the per-user request rate (with `Retry-After`)",
            headers(("Retry-After" = u64,
                description = "With `rate_limited`: seconds until a request is allowed"))),
    )
)]
pub async fn stream(
    req: HttpRequest,
    AuthUser(user): AuthUser,
    query: web::Query<EventsQuery>,
    state: web::Data<AppState>,
    hub: web::Data<WorkerHub>,
) -> Result<HttpResponse, ApiError> {
    let resume = resume_cursor(&req, &query)?;
    super::matchmaking::remember(&state, &user).await?;
    let permit = state.limiter.acquire(&user).ok_or_else(|| {
        crate::metrics::Metrics::add(&state.metrics.sessions_rejected, 1);
        ApiError::new(
            ErrorKind::TooManySessions,
            format!(
                "user already has {} open streams on this node",
                state.settings.sse.max_sessions_per_user
            ),
        )
    })?;
    // In cluster mode the cap counts the user's streams on every node; the slot is written
    // before the session reads the store, so other nodes route its events here from then on.
    let permit = match &state.cluster {
        Some(cluster) => match cluster.presence.claim(&user).await {
            crate::cluster::Claim::Granted(slot) => permit.also_holding(slot),
            crate::cluster::Claim::Refused => {
                crate::metrics::Metrics::add(&state.metrics.cluster.sessions_refused_cluster, 1);
                return Err(ApiError::new(
                    ErrorKind::TooManySessions,
                    format!(
                        "user already has {} open streams across the cluster",
                        state.settings.sse.max_sessions_per_user
                    ),
                ));
            }
        },
        None => permit,
    };
    let outbox = Rc::new(RefCell::new(Outbox::new(
        state.settings.sse.queue_capacity,
        state.frames.retry.clone(),
    )));
    let session = SessionActor::new(SessionSetup {
        user,
        outbox: outbox.clone(),
        registry: hub.registry.clone(),
        store: state.store.clone(),
        metrics: state.metrics.clone(),
        resume,
        replay_page: state.settings.sse.replay_page,
        permit,
    })
    .start();
    Ok(HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(CacheControl(vec![CacheDirective::NoCache]))
        .insert_header(ContentEncoding::Identity)
        // Tells nginx-style proxies not to buffer the stream.
        .insert_header(("X-Accel-Buffering", "no"))
        .body(SessionBody::new(outbox, session.recipient())))
}
