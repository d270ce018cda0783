//! The user's own notifications: `GET /v1/notifications` and `POST /v1/notifications/read`.

use crate::http::body::Body;
use actix_web::{HttpResponse, web};
use serde::{Deserialize, Serialize};
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{
    AdditionalProperties, ArrayBuilder, KnownFormat, ObjectBuilder, OneOfBuilder, Schema,
    SchemaFormat, Type,
};
use utoipa::{IntoParams, PartialSchema, ToSchema};
use uuid::Uuid;

use super::openapi::JsonBodyRefusal;
use super::{AppState, auth::AuthUser};
use crate::domain::{Cursor, Notification};
use crate::error::{ApiError, ErrorBody, ErrorKind};
use crate::store::{ListQuery, Page, ReadSelector};

/// Page size when `limit` is not given.
const DEFAULT_PAGE: u32 = 50;

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Only unread notifications.
    #[serde(default)]
    unread: bool,
    /// Oldest first, starting after this cursor.
    #[param(value_type = Option<Cursor>)]
    after: Option<String>,
    /// Newest first, starting below this cursor (the default: from the newest). With `after`:
    /// oldest first between the two, `before` excluded.
    #[param(value_type = Option<Cursor>)]
    before: Option<String>,
    /// Page size: 1 to `limits.max_page` (200 by default); 50 when left out.
    #[param(minimum = 1)]
    limit: Option<u32>,
}

#[derive(Serialize, ToSchema)]
pub struct ListResponse {
    notifications: Vec<Notification>,
    /// The user's unread notifications in all, not only on this page.
    unread: u64,
    /// Pass as `after` (or `before`, newest-first) for the next page; null at the end.
    #[schema(required = true)]
    next: Option<Cursor>,
}

fn cursor_param(name: &str, raw: Option<&str>) -> Result<Option<Cursor>, ApiError> {
    raw.map(|r| {
        Cursor::parse(r)
            .map_err(|e| ApiError::new(ErrorKind::InvalidCursor, format!("{name}: {e}")))
    })
    .transpose()
}

/// The user's notifications, a page at a time: newest first, or oldest first after a cursor
/// (and below another, with both `after` and `before`).
#[utoipa::path(
    get,
    path = "/v1/notifications",
    tag = "user",
    operation_id = "list_notifications",
    params(ListParams),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "A page of notifications", body = ListResponse),
        (status = 400, body = ErrorBody, description = "`invalid_request`: `limit` out of range, \
            or a malformed query string; `invalid_cursor`: `after` or `before` is not a \
            non-negative integer"),
        (status = 401, body = ErrorBody, description = "`unauthorized`: no valid token"),
        (status = 429, body = ErrorBody, description = "`rate_limited`: over the per-user request rate",
            headers(("Retry-After" = u64, description = "Seconds until a request is allowed"))),
    )
)]
pub async fn list(
    AuthUser(user): AuthUser,
    params: web::Query<ListParams>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let max = state.settings.limits.max_page;
    let limit = params.limit.unwrap_or(DEFAULT_PAGE.min(max));
    if limit == 0 || limit > max {
        return Err(ApiError::bad_request(format!(
            "limit must be between 1 and {max}"
        )));
    }
    let after = cursor_param("after", params.after.as_deref())?;
    let before = cursor_param("before", params.before.as_deref())?;
    let page = match after {
        Some(after) => Page::After(after),
        None => Page::Newest { before },
    };
    let query = ListQuery {
        page,
        unread_only: params.unread,
        limit,
    };
    let mut notifications = state.store.list(&user, query).await?;
    let mut next = if notifications.len() == limit as usize {
        notifications.last().map(|n| n.cursor)
    } else {
        None
    };
    // Both: a window, read oldest first after `after` and cut at `before`; once cut, it is done.
    if let (Some(_), Some(before)) = (after, before)
        && notifications.last().is_some_and(|n| n.cursor >= before)
    {
        notifications.retain(|n| n.cursor < before);
        next = None;
    }
    let unread = state.store.unread_count(&user).await?;
    Ok(HttpResponse::Ok().json(ListResponse {
        notifications,
        unread,
        next,
    }))
}

