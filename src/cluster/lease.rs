//! The matchmaker lease: which node runs the one matchmaker of a cluster.
//!
//! The protocol, kept by [`Lease`] (pure, time passed in) and driven by [`run`] (the Redis edge):
//! - A follower tries to take the lease every `ttl / 3`: one script runs `SET lease node NX PX
//!   ttl` and, when that succeeds, `INCR fence`, so every acquisition gets a fencing number larger
//!   than any before it.
//! - The holder renews every `ttl / 3` with a compare-and-set script (extend only while the value
//!   is still this node's) and releases with a compare-and-delete at shutdown.
//! - The holder counts its lease as valid until `sent + ttl - margin`, `sent` being when it
//!   *sent* the last successful acquire or renew: Redis set the expiry after that instant, so no
//!   other node can take the lease before the holder stops counting on it. A renewal that fails,
//!   is refused or does not answer leaves the deadline where it was; past it the node stops
//!   acting as leader at once, without waiting for Redis.
//! - The lease alone is not enough (a process paused past its deadline acts on a stale belief
//!   until it looks at the clock): every matchmaking transaction carries the fencing number and
//!   the database refuses numbers below the largest it has seen (`Change::Fence`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;
use tokio::sync::watch;

use super::matchmaker::Keys;
use crate::metrics::Metrics;

/// Milliseconds on the node's monotonic clock.
pub type Millis = i64;

/// Part of the lease's time to live the holder gives up, for clock rate differences between
/// this node and Redis (a tenth: 300 ms of a 3 s lease).
const DRIFT_DIVISOR: i64 = 10;

/// What the edge should do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// Try to take the lease.
    Acquire,
    /// Extend the lease held.
    Renew,
}

/// A leadership term: the fencing number and the instant (monotonic ms) the lease may have
/// passed to another node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Term {
    pub token: i64,
    pub valid_until: Millis,
}

/// One node's view of the lease.
#[derive(Debug, Clone)]
pub struct Lease {
    ttl: Millis,
    term: Option<Term>,
}

impl Lease {
    pub fn new(ttl: Millis) -> Lease {
        Lease { ttl, term: None }
    }

    /// How often the edge acts: acquire attempts and renewals.
    pub fn interval(&self) -> Millis {
        (self.ttl / 3).max(1)
    }

    fn valid_from(&self, sent: Millis) -> Millis {
        sent + self.ttl - self.ttl / DRIFT_DIVISOR
    }

    /// The term this node leads at `now`, if any.
    pub fn leading(&self, now: Millis) -> Option<Term> {
        self.term.filter(|t| now < t.valid_until)
    }

    /// What to ask Redis for at `now` (a term past its deadline is dropped first).
    pub fn due(&mut self, now: Millis) -> Due {
        self.expire(now);
        if self.term.is_some() {
            Due::Renew
        } else {
            Due::Acquire
        }
    }

    /// Drops the term once its deadline has passed; true when that happened now.
    pub fn expire(&mut self, now: Millis) -> bool {
        if self.term.is_some() && self.leading(now).is_none() {
            self.term = None;
            return true;
        }
        false
    }

    /// An acquire sent at `sent` succeeded with fencing number `token`.
    pub fn acquired(&mut self, sent: Millis, token: i64) {
        self.term = Some(Term {
            token,
            valid_until: self.valid_from(sent),
        });
    }

    /// A renewal sent at `sent` succeeded: the lease runs on from then.
    pub fn renewed(&mut self, sent: Millis) {
        let valid_until = self.valid_from(sent);
        if let Some(term) = &mut self.term {
            term.valid_until = term.valid_until.max(valid_until);
        }
    }

    /// Redis says the lease is not ours (it expired and another node may hold it), or we
    /// released it: stop leading at once.
    pub fn lost(&mut self) {
        self.term = None;
    }
}

/// `SET lease node NX PX ttl`, then `INCR fence`: the fencing number, or 0 when the lease is
/// held by another node. One script, so the number is taken exactly when the lease is.
const ACQUIRE: &str = r"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return redis.call('INCR', KEYS[2])
end
return 0";

/// Extends the lease only while it is still this node's.
const RENEW: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0";

/// Deletes the lease only while it is still this node's.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0";

/// `EVAL script keys node [ttl]`. Sent whole each time: the scripts are a few dozen bytes, and
/// `EVAL` needs no script cache that a restarted or failed-over Redis would have lost.
fn eval(script: &str, keys: &[&str], node: &str, ttl_ms: Option<i64>) -> redis::Cmd {
    let mut cmd = redis::cmd("EVAL");
    cmd.arg(script).arg(keys.len()).arg(keys).arg(node);
    if let Some(ttl) = ttl_ms {
        cmd.arg(ttl);
    }
    cmd
}

/// The monotonic clock the lease counts on, in ms since `origin`.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    origin: Instant,
}

impl Default for Clock {
    fn default() -> Self {
        Clock {
            origin: Instant::now(),
        }
    }
}

impl Clock {
    pub fn now(&self) -> Millis {
        i64::try_from(self.origin.elapsed().as_millis()).unwrap_or(i64::MAX)
    }
}

