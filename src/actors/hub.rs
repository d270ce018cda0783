//! `Hub`: one per actix-web worker. It owns the registry of that worker's sessions and fans
//! events out to them by pushing shared frame bytes onto each session's outbox, never awaiting a
//! socket. `HubSet` lists every worker's hub so an event published anywhere reaches them all;
//! fan-out uses every core with no lock per frame. Frames from other nodes (the Redis bridge)
//! enter through the same `HubSet::publish`. Part of "Delivery order" (docs/ARCHITECTURE.md).

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::task::{Context as TaskContext, Poll, Wake, Waker};
use std::time::Duration;

use actix::{Actor, ActorFutureExt, Addr, AsyncContext, Context, Handler, Message};
use bytes::Bytes;

use super::session::{CatchUp, Resync, SessionActor, Stop};
use crate::domain::preferences::LiveMask;
use crate::domain::{Cursor, UserId};
use crate::metrics::Metrics;
use crate::sse::{Offer, Outbox, frame};

/// Who receives a frame.
#[derive(Debug, Clone)]
pub enum Target {
    /// Every session of one user; `cursor` is set for stored events.
    User {
        user: UserId,
        cursor: Option<Cursor>,
    },
    /// Every session.
    All,
}

/// One encoded frame and its audience; shared by all hubs.
#[derive(Debug)]
pub struct Delivery {
    pub target: Target,
    pub frame: Bytes,
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct Deliver(pub Arc<Delivery>);

/// Every session of this worker re-reads the store from its cursor (the Redis bridge
/// resubscribed, so live frames from other nodes may have been lost).
#[derive(Message)]
#[rtype(result = "()")]
pub struct ResyncAll;

/// Ends every stream of this worker after its queued frames (graceful shutdown).
#[derive(Message)]
#[rtype(result = "()")]
pub struct DrainAll;

pub struct SessionEntry {
    pub id: u64,
    pub outbox: Rc<RefCell<Outbox>>,
    pub session: Addr<SessionActor>,
    /// Kinds its climber muted on the live stream, set by the session when it connects.
    pub muted: Rc<Cell<LiveMask>>,
}

/// The sessions of one worker, by user. Only touched from that worker's thread.
pub struct Registry {
    by_user: HashMap<UserId, Vec<SessionEntry>>,
    metrics: Arc<Metrics>,
}

impl Registry {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Registry {
            by_user: HashMap::new(),
            metrics,
        }
    }

    pub fn register(&mut self, user: UserId, entry: SessionEntry) {
        self.by_user.entry(user).or_default().push(entry);
        self.metrics.sessions_open.fetch_add(1, Ordering::Relaxed);
    }

    pub fn unregister(&mut self, user: &UserId, id: u64) {
        let Some(entries) = self.by_user.get_mut(user) else {
            return;
        };
        let before = entries.len();
        entries.retain(|e| e.id != id);
        if entries.len() < before {
            self.metrics.sessions_open.fetch_sub(1, Ordering::Relaxed);
        }
        if entries.is_empty() {
            self.by_user.remove(user);
        }
    }

    /// Offers one delivery to its sessions; returns how many sessions it touched.
    fn deliver(&mut self, delivery: &Delivery) -> usize {
        let mut touched = 0;
        let mut queued = 0;
        match &delivery.target {
            Target::User { user, cursor } => {
                if let Some(entries) = self.by_user.get(user) {
                    for entry in entries {
                        queued += self.offer(entry, *cursor, &delivery.frame);
                        touched += 1;
                    }
                }
            }
            Target::All => {
                for entry in self.by_user.values().flatten() {
                    queued += self.offer(entry, None, &delivery.frame);
                    touched += 1;
                }
            }
        }
        Metrics::add(&self.metrics.frames_queued, queued);
        touched
    }

