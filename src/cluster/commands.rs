//! Matchmaking commands through a Redis Stream: any follower appends, the leader applies, in
//! stream order, exactly once.
//!
//! - A follower turns a command into a stream entry (`XADD`, JSON, with its node id and a
//!   request id) and waits up to `cluster.command_timeout_ms` for the answer on its reply
//!   channel. The leader's own node hands its commands to its matchmaker directly
//!   ([`LocalLead`]); they carry the term's fencing number like every other.
//! - The leader writes its term's fencing number, restores its engine from the database, reads
//!   the fence row's `last_command`, and reads the stream after it (`XREAD BLOCK`). Each entry
//!   goes through the `MatchmakerActor` ([`Apply`]), whose step commits with
//!   `Change::Fence { token, command }`: the command's effects and its stream id are stored in
//!   one transaction, so a new leader continues exactly after the last command applied (none
//!   twice, none lost). A refused or unreadable command commits the fence alone, so it is not
//!   met again either.
//! - The answers go back with `PUBLISH` on the requesting node's channel, those ready together
//!   in one message. Pub/Sub may lose it; the waiting request then times out (503) and
//!   `GET /v1/me/match`, read from the store, tells what happened.
//! - The stream is trimmed up to the last command the database has recorded, never further:
//!   an entry read but not yet committed must survive a leader's death.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::{Actor, Addr};
use anyhow::Context as _;
use futures_util::StreamExt;
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, watch};
use uuid::Uuid;

use super::lease::{Clock, Term};
use super::matchmaker::{CallError, Keys};
use crate::actors::matchmaker::{
    Apply, MatchAction, MatchmakerActor, MatchmakingError, Standing, StepDown, load_engine,
};
use crate::domain::{Challenge, Change, Discipline, Match, Scope, UserId};
use crate::matchmaking::engine::{QueueSpot, Refusal, Timing};
use crate::matchmaking::policy::Policy;
use crate::matchmaking::pool::{QueueKey, Ticket};
use crate::metrics::Metrics;
use crate::notifier::Notifier;
use crate::store::Store;

/// Entries one `XREAD` returns at most.
const READ_BATCH: usize = 512;
/// How long one `XREAD` blocks, so the leader looks at its lease at least this often.
const READ_BLOCK: Duration = Duration::from_millis(200);
/// How often the leader trims the stream up to the last command the database has recorded.
const TRIM_EVERY: Duration = Duration::from_secs(5);
/// Wait before listening again after the reply subscription failed.
const RESUBSCRIBE_WAIT: Duration = Duration::from_millis(500);
/// Wait before trying to lead again after taking over failed (the database or Redis refused).
const TAKEOVER_RETRY: Duration = Duration::from_millis(200);
/// The stream field that carries the command.
const FIELD: &str = "c";

/// A matchmaking command as it travels through the stream.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Command {
    Join {
        user: UserId,
        discipline: Discipline,
        scope: Option<Scope>,
        rating: f64,
    },
    Leave {
        user: UserId,
    },
    Challenge {
        from: UserId,
        to: UserId,
        discipline: Discipline,
    },
    Accept {
        id: Uuid,
        user: UserId,
        ratings: (f64, f64),
    },
    Decline {
        id: Uuid,
        user: UserId,
    },
    Ready {
        id: Uuid,
        user: UserId,
    },
    Cancel {
        id: Uuid,
        user: UserId,
    },
    Report {
        id: Uuid,
        user: UserId,
        winner: UserId,
    },
}

impl Command {
    pub fn act(id: Uuid, user: UserId, action: MatchAction) -> Command {
        match action {
            MatchAction::Ready => Command::Ready { id, user },
            MatchAction::Cancel => Command::Cancel { id, user },
            MatchAction::Report { winner } => Command::Report { id, user, winner },
        }
    }
}

/// A stream entry: who asked, under which request id, for what.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Envelope {
    pub node: String,
    pub request: Uuid,
    pub command: Command,
}

