//! SQLite backend: the embedded default. One writer connection (SQLite has one writer anyway,
//! and a single connection never hits SQLITE_BUSY on upgrade) fed by a group-commit task, and a
//! small pool of readers.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{QueryBuilder, Row, Sqlite, Transaction};
use tokio::sync::mpsc;
use uuid::Uuid;

use super::rules::{AppendWrites, FoldedRows, Stored};
use super::sqlite_play;
use super::writer::{
    Backend, GroupTx, Lookup, Writer, WriterAlive, look_up, padded, spawn_lookups,
};
use super::{
    Applied, Change, ListQuery, NewEvent, OnCommit, Page, ReadSelector, Store, UnreadSnapshot,
};
use crate::domain::{
    Challenge, Cursor, Discipline, Event, LeaderboardEntry, Match, Notification, QueuedTicket,
    Rating, UserId,
};

/// How long a statement waits for a lock held by another process before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// Rows per multi-row statement (SQLite allows 32,766 bound values per statement).
const ROWS_PER_STATEMENT: usize = 500;
/// Statements in a combined write that sqlx may keep prepared in its statement cache.
const MAX_CACHED_STATEMENTS: usize = 8;
/// Look-ups one statement answers at most.
const MAX_LOOKUP_BATCH: usize = 256;
/// Unread summaries one statement answers at most: its text grows by a subquery per user.
const MAX_SUMMARY_BATCH: usize = 32;

pub struct SqliteStore {
    writes: Writer,
    ratings: mpsc::Sender<Lookup<(UserId, Discipline), Rating>>,
    heads: mpsc::Sender<Lookup<UserId, (i64, i64)>>,
    summaries: mpsc::Sender<Lookup<(UserId, u32), UnreadSnapshot>>,
    pub(super) preferences: mpsc::Sender<Lookup<UserId, String>>,
    pub(super) writer: SqlitePool,
    pub(super) reader: SqlitePool,
}

impl SqliteStore {
    pub async fn connect(url: &str, max_connections: u32) -> anyhow::Result<Self> {
        let options = SqliteConnectOptions::from_str(url)
            .with_context(|| format!("parsing database url {url:?}"))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true);
        let in_memory = options.get_filename().as_os_str() == ":memory:";
        let folder = options
            .get_filename()
            .parent()
            .filter(|d| !d.as_os_str().is_empty());
        if !in_memory && let Some(dir) = folder {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("creating database folder {}", dir.display()))?;
        }
        // The writer never checkpoints: SQLite would do it inside the commit that crosses the
        // threshold, holding up the group. A background task does it instead (below).
        // One connection, for the life of the store: never retired (an in-memory database
        // would go with it) and never pinged before use (a ping is one more round trip to
        // SQLite's thread per group, and a local file cannot drop the connection).
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .test_before_acquire(false)
            .connect_with(
                options
                    .clone()
                    .pragma("wal_autocheckpoint", "0")
                    .pragma("temp_store", "memory")
                    .pragma("cache_size", "-32768"),
            )
            .await
            .with_context(|| format!("opening {url}"))?;
        MIGRATOR
            .run(&writer)
            .await
            .context("applying SQLite migrations")?;
        // Each connection of a pooled in-memory database is its own database: share the writer.
        let reader = if in_memory {
            writer.clone()
        } else {
            SqlitePoolOptions::new()
                .max_connections(max_connections.max(1))
                .test_before_acquire(false)
                .connect_with(options.clone().read_only(true))
                .await
                .with_context(|| format!("opening readers for {url}"))?
        };
        let writes = Writer::spawn(Arc::new(SqliteBackend {
            pool: writer.clone(),
        }));
        let pool = reader.clone();
        let ratings = spawn_lookups(MAX_LOOKUP_BATCH, move |keys| {
            ratings_by_key(pool.clone(), keys)
        });
        let pool = reader.clone();
        let heads = spawn_lookups(MAX_LOOKUP_BATCH, move |users| {
            unread_heads_of(pool.clone(), users)
        });
        let pool = reader.clone();
        let summaries = spawn_lookups(MAX_SUMMARY_BATCH, move |keys| {
            unread_summaries_of(pool.clone(), keys)
        });
        if !in_memory {
            let checkpointer = SqlitePoolOptions::new()
                .max_connections(1)
                .test_before_acquire(false)
                .connect_with(options.clone())
                .await
                .with_context(|| format!("opening the checkpoint connection for {url}"))?;
            tokio::spawn(checkpoint_loop(checkpointer, writes.alive()));
        }
        let lookup_pool = reader.clone();
        let preferences = spawn_lookups(MAX_LOOKUP_BATCH, move |users| {
            super::sqlite_push::preferences_of(lookup_pool.clone(), users)
        });
        Ok(SqliteStore {
            writes,
            ratings,
            heads,
            summaries,
            preferences,
            writer,
            reader,
        })
    }
}