    /// The per-session cost of a delivery: one push onto its outbox.
    fn offer(&self, entry: &SessionEntry, cursor: Option<Cursor>, frame: &Bytes) -> u64 {
        let mut outbox = entry.outbox.borrow_mut();
        let muted = entry.muted.get();
        let offer = match cursor {
            // A muted kind still moves the stream's cursor: only the frame's text is left out.
            Some(c)
                if !muted.is_empty() && frame::kind_of(frame).is_some_and(|k| muted.mutes(k)) =>
            {
                outbox.offer_user(c, frame::cursor_only(c))
            }
            Some(c) => outbox.offer_user(c, frame.clone()),
            None => outbox.offer(frame.clone()),
        };
        match offer {
            Offer::Queued => 1,
            Offer::NeedsCatchUp => {
                entry.session.do_send(CatchUp);
                0
            }
            Offer::Full => {
                // Too slow: free its queue now; the client resumes with Last-Event-ID.
                outbox.close();
                Metrics::add(&self.metrics.sessions_closed_slow, 1);
                entry.session.do_send(Stop);
                0
            }
            Offer::Held | Offer::Skipped | Offer::Closed => 0,
        }
    }

    fn heartbeat(&self, frame: &Bytes) {
        for entry in self.by_user.values().flatten() {
            entry.outbox.borrow_mut().heartbeat_tick(frame);
        }
    }

    /// Tells every session to catch up from the store; returns how many were told.
    pub fn resync_all(&self) -> usize {
        let mut told = 0;
        for entry in self.by_user.values().flatten() {
            entry.session.do_send(Resync);
            told += 1;
        }
        Metrics::add(&self.metrics.cluster.bridge_catch_ups, told as u64);
        told
    }

    fn drain_all(&self) {
        for entry in self.by_user.values().flatten() {
            entry.outbox.borrow_mut().drain_and_close();
        }
    }
}

/// Sessions a hub offers frames to before it yields the thread, so that the connections it
/// just filled get written before it goes on: a burst then reaches a reading client instead of
/// overflowing its queue. A broadcast to many sessions is always one turn, together with the
/// broadcasts waiting right behind it. A turn never offers more deliveries than half a
/// session's queue, so no session is handed more than that at once.
const FANOUT_BUDGET: usize = 32;

/// Broadcasts waiting one after another that a turn offers together. Published faster than they
/// are written out, they then reach each connection in one write instead of one write each.
const BROADCASTS_PER_TURN: usize = 16;

pub struct Hub {
    registry: Rc<RefCell<Registry>>,
    heartbeat_every: Duration,
    heartbeat: Bytes,
    /// Deliveries received and not yet fanned out.
    pending: VecDeque<Arc<Delivery>>,
    /// A fan-out turn is scheduled.
    scheduled: bool,
    /// The most deliveries one turn offers: half a session's queue, at most `FANOUT_BUDGET`.
    deliveries_per_turn: usize,
}

impl Hub {
    pub fn new(
        registry: Rc<RefCell<Registry>>,
        heartbeat_every: Duration,
        heartbeat: Bytes,
        queue_capacity: usize,
    ) -> Self {
        Hub {
            registry,
            heartbeat_every,
            heartbeat,
            pending: VecDeque::new(),
            scheduled: false,
            deliveries_per_turn: (queue_capacity / 2).clamp(1, FANOUT_BUDGET),
        }
    }

    /// Runs a fan-out turn after the worker's other ready tasks (the HTTP connections).
    fn schedule(&mut self, ctx: &mut Context<Self>) {
        self.scheduled = true;
        ctx.spawn(
            actix::fut::wrap_future(yield_to_other_tasks())
                .map(|(), hub: &mut Hub, ctx| hub.fan_out(ctx)),
        );
    }

    fn fan_out(&mut self, ctx: &mut Context<Self>) {
        let mut registry = self.registry.borrow_mut();
        let mut turn = Turn::new(self.deliveries_per_turn);
        while let Some(next) = self.pending.front() {
            if !turn.takes(next) {
                break;
            }
            let touched = registry.deliver(next);
            turn.took(next, touched);
            self.pending.pop_front();
        }
        drop(registry);
        if self.pending.is_empty() {
            self.scheduled = false;
        } else {
            self.schedule(ctx);
        }
    }
}