/// A climber's place in a queue, on the wire.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WireSpot {
    pub discipline: Discipline,
    pub scope: Option<Scope>,
    pub rating: f64,
    pub queued_at: i64,
}

/// [`Standing`] on the wire.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WireStanding {
    pub queue: Option<WireSpot>,
    pub current: Option<Match>,
    pub incoming: Vec<Challenge>,
    pub outgoing: Vec<Challenge>,
}

impl From<Standing> for WireStanding {
    fn from(s: Standing) -> Self {
        WireStanding {
            queue: s.queue.map(|spot| WireSpot {
                discipline: spot.queue.discipline,
                scope: spot.queue.scope,
                rating: spot.ticket.rating,
                queued_at: spot.ticket.queued_at,
            }),
            current: s.current,
            incoming: s.incoming,
            outgoing: s.outgoing,
        }
    }
}

impl WireStanding {
    fn into_standing(self, user: Option<&UserId>) -> Standing {
        Standing {
            queue: self.queue.zip(user).map(|(spot, user)| QueueSpot {
                queue: QueueKey {
                    discipline: spot.discipline,
                    scope: spot.scope,
                },
                ticket: Ticket {
                    user: user.clone(),
                    rating: spot.rating,
                    queued_at: spot.queued_at,
                },
            }),
            current: self.current,
            // The leader's engine keeps no ended match.
            ended: None,
            incoming: self.incoming,
            outgoing: self.outgoing,
        }
    }
}

/// The leader's answer to one command.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Answer {
    /// Join and leave: where the climber stands afterwards.
    Standing {
        user: UserId,
        standing: WireStanding,
    },
    Challenge {
        challenge: Challenge,
    },
    Match {
        #[serde(rename = "match")]
        m: Match,
    },
    /// The engine refused (the `error` code of the 4xx).
    Refused {
        code: String,
    },
    /// Storing failed, or the entry could not be read.
    Failed {
        message: String,
    },
    /// The leader was deposed before committing: its successor answers instead.
    Fenced,
}

/// Every refusal, to turn a code back into its refusal.
const REFUSALS: [Refusal; 18] = [
    Refusal::AlreadyQueued,
    Refusal::InMatch,
    Refusal::NotQueued,
    Refusal::UnknownMatch,
    Refusal::NotYourMatch,
    Refusal::NotInReadyCheck,
    Refusal::DeadlinePassed,
    Refusal::AlreadyReady,
    Refusal::NotConfirmed,
    Refusal::AlreadyReported,
    Refusal::WinnerNotAPlayer,
    Refusal::UnknownChallenge,
    Refusal::NotYourChallenge,
    Refusal::ChallengeClosed,
    Refusal::ChallengeSelf,
    Refusal::OpponentBusy,
    Refusal::AlreadyChallenged,
    Refusal::TooManyChallenges,
];

impl Answer {
    fn unexpected(self) -> CallError {
        match self {
            Answer::Refused { code } => match REFUSALS.iter().find(|r| r.code() == code) {
                Some(refusal) => MatchmakingError::Refused(*refusal).into(),
                None => CallError::Unavailable(format!("the leader refused with {code:?}")),
            },
            Answer::Failed { message } => MatchmakingError::Store(message).into(),
            other => {
                CallError::Unavailable(format!("unexpected answer from the leader: {other:?}"))
            }
        }
    }

    pub fn standing(self) -> Result<Standing, CallError> {
        match self {
            Answer::Standing { user, standing } => Ok(standing.into_standing(Some(&user))),
            other => Err(other.unexpected()),
        }
    }

    pub fn challenge(self) -> Result<Challenge, CallError> {
        match self {
            Answer::Challenge { challenge } => Ok(challenge),
            other => Err(other.unexpected()),
        }
    }

    pub fn a_match(self) -> Result<Match, CallError> {
        match self {
            Answer::Match { m } => Ok(m),
            other => Err(other.unexpected()),
        }
    }
}