/// Write statements sent to SQLite's thread together: sqlx runs every statement of one query
/// text in a single round trip, each binding its own `?` parameters in order. A group's writes
/// (matchmaking rows, notifications, heads, keys) then cost one trip instead of one each.
pub(super) struct Statements<'a> {
    query: QueryBuilder<'a, Sqlite>,
    count: usize,
}

impl<'a> Statements<'a> {
    pub(super) fn new() -> Self {
        Statements {
            query: QueryBuilder::new(""),
            count: 0,
        }
    }

    /// Starts the next statement with `sql`; the caller appends the rest of it.
    pub(super) fn start(&mut self, sql: &str) -> &mut QueryBuilder<'a, Sqlite> {
        if self.count > 0 {
            self.query.push(";\n");
        }
        self.count += 1;
        self.query.push(sql);
        &mut self.query
    }

    /// Runs them all, in order; nothing to run is no round trip.
    pub(super) async fn run(
        mut self,
        tx: &mut Transaction<'_, Sqlite>,
        what: &'static str,
    ) -> anyhow::Result<()> {
        if self.count == 0 {
            return Ok(());
        }
        // Kept in sqlx's statement cache, so that groups of the same shape (a steady stream of
        // full batches) skip parsing the text again; but not a text of many statements (one
        // per collapsed notification), which would hold that many prepared statements in
        // each of the cache's entries.
        self.query
            .build()
            .persistent(self.count <= MAX_CACHED_STATEMENTS)
            .execute(&mut **tx)
            .await
            .context(what)?;
        Ok(())
    }
}

/// Appends `(?, ?, …)`, one bound parameter per value: the list of an `IN`.
pub(super) fn push_list<'a, T>(
    qb: &mut QueryBuilder<'a, Sqlite>,
    values: impl IntoIterator<Item = T>,
) where
    T: 'a + sqlx::Encode<'a, Sqlite> + sqlx::Type<Sqlite>,
{
    qb.push("(");
    let mut list = qb.separated(", ");
    for value in values {
        list.push_bind(value);
    }
    qb.push(")");
}

/// The ratings of the given climbers in the given disciplines, in one statement.
async fn ratings_by_key(
    pool: SqlitePool,
    keys: Vec<(UserId, Discipline)>,
) -> anyhow::Result<HashMap<(UserId, Discipline), Rating>> {
    let users: HashSet<&str> = keys.iter().map(|(user, _)| user.as_str()).collect();
    let users: Vec<&str> = users.into_iter().collect();
    let rows = sqlite_play::ratings_of(&pool, &users).await?;
    let rows: HashMap<(&str, &str), Rating> = rows
        .iter()
        .map(|(user, discipline, rating)| ((user.as_str(), discipline.as_str()), *rating))
        .collect();
    Ok(keys
        .iter()
        .filter_map(|key| {
            let rating = rows.get(&(key.0.as_str(), key.1.as_str()))?;
            Some((key.clone(), *rating))
        })
        .collect())
}

/// The unread count and head cursor of the given users, in one statement. Both come from one
/// row, written by the same commits: no commit falls between the two numbers.
async fn unread_heads_of(
    pool: SqlitePool,
    users: Vec<UserId>,
) -> anyhow::Result<HashMap<UserId, (i64, i64)>> {
    let mut qb = QueryBuilder::<Sqlite>::new(
        "SELECT user_id, unread, last_cursor FROM user_cursors WHERE user_id IN ",
    );
    let keys: Vec<&str> = users.iter().map(UserId::as_str).collect();
    push_list(&mut qb, padded(&keys));
    let rows = qb
        .build()
        .fetch_all(&pool)
        .await
        .context("reading unread counts")?;
    let rows: HashMap<&str, (i64, i64)> = rows
        .iter()
        .map(|row| {
            Ok((
                row.try_get::<&str, _>("user_id")?,
                (row.try_get("unread")?, row.try_get("last_cursor")?),
            ))
        })
        .collect::<Result<_, sqlx::Error>>()?;
    Ok(users
        .into_iter()
        .filter_map(|user| {
            let found = *rows.get(user.as_str())?;
            Some((user, found))
        })
        .collect())
}

