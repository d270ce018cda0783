//! Builds the application from settings so that `main` and the tests start it the same way
//! (tests bind port 0).

use std::cell::RefCell;
use std::net::{TcpListener, ToSocketAddrs};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use actix::Actor;
use actix_cors::Cors;
use actix_web::dev::{Server, ServerHandle};
use actix_web::middleware::{Condition, Next, from_fn};
use actix_web::{App, HttpServer, web};
use anyhow::Context;
use tracing_actix_web::TracingLogger;

use crate::actors::matchmaker::load_engine;
use crate::actors::{Hub, HubSet, MatchmakerActor, Registry, SessionLimiter};
use crate::config::Settings;
use crate::error::extractors;
use crate::http::limits::RateLimiter;
use crate::http::{self, AppState, WorkerHub, auth::Authenticator};
use crate::metrics::Metrics;
use crate::notifier::Notifier;
use crate::sse::StaticFrames;
use crate::store;
use crate::telemetry::RequestSpan;

pub struct Application {
    port: u16,
    server: Server,
    shutdown: ShutdownHandle,
}

/// Stops the node gracefully: every stream ends after its queued frames (clients reconnect,
/// elsewhere or later, with `Last-Event-ID`), then the server waits for open requests.
#[derive(Clone)]
pub struct ShutdownHandle {
    server: ServerHandle,
    hubs: Arc<HubSet>,
    /// Cluster mode: left first, so another node takes the matchmaker over at once.
    membership: Arc<std::sync::Mutex<Option<crate::cluster::Membership>>>,
    push: Option<crate::push::actor::PushHandle>,
}

impl ShutdownHandle {
    pub async fn shutdown(&self) {
        let membership = self.membership.lock().ok().and_then(|mut m| m.take());
        if let Some(membership) = membership {
            membership.leave().await;
        }
        if let Some(push) = &self.push {
            push.stop();
        }
        self.hubs.drain_all();
        self.server.stop(true).await;
    }
}

