//! Pairing pool: open queues of tickets, paired as soon as two are compatible, closest rating
//! first.
//!
//! Two tickets are compatible when they are in the same queue, belong to different users and
//! their rating gap fits the window of each of them at that moment ([`Policy::window`]). A
//! joining ticket is paired at once with the compatible ticket of the closest rating (ties: the
//! one that has waited longest). Windows only widen, so every waiting ticket has a *wake-up*
//! time: a lower bound on when it could first be compatible with any ticket now in its queue,
//! computed from its neighbours by rating. `tick` revisits only the tickets whose wake-up has
//! come, so a quiet pool costs nothing and [`Pool::next_tick_at`] tells the actor how long it
//! may sleep. Pure and deterministic: no clock reads, no randomness, ordered maps.

use std::cmp::{Ordering, Reverse};
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::ops::Bound::{Excluded, Unbounded};

use super::Millis;
use super::policy::{ArrivalRates, Policy};
use crate::domain::{Discipline, Scope, UserId};

/// Stale wake-ups (of tickets that left or were paired) kept at most, beyond two per ticket,
/// before the heap is rebuilt from the live tickets.
const STALE_WAKE_SLACK: usize = 1024;

/// One open queue: a discipline, optionally limited to a gym or region.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct QueueKey {
    pub discipline: Discipline,
    pub scope: Option<Scope>,
}

// By hand rather than derived: `Discipline` does not implement `Ord`.
impl Ord for QueueKey {
    fn cmp(&self, other: &Self) -> Ordering {
        discipline_rank(self.discipline)
            .cmp(&discipline_rank(other.discipline))
            .then_with(|| self.scope.cmp(&other.scope))
    }
}

impl PartialOrd for QueueKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

fn discipline_rank(discipline: Discipline) -> u8 {
    match discipline {
        Discipline::Boulder => 0,
        Discipline::Lead => 1,
        Discipline::Speed => 2,
    }
}

/// A player waiting for an opponent. A non-finite rating is kept but never pairs.
#[derive(Debug, Clone, PartialEq)]
pub struct Ticket {
    pub user: UserId,
    pub rating: f64,
    /// When the player first queued; a requeued player keeps their original time.
    pub queued_at: Millis,
}

/// Two tickets taken out of the pool to play each other.
#[derive(Debug, Clone, PartialEq)]
pub struct Pairing {
    pub queue: QueueKey,
    /// The ticket that has waited longer (on equal queue times, the one that joined first).
    pub a: Ticket,
    pub b: Ticket,
}

/// Why a join was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum JoinError {
    /// The user already holds a ticket in some queue of the pool.
    #[error("the user is already queued")]
    AlreadyQueued,
}

/// A rating ordered by `f64::total_cmp`, so it can key a map.
#[derive(Debug, Clone, Copy)]
struct RatingKey(f64);

impl PartialEq for RatingKey {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for RatingKey {}

impl Ord for RatingKey {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.total_cmp(&other.0)
    }
}

impl PartialOrd for RatingKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Where a ticket sits in its queue: by rating, then by join order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Slot {
    rating: RatingKey,
    seq: u64,
}

#[derive(Debug, Clone)]
struct Waiting {
    ticket: Ticket,
    /// How long this ticket keeps the initial window, decided when it joined.
    hold: Millis,
    /// Its current wake-up; heap entries with another time are stale.
    wake: Option<Millis>,
}

#[derive(Debug, Clone)]
struct Queue {
    key: QueueKey,
    tickets: BTreeMap<Slot, Waiting>,
    arrivals: ArrivalRates,
}

/// A scheduled revisit of one ticket; ordered by time, then join order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Wake {
    at: Millis,
    seq: u64,
    queue: usize,
    rating: RatingKey,
}