/// A reply on a node's channel. The leader publishes the replies for one node that are ready
/// together as one JSON array.
#[derive(Debug, Serialize, Deserialize)]
struct Reply {
    request: Uuid,
    answer: Answer,
}

/// Most replies in one published message.
const REPLY_BATCH: usize = 256;

/// The matchmaker of this node's current term, while the node leads: the node's own commands go
/// to it directly, not through the stream (no `XADD`, no stream read, no published answer).
#[derive(Clone, Default)]
pub struct LocalLead(Arc<Mutex<Option<Lead>>>);

/// A term and the matchmaker running it.
type Lead = (Term, Addr<MatchmakerActor>);

impl LocalLead {
    fn set(&self, lead: Option<Lead>) {
        if let Ok(mut slot) = self.0.lock() {
            *slot = lead;
        }
    }

    fn get(&self) -> Option<Lead> {
        self.0.lock().ok().and_then(|slot| slot.clone())
    }
}

type Waiting = Arc<Mutex<HashMap<Uuid, oneshot::Sender<Answer>>>>;

/// A node's side of the stream: appends commands and waits for their answers; while the node
/// leads, hands them to its own matchmaker instead.
pub struct CommandClient {
    redis: ConnectionManager,
    keys: Keys,
    node: String,
    timeout: Duration,
    waiting: Waiting,
    lead: LocalLead,
    leadership: watch::Receiver<Option<Term>>,
    clock: Clock,
    metrics: Arc<Metrics>,
}

/// What [`CommandClient::start`] needs besides the stream: where this node's own matchmaker is
/// while it leads, and the lease it leads by.
pub struct OwnLead {
    pub lead: LocalLead,
    pub leadership: watch::Receiver<Option<Term>>,
    pub clock: Clock,
    pub metrics: Arc<Metrics>,
}

/// Forgets a waiting request when its caller stops waiting (answered, timed out, or gone).
struct Forget<'a>(&'a Waiting, Uuid);

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        if let Ok(mut waiting) = self.0.lock() {
            waiting.remove(&self.1);
        }
    }
}

impl CommandClient {
    /// Subscribes to this node's reply channel (before returning, so no answer is missed) and
    /// keeps listening in the background, resubscribing after a failure.
    pub async fn start(
        client: redis::Client,
        redis: ConnectionManager,
        keys: Keys,
        node: String,
        timeout: Duration,
        own: OwnLead,
    ) -> anyhow::Result<CommandClient> {
        let waiting: Waiting = Arc::default();
        let (ready, subscribed) = oneshot::channel();
        tokio::spawn(listen(
            client,
            keys.replies_of(&node),
            waiting.clone(),
            Some(ready),
        ));
        tokio::time::timeout(timeout, subscribed)
            .await
            .context("subscribing to the reply channel timed out")?
            .context("the reply listener stopped")?;
        Ok(CommandClient {
            redis,
            keys,
            node,
            timeout,
            waiting,
            lead: own.lead,
            leadership: own.leadership,
            clock: own.clock,
            metrics: own.metrics,
        })
    }

    /// This node's matchmaker, while its term is valid.
    fn leading(&self) -> Option<Addr<MatchmakerActor>> {
        let (term, actor) = self.lead.get()?;
        let valid = self
            .leadership
            .borrow()
            .is_some_and(|t| t.token == term.token && self.clock.now() < t.valid_until);
        valid.then_some(actor)
    }

    /// Runs `command` on the leader: this node's own matchmaker when it leads, else through the
    /// stream.
    pub async fn call(&self, command: Command) -> Result<Answer, CallError> {
        if let Some(actor) = self.leading() {
            let applied = actor.send(Apply {
                id: None,
                command: Some(command),
            });
            // A term that ends meanwhile (the matchmaker stopped, or the store refused its
            // number) answers like a leader that did not answer: the command may or may not have
            // been applied, and `GET /v1/me/match` tells which.
            return match tokio::time::timeout(self.timeout, applied).await {
                Ok(Ok(Answer::Fenced)) | Ok(Err(_)) | Err(_) => Err(self.no_answer()),
                Ok(Ok(answer)) => {
                    Metrics::add(&self.metrics.commands_applied, 1);
                    Ok(answer)
                }
            };
        }
        self.through_stream(command).await
    }

