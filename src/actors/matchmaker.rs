//! `MatchmakerActor`: owns the matchmaking [`Engine`] for this node and drives it: commands from
//! HTTP handlers, and a timer set to the engine's next deadline or widening window.
//!
//! Each accepted command changes the engine at once (so the next command sees it) and hands
//! its [`Step`] to the committer, a task that writes steps in the order they were made,
//! merging those waiting into one transaction. A handler answers its client only after its
//! step is committed, so a 2xx means the state and the events are stored.

use std::time::Duration;

use actix::prelude::*;
use anyhow::Context as _;
use chrono::Utc;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::cluster::commands::{Answer, Command};
use crate::domain::{Challenge, Discipline, Match, UserId};
use crate::matchmaking::Millis;
use crate::matchmaking::engine::{Engine, QueueSpot, Refusal, Step, Timing};
use crate::matchmaking::policy::Policy;
use crate::matchmaking::pool::{Pool, QueueKey};
use crate::metrics::Metrics;
use crate::notifier::Notifier;
use crate::store::{Change, Store};

/// Steps merged into one store transaction at most.
const MAX_STEPS_PER_COMMIT: usize = 512;
/// Commands waiting for the actor before senders wait to enqueue (a burst of joins queues up
/// rather than parking every HTTP handler).
const MAILBOX_CAPACITY: usize = 65_536;
/// Wait before retrying a failed reload from the store.
const RESYNC_RETRY: Duration = Duration::from_secs(1);
/// Shortest sleep between two ticks, so a deadline that keeps landing in the past cannot spin.
const MIN_TICK: Duration = Duration::from_millis(5);

/// Why a matchmaking command failed.
#[derive(Debug, thiserror::Error)]
pub enum MatchmakingError {
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error("storing the change failed: {0}")]
    Store(String),
    /// Cluster mode: the store refused this node's fencing number; it no longer leads.
    #[error("this node no longer runs the matchmaker")]
    Fenced,
}

type Reply<T> = Result<T, MatchmakingError>;

fn now_ms() -> Millis {
    Utc::now().timestamp_millis()
}

/// A step on its way to the store, with whoever waits for it.
struct Commit {
    step: Step,
    done: Option<oneshot::Sender<Result<(), Failed>>>,
}

/// Why a commit failed, as its waiters see it.
#[derive(Debug, Clone)]
enum Failed {
    Store(String),
    Fenced,
}

impl From<Failed> for MatchmakingError {
    fn from(failed: Failed) -> Self {
        match failed {
            Failed::Store(message) => MatchmakingError::Store(message),
            Failed::Fenced => MatchmakingError::Fenced,
        }
    }
}

/// Builds an engine from what the store holds: live matches, pending challenges, queue
/// tickets. The step pairs tickets that became compatible while the node was down.
pub async fn load_engine(
    store: &dyn Store,
    policy: Policy,
    timing: Timing,
) -> anyhow::Result<(Engine, Step)> {
    let matches = store.live_matches().await.context("reading live matches")?;
    let challenges = store
        .pending_challenges()
        .await
        .context("reading pending challenges")?;
    let tickets = store
        .queued_tickets()
        .await
        .context("reading queue tickets")?;
    let mut engine = Engine::new(Pool::new(policy), timing);
    let step = engine.restore(matches, challenges, tickets, now_ms());
    Ok((engine, step))
}

/// Writes steps in order; everything waiting when a write starts goes into the next one. A
/// failed write asks the actor to reload its engine from the store.
async fn committer(
    notifier: Notifier,
    mut steps: mpsc::UnboundedReceiver<Commit>,
    actor: Addr<MatchmakerActor>,
) {
    while let Some(first) = steps.recv().await {
        let mut group = vec![first];
        while group.len() < MAX_STEPS_PER_COMMIT {
            match steps.try_recv() {
                Ok(next) => group.push(next),
                Err(_) => break,
            }
        }
        let mut works = Vec::with_capacity(group.len());
        let mut waiting = Vec::with_capacity(group.len());
        for commit in group {
            works.push((commit.step.changes, commit.step.events));
            waiting.push(commit.done);
        }
        let result = notifier.apply(works).await.map(|_| ()).map_err(|e| {
            if crate::store::Fenced::is(&e) {
                Failed::Fenced
            } else {
                Failed::Store(format!("{e:#}"))
            }
        });
        match &result {
            Ok(()) => {}
            Err(Failed::Fenced) => {
                // A successor has written: this engine must not act again.
                tracing::warn!("the store refused this node's fencing number; stepping down");
                actor.do_send(StepDown);
            }
            Err(Failed::Store(error)) => {
                tracing::error!(%error, "committing matchmaking changes; reloading from the store");
                actor.do_send(Resync);
            }
        }
        for done in waiting.into_iter().flatten() {
            let _ = done.send(result.clone());
        }
    }
}

