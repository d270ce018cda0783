//! `POST /v1/devices`, `GET /v1/devices`, `DELETE /v1/devices/{id}`: where a climber's pushes
//! go (FCM registration tokens and Web Push subscriptions); `GET /v1/push/vapid-key`: what a
//! browser subscribes with.

use crate::http::body::Body;
use actix_web::{HttpResponse, web};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{AdditionalProperties, ObjectBuilder, OneOfBuilder, Schema, Type};
use utoipa::{PartialSchema, ToSchema};
use uuid::Uuid;

use super::openapi::{BearerRefusal, JsonBodyRefusal};
use super::{AppState, auth::AuthUser};
use crate::error::{ApiError, ErrorBody, ErrorKind};
use crate::push::fcm::{self, FcmToken};
use crate::push::webpush::{
    AUTH_BYTES, EndpointPolicy, MAX_ENDPOINT_BYTES, P256DH_BYTES, Subscription, SubscriptionJson,
};
use crate::store::push::{Device, NewDevice, Platform};

/// A registration: an FCM token, or a Web Push subscription as the browser's
/// `PushSubscription.toJSON()` gives it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceBody {
    /// `fcm` or `webpush`.
    pub platform: String,
    /// `fcm`: the registration token.
    #[serde(default)]
    pub token: Option<String>,
    /// `webpush`: the subscription (`expirationTime` is accepted and ignored).
    #[serde(default)]
    pub subscription: Option<SubscriptionJson>,
}

/// One branch per platform, with the shapes `parse_device` checks. That `keys.p256dh` is a
/// point on the P-256 curve is beyond JSON Schema: the description says it.
impl PartialSchema for DeviceBody {
    fn schema() -> RefOr<Schema> {
        let string = || ObjectBuilder::new().schema_type(Type::String);
        let platform = |name: &str| string().enum_values(Some([name]));
        let closed = || Some(AdditionalProperties::<Schema>::FreeForm(false));
        let absent = || ObjectBuilder::new().schema_type(Type::Null);
        let base64url = |bytes: usize| {
            // Unpadded, or padded to a multiple of four.
            let chars = (bytes * 4).div_ceil(3);
            let padding = (4 - chars % 4) % 4;
            format!("^[A-Za-z0-9_-]{{{chars}}}(={{{padding}}})?$")
        };
        let fcm = ObjectBuilder::new()
            .property("platform", platform("fcm"))
            .property(
                "token",
                string()
                    .pattern(Some("^[A-Za-z0-9_:./+=-]+$"))
                    .max_length(Some(fcm::MAX_TOKEN_BYTES))
                    .description(Some("The FCM registration token")),
            )
            .property("subscription", absent())
            .required("platform")
            .required("token")
            .additional_properties(closed());
        let keys = ObjectBuilder::new()
            .property(
                "p256dh",
                string()
                    .pattern(Some(base64url(P256DH_BYTES)))
                    .description(Some(
                        "The browser's ECDH public key: an uncompressed point on the P-256 curve \
                     (65 bytes), base64url",
                    )),
            )
            .property(
                "auth",
                string()
                    .pattern(Some(base64url(AUTH_BYTES)))
                    .description(Some("The authentication secret (16 bytes), base64url")),
            )
            .required("p256dh")
            .required("auth");
        let subscription = ObjectBuilder::new()
            .property(
                "endpoint",
                string()
                    .pattern(Some(
                        "^https://[A-Za-z0-9.-]+(:[0-9]{1,5})?(/[A-Za-z0-9._~/%-]*)?$",
                    ))
                    .max_length(Some(MAX_ENDPOINT_BYTES))
                    .description(Some("The push service's URL for this browser: https")),
            )
            .property("keys", keys)
            .property(
                "expirationTime",
                ObjectBuilder::new().description(Some("Accepted and ignored, as other fields are")),
            )
            .required("endpoint")
            .required("keys");
        let webpush = ObjectBuilder::new()
            .property("platform", platform("webpush"))
            .property("subscription", subscription)
            .property("token", absent())
            .required("platform")
            .required("subscription")
            .additional_properties(closed());
        OneOfBuilder::new()
            .item(fcm)
            .item(webpush)
            .examples([json!({"platform": "webpush", "subscription": {
                "endpoint": "https://push.example/send/abc",
                "keys": {"p256dh": "BNc…", "auth": "tBH…"}}})])
            .into()
    }
}

