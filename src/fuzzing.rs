//! Entry points for the fuzz targets (`fuzz/`) and their replay test
//! (`tests/fuzz_regressions.rs`): thin wrappers around the parsers of outside input that the
//! HTTP handlers keep private. Not an API; nothing else calls them.
//!
//! The parsers that are public already (ids, grades, `Settings::load_with_env`, FCM tokens, Web
//! Push subscriptions, preferences, `parse_retry_after`, `cluster::message::Message::decode`)
//! are called directly.

use actix_web::{HttpRequest, web};
use serde_json::Value;

use crate::domain::{Cursor, Event};
use crate::error::ApiError;
use crate::http::devices::DeviceBody;
use crate::http::events::EventsQuery;
use crate::http::host::BroadcastRequest;
use crate::push::webpush::EndpointPolicy;
use crate::store::NewEvent;
use crate::store::push::NewDevice;

/// The resume cursor of `GET /v1/events`: `Last-Event-ID`, else `last_event_id`. `None` when
/// the query string itself is refused (the query extractor answers 400 before the handler).
pub fn resume_cursor(req: &HttpRequest) -> Option<Result<Option<Cursor>, ApiError>> {
    let query = web::Query::<EventsQuery>::from_query(req.query_string()).ok()?;
    Some(crate::http::events::resume_cursor(req, &query))
}

/// The user token of a request: `Authorization: Bearer`, else the `belay_token` cookie, else
/// `access_token`.
pub fn token_from(req: &HttpRequest) -> Option<String> {
    crate::http::auth::token_from(req)
}

/// The token of an `Authorization` value of the Bearer scheme.
pub fn bearer_token(value: &str) -> Option<&str> {
    crate::http::auth::bearer_token(value)
}

/// `POST /v1/notify` after the JSON extractor (`host::UniqueKeys`).
pub fn parse_notify(body: Value, max_batch: usize) -> Result<Vec<NewEvent>, ApiError> {
    crate::http::host::parse_notify(body, max_batch)
}

/// `POST /v1/broadcast` after the JSON extractor.
pub fn parse_broadcast(body: BroadcastRequest) -> Result<Event, ApiError> {
    crate::http::host::parse_broadcast(body)
}

/// `POST /v1/devices` after the JSON extractor.
pub fn parse_device(body: DeviceBody, endpoints: EndpointPolicy) -> Result<NewDevice, ApiError> {
    crate::http::devices::parse_device(body, endpoints)
}
