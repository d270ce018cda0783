//! Presence: which users have a live session, and on which node. [`Presence`] is what the rest
//! of Belay asks (the presence endpoint, later the push path: is this user online anywhere?);
//! [`LocalPresence`] answers it on a single node, [`RedisPresence`] across the cluster.
//!
//! In Redis each user has one hash, `{prefix:user:<id>}:sessions`: a field per node holding
//! `count:expires_at_ms:change`. A node rewrites its fields on a heartbeat, so a crashed node's
//! fields pass their expiry within `cluster.presence_ttl_secs` and count for nothing; scripts
//! drop them as they pass. Counting and claiming a session slot is one Lua script on the user's
//! hash, so the per-user cap holds across nodes. This node's own counts are the truth for its
//! fields: every write sets the whole count (never adds to it), so a lost write is corrected by
//! the next refresh, and carries the node's change number, so a late write never overwrites a
//! newer one. Part of "Delivery order" (docs/ARCHITECTURE.md): the bridge routes a user's
//! events to the nodes listed here, and a session's slot is written before it reads the store.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use futures_util::{StreamExt, TryStreamExt};
use redis::Script;

use super::conn::Conn;
use super::keys::Keys;
use crate::domain::UserId;
use crate::metrics::Metrics;

/// Sets this node's count of a user's sessions (dropping expired fields on the way) and returns
/// the total; with a cap (ARGV[3] > 0) refuses with -1, changing nothing, when the other nodes'
/// live sessions plus this node's new count would pass it. A write older (ARGV[5], the node's
/// change number) than the one this node's field holds changes nothing: the node's writes may
/// reach Redis in any order, the newest count stays (a claim overtaken by a newer write of its
/// own node is checked against the count that write holds, which includes it). A count of 0 is kept as a tombstone until
/// it expires, so an older write cannot bring the count back.
const SET_COUNT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local others = 0
local held = nil
local held_seq = 0
local entries = redis.call('HGETALL', KEYS[1])
for i = 1, #entries, 2 do
  local n, e, s = string.match(entries[i + 1], '^(%d+):(%d+):?(%d*)$')
  if n == nil or tonumber(e) <= now then
    redis.call('HDEL', KEYS[1], entries[i])
  elseif entries[i] ~= ARGV[1] then
    others = others + tonumber(n)
  else
    held = tonumber(n)
    held_seq = tonumber(s) or 0
  end
end
local cap = tonumber(ARGV[3])
if held ~= nil and held_seq > tonumber(ARGV[5]) then
  if cap > 0 and others + held > cap then
    return -1
  end
  return others + held
end
local mine = tonumber(ARGV[2])
if cap > 0 and others + mine > cap then
  return -1
end
redis.call('HSET', KEYS[1], ARGV[1], mine .. ':' .. (now + tonumber(ARGV[4])) .. ':' .. ARGV[5])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return others + mine
";

/// Writes this node's counts without a cap (the heartbeat, and the release writer): sets this
/// node's field in each user's hash of KEYS to the count of ARGV[3 + i] with a new expiry,
/// unless the field holds a newer change than ARGV[3]. No sum of the other nodes: only a claim
/// needs one. One call may carry several users (a standalone Redis; a Redis Cluster gets one
/// per call, their keys being in different slots).
const WRITE_COUNTS: &str = r"
local t = redis.call('TIME')
local expires = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[2])
local seq = tonumber(ARGV[3])
for i, key in ipairs(KEYS) do
  local held = redis.call('HGET', key, ARGV[1])
  local held_seq = 0
  if held then
    held_seq = tonumber(string.match(held, '^%d+:%d+:(%d+)$')) or 0
  end
  if held_seq <= seq then
    redis.call('HSET', key, ARGV[1], ARGV[3 + i] .. ':' .. expires .. ':' .. ARGV[3])
    redis.call('PEXPIRE', key, ARGV[2])
  end
end
return #KEYS
";

/// Users one [`WRITE_COUNTS`] call writes on a standalone Redis.
const COUNTS_PER_CALL: usize = 64;