    fn no_answer(&self) -> CallError {
        CallError::Unavailable(format!(
            "the matchmaker leader did not answer within {} ms; GET /v1/me/match shows \
             whether the command was applied",
            self.timeout.as_millis()
        ))
    }

    /// Appends `command` to the stream and waits for the leader's answer.
    async fn through_stream(&self, command: Command) -> Result<Answer, CallError> {
        let request = Uuid::new_v4();
        let (answer, answered) = oneshot::channel();
        if let Ok(mut waiting) = self.waiting.lock() {
            waiting.insert(request, answer);
        }
        let _forget = Forget(&self.waiting, request);
        let entry = serde_json::to_string(&Envelope {
            node: self.node.clone(),
            request,
            command,
        })
        .map_err(|e| CallError::Store(e.into()))?;
        let mut redis = self.redis.clone();
        redis::cmd("XADD")
            .arg(&self.keys.commands)
            .arg("*")
            .arg(FIELD)
            .arg(entry)
            .query_async::<String>(&mut redis)
            .await
            .map_err(|e| {
                CallError::Unavailable(format!("the command stream is unreachable: {e}"))
            })?;
        match tokio::time::timeout(self.timeout, answered).await {
            Ok(Ok(Answer::Fenced)) | Ok(Err(_)) | Err(_) => Err(self.no_answer()),
            Ok(Ok(answer)) => Ok(answer),
        }
    }
}

/// Hands every reply on `channel` to the request waiting for it.
async fn listen(
    client: redis::Client,
    channel: String,
    waiting: Waiting,
    mut ready: Option<oneshot::Sender<()>>,
) {
    loop {
        match client.get_async_pubsub().await {
            Ok(mut pubsub) => match pubsub.subscribe(&channel).await {
                Ok(()) => {
                    if let Some(ready) = ready.take() {
                        let _ = ready.send(());
                    }
                    let mut messages = pubsub.on_message();
                    while let Some(message) = messages.next().await {
                        let payload = message.get_payload_bytes();
                        let replies = match serde_json::from_slice::<Vec<Reply>>(payload) {
                            Ok(replies) => replies,
                            // One reply alone, as a node of an earlier version publishes it.
                            Err(_) => match serde_json::from_slice::<Reply>(payload) {
                                Ok(reply) => vec![reply],
                                Err(_) => {
                                    tracing::warn!("an unreadable matchmaking reply");
                                    continue;
                                }
                            },
                        };
                        let Ok(mut waiting) = waiting.lock() else {
                            continue;
                        };
                        for reply in replies {
                            if let Some(waiter) = waiting.remove(&reply.request) {
                                let _ = waiter.send(reply.answer);
                            }
                        }
                    }
                    tracing::warn!("the matchmaking reply subscription ended; subscribing again");
                }
                Err(error) => tracing::warn!(%error, "subscribing to matchmaking replies"),
            },
            Err(error) => tracing::warn!(%error, "connecting for matchmaking replies"),
        }
        tokio::time::sleep(RESUBSCRIBE_WAIT).await;
    }
}

/// What the leader needs to run the matchmaker.
pub struct Leader {
    pub store: Arc<dyn Store>,
    pub notifier: Notifier,
    pub metrics: Arc<Metrics>,
    pub policy: Policy,
    pub timing: Timing,
    pub keys: Keys,
    pub client: redis::Client,
    pub redis: ConnectionManager,
    pub clock: Clock,
    pub leadership: watch::Receiver<Option<Term>>,
    /// Where this node's own commands find the matchmaker while this node leads.
    pub lead: LocalLead,
}