/// Completes once the worker has run its other ready tasks. `tokio::task::yield_now` alone is
/// not enough inside an actor: actix polls every future of the actor whenever a message arrives,
/// and a `yield_now` polled a second time completes, woken or not. Under a stream of `Deliver`
/// messages the hub would then run turn after turn before the connections it filled could write.
/// This one completes only after its own wake-up.
fn yield_to_other_tasks() -> impl Future<Output = ()> {
    let woken = Arc::new(AtomicBool::new(false));
    let mut yield_now = Box::pin(tokio::task::yield_now());
    let mut yielded = false;
    std::future::poll_fn(move |cx| {
        if !yielded {
            yielded = true;
            let waker = Waker::from(Arc::new(FlagWaker {
                woken: woken.clone(),
                task: cx.waker().clone(),
            }));
            // Pending: tokio wakes it once the worker's other ready tasks have run.
            let _ = yield_now
                .as_mut()
                .poll(&mut TaskContext::from_waker(&waker));
            return Poll::Pending;
        }
        if woken.load(Ordering::Acquire) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
}

/// Notes that the wake-up came before passing it on to the task.
struct FlagWaker {
    woken: Arc<AtomicBool>,
    task: Waker,
}

impl Wake for FlagWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake_by_ref();
    }
}

/// What one fan-out turn has offered so far.
#[derive(Debug)]
struct Turn {
    /// Deliveries offered.
    taken: usize,
    /// Sessions offered a frame, counting a delivery to no session as one.
    touched: usize,
    /// Broadcasts offered one after another at the end of the turn.
    broadcasts_in_a_row: usize,
    /// The most deliveries this turn offers.
    limit: usize,
}

impl Turn {
    fn new(limit: usize) -> Self {
        Turn {
            taken: 0,
            touched: 0,
            broadcasts_in_a_row: 0,
            limit,
        }
    }

    /// Whether this turn also offers `next`: under its limit, either while under the session
    /// budget or as one more broadcast after broadcasts, up to `BROADCASTS_PER_TURN` of them.
    fn takes(&self, next: &Delivery) -> bool {
        self.taken < self.limit
            && (self.touched < FANOUT_BUDGET
                || (matches!(next.target, Target::All)
                    && (1..BROADCASTS_PER_TURN).contains(&self.broadcasts_in_a_row)))
    }

    fn took(&mut self, delivery: &Delivery, touched: usize) {
        self.taken += 1;
        self.touched += touched.max(1);
        self.broadcasts_in_a_row = match delivery.target {
            Target::All => self.broadcasts_in_a_row + 1,
            Target::User { .. } => 0,
        };
    }
}

impl Actor for Hub {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // One tick per worker serves every session: no timer per connection. Two ticks per
        // interval, so a stream quiet since the previous tick gets its comment in time.
        ctx.run_interval(self.heartbeat_every / 2, |hub, _| {
            hub.registry.borrow().heartbeat(&hub.heartbeat);
        });
    }
}

impl Handler<Deliver> for Hub {
    type Result = ();

    fn handle(&mut self, msg: Deliver, ctx: &mut Self::Context) {
        // actix runs every queued message in one go; fan-out happens in turns instead.
        self.pending.push_back(msg.0);
        if !self.scheduled {
            self.schedule(ctx);
        }
    }
}

impl Handler<ResyncAll> for Hub {
    type Result = ();

    fn handle(&mut self, _: ResyncAll, _: &mut Self::Context) {
        self.registry.borrow().resync_all();
    }
}

impl Handler<DrainAll> for Hub {
    type Result = ();

    fn handle(&mut self, _: DrainAll, _: &mut Self::Context) {
        self.registry.borrow().drain_all();
    }
}

/// Every worker's hub. Locked only when a worker starts and once per published event.
#[derive(Default)]
pub struct HubSet {
    hubs: RwLock<Vec<Addr<Hub>>>,
}

impl HubSet {
    pub fn add(&self, hub: Addr<Hub>) {
        if let Ok(mut hubs) = self.hubs.write() {
            hubs.push(hub);
        }
    }

    pub fn publish(&self, delivery: Delivery) {
        let delivery = Arc::new(delivery);
        if let Ok(hubs) = self.hubs.read() {
            for hub in hubs.iter() {
                hub.do_send(Deliver(delivery.clone()));
            }
        }
    }

    /// Every session on every worker catches up from its cursor.
    pub fn resync_all(&self) {
        if let Ok(hubs) = self.hubs.read() {
            for hub in hubs.iter() {
                hub.do_send(ResyncAll);
            }
        }
    }

