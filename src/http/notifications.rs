//! The user's own notifications: `GET /v1/notifications` and `POST /v1/notifications/read`.

use actix_web::{HttpResponse, web};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{AppState, auth::AuthUser};
use crate::domain::{Cursor, Notification};
use crate::error::{ApiError, ErrorKind};
use crate::store::{ListQuery, Page, ReadSelector};

/// Page size when `limit` is not given.
const DEFAULT_PAGE: u32 = 50;

#[derive(Deserialize)]
pub struct ListParams {
    #[serde(default)]
    unread: bool,
    after: Option<String>,
    before: Option<String>,
    limit: Option<u32>,
}

#[derive(Serialize)]
struct ListResponse {
    notifications: Vec<Notification>,
    unread: u64,
    /// Pass as `after` (or `before`, newest-first) for the next page; null at the end.
    next: Option<Cursor>,
}

fn cursor_param(name: &str, raw: Option<&str>) -> Result<Option<Cursor>, ApiError> {
    raw.map(|r| {
        Cursor::parse(r)
            .map_err(|e| ApiError::new(ErrorKind::InvalidCursor, format!("{name}: {e}")))
    })
    .transpose()
}

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
    let page = match (after, before) {
        (Some(_), Some(_)) => return Err(ApiError::bad_request("give after or before, not both")),
        (Some(after), None) => Page::After(after),
        (None, before) => Page::Newest { before },
    };
    let query = ListQuery {
        page,
        unread_only: params.unread,
        limit,
    };
    let notifications = state.store.list(&user, query).await?;
    let unread = state.store.unread_count(&user).await?;
    let next = if notifications.len() == limit as usize {
        notifications.last().map(|n| n.cursor)
    } else {
        None
    };
    Ok(HttpResponse::Ok().json(ListResponse {
        notifications,
        unread,
        next,
    }))
}

/// Exactly one of the three selectors.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadRequest {
    ids: Option<Vec<Uuid>>,
    up_to: Option<Cursor>,
    #[serde(default)]
    all: bool,
}

#[derive(Serialize)]
struct ReadResponse {
    updated: u64,
    unread: u64,
}

pub async fn mark_read(
    AuthUser(user): AuthUser,
    body: web::Json<ReadRequest>,
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
    let unread = state.store.unread_count(&user).await?;
    if updated > 0 {
        state.notifier.unread_changed(&user, unread)?;
    }
    Ok(HttpResponse::Ok().json(ReadResponse { updated, unread }))
}