pub struct MatchmakerActor {
    engine: Engine,
    notifier: Notifier,
    commits: mpsc::UnboundedSender<Commit>,
    /// Taken by `started`, which hands it to the committer.
    steps: Option<mpsc::UnboundedReceiver<Commit>>,
    /// The pending timer and when it fires.
    timer: Option<(Millis, SpawnHandle)>,
    metrics: std::sync::Arc<Metrics>,
    /// Cluster mode: the lease's fencing number, carried by every transaction of this engine.
    fence: Option<i64>,
}

impl MatchmakerActor {
    /// `restored` is the step [`load_engine`] returned: it is committed first.
    pub fn new(
        engine: Engine,
        restored: Step,
        notifier: Notifier,
        metrics: std::sync::Arc<Metrics>,
    ) -> Self {
        Self::with_fence(engine, restored, notifier, metrics, None)
    }

    /// [`MatchmakerActor::new`] for the cluster's leader: every step carries `fence`.
    pub fn with_fence(
        engine: Engine,
        restored: Step,
        notifier: Notifier,
        metrics: std::sync::Arc<Metrics>,
        fence: Option<i64>,
    ) -> Self {
        let (commits, steps) = mpsc::unbounded_channel();
        let actor = MatchmakerActor {
            engine,
            notifier,
            commits,
            steps: Some(steps),
            timer: None,
            metrics,
            fence,
        };
        let restored = actor.fenced(restored, None);
        if !restored.is_empty() {
            let _ = actor.commits.send(Commit {
                step: restored,
                done: None,
            });
        }
        actor
    }

    /// In cluster mode, puts the fence first in `step`, with the stream id of the command it
    /// applies. A command that changed nothing still records its id.
    fn fenced(&self, mut step: Step, command: Option<String>) -> Step {
        if let Some(token) = self.fence
            && (!step.is_empty() || command.is_some())
        {
            step.changes.insert(0, Change::Fence { token, command });
        }
        step
    }

    /// Queues `step` for the store; the future resolves once it is committed.
    fn commit(&self, step: Step) -> impl Future<Output = Result<(), MatchmakingError>> + use<> {
        let step = self.fenced(step, None);
        self.commit_fenced(step)
    }

    /// [`MatchmakerActor::commit`] of a step that already carries its fence (if any).
    fn commit_fenced(
        &self,
        step: Step,
    ) -> impl Future<Output = Result<(), MatchmakingError>> + use<> {
        let (done, committed) = oneshot::channel();
        let sent = if step.is_empty() {
            let _ = done.send(Ok(()));
            Ok(())
        } else {
            self.commits.send(Commit {
                step,
                done: Some(done),
            })
        };
        async move {
            sent.map_err(|_| MatchmakingError::Store("the committer has stopped".into()))?;
            committed
                .await
                .map_err(|_| MatchmakingError::Store("the committer has stopped".into()))?
                .map_err(MatchmakingError::from)
        }
    }

    fn publish_gauges(&self) {
        let (matches, challenges) = self.engine.counts();
        let gauge = |g: &std::sync::atomic::AtomicI64, n: usize| {
            g.store(
                i64::try_from(n).unwrap_or(i64::MAX),
                std::sync::atomic::Ordering::Relaxed,
            );
        };
        gauge(&self.metrics.queue_tickets, self.engine.pool().len());
        gauge(&self.metrics.matches_live, matches);
        gauge(&self.metrics.challenges_pending, challenges);
    }

