//! `RedisBridgeActor`: carries this node's live traffic to the other nodes and theirs to it,
//! through Redis Pub/Sub. One per node, with one subscriber connection (never one per session)
//! and its own connection for publishing.
//!
//! Outgoing: the notifier hands over each message after the commit, without waiting (an
//! unbounded channel: the commit hook never blocks). A user's event or unread update goes to the
//! channel of every other node that holds a session of that user (presence); a broadcast goes to
//! the broadcast channel. Incoming: a message is handed to the local hubs exactly like a local
//! frame, so the outbox orders it by cursor, drops duplicates and fills gaps from the store.
//!
//! Redis Pub/Sub is at most once, so the store stays the truth: after every reconnect (and a
//! probe that did not come back counts as one) every local session catches up from its cursor.
//! The rules live in [`super::link`]; this file is their I/O. Part of "Delivery order" in
//! docs/ARCHITECTURE.md.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use redis::{PushInfo, PushKind, Value};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use super::conn::{Conn, Server};
use super::keys::Keys;
use super::link::{Action, Link};
use super::message::{Kind, Message};
use super::presence::RedisPresence;
use crate::actors::{Delivery, HubSet, Target};
use crate::metrics::Metrics;

/// First wait before reconnecting; it doubles up to [`BACKOFF_MAX`], with jitter.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Only attempts that could not reach Redis grow the wait (a connection that got as far as the
/// catch-up starts again from [`BACKOFF_MIN`]), and such an attempt costs one connect. So the
/// longest wait is short: every second of it delays every event for this node's sessions by up
/// to that long once Redis is back.
const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// Messages kept while Redis is unreachable; beyond it the oldest are dropped and every node is
/// asked to catch up once the bridge is back.
const WAITING_CAPACITY: usize = 10_000;
/// Messages taken from the inbox together, sharing their presence look-ups; also the most one
/// publish to a node carries (see [`super::message::encode_batch`]).
const PUBLISH_BATCH: usize = 256;
/// How often the link's clock is looked at (probe due or overdue), as a share of the probe
/// interval.
const TICKS_PER_PROBE: u32 = 4;

/// What the rest of the node hands to the bridge. Cheap to clone.
#[derive(Clone)]
pub struct BridgeHandle {
    node: Arc<str>,
    outbox: UnboundedSender<Message>,
}

impl BridgeHandle {
    /// Queues a message for the other nodes; never waits.
    pub fn send(&self, kind: Kind, frame: bytes::Bytes) {
        let _ = self.outbox.send(Message {
            node: self.node.to_string(),
            kind,
            frame,
        });
    }
}

pub struct RedisBridgeActor {
    server: Server,
    keys: Keys,
    hubs: Arc<HubSet>,
    presence: Arc<RedisPresence>,
    metrics: Arc<Metrics>,
    publisher: Conn,
    inbox: UnboundedReceiver<Message>,
    link: Link<Message>,
    probe_every: Duration,
}

/// Why the running phase ended.
enum Ended {
    Lost(String),
    Closed,
}

