//! The HTTP surface: one file per resource, wired here. Paths and field names are the contract
//! documented in the README.

pub mod ascents;
pub mod auth;
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

use actix_web::{HttpResponse, Route, web};

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

async fn method_not_allowed() -> Result<HttpResponse, ApiError> {
    Err(ApiError::new(
        ErrorKind::MethodNotAllowed,
        "method not allowed on this endpoint",
    ))
}

/// A path served by one route; other methods get a JSON 405.
fn resource(path: &str, route: Route) -> actix_web::Resource {
    web::resource(path)
        .route(route)
        .default_service(web::to(method_not_allowed))
}

pub fn routes(cfg: &mut web::ServiceConfig, dev_tokens: bool) {
    let mut v1 = web::scope("/v1")
        .service(resource("/events", web::get().to(events::stream)))
        .service(resource(
            "/notifications",
            web::get().to(notifications::list),
        ))
        .service(resource(
            "/notifications/read",
            web::post().to(notifications::mark_read),
        ))
        .service(resource("/notify", web::post().to(host::notify)))
        .service(resource("/broadcast", web::post().to(host::broadcast)))
        .service(resource("/presence", web::get().to(presence::presence)))
        .service(
            web::resource("/queue")
                .route(web::post().to(matchmaking::join_queue))
                .route(web::delete().to(matchmaking::leave_queue))
                .default_service(web::to(method_not_allowed)),
        )
        .service(resource("/me/match", web::get().to(matchmaking::me_match)))
        .service(resource(
            "/challenges",
            web::post().to(matchmaking::create_challenge),
        ))
        .service(resource(
            "/challenges/{id}/accept",
            web::post().to(matchmaking::accept_challenge),
        ))
        .service(resource(
            "/challenges/{id}/decline",
            web::post().to(matchmaking::decline_challenge),
        ))
        .service(resource(
            "/matches/{id}",
            web::get().to(matchmaking::get_match),
        ))
        .service(resource(
            "/matches/{id}/ready",
            web::post().to(matchmaking::ready),
        ))
        .service(resource(
            "/matches/{id}/cancel",
            web::post().to(matchmaking::cancel),
        ))
        .service(resource(
            "/matches/{id}/result",
            web::post().to(matchmaking::report_result),
        ))
        .service(resource(
            "/leaderboard",
            web::get().to(matchmaking::leaderboard),
        ))
        .service(resource("/ascents", web::post().to(ascents::log_ascent)))
        .service(
            web::resource("/devices")
                .route(web::post().to(devices::register))
                .route(web::get().to(devices::list))
                .default_service(web::to(method_not_allowed)),
        )
        .service(resource("/devices/{id}", web::delete().to(devices::remove)))
        .service(resource(
            "/push/vapid-key",
            web::get().to(devices::vapid_key),
        ))
        .service(
            web::resource("/preferences")
                .route(web::get().to(preferences::get))
                .route(web::put().to(preferences::put))
                .default_service(web::to(method_not_allowed)),
        );
    if dev_tokens {
        v1 = v1
            .service(resource("/dev/token", web::post().to(dev::token)))
            .service(resource("/dev/config", web::get().to(dev::config)));
    }
    cfg.service(resource("/", web::get().to(demo_page)))
        .service(resource("/sw.js", web::get().to(service_worker)))
        // Browsers ask for it on every page load; an empty answer keeps their consoles clean.
        .service(resource(
            "/favicon.ico",
            web::get().to(HttpResponse::NoContent),
        ))
        .service(resource("/healthz", web::get().to(health::healthz)))
        .service(resource("/readyz", web::get().to(health::readyz)))
        .service(resource("/metrics", web::get().to(health::metrics)))
        .service(resource(
            "/openapi.json",
            web::get().to(openapi::openapi_json),
        ))
        .service(v1)
        .default_service(web::to(not_found));
}