    /// Sets the timer to the engine's next wake-up if that is earlier than the one set.
    fn arm(&mut self, ctx: &mut Context<Self>) {
        self.publish_gauges();
        let now = now_ms();
        let Some(wake) = self.engine.next_wake(now) else {
            return;
        };
        if let Some((at, handle)) = self.timer {
            if at <= wake {
                return;
            }
            ctx.cancel_future(handle);
        }
        let delay = Duration::from_millis(u64::try_from(wake - now).unwrap_or(0)).max(MIN_TICK);
        let handle = ctx.run_later(delay, |act, ctx| {
            act.timer = None;
            let step = act.engine.tick(now_ms());
            act.count(&step);
            let step = act.fenced(step, None);
            if !step.is_empty() {
                let _ = act.commits.send(Commit { step, done: None });
            }
            act.arm(ctx);
        });
        self.timer = Some((wake, handle));
    }

    fn count(&self, step: &Step) {
        let found = step
            .events
            .iter()
            .filter(|e| matches!(e.event, crate::domain::Event::MatchFound { .. }))
            .count();
        Metrics::add(&self.metrics.matches_made, (found / 2) as u64);
    }

    /// Runs one command: on success the step is committed before the reply resolves.
    fn run<T: Send + 'static>(
        &mut self,
        ctx: &mut Context<Self>,
        outcome: Result<(T, Step), Refusal>,
    ) -> ResponseFuture<Reply<T>> {
        match outcome {
            Err(refusal) => Box::pin(async move { Err(refusal.into()) }),
            Ok((value, step)) => {
                self.count(&step);
                let committed = self.commit(step);
                self.arm(ctx);
                Box::pin(async move { committed.await.map(|()| value) })
            }
        }
    }
}

impl Actor for MatchmakerActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(MAILBOX_CAPACITY);
        if let Some(steps) = self.steps.take() {
            actix::spawn(committer(self.notifier.clone(), steps, ctx.address()));
        }
        self.arm(ctx);
    }
}

/// Where a climber stands: queue, match, challenges.
#[derive(Debug, Clone)]
pub struct Standing {
    pub queue: Option<QueueSpot>,
    /// The match holding them, else their latest match while it is still live.
    pub current: Option<Match>,
    /// Their latest match when it has ended, when the one answering read it already (a node in
    /// cluster mode reads the climber's standing from the store). With neither, `GET
    /// /v1/me/match` asks the store for their latest match: the engine forgets ended ones.
    pub ended: Option<Match>,
    pub incoming: Vec<Challenge>,
    pub outgoing: Vec<Challenge>,
}

impl MatchmakerActor {
    fn standing(&self, user: &UserId) -> Standing {
        // The match holding them, else their latest one while it is still live here (awaiting
        // the opponent's result). An ended one is left to the store.
        let current = self
            .engine
            .current_match(user)
            .or_else(|| {
                self.engine
                    .recent_match(user)
                    .and_then(|id| self.engine.live_match(id))
            })
            .cloned();
        let (incoming, outgoing) = self.engine.challenges_of(user);
        Standing {
            queue: self.engine.queue_spot(user),
            current,
            ended: None,
            incoming: incoming.into_iter().cloned().collect(),
            outgoing: outgoing.into_iter().cloned().collect(),
        }
    }
}

#[derive(Message)]
#[rtype(result = "Reply<Standing>")]
pub struct Join {
    pub user: UserId,
    pub queue: QueueKey,
    pub rating: f64,
}

impl Handler<Join> for MatchmakerActor {
    type Result = ResponseFuture<Reply<Standing>>;

    fn handle(&mut self, msg: Join, ctx: &mut Context<Self>) -> Self::Result {
        let outcome = self
            .engine
            .join(&msg.user, msg.queue, msg.rating, now_ms())
            .map(|step| (self.standing(&msg.user), step));
        self.run(ctx, outcome)
    }
}

#[derive(Message)]
#[rtype(result = "Reply<Standing>")]
pub struct Leave {
    pub user: UserId,
}

impl Handler<Leave> for MatchmakerActor {
    type Result = ResponseFuture<Reply<Standing>>;

    fn handle(&mut self, msg: Leave, ctx: &mut Context<Self>) -> Self::Result {
        let outcome = self
            .engine
            .leave(&msg.user)
            .map(|(_, step)| (self.standing(&msg.user), step));
        self.run(ctx, outcome)
    }
}

#[derive(Message)]
#[rtype(result = "Standing")]
pub struct GetStanding {
    pub user: UserId,
}

impl Handler<GetStanding> for MatchmakerActor {
    type Result = MessageResult<GetStanding>;