/// All open queues of one matchmaker. Cloning gives an independent pool with the same state.
#[derive(Debug, Clone)]
pub struct Pool {
    policy: Policy,
    queue_ids: BTreeMap<QueueKey, usize>,
    queues: Vec<Queue>,
    // Looked up by key only, never iterated: a hash map keeps the pool deterministic.
    users: HashMap<UserId, (usize, Slot)>,
    wakes: BinaryHeap<Reverse<Wake>>,
    next_seq: u64,
}

impl Pool {
    pub fn new(policy: Policy) -> Pool {
        Pool {
            policy,
            queue_ids: BTreeMap::new(),
            queues: Vec::new(),
            users: HashMap::new(),
            wakes: BinaryHeap::new(),
            next_seq: 0,
        }
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Adds a ticket and pairs it at once with the compatible waiting ticket of the closest
    /// rating, if any (ties: the one that has waited longest).
    /// A user may hold one ticket in the whole pool (any queue): a second join is AlreadyQueued.
    /// `ticket.queued_at` may be earlier than `now` (a requeued player keeps their original
    /// queue time).
    pub fn join(
        &mut self,
        queue: QueueKey,
        ticket: Ticket,
        now: Millis,
    ) -> Result<Option<Pairing>, JoinError> {
        if self.users.contains_key(&ticket.user) {
            return Err(JoinError::AlreadyQueued);
        }
        let queue_id = self.queue_id(queue);
        let hold = self.hold_on_join(queue_id, ticket.rating, now);
        let q = &mut self.queues[queue_id];
        q.arrivals.record(&self.policy, ticket.rating, now);
        let seq = self.next_seq;
        self.next_seq += 1;
        let slot = Slot {
            rating: RatingKey(ticket.rating),
            seq,
        };
        let me = Me {
            slot,
            hold,
            queued_at: ticket.queued_at,
        };
        match scan(&self.policy, &q.tickets, me, now) {
            Scan::Partner(partner_slot) => {
                if let Some(partner) = q.tickets.remove(&partner_slot) {
                    self.users.remove(&partner.ticket.user);
                    // The partner joined earlier, so it goes first on equal queue times.
                    let (a, b) = if ticket.queued_at < partner.ticket.queued_at {
                        (ticket, partner.ticket)
                    } else {
                        (partner.ticket, ticket)
                    };
                    return Ok(Some(Pairing {
                        queue: q.key.clone(),
                        a,
                        b,
                    }));
                }
                // Unreachable: the scan only returns slots of the map. Queue the ticket.
                self.insert(queue_id, slot, ticket, hold, None, now);
            }
            Scan::Wait(wake) => self.insert(queue_id, slot, ticket, hold, wake, now),
        }
        Ok(None)
    }

    pub fn leave(&mut self, user: &UserId) -> Option<(QueueKey, Ticket)> {
        let (queue_id, slot) = self.users.remove(user)?;
        let q = &mut self.queues[queue_id];
        let waiting = q.tickets.remove(&slot)?;
        Some((q.key.clone(), waiting.ticket))
    }

    /// Pairs tickets that became compatible because windows widened since the last call: each
    /// ticket whose wake-up has come, in wake-up order, takes its closest compatible opponent.
    /// Afterwards no two tickets in the pool are compatible at `now`.
    pub fn tick(&mut self, now: Millis) -> Vec<Pairing> {
        let mut pairings = Vec::new();
        while let Some(&Reverse(wake)) = self.wakes.peek() {
            if wake.at > now {
                break;
            }
            self.wakes.pop();
            let slot = Slot {
                rating: wake.rating,
                seq: wake.seq,
            };
            let q = &mut self.queues[wake.queue];
            let Some(waiting) = q.tickets.get(&slot) else {
                continue;
            };
            if waiting.wake != Some(wake.at) {
                continue;
            }
            let me = Me {
                slot,
                hold: waiting.hold,
                queued_at: waiting.ticket.queued_at,
            };
            match scan(&self.policy, &q.tickets, me, now) {
                Scan::Partner(partner_slot) => {
                    let (Some(first), Some(second)) =
                        (q.tickets.remove(&slot), q.tickets.remove(&partner_slot))
                    else {
                        continue;
                    };
                    self.users.remove(&first.ticket.user);
                    self.users.remove(&second.ticket.user);
                    let first_is_a = (first.ticket.queued_at, slot.seq)
                        <= (second.ticket.queued_at, partner_slot.seq);
                    let (a, b) = if first_is_a {
                        (first.ticket, second.ticket)
                    } else {
                        (second.ticket, first.ticket)
                    };
                    pairings.push(Pairing {
                        queue: q.key.clone(),
                        a,
                        b,
                    });
                }
                Scan::Wait(at) => {
                    let at = at.map(|at| at.max(now.saturating_add(1)));
                    if let Some(waiting) = q.tickets.get_mut(&slot) {
                        waiting.wake = at;
                    }
                    if let Some(at) = at {
                        self.wakes.push(Reverse(Wake { at, ..wake }));
                    }
                }
            }
        }
        self.compact_wakes();
        pairings
    }

    pub fn ticket(&self, user: &UserId) -> Option<(&QueueKey, &Ticket)> {
        let (queue_id, slot) = self.users.get(user)?;
        let q = &self.queues[*queue_id];
        q.tickets.get(slot).map(|waiting| (&q.key, &waiting.ticket))
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// The earliest time at which a `tick` could pair something, or None when nothing can
    /// change until the next join. A lower bound: a tick at that time may find nothing to do
    /// (the ticket it was for has left, or its neighbour needs longer) and then schedules again.
    pub fn next_tick_at(&self, now: Millis) -> Option<Millis> {
        if self.is_empty() {
            return None;
        }
        self.wakes.peek().map(|Reverse(wake)| wake.at.max(now))
    }

    /// Every waiting ticket, by queue, then by rating, then by join order.
    pub fn iter(&self) -> impl Iterator<Item = (&QueueKey, &Ticket)> {
        self.queue_ids.values().flat_map(|&id| {
            let q = &self.queues[id];
            q.tickets
                .values()
                .map(move |waiting| (&q.key, &waiting.ticket))
        })
    }

    /// The rating gap a waiting user accepts at `now`.
    pub fn window(&self, user: &UserId, now: Millis) -> Option<f64> {
        let (queue_id, slot) = self.users.get(user)?;
        let waiting = self.queues[*queue_id].tickets.get(slot)?;
        Some(
            self.policy
                .window(waiting.hold, now.saturating_sub(waiting.ticket.queued_at)),
        )
    }

    /// The rating gap `ticket` would accept at `now` if it joined `queue` now (its hold depends
    /// on how often players near its rating have joined that queue).
    pub fn window_on_join(&self, queue: &QueueKey, ticket: &Ticket, now: Millis) -> f64 {
        let hold = match self.queue_ids.get(queue) {
            Some(&id) => self.hold_on_join(id, ticket.rating, now),
            None => self.policy.hold_for(0.0, 0.0),
        };
        self.policy
            .window(hold, now.saturating_sub(ticket.queued_at))
    }

    fn queue_id(&mut self, key: QueueKey) -> usize {
        if let Some(&id) = self.queue_ids.get(&key) {
            return id;
        }
        // Queues are kept when they empty: their arrival estimate outlives the tickets.
        let id = self.queues.len();
        self.queues.push(Queue {
            key: key.clone(),
            tickets: BTreeMap::new(),
            arrivals: ArrivalRates::default(),
        });
        self.queue_ids.insert(key, id);
        id
    }

    fn hold_on_join(&self, queue_id: usize, rating: f64, now: Millis) -> Millis {
        let (fair_per_sec, queue_per_sec) =
            self.queues[queue_id]
                .arrivals
                .per_sec(&self.policy, rating, self.policy.fair_gap, now);
        self.policy.hold_for(fair_per_sec, queue_per_sec)
    }

    fn insert(
        &mut self,
        queue_id: usize,
        slot: Slot,
        ticket: Ticket,
        hold: Millis,
        wake: Option<Millis>,
        now: Millis,
    ) {
        let wake = wake.map(|at| at.max(now.saturating_add(1)));
        self.users.insert(ticket.user.clone(), (queue_id, slot));
        self.queues[queue_id]
            .tickets
            .insert(slot, Waiting { ticket, hold, wake });
        if let Some(at) = wake {
            self.wakes.push(Reverse(Wake {
                at,
                seq: slot.seq,
                queue: queue_id,
                rating: slot.rating,
            }));
        }
    }

    /// Rebuilds the wake-up heap when stale entries outnumber live ones: tickets that leave
    /// or are paired leave their entry behind until its time comes.
    fn compact_wakes(&mut self) {
        if self.wakes.len() <= 2 * self.len() + STALE_WAKE_SLACK {
            return;
        }
        let live = self.queues.iter().enumerate().flat_map(|(queue, q)| {
            q.tickets.iter().filter_map(move |(slot, waiting)| {
                waiting.wake.map(|at| {
                    Reverse(Wake {
                        at,
                        seq: slot.seq,
                        queue,
                        rating: slot.rating,
                    })
                })
            })
        });
        self.wakes = live.collect();
    }
}

/// The ticket a scan looks for an opponent for.
#[derive(Debug, Clone, Copy)]
struct Me {
    slot: Slot,
    hold: Millis,
    queued_at: Millis,
}

enum Scan {
    /// The compatible ticket of the closest rating (ties: longest waiting, then joined first).
    Partner(Slot),
    /// None is compatible now; a lower bound on when one could be, if ever.
    Wait(Option<Millis>),
}

/// The best opponent found so far and the earliest wake-up seen, while scanning outwards.
struct Search {
    best: Option<(f64, Millis, Slot)>,
    wake: Option<Millis>,
}

/// Looks for `me`'s opponent among `tickets` (which may contain `me`) at `now`, walking out
/// from its rating on both sides no further than its own window.
fn scan(policy: &Policy, tickets: &BTreeMap<Slot, Waiting>, me: Me, now: Millis) -> Scan {
    let mut search = Search {
        best: None,
        wake: None,
    };
    let below = tickets.range(..me.slot).rev();
    let above = tickets.range((Excluded(me.slot), Unbounded));
    scan_side(policy, below, me, now, &mut search);
    scan_side(policy, above, me, now, &mut search);
    match search.best {
        Some((_, _, slot)) => Scan::Partner(slot),
        None => Scan::Wait(search.wake),
    }
}

fn scan_side<'a>(
    policy: &Policy,
    side: impl Iterator<Item = (&'a Slot, &'a Waiting)>,
    me: Me,
    now: Millis,
    search: &mut Search,
) {
    let rating = me.slot.rating.0;
    let my_window = policy.window(me.hold, now.saturating_sub(me.queued_at));
    for (slot, waiting) in side {
        let gap = (slot.rating.0 - rating).abs();
        // A NaN gap (non-finite rating) ends the walk too.
        if gap.is_nan() || gap > my_window {
            // Gaps only grow from here: the nearest one is when my own window could next reach
            // anyone on this side.
            if search.best.is_none()
                && let Some(wait) = policy.wait_for_gap(me.hold, gap)
            {
                earliest(&mut search.wake, me.queued_at.saturating_add(wait));
            }
            return;
        }
        if let Some((best_gap, _, _)) = search.best
            && gap > best_gap
        {
            return;
        }
        let their_queued_at = waiting.ticket.queued_at;
        let their_window = policy.window(waiting.hold, now.saturating_sub(their_queued_at));
        if gap <= their_window {
            let candidate = (gap, their_queued_at, *slot);
            let better = search
                .best
                .is_none_or(|(best_gap, best_queued_at, best_slot)| {
                    gap.total_cmp(&best_gap)
                        .then(their_queued_at.cmp(&best_queued_at))
                        .then(slot.seq.cmp(&best_slot.seq))
                        == Ordering::Less
                });
            if better {
                search.best = Some(candidate);
            }
        } else if search.best.is_none()
            && let Some(wait) = policy.wait_for_gap(waiting.hold, gap)
        {
            // My window already covers the gap: theirs decides when.
            earliest(&mut search.wake, their_queued_at.saturating_add(wait));
        }
    }
}

fn earliest(slot: &mut Option<Millis>, at: Millis) {
    *slot = Some(slot.map_or(at, |current| current.min(at)));
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;

    fn user(n: u32) -> UserId {
        UserId::parse(format!("u{n}")).unwrap()
    }

    fn boulder() -> QueueKey {
        QueueKey {
            discipline: Discipline::Boulder,
            scope: None,
        }
    }

    fn ticket(n: u32, rating: f64, queued_at: Millis) -> Ticket {
        Ticket {
            user: user(n),
            rating,
            queued_at,
        }
    }

    /// Fixed windows: 50 at first, +10 per second, at most 300; no density rule.
    fn linear() -> Policy {
        Policy::linear(50.0, 10.0, 300.0)
    }

    #[test]
    fn join_pairs_at_once_with_the_closest_compatible_rating() {
        let mut pool = Pool::new(linear());
        for (n, rating) in [(1, 1000.0), (2, 1200.0), (3, 1400.0)] {
            assert_eq!(pool.join(boulder(), ticket(n, rating, 0), 0), Ok(None));
        }

        let pairing = pool.join(boulder(), ticket(4, 1230.0, 0), 0).unwrap();

        let pairing = pairing.unwrap();
        assert_eq!((pairing.a.user, pairing.b.user), (user(2), user(4)));
        assert_eq!(pool.len(), 2);
        assert!(pool.ticket(&user(2)).is_none());
    }

    #[test]
    fn equal_gaps_go_to_the_ticket_that_waited_longest() {
        let mut pool = Pool::new(linear());
        pool.join(boulder(), ticket(1, 1540.0, 500), 500).unwrap();
        pool.join(boulder(), ticket(2, 1460.0, 100), 500).unwrap();

        let pairing = pool.join(boulder(), ticket(3, 1500.0, 500), 500).unwrap();

        assert_eq!(pairing.unwrap().a.user, user(2));
    }

    #[test]
    fn a_second_join_of_the_same_user_is_refused_in_any_queue() {
        let mut pool = Pool::new(linear());
        pool.join(boulder(), ticket(1, 1500.0, 0), 0).unwrap();
        let lead = QueueKey {
            discipline: Discipline::Lead,
            scope: Some(Scope::parse("gym-1").unwrap()),
        };

        let again = pool.join(lead, ticket(1, 900.0, 0), 0);

        assert_eq!(again, Err(JoinError::AlreadyQueued));
        assert_eq!(pool.len(), 1);
    }

    #[test]
    fn queues_do_not_mix() {
        let mut pool = Pool::new(linear());
        let lead = QueueKey {
            discipline: Discipline::Lead,
            scope: None,
        };
        pool.join(boulder(), ticket(1, 1500.0, 0), 0).unwrap();

        assert_eq!(pool.join(lead, ticket(2, 1500.0, 0), 0), Ok(None));
        assert!(pool.tick(3_600_000).is_empty());
    }

    #[test]
    fn tick_pairs_when_the_younger_window_has_widened_enough() {
        let mut pool = Pool::new(linear());
        pool.join(boulder(), ticket(1, 1500.0, 0), 0).unwrap();
        pool.join(boulder(), ticket(2, 1600.0, 2_000), 2_000)
            .unwrap();
        // Ticket 2 needs 5 s to reach a window of 100: it joined at 2 s.
        assert_eq!(pool.next_tick_at(2_000), Some(7_000));

        assert!(pool.tick(6_999).is_empty());
        let pairings = pool.tick(7_000);

        assert_eq!(pairings.len(), 1);
        assert_eq!(pairings[0].a.user, user(1));
        assert!(pool.is_empty());
        assert_eq!(pool.next_tick_at(7_000), None);
    }

    #[test]
    fn a_requeued_ticket_keeps_its_queue_time_and_its_wider_window() {
        let mut pool = Pool::new(linear());
        pool.join(boulder(), ticket(1, 1500.0, 60_000), 60_000)
            .unwrap();

        // Waited 20 s before the failed ready check: window 250, yet ticket 1's is only 50.
        let late = pool
            .join(boulder(), ticket(2, 1700.0, 40_000), 60_000)
            .unwrap();
        assert_eq!(late, None);
        let pairings = pool.tick(75_000);

        assert_eq!(pairings.len(), 1);
        assert_eq!(pairings[0].a, ticket(2, 1700.0, 40_000));
        assert_eq!(pairings[0].b, ticket(1, 1500.0, 60_000));
    }

    #[test]
    fn tickets_beyond_every_cap_wait_without_wake_ups() {
        let mut pool = Pool::new(linear());
        pool.join(boulder(), ticket(1, 1000.0, 0), 0).unwrap();
        pool.join(boulder(), ticket(2, 2000.0, 0), 0).unwrap();

        assert_eq!(pool.next_tick_at(0), None);
        assert!(pool.tick(i64::MAX / 2).is_empty());
        assert_eq!(pool.len(), 2);
    }

    #[test]
    fn leave_returns_the_ticket_and_frees_the_user() {
        let mut pool = Pool::new(linear());
        pool.join(boulder(), ticket(1, 1500.0, 0), 0).unwrap();

        let left = pool.leave(&user(1));

        assert_eq!(left, Some((boulder(), ticket(1, 1500.0, 0))));
        assert!(pool.is_empty());
        assert_eq!(pool.leave(&user(1)), None);
        assert_eq!(pool.join(boulder(), ticket(1, 1500.0, 5), 5), Ok(None));
    }

    #[test]
    fn non_finite_ratings_never_pair_and_never_panic() {
        let mut pool = Pool::new(Policy::default());
        for (n, rating) in [(1, f64::NAN), (2, f64::INFINITY), (3, f64::NEG_INFINITY)] {
            assert_eq!(pool.join(boulder(), ticket(n, rating, 0), 0), Ok(None));
        }
        assert_eq!(pool.join(boulder(), ticket(4, 1500.0, 0), 0), Ok(None));
        assert!(pool.tick(i64::MAX / 2).is_empty());
        assert_eq!(pool.len(), 4);
    }

    #[test]
    fn sparse_rating_bands_widen_sooner_than_dense_ones() {
        let mut pool = Pool::new(Policy::default());
        // Ten minutes of joins at 1500 only, each paired at once with the previous one.
        for n in 0..600 {
            pool.join(
                boulder(),
                ticket(n, 1500.0, n as Millis * 1000),
                n as Millis * 1000,
            )
            .unwrap();
        }
        let now = 600_000;
        let waited = pool.policy().hold_ms;

        let dense = pool.window_on_join(&boulder(), &ticket(9_000, 1510.0, now - waited), now);
        let sparse = pool.window_on_join(&boulder(), &ticket(9_001, 2500.0, now - waited), now);

        assert_eq!(dense, pool.policy().initial_window);
        assert!(sparse > dense, "sparse {sparse} dense {dense}");
    }

    /// One step of a random scenario; times are offsets added to the previous `now`.
    #[derive(Debug, Clone)]
    enum Op {
        Join {
            user: u32,
            queue: bool,
            rating: u16,
            waited_before: u16,
        },
        Leave {
            user: u32,
        },
        Tick,
    }

    fn op() -> impl Strategy<Value = (Op, u16)> {
        let op = prop_oneof![
            6 => (0..40u32, any::<bool>(), 1000..2000u16, prop_oneof![3 => Just(0u16), 1 => 0..30_000u16])
                .prop_map(|(user, queue, rating, waited_before)| Op::Join { user, queue, rating, waited_before }),
            1 => (0..40u32).prop_map(|user| Op::Leave { user }),
            3 => Just(Op::Tick),
        ];
        (op, 0..5_000u16)
    }

    fn policies() -> impl Strategy<Value = Policy> {
        prop_oneof![
            Just(Policy::default()),
            Just(linear()),
            Just(Policy::steps(20.0, 3_000, 250.0)),
            Just(Policy::linear(0.0, 1.0, 40.0)),
        ]
    }

    /// The queue of the model's ticket, its ticket and its join order.
    type Model = BTreeMap<UserId, (QueueKey, Ticket, u64)>;

    fn queue_of(second: bool) -> QueueKey {
        QueueKey {
            discipline: if second {
                Discipline::Speed
            } else {
                Discipline::Boulder
            },
            scope: None,
        }
    }

    /// The opponent a brute-force search would choose for `ticket` joining `queue` now.
    fn brute_force_partner(
        pool: &Pool,
        model: &Model,
        queue: &QueueKey,
        ticket: &Ticket,
        now: Millis,
    ) -> Option<UserId> {
        let mine = pool.window_on_join(queue, ticket, now);
        model
            .iter()
            .filter(|(_, (q, _, _))| q == queue)
            .filter_map(|(user, (_, other, seq))| {
                let gap = (other.rating - ticket.rating).abs();
                let theirs = pool.window(user, now).unwrap();
                (gap <= mine && gap <= theirs).then_some((gap, other.queued_at, *seq, user))
            })
            .min_by(|x, y| x.0.total_cmp(&y.0).then(x.1.cmp(&y.1)).then(x.2.cmp(&y.2)))
            .map(|(_, _, _, user)| user.clone())
    }

    /// Checks a pairing against the model (both were waiting, within both windows) and
    /// removes both from it.
    fn check_pairing(
        pool_before: &BTreeMap<UserId, f64>,
        model: &mut Model,
        pairing: &Pairing,
        joiner: Option<(&Ticket, f64)>,
        paired: &mut BTreeSet<UserId>,
    ) -> Result<(), TestCaseError> {
        let (a, b) = (&pairing.a, &pairing.b);
        prop_assert_ne!(&a.user, &b.user, "paired with themself");
        prop_assert!(a.queued_at <= b.queued_at, "a must have waited longer");
        let gap = (a.rating - b.rating).abs();
        for t in [a, b] {
            let window = match joiner {
                Some((joined, window)) if joined == t => window,
                _ => {
                    let Some(&window) = pool_before.get(&t.user) else {
                        return Err(TestCaseError::fail(format!("{} was not waiting", t.user)));
                    };
                    let (queue, stored, _) = model.remove(&t.user).unwrap();
                    prop_assert_eq!(&queue, &pairing.queue);
                    prop_assert_eq!(&stored, t, "tickets come back unchanged");
                    window
                }
            };
            prop_assert!(gap <= window, "gap {} beyond window {}", gap, window);
            prop_assert!(paired.insert(t.user.clone()) || joiner.is_some_and(|(j, _)| j == t));
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn random_joins_leaves_and_ticks_keep_every_pairing_rule(
            policy in policies(),
            ops in proptest::collection::vec(op(), 1..200),
        ) {
            let mut pool = Pool::new(policy);
            let mut model = Model::new();
            let mut now: Millis = 1_000_000;
            let mut seq = 0u64;
            // Users paired so far in this scenario, per join "generation" (a user may rejoin).
            let mut paired = BTreeSet::new();
            for (op, dt) in ops {
                now += Millis::from(dt);
                // Windows of everyone waiting, at `now`, before the call.
                let windows: BTreeMap<UserId, f64> = model
                    .keys()
                    .map(|u| (u.clone(), pool.window(u, now).unwrap()))
                    .collect();
                match op {
                    Op::Join { user: n, queue, rating, waited_before } => {
                        let queue = queue_of(queue);
                        let t = ticket(n, f64::from(rating), now - Millis::from(waited_before));
                        let expected = brute_force_partner(&pool, &model, &queue, &t, now);
                        let my_window = pool.window_on_join(&queue, &t, now);
                        let result = pool.join(queue.clone(), t.clone(), now);
                        if model.contains_key(&t.user) {
                            prop_assert_eq!(result, Err(JoinError::AlreadyQueued));
                            continue;
                        }
                        paired.remove(&t.user);
                        match result.unwrap() {
                            Some(pairing) => {
                                let other = if pairing.a == t { &pairing.b } else { &pairing.a };
                                prop_assert_eq!(Some(other.user.clone()), expected);
                                check_pairing(&windows, &mut model, &pairing, Some((&t, my_window)), &mut paired)?;
                            }
                            None => {
                                prop_assert_eq!(expected, None);
                                model.insert(t.user.clone(), (queue, t, seq));
                            }
                        }
                        seq += 1;
                    }
                    Op::Leave { user: n } => {
                        let left = pool.leave(&user(n));
                        let expected = model.remove(&user(n)).map(|(q, t, _)| (q, t));
                        prop_assert_eq!(left, expected);
                    }
                    Op::Tick => {
                        if let Some(next) = pool.next_tick_at(now) {
                            prop_assert!(next >= now);
                        }
                        for pairing in pool.tick(now) {
                            check_pairing(&windows, &mut model, &pairing, None, &mut paired)?;
                        }
                        // Nothing compatible is left waiting.
                        let waiting: Vec<_> = model.iter().collect();
                        for (i, (u, (q, t, _))) in waiting.iter().enumerate() {
                            for (v, (r, s, _)) in &waiting[i + 1..] {
                                let gap = (t.rating - s.rating).abs();
                                let compatible = q == r
                                    && gap <= pool.window(u, now).unwrap()
                                    && gap <= pool.window(v, now).unwrap();
                                prop_assert!(!compatible, "{} and {} left compatible", u, v);
                            }
                        }
                    }
                }
                prop_assert_eq!(pool.len(), model.len());
                for (u, (q, t, _)) in &model {
                    prop_assert_eq!(pool.ticket(u), Some((q, t)));
                }
            }
        }

        #[test]
        fn next_tick_at_never_sleeps_past_a_pairing(
            policy in policies(),
            joins in proptest::collection::vec((1000..2000u16, 0..20_000u16), 2..40),
        ) {
            let mut pool = Pool::new(policy);
            let mut now: Millis = 0;
            for (n, (rating, dt)) in (0u32..).zip(joins) {
                // Jump straight to the promised wake-up when it comes before the next join.
                let next_join = now + Millis::from(dt);
                while let Some(at) = pool.next_tick_at(now).filter(|&at| at < next_join) {
                    now = at;
                    pool.tick(now);
                }
                now = next_join;
                // Every wake-up before this join was honoured, so nothing is compatible yet.
                let before = pool.len();
                let waiting: Vec<_> = pool.iter().map(|(_, t)| t.clone()).collect();
                for (i, t) in waiting.iter().enumerate() {
                    for s in &waiting[i + 1..] {
                        let gap = (t.rating - s.rating).abs();
                        let compatible = gap <= pool.window(&t.user, now - 1).unwrap()
                            && gap <= pool.window(&s.user, now - 1).unwrap();
                        prop_assert!(!compatible, "{} and {} overslept", t.user, s.user);
                    }
                }
                prop_assert_eq!(pool.len(), before);
                pool.join(boulder(), ticket(n, f64::from(rating), now), now).unwrap();
            }
        }
    }
}
