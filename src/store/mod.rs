//! The store: the truth for every user-targeted event. One interface, one implementation per
//! backend; the engine only sees `Arc<dyn Store>`.

mod mysql;
mod mysql_play;
mod mysql_push;
mod postgres;
mod postgres_play;
mod postgres_push;
pub mod push;
pub mod retention;
mod rules;
mod sqlite;
mod sqlite_play;
mod sqlite_push;
mod writer;

pub(crate) use writer::jitter;

use std::sync::Arc;

use anyhow::Context;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::domain::{
    Challenge, Cursor, Discipline, LeaderboardEntry, Match, Notification, QueuedTicket, Rating,
    UserId,
};
pub use crate::domain::{Change, ChangeOutcome, NewEvent, Settlement};

pub use mysql::MySqlStore;
pub use postgres::PgStore;
pub use sqlite::SqliteStore;

/// What `append` did with one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AppendOutcome {
    /// A new notification at a new cursor.
    Created,
    /// Folded into an unread notification, which moved to a new cursor.
    Collapsed,
    /// The idempotency key was seen before; nothing was written.
    Duplicate,
}

impl AppendOutcome {
    /// Whether the event changed the user's stream and must be published.
    pub fn is_new(self) -> bool {
        !matches!(self, AppendOutcome::Duplicate)
    }
}

#[derive(Debug, Clone)]
pub struct Appended {
    pub user: UserId,
    pub notification: Notification,
    pub outcome: AppendOutcome,
}

/// Work to do right after a batch is committed (publishing it).
pub type OnCommit = Box<dyn FnOnce(&[Appended]) + Send>;

/// Which page of a user's notifications to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Page {
    /// Newest first, optionally below a cursor.
    Newest { before: Option<Cursor> },
    /// Oldest first, above a cursor.
    After(Cursor),
}

#[derive(Debug, Clone, Copy)]
pub struct ListQuery {
    pub page: Page,
    pub unread_only: bool,
    pub limit: u32,
}

#[derive(Debug, Clone)]
pub enum ReadSelector {
    Ids(Vec<Uuid>),
    UpTo(Cursor),
    All,
}

/// One climber's matchmaking rows, as [`Store::standing_of`] reads them.
#[derive(Debug, Clone, Default)]
pub struct StoredStanding {
    pub ticket: Option<QueuedTicket>,
    /// Their latest match, by creation time.
    pub latest: Option<Match>,
    /// Pending challenges they sent or received, oldest first.
    pub challenges: Vec<Challenge>,
}

/// A user's unread count, head cursor and newest unread notifications, read together.
#[derive(Debug, Clone, PartialEq)]
pub struct UnreadSnapshot {
    pub count: u64,
    pub head: Cursor,
    /// Newest first; every one unread and at or below `head`.
    pub latest: Vec<Notification>,
}

/// The matchmaker's fence row: the largest lease fencing number a transaction has carried, and
/// the id of the last stream command applied (cluster mode; see [`Change::Fence`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MatchmakerFence {
    pub token: i64,
    pub last_command: Option<String>,
}

/// A transaction carried a fencing number below the one recorded: its writer has lost the
/// matchmaker lease, and nothing of the transaction was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("fenced: this transaction carries lease number {offered}, the store has seen {recorded}")]
pub struct Fenced {
    pub offered: i64,
    pub recorded: i64,
}

impl Fenced {
    /// Whether `error` is (or was caused by) a fence refusal.
    pub fn is(error: &anyhow::Error) -> bool {
        error.chain().any(|cause| cause.is::<Fenced>())
    }
}

/// Result of [`Store::apply_then`].
#[derive(Debug, Clone)]
pub struct Applied {
    /// One per change, in order.
    pub outcomes: Vec<ChangeOutcome>,
    /// The events given, then the events the changes produced.
    pub appended: Vec<Appended>,
}