    fn handle(&mut self, msg: GetStanding, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.standing(&msg.user))
    }
}

/// A match that has not ended (None: ended or unknown; read the store).
#[derive(Message)]
#[rtype(result = "Option<Match>")]
pub struct GetLiveMatch {
    pub id: Uuid,
}

impl Handler<GetLiveMatch> for MatchmakerActor {
    type Result = MessageResult<GetLiveMatch>;

    fn handle(&mut self, msg: GetLiveMatch, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.engine.live_match(msg.id).cloned())
    }
}

/// A pending challenge (None: unknown, answered or expired).
#[derive(Message)]
#[rtype(result = "Option<Challenge>")]
pub struct GetChallenge {
    pub id: Uuid,
}

impl Handler<GetChallenge> for MatchmakerActor {
    type Result = MessageResult<GetChallenge>;

    fn handle(&mut self, msg: GetChallenge, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.engine.pending_challenge(msg.id).cloned())
    }
}

#[derive(Message)]
#[rtype(result = "Reply<Challenge>")]
pub struct SendChallenge {
    pub from: UserId,
    pub to: UserId,
    pub discipline: Discipline,
}

impl Handler<SendChallenge> for MatchmakerActor {
    type Result = ResponseFuture<Reply<Challenge>>;

    fn handle(&mut self, msg: SendChallenge, ctx: &mut Context<Self>) -> Self::Result {
        let outcome = self
            .engine
            .challenge(&msg.from, &msg.to, msg.discipline, now_ms());
        self.run(ctx, outcome)
    }
}

#[derive(Message)]
#[rtype(result = "Reply<Match>")]
pub struct Accept {
    pub id: Uuid,
    pub user: UserId,
    /// The challenger's rating, then the accepting climber's.
    pub ratings: (f64, f64),
}

impl Handler<Accept> for MatchmakerActor {
    type Result = ResponseFuture<Reply<Match>>;

    fn handle(&mut self, msg: Accept, ctx: &mut Context<Self>) -> Self::Result {
        let outcome = self.engine.accept(msg.id, &msg.user, msg.ratings, now_ms());
        self.run(ctx, outcome)
    }
}

#[derive(Message)]
#[rtype(result = "Reply<Challenge>")]
pub struct Decline {
    pub id: Uuid,
    pub user: UserId,
}

impl Handler<Decline> for MatchmakerActor {
    type Result = ResponseFuture<Reply<Challenge>>;

    fn handle(&mut self, msg: Decline, ctx: &mut Context<Self>) -> Self::Result {
        let outcome = self.engine.decline(msg.id, &msg.user, now_ms());
        self.run(ctx, outcome)
    }
}

/// What a player does to their match.
#[derive(Debug, Clone)]
pub enum MatchAction {
    Ready,
    Cancel,
    Report { winner: UserId },
}

#[derive(Message)]
#[rtype(result = "Reply<Match>")]
pub struct Act {
    pub id: Uuid,
    pub user: UserId,
    pub action: MatchAction,
}

impl Handler<Act> for MatchmakerActor {
    type Result = ResponseFuture<Reply<Match>>;

    fn handle(&mut self, msg: Act, ctx: &mut Context<Self>) -> Self::Result {
        let now = now_ms();
        let outcome = match &msg.action {
            MatchAction::Ready => self.engine.ready(msg.id, &msg.user, now),
            MatchAction::Cancel => self.engine.cancel(msg.id, &msg.user, now),
            MatchAction::Report { winner } => self.engine.report(msg.id, &msg.user, winner, now),
        };
        self.run(ctx, outcome)
    }
}

/// Sent by the committer after a failed write: the engine may hold state the store does not, so
/// it is rebuilt from the store once every step queued before it is written or has failed.
#[derive(Message)]
#[rtype(result = "()")]
struct Resync;

impl Handler<Resync> for MatchmakerActor {
    type Result = ();

