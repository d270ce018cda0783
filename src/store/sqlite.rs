//! SQLite backend: the embedded default. One writer connection (SQLite has one writer anyway,
//! and a single connection never hits SQLITE_BUSY on upgrade) fed by a group-commit task, and a
//! small pool of readers.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::hash::Hash;
use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{QueryBuilder, Row, Sqlite, Transaction};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::sqlite_play;
use super::{
    AppendOutcome, Appended, Applied, Change, ListQuery, NewEvent, OnCommit, Page, ReadSelector,
    Store, UnreadSnapshot,
};
use crate::domain::{
    Challenge, Cursor, Discipline, Event, LeaderboardEntry, Match, Notification, QueuedTicket,
    Rating, UserId,
};

/// How long a statement waits for a lock held by another process before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// Events committed together at most.
const MAX_GROUP_EVENTS: usize = 1000;
/// Rows per multi-row statement (SQLite allows 32,766 bound values per statement).
const ROWS_PER_STATEMENT: usize = 500;
/// Appends waiting for the writer before callers wait to enqueue.
const WRITE_QUEUE: usize = 1024;
/// Statements in a combined write that sqlx may keep prepared in its statement cache.
const MAX_CACHED_STATEMENTS: usize = 8;
/// Look-ups waiting for a batching reader before callers wait to enqueue.
const LOOKUP_QUEUE: usize = 1024;
/// Look-ups one statement answers at most.
const MAX_LOOKUP_BATCH: usize = 256;
/// Unread summaries one statement answers at most: its text grows by a subquery per user.
const MAX_SUMMARY_BATCH: usize = 32;

pub struct SqliteStore {
    writes: mpsc::Sender<WriteJob>,
    ratings: mpsc::Sender<Lookup<(UserId, Discipline), Rating>>,
    heads: mpsc::Sender<Lookup<UserId, (i64, i64)>>,
    summaries: mpsc::Sender<Lookup<(UserId, u32), UnreadSnapshot>>,
    writer: SqlitePool,
    reader: SqlitePool,
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
        let (writes, jobs) = mpsc::channel(WRITE_QUEUE);
        tokio::spawn(write_loop(writer.clone(), jobs));
        let (ratings, lookups) = mpsc::channel(LOOKUP_QUEUE);
        let pool = reader.clone();
        tokio::spawn(lookup_loop(lookups, MAX_LOOKUP_BATCH, move |keys| {
            ratings_by_key(pool.clone(), keys)
        }));
        let (heads, lookups) = mpsc::channel(LOOKUP_QUEUE);
        let pool = reader.clone();
        tokio::spawn(lookup_loop(lookups, MAX_LOOKUP_BATCH, move |users| {
            unread_heads_of(pool.clone(), users)
        }));
        let (summaries, lookups) = mpsc::channel(LOOKUP_QUEUE);
        let pool = reader.clone();
        tokio::spawn(lookup_loop(lookups, MAX_SUMMARY_BATCH, move |keys| {
            unread_summaries_of(pool.clone(), keys)
        }));
        if !in_memory {
            let checkpointer = SqlitePoolOptions::new()
                .max_connections(1)
                .test_before_acquire(false)
                .connect_with(options.clone())
                .await
                .with_context(|| format!("opening the checkpoint connection for {url}"))?;
            tokio::spawn(checkpoint_loop(checkpointer, writes.downgrade()));
        }
        Ok(SqliteStore {
            writes,
            ratings,
            heads,
            summaries,
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

/// The keys of a batched look-up, padded with `""` (no user's id) to a power of two: the look-up
/// statements then take a handful of shapes, which stay prepared in each reader's statement
/// cache, instead of one shape per batch size to parse again and again.
pub(super) fn padded<'a>(keys: &[&'a str]) -> Vec<&'a str> {
    let mut padded = keys.to_vec();
    padded.resize(keys.len().max(1).next_power_of_two(), "");
    padded
}

