//! # Belay
//!
//! A real-time matchmaking and notification engine for a climbing app.
//!
//! ## Layout
//! - [`startup`]: builds the HTTP server, one `Hub` per worker, the store; used by `main` and tests.
//! - [`config`]: layered settings (`config/default.toml`, a file, `BELAY__*` variables).
//! - [`http`]: one module per resource of the HTTP surface, and authentication.
//! - [`notifier`]: store first, then publish; the one way events enter the engine.
//! - [`actors`]: `Hub` (per-worker session registry, fan-out) and `SessionActor` (one per stream).
//! - [`sse`]: frames encoded once, the bounded per-session outbox, the response body.
//! - [`cluster`]: cluster mode: the Redis bridge between nodes, presence, the cluster-wide cap.
//! - [`push`]: what a push says per event kind, and the FCM HTTP v1 and Web Push providers.
//! - [`store`]: the `Store` trait, the decisions every backend shares, and the SQLite,
//!   PostgreSQL and MariaDB/MySQL backends.
//! - [`cluster`]: the matchmaker lease in Redis and the command stream to its leader.
//! - [`domain`]: validated ids and the event catalogue.
//! - [`error`], [`metrics`], [`telemetry`]: the JSON error type, counters, logging.
//! - `fuzzing` (hidden): the entry points of the fuzz targets in `fuzz/`.

pub mod actors;
pub mod cluster;
pub mod config;
pub mod domain;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod http;
pub mod matchmaking;
pub mod metrics;
pub mod notifier;
pub mod push;
pub mod sse;
pub mod startup;
pub mod store;
pub mod telemetry;
