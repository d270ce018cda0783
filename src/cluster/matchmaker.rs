//! The matchmaker in cluster mode: one node at a time runs it, holding a lease in Redis
//! ([`super::lease`]); every node hands its matchmaking commands to that leader through a Redis
//! Stream and waits for the answer ([`super::commands`]). Without `redis.url` the node runs its
//! own matchmaker exactly as a single node does. See docs/ARCHITECTURE.md, "Cluster: one
//! matchmaker".

use std::sync::Arc;
use std::time::Duration;

use actix::Addr;
use anyhow::Context as _;
use tokio::sync::watch;
use uuid::Uuid;

use super::commands::{Answer, Command, CommandClient, Leader};
use crate::actors::matchmaker::{
    Accept, Act, Decline, GetChallenge, GetLiveMatch, GetStanding, Join, Leave, MatchAction,
    MatchmakerActor, MatchmakingError, SendChallenge, Standing,
};
use crate::config::Settings;
use crate::domain::{Challenge, Discipline, Match, MatchStatus, UserId};
use crate::matchmaking::pool::QueueKey;
use crate::metrics::Metrics;
use crate::notifier::Notifier;
use crate::store::Store;

/// A running cluster membership: stopping it releases the lease.
pub struct Membership {
    stop: watch::Sender<bool>,
    lease: tokio::task::JoinHandle<()>,
}

impl Membership {
    /// Stops leading and releases the lease (a successor takes over at once, not after the
    /// lease's time to live).
    pub async fn leave(self) {
        let _ = self.stop.send(true);
        let _ = self.lease.await;
    }
}

/// Joins the cluster at `url`: runs the lease, the matchmaker whenever this node leads, and the
/// command client the HTTP handlers use. Must run on an actix arbiter.
pub async fn join(
    url: &str,
    settings: &Settings,
    store: Arc<dyn Store>,
    notifier: Notifier,
    metrics: Arc<Metrics>,
) -> anyhow::Result<(Matchmaker, Membership)> {
    let client = redis::Client::open(url).context("redis.url")?;
    let redis = redis::aio::ConnectionManager::new(client.clone())
        .await
        .context("connecting to redis")?;
    let keys = Keys::new(&settings.cluster.key_prefix);
    // The configured node name when there is one (presence uses it too), else a fresh one.
    let node = match settings.cluster.node_id.as_str() {
        "" => format!("node-{}", Uuid::new_v4().simple()),
        named => named.to_owned(),
    };
    let clock = super::lease::Clock::default();
    let (leadership, led) = watch::channel(None);
    let (stop, stopped) = watch::channel(false);
    let holder = super::lease::Holder {
        redis: redis.clone(),
        keys: keys.clone(),
        node: node.clone(),
        ttl: Duration::from_millis(settings.cluster.lease_ttl_ms),
        clock,
    };
    let lease = tokio::spawn(super::lease::run(
        holder,
        leadership,
        stopped,
        metrics.clone(),
    ));
    let lead = super::commands::LocalLead::default();
    let own = super::commands::OwnLead {
        lead: lead.clone(),
        leadership: led.clone(),
        clock,
        metrics: metrics.clone(),
    };
    let leader = Leader {
        store: store.clone(),
        notifier,
        metrics,
        policy: settings.matchmaking.policy.clone(),
        timing: settings.matchmaking.timing(),
        keys: keys.clone(),
        client: client.clone(),
        redis: redis.clone(),
        clock,
        leadership: led,
        lead,
    };
    actix::spawn(leader.run());
    let timeout = Duration::from_millis(settings.cluster.command_timeout_ms);
    let commands = CommandClient::start(client, redis, keys, node.clone(), timeout, own).await?;
    tracing::info!(node, "cluster mode: matchmaking commands go through redis");
    Ok((
        Matchmaker::Cluster {
            client: Arc::new(commands),
            store,
        },
        Membership { stop, lease },
    ))
}

/// The Redis keys of one cluster. They share one hash tag, so a Redis Cluster keeps them in one
/// slot (the acquire script touches two of them).
#[derive(Debug, Clone)]
pub struct Keys {
    pub lease: String,
    pub fence: String,
    pub commands: String,
    reply_prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Keys {
        let tag = format!("{{{prefix}:mm}}");
        Keys {
            lease: format!("{tag}:lease"),
            fence: format!("{tag}:fence"),
            commands: format!("{tag}:commands"),
            reply_prefix: format!("{tag}:reply:"),
        }
    }

    /// The channel a node hears the leader's answers on.
    pub fn replies_of(&self, node: &str) -> String {
        format!("{}{node}", self.reply_prefix)
    }
}

