//! `GET /v1/presence`: which users have a live stream, on any node in cluster mode.

use actix_web::{HttpRequest, HttpResponse, web};
use serde::Serialize;
use utoipa::ToSchema;

use super::openapi::HostKeyRefusal;
use super::{AppState, auth::HostApp};
use crate::cluster::presence::MAX_PRESENCE_IDS;
use crate::domain::UserId;
use crate::error::{ApiError, ErrorBody, ErrorKind};

/// One asked user.
#[derive(Serialize, ToSchema)]
pub struct UserPresence {
    user_id: UserId,
    /// A stream of this user is open on some node.
    online: bool,
}

/// The asked users, in the order asked (repeats once).
#[derive(Serialize, ToSchema)]
pub struct PresenceResponse {
    users: Vec<UserPresence>,
}

/// The `user_id` parameters of the query, in order, without repeats.
fn user_ids(query: &str) -> Result<Vec<UserId>, ApiError> {
    let mut ids: Vec<UserId> = Vec::new();
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        if key != "user_id" {
            return Err(ApiError::bad_request(format!(
                "unknown query parameter {:?}",
                crate::domain::ids::truncate(&key, 40)
            )));
        }
        let user = UserId::parse(value.into_owned())
            .map_err(|e| ApiError::bad_request(format!("user_id: {e}")))?;
        if !ids.contains(&user) {
            ids.push(user);
        }
        if ids.len() > MAX_PRESENCE_IDS {
            return Err(ApiError::bad_request(format!(
                "at most {MAX_PRESENCE_IDS} user_id values"
            )));
        }
    }
    if ids.is_empty() {
        return Err(ApiError::bad_request("user_id is required"));
    }
    Ok(ids)
}

/// Tells the host app which users are online: have a live event stream open, on any node.
///
/// A node that crashed stops counting within `cluster.presence_ttl_secs` (30 s by default).
#[utoipa::path(
    get,
    path = "/v1/presence",
    tag = "host",
    params(("user_id" = Vec<UserId>, Query, explode = true,
        description = "1 to 100 users: `?user_id=ana&user_id=bob`")),
    security(("api_key" = [])),
    responses(
        (status = 200, description = "Each asked user, in order", body = PresenceResponse,
            example = json!({"users": [{"user_id": "ana", "online": true},
                {"user_id": "bob", "online": false}]})),
        (status = 400, body = ErrorBody, description = "`invalid_request`: no `user_id`, more \
            than 100, an invalid one, or another parameter"),
        HostKeyRefusal,
        (status = 503, body = ErrorBody, description = "`unavailable`: Redis does not answer \
            (cluster mode)"),
    )
)]
pub async fn presence(
    _: HostApp,
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let users = user_ids(req.query_string())?;
    let online = state.presence.online(&users).await.map_err(|e| {
        tracing::warn!(error = ?e, "presence is not readable");
        ApiError::new(ErrorKind::Unavailable, "presence is not readable right now")
    })?;
    let users = users
        .into_iter()
        .zip(online)
        .map(|(user_id, online)| UserPresence { user_id, online })
        .collect();
    Ok(HttpResponse::Ok().json(PresenceResponse { users }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_query_lists_1_to_100_valid_ids() {
        let ids = user_ids("user_id=ana&user_id=bob&user_id=ana").unwrap();
        assert_eq!(ids.len(), 2);
        assert!(user_ids("").is_err());
        assert!(user_ids("user_id=a%20b").is_err());
        assert!(user_ids("user=ana").is_err());
        let many: Vec<String> = (0..=100).map(|i| format!("user_id=u{i}")).collect();
        assert!(user_ids(&many.join("&")).is_err());
        assert_eq!(user_ids(&many[..100].join("&")).unwrap().len(), 100);
    }
}
