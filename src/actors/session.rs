//! `SessionActor`: one per SSE connection. It registers its outbox with its worker's registry in
//! `started` and leaves in `stopping`, and it runs catch-ups: on connect (the `unread` summary,
//! then the `Last-Event-ID` replay), whenever its outbox sees a gap in the user's cursors, and
//! when the Redis bridge resubscribed (`Resync`). Part of "Delivery order" (docs/ARCHITECTURE.md).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::{
    Actor, ActorContext, ActorFutureExt, AsyncContext, Context, Handler, Message, Running,
    WrapFuture,
};

use super::hub::{Registry, SessionEntry};
use crate::domain::preferences::{LiveMask, Preferences};
use crate::domain::{Cursor, Notification, UnreadSummary, UserId};
use crate::metrics::Metrics;
use crate::sse::{Offer, Outbox, Release, frame};
use crate::store::Store;

/// How long a gap in a user's cursors may wait for the missing live frame before the session
/// reads the store instead.
const GAP_GRACE: Duration = Duration::from_millis(5);

/// A catch-up whose store reads fail (a pool exhausted by a reconnect storm, a database that
/// blinked) is tried again this many times, after a pause that doubles from
/// [`CATCH_UP_RETRY_FIRST`] with jitter (about 6 s in all), before the session is closed:
/// closing every session at once would bring the same storm back as reconnects.
const CATCH_UP_RETRIES: u32 = 5;
const CATCH_UP_RETRY_FIRST: Duration = Duration::from_millis(200);

/// Newest unread notifications sent in the `unread` summary on connect.
pub const UNREAD_LATEST: u32 = 10;

static NEXT_SESSION_ID: AtomicU64 = AtomicU64::new(1);

/// Read the store from the outbox's last cursor and release held frames.
#[derive(Message)]
#[rtype(result = "()")]
pub struct CatchUp;

/// Re-read the store from the outbox's last cursor, whatever is held: live frames from other
/// nodes may have been lost (the Redis bridge resubscribed).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Resync;

/// The connection is gone or the session was closed: stop now.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Stop;

pub struct SessionActor {
    id: u64,
    user: UserId,
    outbox: Rc<RefCell<Outbox>>,
    registry: Rc<RefCell<Registry>>,
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    /// `Last-Event-ID` of the request, used by the connect catch-up only.
    resume: Option<Cursor>,
    /// Whether the connect catch-up (summary and replay start) is done: until it is, a retry
    /// does it again from `resume`, since it changes the outbox only once all its reads worked.
    connected: bool,
    /// Catch-ups that failed in a row.
    catch_up_failures: u32,
    replay_page: u32,
    catch_up_running: bool,
    /// A `Resync` came while a catch-up ran: read again once it ends, since that read may have
    /// started before the events that were lost.
    resync_owed: bool,
    /// Kinds muted on the live stream; shared with this session's registry entry.
    muted: Rc<Cell<LiveMask>>,
    _permit: SessionPermit,
}

/// Everything a session needs from its worker and the app.
pub struct SessionSetup {
    pub user: UserId,
    pub outbox: Rc<RefCell<Outbox>>,
    pub registry: Rc<RefCell<Registry>>,
    pub store: Arc<dyn Store>,
    pub metrics: Arc<Metrics>,
    pub resume: Option<Cursor>,
    pub replay_page: u32,
    pub permit: SessionPermit,
}

impl SessionActor {
    pub fn new(setup: SessionSetup) -> Self {
        SessionActor {
            id: NEXT_SESSION_ID.fetch_add(1, Ordering::Relaxed),
            user: setup.user,
            outbox: setup.outbox,
            registry: setup.registry,
            store: setup.store,
            metrics: setup.metrics,
            resume: setup.resume,
            connected: false,
            catch_up_failures: 0,
            replay_page: setup.replay_page,
            catch_up_running: false,
            resync_owed: false,
            muted: Rc::default(),
            _permit: setup.permit,
        }
    }