/// A look-up answered by a batching reader: `None` when there is no row for the key.
struct Lookup<K, V> {
    key: K,
    reply: oneshot::Sender<Result<Option<V>, String>>,
}

/// Answers look-ups in batches: whatever is waiting when a read starts goes into the next one
/// (up to `max_batch`), a single statement on a single reader connection. A round trip to
/// SQLite's thread per look-up cost more than the rest of the request under a crowd of them:
/// every queue join reads the climber's rating, every stream's connect the user's unread count
/// and head, and, when something is unread, the newest unread notifications.
async fn lookup_loop<K, V, F, Fut>(
    mut lookups: mpsc::Receiver<Lookup<K, V>>,
    max_batch: usize,
    read: F,
) where
    K: Eq + Hash + Clone,
    V: Clone,
    F: Fn(Vec<K>) -> Fut,
    Fut: Future<Output = anyhow::Result<HashMap<K, V>>>,
{
    let mut batch = Vec::with_capacity(max_batch);
    while lookups.recv_many(&mut batch, max_batch).await > 0 {
        // How many look-ups ask for each key: the last one takes the answer, the others a copy.
        let mut asking: HashMap<K, usize> = HashMap::with_capacity(batch.len());
        for lookup in &batch {
            *asking.entry(lookup.key.clone()).or_default() += 1;
        }
        let mut found = read(asking.keys().cloned().collect())
            .await
            .map_err(|e| format!("{e:#}"));
        for lookup in batch.drain(..) {
            let answer = match &mut found {
                Ok(rows) => {
                    let left = asking.get_mut(&lookup.key).map_or(0, |n| {
                        *n -= 1;
                        *n
                    });
                    Ok(if left == 0 {
                        rows.remove(&lookup.key)
                    } else {
                        rows.get(&lookup.key).cloned()
                    })
                }
                Err(error) => Err(String::clone(error)),
            };
            let _ = lookup.reply.send(answer);
        }
    }
}