/// The unread snapshots of the given users, each with up to its own number of newest unread
/// notifications, in one statement: one snapshot, so each count, head and list agree. Each
/// user's walk down their notifications stops once it has found as many as they have unread.
async fn unread_summaries_of(
    pool: SqlitePool,
    keys: Vec<(UserId, u32)>,
) -> anyhow::Result<HashMap<(UserId, u32), UnreadSnapshot>> {
    let most = i64::from(keys.iter().map(|(_, latest)| *latest).max().unwrap_or(0));
    let users: Vec<&str> = keys
        .iter()
        .map(|(user, _)| user.as_str())
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let users = padded(&users);
    // The users' rows of `user_cursors`, then each user's newest unread: one compound statement.
    let mut qb = QueryBuilder::<Sqlite>::new(
        "SELECT user_id AS owner, unread, last_cursor, NULL AS id, NULL AS cursor, NULL AS kind, \
         NULL AS data, NULL AS created_at, NULL AS updated_at, NULL AS read_at \
         FROM user_cursors WHERE user_id IN ",
    );
    push_list(&mut qb, users.iter().copied());
    for user in &users {
        qb.push(
            " UNION ALL SELECT * FROM (SELECT user_id AS owner, NULL, NULL, \
             id, cursor, kind, data, created_at, updated_at, read_at FROM notifications \
             WHERE user_id = ",
        );
        qb.push_bind(*user);
        qb.push(" AND read_at IS NULL ORDER BY cursor DESC LIMIT MIN(");
        qb.push_bind(most);
        qb.push(", COALESCE((SELECT unread FROM user_cursors WHERE user_id = ");
        qb.push_bind(*user);
        qb.push("), 0)))");
    }
    let rows = qb
        .build()
        .fetch_all(&pool)
        .await
        .context("reading unread summaries")?;
    let mut heads: HashMap<&str, (u64, Cursor)> = HashMap::new();
    let mut newest: HashMap<&str, Vec<Notification>> = HashMap::new();
    for row in &rows {
        let owner: &str = row.try_get("owner")?;
        if row.try_get::<Option<&str>, _>("id")?.is_some() {
            newest
                .entry(owner)
                .or_default()
                .push(notification_from_row(row)?);
        } else {
            let unread: i64 = row.try_get("unread")?;
            let head = Cursor(row.try_get("last_cursor")?);
            heads.insert(owner, (u64::try_from(unread).unwrap_or(0), head));
        }
    }
    for list in newest.values_mut() {
        list.sort_by_key(|n| std::cmp::Reverse(n.cursor));
    }
    Ok(keys
        .into_iter()
        .filter_map(|(user, latest)| {
            let (count, head) = *heads.get(user.as_str())?;
            let mut list = newest.get(user.as_str()).cloned().unwrap_or_default();
            list.truncate(latest as usize);
            let snapshot = UnreadSnapshot {
                count,
                head,
                latest: list,
            };
            Some(((user, latest), snapshot))
        })
        .collect())
}

/// How often the WAL is copied back into the database file.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);

/// Copies committed WAL frames into the database file from its own connection, beside the
/// writer (a passive checkpoint never blocks it), until the store is dropped.
async fn checkpoint_loop(pool: SqlitePool, store: WriterAlive) {
    let mut tick = tokio::time::interval(CHECKPOINT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if !store.is_alive() {
            break;
        }
        if let Err(error) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
            .execute(&pool)
            .await
        {
            tracing::warn!(error = ?error, "WAL checkpoint failed; retrying");
        }
    }
    pool.close().await;
}

pub(super) fn to_ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

pub(super) fn from_ms(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

pub(super) fn notification_from_row(row: &SqliteRow) -> anyhow::Result<Notification> {
    let id: String = row.try_get("id")?;
    let kind: String = row.try_get("kind")?;
    let data: &str = row.try_get("data")?;
    let read_at: Option<i64> = row.try_get("read_at")?;
    Ok(Notification {
        id: Uuid::parse_str(&id).context("stored notification id")?,
        cursor: Cursor(row.try_get("cursor")?),
        event: Event::from_stored(&kind, data)
            .with_context(|| format!("stored event of kind {kind} does not parse"))?,
        created_at: from_ms(row.try_get("created_at")?),
        updated_at: from_ms(row.try_get("updated_at")?),
        read: read_at.is_some(),
    })
}

pub(super) const COLUMNS: &str = "id, cursor, kind, data, created_at, updated_at, read_at";

/// Runs `SELECT ... WHERE (a, b) IN (VALUES ...)` in chunks; `prefix` ends with `IN (VALUES `.
/// Unread notifications that collapse, by (user, collapse key). The `IS NOT NULL` term lets
/// SQLite use the partial index on collapse keys.
fn collapse_lookup() -> String {
    format!(
        "SELECT {COLUMNS}, user_id, collapse_key FROM notifications \
         WHERE collapse_key IS NOT NULL AND (user_id, collapse_key) IN (VALUES "
    )
}

async fn select_pairs(
    tx: &mut Transaction<'_, Sqlite>,
    prefix: &str,
    pairs: &[(String, String)],
) -> anyhow::Result<Vec<SqliteRow>> {
    let mut rows = Vec::new();
    for chunk in pairs.chunks(ROWS_PER_STATEMENT) {
        let mut qb = QueryBuilder::<Sqlite>::new(prefix);
        let mut values = qb.separated(", ");
        for (a, b) in chunk {
            values
                .push("(")
                .push_bind_unseparated(a.clone())
                .push_unseparated(", ");
            values
                .push_bind_unseparated(b.clone())
                .push_unseparated(")");
        }
        qb.push(")");
        rows.extend(qb.build().fetch_all(&mut **tx).await?);
    }
    Ok(rows)
}

/// The writer's side of SQLite, for the group-commit task.
struct SqliteBackend {
    pool: SqlitePool,
}

#[async_trait]
impl Backend for SqliteBackend {
    async fn begin(&self) -> anyhow::Result<Box<dyn GroupTx>> {
        // SQLite has one writer: taking the write lock at the start makes every read of the
        // group a locked read, so `lock_heads` needs nothing more.
        let tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .context("begin write")?;
        Ok(Box::new(SqliteTx { tx }))
    }

    async fn ping(&self) -> anyhow::Result<()> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .context("pinging the SQLite writer")?;
        Ok(())
    }
}