/// Why a matchmaking call failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error(transparent)]
    Matchmaking(#[from] MatchmakingError),
    /// The actor or the leader did not answer (a mailbox closed, a timeout, Redis down).
    #[error("{0}")]
    Unavailable(String),
    #[error(transparent)]
    Store(#[from] anyhow::Error),
}

type Call<T> = Result<T, CallError>;

/// Where the HTTP handlers send matchmaking commands and ask matchmaking questions: this node's
/// actor (single node), or the cluster's leader through the command stream, with reads from the
/// store (cluster mode: this node's engine may be stale or absent).
#[derive(Clone)]
pub enum Matchmaker {
    Local(Addr<MatchmakerActor>),
    Cluster {
        client: Arc<CommandClient>,
        store: Arc<dyn Store>,
    },
}

fn mailbox(error: actix::MailboxError) -> CallError {
    CallError::Unavailable(format!("the matchmaker is not available: {error}"))
}

impl Matchmaker {
    async fn forward(client: &CommandClient, command: Command) -> Call<Answer> {
        client.call(command).await
    }

    pub async fn join(&self, user: UserId, queue: QueueKey, rating: f64) -> Call<Standing> {
        match self {
            Matchmaker::Local(actor) => Ok(actor
                .send(Join {
                    user,
                    queue,
                    rating,
                })
                .await
                .map_err(mailbox)??),
            Matchmaker::Cluster { client, .. } => {
                let command = Command::Join {
                    user,
                    discipline: queue.discipline,
                    scope: queue.scope,
                    rating,
                };
                Self::forward(client, command).await?.standing()
            }
        }
    }

    pub async fn leave(&self, user: UserId) -> Call<Standing> {
        match self {
            Matchmaker::Local(actor) => Ok(actor.send(Leave { user }).await.map_err(mailbox)??),
            Matchmaker::Cluster { client, .. } => Self::forward(client, Command::Leave { user })
                .await?
                .standing(),
        }
    }

    pub async fn challenge(
        &self,
        from: UserId,
        to: UserId,
        discipline: Discipline,
    ) -> Call<Challenge> {
        match self {
            Matchmaker::Local(actor) => Ok(actor
                .send(SendChallenge {
                    from,
                    to,
                    discipline,
                })
                .await
                .map_err(mailbox)??),
            Matchmaker::Cluster { client, .. } => Self::forward(
                client,
                Command::Challenge {
                    from,
                    to,
                    discipline,
                },
            )
            .await?
            .challenge(),
        }
    }

    pub async fn accept(&self, id: Uuid, user: UserId, ratings: (f64, f64)) -> Call<Match> {
        match self {
            Matchmaker::Local(actor) => Ok(actor
                .send(Accept { id, user, ratings })
                .await
                .map_err(mailbox)??),
            Matchmaker::Cluster { client, .. } => {
                Self::forward(client, Command::Accept { id, user, ratings })
                    .await?
                    .a_match()
            }
        }
    }

    pub async fn decline(&self, id: Uuid, user: UserId) -> Call<Challenge> {
        match self {
            Matchmaker::Local(actor) => {
                Ok(actor.send(Decline { id, user }).await.map_err(mailbox)??)
            }
            Matchmaker::Cluster { client, .. } => {
                Self::forward(client, Command::Decline { id, user })
                    .await?
                    .challenge()
            }
        }
    }

    pub async fn act(&self, id: Uuid, user: UserId, action: MatchAction) -> Call<Match> {
        match self {
            Matchmaker::Local(actor) => Ok(actor
                .send(Act { id, user, action })
                .await
                .map_err(mailbox)??),
            Matchmaker::Cluster { client, .. } => {
                Self::forward(client, Command::act(id, user, action))
                    .await?
                    .a_match()
            }
        }
    }

    /// Where a climber stands. Cluster mode reads the store: what it answers is committed.
    pub async fn standing(&self, user: UserId) -> Call<Standing> {
        match self {
            Matchmaker::Local(actor) => {
                Ok(actor.send(GetStanding { user }).await.map_err(mailbox)?)
            }
            Matchmaker::Cluster { store, .. } => Ok(standing_from_store(store.as_ref(), &user)
                .await
                .map_err(CallError::Store)?),
        }
    }

    /// A match that has not ended (None: ended or unknown; read the store).
    pub async fn live_match(&self, id: Uuid) -> Call<Option<Match>> {
        match self {
            Matchmaker::Local(actor) => {
                Ok(actor.send(GetLiveMatch { id }).await.map_err(mailbox)?)
            }
            Matchmaker::Cluster { store, .. } => {
                Ok(store.get_match(id).await?.filter(|m| m.status.is_live()))
            }
        }
    }

    /// A pending challenge (None: unknown, answered or expired).
    pub async fn pending_challenge(&self, id: Uuid) -> Call<Option<Challenge>> {
        match self {
            Matchmaker::Local(actor) => {
                Ok(actor.send(GetChallenge { id }).await.map_err(mailbox)?)
            }
            Matchmaker::Cluster { store, .. } => Ok(store
                .pending_challenges()
                .await?
                .into_iter()
                .find(|c| c.challenge_id == id)),
        }
    }
}

/// A climber's standing as the store holds it: their queue ticket, the live match holding them,
/// their pending challenges.
async fn standing_from_store(store: &dyn Store, user: &UserId) -> anyhow::Result<Standing> {
    use crate::matchmaking::engine::QueueSpot;
    use crate::matchmaking::pool::Ticket;
    let stored = store.standing_of(user).await?;
    let queue = stored.ticket.map(|t| QueueSpot {
        queue: QueueKey {
            discipline: t.discipline,
            scope: t.scope,
        },
        ticket: Ticket {
            user: t.user,
            rating: t.rating,
            queued_at: t.queued_at.timestamp_millis(),
        },
    });
    // The latest match is the current one while it is live, else the ended one.
    let (current, ended) = match stored.latest {
        Some(m) if matches!(m.status, MatchStatus::ReadyCheck | MatchStatus::Confirmed) => {
            (Some(m), None)
        }
        Some(m) => (None, Some(m)),
        None => (None, None),
    };
    let (incoming, outgoing) = stored.challenges.into_iter().partition(|c| &c.to == user);
    Ok(Standing {
        queue,
        current,
        ended,
        incoming,
        outgoing,
    })
}