/// Sends a look-up to its batching reader and waits for the answer.
async fn look_up<K, V>(
    lookups: &mpsc::Sender<Lookup<K, V>>,
    key: K,
    what: &str,
) -> anyhow::Result<Option<V>> {
    let (reply, answer) = oneshot::channel();
    lookups
        .send(Lookup { key, reply })
        .await
        .map_err(|_| anyhow::anyhow!("the {what} reader has stopped"))?;
    answer
        .await
        .with_context(|| format!("the {what} reader dropped the look-up"))?
        .map_err(anyhow::Error::msg)
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
async fn checkpoint_loop(pool: SqlitePool, store: mpsc::WeakSender<WriteJob>) {
    let mut tick = tokio::time::interval(CHECKPOINT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if store.upgrade().is_none() {
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

fn to_ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

fn from_ms(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

fn notification_from_row(row: &SqliteRow) -> anyhow::Result<Notification> {
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

const COLUMNS: &str = "id, cursor, kind, data, created_at, updated_at, read_at";

/// A notification written or changed by the group being committed.
struct Touched {
    user: UserId,
    notification: Notification,
    collapse_key: Option<String>,
    /// Not in the database before this group.
    is_new: bool,
    /// Must be written.
    changed: bool,
}

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

/// Writes a group of events in one transaction with a fixed number of statements, whatever its
/// size: look-ups first, then every decision in memory, then multi-row writes. SQLite has one
/// writer, so reading the heads and writing them back inside `BEGIN IMMEDIATE` is safe.
async fn append_in(
    tx: &mut Transaction<'_, Sqlite>,
    items: &[&NewEvent],
    now: DateTime<Utc>,
    writes: &mut Statements<'_>,
) -> anyhow::Result<Vec<Appended>> {
    let tx = &mut *tx;

    // Idempotency keys seen before, and the notifications they point at.
    let keyed: Vec<(String, String)> = items
        .iter()
        .filter_map(|i| {
            i.idempotency_key
                .as_ref()
                .map(|k| (i.user.to_string(), k.to_string()))
        })
        .collect();
    let mut seen_keys: HashMap<(String, String), Uuid> = HashMap::new();
    if !keyed.is_empty() {
        let prefix = "SELECT user_id, key, notification_id FROM idempotency_keys \
                      WHERE (user_id, key) IN (VALUES ";
        for row in select_pairs(tx, prefix, &keyed).await? {
            let id: String = row.try_get("notification_id")?;
            seen_keys.insert(
                (row.try_get("user_id")?, row.try_get("key")?),
                Uuid::parse_str(&id)?,
            );
        }
    }
    let mut rows: HashMap<Uuid, Touched> = HashMap::new();
    if !seen_keys.is_empty() {
        let ids: Vec<String> = seen_keys.values().map(Uuid::to_string).collect();
        let mut qb = QueryBuilder::<Sqlite>::new(format!(
            "SELECT {COLUMNS}, user_id, collapse_key FROM notifications WHERE id IN "
        ));
        push_list(&mut qb, ids);
        for row in qb.build().fetch_all(&mut **tx).await? {
            let n = notification_from_row(&row)?;
            let user =
                UserId::parse(row.try_get::<String, _>("user_id")?).map_err(anyhow::Error::msg)?;
            let collapse_key = row.try_get("collapse_key")?;
            rows.insert(
                n.id,
                Touched {
                    user,
                    notification: n,
                    collapse_key,
                    is_new: false,
                    changed: false,
                },
            );
        }
    }

    // Unread notifications that new events may collapse into.
    let collapsible: Vec<(String, String)> = items
        .iter()
        .filter_map(|i| i.event.collapse_key().map(|k| (i.user.to_string(), k)))
        .collect();
    let mut open: HashMap<(String, String), Uuid> = HashMap::new();
    if !collapsible.is_empty() {
        let prefix = collapse_lookup();
        for row in select_pairs(tx, &prefix, &collapsible).await? {
            let n = notification_from_row(&row)?;
            let user =
                UserId::parse(row.try_get::<String, _>("user_id")?).map_err(anyhow::Error::msg)?;
            let key: String = row.try_get("collapse_key")?;
            open.insert((user.to_string(), key.clone()), n.id);
            rows.entry(n.id).or_insert(Touched {
                user,
                notification: n,
                collapse_key: Some(key),
                is_new: false,
                changed: false,
            });
        }
    }

    // Current heads of the users in the group.
    let mut heads: HashMap<String, i64> = HashMap::new();
    let users: Vec<String> = {
        let mut u: Vec<String> = items.iter().map(|i| i.user.to_string()).collect();
        u.sort_unstable();
        u.dedup();
        u
    };
    for chunk in users.chunks(ROWS_PER_STATEMENT) {
        let mut qb = QueryBuilder::<Sqlite>::new(
            "SELECT user_id, last_cursor FROM user_cursors WHERE user_id IN ",
        );
        push_list(&mut qb, chunk.iter().cloned());
        for row in qb.build().fetch_all(&mut **tx).await? {
            heads.insert(row.try_get("user_id")?, row.try_get("last_cursor")?);
        }
    }

    // Every decision, in order, in memory.
    let mut out = Vec::with_capacity(items.len());
    let mut moved_heads: Vec<String> = Vec::new();
    let mut moved: HashSet<String> = HashSet::new();
    // New notifications per user: each is one more unread.
    let mut created: HashMap<String, i64> = HashMap::new();
    let mut new_keys: Vec<(String, String, Uuid)> = Vec::new();
    for item in items {
        let user_key = item.user.to_string();
        let idem = item
            .idempotency_key
            .as_ref()
            .map(|k| (user_key.clone(), k.to_string()));
        if let Some(id) = idem.as_ref().and_then(|k| seen_keys.get(k)) {
            let row = rows
                .get(id)
                .context("idempotency key points at a missing notification")?;
            out.push(Appended {
                user: item.user.clone(),
                notification: row.notification.clone(),
                outcome: AppendOutcome::Duplicate,
            });
            continue;
        }
        if moved.insert(user_key.clone()) {
            moved_heads.push(user_key.clone());
        }
        let head = heads.entry(user_key.clone()).or_insert(0);
        *head += 1;
        let cursor = Cursor(*head);
        let collapse_key = item.event.collapse_key();
        let target = collapse_key
            .as_ref()
            .and_then(|k| open.get(&(user_key.clone(), k.clone())));
        let (notification, outcome) = match target.and_then(|id| rows.get_mut(id)) {
            Some(row) => {
                let previous = row.notification.event.clone();
                row.notification.event = item.event.clone().collapse_onto(previous);
                row.notification.cursor = cursor;
                row.notification.updated_at = now;
                row.changed = true;
                (row.notification.clone(), AppendOutcome::Collapsed)
            }
            None => {
                let n = Notification {
                    id: Uuid::now_v7(),
                    cursor,
                    event: item.event.clone(),
                    created_at: now,
                    updated_at: now,
                    read: false,
                };
                if let Some(key) = &collapse_key {
                    open.insert((user_key.clone(), key.clone()), n.id);
                }
                *created.entry(user_key.clone()).or_insert(0) += 1;
                let row = Touched {
                    user: item.user.clone(),
                    notification: n.clone(),
                    collapse_key,
                    is_new: true,
                    changed: true,
                };
                rows.insert(n.id, row);
                (n, AppendOutcome::Created)
            }
        };
        if let Some((user, key)) = idem {
            seen_keys.insert((user.clone(), key.clone()), notification.id);
            new_keys.push((user, key, notification.id));
        }
        out.push(Appended {
            user: item.user.clone(),
            notification,
            outcome,
        });
    }

    // Writes (new rows, moved rows, heads, keys), run by the caller with the group's others.
    let changed: Vec<&Touched> = rows.values().filter(|r| r.changed).collect();
    let new_rows: Vec<&&Touched> = changed.iter().filter(|r| r.is_new).collect();
    for chunk in new_rows.chunks(ROWS_PER_STATEMENT) {
        let texts: Vec<String> = chunk
            .iter()
            .map(|row| row.notification.event.data_json_text())
            .collect::<Result<_, _>>()?;
        writes
            .start(
                "INSERT INTO notifications \
                 (id, user_id, cursor, kind, data, collapse_key, created_at, updated_at) ",
            )
            .push_values(chunk.iter().zip(texts), |mut b, (row, data)| {
                let n = &row.notification;
                b.push_bind(n.id.to_string())
                    .push_bind(row.user.to_string())
                    .push_bind(n.cursor.0)
                    .push_bind(n.event.kind().as_str())
                    .push_bind(data)
                    .push_bind(row.collapse_key.clone())
                    .push_bind(to_ms(n.created_at))
                    .push_bind(to_ms(n.updated_at));
            });
    }
    for row in changed.iter().filter(|r| !r.is_new) {
        writes
            .start("UPDATE notifications SET cursor = ")
            .push_bind(row.notification.cursor.0)
            .push(", data = ")
            .push_bind(row.notification.event.data_json_text()?)
            .push(", updated_at = ")
            .push_bind(to_ms(now))
            .push(" WHERE id = ")
            .push_bind(row.notification.id.to_string());
    }
    for chunk in moved_heads.chunks(ROWS_PER_STATEMENT) {
        writes
            .start("INSERT INTO user_cursors (user_id, last_cursor, unread) ")
            .push_values(chunk, |mut b, user| {
                b.push_bind(user.clone())
                    .push_bind(heads.get(user).copied().unwrap_or(0))
                    .push_bind(created.get(user).copied().unwrap_or(0));
            })
            .push(
                " ON CONFLICT (user_id) DO UPDATE SET last_cursor = excluded.last_cursor, \
                 unread = unread + excluded.unread",
            );
    }
    for chunk in new_keys.chunks(ROWS_PER_STATEMENT) {
        writes
            .start("INSERT INTO idempotency_keys (user_id, key, notification_id, created_at) ")
            .push_values(chunk, |mut b, (user, key, id)| {
                b.push_bind(user.clone())
                    .push_bind(key.clone())
                    .push_bind(id.to_string())
                    .push_bind(to_ms(now));
            });
    }
    Ok(out)
}

/// Commits a group of jobs in one transaction: each job's changes in order, then every event
/// (each job's batch followed by what its changes produced) with a fixed number of statements.
async fn write_group(pool: &SqlitePool, jobs: &[Work<'_>]) -> anyhow::Result<Vec<Applied>> {
    let mut tx = pool
        .begin_with("BEGIN IMMEDIATE")
        .await
        .context("begin write")?;
    // Millisecond precision, as stored: live frames and replays carry the same timestamps.
    let now = from_ms(to_ms(Utc::now()));
    let mut outcomes = Vec::with_capacity(jobs.len());
    let mut produced = Vec::with_capacity(jobs.len());
    let mut folded = sqlite_play::Folded::default();
    for job in jobs {
        let mut done = Vec::with_capacity(job.changes.len());
        let mut events = Vec::new();
        for change in job.changes {
            let (outcome, caused) =
                sqlite_play::apply_change(&mut tx, &mut folded, change, now).await?;
            done.push(outcome);
            events.extend(caused);
        }
        outcomes.push(done);
        produced.push(events);
    }
    // Every write after the look-ups goes to SQLite in one round trip: the folded matchmaking
    // rows and the events' rows, which touch different tables.
    let mut writes = Statements::new();
    folded.write_into(&mut writes, now)?;
    let items: Vec<&NewEvent> = jobs
        .iter()
        .zip(&produced)
        .flat_map(|(job, caused)| job.batch.iter().chain(caused.iter()))
        .collect();
    let appended = if items.is_empty() {
        Vec::new()
    } else {
        append_in(&mut tx, &items, now, &mut writes).await?
    };
    writes.run(&mut tx, "writing the group").await?;
    tx.commit().await.context("commit write")?;
    let mut appended = appended.into_iter();
    Ok(outcomes
        .into_iter()
        .zip(&produced)
        .zip(jobs)
        .map(|((outcomes, caused), job)| Applied {
            outcomes,
            appended: appended
                .by_ref()
                .take(job.batch.len() + caused.len())
                .collect(),
        })
        .collect())
}

/// What one job asks of the writer (the job itself holds a hook that is not `Sync`).
struct Work<'a> {
    changes: &'a [Change],
    batch: &'a [NewEvent],
}

/// One `apply_many` call waiting for the writer: one or more works, committed together.
struct WriteJob {
    works: Vec<(Vec<Change>, Vec<NewEvent>)>,
    on_commit: OnCommit,
    reply: oneshot::Sender<anyhow::Result<Vec<Applied>>>,
}

impl WriteJob {
    fn parts(&self) -> impl Iterator<Item = Work<'_>> {
        self.works
            .iter()
            .map(|(changes, batch)| Work { changes, batch })
    }

    fn size(&self) -> usize {
        self.works.iter().map(|(c, b)| c.len() + b.len()).sum()
    }

    fn finish(self, result: anyhow::Result<Vec<Applied>>) {
        match result.as_deref() {
            // One work (every notify): hand its events over as they are, no copy.
            Ok([only]) => (self.on_commit)(&only.appended),
            Ok(applied) => {
                let all: Vec<Appended> = applied
                    .iter()
                    .flat_map(|a| a.appended.iter().cloned())
                    .collect();
                (self.on_commit)(&all);
            }
            Err(_) => {}
        }
        let _ = self.reply.send(result);
    }
}

/// Group commit: takes every append waiting (up to [`MAX_GROUP_EVENTS`] events) into one
/// transaction, so a burst of concurrent requests costs one commit and a few statements. If a
/// group fails, each of its appends is retried alone, so one bad request cannot fail others.
async fn write_loop(pool: SqlitePool, mut jobs: mpsc::Receiver<WriteJob>) {
    while let Some(first) = jobs.recv().await {
        let mut events = first.size();
        let mut group = vec![first];
        while events < MAX_GROUP_EVENTS {
            match jobs.try_recv() {
                Ok(job) => {
                    events += job.size();
                    group.push(job);
                }
                Err(_) => break,
            }
        }
        let parts: Vec<Work<'_>> = group.iter().flat_map(WriteJob::parts).collect();
        match write_group(&pool, &parts).await {
            Ok(results) => {
                // In group order, which is cursor order: live frames leave in commit order.
                let mut results = results.into_iter();
                for job in group {
                    let mine: Vec<Applied> = results.by_ref().take(job.works.len()).collect();
                    job.finish(Ok(mine));
                }
            }
            Err(error) if group.len() == 1 => {
                if let Some(job) = group.pop() {
                    job.finish(Err(error));
                }
            }
            Err(_) => {
                for job in group {
                    let parts: Vec<Work<'_>> = job.parts().collect();
                    let result = write_group(&pool, &parts).await;
                    job.finish(result);
                }
            }
        }
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn apply_many(
        &self,
        works: Vec<(Vec<Change>, Vec<NewEvent>)>,
        on_commit: OnCommit,
    ) -> anyhow::Result<Vec<Applied>> {
        if works.iter().all(|(c, b)| c.is_empty() && b.is_empty()) {
            return Ok(works
                .iter()
                .map(|_| Applied {
                    outcomes: Vec::new(),
                    appended: Vec::new(),
                })
                .collect());
        }
        let (reply, result) = oneshot::channel();
        self.writes
            .send(WriteJob {
                works,
                on_commit,
                reply,
            })
            .await
            .map_err(|_| anyhow::anyhow!("the store writer has stopped"))?;
        result
            .await
            .context("the store writer dropped the request")?
    }

    async fn get_match(&self, id: Uuid) -> anyhow::Result<Option<Match>> {
        sqlite_play::get_match(&self.reader, id).await
    }

    async fn live_matches(&self) -> anyhow::Result<Vec<Match>> {
        sqlite_play::live_matches(&self.reader).await
    }

    async fn pending_challenges(&self) -> anyhow::Result<Vec<Challenge>> {
        sqlite_play::pending_challenges(&self.reader).await
    }

    async fn queued_tickets(&self) -> anyhow::Result<Vec<QueuedTicket>> {
        sqlite_play::queued_tickets(&self.reader).await
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

    async fn expire_idempotency_keys(&self, before: DateTime<Utc>) -> anyhow::Result<u64> {
        let result = sqlx::query("DELETE FROM idempotency_keys WHERE created_at < ?1")
            .bind(to_ms(before))
            .execute(&self.writer)
            .await
            .context("expiring idempotency keys")?;
        Ok(result.rows_affected())
    }

    async fn ping(&self) -> anyhow::Result<()> {
        sqlx::query("SELECT 1")
            .execute(&self.reader)
            .await
            .context("pinging SQLite")?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn look_up_keys_are_padded_to_a_power_of_two_with_no_users_id() {
        assert_eq!(padded(&["a"]), ["a"]);
        assert_eq!(padded(&["a", "b", "c"]), ["a", "b", "c", ""]);
        assert_eq!(padded(&["a"; 5]).len(), 8);
        assert_eq!(padded(&["a"; 32]).len(), 32);
        assert!(UserId::parse("").is_err(), "no user has the padding's id");
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
