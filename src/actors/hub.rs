//! `Hub`: one per actix-web worker. It owns the registry of that worker's sessions and fans
//! events out to them by pushing shared frame bytes onto each session's outbox, never awaiting a
//! socket. `HubSet` lists every worker's hub so an event published anywhere reaches them all;
//! fan-out uses every core with no lock per frame.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use actix::{Actor, ActorFutureExt, Addr, AsyncContext, Context, Handler, Message};
use bytes::Bytes;

use super::session::{CatchUp, SessionActor, Stop};
use crate::domain::{Cursor, UserId};
use crate::metrics::Metrics;
use crate::sse::{Offer, Outbox};

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

/// Ends every stream of this worker after its queued frames (graceful shutdown).
#[derive(Message)]
#[rtype(result = "()")]
pub struct DrainAll;

pub struct SessionEntry {
    pub id: u64,
    pub outbox: Rc<RefCell<Outbox>>,
    pub session: Addr<SessionActor>,
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
        let offer = match cursor {
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

    fn drain_all(&self) {
        for entry in self.by_user.values().flatten() {
            entry.outbox.borrow_mut().drain_and_close();
        }
    }
}

/// Sessions a hub offers frames to before it yields the thread, so that the connections it
/// just filled get written before it goes on: a burst then reaches a reading client instead of
/// overflowing its queue. A broadcast to many sessions is always one turn.
const FANOUT_BUDGET: usize = 32;

pub struct Hub {
    registry: Rc<RefCell<Registry>>,
    heartbeat_every: Duration,
    heartbeat: Bytes,
    /// Deliveries received and not yet fanned out.
    pending: VecDeque<Arc<Delivery>>,
    /// A fan-out turn is scheduled.
    scheduled: bool,
}

impl Hub {
    pub fn new(
        registry: Rc<RefCell<Registry>>,
        heartbeat_every: Duration,
        heartbeat: Bytes,
    ) -> Self {
        Hub {
            registry,
            heartbeat_every,
            heartbeat,
            pending: VecDeque::new(),
            scheduled: false,
        }
    }

    /// Runs a fan-out turn after the worker's other ready tasks (the HTTP connections).
    fn schedule(&mut self, ctx: &mut Context<Self>) {
        self.scheduled = true;
        ctx.spawn(
            actix::fut::wrap_future(tokio::task::yield_now())
                .map(|(), hub: &mut Hub, ctx| hub.fan_out(ctx)),
        );
    }

    fn fan_out(&mut self, ctx: &mut Context<Self>) {
        let mut touched = 0;
        while touched < FANOUT_BUDGET {
            let Some(delivery) = self.pending.pop_front() else {
                break;
            };
            touched += self.registry.borrow_mut().deliver(&delivery).max(1);
        }
        if self.pending.is_empty() {
            self.scheduled = false;
        } else {
            self.schedule(ctx);
        }
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

    pub fn drain_all(&self) {
        if let Ok(hubs) = self.hubs.read() {
            for hub in hubs.iter() {
                hub.do_send(DrainAll);
            }
        }
    }
}