/// The nodes holding a live session of the user, by Redis's clock: what `GET /v1/presence` and
/// the push path ask (routing reads the hash itself, see [`RedisPresence::nodes_of`]).
const LIVE_NODES: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local live = {}
local entries = redis.call('HGETALL', KEYS[1])
for i = 1, #entries, 2 do
  local n, e = string.match(entries[i + 1], '^(%d+):(%d+)')
  if n ~= nil and tonumber(n) > 0 and tonumber(e) > now then
    table.insert(live, entries[i])
  end
end
return live
";

/// Presence writes kept in flight while a node rewrites or clears all its entries. They share
/// the multiplexed connection with the bridge's publishes and probes, which would otherwise
/// queue behind one write per local user (16,667 at once ran past the connection's response
/// timeout on a loaded machine, and the allocator kept what they needed: about 45 MiB a node,
/// docs/BENCHMARKS.md); this way a publish or a probe waits behind at most this many.
const WRITES_IN_FLIGHT: usize = 64;
/// The first pause before a failed round of release writes is tried again; it doubles up to
/// [`RELEASE_RETRY_MAX`].
const RELEASE_RETRY_MIN: Duration = Duration::from_millis(100);
const RELEASE_RETRY_MAX: Duration = Duration::from_secs(2);

/// How far past its expiry, by a node's clock, a presence field still routes events (see
/// [`RedisPresence::nodes_of`]).
const ROUTE_SKEW_MS: i64 = 5_000;

/// Whether a presence field's value (`count:expires_at_ms[:change]`) holds sessions and expires
/// after `after` (milliseconds since the epoch).
fn routes(value: &str, after: i64) -> bool {
    let mut parts = value.split(':');
    let count = parts.next().and_then(|n| n.parse::<u64>().ok());
    let expires = parts.next().and_then(|e| e.parse::<i64>().ok());
    matches!((count, expires), (Some(n), Some(e)) if n > 0 && e > after)
}

/// Most ids one presence question may ask about.
pub const MAX_PRESENCE_IDS: usize = 100;

/// Whether users have a live session anywhere.
#[async_trait]
pub trait Presence: Send + Sync {
    /// For each of `users`, in order: online on some node.
    async fn online(&self, users: &[UserId]) -> anyhow::Result<Vec<bool>>;

    /// Whether `user` is online on any node (what the push path asks before sending).
    async fn is_online(&self, user: &UserId) -> anyhow::Result<bool> {
        Ok(self
            .online(std::slice::from_ref(user))
            .await?
            .first()
            .copied()
            .unwrap_or(false))
    }
}

/// A user's open sessions on this node, by user: shared with the node's session limiter.
pub type OpenSessions = Arc<Mutex<HashMap<UserId, usize>>>;

/// Presence on a single node: the sessions this process holds.
pub struct LocalPresence {
    open: OpenSessions,
}

impl LocalPresence {
    pub fn new(open: OpenSessions) -> Self {
        LocalPresence { open }
    }
}

#[async_trait]
impl Presence for LocalPresence {
    async fn online(&self, users: &[UserId]) -> anyhow::Result<Vec<bool>> {
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        Ok(users
            .iter()
            .map(|u| open.get(u).is_some_and(|&n| n > 0))
            .collect())
    }
}

/// The answer to a session's claim on a cluster-wide slot.
pub enum Claim {
    /// Holds the slot until dropped.
    Granted(PresenceSlot),
    /// The user already has the maximum open across the cluster.
    Refused,
}

/// This node's side of presence: the truth its Redis fields are written from.
struct Local {
    /// Sessions per user on this node.
    counts: HashMap<UserId, usize>,
    /// The change number: it grows with every change of a count, and each write carries the
    /// number it read with the count, so Redis keeps the newest count whatever order the writes
    /// arrive in. It starts from the clock (in microseconds) so a restarted node's writes are
    /// newer than its previous run's.
    seq: u64,
    /// Users whose count went down and is not written yet: the release writer's work.
    dirty: HashSet<UserId>,
    /// Whether the release writer is running.
    writing: bool,
}

impl Local {
    fn changed(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }
}