impl RedisBridgeActor {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        server: Server,
        publisher: Conn,
        keys: Keys,
        hubs: Arc<HubSet>,
        presence: Arc<RedisPresence>,
        metrics: Arc<Metrics>,
        probe_every: Duration,
        probe_timeout: Duration,
    ) -> (Self, BridgeHandle) {
        let (tx, inbox) = unbounded_channel();
        let handle = BridgeHandle {
            node: Arc::from(keys.node()),
            outbox: tx,
        };
        let link = Link::new(
            [keys.own_channel(), keys.broadcast_channel()],
            probe_every,
            probe_timeout,
            WAITING_CAPACITY,
        );
        let actor = RedisBridgeActor {
            server,
            keys,
            hubs,
            presence,
            metrics,
            publisher,
            inbox,
            link,
            probe_every,
        };
        (actor, handle)
    }

    pub fn spawn(self) {
        tokio::spawn(self.run());
    }

    async fn run(mut self) {
        let mut backoff = BACKOFF_MIN;
        let mut up_before: Option<bool> = None;
        loop {
            let (push_tx, push_rx) = unbounded_channel();
            let ended = match self.server.subscriber(push_tx).await {
                Ok(subscriber) => {
                    self.serve(subscriber, push_rx, &mut backoff, &mut up_before)
                        .await
                }
                Err(error) => Ended::Lost(format!("{error:#}")),
            };
            self.link.disconnected();
            self.metrics.cluster.bridge_up.store(0, Ordering::Relaxed);
            match ended {
                Ended::Closed => return,
                Ended::Lost(why) => {
                    if up_before != Some(false) {
                        tracing::warn!(reason = %why, "Redis bridge down: serving local sessions only");
                        up_before = Some(false);
                    }
                }
            }
            // Keep taking messages while waiting, so the notifier's channel does not grow.
            let wait = jitter(backoff);
            backoff = (backoff * 2).min(BACKOFF_MAX);
            let until = tokio::time::Instant::now() + wait;
            loop {
                tokio::select! {
                    () = tokio::time::sleep_until(until) => break,
                    message = self.inbox.recv() => match message {
                        Some(m) => { self.link.outgoing(m); }
                        None => return,
                    },
                }
            }
        }
    }

    /// One connection's life: subscribe, catch up, then carry messages until it is lost.
    async fn serve(
        &mut self,
        mut subscriber: Conn,
        mut push: UnboundedReceiver<PushInfo>,
        backoff: &mut Duration,
        up_before: &mut Option<bool>,
    ) -> Ended {
        let mut pending = self.link.connected();
        let mut tick = tokio::time::interval(self.probe_every / TICKS_PER_PROBE);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // Carry out what the link asked for, in order.
            let mut batch = Vec::new();
            for action in std::mem::take(&mut pending) {
                if let Action::Publish(m) = action {
                    batch.push(m);
                    continue;
                }
                if !batch.is_empty() {
                    pending.extend(self.publish(std::mem::take(&mut batch)).await);
                }
                match action {
                    Action::Subscribe(channel) => {
                        match subscriber.subscribe(self.server.sharded, &channel).await {
                            Ok(()) => {
                                pending.extend(self.link.subscribed(&channel, Instant::now()))
                            }
                            Err(error) => return Ended::Lost(format!("subscribing: {error:#}")),
                        }
                        if self.link.is_up() && *up_before != Some(true) {
                            tracing::info!(node = self.keys.node(), "Redis bridge up");
                            *up_before = Some(true);
                        }
                    }
                    Action::CatchUpAll => {
                        *backoff = BACKOFF_MIN;
                        // Presence first, so that the nodes publishing from now on find this
                        // node again; a catch-up without it could miss what they publish next.
                        if let Err(error) = self.presence.refresh().await {
                            Metrics::add(&self.metrics.cluster.bridge_reconnects, 1);
                            return Ended::Lost(format!("rewriting presence: {error:#}"));
                        }
                        self.metrics.cluster.bridge_up.store(1, Ordering::Relaxed);
                        self.hubs.resync_all();
                    }
                    Action::AnnounceResync => {
                        pending.push(Action::Publish(self.own(Kind::Resync)));
                    }
                    Action::SendProbe(seq) => {
                        let probe = self.own(Kind::Probe { seq }).encode();
                        let mut conn = self.publisher.clone();
                        let sent = self
                            .server
                            .publish(&self.keys.own_channel(), &probe)
                            .exec_async(&mut conn)
                            .await;
                        if let Err(error) = sent {
                            return Ended::Lost(format!("publishing a probe: {error}"));
                        }
                    }
                    Action::Reconnect => {
                        Metrics::add(&self.metrics.cluster.bridge_reconnects, 1);
                        return Ended::Lost(
                            "the probe did not come back or a publish failed".into(),
                        );
                    }
                    Action::Publish(_) => {}
                }
            }
            if !batch.is_empty() {
                pending.extend(self.publish(batch).await);
                continue;
            }
            if !pending.is_empty() {
                continue;
            }
            tokio::select! {
                info = push.recv() => match info {
                    Some(info) if info.kind == PushKind::Disconnection => {
                        Metrics::add(&self.metrics.cluster.bridge_reconnects, 1);
                        return Ended::Lost("the subscriber connection closed".into());
                    }
                    Some(info) => self.received(info),
                    None => {
                        Metrics::add(&self.metrics.cluster.bridge_reconnects, 1);
                        return Ended::Lost("the subscriber connection closed".into());
                    }
                },
                message = self.inbox.recv() => match message {
                    Some(m) => {
                        pending = self.link.outgoing(m);
                        while pending.len() < PUBLISH_BATCH {
                            let Ok(m) = self.inbox.try_recv() else { break };
                            pending.extend(self.link.outgoing(m));
                        }
                    }
                    None => return Ended::Closed,
                },
                _ = tick.tick() => pending = self.link.tick(Instant::now()),
            }
        }
    }

    fn own(&self, kind: Kind) -> Message {
        Message {
            node: self.keys.node().to_owned(),
            kind,
            frame: bytes::Bytes::new(),
        }
    }

    /// Publishes a batch: one presence look-up per user, then every message, in order.
    async fn publish(&mut self, batch: Vec<Message>) -> Vec<Action<Message>> {
        let mut users: Vec<&crate::domain::UserId> =
            batch.iter().filter_map(Message::user).collect();
        users.sort();
        users.dedup();
        let lookups = users.iter().map(|u| self.presence.nodes_of(u));
        let found = futures_util::future::join_all(lookups).await;
        let mut routes = std::collections::HashMap::new();
        for (user, nodes) in users.iter().zip(found) {
            match nodes {
                Ok(nodes) => {
                    routes.insert((*user).clone(), nodes);
                }
                Err(error) => {
                    tracing::debug!(error = ?error, "presence look-up failed");
                    let mut actions = Vec::new();
                    let mut rest = batch.into_iter().rev();
                    for m in rest.by_ref() {
                        actions = self.link.publish_failed(m);
                    }
                    return actions;
                }
            }
        }
        // One publish per node, carrying its messages in order (one alone as itself, several
        // as a batch); broadcasts and resyncs each on the broadcast channel.
        let encoded: Vec<Vec<u8>> = batch.iter().map(Message::encode).collect();
        let mut per_node: Vec<(&str, Vec<&[u8]>)> = Vec::new();
        let mut sends = Vec::new();
        let mut count = 0u64;
        for (m, payload) in batch.iter().zip(&encoded) {
            match m.user() {
                Some(user) => {
                    for node in routes.get(user).into_iter().flatten() {
                        count += 1;
                        match per_node.iter_mut().find(|(n, _)| n == node) {
                            Some((_, payloads)) => payloads.push(payload),
                            None => per_node.push((node, vec![payload])),
                        }
                    }
                }
                None => {
                    count += 1;
                    sends.push(self.server.publish(&self.keys.broadcast_channel(), payload));
                }
            }
        }
        // A batch carries at most PUBLISH_BATCH messages: a receiving node reads a bounded
        // number from one publish, and after a reconnect this batch holds every message that
        // waited (up to WAITING_CAPACITY).
        for (node, payloads) in per_node {
            let channel = self.keys.node_channel(node);
            for chunk in payloads.chunks(PUBLISH_BATCH) {
                sends.push(match chunk {
                    [one] => self.server.publish(&channel, one),
                    many => self.server.publish(
                        &channel,
                        &super::message::encode_batch(self.keys.node(), many),
                    ),
                });
            }
        }
        let publishes = sends.len() as u64;
        let results = futures_util::future::join_all(sends.iter().map(|cmd| {
            let mut conn = self.publisher.clone();
            async move { cmd.exec_async(&mut conn).await }
        }))
        .await;
        if let Some(error) = results.into_iter().find_map(Result::err) {
            tracing::debug!(error = ?error, "publish failed");
            // Published again after the reconnect: receivers drop what they already have.
            let mut actions = Vec::new();
            for m in batch.into_iter().rev() {
                actions = self.link.publish_failed(m);
            }
            return actions;
        }
        Metrics::add(&self.metrics.cluster.bridge_messages_out, count);
        Metrics::add(&self.metrics.cluster.bridge_publishes, publishes);
        Vec::new()
    }

    /// A message from Redis.
    fn received(&mut self, info: PushInfo) {
        if !matches!(info.kind, PushKind::Message | PushKind::SMessage) {
            return;
        }
        let Some(Value::BulkString(raw)) = info.data.get(1) else {
            return;
        };
        let Some(messages) = super::message::decode_any(raw) else {
            if super::message::is_ours(raw) {
                // It may have carried events for this node's sessions; a later event of the
                // same user would show the gap, but a user's last one has none after it.
                tracing::warn!(
                    "a message from another node could not be read; every session catches up"
                );
                self.hubs.resync_all();
            } else {
                tracing::debug!("ignoring a message not in Belay's format");
            }
            return;
        };
        for message in messages {
            self.handle(message);
        }
    }

    fn handle(&mut self, message: Message) {
        if message.node == self.keys.node() {
            if let Kind::Probe { seq } = message.kind {
                self.link.probe_returned(seq);
            }
            return;
        }
        Metrics::add(&self.metrics.cluster.bridge_messages_in, 1);
        let target = match message.kind {
            Kind::Event { user, cursor, .. } => Target::User {
                user,
                cursor: Some(cursor),
            },
            Kind::Unread { user } => Target::User { user, cursor: None },
            Kind::Broadcast => Target::All,
            Kind::Resync => {
                self.hubs.resync_all();
                return;
            }
            Kind::Probe { .. } => return,
        };
        self.hubs.publish(Delivery {
            target,
            frame: message.frame,
        });
    }
}

/// `wait` give or take half, so that nodes that lost Redis together do not return together.
fn jitter(wait: Duration) -> Duration {
    let factor = rand::random_range(0.5..1.5);
    wait.mul_f64(factor)
}