/// Exactly one of the three selectors: `{"ids":[...]}`, `{"up_to":<cursor>}` or `{"all":true}`.
/// The others may be left out, or given as `null` (`all` as `false`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadRequest {
    ids: Option<Vec<Uuid>>,
    up_to: Option<Cursor>,
    #[serde(default)]
    all: bool,
}

/// One branch per selector, so that the document refuses what `mark_read` refuses (no selector,
/// or two); `maxItems` of `ids` is written in from the node's settings (`openapi::document`).
impl PartialSchema for ReadRequest {
    fn schema() -> RefOr<Schema> {
        let absent = || ObjectBuilder::new().schema_type(Type::Null);
        let not_all = || {
            ObjectBuilder::new()
                .schema_type(Type::Boolean)
                .enum_values(Some([false]))
        };
        let ids = ArrayBuilder::new()
            .items(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .format(Some(SchemaFormat::KnownFormat(KnownFormat::Uuid))),
            )
            .min_items(Some(1))
            .description(Some(
                "These notifications: 1 to `limits.max_read_ids` ids (500 by default).",
            ));
        let up_to = RefOr::from(
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
                .minimum(Some(0))
                .description(Some("Every notification up to and including this cursor.")),
        );
        let all = ObjectBuilder::new()
            .schema_type(Type::Boolean)
            .enum_values(Some([true]))
            .description(Some("Every notification."));
        let branch = |required: &str| {
            ObjectBuilder::new()
                .required(required)
                .additional_properties(Some(AdditionalProperties::<Schema>::FreeForm(false)))
        };
        OneOfBuilder::new()
            .item(
                branch("ids")
                    .property("ids", ids)
                    .property("up_to", absent())
                    .property("all", not_all()),
            )
            .item(
                branch("up_to")
                    .property("up_to", up_to)
                    .property("ids", absent())
                    .property("all", not_all()),
            )
            .item(
                branch("all")
                    .property("all", all)
                    .property("ids", absent())
                    .property("up_to", absent()),
            )
            .description(Some(
                "Exactly one of `{\"ids\":[...]}`, `{\"up_to\":<cursor>}` or `{\"all\":true}`.",
            ))
            .examples([serde_json::json!({"up_to": 7})])
            .into()
    }
}

impl ToSchema for ReadRequest {}

#[derive(Serialize, ToSchema)]
pub struct ReadResponse {
    /// Notifications that were unread and are now read.
    updated: u64,
    /// The user's unread notifications left.
    unread: u64,
}

/// Marks notifications read.
///
/// When any changed, every open stream of the user gets an `unread` frame with the new count.
#[utoipa::path(
    post,
    path = "/v1/notifications/read",
    tag = "user",
    request_body = ReadRequest,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "What changed", body = ReadResponse),
        (status = 400, body = ErrorBody, description = "`invalid_json`: malformed JSON; \
            `invalid_request`: not exactly one selector, an empty or too long `ids`, a negative \
            `up_to`, or an unknown field or one of the wrong type"),
        (status = 401, body = ErrorBody, description = "`unauthorized`: no valid token"),
        JsonBodyRefusal,
        (status = 429, body = ErrorBody, description = "`rate_limited`: over the per-user request rate",
            headers(("Retry-After" = u64, description = "Seconds until a request is allowed"))),
    )
)]
pub async fn mark_read(
    AuthUser(user): AuthUser,
    body: Body<ReadRequest>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let selector = match (body.ids, body.up_to, body.all) {
        (Some(ids), None, false) => {
            let max = state.settings.limits.max_read_ids;
            if ids.is_empty() || ids.len() > max {
                return Err(ApiError::bad_request(format!(
                    "ids must hold 1 to {max} ids"
                )));
            }
            ReadSelector::Ids(ids)
        }
        (None, Some(cursor), false) if cursor.0 >= 0 => ReadSelector::UpTo(cursor),
        (None, None, true) => ReadSelector::All,
        _ => {
            return Err(ApiError::bad_request(
                r#"send exactly one of {"ids":[...]}, {"up_to":<cursor>} or {"all":true}"#,
            ));
        }
    };
    let updated = state.store.mark_read(&user, &selector).await?;
    let (unread, head) = state.store.unread_as_of(&user).await?;
    if updated > 0 {
        state.notifier.unread_changed(&user, unread, head)?;
    }
    Ok(HttpResponse::Ok().json(ReadResponse { updated, unread }))
}