impl Application {
    pub async fn build(settings: Settings) -> anyhow::Result<Application> {
        crate::push::install_tls_provider();
        let secrets = settings.auth.resolve_secrets()?;
        let database = &settings.database;
        let store = store::connect_patiently(
            &database.url,
            database.max_connections,
            Duration::from_secs(database.connect_timeout_secs),
        )
        .await
        .with_context(|| format!("opening the store at {}", database.url_for_logs()))?;
        let key_lifetime = Duration::from_secs(settings.limits.idempotency_ttl_secs);
        let metrics = Arc::new(Metrics::default());
        spawn_janitor(store.clone(), key_lifetime, metrics.clone());
        spawn_size_sampler(store.clone(), metrics.clone());
        let counted = metrics.clone();
        store::retention::spawn(
            store.clone(),
            settings.retention.clone(),
            key_lifetime,
            move |pass| {
                Metrics::add(&counted.retention_deleted_by_age, pass.by_age);
                Metrics::add(&counted.retention_deleted_beyond_limit, pass.beyond_limit);
            },
        );
        let hubs = Arc::new(HubSet::default());
        let frames = StaticFrames::new(Duration::from_millis(settings.sse.retry_ms))?;
        let at = &settings.server;
        let listener = bind(&at.host, at.port, at.listen_backlog)
            .with_context(|| format!("binding {}:{}", at.host, at.port))?;
        let port = listener.local_addr()?.port();

        let cluster = crate::cluster::Cluster::start(&settings, hubs.clone(), metrics.clone())
            .await
            .context("starting cluster mode")?;
        let notifier = Notifier::new(store.clone(), hubs.clone(), metrics.clone())
            .with_bridge(cluster.as_ref().map(|c| c.bridge.clone()));
        let limiter = SessionLimiter::new(settings.sse.max_sessions_per_user);
        let presence: Arc<dyn crate::cluster::Presence> = match &cluster {
            Some(c) => c.presence.clone(),
            None => Arc::new(crate::cluster::LocalPresence::new(limiter.open_sessions())),
        };
        let (push, push_handle) = match crate::push::actor::Providers::from_settings(&settings.push)
            .context("configuring push")?
        {
            Some(providers) => {
                let (providers, handle) = crate::push::actor::PushActor::start(
                    &settings.push,
                    providers,
                    store.clone(),
                    presence.clone(),
                    limiter.open_sessions(),
                    metrics.clone(),
                )?;
                (Some(providers), Some(handle))
            }
            None => (None, None),
        };
        let (matchmaker, membership) = match settings.redis.url() {
            Some(url) => {
                let (matchmaker, membership) = crate::cluster::join(
                    url,
                    &settings,
                    store.clone(),
                    notifier.clone(),
                    metrics.clone(),
                )
                .await
                .context("joining the cluster")?;
                (matchmaker, Some(membership))
            }
            None => {
                let (engine, restored) = load_engine(
                    store.as_ref(),
                    settings.matchmaking.policy.clone(),
                    settings.matchmaking.timing(),
                )
                .await
                .context("restoring matchmaking")?;
                let actor =
                    MatchmakerActor::new(engine, restored, notifier.clone(), metrics.clone())
                        .start();
                (crate::cluster::Matchmaker::Local(actor), None)
            }
        };
        let state = web::Data::new(AppState {
            matchmaker,
            known_users: Default::default(),
            auth: Authenticator::new(&secrets),
            notifier,
            limiter,
            presence,
            cluster,
            push,
            rate_limiter: RateLimiter::new(
                settings.limits.user_requests_per_sec,
                settings.limits.user_request_burst,
            ),
            secrets,
            store,
            metrics: metrics.clone(),
            frames: frames.clone(),
            openapi: crate::http::openapi::document(&settings),
            settings: settings.clone(),
        });
        let gate = connection_gate(&settings, push_handle.is_some(), metrics.clone());
        let body_timeout = Duration::from_secs(settings.server.body_timeout_secs);
        let request_timeout = Duration::from_secs(settings.server.request_timeout_secs);
        let body_limit = settings.server.body_limit_bytes;
        let dev_tokens = settings.auth.dev_tokens;
        let heartbeat = settings.heartbeat();
        let queue_capacity = settings.sse.queue_capacity;
        let origins = settings.server.cors_allowed_origins.clone();
        let worker_hubs = hubs.clone();

        let mut server = HttpServer::new(move || {
            // Runs once on each worker thread: that worker's registry and hub.
            let registry = Rc::new(RefCell::new(Registry::new(metrics.clone())));
            let hub = Hub::new(
                registry.clone(),
                heartbeat,
                frames.heartbeat.clone(),
                queue_capacity,
            )
            .start();
            worker_hubs.add(hub);
            App::new()
                .wrap(from_fn(move |mut req, next: Next<_>| {
                    http::body_deadline::limit(&mut req, body_timeout);
                    next.call(req)
                }))
                .wrap(from_fn({
                    let metrics = metrics.clone();
                    move |req, next: Next<_>| {
                        http::deadline::bound(req, next, request_timeout, metrics.clone())
                    }
                }))
                .wrap(Condition::new(!origins.is_empty(), cors(&origins)))
                .wrap(TracingLogger::<RequestSpan>::new())
                .app_data(state.clone())
                .app_data(web::Data::new(WorkerHub { registry }))
                .app_data(
                    web::JsonConfig::default()
                        .limit(body_limit)
                        .error_handler(extractors::json),
                )
                .app_data(web::QueryConfig::default().error_handler(extractors::query))
                .app_data(web::PathConfig::default().error_handler(extractors::path))
                .configure(|cfg| http::routes(cfg, dev_tokens))
        })
        .on_connect(move |connection, data| gate.on_connect(connection, data))
        .disable_signals()
        .shutdown_timeout(settings.server.shutdown_timeout_secs)
        // A client that hangs up ends its stream at once instead of at the next write.
        .h1_allow_half_closed(false);
        if settings.server.workers > 0 {
            server = server.workers(settings.server.workers);
        }
        let server = server.listen(listener)?.run();
        let shutdown = ShutdownHandle {
            server: server.handle(),
            hubs,
            membership: Arc::new(std::sync::Mutex::new(membership)),
            push: push_handle,
        };
        Ok(Application {
            port,
            server,
            shutdown,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.shutdown.clone()
    }

    /// Serves until SIGTERM or Ctrl-C, then shuts down gracefully.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let shutdown = self.shutdown.clone();
        actix_web::rt::spawn(async move {
            wait_for_signal().await;
            tracing::info!("signal received; closing streams and stopping");
            shutdown.shutdown().await;
        });
        self.run().await
    }

    /// Serves until stopped through a [`ShutdownHandle`].
    pub async fn run(self) -> std::io::Result<()> {
        self.server.await
    }
}

/// How long browsers may cache a CORS preflight answer, in seconds.
const CORS_MAX_AGE_SECS: usize = 3600;

/// Browser access from other origins: the user endpoints and streams (with cookies). The host
/// API key is not an allowed header: host calls are server to server.
/// A listening socket on the first of `host`'s addresses that binds, as `TcpListener::bind`
/// would open it (address reuse on), but with a queue of `backlog` connections waiting to be
/// accepted instead of the standard library's 128: a storm of reconnects after a restart would
/// overflow that, and the kernel drops a connect that finds the queue full (the client retries a
/// second later).
fn bind(host: &str, port: u16, backlog: u32) -> anyhow::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let backlog = i32::try_from(backlog).context("listen backlog")?;
    let mut last = None;
    for addr in (host, port).to_socket_addrs()? {
        let open = || -> std::io::Result<TcpListener> {
            let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
            socket.set_reuse_address(true)?;
            socket.bind(&addr.into())?;
            socket.listen(backlog)?;
            Ok(socket.into())
        };
        match open() {
            Ok(listener) => return Ok(listener),
            Err(error) => last = Some(error),
        }
    }
    Err(last.map_or_else(
        || anyhow::anyhow!("{host} has no address"),
        anyhow::Error::from,
    ))
}