impl ToSchema for DeviceBody {}

/// A registered device, as its climber sees it.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeviceView {
    pub id: Uuid,
    /// `fcm` or `webpush`.
    pub platform: String,
    /// `fcm`: the registration token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// `webpush`: the push service endpoint.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    pub created_at: DateTime<Utc>,
    /// The last registration of this device; devices not registered again for
    /// `push.device_max_idle_days` are forgotten.
    pub last_seen: DateTime<Utc>,
}

impl From<Device> for DeviceView {
    fn from(d: Device) -> Self {
        let (token, endpoint) = match d.platform {
            Platform::Fcm => (Some(d.token), None),
            Platform::Webpush => (None, Some(d.token)),
        };
        DeviceView {
            id: d.id,
            platform: d.platform.as_str().to_owned(),
            token,
            endpoint,
            created_at: d.created_at,
            last_seen: d.last_seen,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeviceList {
    /// Most recently seen first.
    pub devices: Vec<DeviceView>,
}

/// Checks a registration and turns it into the row to store.
pub(crate) fn parse_device(
    body: DeviceBody,
    endpoints: EndpointPolicy,
) -> Result<NewDevice, ApiError> {
    match (body.platform.as_str(), body.token, body.subscription) {
        ("fcm", Some(token), None) => {
            let token = FcmToken::parse(&token)
                .map_err(|e| ApiError::bad_request(format!("token: {e}")))?;
            Ok(NewDevice {
                platform: Platform::Fcm,
                token: token.as_str().to_owned(),
                p256dh: None,
                auth: None,
            })
        }
        ("fcm", _, _) => Err(ApiError::bad_request(
            "platform fcm takes a token and no subscription",
        )),
        ("webpush", None, Some(json)) => {
            let parsed = Subscription::parse(&json, endpoints)
                .map_err(|e| ApiError::bad_request(format!("subscription: {e}")))?;
            Ok(NewDevice {
                platform: Platform::Webpush,
                token: parsed.endpoint().to_owned(),
                p256dh: Some(json.keys.p256dh.trim().trim_end_matches('=').to_owned()),
                auth: Some(json.keys.auth.trim().trim_end_matches('=').to_owned()),
            })
        }
        ("webpush", _, _) => Err(ApiError::bad_request(
            "platform webpush takes a subscription and no token",
        )),
        (other, _, _) => Err(ApiError::bad_request(format!(
            "platform: {other:?} is not one of fcm, webpush"
        ))),
    }
}

#[utoipa::path(
    post,
    path = "/v1/devices",
    tag = "user",
    summary = "Registers a device for pushes",
    description = "An FCM registration token (`{\"platform\":\"fcm\",\"token\"}`) or a Web Push \
        subscription (`{\"platform\":\"webpush\",\"subscription\":{\"endpoint\",\"keys\":\
        {\"p256dh\",\"auth\"}}}`). Registering a known token again refreshes it (200); a token \
        registered by another climber moves to the caller. Pushes go to the caller's devices \
        while they have no live stream.",
    request_body = DeviceBody,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "A new device", body = DeviceView),
        (status = 200, description = "A known device, refreshed", body = DeviceView),
        (status = 400, body = ErrorBody, description = "`invalid_json`: malformed JSON; \
            `invalid_request`: an unknown platform, a token or subscription missing or given to \
            the wrong platform, a malformed FCM token, an endpoint that is not an https URL, or \
            keys of the wrong length"),
        (status = 409, body = ErrorBody, description = "`push_not_enabled`: this server does not \
            send pushes of that platform"),
        BearerRefusal,
        JsonBodyRefusal,
    )
)]
pub async fn register(
    AuthUser(user): AuthUser,
    body: Body<DeviceBody>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let endpoints = state
        .push
        .as_ref()
        .map_or(EndpointPolicy::HttpsOnly, |p| p.endpoints);
    let device = parse_device(body.into_inner(), endpoints)?;
    if !state
        .push
        .as_ref()
        .is_some_and(|p| p.serves(device.platform))
    {
        return Err(ApiError::new(
            ErrorKind::Conflict("push_not_enabled"),
            format!(
                "this server does not send {} pushes (push.{} is not configured)",
                device.platform.as_str(),
                device.platform.as_str()
            ),
        ));
    }
    let (stored, created) = state
        .store
        .register_device(
            &user,
            &device,
            state.settings.push.max_devices_per_user,
            Utc::now(),
        )
        .await?;
    let view = DeviceView::from(stored);
    Ok(if created {
        HttpResponse::Created().json(view)
    } else {
        HttpResponse::Ok().json(view)
    })
}

