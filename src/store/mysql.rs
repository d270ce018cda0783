//! MariaDB / MySQL 8 backend: a pool of readers, a small pool for the group-commit writer, and
//! the head rows of `user_cursors` locked with `SELECT … FOR UPDATE` as the serialisation point
//! of each user, so that several nodes can write to one database.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::mysql::{MySqlConnectOptions, MySqlDatabaseError, MySqlPool, MySqlPoolOptions, MySqlRow};
use sqlx::{Connection, Executor, MySql, MySqlConnection, QueryBuilder, Row, Transaction};
use tokio::sync::mpsc;
use uuid::Uuid;

use super::mysql_play;
use super::rules::{AppendWrites, FoldedRows, Stored};
use super::writer::{
    Backend, GroupTx, Lookup, Writer, is_conflict, jitter, look_up, padded, spawn_lookups,
};
use super::{
    Applied, Change, ListQuery, NewEvent, OnCommit, Page, ReadSelector, Store, UnreadSnapshot,
};
use crate::domain::{
    Challenge, Cursor, Discipline, Event, LeaderboardEntry, Match, Notification, QueuedTicket,
    Rating, UserId,
};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/mysql");

/// How long one wait for another node's migrations lasts before it is logged and waited again.
const MIGRATION_LOCK_WAIT_SECS: u32 = 5;

/// Applies the migrations holding a named lock of this database, on a connection of its own, so
/// that nodes started together take turns. sqlx's own lock asks to wait for ever with a negative
/// timeout, which MariaDB answers at once with NULL (no lock, no wait): without this, nodes
/// started together on a new database, or after an upgrade that brings a migration, find the
/// migration another node is applying and exit with an error. Closing the connection frees the
/// lock, also when a migration fails.
async fn migrate(options: &MySqlConnectOptions, database: &str) -> anyhow::Result<()> {
    let mut conn = MySqlConnection::connect_with(options).await?;
    // Lock names are server-wide and at most 64 characters.
    let name: String = format!("belay-migrations:{database}")
        .chars()
        .take(64)
        .collect();
    loop {
        let locked: Option<i64> = sqlx::query_scalar("SELECT GET_LOCK(?, ?)")
            .bind(&name)
            .bind(MIGRATION_LOCK_WAIT_SECS)
            .fetch_one(&mut conn)
            .await
            .context("taking the migration lock")?;
        match locked {
            Some(1) => break,
            Some(_) => tracing::info!("waiting for another node to finish the migrations"),
            None => anyhow::bail!("the server refused the migration lock {name:?}"),
        }
    }
    let applied = MIGRATOR.run_direct(&mut conn).await;
    conn.close().await.ok();
    Ok(applied?)
}

/// How long `connect` and every later acquire wait for a connection before failing: an
/// unreachable server is reported within this, and the caller decides whether to try again.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);
/// Every session reads what was committed before each statement (so a read after taking a
/// head-row lock sees what the previous holder wrote) and takes no gap locks. A row lock is
/// waited for 5 s at most: a group holds its locks for milliseconds, so a longer wait means
/// something is stuck, and the group is run again rather than held for the default 50 s.
const SESSION_SETUP: &str = "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED; \
                             SET SESSION innodb_lock_wait_timeout = 5";
/// Connections of the writer: one runs a group while the pool checks the other on its return.
const WRITER_CONNECTIONS: u32 = 2;
/// Prepared statements sqlx keeps per reader connection. Every reader statement has a fixed
/// text or a padded list (a power of two up to its batch size): about 55 shapes in all.
const READER_STATEMENT_CACHE: usize = 64;
/// Prepared statements sqlx keeps per writer connection. Multi-row writes take one text per row
/// count; the least recently used is closed on the server when the cache is full, so a steady
/// load keeps its few shapes prepared and a varied one pays one prepare per shape it lacks
/// (400 groups of 1 to 40 events: 4.1–5.0 s with this cache, 7.1 s preparing every statement).
///
/// The server allows `max_prepared_stmt_count` (16,382 by default) statements in all. A node
/// holds at most `max_connections × 64 + 2 × 128`: 512 with the default 4 connections (32 nodes
/// stay below the limit), 2,304 with 32 connections (7 nodes).
const WRITER_STATEMENT_CACHE: usize = 128;
/// Rows per multi-row statement (a prepared statement takes at most 65,535 parameters; matches
/// bind 8 a row).
pub(super) const ROWS_PER_STATEMENT: usize = 500;
/// Look-ups one statement answers at most.
const MAX_LOOKUP_BATCH: usize = 256;
/// Unread summaries one statement answers at most: its text grows by a subquery per user.
const MAX_SUMMARY_BATCH: usize = 32;
/// Times a `mark_read` that lost a deadlock or a lock wait runs before its caller sees the error.
const MARK_READ_ATTEMPTS: u32 = 5;
/// The first wait before running it again; it doubles, with jitter, each time.
const MARK_READ_BACKOFF: Duration = Duration::from_millis(5);
/// `ER_LOCK_WAIT_TIMEOUT`: with `innodb_rollback_on_timeout=OFF` (the default) only the
/// statement was undone, so the whole transaction is rolled back (dropped) before a retry.
const ER_LOCK_WAIT_TIMEOUT: u16 = 1205;

pub struct MySqlStore {
    writes: Writer,
    ratings: mpsc::Sender<Lookup<(UserId, Discipline), Rating>>,
    heads: mpsc::Sender<Lookup<UserId, (i64, i64)>>,
    summaries: mpsc::Sender<Lookup<(UserId, u32), UnreadSnapshot>>,
    pub(super) preferences: mpsc::Sender<Lookup<UserId, String>>,
    pub(super) pool: MySqlPool,
}