    fn spawn_catch_up(&mut self, ctx: &mut Context<Self>) {
        self.catch_up_running = true;
        Metrics::add(&self.metrics.catch_ups, 1);
        let job = CatchUpJob {
            store: self.store.clone(),
            user: self.user.clone(),
            outbox: self.outbox.clone(),
            page: self.replay_page,
            muted: self.muted.clone(),
        };
        let (connect, resume) = (!self.connected, self.resume);
        let fut = async move {
            let mut connected = !connect;
            let result = async {
                if connect {
                    let more = job.connect(resume).await?;
                    connected = true;
                    if !more {
                        // The connect read reached the end of the store: only live frames can
                        // follow.
                        let mut outbox = job.outbox.borrow_mut();
                        if outbox.is_closed() {
                            return Ok(Release::Live);
                        }
                        return Ok(outbox.release_held());
                    }
                }
                job.run().await
            }
            .await;
            (connected, result)
        };
        ctx.spawn(fut.into_actor(self).map(|(connected, result), act, ctx| {
            act.catch_up_running = false;
            if connected && !act.connected {
                act.connected = true;
                act.resume = None;
            }
            match result {
                Ok(release) => {
                    act.catch_up_failures = 0;
                    match release {
                        Release::Live => act.run_owed_resync(ctx),
                        Release::Full => {
                            Metrics::add(&act.metrics.sessions_closed_slow, 1);
                            ctx.stop();
                        }
                        Release::ReadAgain => act.spawn_catch_up(ctx),
                    }
                }
                Err(error) if act.catch_up_failures < CATCH_UP_RETRIES => {
                    act.catch_up_failures += 1;
                    Metrics::add(&act.metrics.catch_up_retries, 1);
                    let wait = crate::store::jitter(
                        CATCH_UP_RETRY_FIRST * 2u32.pow(act.catch_up_failures - 1),
                    );
                    tracing::debug!(user = %act.user, error = ?error, ?wait, "catch-up failed; trying again");
                    // Held as running: a gap or a resync meanwhile waits for this retry.
                    act.catch_up_running = true;
                    ctx.run_later(wait, |act, ctx| act.spawn_catch_up(ctx));
                }
                Err(error) => {
                    Metrics::add(&act.metrics.sessions_closed_catch_up, 1);
                    tracing::warn!(user = %act.user, error = ?error, "catch-up kept failing; closing session");
                    ctx.stop();
                }
            }
        }));
    }
}

impl SessionActor {
    /// Starts the catch-up a `Resync` asked for, unless none is owed.
    fn run_owed_resync(&mut self, ctx: &mut Context<Self>) {
        if std::mem::take(&mut self.resync_owed) {
            self.outbox.borrow_mut().begin_catch_up();
            self.spawn_catch_up(ctx);
        }
    }
}

impl Actor for SessionActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // Subscribe first, then read the store: live frames that race the reads are held by the
        // outbox and released by cursor, so none is lost or repeated.
        self.registry.borrow_mut().register(
            self.user.clone(),
            SessionEntry {
                id: self.id,
                outbox: self.outbox.clone(),
                session: ctx.address(),
                muted: self.muted.clone(),
            },
        );
        Metrics::add(&self.metrics.sessions_opened, 1);
        self.spawn_catch_up(ctx);
    }

    fn stopping(&mut self, _: &mut Self::Context) -> Running {
        self.registry.borrow_mut().unregister(&self.user, self.id);
        self.outbox.borrow_mut().close();
        Running::Stop
    }
}

impl Handler<CatchUp> for SessionActor {
    type Result = ();

    fn handle(&mut self, _: CatchUp, ctx: &mut Self::Context) {
        // A running catch-up releases whatever is held when it ends.
        if self.catch_up_running {
            return;
        }
        // A gap is nearly always an event still in flight from another worker: give it a moment
        // to arrive before reading the store.
        self.catch_up_running = true;
        Metrics::add(&self.metrics.gaps, 1);
        ctx.run_later(GAP_GRACE, |act, ctx| {
            let release = act.outbox.borrow_mut().release_held();
            match release {
                Release::Live => {
                    act.catch_up_running = false;
                    act.run_owed_resync(ctx);
                }
                Release::ReadAgain => act.spawn_catch_up(ctx),
                Release::Full => {
                    Metrics::add(&act.metrics.sessions_closed_slow, 1);
                    ctx.stop();
                }
            }
        });
    }
}

impl Handler<Resync> for SessionActor {
    type Result = ();

    fn handle(&mut self, _: Resync, ctx: &mut Self::Context) {
        self.resync_owed = true;
        if !self.catch_up_running {
            self.run_owed_resync(ctx);
        }
    }
}

