//! Cluster mode: several Belay nodes behind a load balancer, sharing one database (the truth)
//! and one Redis (the live path). Off unless `redis.url` is set; then:
//!
//! - [`bridge`]: the `RedisBridgeActor`, which carries each committed event to the other nodes
//!   that hold a session of its user, and broadcasts to all; a receiving node's outbox orders
//!   and de-duplicates these frames exactly like its own. Its rules are in [`link`].
//! - [`presence`]: which users have live sessions on which node, with expiry; the per-user
//!   session cap counted across nodes; the [`Presence`](presence::Presence) interface.
//! - [`keys`]: every key and channel name, hash-tagged for a Redis Cluster.
//! - [`matchmaker`], [`lease`], [`commands`]: one matchmaker across nodes, run by the holder of
//!   a lease, fed through a Redis Stream by every node.
//!
//! Nothing is lost when Redis is: every event is in the store before it is published, and
//! every local session catches up from its cursor whenever the bridge resubscribes. See
//! "Cluster: the Redis bridge" and "Delivery order" in docs/ARCHITECTURE.md.

pub mod bridge;
pub mod commands;
pub mod conn;
pub mod keys;
pub mod lease;
pub mod link;
pub mod matchmaker;
pub mod message;
pub mod presence;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use secrecy::ExposeSecret;

use crate::actors::HubSet;
use crate::config::Settings;
use crate::metrics::Metrics;
pub use bridge::BridgeHandle;
pub use matchmaker::{CallError, Matchmaker, Membership, join};
pub use presence::{Claim, LocalPresence, Presence, RedisPresence};

/// How long start-up waits for Redis before going on without it (the bridge keeps trying).
const START_TIMEOUT: Duration = Duration::from_secs(5);

/// What cluster mode adds to a running node.
#[derive(Clone)]
pub struct Cluster {
    pub bridge: BridgeHandle,
    pub presence: Arc<RedisPresence>,
    pub node: String,
}

impl Cluster {
    /// Connects to Redis, clears what an earlier run of this node left, and starts the bridge
    /// and the presence heartbeat. `None` when `redis.url` is empty.
    pub async fn start(
        settings: &Settings,
        hubs: Arc<HubSet>,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Option<Cluster>> {
        if !settings.redis.enabled() {
            return Ok(None);
        }
        let cfg = &settings.cluster;
        let node = if cfg.node_id.is_empty() {
            uuid::Uuid::new_v4().simple().to_string()[..12].to_owned()
        } else {
            cfg.node_id.clone()
        };
        let keys = keys::Keys::new(&cfg.key_prefix, &node);
        let url = settings.redis.url.expose_secret().to_owned();
        // Start-up needs to know what the server is; a node that cannot reach Redis at start
        // does not start (a node that loses it later keeps serving).
        let server = tokio::time::timeout(START_TIMEOUT, conn::Server::discover(&url))
            .await
            .context("Redis did not answer at start")?
            .context("discovering Redis")?;
        let publisher = server.commands().await.context("connecting to Redis")?;
        let presence = Arc::new(RedisPresence::new(
            publisher.clone(),
            keys.clone(),
            settings.sse.max_sessions_per_user,
            Duration::from_secs(cfg.presence_ttl_secs),
            metrics.clone(),
        ));
        presence
            .clear_own()
            .await
            .context("clearing this node's presence")?;
        spawn_heartbeat(
            presence.clone(),
            Duration::from_secs(cfg.presence_refresh_secs),
        );
        let (actor, bridge) = bridge::RedisBridgeActor::new(
            server.clone(),
            publisher,
            keys,
            hubs,
            presence.clone(),
            metrics,
            Duration::from_millis(cfg.probe_every_ms),
            Duration::from_millis(cfg.probe_timeout_ms),
        );
        actor.spawn();
        tracing::info!(
            node = %node,
            cluster = server.cluster,
            sharded = server.sharded,
            "cluster mode: Redis bridge starting"
        );
        Ok(Some(Cluster {
            bridge,
            presence,
            node,
        }))
    }
}

/// Rewrites this node's presence entries every `every`, so they outlive it by at most the TTL.
fn spawn_heartbeat(presence: Arc<RedisPresence>, every: Duration) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(error) = presence.refresh().await {
                tracing::debug!(error = ?error, "presence refresh failed");
            }
        }
    });
}