fn cors(origins: &[String]) -> Cors {
    let mut cors = Cors::default()
        .allowed_methods(["GET", "POST", "PUT", "DELETE"])
        .allowed_headers([
            actix_web::http::header::AUTHORIZATION,
            actix_web::http::header::CONTENT_TYPE,
            actix_web::http::header::HeaderName::from_static("last-event-id"),
        ])
        .expose_headers(["retry-after"])
        .supports_credentials()
        .max_age(CORS_MAX_AGE_SECS);
    for origin in origins {
        cors = if origin == "*" {
            cors.allow_any_origin()
        } else {
            cors.allowed_origin(origin)
        };
    }
    cors
}

/// How often expired idempotency keys are deleted.
const JANITOR_EVERY: Duration = Duration::from_secs(600);

/// The caps on open connections: `limits.max_connections`, or what the open-file limit (raised
/// to its hard limit first) leaves after the database pools, push and Redis.
fn connection_gate(
    settings: &Settings,
    push: bool,
    metrics: Arc<Metrics>,
) -> Arc<http::connections::Gate> {
    let limits = &settings.limits;
    let total = match limits.max_connections {
        0 => match http::connections::raise_open_file_limit() {
            Ok(open_files) => {
                let cap = http::connections::derived_cap(
                    open_files,
                    settings.database.max_connections,
                    if push {
                        settings.push.concurrency as u64
                    } else {
                        0
                    },
                    settings.redis.enabled(),
                );
                tracing::info!(open_files, max_connections = cap, "connection cap");
                cap
            }
            Err(error) => {
                tracing::warn!(%error, "the open-file limit could not be read; connections are not capped");
                u64::MAX
            }
        },
        n => u64::from(n),
    };
    http::connections::Gate::new(total, limits.connections_per_ip, metrics)
}

/// Deletes idempotency keys older than `ttl`, now and every [`JANITOR_EVERY`].
fn spawn_janitor(store: Arc<dyn store::Store>, ttl: Duration, metrics: Arc<Metrics>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(JANITOR_EVERY);
        loop {
            tick.tick().await;
            let before = chrono::Utc::now() - ttl;
            match store.expire_idempotency_keys(before).await {
                Ok(0) => {}
                Ok(n) => {
                    Metrics::add(&metrics.idempotency_keys_expired, n);
                    tracing::info!(expired = n, "idempotency keys expired");
                }
                Err(error) => tracing::warn!(error = ?error, "expiring idempotency keys failed"),
            }
        }
    });
}

/// How often `belay_database_size_bytes` is read from the database.
const DATABASE_SIZE_EVERY: Duration = Duration::from_secs(60);

/// Samples the database's size into the metrics, now and every [`DATABASE_SIZE_EVERY`].
fn spawn_size_sampler(store: Arc<dyn store::Store>, metrics: Arc<Metrics>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(DATABASE_SIZE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Some(bytes) = store.memory_bytes() {
                metrics
                    .sqlite_memory_bytes
                    .store(i64::try_from(bytes).unwrap_or(i64::MAX), Ordering::Relaxed);
            }
            match store.database_size_bytes().await {
                Ok(bytes) => metrics
                    .database_size_bytes
                    .store(i64::try_from(bytes).unwrap_or(i64::MAX), Ordering::Relaxed),
                Err(error) => tracing::warn!(error = ?error, "reading the database size failed"),
            }
        }
    });
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernel keeps up to `backlog` connections waiting for `accept`; a connect beyond that
    /// gets no answer. Nothing accepts here, so every connect must fit in the queue.
    #[tokio::test]
    async fn the_listener_queues_as_many_connects_as_its_backlog() {
        let listener = bind("127.0.0.1", 0, 512).unwrap();
        let addr = listener.local_addr().unwrap();
        let connects = (0..300).map(|_| {
            tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr))
        });
        let done = futures_util::future::join_all(connects).await;
        let queued = done.iter().filter(|c| matches!(c, Ok(Ok(_)))).count();
        assert_eq!(queued, 300, "connects queued before any accept");
        drop(listener);
    }

    #[test]
    fn a_host_without_addresses_is_an_error() {
        assert!(bind("no-such-host.invalid", 0, 16).is_err());
    }
}