#[utoipa::path(
    get,
    path = "/v1/devices",
    tag = "user",
    summary = "The caller's devices",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Most recently seen first", body = DeviceList),
        BearerRefusal,
    )
)]
pub async fn list(
    AuthUser(user): AuthUser,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let devices = state.store.devices(&user).await?;
    Ok(HttpResponse::Ok().json(DeviceList {
        devices: devices.into_iter().map(DeviceView::from).collect(),
    }))
}

#[utoipa::path(
    delete,
    path = "/v1/devices/{id}",
    operation_id = "remove_device",
    tag = "user",
    summary = "Removes one of the caller's devices",
    params(("id" = Uuid, Path, description = "The device id")),
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Removed, with the pushes waiting for it"),
        (status = 400, body = ErrorBody, description = "`invalid_request`: the id is not a UUID"),
        (status = 404, body = ErrorBody, description = "`not_found`: no such device of the caller"),
        BearerRefusal,
    )
)]
pub async fn remove(
    AuthUser(user): AuthUser,
    id: web::Path<Uuid>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    if state.store.delete_device(Some(&user), *id).await? {
        Ok(HttpResponse::NoContent().finish())
    } else {
        Err(ApiError::new(ErrorKind::NotFound, "no such device"))
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct VapidKey {
    /// The VAPID public key, unpadded base64url: `applicationServerKey` of
    /// `pushManager.subscribe`.
    pub public_key: String,
}

#[utoipa::path(
    get,
    path = "/v1/push/vapid-key",
    tag = "public",
    summary = "The key browsers subscribe to Web Push with",
    responses(
        (status = 200, description = "Web Push is on", body = VapidKey),
        (status = 404, body = ErrorBody, description = "`not_found`: Web Push is not configured"),
    )
)]
pub async fn vapid_key(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    match state.push.as_ref().and_then(|p| p.webpush.as_ref()) {
        Some(webpush) => Ok(HttpResponse::Ok().json(VapidKey {
            public_key: webpush.vapid_public_key(),
        })),
        None => Err(ApiError::new(
            ErrorKind::NotFound,
            "Web Push is not configured on this server",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(json: serde_json::Value) -> DeviceBody {
        serde_json::from_value(json).unwrap_or_else(|e| panic!("{e}"))
    }

    fn refusal(json: serde_json::Value) -> String {
        parse_device(body(json), EndpointPolicy::HttpsOnly)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    }

    #[test]
    fn each_platform_takes_its_own_field_only() {
        assert!(refusal(serde_json::json!({"platform": "fcm"})).contains("takes a token"));
        assert!(
            refusal(serde_json::json!({"platform": "webpush", "token": "abc"}))
                .contains("takes a subscription")
        );
        assert!(refusal(serde_json::json!({"platform": "apns", "token": "a"})).contains("apns"));
        assert!(refusal(serde_json::json!({"platform": "fcm", "token": "a b"})).contains("token:"));
    }

    #[test]
    fn a_web_push_endpoint_must_be_https_and_keys_the_right_length() {
        let sub = |endpoint: &str, p256dh: &str| {
            serde_json::json!({"platform": "webpush", "subscription": {
                "endpoint": endpoint, "expirationTime": null,
                "keys": {"p256dh": p256dh, "auth": "AAAAAAAAAAAAAAAAAAAAAA"}}})
        };
        assert!(refusal(sub("http://push.example/x", "AAAA")).contains("https"));
        assert!(refusal(sub("https://push.example/x", "AAAA")).contains("p256dh"));
    }
}
