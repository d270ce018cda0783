//! Server-to-server endpoints of the host app: `POST /v1/notify` and `POST /v1/broadcast`.

use actix_web::{HttpResponse, web};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use super::{AppState, auth::HostApp};
use crate::domain::event::EventInputError;
use crate::domain::{Cursor, Event, EventKind, IdempotencyKey, UserId};
use crate::error::{ApiError, ErrorKind};
use crate::store::{AppendOutcome, NewEvent};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NotifyItem {
    user_id: String,
    kind: String,
    #[serde(default)]
    data: Value,
    idempotency_key: Option<String>,
}

fn input_error(at: &str, e: EventInputError) -> ApiError {
    match e {
        EventInputError::UnknownKind(kind) => ApiError::new(
            ErrorKind::UnknownKind,
            format!(
                "{at}unknown kind {:?}",
                crate::domain::ids::truncate(&kind, 40)
            ),
        ),
        EventInputError::KindNotAllowed(kind) => ApiError::new(
            ErrorKind::KindNotAllowed,
            format!(
                "{at}kind {} is produced by Belay and cannot be sent here",
                kind.as_str()
            ),
        ),
        EventInputError::InvalidData(msg) => {
            ApiError::new(ErrorKind::InvalidData, format!("{at}data: {msg}"))
        }
    }
}

fn parse_item(at: &str, raw: Value) -> Result<NewEvent, ApiError> {
    let item: NotifyItem = serde_json::from_value(raw)
        .map_err(|e| ApiError::new(ErrorKind::InvalidRequest, format!("{at}{e}")))?;
    let user = UserId::parse(item.user_id)
        .map_err(|e| ApiError::new(ErrorKind::InvalidRequest, format!("{at}{e}")))?;
    let idempotency_key = item
        .idempotency_key
        .map(IdempotencyKey::parse)
        .transpose()
        .map_err(|e| ApiError::new(ErrorKind::InvalidRequest, format!("{at}{e}")))?;
    let event = Event::from_host(&item.kind, item.data, EventKind::host_may_notify)
        .map_err(|e| input_error(at, e))?;
    Ok(NewEvent {
        user,
        event,
        idempotency_key,
    })
}

/// `{"user_id","kind","data",["idempotency_key"]}` or `{"events":[...]}`; all items are checked
/// before anything is written.
fn parse_notify(body: Value, max_batch: usize) -> Result<Vec<NewEvent>, ApiError> {
    match body {
        Value::Object(mut map) if map.contains_key("events") => {
            if map.len() > 1 {
                return Err(ApiError::bad_request(
                    "a batch has only the field \"events\"",
                ));
            }
            let Some(Value::Array(items)) = map.remove("events") else {
                return Err(ApiError::bad_request("events must be an array"));
            };
            if items.is_empty() || items.len() > max_batch {
                return Err(ApiError::bad_request(format!(
                    "events must hold 1 to {max_batch} items, got {}",
                    items.len()
                )));
            }
            items
                .into_iter()
                .enumerate()
                .map(|(i, raw)| parse_item(&format!("events[{i}]: "), raw))
                .collect()
        }
        Value::Object(_) => Ok(vec![parse_item("", body)?]),
        _ => Err(ApiError::bad_request("body must be a JSON object")),
    }
}

#[derive(Serialize)]
struct NotifyResult {
    id: Uuid,
    user_id: UserId,
    cursor: Cursor,
    outcome: AppendOutcome,
}

#[derive(Serialize)]
struct NotifyResponse {
    results: Vec<NotifyResult>,
}

pub async fn notify(
    _: HostApp,
    body: web::Json<Value>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let batch = parse_notify(body.into_inner(), state.settings.limits.max_batch)?;
    let appended = state.notifier.notify(batch).await?;
    let created = appended.iter().any(|a| a.outcome.is_new());
    let results = appended
        .into_iter()
        .map(|a| NotifyResult {
            id: a.notification.id,
            user_id: a.user,
            cursor: a.notification.cursor,
            outcome: a.outcome,
        })
        .collect();
    let mut response = if created {
        HttpResponse::Created()
    } else {
        HttpResponse::Ok()
    };
    Ok(response.json(NotifyResponse { results }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BroadcastRequest {
    kind: String,
    #[serde(default)]
    data: Value,
}

pub async fn broadcast(
    _: HostApp,
    body: web::Json<BroadcastRequest>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let event = Event::from_host(&body.kind, body.data, EventKind::host_may_broadcast)
        .map_err(|e| input_error("", e))?;
    state.notifier.broadcast(event)?;
    Ok(HttpResponse::Accepted().json(serde_json::json!({ "accepted": true })))
}