impl Handler<Stop> for SessionActor {
    type Result = ();

    fn handle(&mut self, _: Stop, ctx: &mut Self::Context) {
        ctx.stop();
    }
}

/// The store reads of one catch-up; holds no borrow of the outbox across an await.
struct CatchUpJob {
    store: Arc<dyn Store>,
    user: UserId,
    outbox: Rc<RefCell<Outbox>>,
    page: u32,
    muted: Rc<Cell<LiveMask>>,
}

impl CatchUpJob {
    /// On connect: the `unread` summary, then where the replay starts. A cursor beyond the
    /// user's head (a client of a reset database) restarts at the head. Returns whether the
    /// store must still be read for a replay: not when the stream starts at the head, since the
    /// head was read after the session subscribed, so every later event reaches it live; nor when
    /// the summary held every missed event and they were queued from it.
    async fn connect(&self, resume: Option<Cursor>) -> anyhow::Result<bool> {
        // The climber's live mutes apply from before the first frame: the summary's replay, the
        // paged replay and live frames alike. Changed preferences apply to streams opened after.
        let preferences = self.store.preferences(&self.user).await?;
        self.muted
            .set(Preferences::from_stored(preferences.as_deref()).live_mask());
        // Most connects find nothing unread and need only the count; otherwise one snapshot gives
        // the count, the head and the newest unread at or below it, all in agreement.
        let (mut count, mut head) = self.store.unread_as_of(&self.user).await?;
        let mut latest = None;
        if count > 0 {
            let snapshot = self.store.unread_summary(&self.user, UNREAD_LATEST).await?;
            (count, head) = (snapshot.count, snapshot.head);
            latest = (count > 0).then_some(snapshot.latest);
        }
        let start = match resume {
            Some(cursor) if cursor <= head => cursor,
            _ => head,
        };
        // A client that missed only unread events, all among the newest the summary carries
        // (a short disconnect), is replayed from the summary instead of reading them again.
        let replay = match latest.as_deref().and_then(|l| covered(l, start, head)) {
            Some(events) => events
                .into_iter()
                .map(|event| {
                    Ok((
                        event.cursor,
                        frame::user_event_for(event, self.muted.get())?,
                    ))
                })
                .collect::<anyhow::Result<Vec<_>>>()?,
            None => Vec::new(),
        };
        let summary = UnreadSummary {
            count,
            cursor: Some(head),
            latest,
        };
        // At the head the summary is the resume point (a stream that drops before its first
        // stored event must not come back without one); before a replay it must not be.
        let summary = if start == head {
            frame::unread_at_head(&summary, head)?
        } else {
            frame::unread(&summary)?
        };
        let mut outbox = self.outbox.borrow_mut();
        outbox.push_direct(summary);
        outbox.start_from(start);
        // With no room for all of them, the paged replay below waits for room instead.
        if replay.len() <= outbox.room() {
            for (cursor, event) in replay {
                outbox.push_replayed(cursor, event);
            }
        }
        Ok(outbox.last() < head)
    }

    /// Replays from the outbox's last cursor until the store has nothing newer, waiting for room
    /// in the queue between pages, then releases held frames.
    async fn run(&self) -> anyhow::Result<Release> {
        loop {
            futures_util::future::poll_fn(|cx| self.outbox.borrow_mut().poll_room(cx)).await;
            let (after, room) = {
                let outbox = self.outbox.borrow();
                if outbox.is_closed() {
                    return Ok(Release::Live);
                }
                (outbox.last(), outbox.room())
            };
            let limit = self
                .page
                .min(u32::try_from(room).unwrap_or(u32::MAX))
                .max(1);
            let events = self.store.events_after(&self.user, after, limit).await?;
            let complete = events.len() < limit as usize;
            let mut outbox = self.outbox.borrow_mut();
            for event in &events {
                let frame = frame::user_event_for(event, self.muted.get())?;
                match outbox.push_replayed(event.cursor, frame) {
                    Offer::Full => return Ok(Release::Full),
                    Offer::Closed => return Ok(Release::Live),
                    _ => {}
                }
            }
            if complete {
                match outbox.release_held() {
                    Release::ReadAgain => continue,
                    done => return Ok(done),
                }
            }
        }
    }
}