#[async_trait]
pub trait Store: push::PushStore + Send + Sync + 'static {
    /// Events that `filter` wants pushed get push jobs in their own transaction from now on
    /// (see [`push`]).
    fn enable_push(&self, filter: Arc<dyn push::PushFilter>);

    /// Writes a batch in one transaction: all of it or none. Cursors are assigned per user in
    /// commit order, gapless. `on_commit` runs once the batch is committed, before this returns;
    /// calls for different batches run in commit order where the backend can keep it (one
    /// node's writer), which keeps live frames in cursor order.
    async fn append_then(
        &self,
        batch: Vec<NewEvent>,
        on_commit: OnCommit,
    ) -> anyhow::Result<Vec<Appended>> {
        Ok(self
            .apply_then(Vec::new(), batch, on_commit)
            .await?
            .appended)
    }

    /// Applies `changes` in order and appends `batch` plus the events the changes produce, all
    /// in one transaction. `on_commit` sees every appended event, as with `append_then`.
    async fn apply_then(
        &self,
        changes: Vec<Change>,
        batch: Vec<NewEvent>,
        on_commit: OnCommit,
    ) -> anyhow::Result<Applied> {
        self.apply_many(vec![(changes, batch)], on_commit)
            .await?
            .pop()
            .context("the store returned no result")
    }

    /// Several `apply_then` works, in order, in one transaction: all or none. One result per
    /// work; `on_commit` sees every appended event of all of them, in order.
    async fn apply_many(
        &self,
        works: Vec<(Vec<Change>, Vec<NewEvent>)>,
        on_commit: OnCommit,
    ) -> anyhow::Result<Vec<Applied>>;

    /// A match by id, live or finished.
    async fn get_match(&self, id: Uuid) -> anyhow::Result<Option<Match>>;

    /// Matches still in the ready check or awaiting results (restored into the engine at start).
    async fn live_matches(&self) -> anyhow::Result<Vec<Match>>;

    /// Challenges still pending (restored into the engine at start).
    async fn pending_challenges(&self) -> anyhow::Result<Vec<Challenge>>;

    /// Climbers waiting in the queues, longest waiting first (restored into the engine at start).
    async fn queued_tickets(&self) -> anyhow::Result<Vec<QueuedTicket>>;

    /// Memory the database engine holds inside this process (SQLite's page caches and
    /// statements); `None` for a database server, whose memory is its own.
    fn memory_bytes(&self) -> Option<u64> {
        None
    }

    /// A climber's latest match by creation time, live or ended.
    async fn latest_match(&self, user: &UserId) -> anyhow::Result<Option<Match>>;

    /// Where one climber stands in the store: their queue ticket, their latest match (live or
    /// ended) and the pending challenges they sent or received. Read by nodes that do not run
    /// the matchmaker (cluster mode), which hold no engine of their own.
    async fn standing_of(&self, user: &UserId) -> anyhow::Result<StoredStanding>;

    /// The matchmaker's fence row: where a new leader continues the command stream.
    async fn matchmaker_fence(&self) -> anyhow::Result<MatchmakerFence>;

    /// Whether the climber was ever seen (see [`Change::SeeUser`]).
    async fn user_known(&self, user: &UserId) -> anyhow::Result<bool>;

    /// A climber's rating in a discipline; None before their first settled match.
    async fn rating(&self, user: &UserId, discipline: Discipline)
    -> anyhow::Result<Option<Rating>>;

    /// Highest rating first (ties by user id), skipping `offset` entries.
    async fn leaderboard(
        &self,
        discipline: Discipline,
        offset: u32,
        limit: u32,
    ) -> anyhow::Result<Vec<LeaderboardEntry>>;

    /// [`Store::append_then`] with nothing to run after the commit.
    async fn append(&self, batch: Vec<NewEvent>) -> anyhow::Result<Vec<Appended>> {
        self.append_then(batch, Box::new(|_| ())).await
    }

    /// Events of `user` with a cursor above `after`, oldest first (read or not).
    async fn events_after(
        &self,
        user: &UserId,
        after: Cursor,
        limit: u32,
    ) -> anyhow::Result<Vec<Notification>>;

    /// The last cursor handed out for `user` (0 before the first event).
    async fn head(&self, user: &UserId) -> anyhow::Result<Cursor>;

    async fn list(&self, user: &UserId, query: ListQuery) -> anyhow::Result<Vec<Notification>>;

    async fn unread_count(&self, user: &UserId) -> anyhow::Result<u64>;

    /// The unread count and the head cursor, read together: the count covers exactly the
    /// unread events at or below the cursor.
    async fn unread_as_of(&self, user: &UserId) -> anyhow::Result<(u64, Cursor)>;

    /// What a stream's connect sends first: [`Store::unread_as_of`] and the newest `latest`
    /// unread notifications, newest first, all from one snapshot.
    async fn unread_summary(&self, user: &UserId, latest: u32) -> anyhow::Result<UnreadSnapshot>;

    /// Marks notifications of `user` read; returns how many changed.
    async fn mark_read(&self, user: &UserId, selector: &ReadSelector) -> anyhow::Result<u64>;

    /// Deletes up to `limit` read notifications last changed before `before`; returns how many.
    /// Unread notifications and head rows stay, so cursors never go back.
    async fn delete_read_before(&self, before: DateTime<Utc>, limit: u32) -> anyhow::Result<u64>;

    /// Deletes up to `limit` read notifications last changed before `before` that are not
    /// among the newest `keep` notifications of their user; returns how many.
    async fn delete_read_beyond(
        &self,
        keep: u32,
        before: DateTime<Utc>,
        limit: u32,
    ) -> anyhow::Result<u64>;

    /// Forgets idempotency keys recorded before `before`; returns how many.
    async fn expire_idempotency_keys(&self, before: DateTime<Utc>) -> anyhow::Result<u64>;

    /// The space the database takes, in bytes, as the server counts it: SQLite's pages,
    /// PostgreSQL's `pg_database_size`, MariaDB/MySQL's data and index lengths.
    async fn database_size_bytes(&self) -> anyhow::Result<u64>;

    /// Cheap round trips for readiness checks: a reader, and the writer (its task running and
    /// its connection answering), since reads alone can work while every write fails.
    async fn ping(&self) -> anyhow::Result<()>;
}