impl Leader {
    fn still_leading(&self, term: Term) -> bool {
        self.leadership
            .borrow()
            .is_some_and(|t| t.token == term.token && self.clock.now() < t.valid_until)
    }

    /// Runs the matchmaker whenever this node holds the lease, for as long as the process runs.
    /// Must run on an actix arbiter (it starts the actor).
    pub async fn run(mut self) {
        let mut served = 0;
        loop {
            let term = {
                let held = *self.leadership.borrow_and_update();
                held.filter(|t| t.token != served && self.clock.now() < t.valid_until)
            };
            let Some(term) = term else {
                if self.leadership.changed().await.is_err() {
                    return;
                }
                continue;
            };
            served = term.token;
            match self.serve(term).await {
                Ok(()) => tracing::info!(token = term.token, "matchmaker term ended"),
                Err(error) => {
                    tracing::warn!(error = %format!("{error:#}"), "taking over the matchmaker");
                    served = 0;
                    tokio::time::sleep(TAKEOVER_RETRY).await;
                }
            }
        }
    }

    /// One term: record its fencing number, restore, follow the stream while the lease lasts,
    /// step down.
    async fn serve(&mut self, term: Term) -> anyhow::Result<()> {
        // The term's number is in the store before the engine is read from it: a deposed
        // leader's commit that was late (after its lease, before this read) would otherwise
        // pass the fence unseen by this engine. Now it is either read here or refused.
        let recorded = self
            .notifier
            .apply(vec![(
                vec![Change::Fence {
                    token: term.token,
                    command: None,
                }],
                Vec::new(),
            )])
            .await;
        match recorded {
            Ok(_) => {}
            Err(error) if crate::store::Fenced::is(&error) => {
                tracing::warn!(
                    token = term.token,
                    "a newer leader has written; not taking over"
                );
                return Ok(());
            }
            Err(error) => return Err(error.context("recording the term's fencing number")),
        }
        let fence = self.store.matchmaker_fence().await?;
        let (engine, restored) =
            load_engine(self.store.as_ref(), self.policy.clone(), self.timing).await?;
        let actor = MatchmakerActor::with_fence(
            engine,
            restored,
            self.notifier.clone(),
            self.metrics.clone(),
            Some(term.token),
        )
        .start();
        tracing::info!(
            token = term.token,
            after = fence.last_command.as_deref().unwrap_or("the start"),
            "matchmaker restored; following the command stream"
        );
        self.lead.set(Some((term, actor.clone())));
        let followed = self.follow(term, &actor, fence.last_command).await;
        self.lead.set(None);
        actor.do_send(StepDown);
        followed
    }

    async fn follow(
        &self,
        term: Term,
        actor: &Addr<MatchmakerActor>,
        last: Option<String>,
    ) -> anyhow::Result<()> {
        // Its own connection: a blocking read holds the connection it runs on.
        let config = redis::AsyncConnectionConfig::new().set_response_timeout(Some(READ_BLOCK * 5));
        let mut reader = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .context("connecting to read the command stream")?;
        let mut after = last.unwrap_or_else(|| "0-0".to_owned());
        let mut trimmed_at = tokio::time::Instant::now();
        let (replies, ready) = tokio::sync::mpsc::unbounded_channel();
        actix::spawn(publish_replies(
            self.redis.clone(),
            self.keys.clone(),
            ready,
        ));
        type Entries = Option<Vec<(String, Vec<(String, HashMap<String, String>)>)>>;
        while self.still_leading(term) && actor.connected() {
            let read: Entries = redis::cmd("XREAD")
                .arg("COUNT")
                .arg(READ_BATCH)
                .arg("BLOCK")
                .arg(READ_BLOCK.as_millis() as u64)
                .arg("STREAMS")
                .arg(&self.keys.commands)
                .arg(&after)
                .query_async(&mut reader)
                .await
                .context("reading the command stream")?;
            for (_, entries) in read.into_iter().flatten() {
                for (id, fields) in entries {
                    // Past the lease's deadline not one more command is applied.
                    if !self.still_leading(term) {
                        return Ok(());
                    }
                    self.apply(actor, &id, fields.get(FIELD).map(String::as_str), &replies);
                    after = id;
                }
            }
            if trimmed_at.elapsed() >= TRIM_EVERY {
                trimmed_at = tokio::time::Instant::now();
                self.trim().await;
            }
        }
        Ok(())
    }