    fn handle(&mut self, _: Resync, ctx: &mut Context<Self>) {
        let (done, flushed) = oneshot::channel();
        let _ = self.commits.send(Commit {
            step: Step::default(),
            done: Some(done),
        });
        let store = self.notifier.store();
        let policy = self.engine.pool().policy().clone();
        let timing = self.engine.timing();
        let reload = async move {
            let _ = flushed.await;
            load_engine(store.as_ref(), policy, timing).await
        };
        // `wait`: no command runs against the old engine while the new one loads.
        ctx.wait(
            reload
                .into_actor(self)
                .map(|loaded, act, ctx| match loaded {
                    Ok((engine, step)) => {
                        act.engine = engine;
                        let step = act.fenced(step, None);
                        if !step.is_empty() {
                            let _ = act.commits.send(Commit { step, done: None });
                        }
                        if let Some((_, handle)) = act.timer.take() {
                            ctx.cancel_future(handle);
                        }
                        act.arm(ctx);
                        tracing::info!("matchmaking state reloaded from the store");
                    }
                    Err(error) => {
                        tracing::error!(error = ?error, "reloading matchmaking state; retrying");
                        ctx.notify_later(Resync, RESYNC_RETRY);
                    }
                }),
        );
    }
}

/// Cluster mode: one command for the leader's engine, read from the stream with its stream id
/// (`command` None: the entry could not be read; its id is still recorded, so no leader meets
/// it again), or sent by the leader's own node. Runs the same engine calls as the local
/// messages; the answer resolves once the step (and the id) are committed.
#[derive(Message)]
#[rtype(result = "Answer")]
pub struct Apply {
    /// The stream id, recorded with the command's changes; None for the leader's own node's
    /// commands, which do not go through the stream.
    pub id: Option<String>,
    pub command: Option<Command>,
}

impl MatchmakerActor {
    fn execute(&mut self, command: Command, now: Millis) -> Result<(Answer, Step), Refusal> {
        let matched = |(m, step): (Match, Step)| (Answer::Match { m }, step);
        match command {
            Command::Join {
                user,
                discipline,
                scope,
                rating,
            } => {
                let queue = QueueKey { discipline, scope };
                let step = self.engine.join(&user, queue, rating, now)?;
                let standing = self.standing(&user).into();
                Ok((Answer::Standing { user, standing }, step))
            }
            Command::Leave { user } => {
                let (_, step) = self.engine.leave(&user)?;
                let standing = self.standing(&user).into();
                Ok((Answer::Standing { user, standing }, step))
            }
            Command::Challenge {
                from,
                to,
                discipline,
            } => {
                let (challenge, step) = self.engine.challenge(&from, &to, discipline, now)?;
                Ok((Answer::Challenge { challenge }, step))
            }
            Command::Accept { id, user, ratings } => {
                self.engine.accept(id, &user, ratings, now).map(matched)
            }
            Command::Decline { id, user } => {
                let (challenge, step) = self.engine.decline(id, &user, now)?;
                Ok((Answer::Challenge { challenge }, step))
            }
            Command::Ready { id, user } => self.engine.ready(id, &user, now).map(matched),
            Command::Cancel { id, user } => self.engine.cancel(id, &user, now).map(matched),
            Command::Report { id, user, winner } => {
                self.engine.report(id, &user, &winner, now).map(matched)
            }
        }
    }
}

impl Handler<Apply> for MatchmakerActor {
    type Result = ResponseFuture<Answer>;

    fn handle(&mut self, msg: Apply, ctx: &mut Context<Self>) -> Self::Result {
        let (answer, step) = match msg.command {
            None => (
                Answer::Failed {
                    message: "the command could not be read".into(),
                },
                Step::default(),
            ),
            Some(command) => match self.execute(command, now_ms()) {
                Ok(done) => done,
                Err(refusal) => (
                    Answer::Refused {
                        code: refusal.code().into(),
                    },
                    Step::default(),
                ),
            },
        };
        self.count(&step);
        let step = self.fenced(step, msg.id);
        let committed = self.commit_fenced(step);
        self.arm(ctx);
        Box::pin(async move {
            match committed.await {
                Ok(()) => answer,
                Err(MatchmakingError::Fenced) => Answer::Fenced,
                Err(error) => Answer::Failed {
                    message: error.to_string(),
                },
            }
        })
    }
}

/// The engine must stop: this node lost the lease, or the store refused its fencing number.
/// Its timers go with it; the committer ends once the last queued step is written.
#[derive(Message)]
#[rtype(result = "()")]
pub struct StepDown;

impl Handler<StepDown> for MatchmakerActor {
    type Result = ();

    fn handle(&mut self, _: StepDown, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}