/// One group's transaction on the writer connection.
pub(super) struct SqliteTx {
    pub(super) tx: Transaction<'static, Sqlite>,
}

fn stored_from_row(row: &SqliteRow) -> anyhow::Result<Stored> {
    Ok(Stored {
        notification: notification_from_row(row)?,
        user: UserId::parse(row.try_get::<String, _>("user_id")?).map_err(anyhow::Error::msg)?,
        collapse_key: row.try_get("collapse_key")?,
    })
}

#[async_trait]
impl GroupTx for SqliteTx {
    async fn idempotency_keys(
        &mut self,
        pairs: &[(String, String)],
    ) -> anyhow::Result<HashMap<(String, String), Uuid>> {
        let prefix = "SELECT user_id, key, notification_id FROM idempotency_keys \
                      WHERE (user_id, key) IN (VALUES ";
        let mut seen = HashMap::new();
        for row in select_pairs(&mut self.tx, prefix, pairs).await? {
            let id: String = row.try_get("notification_id")?;
            seen.insert(
                (row.try_get("user_id")?, row.try_get("key")?),
                Uuid::parse_str(&id)?,
            );
        }
        Ok(seen)
    }

    async fn notifications(&mut self, ids: &[Uuid]) -> anyhow::Result<Vec<Stored>> {
        let mut found = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(ROWS_PER_STATEMENT) {
            let mut qb = QueryBuilder::<Sqlite>::new(format!(
                "SELECT {COLUMNS}, user_id, collapse_key FROM notifications WHERE id IN "
            ));
            push_list(&mut qb, chunk.iter().map(Uuid::to_string));
            for row in qb.build().fetch_all(&mut *self.tx).await? {
                found.push(stored_from_row(&row)?);
            }
        }
        Ok(found)
    }

    async fn open_collapsible(
        &mut self,
        pairs: &[(String, String)],
    ) -> anyhow::Result<Vec<Stored>> {
        select_pairs(&mut self.tx, &collapse_lookup(), pairs)
            .await?
            .iter()
            .map(stored_from_row)
            .collect()
    }

    async fn finish(
        mut self: Box<Self>,
        folded: FoldedRows<'_>,
        writes: AppendWrites,
        now: DateTime<Utc>,
    ) -> anyhow::Result<()> {
        // Every write after the look-ups goes to SQLite in one round trip: the folded
        // matchmaking rows and the events' rows, which touch different tables.
        let mut statements = Statements::new();
        sqlite_play::write_folded(&mut statements, &folded, now)?;
        write_appends(&mut statements, &writes, now);
        statements.run(&mut self.tx, "writing the group").await?;
        self.tx.commit().await.context("commit write")?;
        Ok(())
    }
}

/// The statements that write a group's appends: new rows, moved rows, heads, keys.
fn write_appends<'a>(writes: &mut Statements<'a>, planned: &'a AppendWrites, now: DateTime<Utc>) {
    for chunk in planned.new_rows.chunks(ROWS_PER_STATEMENT) {
        writes
            .start(
                "INSERT INTO notifications \
                 (id, user_id, cursor, kind, data, collapse_key, created_at, updated_at) ",
            )
            .push_values(chunk, |mut b, row| {
                let n = &row.notification;
                b.push_bind(n.id.to_string())
                    .push_bind(row.user.as_str())
                    .push_bind(n.cursor.0)
                    .push_bind(n.event.kind().as_str())
                    .push_bind(row.data.as_str())
                    .push_bind(row.collapse_key.as_deref())
                    .push_bind(to_ms(n.created_at))
                    .push_bind(to_ms(n.updated_at));
            });
    }
    for row in &planned.moved {
        writes
            .start("UPDATE notifications SET cursor = ")
            .push_bind(row.cursor)
            .push(", data = ")
            .push_bind(row.data.as_str())
            .push(", updated_at = ")
            .push_bind(to_ms(now))
            .push(" WHERE id = ")
            .push_bind(row.id.to_string());
    }
    for chunk in planned.heads.chunks(ROWS_PER_STATEMENT) {
        writes
            .start("INSERT INTO user_cursors (user_id, last_cursor, unread) ")
            .push_values(chunk, |mut b, head| {
                b.push_bind(head.user.as_str())
                    .push_bind(head.last_cursor)
                    .push_bind(head.created);
            })
            .push(
                " ON CONFLICT (user_id) DO UPDATE SET last_cursor = excluded.last_cursor, \
                 unread = unread + excluded.unread",
            );
    }
    for chunk in planned.keys.chunks(ROWS_PER_STATEMENT) {
        writes
            .start("INSERT INTO idempotency_keys (user_id, key, notification_id, created_at) ")
            .push_values(chunk, |mut b, (user, key, id)| {
                b.push_bind(user.as_str())
                    .push_bind(key.as_str())
                    .push_bind(id.to_string())
                    .push_bind(to_ms(now));
            })
            // A key whose notification retention removed is taken again.
            .push(
                " ON CONFLICT (user_id, key) DO UPDATE SET \
                 notification_id = excluded.notification_id, created_at = excluded.created_at",
            );
    } // One statement per job: its user's devices at this moment. A collapsed notification that
    // still waits for its push is due again from now (`WHERE true` keeps `ON` unambiguous).
    for job in &planned.push_jobs {
        writes
            .start(
                "INSERT INTO push_jobs \
                 (device_id, user_id, notification_id, due_at, attempts, created_at) \
                 SELECT id, user_id, ",
            )
            .push_bind(job.notification.to_string())
            .push(", ")
            .push_bind(job.due_at)
            .push(", 0, ")
            .push_bind(to_ms(now))
            .push(" FROM push_devices WHERE user_id = ")
            .push_bind(job.user.as_str())
            .push(
                " ON CONFLICT (device_id, notification_id) DO UPDATE SET \
                 due_at = excluded.due_at, attempts = 0",
            );
    }
}