/// Pool settings shared by readers and the writer. Connections are not pinged before use:
/// sqlx pings each one when it comes back to the pool already.
fn pool_options(connections: u32) -> MySqlPoolOptions {
    MySqlPoolOptions::new()
        .max_connections(connections)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .test_before_acquire(false)
        .after_connect(|conn, _meta| {
            Box::pin(async move {
                conn.execute(SESSION_SETUP).await?;
                Ok(())
            })
        })
}

impl MySqlStore {
    pub async fn connect(url: &str, max_connections: u32) -> anyhow::Result<MySqlStore> {
        // The URL may hold a password: errors name the server and database only.
        let options = MySqlConnectOptions::from_str(url).context("parsing the MySQL url")?;
        let place = format!(
            "{}:{}/{}",
            options.get_host(),
            options.get_port(),
            options.get_database().unwrap_or_default()
        );
        let pool = pool_options(max_connections.max(1))
            .connect_with(
                options
                    .clone()
                    .statement_cache_capacity(READER_STATEMENT_CACHE),
            )
            .await
            .with_context(|| format!("connecting to MariaDB/MySQL at {place}"))?;
        migrate(&options, options.get_database().unwrap_or_default())
            .await
            .context("applying MariaDB/MySQL migrations")?;
        let writer = pool_options(WRITER_CONNECTIONS)
            .connect_with(options.statement_cache_capacity(WRITER_STATEMENT_CACHE))
            .await
            .with_context(|| format!("connecting the writer to MariaDB/MySQL at {place}"))?;
        let writes = Writer::spawn(Arc::new(MySqlBackend { pool: writer }));
        let reader = pool.clone();
        let ratings = spawn_lookups(MAX_LOOKUP_BATCH, move |keys| {
            ratings_by_key(reader.clone(), keys)
        });
        let reader = pool.clone();
        let heads = spawn_lookups(MAX_LOOKUP_BATCH, move |users| {
            unread_heads_of(reader.clone(), users)
        });
        let reader = pool.clone();
        let summaries = spawn_lookups(MAX_SUMMARY_BATCH, move |keys| {
            unread_summaries_of(reader.clone(), keys)
        });
        let lookup_pool = pool.clone();
        let preferences = spawn_lookups(MAX_LOOKUP_BATCH, move |users| {
            super::mysql_push::preferences_of(lookup_pool.clone(), users)
        });
        Ok(MySqlStore {
            writes,
            ratings,
            heads,
            summaries,
            preferences,
            pool,
        })
    }
}

/// A lock wait that timed out (see [`ER_LOCK_WAIT_TIMEOUT`]).
fn lock_wait_timed_out(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        matches!(
            cause.downcast_ref::<sqlx::Error>(),
            Some(sqlx::Error::Database(db))
                if db.try_downcast_ref::<MySqlDatabaseError>()
                    .is_some_and(|e| e.number() == ER_LOCK_WAIT_TIMEOUT)
        )
    })
}

/// Whether a transaction that failed with `error` may succeed when run again from the start.
fn retryable(error: &anyhow::Error) -> bool {
    is_conflict(error) || lock_wait_timed_out(error)
}

pub(super) fn to_ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

pub(super) fn from_ms(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

/// A text column that may be NULL. Read as bytes: the server flags `ascii_bin` columns as
/// binary, and sqlx refuses to decode a binary column as a string.
pub(super) fn opt_text(row: &MySqlRow, column: &str) -> anyhow::Result<Option<String>> {
    let bytes: Option<&[u8]> = row.try_get(column)?;
    bytes
        .map(|b| {
            String::from_utf8(b.to_vec()).with_context(|| format!("column {column} is not UTF-8"))
        })
        .transpose()
}

/// A text column that is never NULL (see [`opt_text`]).
pub(super) fn text(row: &MySqlRow, column: &str) -> anyhow::Result<String> {
    opt_text(row, column)?.with_context(|| format!("column {column} is NULL"))
}

pub(super) fn user_of(row: &MySqlRow, column: &str) -> anyhow::Result<UserId> {
    UserId::parse(text(row, column)?).map_err(anyhow::Error::msg)
}

/// Appends `(?, ?, …)`, one bound parameter per value: the list of an `IN`.
pub(super) fn push_list<'a, T>(
    qb: &mut QueryBuilder<'a, MySql>,
    values: impl IntoIterator<Item = T>,
) where
    T: 'a + sqlx::Encode<'a, MySql> + sqlx::Type<MySql>,
{
    qb.push("(");
    let mut list = qb.separated(", ");
    for value in values {
        list.push_bind(value);
    }
    qb.push(")");
}

/// `(user, key)` pairs padded with `("", "")` to a power of two, as [`padded`] does for keys.
fn padded_pairs(pairs: &[(String, String)]) -> Vec<(&str, &str)> {
    let mut padded: Vec<(&str, &str)> = pairs
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    padded.resize(pairs.len().max(1).next_power_of_two(), ("", ""));
    padded
}

/// Appends `((?, ?), (?, ?), …)`: the list of a row-constructor `IN`.
fn push_pairs<'a>(qb: &mut QueryBuilder<'a, MySql>, pairs: &[(&'a str, &'a str)]) {
    qb.push("(");
    let mut list = qb.separated(", ");
    for (a, b) in pairs {
        list.push("(")
            .push_bind_unseparated(*a)
            .push_unseparated(", ")
            .push_bind_unseparated(*b)
            .push_unseparated(")");
    }
    qb.push(")");
}

pub(super) const COLUMNS: &str = "id, `cursor`, kind, data, created_at, updated_at, read_at";

