//! `GET /v1/events`: the SSE stream of the authenticated user, resumable with `Last-Event-ID`
//! (header) or `last_event_id` (query, for clients that cannot set headers).

use std::cell::RefCell;
use std::rc::Rc;

use actix::Actor;
use actix_web::http::header::{CacheControl, CacheDirective, ContentEncoding};
use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;

use super::{AppState, WorkerHub, auth::AuthUser};
use crate::actors::SessionActor;
use crate::actors::session::SessionSetup;
use crate::domain::Cursor;
use crate::error::{ApiError, ErrorKind};
use crate::sse::{Outbox, SessionBody};

#[derive(Deserialize)]
pub struct EventsQuery {
    last_event_id: Option<String>,
}

fn resume_cursor(req: &HttpRequest, query: &EventsQuery) -> Result<Option<Cursor>, ApiError> {
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

pub async fn stream(
    req: HttpRequest,
    AuthUser(user): AuthUser,
    query: web::Query<EventsQuery>,
    state: web::Data<AppState>,
    hub: web::Data<WorkerHub>,
) -> Result<HttpResponse, ApiError> {
    let resume = resume_cursor(&req, &query)?;
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