/// Where and as whom a node holds the lease.
pub struct Holder {
    pub redis: ConnectionManager,
    pub keys: Keys,
    pub node: String,
    pub ttl: Duration,
    pub clock: Clock,
}

/// Runs the lease for this node until `stop` turns true, then releases it. `leadership` carries
/// the term this node leads (None: following).
pub async fn run(
    holder: Holder,
    leadership: watch::Sender<Option<Term>>,
    mut stop: watch::Receiver<bool>,
    metrics: Arc<Metrics>,
) {
    let Holder {
        mut redis,
        keys,
        node,
        ttl,
        clock,
    } = holder;
    let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
    let mut lease = Lease::new(ttl_ms);
    let interval = Duration::from_millis(u64::try_from(lease.interval()).unwrap_or(1000));
    let publish = |lease: &Lease, now: Millis| {
        let term = lease.leading(now);
        leadership.send_if_modified(|held| {
            let changed = held.map(|t| t.token) != term.map(|t| t.token);
            *held = term;
            if changed {
                Metrics::add(&metrics.lease_changes, 1);
                metrics.lease_holder.store(
                    i64::from(term.is_some()),
                    std::sync::atomic::Ordering::Relaxed,
                );
                match term {
                    Some(t) => tracing::info!(token = t.token, "took the matchmaker lease"),
                    None => tracing::warn!("no longer the matchmaker leader"),
                }
            }
            // Deadline moves are read by `borrow`, without waking the receivers.
            changed
        });
    };
    while !*stop.borrow() {
        let sent = clock.now();
        let due = lease.due(sent);
        publish(&lease, sent);
        // An answer later than one interval is no answer: the deadline keeps running.
        let asked = match due {
            Due::Acquire => tokio::time::timeout(
                interval,
                eval(ACQUIRE, &[&keys.lease, &keys.fence], &node, Some(ttl_ms))
                    .query_async::<i64>(&mut redis),
            )
            .await
            .map(|r| r.map(|token| (token > 0).then_some(token))),
            Due::Renew => tokio::time::timeout(
                interval,
                eval(RENEW, &[&keys.lease], &node, Some(ttl_ms)).query_async::<i64>(&mut redis),
            )
            .await
            .map(|r| r.map(|n| (n > 0).then_some(0))),
        };
        match (due, asked) {
            (Due::Acquire, Ok(Ok(Some(token)))) => lease.acquired(sent, token),
            (Due::Acquire, Ok(Ok(None))) => {}
            (Due::Renew, Ok(Ok(Some(_)))) => lease.renewed(sent),
            (Due::Renew, Ok(Ok(None))) => lease.lost(),
            (_, Ok(Err(error))) => tracing::warn!(%error, "matchmaker lease: redis refused"),
            (_, Err(_)) => tracing::warn!("matchmaker lease: redis did not answer in time"),
        }
        let now = clock.now();
        publish(&lease, now);
        // Wake for the next renewal, or at the deadline if that comes first.
        let next = sent + lease.interval();
        let wake = lease.leading(now).map_or(next, |t| next.min(t.valid_until));
        let wait = Duration::from_millis(u64::try_from(wake - now).unwrap_or(0).max(1));
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => {}
        }
    }
    lease.lost();
    publish(&lease, clock.now());
    let release = eval(RELEASE, &[&keys.lease], &node, None);
    let released = release.query_async::<i64>(&mut redis);
    match tokio::time::timeout(interval, released).await {
        Ok(Ok(1)) => tracing::info!("released the matchmaker lease"),
        Ok(Ok(_)) => {}
        _ => tracing::warn!("could not release the matchmaker lease; it expires by itself"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;

    #[test]
    fn a_holder_stops_leading_before_redis_could_give_the_lease_away() {
        let mut lease = Lease::new(3000);
        assert_eq!(lease.due(0), Due::Acquire);
        lease.acquired(100, 7);
        assert_eq!(lease.leading(100).map(|t| t.token), Some(7));
        // Sent at 100: Redis expires the key no earlier than 3100; the holder stops at 2800.
        assert_eq!(lease.leading(2799).map(|t| t.token), Some(7));
        assert_eq!(lease.leading(2800), None);
        assert_eq!(
            lease.due(2800),
            Due::Acquire,
            "a term past its deadline is gone"
        );
    }

    #[test]
    fn a_renewal_runs_from_when_it_was_sent_and_a_refusal_ends_the_term() {
        let mut lease = Lease::new(3000);
        lease.acquired(0, 1);
        lease.renewed(1000);
        assert_eq!(lease.leading(3500).map(|t| t.valid_until), Some(3700));
        // A late answer to an older renewal never moves the deadline back.
        lease.renewed(500);
        assert_eq!(lease.leading(3500).map(|t| t.valid_until), Some(3700));
        lease.lost();
        assert_eq!(lease.leading(1001), None);
    }

    /// The lease as Redis holds it: a value with an expiry, and the fencing counter.
    #[derive(Default)]
    struct Redis {
        holder: Option<(usize, Millis)>,
        counter: i64,
    }

    impl Redis {
        fn live(&mut self, now: Millis) -> Option<usize> {
            if self.holder.is_some_and(|(_, until)| until <= now) {
                self.holder = None;
            }
            self.holder.map(|(n, _)| n)
        }

        fn apply(&mut self, node: usize, due: Due, now: Millis, ttl: Millis) -> Option<i64> {
            match (due, self.live(now)) {
                (Due::Acquire, None) => {
                    self.holder = Some((node, now + ttl));
                    self.counter += 1;
                    Some(self.counter)
                }
                (Due::Renew, Some(n)) if n == node => {
                    self.holder = Some((node, now + ttl));
                    Some(0)
                }
                _ => None,
            }
        }
    }

    #[derive(Debug, Clone)]
    enum Happening {
        /// The node wakes and sends what is due (unless a request is out).
        Wake(usize),
        /// Its request reaches Redis.
        Arrive { node: usize, due: Due, sent: Millis },
        /// Redis's answer reaches the node.
        Answer {
            node: usize,
            due: Due,
            sent: Millis,
            got: Option<i64>,
        },
    }

    /// One node's random schedule: gaps between wakes, delays on the way there and back (long
    /// ones stand for a paused process or a slow network), and lost answers.
    fn schedule() -> impl Strategy<Value = Vec<(u16, u16, u16, bool)>> {
        prop::collection::vec(
            (
                1u16..2000,
                prop_oneof![0u16..50, 0u16..8000],
                prop_oneof![0u16..50, 0u16..8000],
                prop::bool::weighted(0.1),
            ),
            1..60,
        )
    }

    proptest! {
        /// Whatever the delays, pauses and lost answers: at no instant do two nodes both count
        /// themselves leader, and each new term has a larger fencing number than every term
        /// before it.
        #[test]
        fn two_nodes_never_lead_at_once_and_fencing_numbers_only_grow(
            plans in prop::collection::vec(schedule(), 2..4),
        ) {
            const TTL: Millis = 3000;
            let mut redis = Redis::default();
            let mut nodes: Vec<Lease> = plans.iter().map(|_| Lease::new(TTL)).collect();
            let mut busy = vec![false; nodes.len()];
            let mut queue = BinaryHeap::new();
            let mut seq = 0u64;
            let mut push = |queue: &mut BinaryHeap<_>, at: Millis, h: Happening| {
                seq += 1;
                queue.push(Reverse((at, seq, HappeningBox(h))));
            };
            // Per node, the wake times and the delays of each request, in order.
            let mut delays: Vec<std::collections::VecDeque<(u16, u16, bool)>> = Vec::new();
            for (n, plan) in plans.iter().enumerate() {
                let mut at = 0;
                for &(gap, _, _, _) in plan {
                    at += Millis::from(gap);
                    push(&mut queue, at, Happening::Wake(n));
                }
                delays.push(plan.iter().map(|&(_, there, back, lost)| (there, back, lost)).collect());
            }
            let mut last_token = 0;
            let mut terms_seen = std::collections::HashSet::new();
            while let Some(Reverse((now, _, HappeningBox(h)))) = queue.pop() {
                match h {
                    Happening::Wake(n) => {
                        if busy[n] { continue; }
                        let due = nodes[n].due(now);
                        let (there, _, _) = delays[n].front().copied().unwrap_or((0, 0, false));
                        busy[n] = true;
                        push(&mut queue, now + Millis::from(there), Happening::Arrive { node: n, due, sent: now });
                    }
                    Happening::Arrive { node, due, sent } => {
                        let got = redis.apply(node, due, now, TTL);
                        let (_, back, lost) = delays[node].pop_front().unwrap_or((0, 0, false));
                        if lost {
                            busy[node] = false;
                        } else {
                            push(&mut queue, now + Millis::from(back), Happening::Answer { node, due, sent, got });
                        }
                    }
                    Happening::Answer { node, due, sent, got } => {
                        busy[node] = false;
                        match (due, got) {
                            (Due::Acquire, Some(token)) => nodes[node].acquired(sent, token),
                            (Due::Renew, Some(_)) => nodes[node].renewed(sent),
                            (Due::Renew, None) => nodes[node].lost(),
                            (Due::Acquire, None) => {}
                        }
                    }
                }
                let leaders: Vec<Term> = nodes.iter().filter_map(|l| l.leading(now)).collect();
                prop_assert!(leaders.len() <= 1, "at {now}: {leaders:?}");
                if let Some(term) = leaders.first()
                    && terms_seen.insert(term.token)
                {
                    prop_assert!(term.token > last_token, "term {} after {}", term.token, last_token);
                    last_token = term.token;
                }
            }
        }
    }

    /// Orders happenings by time and sequence only.
    #[derive(Debug, Clone)]
    struct HappeningBox(Happening);

    impl PartialEq for HappeningBox {
        fn eq(&self, _: &Self) -> bool {
            true
        }
    }
    impl Eq for HappeningBox {}
    impl PartialOrd for HappeningBox {
        fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
            Some(self.cmp(other))
        }
    }
    impl Ord for HappeningBox {
        fn cmp(&self, _: &Self) -> std::cmp::Ordering {
            std::cmp::Ordering::Equal
        }
    }
}