    /// Hands one entry to the actor (in stream order: the mailbox keeps it) and, once it is
    /// committed, passes the answer on to be published to the node that asked.
    fn apply(
        &self,
        actor: &Addr<MatchmakerActor>,
        id: &str,
        entry: Option<&str>,
        replies: &tokio::sync::mpsc::UnboundedSender<(String, Reply)>,
    ) {
        let envelope = entry.and_then(|e| serde_json::from_str::<Envelope>(e).ok());
        if envelope.is_none() {
            tracing::warn!(id, "an unreadable matchmaking command; recorded as applied");
        }
        if let Some(sent_ms) = id.split('-').next().and_then(|ms| ms.parse::<i64>().ok()) {
            let lag = chrono::Utc::now().timestamp_millis() - sent_ms;
            self.metrics
                .command_stream_lag_ms
                .store(lag.max(0), std::sync::atomic::Ordering::Relaxed);
        }
        let applied = actor.send(Apply {
            id: Some(id.to_owned()),
            command: envelope.as_ref().map(|e| e.command.clone()),
        });
        let replies = replies.clone();
        let metrics = self.metrics.clone();
        actix::spawn(async move {
            let Ok(answer) = applied.await else {
                return;
            };
            if matches!(answer, Answer::Fenced) {
                return;
            }
            Metrics::add(&metrics.commands_applied, 1);
            let Some(envelope) = envelope else {
                return;
            };
            let reply = Reply {
                request: envelope.request,
                answer,
            };
            let _ = replies.send((envelope.node, reply));
        });
    }

    /// Drops the stream entries the database has recorded as applied.
    async fn trim(&self) {
        let Ok(fence) = self.store.matchmaker_fence().await else {
            return;
        };
        let Some(last) = fence.last_command else {
            return;
        };
        let mut redis = self.redis.clone();
        let trimmed = redis::cmd("XTRIM")
            .arg(&self.keys.commands)
            .arg("MINID")
            .arg("~")
            .arg(&last)
            .query_async::<i64>(&mut redis)
            .await;
        if let Err(error) = trimmed {
            tracing::debug!(%error, "trimming the command stream");
        }
    }
}

/// Publishes the leader's answers: whatever is ready when a publish starts goes out together,
/// one message (a JSON array) per asking node, while the next waits. Ends when the term's last
/// answer has been passed on.
async fn publish_replies(
    mut redis: ConnectionManager,
    keys: Keys,
    mut ready: tokio::sync::mpsc::UnboundedReceiver<(String, Reply)>,
) {
    while let Some(first) = ready.recv().await {
        let mut by_node: HashMap<String, Vec<Reply>> = HashMap::new();
        let mut taken = 1;
        by_node.entry(first.0).or_default().push(first.1);
        while taken < REPLY_BATCH {
            let Ok((node, reply)) = ready.try_recv() else {
                break;
            };
            by_node.entry(node).or_default().push(reply);
            taken += 1;
        }
        for (node, batch) in by_node {
            let Ok(payload) = serde_json::to_string(&batch) else {
                continue;
            };
            let published = redis::cmd("PUBLISH")
                .arg(keys.replies_of(&node))
                .arg(payload)
                .query_async::<i64>(&mut redis)
                .await;
            if let Err(error) = published {
                tracing::warn!(%error, "publishing matchmaking answers");
            }
        }
    }
}