#[async_trait]
impl Store for SqliteStore {
    fn enable_push(&self, filter: Arc<dyn super::push::PushFilter>) {
        self.writes.enable_push(filter);
    }

    async fn apply_many(
        &self,
        works: Vec<(Vec<Change>, Vec<NewEvent>)>,
        on_commit: OnCommit,
    ) -> anyhow::Result<Vec<Applied>> {
        self.writes.apply_many(works, on_commit).await
    }

    async fn get_match(&self, id: Uuid) -> anyhow::Result<Option<Match>> {
        sqlite_play::get_match(&self.reader, id).await
    }

    async fn live_matches(&self) -> anyhow::Result<Vec<Match>> {
        sqlite_play::live_matches(&self.reader).await
    }

    async fn pending_challenges(&self) -> anyhow::Result<Vec<Challenge>> {
        sqlite_play::pending_challenges(&self.reader, None).await
    }

    async fn matchmaker_fence(&self) -> anyhow::Result<super::MatchmakerFence> {
        sqlite_play::matchmaker_fence(&self.reader).await
    }

    async fn queued_tickets(&self) -> anyhow::Result<Vec<QueuedTicket>> {
        sqlite_play::queued_tickets(&self.reader, None).await
    }

    async fn standing_of(&self, user: &UserId) -> anyhow::Result<super::StoredStanding> {
        sqlite_play::standing_of(&self.reader, user).await
    }

    async fn latest_match(&self, user: &UserId) -> anyhow::Result<Option<Match>> {
        sqlite_play::latest_match_of(&self.reader, user).await
    }

    async fn user_known(&self, user: &UserId) -> anyhow::Result<bool> {
        sqlite_play::user_known(&self.reader, user).await
    }

    async fn rating(
        &self,
        user: &UserId,
        discipline: Discipline,
    ) -> anyhow::Result<Option<Rating>> {
        look_up(&self.ratings, (user.clone(), discipline), "rating").await
    }

    async fn leaderboard(
        &self,
        discipline: Discipline,
        offset: u32,
        limit: u32,
    ) -> anyhow::Result<Vec<LeaderboardEntry>> {
        sqlite_play::leaderboard(&self.reader, discipline, offset, limit).await
    }

