//! The HTTP surface: one file per resource, wired here. Paths and field names are the contract
//! documented in the README.

pub mod ascents;
pub mod auth;
pub mod body;
pub mod body_deadline;
pub mod connections;
pub mod deadline;
pub mod dev;
pub mod devices;
pub mod events;
pub mod health;
pub mod host;
pub mod limits;
pub mod matchmaking;
pub mod notifications;
pub mod openapi;
pub mod preferences;
pub mod presence;

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use actix_web::http::Method;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{FromRequest, Handler, HttpResponse, Responder, ResponseError, Route, web};

use crate::actors::{Registry, SessionLimiter};
use crate::config::{Secrets, Settings};
use crate::error::{ApiError, ErrorKind};
use crate::metrics::Metrics;
use crate::notifier::Notifier;
use crate::sse::StaticFrames;
use crate::store::Store;

/// Shared by every worker.
pub struct AppState {
    pub settings: Settings,
    pub secrets: Secrets,
    pub store: Arc<dyn Store>,
    pub notifier: Notifier,
    pub auth: auth::Authenticator,
    pub limiter: SessionLimiter,
    pub rate_limiter: limits::RateLimiter,
    pub metrics: Arc<Metrics>,
    pub frames: StaticFrames,
    pub matchmaker: crate::cluster::Matchmaker,
    pub known_users: matchmaking::KnownUsers,
    /// Who is online: this node's sessions, or the cluster's in cluster mode.
    pub presence: Arc<dyn crate::cluster::Presence>,
    /// Cluster mode (`redis.url` set).
    pub cluster: Option<crate::cluster::Cluster>,
    /// The push providers, when push is on.
    pub push: Option<Arc<crate::push::actor::Providers>>,
    /// `GET /openapi.json`, with this node's limits (`openapi::document`).
    pub openapi: String,
}

/// One per worker thread: the registry its sessions join (served by that worker's `Hub`).
pub struct WorkerHub {
    pub registry: Rc<RefCell<Registry>>,
}

const DEMO_PAGE: &str = include_str!("../../static/index.html");

async fn demo_page() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(DEMO_PAGE)
}

const SERVICE_WORKER: &str = include_str!("../../static/sw.js");

/// The demo page's service worker (Web Push). At the root, its scope is the whole site.
async fn service_worker() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/javascript; charset=utf-8")
        .body(SERVICE_WORKER)
}

async fn not_found() -> Result<HttpResponse, ApiError> {
    Err(ApiError::new(ErrorKind::NotFound, "no such endpoint"))
}

/// The JSON 405 of a path, with the `Allow` header that RFC 9110 requires on it.
fn method_not_allowed(allow: &[Method]) -> Route {
    let allow = allow
        .iter()
        .map(Method::as_str)
        .collect::<Vec<_>>()
        .join(", ");
    web::to(move || {
        let allow = allow.clone();
        async move {
            let mut response = ApiError::new(
                ErrorKind::MethodNotAllowed,
                format!("method not allowed on this endpoint; allowed: {allow}"),
            )
            .error_response();
            if let Ok(value) = HeaderValue::from_str(&allow) {
                response.headers_mut().insert(header::ALLOW, value);
            }
            response
        }
    })
}

/// A path served by one method; other methods get a JSON 405.
fn resource<F, Args>(path: &str, method: Method, handler: F) -> actix_web::Resource
where
    F: Handler<Args>,
    Args: FromRequest + 'static,
    F::Output: Responder + 'static,
{
    web::resource(path)
        .default_service(method_not_allowed(std::slice::from_ref(&method)))
        .route(web::method(method).to(handler))
}

pub fn routes(cfg: &mut web::ServiceConfig, dev_tokens: bool) {
    let mut v1 = web::scope("/v1")
        .service(resource("/events", Method::GET, events::stream))
        .service(resource("/notifications", Method::GET, notifications::list))
        .service(resource(
            "/notifications/read",
            Method::POST,
            notifications::mark_read,
        ))
        .service(resource("/notify", Method::POST, host::notify))
        .service(resource("/broadcast", Method::POST, host::broadcast))
        .service(resource("/presence", Method::GET, presence::presence))
        .service(
            web::resource("/queue")
                .route(web::post().to(matchmaking::join_queue))
                .route(web::delete().to(matchmaking::leave_queue))
                .default_service(method_not_allowed(&[Method::POST, Method::DELETE])),
        )
        .service(resource("/me/match", Method::GET, matchmaking::me_match))
        .service(resource(
            "/challenges",
            Method::POST,
            matchmaking::create_challenge,
        ))
        .service(resource(
            "/challenges/{id}/accept",
            Method::POST,
            matchmaking::accept_challenge,
        ))
        .service(resource(
            "/challenges/{id}/decline",
            Method::POST,
            matchmaking::decline_challenge,
        ))
        .service(resource(
            "/matches/{id}",
            Method::GET,
            matchmaking::get_match,
        ))
        .service(resource(
            "/matches/{id}/ready",
            Method::POST,
            matchmaking::ready,
        ))
        .service(resource(
            "/matches/{id}/cancel",
            Method::POST,
            matchmaking::cancel,
        ))
        .service(resource(
            "/matches/{id}/result",
            Method::POST,
            matchmaking::report_result,
        ))
        .service(resource(
            "/leaderboard",
            Method::GET,
            matchmaking::leaderboard,
        ))
        .service(resource("/ascents", Method::POST, ascents::log_ascent))
        .service(
            web::resource("/devices")
                .route(web::post().to(devices::register))
                .route(web::get().to(devices::list))
                .default_service(method_not_allowed(&[Method::POST, Method::GET])),
        )
        .service(resource("/devices/{id}", Method::DELETE, devices::remove))
        .service(resource("/push/vapid-key", Method::GET, devices::vapid_key))
        .service(
            web::resource("/preferences")
                .route(web::get().to(preferences::get))
                .route(web::put().to(preferences::put))
                .default_service(method_not_allowed(&[Method::GET, Method::PUT])),
        );
    if dev_tokens {
        v1 = v1
            .service(resource("/dev/token", Method::POST, dev::token))
            .service(resource("/dev/config", Method::GET, dev::config));
    }
    cfg.service(resource("/", Method::GET, demo_page))
        .service(resource("/sw.js", Method::GET, service_worker))
        // Browsers ask for it on every page load; an empty answer keeps their consoles clean.
        .service(resource(
            "/favicon.ico",
            Method::GET,
            HttpResponse::NoContent,
        ))
        .service(resource("/healthz", Method::GET, health::healthz))
        .service(resource("/readyz", Method::GET, health::readyz))
        .service(resource("/metrics", Method::GET, health::metrics))
        .service(resource(
            "/openapi.json",
            Method::GET,
            openapi::openapi_json,
        ))
        .service(v1)
        .default_service(web::to(not_found));
}