/// The database servers Belay stores its data in, named by the scheme of `database.url`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Sqlite,
    Postgres,
    MySql,
}

impl Kind {
    /// The backend a URL names, or an error that lists the accepted schemes.
    pub fn of(url: &str) -> anyhow::Result<Kind> {
        let scheme = url.split_once(':').map_or("", |(scheme, _)| scheme);
        match scheme {
            "sqlite" => Ok(Kind::Sqlite),
            "postgres" | "postgresql" => Ok(Kind::Postgres),
            "mysql" | "mariadb" => Ok(Kind::MySql),
            _ => anyhow::bail!(
                "unsupported database url scheme {scheme:?}: expected sqlite://PATH, \
                 postgres://USER@HOST/DATABASE or mysql://USER@HOST/DATABASE"
            ),
        }
    }
}

/// Opens the store named by a database URL and applies its migrations.
pub async fn connect(url: &str, max_connections: u32) -> anyhow::Result<Arc<dyn Store>> {
    Ok(match Kind::of(url)? {
        Kind::Sqlite => Arc::new(SqliteStore::connect(url, max_connections).await?),
        Kind::Postgres => Arc::new(PgStore::connect(url, max_connections).await?),
        Kind::MySql => Arc::new(MySqlStore::connect(url, max_connections).await?),
    })
}

/// Whether `error` means the database could not be reached (refused, cut, timed out, shut
/// down): a client should try again later, and readiness fails. Anything else is a fault.
pub fn is_unavailable(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        if cause.is::<Unavailable>() {
            return true;
        }
        match cause.downcast_ref::<sqlx::Error>() {
            Some(
                sqlx::Error::Io(_)
                | sqlx::Error::Tls(_)
                | sqlx::Error::PoolTimedOut
                | sqlx::Error::PoolClosed
                | sqlx::Error::WorkerCrashed,
            ) => true,
            // PostgreSQL: connection exceptions (08…), shutdown or restart (57P01–57P03);
            // MariaDB: the connection was killed (70100).
            Some(sqlx::Error::Database(db)) => db.code().is_some_and(|code| {
                code.starts_with("08") || code.starts_with("57P") || code == "70100"
            }),
            _ => false,
        }
    })
}

/// The database did not answer in time.
#[derive(Debug, thiserror::Error)]
#[error("the database did not answer within {0:?}")]
pub struct Unavailable(pub std::time::Duration);

/// [`connect`], retried with backoff while the database cannot be reached, for up to `patience`;
/// any other error (a bad URL, a failed migration) at once.
pub async fn connect_patiently(
    url: &str,
    max_connections: u32,
    patience: std::time::Duration,
) -> anyhow::Result<Arc<dyn Store>> {
    let started = std::time::Instant::now();
    let mut wait = std::time::Duration::from_millis(100);
    loop {
        match connect(url, max_connections).await {
            Ok(store) => return Ok(store),
            Err(error) if is_unavailable(&error) && started.elapsed() + wait < patience => {
                tracing::warn!(
                    error = %format!("{error:#}"),
                    retry_in_ms = wait.as_millis() as u64,
                    "the database is not reachable yet"
                );
                tokio::time::sleep(writer::jitter(wait)).await;
                wait = (wait * 2).min(std::time::Duration::from_secs(5));
            }
            Err(error) if is_unavailable(&error) => {
                return Err(error.context(format!(
                    "the database was not reachable for {} s (database.connect_timeout_secs)",
                    started.elapsed().as_secs()
                )));
            }
            Err(error) => return Err(error),
        }
    }
}