/// Presence kept in Redis for the whole cluster.
pub struct RedisPresence {
    conn: Conn,
    keys: Keys,
    max_sessions: usize,
    ttl: Duration,
    local: Mutex<Local>,
    set_count: Script,
    write_counts: Script,
    live_nodes: Script,
    metrics: Arc<Metrics>,
}

impl RedisPresence {
    pub fn new(
        conn: Conn,
        keys: Keys,
        max_sessions: usize,
        ttl: Duration,
        metrics: Arc<Metrics>,
    ) -> Self {
        RedisPresence {
            conn,
            keys,
            max_sessions,
            ttl,
            local: Mutex::new(Local {
                counts: HashMap::new(),
                seq: u64::try_from(
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap_or_default()
                        .as_micros(),
                )
                .unwrap_or(0),
                dirty: HashSet::new(),
                writing: false,
            }),
            set_count: Script::new(SET_COUNT),
            write_counts: Script::new(WRITE_COUNTS),
            live_nodes: Script::new(LIVE_NODES),
            metrics,
        }
    }

    fn ttl_ms(&self) -> u64 {
        u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX)
    }

    fn local(&self) -> std::sync::MutexGuard<'_, Local> {
        self.local.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes this node's count for `user` as of change `seq`; `cap` 0 means no check. Returns
    /// the total, or -1 when refused by the cap.
    async fn write(
        &self,
        user: &UserId,
        count: usize,
        cap: usize,
        seq: u64,
    ) -> anyhow::Result<i64> {
        let mut conn = self.conn.clone();
        Ok(self
            .set_count
            .key(self.keys.user_sessions(user))
            .arg(self.keys.node())
            .arg(count)
            .arg(cap)
            .arg(self.ttl_ms())
            .arg(seq)
            .invoke_async(&mut conn)
            .await?)
    }

    /// Writes these counts as of change `seq`, no cap ([`WRITE_COUNTS`]): several users per call
    /// on a standalone Redis, one on a Redis Cluster; [`WRITES_IN_FLIGHT`] calls at a time, the
    /// first error ends it.
    async fn write_all(&self, counts: &[(UserId, usize)], seq: u64) -> anyhow::Result<()> {
        let per_call = match self.conn {
            Conn::Cluster(_) => 1,
            _ => COUNTS_PER_CALL,
        };
        let calls: Vec<Vec<(UserId, usize)>> = counts.chunks(per_call).map(<[_]>::to_vec).collect();
        futures_util::stream::iter(calls)
            .map(|chunk| async move { self.write_chunk(chunk, seq).await })
            .buffer_unordered(WRITES_IN_FLIGHT)
            .try_for_each(|_| async { Ok(()) })
            .await
    }

    /// One [`WRITE_COUNTS`] call.
    async fn write_chunk(&self, chunk: Vec<(UserId, usize)>, seq: u64) -> anyhow::Result<i64> {
        let mut conn = self.conn.clone();
        let mut call = self.write_counts.prepare_invoke();
        for (user, _) in &chunk {
            call.key(self.keys.user_sessions(user));
        }
        call.arg(self.keys.node()).arg(self.ttl_ms()).arg(seq);
        for (_, n) in &chunk {
            call.arg(*n);
        }
        Ok(call.invoke_async(&mut conn).await?)
    }

    /// Claims a slot for a new session of `user`, counted across the cluster. While Redis does
    /// not answer, the node keeps serving its own users: the claim is granted (the node's own
    /// cap still holds) and the next refresh writes the count.
    pub async fn claim(self: &Arc<Self>, user: &UserId) -> Claim {
        let (count, seq) = {
            let mut local = self.local();
            let n = local.counts.entry(user.clone()).or_insert(0);
            *n += 1;
            let count = *n;
            (count, local.changed())
        };
        let slot = || PresenceSlot {
            presence: self.clone(),
            user: user.clone(),
        };
        match self.write(user, count, self.max_sessions, seq).await {
            Ok(-1) => {
                // Nothing was written; a refresh may have written the raised count meanwhile,
                // so the count that goes back is written too.
                self.released(user.clone());
                Claim::Refused
            }
            Ok(_) => {
                let mut conn = self.conn.clone();
                let indexed = redis::cmd("SADD")
                    .arg(self.keys.node_users(self.keys.node()))
                    .arg(user.as_str())
                    .exec_async(&mut conn)
                    .await;
                if let Err(error) = indexed {
                    tracing::debug!(error = ?error, "indexing a presence entry");
                }
                self.metrics.cluster.presence_entries.store(
                    len_i64(self.local().counts.len()),
                    std::sync::atomic::Ordering::Relaxed,
                );
                Claim::Granted(slot())
            }
            Err(error) => {
                tracing::debug!(error = ?error, "presence claim without Redis; granted locally");
                Claim::Granted(slot())
            }
        }
    }

    /// The nodes other than this one that hold a live session of `user`, for routing its
    /// events: a plain `HGETALL`, read here, at a fraction of a script's cost in Redis (one runs
    /// per user per published batch). Expiry is judged by this node's clock with
    /// [`ROUTE_SKEW_MS`] to spare, so a field still counts a little past its expiry: routing an
    /// event to a node that has gone costs a publish nobody hears, while missing a live one would
    /// leave its session behind until a gap shows.
    pub async fn nodes_of(&self, user: &UserId) -> anyhow::Result<Vec<String>> {
        let mut conn = self.conn.clone();
        let fields: Vec<(String, String)> = redis::cmd("HGETALL")
            .arg(self.keys.user_sessions(user))
            .query_async(&mut conn)
            .await?;
        let after = chrono::Utc::now().timestamp_millis() - ROUTE_SKEW_MS;
        Ok(fields
            .into_iter()
            .filter(|(node, value)| node != self.keys.node() && routes(value, after))
            .map(|(node, _)| node)
            .collect())
    }

    /// Rewrites every entry of this node (the heartbeat, and after Redis came back).
    pub async fn refresh(&self) -> anyhow::Result<()> {
        let (counts, seq) = {
            let local = self.local();
            let counts: Vec<(UserId, usize)> =
                local.counts.iter().map(|(u, n)| (u.clone(), *n)).collect();
            (counts, local.seq)
        };
        self.metrics
            .cluster
            .presence_entries
            .store(len_i64(counts.len()), std::sync::atomic::Ordering::Relaxed);
        self.write_all(&counts, seq).await?;
        if !counts.is_empty() {
            let index = self.keys.node_users(self.keys.node());
            let mut conn = self.conn.clone();
            redis::pipe()
                .cmd("SADD")
                .arg(&index)
                .arg(counts.iter().map(|(u, _)| u.as_str()).collect::<Vec<_>>())
                .ignore()
                .cmd("PEXPIRE")
                .arg(&index)
                .arg(self.ttl_ms())
                .ignore()
                .exec_async(&mut conn)
                .await?;
        }
        Ok(())
    }

    /// At boot: removes the entries a previous run of this node id left (a crash).
    pub async fn clear_own(&self) -> anyhow::Result<()> {
        let index = self.keys.node_users(self.keys.node());
        let mut conn = self.conn.clone();
        let users: Vec<String> = redis::cmd("SMEMBERS")
            .arg(&index)
            .query_async(&mut conn)
            .await
            .context("reading this node's presence index")?;
        // Deleted outright, whatever change number they carry: no session of this node id
        // lives before this point.
        futures_util::stream::iter(users.into_iter().filter_map(|u| UserId::parse(u).ok()))
            .map(|user| {
                let mut conn = self.conn.clone();
                let key = self.keys.user_sessions(&user);
                async move {
                    redis::cmd("HDEL")
                        .arg(key)
                        .arg(self.keys.node())
                        .exec_async(&mut conn)
                        .await
                }
            })
            .buffer_unordered(WRITES_IN_FLIGHT)
            .try_for_each(|()| async { Ok(()) })
            .await
            .context("clearing this node's presence entries")?;
        redis::cmd("DEL").arg(&index).exec_async(&mut conn).await?;
        Ok(())
    }

    /// A session of `user` ended (or its claim was refused): the count goes down at once, and
    /// the release writer writes it. However many sessions end at once (a node's clients all
    /// leave), one writer keeps at most [`WRITES_IN_FLIGHT`] writes going, a user's several
    /// releases become one write, and each write carries the count as it is when sent.
    fn released(self: &Arc<Self>, user: UserId) {
        let start = {
            let mut local = self.local();
            release_local(&mut local.counts, &user);
            local.changed();
            local.dirty.insert(user);
            !std::mem::replace(&mut local.writing, true)
        };
        if start {
            // Dropped on a worker thread inside its runtime; without one (a test tearing down)
            // the next release or the heartbeat writes the count instead.
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => {
                    runtime.spawn(self.clone().write_released());
                }
                Err(_) => self.local().writing = false,
            }
        }
    }

    /// The release writer: writes the counts of the users released since its last round, until
    /// none is left. A round that fails (Redis unreachable, or refusing writes) puts its users
    /// back and is tried again after a pause that doubles up to [`RELEASE_RETRY_MAX`]: the
    /// heartbeat rewrites only users who still have a session here, so a count that went to zero
    /// would otherwise keep counting on other nodes (routing, the session cap) until it expires.
    /// Each try writes the counts as they are then, so a retry never undoes a newer claim.
    async fn write_released(self: Arc<Self>) {
        let mut pause = RELEASE_RETRY_MIN;
        loop {
            let (counts, seq) = {
                let mut local = self.local();
                if local.dirty.is_empty() {
                    local.writing = false;
                    return;
                }
                let users = std::mem::take(&mut local.dirty);
                let counts: Vec<(UserId, usize)> = users
                    .into_iter()
                    .map(|u| {
                        let n = local.counts.get(&u).copied().unwrap_or(0);
                        (u, n)
                    })
                    .collect();
                (counts, local.seq)
            };
            match self.write_all(&counts, seq).await {
                Ok(()) => pause = RELEASE_RETRY_MIN,
                Err(error) => {
                    tracing::debug!(error = ?error, users = counts.len(), "releasing presence entries; trying again");
                    Metrics::add(&self.metrics.cluster.presence_release_retries, 1);
                    self.local()
                        .dirty
                        .extend(counts.into_iter().map(|(user, _)| user));
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(RELEASE_RETRY_MAX);
                }
            }
        }
    }
}