    async fn events_after(
        &self,
        user: &UserId,
        after: Cursor,
        limit: u32,
    ) -> anyhow::Result<Vec<Notification>> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM notifications WHERE user_id = ?1 AND cursor > ?2 \
             ORDER BY cursor ASC LIMIT ?3"
        ))
        .bind(user.as_str())
        .bind(after.0)
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await
        .context("reading events after a cursor")?;
        rows.iter().map(notification_from_row).collect()
    }

    async fn head(&self, user: &UserId) -> anyhow::Result<Cursor> {
        let last: Option<i64> =
            sqlx::query_scalar("SELECT last_cursor FROM user_cursors WHERE user_id = ?1")
                .bind(user.as_str())
                .fetch_optional(&self.reader)
                .await
                .context("reading the user's head cursor")?;
        Ok(Cursor(last.unwrap_or(0)))
    }

    async fn list(&self, user: &UserId, query: ListQuery) -> anyhow::Result<Vec<Notification>> {
        // Without an index of unread rows, the walk down the user's stream stops once it has
        // found as many as the user has unread, not at the end of their history.
        let (unread, limit) = if query.unread_only {
            (
                " AND read_at IS NULL",
                "MIN(?3, COALESCE((SELECT unread FROM user_cursors WHERE user_id = ?1), 0))",
            )
        } else {
            ("", "?3")
        };
        let (bound, order, cursor) = match query.page {
            Page::Newest { before: Some(c) } => (" AND cursor < ?2", "DESC", c.0),
            Page::Newest { before: None } => (" AND cursor < ?2", "DESC", i64::MAX),
            Page::After(c) => (" AND cursor > ?2", "ASC", c.0),
        };
        let sql = format!(
            "SELECT {COLUMNS} FROM notifications WHERE user_id = ?1{bound}{unread} \
             ORDER BY cursor {order} LIMIT {limit}"
        );
        let rows = sqlx::query(&sql)
            .bind(user.as_str())
            .bind(cursor)
            .bind(i64::from(query.limit))
            .fetch_all(&self.reader)
            .await
            .context("listing notifications")?;
        rows.iter().map(notification_from_row).collect()
    }

    async fn unread_count(&self, user: &UserId) -> anyhow::Result<u64> {
        Ok(self.unread_as_of(user).await?.0)
    }

    async fn unread_as_of(&self, user: &UserId) -> anyhow::Result<(u64, Cursor)> {
        let (count, head) = look_up(&self.heads, user.clone(), "unread count")
            .await?
            .unwrap_or((0, 0));
        Ok((u64::try_from(count).unwrap_or(0), Cursor(head)))
    }

    async fn unread_summary(&self, user: &UserId, latest: u32) -> anyhow::Result<UnreadSnapshot> {
        let found = look_up(&self.summaries, (user.clone(), latest), "unread summary").await?;
        Ok(found.unwrap_or(UnreadSnapshot {
            count: 0,
            head: Cursor(0),
            latest: Vec::new(),
        }))
    }

    async fn mark_read(&self, user: &UserId, selector: &ReadSelector) -> anyhow::Result<u64> {
        if matches!(selector, ReadSelector::Ids(ids) if ids.is_empty()) {
            return Ok(0);
        }
        let now = to_ms(Utc::now());
        // Clearing collapse_key ends collapsing: the next like of that post is a new notification.
        let base = "UPDATE notifications SET read_at = ?1, collapse_key = NULL \
                    WHERE user_id = ?2 AND read_at IS NULL";
        let sql = match selector {
            ReadSelector::All => base.to_owned(),
            ReadSelector::UpTo(_) => format!("{base} AND cursor <= ?3"),
            ReadSelector::Ids(ids) => {
                let marks: Vec<String> = (0..ids.len()).map(|i| format!("?{}", i + 3)).collect();
                format!("{base} AND id IN ({})", marks.join(", "))
            }
        };
        let mut q = sqlx::query(&sql).bind(now).bind(user.as_str());
        match selector {
            ReadSelector::All => {}
            ReadSelector::UpTo(c) => q = q.bind(c.0),
            ReadSelector::Ids(ids) => {
                for id in ids {
                    q = q.bind(id.to_string());
                }
            }
        }
        // The rows and the count change in one transaction.
        let mut tx = self
            .writer
            .begin_with("BEGIN IMMEDIATE")
            .await
            .context("begin marking read")?;
        let marked = q
            .execute(&mut *tx)
            .await
            .context("marking notifications read")?
            .rows_affected();
        if marked > 0 {
            sqlx::query("UPDATE user_cursors SET unread = unread - ?1 WHERE user_id = ?2")
                .bind(i64::try_from(marked)?)
                .bind(user.as_str())
                .execute(&mut *tx)
                .await
                .context("lowering the unread count")?;
        }
        tx.commit().await.context("commit marking read")?;
        Ok(marked)
    }

    async fn delete_read_before(&self, before: DateTime<Utc>, limit: u32) -> anyhow::Result<u64> {
        // Oldest rows first: the walk stops after `limit` of them.
        let result = sqlx::query(
            "DELETE FROM notifications WHERE rowid IN (SELECT rowid FROM notifications \
             WHERE read_at IS NOT NULL AND updated_at < ?1 ORDER BY rowid LIMIT ?2)",
        )
        .bind(to_ms(before))
        .bind(i64::from(limit))
        .execute(&self.writer)
        .await
        .context("deleting old read notifications")?;
        Ok(result.rows_affected())
    }

    async fn delete_read_beyond(
        &self,
        keep: u32,
        before: DateTime<Utc>,
        limit: u32,
    ) -> anyhow::Result<u64> {
        // Only a user whose head is past `keep` can have more than `keep` rows; for each, the
        // rows below their `keep`-th newest cursor.
        let result = sqlx::query(
            "DELETE FROM notifications WHERE rowid IN (SELECT n.rowid FROM user_cursors u \
             JOIN notifications n ON n.user_id = u.user_id \
             WHERE u.last_cursor > ?1 AND n.read_at IS NOT NULL AND n.updated_at < ?2 \
             AND n.cursor <= (SELECT cursor FROM notifications \
                              WHERE user_id = u.user_id ORDER BY cursor DESC LIMIT 1 OFFSET ?1) \
             LIMIT ?3)",
        )
        .bind(i64::from(keep))
        .bind(to_ms(before))
        .bind(i64::from(limit))
        .execute(&self.writer)
        .await
        .context("deleting read notifications beyond the per-user limit")?;
        Ok(result.rows_affected())
    }

    async fn expire_idempotency_keys(&self, before: DateTime<Utc>) -> anyhow::Result<u64> {
        let result = sqlx::query("DELETE FROM idempotency_keys WHERE created_at < ?1")
            .bind(to_ms(before))
            .execute(&self.writer)
            .await
            .context("expiring idempotency keys")?;
        Ok(result.rows_affected())
    }

    fn memory_bytes(&self) -> Option<u64> {
        // SAFETY: `sqlite3_memory_used` takes no arguments and only reads SQLite's own counter
        // (kept under its memory mutex); it is callable from any thread once the library is
        // loaded, which opening the pools has done.
        let used = unsafe { libsqlite3_sys::sqlite3_memory_used() };
        u64::try_from(used).ok()
    }

    async fn database_size_bytes(&self) -> anyhow::Result<u64> {
        let bytes: i64 = sqlx::query_scalar(
            "SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()",
        )
        .fetch_one(&self.reader)
        .await
        .context("reading the SQLite database size")?;
        Ok(u64::try_from(bytes).unwrap_or(0))
    }

    async fn ping(&self) -> anyhow::Result<()> {
        sqlx::query("SELECT 1")
            .execute(&self.reader)
            .await
            .context("pinging SQLite")?;
        // Reads alone would say ready while every write fails.
        self.writes.ping().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Readiness covers the writer: with its connection gone, reads still work but every write
    /// would fail, so the store is not ready.
    #[tokio::test]
    async fn the_store_is_not_ready_when_its_writer_connection_is_gone() {
        use crate::store::Store;
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let url = format!("sqlite://{}/belay.db", dir.path().display());
        let store = SqliteStore::connect(&url, 2)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(store.ping().await.is_ok());
        store.writer.close().await;
        let ana = UserId::parse("ana").unwrap_or_else(|e| panic!("{e}"));
        assert!(store.head(&ana).await.is_ok(), "reads still work");
        assert!(store.ping().await.is_err(), "but the store is not ready");
    }

    /// A group's writes go to SQLite in one round trip; a statement that fails late in it
    /// (here the events' rows, after the climbers' rows) leaves nothing of the group behind.
    #[tokio::test]
    async fn a_write_failing_late_in_the_group_keeps_nothing_of_it() {
        use crate::domain::{Event, PostId, PostLiked};
        use crate::store::{Change, NewEvent, Store};
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let url = format!("sqlite://{}/belay.db", dir.path().display());
        let store = SqliteStore::connect(&url, 2)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let user = |s: &str| UserId::parse(s).unwrap_or_else(|e| panic!("{e}"));
        let like = |to: &str, post: &str| NewEvent {
            user: user(to),
            event: Event::PostLiked(PostLiked::new(
                PostId::parse(post).unwrap_or_else(|e| panic!("{e}")),
                user("carl"),
            )),
            idempotency_key: None,
        };
        sqlx::query(
            "CREATE TRIGGER refuse_bob BEFORE INSERT ON notifications \
             WHEN NEW.user_id = 'bob' BEGIN SELECT RAISE(ABORT, 'refused'); END",
        )
        .execute(&store.writer)
        .await
        .unwrap_or_else(|e| panic!("{e}"));

        let works = vec![(
            vec![Change::SeeUser(user("ana"))],
            vec![like("ana", "p1"), like("bob", "p1")],
        )];
        let failed = store.apply_many(works, Box::new(|_| {})).await;
        assert!(failed.is_err(), "the trigger refuses Bob's row");
        assert!(!store.user_known(&user("ana")).await.unwrap_or(true));
        assert_eq!(store.head(&user("ana")).await.ok(), Some(Cursor::ZERO));
        assert_eq!(store.unread_count(&user("ana")).await.ok(), Some(0));

        // Without Bob's row, the same group goes through whole.
        let works = vec![(vec![Change::SeeUser(user("ana"))], vec![like("ana", "p1")])];
        let applied = store
            .apply_many(works, Box::new(|_| {}))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(applied[0].appended[0].notification.cursor, Cursor(1));
        assert!(store.user_known(&user("ana")).await.unwrap_or(false));
    }

    /// The pool never closes the writer's one connection (an in-memory database lives in it and
    /// would be lost), and no pool pings a connection before lending it (one more round trip to
    /// SQLite's thread per group or read).
    #[tokio::test]
    async fn the_writer_connection_is_never_retired_or_pinged() {
        for url in ["sqlite::memory:", "sqlite://{dir}/belay.db"] {
            let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
            let url = url.replace("{dir}", &dir.path().display().to_string());
            let store = SqliteStore::connect(&url, 2)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            let writer = store.writer.options();
            assert_eq!(writer.get_max_connections(), 1, "{url}");
            assert_eq!(writer.get_min_connections(), 1, "{url}");
            assert_eq!(writer.get_max_lifetime(), None, "{url}");
            assert_eq!(writer.get_idle_timeout(), None, "{url}");
            assert!(!writer.get_test_before_acquire(), "{url}");
            assert!(!store.reader.options().get_test_before_acquire(), "{url}");
        }
    }

    /// Committed events reach the database file itself, not only the WAL, without the writer
    /// checkpointing: the background checkpoint copies them over.
    #[tokio::test]
    async fn a_background_checkpoint_moves_commits_into_the_database_file() {
        use crate::domain::{Event, PostId, PostLiked, UserId};
        use crate::store::{NewEvent, Store};
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let db = dir.path().join("belay.db");
        let store = SqliteStore::connect(&format!("sqlite://{}", db.display()), 2)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let user = |s: &str| UserId::parse(s).unwrap_or_else(|e| panic!("{e}"));
        let events: Vec<NewEvent> = (0..50)
            .map(|i| NewEvent {
                user: user("ana"),
                event: Event::PostLiked(PostLiked::new(
                    PostId::parse(format!("p{i}")).unwrap_or_else(|e| panic!("{e}")),
                    user("bob"),
                )),
                idempotency_key: None,
            })
            .collect();
        store.append(events).await.unwrap_or_else(|e| panic!("{e}"));

        // The database file alone, without its WAL, until the checkpoint has copied them (a
        // deadline, not a timing claim: it is normally there after one tick).
        let copy = dir.path().join("copy.db");
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            tokio::time::sleep(CHECKPOINT_EVERY).await;
            std::fs::copy(&db, &copy).unwrap_or_else(|e| panic!("{e}"));
            let pool = SqlitePoolOptions::new()
                .max_connections(1)
                .connect(&format!("sqlite://{}", copy.display()))
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM notifications")
                .fetch_one(&pool)
                .await
                .unwrap_or(0);
            pool.close().await;
            let _ = std::fs::remove_file(dir.path().join("copy.db-wal"));
            if n == 50 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the database file holds {n} of 50 events"
            );
        }
    }

    /// One connection to a fresh in-memory database, no migrations applied.
    async fn memory_pool() -> SqlitePool {
        SqlitePoolOptions::new()
            .max_connections(1)
            .connect("sqlite::memory:")
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// A database from before the unread counter gets each user's count of unread rows.
    #[tokio::test]
    async fn the_unread_counter_migration_counts_what_is_unread() {
        let pool = memory_pool().await;
        for sql in [
            include_str!("../../migrations/sqlite/0001_notifications.sql"),
            include_str!("../../migrations/sqlite/0002_matchmaking.sql"),
            include_str!("../../migrations/sqlite/0003_queue_tickets.sql"),
            include_str!("../../migrations/sqlite/0004_partial_collapse_index.sql"),
        ] {
            sqlx::raw_sql(sql)
                .execute(&pool)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
        }
        // ana: three rows, one read; bob: one read row; cy: none.
        sqlx::raw_sql(
            "INSERT INTO user_cursors VALUES ('ana', 3), ('bob', 1), ('cy', 0);
             INSERT INTO notifications (id, user_id, cursor, kind, data, created_at, updated_at, read_at)
             VALUES ('a1', 'ana', 1, 'post_liked', '{}', 1, 1, 5),
                    ('a2', 'ana', 2, 'post_liked', '{}', 1, 1, NULL),
                    ('a3', 'ana', 3, 'post_liked', '{}', 1, 1, NULL),
                    ('b1', 'bob', 1, 'post_liked', '{}', 1, 1, 5);",
        )
        .execute(&pool)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        sqlx::raw_sql(include_str!(
            "../../migrations/sqlite/0005_unread_counter.sql"
        ))
        .execute(&pool)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        let counts: Vec<(String, i64)> =
            sqlx::query_as("SELECT user_id, unread FROM user_cursors ORDER BY user_id")
                .fetch_all(&pool)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            counts,
            vec![("ana".into(), 2), ("bob".into(), 0), ("cy".into(), 0)]
        );
    }

    /// Looking up open collapse keys searches the partial index, however many pairs a group has.
    #[tokio::test]
    async fn the_collapse_lookup_searches_its_index() {
        let pool = memory_pool().await;
        MIGRATOR.run(&pool).await.unwrap_or_else(|e| panic!("{e}"));
        for n in [1, 3] {
            let pairs: Vec<(String, String)> =
                (0..n).map(|i| (format!("u{i}"), format!("k{i}"))).collect();
            let mut tx = pool.begin().await.unwrap_or_else(|e| panic!("{e}"));
            let query = format!("EXPLAIN QUERY PLAN {}", collapse_lookup());
            let plan: Vec<String> = select_pairs(&mut tx, &query, &pairs)
                .await
                .unwrap_or_else(|e| panic!("{e}"))
                .iter()
                .map(|r| r.try_get::<String, _>("detail").unwrap_or_default())
                .collect();
            assert!(
                plan.iter().any(|d| d
                    .starts_with("SEARCH notifications USING INDEX notifications_user_collapse")),
                "{n} pairs: {plan:?}"
            );
        }
    }
}