pub(super) fn notification_from_row(row: &MySqlRow) -> anyhow::Result<Notification> {
    let id = text(row, "id")?;
    let kind = text(row, "kind")?;
    let data = text(row, "data")?;
    let read_at: Option<i64> = row.try_get("read_at")?;
    Ok(Notification {
        id: Uuid::parse_str(&id).context("stored notification id")?,
        cursor: Cursor(row.try_get("cursor")?),
        event: Event::from_stored(&kind, &data)
            .with_context(|| format!("stored event of kind {kind} does not parse"))?,
        created_at: from_ms(row.try_get("created_at")?),
        updated_at: from_ms(row.try_get("updated_at")?),
        read: read_at.is_some(),
    })
}

fn stored_from_row(row: &MySqlRow) -> anyhow::Result<Stored> {
    Ok(Stored {
        notification: notification_from_row(row)?,
        user: user_of(row, "user_id")?,
        collapse_key: opt_text(row, "collapse_key")?,
    })
}

/// The ratings of the given climbers in the given disciplines, in one statement.
async fn ratings_by_key(
    pool: MySqlPool,
    keys: Vec<(UserId, Discipline)>,
) -> anyhow::Result<HashMap<(UserId, Discipline), Rating>> {
    let users: HashSet<&str> = keys.iter().map(|(user, _)| user.as_str()).collect();
    let users: Vec<&str> = users.into_iter().collect();
    let rows = mysql_play::ratings_of(&pool, &users).await?;
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

/// The unread count and head cursor of the given users, in one statement: both come from one
/// row, written by the same commits.
async fn unread_heads_of(
    pool: MySqlPool,
    users: Vec<UserId>,
) -> anyhow::Result<HashMap<UserId, (i64, i64)>> {
    let mut qb = QueryBuilder::<MySql>::new(
        "SELECT user_id, unread, last_cursor FROM user_cursors WHERE user_id IN ",
    );
    let keys: Vec<&str> = users.iter().map(UserId::as_str).collect();
    push_list(&mut qb, padded(&keys));
    let rows = qb
        .build()
        .fetch_all(&pool)
        .await
        .context("reading unread counts")?;
    let mut found: HashMap<String, (i64, i64)> = HashMap::with_capacity(rows.len());
    for row in &rows {
        found.insert(
            text(row, "user_id")?,
            (row.try_get("unread")?, row.try_get("last_cursor")?),
        );
    }
    Ok(users
        .into_iter()
        .filter_map(|user| {
            let head = *found.get(user.as_str())?;
            Some((user, head))
        })
        .collect())
}

/// The unread snapshots of the given users, each with up to its own number of newest unread
/// notifications, in one statement (one snapshot, so each count, head and list agree): the
/// users' head rows, then a parenthesised newest-unread walk per user.
async fn unread_summaries_of(
    pool: MySqlPool,
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
    let mut qb = QueryBuilder::<MySql>::new(
        "(SELECT user_id AS owner, unread, last_cursor, NULL AS id, NULL AS `cursor`, \
         NULL AS kind, NULL AS data, NULL AS created_at, NULL AS updated_at, NULL AS read_at \
         FROM user_cursors WHERE user_id IN ",
    );
    push_list(&mut qb, users.iter().copied());
    qb.push(")");
    for user in &users {
        qb.push(format!(
            " UNION ALL (SELECT user_id, NULL, NULL, {COLUMNS} FROM notifications \
             WHERE user_id = "
        ));
        qb.push_bind(*user);
        qb.push(" AND read_at IS NULL ORDER BY `cursor` DESC LIMIT ");
        qb.push_bind(most);
        qb.push(")");
    }
    let rows = qb
        .build()
        .fetch_all(&pool)
        .await
        .context("reading unread summaries")?;
    let mut heads: HashMap<String, (u64, Cursor)> = HashMap::new();
    let mut newest: HashMap<String, Vec<Notification>> = HashMap::new();
    for row in &rows {
        let owner = text(row, "owner")?;
        if opt_text(row, "id")?.is_some() {
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

/// The writer's side, for the group-commit task.
struct MySqlBackend {
    pool: MySqlPool,
}

#[async_trait]
impl Backend for MySqlBackend {
    async fn begin(&self) -> anyhow::Result<Box<dyn GroupTx>> {
        let tx = self.pool.begin().await.context("begin write")?;
        Ok(Box::new(MySqlTx { tx }))
    }

    async fn ping(&self) -> anyhow::Result<()> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .context("pinging the MariaDB/MySQL writer")?;
        Ok(())
    }

    fn retryable(&self, error: &anyhow::Error) -> bool {
        retryable(error)
    }
}

/// One group's transaction on a writer connection.
pub(super) struct MySqlTx {
    pub(super) tx: Transaction<'static, MySql>,
}

/// Runs `prefix` followed by a padded row-constructor `IN` list, in chunks.
async fn select_pairs(
    tx: &mut Transaction<'static, MySql>,
    prefix: &str,
    pairs: &[(String, String)],
    what: &'static str,
) -> anyhow::Result<Vec<MySqlRow>> {
    let mut rows = Vec::new();
    for chunk in pairs.chunks(ROWS_PER_STATEMENT) {
        let padded = padded_pairs(chunk);
        let mut qb = QueryBuilder::<MySql>::new(prefix);
        push_pairs(&mut qb, &padded);
        rows.extend(qb.build().fetch_all(&mut **tx).await.context(what)?);
    }
    Ok(rows)
}

#[async_trait]
impl GroupTx for MySqlTx {
    async fn idempotency_keys(
        &mut self,
        pairs: &[(String, String)],
    ) -> anyhow::Result<HashMap<(String, String), Uuid>> {
        let rows = select_pairs(
            &mut self.tx,
            "SELECT user_id, `key`, notification_id FROM idempotency_keys \
             WHERE (user_id, `key`) IN ",
            pairs,
            "reading idempotency keys",
        )
        .await?;
        let mut seen = HashMap::with_capacity(rows.len());
        for row in &rows {
            let id = text(row, "notification_id")?;
            seen.insert(
                (text(row, "user_id")?, text(row, "key")?),
                Uuid::parse_str(&id).context("stored notification id")?,
            );
        }
        Ok(seen)
    }

    async fn notifications(&mut self, ids: &[Uuid]) -> anyhow::Result<Vec<Stored>> {
        let mut found = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(ROWS_PER_STATEMENT) {
            let ids: Vec<String> = chunk.iter().map(Uuid::to_string).collect();
            let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
            let mut qb = QueryBuilder::<MySql>::new(format!(
                "SELECT {COLUMNS}, user_id, collapse_key FROM notifications WHERE id IN "
            ));
            push_list(&mut qb, padded(&ids));
            let rows = qb
                .build()
                .fetch_all(&mut *self.tx)
                .await
                .context("reading notifications by id")?;
            for row in &rows {
                found.push(stored_from_row(row)?);
            }
        }
        Ok(found)
    }

    async fn open_collapsible(
        &mut self,
        pairs: &[(String, String)],
    ) -> anyhow::Result<Vec<Stored>> {
        let prefix = format!(
            "SELECT {COLUMNS}, user_id, collapse_key FROM notifications \
             WHERE (user_id, collapse_key) IN "
        );
        select_pairs(&mut self.tx, &prefix, pairs, "reading open collapse keys")
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
        mysql_play::write_folded(&mut self.tx, &folded, now).await?;
        write_appends(&mut self.tx, &writes, now).await?;
        self.tx.commit().await.context("commit write")?;
        Ok(())
    }
}

/// Writes a group's appends: new rows, moved rows, heads, keys; one statement each (per chunk).
async fn write_appends(
    tx: &mut Transaction<'static, MySql>,
    planned: &AppendWrites,
    now: DateTime<Utc>,
) -> anyhow::Result<()> {
    for chunk in planned.new_rows.chunks(ROWS_PER_STATEMENT) {
        let mut qb = QueryBuilder::<MySql>::new(
            "INSERT INTO notifications \
             (id, user_id, `cursor`, kind, data, collapse_key, created_at, updated_at) ",
        );
        qb.push_values(chunk, |mut b, row| {
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
        qb.build()
            .execute(&mut **tx)
            .await
            .context("writing new notifications")?;
    }
    for chunk in planned.moved.chunks(ROWS_PER_STATEMENT) {
        // Each collapsed row moves to its new cursor with its new data, all in one statement.
        let mut qb = QueryBuilder::<MySql>::new("UPDATE notifications SET `cursor` = CASE id");
        for row in chunk {
            qb.push(" WHEN ")
                .push_bind(row.id.to_string())
                .push(" THEN ")
                .push_bind(row.cursor);
        }
        qb.push(" END, data = CASE id");
        for row in chunk {
            qb.push(" WHEN ")
                .push_bind(row.id.to_string())
                .push(" THEN ")
                .push_bind(row.data.as_str());
        }
        qb.push(" END, updated_at = ")
            .push_bind(to_ms(now))
            .push(" WHERE id IN ");
        push_list(&mut qb, chunk.iter().map(|row| row.id.to_string()));
        qb.build()
            .execute(&mut **tx)
            .await
            .context("moving collapsed notifications")?;
    }
    for chunk in planned.heads.chunks(ROWS_PER_STATEMENT) {
        let mut qb =
            QueryBuilder::<MySql>::new("INSERT INTO user_cursors (user_id, last_cursor, unread) ");
        qb.push_values(chunk, |mut b, head| {
            b.push_bind(head.user.as_str())
                .push_bind(head.last_cursor)
                .push_bind(head.created);
        })
        .push(
            " ON DUPLICATE KEY UPDATE last_cursor = VALUES(last_cursor), \
             unread = unread + VALUES(unread)",
        );
        qb.build()
            .execute(&mut **tx)
            .await
            .context("moving head cursors")?;
    }
    for chunk in planned.keys.chunks(ROWS_PER_STATEMENT) {
        let mut qb = QueryBuilder::<MySql>::new(
            "INSERT INTO idempotency_keys (user_id, `key`, notification_id, created_at) ",
        );
        qb.push_values(chunk, |mut b, (user, key, id)| {
            b.push_bind(user.as_str())
                .push_bind(key.as_str())
                .push_bind(id.to_string())
                .push_bind(to_ms(now));
        })
        // A key whose notification retention removed is taken again.
        .push(
            " ON DUPLICATE KEY UPDATE notification_id = VALUES(notification_id), \
             created_at = VALUES(created_at)",
        );
        qb.build()
            .execute(&mut **tx)
            .await
            .context("recording idempotency keys")?;
    }
    if !planned.push_jobs.is_empty() {
        super::mysql_push::write_jobs(tx, &planned.push_jobs, now).await?;
    }
    Ok(())
}

impl MySqlStore {
    /// One attempt of [`Store::mark_read`], in one transaction: the user's head row is locked
    /// first, as a writer does, so the rows and the count move together.
    async fn mark_read_once(&self, user: &UserId, selector: &ReadSelector) -> anyhow::Result<u64> {
        let mut tx = self.pool.begin().await.context("begin marking read")?;
        let head: Option<i64> =
            sqlx::query_scalar("SELECT unread FROM user_cursors WHERE user_id = ? FOR UPDATE")
                .bind(user.as_str())
                .fetch_optional(&mut *tx)
                .await
                .context("locking the user's head row")?;
        if head.is_none() {
            // No head row, no notifications.
            tx.commit().await.context("commit marking read")?;
            return Ok(0);
        }
        let now = to_ms(Utc::now());
        // Clearing collapse_key ends collapsing: the next like of that post is a new
        // notification. The affected-rows count is of rows matched (sqlx asks for found rows),
        // which are all changed here: each was unread.
        let base = "UPDATE notifications SET read_at = ?, collapse_key = NULL \
                    WHERE user_id = ? AND read_at IS NULL";
        let mut marked = 0;
        match selector {
            ReadSelector::All | ReadSelector::UpTo(_) => {
                let (sql, up_to) = match selector {
                    ReadSelector::UpTo(c) => (format!("{base} AND `cursor` <= ?"), Some(c.0)),
                    _ => (base.to_owned(), None),
                };
                let mut query = sqlx::query(&sql).bind(now).bind(user.as_str());
                if let Some(cursor) = up_to {
                    query = query.bind(cursor);
                }
                marked += query
                    .execute(&mut *tx)
                    .await
                    .context("marking notifications read")?
                    .rows_affected();
            }
            ReadSelector::Ids(ids) => {
                for chunk in ids.chunks(ROWS_PER_STATEMENT) {
                    let ids: Vec<String> = chunk.iter().map(Uuid::to_string).collect();
                    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
                    let mut qb = QueryBuilder::<MySql>::new("UPDATE notifications SET read_at = ");
                    qb.push_bind(now)
                        .push(", collapse_key = NULL WHERE user_id = ")
                        .push_bind(user.as_str())
                        .push(" AND read_at IS NULL AND id IN ");
                    push_list(&mut qb, padded(&ids));
                    marked += qb
                        .build()
                        .execute(&mut *tx)
                        .await
                        .context("marking notifications read")?
                        .rows_affected();
                }
            }
        }
        if marked > 0 {
            sqlx::query("UPDATE user_cursors SET unread = unread - ? WHERE user_id = ?")
                .bind(i64::try_from(marked)?)
                .bind(user.as_str())
                .execute(&mut *tx)
                .await
                .context("lowering the unread count")?;
        }
        tx.commit().await.context("commit marking read")?;
        Ok(marked)
    }

    /// Deletes read notifications by id, checking again that each is still read and old.
    async fn delete_read_ids(&self, ids: &[String], before: i64) -> anyhow::Result<u64> {
        let mut deleted = 0;
        for chunk in ids.chunks(ROWS_PER_STATEMENT) {
            let mut qb = QueryBuilder::<MySql>::new(
                "DELETE FROM notifications WHERE read_at IS NOT NULL AND updated_at < ",
            );
            qb.push_bind(before).push(" AND id IN ");
            push_list(&mut qb, chunk.iter().map(String::as_str));
            // Retention runs now and then with a list of any length: not worth a cache entry.
            deleted += qb
                .build()
                .persistent(false)
                .execute(&self.pool)
                .await
                .context("deleting read notifications")?
                .rows_affected();
        }
        Ok(deleted)
    }
}

#[async_trait]
impl Store for MySqlStore {
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
        mysql_play::get_match(&self.pool, id).await
    }

    async fn live_matches(&self) -> anyhow::Result<Vec<Match>> {
        mysql_play::live_matches(&self.pool).await
    }

    async fn pending_challenges(&self) -> anyhow::Result<Vec<Challenge>> {
        mysql_play::pending_challenges(&self.pool, None).await
    }

    async fn matchmaker_fence(&self) -> anyhow::Result<super::MatchmakerFence> {
        mysql_play::matchmaker_fence(&self.pool).await
    }

    async fn queued_tickets(&self) -> anyhow::Result<Vec<QueuedTicket>> {
        mysql_play::queued_tickets(&self.pool, None).await
    }

    async fn standing_of(&self, user: &UserId) -> anyhow::Result<super::StoredStanding> {
        mysql_play::standing_of(&self.pool, user).await
    }

    async fn latest_match(&self, user: &UserId) -> anyhow::Result<Option<Match>> {
        mysql_play::latest_match_of(&self.pool, user).await
    }

    async fn user_known(&self, user: &UserId) -> anyhow::Result<bool> {
        mysql_play::user_known(&self.pool, user).await
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
        mysql_play::leaderboard(&self.pool, discipline, offset, limit).await
    }

    async fn events_after(
        &self,
        user: &UserId,
        after: Cursor,
        limit: u32,
    ) -> anyhow::Result<Vec<Notification>> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM notifications WHERE user_id = ? AND `cursor` > ? \
             ORDER BY `cursor` ASC LIMIT ?"
        ))
        .bind(user.as_str())
        .bind(after.0)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .context("reading events after a cursor")?;
        rows.iter().map(notification_from_row).collect()
    }

    async fn head(&self, user: &UserId) -> anyhow::Result<Cursor> {
        let last: Option<i64> =
            sqlx::query_scalar("SELECT last_cursor FROM user_cursors WHERE user_id = ?")
                .bind(user.as_str())
                .fetch_optional(&self.pool)
                .await
                .context("reading the user's head cursor")?;
        Ok(Cursor(last.unwrap_or(0)))
    }

    async fn list(&self, user: &UserId, query: ListQuery) -> anyhow::Result<Vec<Notification>> {
        // Unread rows are walked through their own index (see the migration).
        let unread = if query.unread_only {
            " AND read_at IS NULL"
        } else {
            ""
        };
        let (bound, order, cursor) = match query.page {
            Page::Newest { before: Some(c) } => ("<", "DESC", c.0),
            Page::Newest { before: None } => ("<", "DESC", i64::MAX),
            Page::After(c) => (">", "ASC", c.0),
        };
        let sql = format!(
            "SELECT {COLUMNS} FROM notifications WHERE user_id = ? AND `cursor` {bound} ?{unread} \
             ORDER BY `cursor` {order} LIMIT ?"
        );
        let rows = sqlx::query(&sql)
            .bind(user.as_str())
            .bind(cursor)
            .bind(i64::from(query.limit))
            .fetch_all(&self.pool)
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
        // A deadlock with another node's writer is the store's to settle, never a client's.
        let mut wait = MARK_READ_BACKOFF;
        let mut attempt = 1;
        loop {
            match self.mark_read_once(user, selector).await {
                Err(error) if attempt < MARK_READ_ATTEMPTS && retryable(&error) => {
                    tracing::debug!(attempt, error = %error, "mark read conflicted; running it again");
                    tokio::time::sleep(jitter(wait)).await;
                    wait = wait.saturating_mul(2);
                    attempt += 1;
                }
                result => return result,
            }
        }
    }

    async fn delete_read_before(&self, before: DateTime<Utc>, limit: u32) -> anyhow::Result<u64> {
        // MySQL cannot delete from a table that a subquery of the same statement reads with a
        // LIMIT: the ids first (oldest first: version 7 ids follow creation time), then them.
        let before = to_ms(before);
        let rows = sqlx::query(
            "SELECT id FROM notifications WHERE read_at IS NOT NULL AND updated_at < ? \
             ORDER BY id LIMIT ?",
        )
        .bind(before)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .context("finding old read notifications")?;
        let ids = rows
            .iter()
            .map(|row| text(row, "id"))
            .collect::<anyhow::Result<Vec<_>>>()?;
        self.delete_read_ids(&ids, before).await
    }

    async fn delete_read_beyond(
        &self,
        keep: u32,
        before: DateTime<Utc>,
        limit: u32,
    ) -> anyhow::Result<u64> {
        // Only a user whose head is past `keep` can have more than `keep` rows; for each, the
        // rows at or below their `keep + 1`-th newest cursor.
        let before = to_ms(before);
        let rows = sqlx::query(
            "SELECT n.id FROM user_cursors u JOIN notifications n ON n.user_id = u.user_id \
             WHERE u.last_cursor > ? AND n.read_at IS NOT NULL AND n.updated_at < ? \
             AND n.`cursor` <= (SELECT c.`cursor` FROM notifications c \
                                WHERE c.user_id = u.user_id \
                                ORDER BY c.`cursor` DESC LIMIT 1 OFFSET ?) \
             LIMIT ?",
        )
        .bind(i64::from(keep))
        .bind(before)
        .bind(i64::from(keep))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .context("finding read notifications beyond the per-user limit")?;
        let ids = rows
            .iter()
            .map(|row| text(row, "id"))
            .collect::<anyhow::Result<Vec<_>>>()?;
        self.delete_read_ids(&ids, before).await
    }

    async fn expire_idempotency_keys(&self, before: DateTime<Utc>) -> anyhow::Result<u64> {
        let result = sqlx::query("DELETE FROM idempotency_keys WHERE created_at < ?")
            .bind(to_ms(before))
            .execute(&self.pool)
            .await
            .context("expiring idempotency keys")?;
        Ok(result.rows_affected())
    }

    async fn database_size_bytes(&self) -> anyhow::Result<u64> {
        // InnoDB's figures are estimates, refreshed as its statistics are.
        let bytes: i64 = sqlx::query_scalar(
            "SELECT CAST(COALESCE(SUM(data_length + index_length), 0) AS SIGNED) \
             FROM information_schema.tables WHERE table_schema = DATABASE()",
        )
        .fetch_one(&self.pool)
        .await
        .context("reading the MariaDB/MySQL database size")?;
        Ok(u64::try_from(bytes).unwrap_or(0))
    }

    async fn ping(&self) -> anyhow::Result<()> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .context("pinging MariaDB/MySQL")?;
        // Reads alone would say ready while every write fails.
        self.writes.ping().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use sqlx::Connection;

    use super::*;
    use crate::domain::{IdempotencyKey, PostId, PostLiked};
    use crate::store::rules::PlayTx;

    /// A database of its own on the test server, dropped with the guard.
    struct TestDb {
        name: String,
        url: String,
    }

    fn admin_url() -> String {
        std::env::var("BELAY_TEST_MYSQL_URL")
            .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".to_owned())
    }

    fn services_required() -> bool {
        ["BELAY_TEST_REQUIRE_SERVICES", "BELAY_REQUIRE_DATABASES"]
            .iter()
            .any(|var| std::env::var(var).is_ok_and(|v| !v.is_empty() && v != "0"))
    }

    async fn run_admin(sql: &str) -> Result<(), sqlx::Error> {
        let mut conn = sqlx::MySqlConnection::connect(&admin_url()).await?;
        sqlx::raw_sql(sql).execute(&mut conn).await?;
        Ok(())
    }

    /// A fresh database, or `None` (after saying why) without a server.
    async fn fresh() -> Option<TestDb> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "belay_u{}_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed),
            &Uuid::new_v4().simple().to_string()[..8]
        );
        match run_admin(&format!("CREATE DATABASE {name}")).await {
            Ok(()) => {
                let admin = admin_url();
                let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b);
                let url = format!("{base}/{name}");
                Some(TestDb { name, url })
            }
            Err(error) if services_required() => panic!("MariaDB/MySQL is required: {error}"),
            Err(error) => {
                eprintln!("skipping: no MariaDB/MySQL server ({error})");
                None
            }
        }
    }

    impl Drop for TestDb {
        fn drop(&mut self) {
            let sql = format!("DROP DATABASE IF EXISTS {}", self.name);
            // Drop runs inside the test's runtime, which cannot be blocked on.
            let _ = std::thread::spawn(move || {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map(|rt| rt.block_on(run_admin(&sql)))
            })
            .join();
        }
    }

    fn user(s: &str) -> UserId {
        UserId::parse(s).unwrap_or_else(|e| panic!("{e}"))
    }

    fn like(to: &str, post: &str) -> NewEvent {
        NewEvent {
            user: user(to),
            event: Event::PostLiked(PostLiked::new(
                PostId::parse(post).unwrap_or_else(|e| panic!("{e}")),
                user("zed"),
            )),
            idempotency_key: None,
        }
    }

    async fn store(db: &TestDb) -> MySqlStore {
        MySqlStore::connect(&db.url, 4)
            .await
            .unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Locking heads creates the missing rows at 0 and returns the others as they are; the
    /// rows stay after the commit.
    #[tokio::test]
    async fn locking_heads_creates_the_missing_head_rows() {
        let Some(db) = fresh().await else { return };
        let store = store(&db).await;
        store
            .append(vec![like("bob", "p1"), like("bob", "p2")])
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
        let pool = pool_options(1)
            .connect(&db.url)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let mut tx = MySqlTx {
            tx: pool.begin().await.unwrap_or_else(|e| panic!("{e}")),
        };
        let users: Vec<String> = ["ana", "bob", "cy"].map(String::from).to_vec();
        let heads = tx
            .lock_heads(&users)
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
        let expected: HashMap<String, i64> = [("ana", 0), ("bob", 2), ("cy", 0)]
            .map(|(u, c)| (u.to_owned(), c))
            .into();
        assert_eq!(heads, expected);
        // Locked again in the same transaction: the same answer.
        let again = tx
            .lock_heads(&users)
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(again, expected);
        tx.tx.commit().await.unwrap_or_else(|e| panic!("{e}"));
        let rows: Vec<(Vec<u8>, i64, i64)> = sqlx::query_as(
            "SELECT user_id, last_cursor, unread FROM user_cursors ORDER BY user_id",
        )
        .fetch_all(&pool)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        let rows: Vec<(String, i64, i64)> = rows
            .into_iter()
            .map(|(u, c, n)| (String::from_utf8_lossy(&u).into_owned(), c, n))
            .collect();
        assert_eq!(
            rows,
            vec![
                ("ana".into(), 0, 0),
                ("bob".into(), 2, 2),
                ("cy".into(), 0, 0)
            ]
        );
    }

    /// Ids differing only in case are different users, and keys differing only in case are
    /// different keys (a case-insensitive collation would merge them).
    #[tokio::test]
    async fn ids_and_keys_differing_in_case_stay_apart() {
        let Some(db) = fresh().await else { return };
        let store = store(&db).await;
        let keyed = |to: &str, post: &str, key: &str| NewEvent {
            idempotency_key: Some(IdempotencyKey::parse(key).unwrap_or_else(|e| panic!("{e}"))),
            ..like(to, post)
        };
        let out = store
            .append(vec![
                keyed("ana", "p1", "k"),
                keyed("Ana", "p1", "k"),
                keyed("ana", "P1", "K"),
            ])
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
        let outcomes: Vec<_> = out.iter().map(|a| a.outcome).collect();
        assert_eq!(outcomes, vec![super::super::AppendOutcome::Created; 3]);
        assert_eq!(store.head(&user("ana")).await.ok(), Some(Cursor(2)));
        assert_eq!(store.head(&user("Ana")).await.ok(), Some(Cursor(1)));
        assert_eq!(store.unread_count(&user("ANA")).await.ok(), Some(0));
        // p1 and P1 are two posts: two notifications, no collapse.
        let listed = store
            .list(
                &user("ana"),
                ListQuery {
                    page: Page::Newest { before: None },
                    unread_only: true,
                    limit: 10,
                },
            )
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(listed.len(), 2);
    }

    /// Two nodes (two stores on one database) writing for overlapping users, in different
    /// orders, while both mark notifications read: each user's cursors stay gapless and unique,
    /// and the unread count stays equal to the unread rows.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_nodes_writing_for_the_same_users_keep_cursors_and_counts_right() {
        let Some(db) = fresh().await else { return };
        let nodes = [Arc::new(store(&db).await), Arc::new(store(&db).await)];
        let users = ["ana", "bob", "cy"];
        let mut tasks = Vec::new();
        for (n, node) in nodes.iter().enumerate() {
            for w in 0..3 {
                let node = node.clone();
                tasks.push(tokio::spawn(async move {
                    let mut written = 0;
                    for i in 0..20 {
                        // Overlapping pairs, in both orders; every fifth event collapses.
                        let a = users[(w + i) % 3];
                        let b = users[(w + i + 1 + n) % 3];
                        let batch = vec![
                            like(a, &format!("n{n}w{w}i{i}")),
                            like(b, &format!("p{}", i % 5)),
                        ];
                        node.append(batch).await.unwrap_or_else(|e| panic!("{e:#}"));
                        written += 2;
                    }
                    written
                }));
            }
            let node = node.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..15 {
                    let selector = if i % 2 == 0 {
                        ReadSelector::All
                    } else {
                        ReadSelector::UpTo(Cursor(i * 3))
                    };
                    node.mark_read(&user(users[i as usize % 3]), &selector)
                        .await
                        .unwrap_or_else(|e| panic!("{e:#}"));
                }
                0
            }));
        }
        for task in tasks {
            task.await.unwrap_or_else(|e| panic!("{e}"));
        }
        for u in users {
            let head = nodes[0]
                .head(&user(u))
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            let rows = nodes[1]
                .events_after(&user(u), Cursor::ZERO, 10_000)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            // Collapsed rows moved up: the rows' cursors are distinct, rising, and the head
            // is the last one handed out.
            assert!(rows.windows(2).all(|w| w[0].cursor < w[1].cursor), "{u}");
            assert!(rows.last().is_some_and(|n| n.cursor <= head), "{u}");
            let unread_rows = rows.iter().filter(|n| !n.read).count() as u64;
            assert_eq!(
                nodes[0].unread_count(&user(u)).await.ok(),
                Some(unread_rows),
                "{u}"
            );
        }
        let total: i64 = {
            let mut sum = 0;
            for u in users {
                sum += nodes[0].head(&user(u)).await.map_or(0, |c| c.0);
            }
            sum
        };
        assert_eq!(
            total,
            2 * 3 * 20 * 2,
            "every append took one cursor, none twice"
        );
    }

    /// Retention deletes read rows only, oldest first and at most `limit`; keeps each user's
    /// newest `keep`; never touches unread rows or head rows.
    #[tokio::test]
    async fn retention_deletes_old_read_rows_only() {
        let Some(db) = fresh().await else { return };
        let store = store(&db).await;
        for i in 1..=5 {
            store
                .append(vec![
                    like("ana", &format!("a{i}")),
                    like("bob", &format!("b{i}")),
                ])
                .await
                .unwrap_or_else(|e| panic!("{e:#}"));
        }
        store
            .mark_read(&user("ana"), &ReadSelector::UpTo(Cursor(3)))
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
        store
            .mark_read(&user("bob"), &ReadSelector::All)
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
        let past = Utc::now() - chrono::Duration::hours(1);
        let future = Utc::now() + chrono::Duration::hours(1);
        let cursors = |rows: Vec<Notification>| rows.iter().map(|n| n.cursor.0).collect::<Vec<_>>();

        assert_eq!(store.delete_read_before(past, 100).await.ok(), Some(0));
        assert_eq!(store.delete_read_beyond(2, past, 100).await.ok(), Some(0));
        // Each keeps their newest two: rows 1 to 3 of both go (Ana's are read).
        assert_eq!(store.delete_read_beyond(2, future, 100).await.ok(), Some(6));
        let bob = store.events_after(&user("bob"), Cursor::ZERO, 100).await;
        assert_eq!(bob.map(cursors).ok(), Some(vec![4, 5]));
        assert_eq!(store.head(&user("bob")).await.ok(), Some(Cursor(5)));

        assert_eq!(store.delete_read_before(future, 1).await.ok(), Some(1));
        let bob = store.events_after(&user("bob"), Cursor::ZERO, 100).await;
        assert_eq!(
            bob.map(cursors).ok(),
            Some(vec![5]),
            "the oldest went first"
        );
        assert_eq!(store.delete_read_before(future, 100).await.ok(), Some(1));
        let bob = store.events_after(&user("bob"), Cursor::ZERO, 100).await;
        assert_eq!(bob.map(cursors).ok(), Some(vec![]));
        let ana = store.events_after(&user("ana"), Cursor::ZERO, 100).await;
        assert_eq!(ana.map(cursors).ok(), Some(vec![4, 5]), "unread rows stay");
        assert_eq!(store.head(&user("bob")).await.ok(), Some(Cursor(5)));
        assert_eq!(store.unread_count(&user("ana")).await.ok(), Some(2));
    }

    /// An unreachable server fails `connect` within the acquire timeout, with an error that
    /// names the server (not the URL's password) and keeps the driver's error in its chain.
    #[tokio::test]
    async fn connecting_to_no_server_fails_fast_and_says_where() {
        let started = std::time::Instant::now();
        let failed = MySqlStore::connect("mysql://root:secret@127.0.0.1:1/belay", 2).await;
        let Err(error) = failed else {
            panic!("nothing listens on port 1")
        };
        assert!(
            started.elapsed() < ACQUIRE_TIMEOUT * 2,
            "{:?}",
            started.elapsed()
        );
        let text = format!("{error:#}");
        assert!(text.contains("127.0.0.1:1/belay"), "{text}");
        assert!(!text.contains("secret"), "{text}");
        assert!(error.chain().any(|c| c.is::<sqlx::Error>()), "{text}");
    }

    /// A lock wait that timed out is retried; any other database error is not.
    #[tokio::test]
    async fn a_lock_wait_timeout_is_worth_a_retry() {
        let Some(db) = fresh().await else { return };
        let store = store(&db).await;
        store
            .append(vec![like("ana", "p1")])
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
        let mut holder = store.pool.begin().await.unwrap_or_else(|e| panic!("{e}"));
        sqlx::query("SELECT * FROM user_cursors WHERE user_id = 'ana' FOR UPDATE")
            .execute(&mut *holder)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let mut waiter = store.pool.begin().await.unwrap_or_else(|e| panic!("{e}"));
        sqlx::query("SET SESSION innodb_lock_wait_timeout = 1")
            .execute(&mut *waiter)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let timed_out = sqlx::query("SELECT * FROM user_cursors WHERE user_id = 'ana' FOR UPDATE")
            .execute(&mut *waiter)
            .await
            .context("waiting");
        let Err(error) = timed_out else {
            panic!("the row is locked")
        };
        assert!(retryable(&error), "{error:#}");
        let other = sqlx::query("SELECT * FROM no_such_table")
            .execute(&store.pool)
            .await
            .context("reading");
        assert!(other.as_ref().is_err_and(|e| !retryable(e)), "{other:?}");
        // Both end here, not on drop: the database is dropped next, and a transaction left
        // open would hold its tables' metadata locks against that.
        waiter.rollback().await.unwrap_or_else(|e| panic!("{e}"));
        holder.rollback().await.unwrap_or_else(|e| panic!("{e}"));
    }
}