fn len_i64(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Takes one session of `user` off the local counts; returns what is left.
fn release_local(local: &mut HashMap<UserId, usize>, user: &UserId) -> usize {
    let Some(n) = local.get_mut(user) else {
        return 0;
    };
    *n = n.saturating_sub(1);
    let left = *n;
    if left == 0 {
        local.remove(user);
    }
    left
}

#[async_trait]
impl Presence for RedisPresence {
    async fn online(&self, users: &[UserId]) -> anyhow::Result<Vec<bool>> {
        let asks = users.iter().map(|user| async move {
            let mut conn = self.conn.clone();
            let nodes: Vec<String> = self
                .live_nodes
                .key(self.keys.user_sessions(user))
                .invoke_async(&mut conn)
                .await?;
            anyhow::Ok(!nodes.is_empty())
        });
        futures_util::future::join_all(asks)
            .await
            .into_iter()
            .collect()
    }
}

/// One session's place in the cluster-wide count; given back when dropped.
pub struct PresenceSlot {
    presence: Arc<RedisPresence>,
    user: UserId,
}

impl Drop for PresenceSlot {
    fn drop(&mut self) {
        self.presence.released(self.user.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::routes;

    #[test]
    fn a_field_routes_while_it_holds_sessions_and_has_not_expired() {
        assert!(routes("2:1000:17", 999));
        assert!(routes("1:1000", 999), "the format without a change number");
        assert!(!routes("2:1000:17", 1000), "expired");
        assert!(!routes("0:5000:17", 999), "a tombstone");
        for junk in ["", "x:1000", "1", "1:", "-1:1000", "1:y:3"] {
            assert!(!routes(junk, 0), "{junk:?}");
        }
    }
}
