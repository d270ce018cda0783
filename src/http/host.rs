//! Server-to-server endpoints of the host app: `POST /v1/notify` and `POST /v1/broadcast`.

use crate::http::body::Body;
use actix_web::{HttpResponse, web};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::openapi::schema::{
    AdditionalProperties, ArrayBuilder, ObjectBuilder, OneOfBuilder, Schema, Type,
};
use utoipa::openapi::{Ref, RefOr};
use utoipa::{PartialSchema, ToSchema};
use uuid::Uuid;

use super::openapi::{HostKeyRefusal, JsonBodyRefusal};
use super::{AppState, auth::HostApp};
use crate::domain::event::EventInputError;
use crate::domain::{Cursor, Event, EventKind, IdempotencyKey, PostId, UserId};
use crate::error::{ApiError, ErrorBody, ErrorKind};
use crate::store::{AppendOutcome, NewEvent};

/// One notification for one user.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({
    "user_id": "ana",
    "kind": "post_liked",
    "data": {"post_id": "p1", "by": "bob"},
    "idempotency_key": "like-1"
}))]
pub struct NotifyItem {
    #[schema(value_type = UserId)]
    user_id: String,
    #[schema(schema_with = notify_kinds)]
    kind: String,
    /// The kind's fields; for `post_liked`: `{"post_id", "by"}`.
    #[serde(default)]
    #[schema(required = true, schema_with = like_data)]
    data: Value,
    /// Makes a retried request create nothing new: the same key for the same `user_id` returns
    /// the first result, as `duplicate`, for `limits.idempotency_ttl_secs` (a day by default).
    /// Keys are per user: the same key for another user is another notification.
    #[schema(value_type = Option<IdempotencyKey>)]
    idempotency_key: Option<String>,
}

/// The names of the kinds that `allowed` admits, as a string enum.
fn kinds_schema(allowed: fn(EventKind) -> bool, description: &str) -> Schema {
    let names = EventKind::ALL
        .into_iter()
        .filter(|k| allowed(*k))
        .map(EventKind::as_str);
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(names))
        .description(Some(description))
        .into()
}

fn notify_kinds() -> Schema {
    kinds_schema(
        EventKind::host_may_notify,
        "A kind the host app may send to one user; the others are produced by Belay \
         (`kind_not_allowed`).",
    )
}

fn broadcast_kinds() -> Schema {
    kinds_schema(
        EventKind::host_may_broadcast,
        "A kind the host app may broadcast; the others are refused (`kind_not_allowed`).",
    )
}

/// `data` of a `post_liked` from the host app; other fields are ignored.
fn like_data() -> Schema {
    ObjectBuilder::new()
        .property("post_id", PostId::schema())
        .property("by", UserId::schema())
        .required("post_id")
        .required("by")
        .description(Some("For `post_liked`: the post and who liked it"))
        .into()
}

/// `data` of a `new_post` broadcast; other fields are ignored.
fn new_post_data() -> Schema {
    ObjectBuilder::new()
        .property("post_id", PostId::schema())
        .property("by", UserId::schema())
        .property(
            "title",
            ObjectBuilder::new()
                .schema_type(Type::String)
                .max_length(Some(crate::domain::event::MAX_TITLE_CHARS)),
        )
        .required("post_id")
        .required("by")
        .required("title")
        .description(Some("For `new_post`: the post, its author and its title"))
        .into()
}

/// The body of `POST /v1/notify`, as `parse_notify` reads it: one item, or a batch
/// `{"events": [...]}` of 1 to `limits.max_batch` items (100 by default).
pub struct NotifyRequest;

impl PartialSchema for NotifyRequest {
    fn schema() -> RefOr<Schema> {
        let item = || Ref::from_schema_name(NotifyItem::name());
        let batch = ObjectBuilder::new()
            .property(
                "events",
                ArrayBuilder::new().items(item()).min_items(Some(1)),
            )
            .required("events")
            .additional_properties(Some(AdditionalProperties::<Schema>::FreeForm(false)));
        OneOfBuilder::new()
            .item(item())
            .item(batch)
            .description(Some(
                "One item, or a batch `{\"events\": [...]}` of 1 to `limits.max_batch` items \
                 (100 by default); every item is checked before anything is written.",
            ))
            .into()
    }
}

impl ToSchema for NotifyRequest {
    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        schemas.push((NotifyItem::name().into_owned(), NotifyItem::schema()));
        NotifyItem::schemas(schemas);
    }
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
pub(crate) fn parse_notify(body: Value, max_batch: usize) -> Result<Vec<NewEvent>, ApiError> {
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

/// A JSON value in which no object has the same key twice, at any depth. Typed bodies refuse a
/// repeated field through serde's derive; a body read as a `Value` would let the last
/// `user_id` or `idempotency_key` win silently. The error is a data error, so the JSON
/// extractor answers it like the other endpoints (400 `invalid_request`).
pub struct UniqueKeys(pub Value);

impl<'de> Deserialize<'de> for UniqueKeys {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer
            .deserialize_any(UniqueKeysVisitor)
            .map(UniqueKeys)
    }
}