/// The events after `start` up to `head`, oldest first, when `latest` (newest first, every one at
/// or below `head`) holds all of them; `None` when one is missing (read, or moved by a collapse)
/// or there is nothing to replay.
fn covered(latest: &[Notification], start: Cursor, head: Cursor) -> Option<Vec<&Notification>> {
    let wanted = usize::try_from(head.0 - start.0).ok().filter(|&n| n > 0)?;
    let mut newer: Vec<&Notification> = latest.iter().take_while(|n| n.cursor > start).collect();
    if newer.len() != wanted || newer.iter().any(|n| n.cursor > head) {
        return None;
    }
    newer.reverse();
    Some(newer)
}

/// Caps open sessions per user on this node. Touched on connect and disconnect only.
pub struct SessionLimiter {
    max: usize,
    open: Arc<Mutex<HashMap<UserId, usize>>>,
}

/// One open session of a user; returns its slot when dropped.
pub struct SessionPermit {
    user: UserId,
    open: Arc<Mutex<HashMap<UserId, usize>>>,
    /// Another claim held for as long as the session (its cluster-wide slot).
    _also: Option<Box<dyn Send>>,
}

impl SessionLimiter {
    pub fn new(max: usize) -> Self {
        SessionLimiter {
            max,
            open: Arc::default(),
        }
    }

    /// A slot for `user`, or `None` when the user already has the maximum open.
    pub fn acquire(&self, user: &UserId) -> Option<SessionPermit> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(user.clone()).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(SessionPermit {
            user: user.clone(),
            open: self.open.clone(),
            _also: None,
        })
    }

    /// The open sessions per user, as the single-node presence reads them.
    pub fn open_sessions(&self) -> Arc<Mutex<HashMap<UserId, usize>>> {
        self.open.clone()
    }
}

impl SessionPermit {
    /// Holds `claim` (dropped with the permit) as well.
    pub fn also_holding(mut self, claim: impl Send + 'static) -> Self {
        self._also = Some(Box::new(claim));
        self
    }
}

impl Drop for SessionPermit {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.user) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.user);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unread_at(cursor: i64) -> Notification {
        Notification {
            id: uuid::Uuid::now_v7(),
            cursor: Cursor(cursor),
            event: crate::domain::Event::PostLiked(crate::domain::PostLiked::new(
                crate::domain::PostId::parse(format!("p{cursor}")).unwrap(),
                UserId::parse("bob").unwrap(),
            )),
            created_at: chrono::Utc::now(),
            updated_at: chrono::Utc::now(),
            read: false,
        }
    }

    fn cursors(events: Option<Vec<&Notification>>) -> Option<Vec<i64>> {
        events.map(|e| e.iter().map(|n| n.cursor.0).collect())
    }

    #[test]
    fn a_summary_covers_a_resume_only_when_it_holds_every_missed_cursor() {
        // Newest first, as the summary lists them.
        let latest: Vec<Notification> = [9, 8, 7, 6, 4].into_iter().map(unread_at).collect();
        assert_eq!(
            cursors(covered(&latest, Cursor(6), Cursor(9))),
            Some(vec![7, 8, 9]),
            "oldest first"
        );
        assert_eq!(
            cursors(covered(&latest, Cursor(5), Cursor(9))),
            Some(vec![6, 7, 8, 9])
        );
        assert_eq!(
            covered(&latest, Cursor(4), Cursor(9)),
            None,
            "5 is read or moved: read the store"
        );
        assert_eq!(
            covered(&latest, Cursor(2), Cursor(9)),
            None,
            "more missed than listed"
        );
        assert_eq!(covered(&latest, Cursor(9), Cursor(9)), None, "at the head");
        assert_eq!(covered(&[], Cursor(3), Cursor(4)), None);
    }

    #[test]
    fn the_limiter_caps_sessions_per_user_and_frees_slots_on_drop() {
        let limiter = SessionLimiter::new(2);
        let ana = UserId::parse("ana").unwrap();
        let bob = UserId::parse("bob").unwrap();
        let a1 = limiter.acquire(&ana).unwrap();
        let _a2 = limiter.acquire(&ana).unwrap();
        assert!(limiter.acquire(&ana).is_none());
        assert!(limiter.acquire(&bob).is_some());
        drop(a1);
        assert!(limiter.acquire(&ana).is_some());
    }
}