    pub fn drain_all(&self) {
        if let Ok(hubs) = self.hubs.read() {
            for hub in hubs.iter() {
                hub.do_send(DrainAll);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn broadcast() -> Delivery {
        Delivery {
            target: Target::All,
            frame: Bytes::from_static(b"data: b\n\n"),
        }
    }

    fn to_user(name: &str) -> Delivery {
        Delivery {
            target: Target::User {
                user: UserId::parse(name).unwrap(),
                cursor: None,
            },
            frame: Bytes::from_static(b"data: u\n\n"),
        }
    }

    /// How many of `pending` one turn offers, each delivery reaching `sessions(delivery)`, with
    /// the default queue of 256 frames.
    fn turn_length(pending: &[Delivery], sessions: impl Fn(&Delivery) -> usize) -> usize {
        turn_length_within(FANOUT_BUDGET, pending, sessions)
    }

    fn turn_length_within(
        limit: usize,
        pending: &[Delivery],
        sessions: impl Fn(&Delivery) -> usize,
    ) -> usize {
        let mut turn = Turn::new(limit);
        let mut taken = 0;
        for delivery in pending {
            if !turn.takes(delivery) {
                break;
            }
            turn.took(delivery, sessions(delivery));
            taken += 1;
        }
        taken
    }

    #[test]
    fn broadcasts_waiting_together_are_offered_in_one_turn_up_to_the_limit() {
        let many = |_: &Delivery| 5_000;
        let pending: Vec<_> = (0..40).map(|_| broadcast()).collect();
        assert_eq!(turn_length(&pending, many), BROADCASTS_PER_TURN);
        assert_eq!(turn_length(&pending[..3], many), 3);
    }

    #[test]
    fn a_turn_offers_deliveries_to_users_up_to_the_session_budget() {
        let pending: Vec<_> = (0..100).map(|i| to_user(&format!("u{i}"))).collect();
        assert_eq!(turn_length(&pending, |_| 1), FANOUT_BUDGET);
        // A delivery to a user with no session here still counts.
        assert_eq!(turn_length(&pending, |_| 0), FANOUT_BUDGET);
        assert_eq!(turn_length(&pending, |_| 2), FANOUT_BUDGET / 2);
    }

    #[test]
    fn a_broadcast_after_a_full_turn_of_user_deliveries_waits_for_the_next_turn() {
        let mut pending: Vec<_> = (0..FANOUT_BUDGET)
            .map(|i| to_user(&format!("u{i}")))
            .collect();
        pending.push(broadcast());
        assert_eq!(turn_length(&pending, |_| 1), FANOUT_BUDGET);
    }

    #[test]
    fn deliveries_to_users_end_a_run_of_broadcasts() {
        let many = |d: &Delivery| match d.target {
            Target::All => 5_000,
            Target::User { .. } => 1,
        };
        let pending = [broadcast(), broadcast(), to_user("ana"), broadcast()];
        assert_eq!(turn_length(&pending, many), 2);
        // Under the budget, a broadcast still joins the turn after a user's delivery.
        assert_eq!(turn_length(&pending[2..], many), 2);
    }

    #[test]
    fn a_turn_offers_no_more_deliveries_than_half_a_queue() {
        let users: Vec<_> = (0..100).map(|_| to_user("ana")).collect();
        assert_eq!(turn_length_within(2, &users, |_| 1), 2);
        let broadcasts: Vec<_> = (0..100).map(|_| broadcast()).collect();
        assert_eq!(turn_length_within(2, &broadcasts, |_| 5_000), 2);
        assert_eq!(turn_length_within(2, &broadcasts, |_| 1), 2);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_turn_waits_for_its_wake_up_not_for_an_early_poll() {
        let mut turn = std::pin::pin!(yield_to_other_tasks());
        let mut cx = TaskContext::from_waker(Waker::noop());
        assert!(turn.as_mut().poll(&mut cx).is_pending());
        // The actor is polled again for a message before the worker ran anything else.
        assert!(turn.as_mut().poll(&mut cx).is_pending());
        // The worker runs its other ready tasks; then the turn is woken.
        tokio::task::yield_now().await;
        assert!(turn.as_mut().poll(&mut cx).is_ready());
    }
}