struct UniqueKeysVisitor;

impl<'de> serde::de::Visitor<'de> for UniqueKeysVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(UniqueKeys(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = serde_json::Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if object.contains_key(&key) {
                return Err(serde::de::Error::custom(format_args!(
                    "duplicate field `{}`",
                    crate::domain::ids::truncate(&key, 40)
                )));
            }
            let UniqueKeys(value) = map.next_value()?;
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}

/// `UniqueKeys` for a field of a typed body.
fn unique_keys<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Value, D::Error> {
    UniqueKeys::deserialize(deserializer).map(|UniqueKeys(value)| value)
}

/// What became of one item.
#[derive(Serialize, ToSchema)]
pub struct NotifyResult {
    /// The notification's id; a collapsed like keeps the id of the notification it joined.
    id: Uuid,
    user_id: UserId,
    cursor: Cursor,
    outcome: AppendOutcome,
}

/// One result per item, in request order.
#[derive(Serialize, ToSchema)]
pub struct NotifyResponse {
    results: Vec<NotifyResult>,
}

/// Sends notifications to users: stored, then delivered to their open streams.
///
/// The host app may send `post_liked` (data `{"post_id", "by"}`); it collapses per post while
/// unread. The whole request is refused on the first bad item, and then nothing is written.
#[utoipa::path(
    post,
    path = "/v1/notify",
    tag = "host",
    request_body = NotifyRequest,
    security(("api_key" = [])),
    responses(
        (status = 201, description = "At least one item was created or collapsed",
            body = NotifyResponse),
        (status = 200, description = "Every item was a duplicate: nothing was written",
            body = NotifyResponse),
        (status = 400, body = ErrorBody, description = "`invalid_json`: malformed JSON; \
            `invalid_request`: not an item or a batch, a batch of the wrong size, a missing, \
            unknown or repeated field, or an invalid `user_id` or `idempotency_key`; `unknown_kind`; \
            `kind_not_allowed`: a kind produced by Belay; `invalid_data`: `data` does not fit \
            the kind. Messages of batch items start with `events[<i>]: `."),
        HostKeyRefusal,
        JsonBodyRefusal,
    )
)]
pub async fn notify(
    _: HostApp,
    body: web::Json<UniqueKeys>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let batch = parse_notify(body.into_inner().0, state.settings.limits.max_batch)?;
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

/// An event for every connected user.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({
    "kind": "new_post",
    "data": {"post_id": "p7", "by": "cy", "title": "New boulder at the gym"}
}))]
pub struct BroadcastRequest {
    #[schema(schema_with = broadcast_kinds)]
    kind: String,
    /// The kind's fields; for `new_post`: `{"post_id", "by", "title"}`, a title of at most
    /// 200 characters.
    #[serde(default, deserialize_with = "unique_keys")]
    #[schema(required = true, schema_with = new_post_data)]
    data: Value,
}

#[derive(Serialize, ToSchema)]
pub struct BroadcastResponse {
    /// Always true: the event was handed to every worker's sessions.
    accepted: bool,
}

/// Sends an event to every connected user.
///
/// Every stream open on this node gets it as a `Broadcast` frame. It is not stored: a user who
/// is not connected never sees it.
#[utoipa::path(
    post,
    path = "/v1/broadcast",
    tag = "host",
    request_body = BroadcastRequest,
    security(("api_key" = [])),
    responses(
        (status = 202, description = "Sent to the connected users", body = BroadcastResponse),
        (status = 400, body = ErrorBody, description = "`invalid_json`: malformed JSON; \
            `invalid_request`: a missing, unknown or repeated field; `unknown_kind`; `kind_not_allowed`: a \
            kind the host app may not broadcast; `invalid_data`: `data` does not fit the kind"),
        HostKeyRefusal,
        JsonBodyRefusal,
    )
)]
pub async fn broadcast(
    _: HostApp,
    body: Body<BroadcastRequest>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let event = parse_broadcast(body.into_inner())?;
    state.notifier.broadcast(event)?;
    Ok(HttpResponse::Accepted().json(BroadcastResponse { accepted: true }))
}

/// A kind the host app may broadcast, with `data` that fits it.
pub(crate) fn parse_broadcast(body: BroadcastRequest) -> Result<Event, ApiError> {
    Event::from_host(&body.kind, body.data, EventKind::host_may_broadcast)
        .map_err(|e| input_error("", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_keys_reads_any_json_as_serde_json_does_and_refuses_a_repeated_key() {
        let text = r#"{"a":[1,-2,3.5,"x",null,true,{"b":{}}],"c":{"d":18446744073709551615}}"#;
        let UniqueKeys(value) = serde_json::from_str(text).unwrap();
        assert_eq!(value, serde_json::from_str::<Value>(text).unwrap());
        for repeated in [r#"{"a":1,"a":1}"#, r#"[{"b":{"c":1,"c":2}}]"#] {
            let error = serde_json::from_str::<UniqueKeys>(repeated)
                .err()
                .expect("refused");
            assert!(error.is_data(), "{error}");
            assert!(error.to_string().starts_with("duplicate field"), "{error}");
        }
    }
}
