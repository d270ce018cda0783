//! PostgreSQL backend: several Belay nodes share one database. Each node's writer locks the head
//! rows of a group's users in user-id order, reads under those locks (READ COMMITTED: each
//! statement sees what the previous holder committed) and writes everything in one statement.
//! Every array of rows is bound as one parameter (`unnest`), so statement texts never depend on
//! a batch's size and stay prepared.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions, PgRow};
use sqlx::{Connection, Postgres, Row, Transaction};
use tokio::sync::mpsc;
use uuid::Uuid;

use super::postgres_play;
use super::rules::{AppendWrites, FoldedRows, Stored};
use super::writer::{
    Backend, GroupTx, Lookup, Writer, is_conflict, jitter, look_up, spawn_lookups,
};
use super::{
    Applied, Change, ListQuery, NewEvent, OnCommit, Page, ReadSelector, Store, UnreadSnapshot,
};
use crate::domain::{
    Challenge, Cursor, Discipline, Event, LeaderboardEntry, Match, Notification, QueuedTicket,
    Rating, UserId,
};

/// How long taking a connection from the pool (opening one included) may take before failing:
/// an unreachable server fails `connect` within this, and the caller retries.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// Look-ups one statement answers at most (the keys travel as one array parameter).
const MAX_LOOKUP_BATCH: usize = 256;
/// Unread summaries one statement answers at most: each user brings up to `latest` rows.
const MAX_SUMMARY_BATCH: usize = 64;
/// Times `mark_read` runs again after losing a deadlock before its caller sees the error.
const MARK_READ_ATTEMPTS: u32 = 5;
/// The first wait before running `mark_read` again; it doubles, with jitter, each time.
const MARK_READ_BACKOFF: Duration = Duration::from_millis(5);

pub struct PgStore {
    writes: Writer,
    ratings: mpsc::Sender<Lookup<(UserId, Discipline), Rating>>,
    heads: mpsc::Sender<Lookup<UserId, (i64, i64)>>,
    summaries: mpsc::Sender<Lookup<(UserId, u32), UnreadSnapshot>>,
    pub(super) preferences: mpsc::Sender<Lookup<UserId, String>>,
    pub(super) pool: PgPool,
}

impl PgStore {
    pub async fn connect(url: &str, max_connections: u32) -> anyhow::Result<Self> {
        // The URL may hold a password: errors name the server and database only.
        let options = PgConnectOptions::from_str(url).context("parsing the PostgreSQL url")?;
        let server = format!(
            "PostgreSQL at {}:{} (database {:?})",
            options.get_host(),
            options.get_port(),
            options.get_database().unwrap_or_default()
        );
        // One connection first, without the pool's own retries (it waits out a refused
        // connection until its acquire timeout): a server that is down fails at once with the
        // reason, and the caller decides when to try again. It also runs the migrations, under
        // sqlx's advisory lock, so nodes starting together take turns.
        let mut first = tokio::time::timeout(ACQUIRE_TIMEOUT, PgConnection::connect_with(&options))
            .await
            .unwrap_or_else(|_| {
                Err(sqlx::Error::Io(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no answer within {ACQUIRE_TIMEOUT:?}"),
                )))
            })
            .with_context(|| format!("connecting to {server}"))?;
        MIGRATOR
            .run(&mut first)
            .await
            .with_context(|| format!("applying migrations to {server}"))?;
        first.close().await.ok();
        // No ping before lending a connection: it was one more round trip per write group and
        // per read. A connection the server dropped fails its next use instead; the writer
        // opens its transaction again on a fresh one (writer.rs), a read answers 503 once.
        let pool = PgPoolOptions::new()
            .max_connections(max_connections.max(1))
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .test_before_acquire(false)
            .connect_with(options)
            .await
            .with_context(|| format!("connecting to {server}"))?;
        let writes = Writer::spawn(Arc::new(PgBackend { pool: pool.clone() }));
        let reader = pool.clone();
        let ratings = spawn_lookups(MAX_LOOKUP_BATCH, move |keys| {
            postgres_play::ratings_by_key(reader.clone(), keys)
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
            super::postgres_push::preferences_of(lookup_pool.clone(), users)
        });
        Ok(PgStore {
            writes,
            ratings,
            heads,
            summaries,
            preferences,
            pool,
        })
    }
}

pub(super) fn to_ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

pub(super) fn from_ms(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

pub(super) const COLUMNS: &str = "id, cursor, kind, data, created_at, updated_at, read_at";

pub(super) fn notification_from_row(row: &PgRow) -> anyhow::Result<Notification> {
    let id: &str = row.try_get("id")?;
    let kind: &str = row.try_get("kind")?;
    let data: &str = row.try_get("data")?;
    let read_at: Option<i64> = row.try_get("read_at")?;
    Ok(Notification {
        id: Uuid::parse_str(id).context("stored notification id")?,
        cursor: Cursor(row.try_get("cursor")?),
        event: Event::from_stored(kind, data)
            .with_context(|| format!("stored event of kind {kind} does not parse"))?,
        created_at: from_ms(row.try_get("created_at")?),
        updated_at: from_ms(row.try_get("updated_at")?),
        read: read_at.is_some(),
    })
}

fn stored_from_row(row: &PgRow) -> anyhow::Result<Stored> {
    Ok(Stored {
        notification: notification_from_row(row)?,
        user: UserId::parse(row.try_get::<String, _>("user_id")?).map_err(anyhow::Error::msg)?,
        collapse_key: row.try_get("collapse_key")?,
    })
}

/// The two columns of `(a, b)` pairs, to bind as two arrays.
fn columns_of(pairs: &[(String, String)]) -> (Vec<&str>, Vec<&str>) {
    pairs.iter().map(|(a, b)| (a.as_str(), b.as_str())).unzip()
}

/// The unread count and head cursor of the given users, in one statement. Both come from one
/// row, written by the same commits: no commit falls between the two numbers.
async fn unread_heads_of(
    pool: PgPool,
    users: Vec<UserId>,
) -> anyhow::Result<HashMap<UserId, (i64, i64)>> {
    let keys: Vec<&str> = users.iter().map(UserId::as_str).collect();
    let rows = sqlx::query(
        "SELECT user_id, unread, last_cursor FROM user_cursors WHERE user_id = ANY($1::text[])",
    )
    .bind(&keys)
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
        .iter()
        .filter_map(|user| Some((user.clone(), *rows.get(user.as_str())?)))
        .collect())
}

/// The unread snapshots of the given users, each with up to its own number of newest unread
/// notifications, in one statement: one snapshot, so each count, head and list agree. Each
/// user's walk down their notifications stops once it has found as many as they have unread.
async fn unread_summaries_of(
    pool: PgPool,
    keys: Vec<(UserId, u32)>,
) -> anyhow::Result<HashMap<(UserId, u32), UnreadSnapshot>> {
    let most = i64::from(keys.iter().map(|(_, latest)| *latest).max().unwrap_or(0));
    let users: Vec<&str> = keys
        .iter()
        .map(|(user, _)| user.as_str())
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let rows = sqlx::query(
        "SELECT u.user_id AS owner, u.unread, u.last_cursor, \
         n.id, n.cursor, n.kind, n.data, n.created_at, n.updated_at, n.read_at \
         FROM user_cursors u LEFT JOIN LATERAL ( \
             SELECT id, cursor, kind, data, created_at, updated_at, read_at FROM notifications \
             WHERE user_id = u.user_id AND read_at IS NULL \
             ORDER BY cursor DESC LIMIT LEAST($2, GREATEST(u.unread, 0)) \
         ) n ON true \
         WHERE u.user_id = ANY($1::text[])",
    )
    .bind(&users)
    .bind(most)
    .fetch_all(&pool)
    .await
    .context("reading unread summaries")?;
    let mut found: HashMap<&str, UnreadSnapshot> = HashMap::new();
    for row in &rows {
        let owner: &str = row.try_get("owner")?;
        let snapshot = match found.entry(owner) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                let unread: i64 = row.try_get("unread")?;
                e.insert(UnreadSnapshot {
                    count: u64::try_from(unread).unwrap_or(0),
                    head: Cursor(row.try_get("last_cursor")?),
                    latest: Vec::new(),
                })
            }
        };
        if row.try_get::<Option<&str>, _>("id")?.is_some() {
            snapshot.latest.push(notification_from_row(row)?);
        }
    }
    for snapshot in found.values_mut() {
        snapshot.latest.sort_by_key(|n| std::cmp::Reverse(n.cursor));
    }
    Ok(keys
        .into_iter()
        .filter_map(|(user, latest)| {
            let mut snapshot = found.get(user.as_str())?.clone();
            snapshot.latest.truncate(latest as usize);
            Some(((user, latest), snapshot))
        })
        .collect())
}

/// The writer's side of PostgreSQL, for the group-commit task.
struct PgBackend {
    pool: PgPool,
}

#[async_trait]
impl Backend for PgBackend {
    async fn begin(&self) -> anyhow::Result<Box<dyn GroupTx>> {
        // READ COMMITTED (the server's default): every read after `lock_heads` sees what the
        // previous holder of those locks committed.
        let tx = self.pool.begin().await.context("begin write")?;
        Ok(Box::new(PgTx { tx }))
    }

    async fn ping(&self) -> anyhow::Result<()> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .context("pinging the PostgreSQL writer")?;
        Ok(())
    }
}

/// One group's transaction.
pub(super) struct PgTx {
    pub(super) tx: Transaction<'static, Postgres>,
}

/// Every row a group writes, in one statement: the folded matchmaking rows and the appends'
/// rows touch different rows (new and moved notifications are different rows, saved and
/// dropped tickets different users), so the parts never see or hinder each other. A part
/// whose arrays are empty writes nothing.
const WRITE_GROUP: &str = "WITH \
    new_rows AS ( \
        INSERT INTO notifications \
        (id, user_id, cursor, kind, data, collapse_key, created_at, updated_at) \
        SELECT * FROM unnest($2::text[], $3::text[], $4::int8[], $5::text[], $6::text[], \
                             $7::text[], $8::int8[], $9::int8[])), \
    moved AS ( \
        UPDATE notifications n SET cursor = v.cursor, data = v.data, updated_at = $1 \
        FROM unnest($10::text[], $11::int8[], $12::text[]) AS v(id, cursor, data) \
        WHERE n.id = v.id), \
    heads AS ( \
        UPDATE user_cursors SET last_cursor = v.c, unread = user_cursors.unread + v.n \
        FROM unnest($13::text[], $14::int8[], $15::int8[]) AS v(u, c, n) \
        WHERE user_id = v.u), \
    keys AS ( \
        INSERT INTO idempotency_keys (user_id, key, notification_id, created_at) \
        SELECT u, k, id, $1 FROM unnest($16::text[], $17::text[], $18::text[]) AS v(u, k, id) \
        ON CONFLICT (user_id, key) DO UPDATE SET \
        notification_id = EXCLUDED.notification_id, created_at = EXCLUDED.created_at), \
    climbers AS ( \
        INSERT INTO climbers (user_id, first_seen) \
        SELECT u, $1 FROM unnest($19::text[]) AS u \
        ON CONFLICT DO NOTHING), \
    challenges AS ( \
        INSERT INTO challenges (id, status, from_user, to_user, data, created_at) \
        SELECT * FROM unnest($20::text[], $21::text[], $22::text[], $23::text[], $24::text[], \
                             $25::int8[]) \
        ON CONFLICT (id) DO UPDATE SET status = EXCLUDED.status, data = EXCLUDED.data), \
    matches AS ( \
        INSERT INTO matches \
        (id, status, discipline, player_a, player_b, data, created_at, updated_at) \
        SELECT * FROM unnest($26::text[], $27::text[], $28::text[], $29::text[], $30::text[], \
                             $31::text[], $32::int8[], $33::int8[]) \
        ON CONFLICT (id) DO UPDATE SET status = EXCLUDED.status, data = EXCLUDED.data, \
        updated_at = EXCLUDED.updated_at), \
    saved_tickets AS ( \
        INSERT INTO queue_tickets (user_id, discipline, scope, rating, queued_at) \
        SELECT * FROM unnest($34::text[], $35::text[], $36::text[], $37::float8[], $38::int8[]) \
        ON CONFLICT (user_id) DO UPDATE SET discipline = EXCLUDED.discipline, \
        scope = EXCLUDED.scope, rating = EXCLUDED.rating, queued_at = EXCLUDED.queued_at), \
    dropped_tickets AS ( \
        DELETE FROM queue_tickets WHERE user_id = ANY($39::text[])), \
    push_jobs AS ( \
        INSERT INTO push_jobs \
        (device_id, user_id, notification_id, due_at, attempts, created_at) \
        SELECT d.id, d.user_id, v.n, v.due, 0, $1 \
        FROM unnest($40::text[], $41::text[], $42::int8[]) AS v(u, n, due) \
        JOIN push_devices d ON d.user_id = v.u \
        ON CONFLICT (device_id, notification_id) DO UPDATE SET \
        due_at = EXCLUDED.due_at, attempts = 0) \
    SELECT 1";

#[async_trait]
impl GroupTx for PgTx {
    async fn idempotency_keys(
        &mut self,
        pairs: &[(String, String)],
    ) -> anyhow::Result<HashMap<(String, String), Uuid>> {
        let (users, keys) = columns_of(pairs);
        let rows = sqlx::query(
            "SELECT user_id, key, notification_id FROM idempotency_keys \
             WHERE (user_id, key) IN (SELECT * FROM unnest($1::text[], $2::text[]))",
        )
        .bind(&users)
        .bind(&keys)
        .fetch_all(&mut *self.tx)
        .await
        .context("reading idempotency keys")?;
        rows.iter()
            .map(|row| {
                let id: &str = row.try_get("notification_id")?;
                Ok((
                    (row.try_get("user_id")?, row.try_get("key")?),
                    Uuid::parse_str(id).context("stored notification id of a key")?,
                ))
            })
            .collect()
    }

    async fn notifications(&mut self, ids: &[Uuid]) -> anyhow::Result<Vec<Stored>> {
        let ids: Vec<String> = ids.iter().map(Uuid::to_string).collect();
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS}, user_id, collapse_key FROM notifications WHERE id = ANY($1::text[])"
        ))
        .bind(&ids)
        .fetch_all(&mut *self.tx)
        .await
        .context("reading notifications by id")?;
        rows.iter().map(stored_from_row).collect()
    }

    async fn open_collapsible(
        &mut self,
        pairs: &[(String, String)],
    ) -> anyhow::Result<Vec<Stored>> {
        let (users, keys) = columns_of(pairs);
        // The `IS NOT NULL` term lets the planner use the partial index on collapse keys.
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS}, user_id, collapse_key FROM notifications \
             WHERE collapse_key IS NOT NULL \
             AND (user_id, collapse_key) IN (SELECT * FROM unnest($1::text[], $2::text[]))"
        ))
        .bind(&users)
        .bind(&keys)
        .fetch_all(&mut *self.tx)
        .await
        .context("reading notifications that collapse")?;
        rows.iter().map(stored_from_row).collect()
    }

    async fn finish(
        mut self: Box<Self>,
        folded: FoldedRows<'_>,
        writes: AppendWrites,
        now: DateTime<Utc>,
    ) -> anyhow::Result<()> {
        let new_rows = &writes.new_rows;
        let moved = &writes.moved;
        let heads = &writes.heads;
        let challenges: Vec<String> = folded
            .challenges
            .iter()
            .map(serde_json::to_string)
            .collect::<Result<_, _>>()
            .context("encoding challenges")?;
        let matches: Vec<String> = folded
            .matches
            .iter()
            .map(serde_json::to_string)
            .collect::<Result<_, _>>()
            .context("encoding matches")?;
        let tickets = &folded.saved_tickets;
        sqlx::query(WRITE_GROUP)
            .bind(to_ms(now))
            // New notifications.
            .bind(col(new_rows, |r| r.notification.id.to_string()))
            .bind(col(new_rows, |r| r.user.as_str()))
            .bind(col(new_rows, |r| r.notification.cursor.0))
            .bind(col(new_rows, |r| r.notification.event.kind().as_str()))
            .bind(col(new_rows, |r| r.data.as_str()))
            .bind(col(new_rows, |r| r.collapse_key.as_deref()))
            .bind(col(new_rows, |r| to_ms(r.notification.created_at)))
            .bind(col(new_rows, |r| to_ms(r.notification.updated_at)))
            // Collapsed notifications moving to a new cursor.
            .bind(col(moved, |m| m.id.to_string()))
            .bind(col(moved, |m| m.cursor))
            .bind(col(moved, |m| m.data.as_str()))
            // Head rows.
            .bind(col(heads, |h| h.user.as_str()))
            .bind(col(heads, |h| h.last_cursor))
            .bind(col(heads, |h| h.created))
            // Idempotency keys.
            .bind(col(&writes.keys, |(user, _, _)| user.as_str()))
            .bind(col(&writes.keys, |(_, key, _)| key.as_str()))
            .bind(col(&writes.keys, |(_, _, id)| id.to_string()))
            // Folded matchmaking rows.
            .bind(&folded.climbers)
            .bind(col(&folded.challenges, |c| c.challenge_id.to_string()))
            .bind(col(&folded.challenges, |c| c.status.as_str()))
            .bind(col(&folded.challenges, |c| c.from.as_str()))
            .bind(col(&folded.challenges, |c| c.to.as_str()))
            .bind(&challenges)
            .bind(col(&folded.challenges, |c| to_ms(c.created_at)))
            .bind(col(&folded.matches, |m| m.match_id.to_string()))
            .bind(col(&folded.matches, |m| m.status.as_str()))
            .bind(col(&folded.matches, |m| m.discipline.as_str()))
            .bind(col(&folded.matches, |m| m.players[0].user_id.as_str()))
            .bind(col(&folded.matches, |m| m.players[1].user_id.as_str()))
            .bind(&matches)
            .bind(col(&folded.matches, |m| to_ms(m.created_at)))
            .bind(col(&folded.matches, |m| to_ms(m.updated_at)))
            .bind(col(tickets, |t| t.user.as_str()))
            .bind(col(tickets, |t| t.discipline.as_str()))
            .bind(col(tickets, |t| t.scope.as_ref().map(|s| s.as_str())))
            .bind(col(tickets, |t| t.rating))
            .bind(col(tickets, |t| to_ms(t.queued_at)))
            .bind(&folded.dropped_tickets)
            // Push jobs: one per device of each user, as the devices are now.
            .bind(col(&writes.push_jobs, |j| j.user.as_str()))
            .bind(col(&writes.push_jobs, |j| j.notification.to_string()))
            .bind(col(&writes.push_jobs, |j| j.due_at))
            .execute(&mut *self.tx)
            .await
            .context("writing the group")?;
        self.tx.commit().await.context("commit write")?;
        Ok(())
    }
}

/// One column of `rows`, to bind as an array.
fn col<'a, R, T>(rows: &'a [R], f: impl Fn(&'a R) -> T) -> Vec<T> {
    rows.iter().map(f).collect()
}

/// Marks notifications of `user` read in one transaction: the head row first (the lock order
/// of the writers, who lock heads before touching notifications), then the rows and the count.
async fn mark_read_once(
    pool: &PgPool,
    user: &UserId,
    selector: &ReadSelector,
    now: i64,
) -> anyhow::Result<u64> {
    // Clearing collapse_key ends collapsing: the next like of that post is a new notification.
    let (only, cursor, ids): (&str, i64, Vec<String>) = match selector {
        ReadSelector::All => ("", 0, Vec::new()),
        ReadSelector::UpTo(c) => (" AND cursor <= $3", c.0, Vec::new()),
        ReadSelector::Ids(ids) => (
            " AND id = ANY($4::text[])",
            0,
            ids.iter().map(Uuid::to_string).collect(),
        ),
    };
    let sql = format!(
        "WITH marked AS ( \
             UPDATE notifications SET read_at = $1, collapse_key = NULL \
             WHERE user_id = $2 AND read_at IS NULL{only} RETURNING 1), \
         counted AS (SELECT COUNT(*) AS n FROM marked) \
         UPDATE user_cursors SET unread = unread - counted.n FROM counted \
         WHERE user_id = $2 AND counted.n > 0 RETURNING counted.n"
    );
    let mut tx = pool.begin().await.context("begin marking read")?;
    sqlx::query("SELECT 1 FROM user_cursors WHERE user_id = $1 FOR UPDATE")
        .bind(user.as_str())
        .fetch_optional(&mut *tx)
        .await
        .context("locking the head row")?;
    // Every selector binds the same parameters, unused ones included.
    let marked = sqlx::query_scalar::<_, i64>(&sql)
        .bind(now)
        .bind(user.as_str())
        .bind(cursor)
        .bind(ids)
        .fetch_optional(&mut *tx)
        .await
        .context("marking notifications read")?
        .unwrap_or(0);
    tx.commit().await.context("commit marking read")?;
    Ok(u64::try_from(marked).unwrap_or(0))
}

#[async_trait]
impl Store for PgStore {
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
        postgres_play::get_match(&self.pool, id).await
    }

    async fn live_matches(&self) -> anyhow::Result<Vec<Match>> {
        postgres_play::live_matches(&self.pool).await
    }

    async fn pending_challenges(&self) -> anyhow::Result<Vec<Challenge>> {
        postgres_play::pending_challenges(&self.pool, None).await
    }

    async fn matchmaker_fence(&self) -> anyhow::Result<super::MatchmakerFence> {
        postgres_play::matchmaker_fence(&self.pool).await
    }

    async fn queued_tickets(&self) -> anyhow::Result<Vec<QueuedTicket>> {
        postgres_play::queued_tickets(&self.pool, None).await
    }

    async fn standing_of(&self, user: &UserId) -> anyhow::Result<super::StoredStanding> {
        postgres_play::standing_of(&self.pool, user).await
    }

    async fn latest_match(&self, user: &UserId) -> anyhow::Result<Option<Match>> {
        postgres_play::latest_match_of(&self.pool, user).await
    }

    async fn user_known(&self, user: &UserId) -> anyhow::Result<bool> {
        postgres_play::user_known(&self.pool, user).await
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
        postgres_play::leaderboard(&self.pool, discipline, offset, limit).await
    }

    async fn events_after(
        &self,
        user: &UserId,
        after: Cursor,
        limit: u32,
    ) -> anyhow::Result<Vec<Notification>> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM notifications WHERE user_id = $1 AND cursor > $2 \
             ORDER BY cursor ASC LIMIT $3"
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
            sqlx::query_scalar("SELECT last_cursor FROM user_cursors WHERE user_id = $1")
                .bind(user.as_str())
                .fetch_optional(&self.pool)
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
                "LEAST($3, GREATEST(COALESCE( \
                 (SELECT unread FROM user_cursors WHERE user_id = $1), 0), 0))",
            )
        } else {
            ("", "$3")
        };
        let (bound, order, cursor) = match query.page {
            Page::Newest { before: Some(c) } => (" AND cursor < $2", "DESC", c.0),
            Page::Newest { before: None } => (" AND cursor < $2", "DESC", i64::MAX),
            Page::After(c) => (" AND cursor > $2", "ASC", c.0),
        };
        let sql = format!(
            "SELECT {COLUMNS} FROM notifications WHERE user_id = $1{bound}{unread} \
             ORDER BY cursor {order} LIMIT {limit}"
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
        let now = to_ms(Utc::now());
        let mut wait = MARK_READ_BACKOFF;
        let mut attempt = 1;
        loop {
            match mark_read_once(&self.pool, user, selector, now).await {
                Err(error) if attempt < MARK_READ_ATTEMPTS && is_conflict(&error) => {
                    tracing::debug!(attempt, error = %error, "marking read conflicted; again");
                    tokio::time::sleep(jitter(wait)).await;
                    wait = wait.saturating_mul(2);
                    attempt += 1;
                }
                result => return result,
            }
        }
    }

    async fn delete_read_before(&self, before: DateTime<Utc>, limit: u32) -> anyhow::Result<u64> {
        // Oldest rows first (ids are UUIDv7: their order is their creation order), walking the
        // primary key until `limit` of them are found. Rows another node is deleting are
        // skipped, not waited for: two nodes' passes never block or deadlock each other.
        let result = sqlx::query(
            "DELETE FROM notifications WHERE id IN (SELECT id FROM notifications \
             WHERE read_at IS NOT NULL AND updated_at < $1 ORDER BY id LIMIT $2 \
             FOR UPDATE SKIP LOCKED)",
        )
        .bind(to_ms(before))
        .bind(i64::from(limit))
        .execute(&self.pool)
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
        // rows at or below the cursor just under their `keep` newest. Only the notifications
        // are locked (never a head row), and those another node is deleting are skipped.
        let result = sqlx::query(
            "DELETE FROM notifications WHERE id IN ( \
                 SELECT n.id FROM user_cursors u \
                 CROSS JOIN LATERAL (SELECT cursor FROM notifications \
                     WHERE user_id = u.user_id ORDER BY cursor DESC OFFSET $1 LIMIT 1) edge \
                 JOIN notifications n ON n.user_id = u.user_id AND n.cursor <= edge.cursor \
                 WHERE u.last_cursor > $1 AND n.read_at IS NOT NULL AND n.updated_at < $2 \
                 ORDER BY n.id LIMIT $3 FOR UPDATE OF n SKIP LOCKED)",
        )
        .bind(i64::from(keep))
        .bind(to_ms(before))
        .bind(i64::from(limit))
        .execute(&self.pool)
        .await
        .context("deleting read notifications beyond the per-user limit")?;
        Ok(result.rows_affected())
    }

    async fn expire_idempotency_keys(&self, before: DateTime<Utc>) -> anyhow::Result<u64> {
        let result = sqlx::query("DELETE FROM idempotency_keys WHERE created_at < $1")
            .bind(to_ms(before))
            .execute(&self.pool)
            .await
            .context("expiring idempotency keys")?;
        Ok(result.rows_affected())
    }

    async fn database_size_bytes(&self) -> anyhow::Result<u64> {
        let bytes: i64 = sqlx::query_scalar("SELECT pg_database_size(current_database())")
            .fetch_one(&self.pool)
            .await
            .context("reading the PostgreSQL database size")?;
        Ok(u64::try_from(bytes).unwrap_or(0))
    }

    async fn ping(&self) -> anyhow::Result<()> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .context("pinging PostgreSQL")?;
        // Reads alone would say ready while every write fails.
        self.writes.ping().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::rules::PlayTx;

    /// The test server: `BELAY_TEST_POSTGRES_URL`, or this machine's (trust auth).
    fn admin_url() -> String {
        std::env::var("BELAY_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
    }

    /// A fresh database and its URL; `None` (after saying why) without a server.
    async fn fresh_database() -> Option<(String, String)> {
        let admin = admin_url();
        let name = format!("belay_unit_{}", Uuid::new_v4().simple());
        let created = async {
            let mut conn = sqlx::PgConnection::connect(&admin).await?;
            sqlx::raw_sql(&format!("CREATE DATABASE {name}"))
                .execute(&mut conn)
                .await
        };
        match created.await {
            Ok(_) => {
                let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b);
                Some((name.clone(), format!("{base}/{name}")))
            }
            Err(error) => {
                eprintln!("skipping: no PostgreSQL at {admin} ({error})");
                None
            }
        }
    }

    async fn drop_database(name: &str) {
        let mut conn = sqlx::PgConnection::connect(&admin_url())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        sqlx::raw_sql(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .execute(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }

    async fn begin(store: &PgStore) -> PgTx {
        PgTx {
            tx: store.pool.begin().await.unwrap_or_else(|e| panic!("{e}")),
        }
    }

    fn users(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| (*s).to_owned()).collect()
    }

    /// A server that refuses connections fails `connect` at once, with an error that names the
    /// server, keeps sqlx's error for the caller to classify, and never shows the password.
    #[tokio::test]
    async fn connecting_to_no_server_fails_fast_and_hides_the_password() {
        let started = std::time::Instant::now();
        let result = PgStore::connect("postgres://belay:s3cret@127.0.0.1:1/belay", 2).await;
        let Err(error) = result else {
            panic!("nothing listens on port 1")
        };
        assert!(
            started.elapsed() < ACQUIRE_TIMEOUT / 2,
            "{:?}",
            started.elapsed()
        );
        let text = format!("{error:#}");
        assert!(text.contains("127.0.0.1:1"), "{text}");
        assert!(!text.contains("s3cret"), "{text}");
        assert!(
            error.chain().any(|c| c.is::<sqlx::Error>()),
            "sqlx's error stays in the chain: {error:?}"
        );
    }

    /// `lock_heads` creates the head rows it does not find (at cursor 0) and returns the last
    /// cursor of those it does.
    #[tokio::test]
    async fn locking_heads_creates_the_missing_rows_and_returns_every_head() {
        let Some((name, url)) = fresh_database().await else {
            return;
        };
        let store = PgStore::connect(&url, 2)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        sqlx::query("INSERT INTO user_cursors (user_id, last_cursor, unread) VALUES ('bob', 7, 2)")
            .execute(&store.pool)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let mut tx = begin(&store).await;
        let heads = tx
            .lock_heads(&users(&["ana", "bob", "cy"]))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        tx.tx.commit().await.unwrap_or_else(|e| panic!("{e}"));
        let expected: HashMap<String, i64> =
            [("ana".into(), 0), ("bob".into(), 7), ("cy".into(), 0)].into();
        assert_eq!(heads, expected);
        let rows: Vec<(String, i64, i64)> = sqlx::query_as(
            "SELECT user_id, last_cursor, unread FROM user_cursors ORDER BY user_id",
        )
        .fetch_all(&store.pool)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            rows,
            vec![
                ("ana".into(), 0, 0),
                ("bob".into(), 7, 2),
                ("cy".into(), 0, 0)
            ]
        );
        drop(store);
        drop_database(&name).await;
    }

    /// Retention skips the rows another node's pass holds instead of waiting for them, and
    /// deletes only read rows, oldest first.
    #[tokio::test]
    async fn retention_skips_rows_another_pass_holds_and_keeps_unread_ones() {
        use crate::domain::{PostId, PostLiked};
        let Some((name, url)) = fresh_database().await else {
            return;
        };
        let store = PgStore::connect(&url, 4)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let user = |s: &str| UserId::parse(s).unwrap_or_else(|e| panic!("{e}"));
        let likes: Vec<NewEvent> = (1..=10)
            .map(|i| NewEvent {
                user: user("ana"),
                event: Event::PostLiked(PostLiked::new(
                    PostId::parse(format!("p{i}")).unwrap_or_else(|e| panic!("{e}")),
                    user("bob"),
                )),
                idempotency_key: None,
            })
            .collect();
        store.append(likes).await.unwrap_or_else(|e| panic!("{e}"));
        store
            .mark_read(&user("ana"), &ReadSelector::UpTo(Cursor(6)))
            .await
            .unwrap_or_else(|e| panic!("{e}"));

        // Another pass holds the oldest read row.
        let mut other = store.pool.begin().await.unwrap_or_else(|e| panic!("{e}"));
        sqlx::query("SELECT 1 FROM notifications WHERE cursor = 1 FOR UPDATE")
            .execute(&mut *other)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let later = Utc::now() + chrono::Duration::days(1);
        let deleted = tokio::time::timeout(
            Duration::from_secs(5),
            store.delete_read_beyond(2, later, 100),
        )
        .await
        .unwrap_or_else(|_| panic!("retention waited for the held row"))
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(deleted, 5, "cursors 2..=6: read, and not held");
        other.rollback().await.unwrap_or_else(|e| panic!("{e}"));

        assert_eq!(
            store.delete_read_before(later, 100).await.ok(),
            Some(1),
            "the row no longer held"
        );
        let left: Vec<i64> = store
            .events_after(&user("ana"), Cursor::ZERO, 100)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .iter()
            .map(|n| n.cursor.0)
            .collect();
        assert_eq!(left, vec![7, 8, 9, 10]);
        assert_eq!(store.unread_count(&user("ana")).await.ok(), Some(4));
        assert_eq!(store.head(&user("ana")).await.ok(), Some(Cursor(10)));
        drop(store);
        drop_database(&name).await;
    }

    /// Two nodes that lock the same head rows in different orders (an ascent locks its climber
    /// before the group locks everyone) deadlock; the loser's error is a conflict, which the
    /// writer runs again, and the winner commits.
    #[tokio::test]
    async fn a_deadlock_between_two_nodes_is_a_conflict_to_run_again() {
        let Some((name, url)) = fresh_database().await else {
            return;
        };
        let nodes = [
            PgStore::connect(&url, 2)
                .await
                .unwrap_or_else(|e| panic!("{e}")),
            PgStore::connect(&url, 2)
                .await
                .unwrap_or_else(|e| panic!("{e}")),
        ];
        let mut first = begin(&nodes[0]).await;
        let mut second = begin(&nodes[1]).await;
        first
            .lock_heads(&users(&["bob"]))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        second
            .lock_heads(&users(&["ana"]))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let both = users(&["ana", "bob"]);
        let (a, b) = tokio::join!(
            async {
                let locked = first.lock_heads(&both).await;
                (locked, first)
            },
            async {
                let locked = second.lock_heads(&both).await;
                (locked, second)
            }
        );
        let (won, lost) = match (a, b) {
            ((Ok(_), won), (Err(error), _)) | ((Err(error), _), (Ok(_), won)) => (won, error),
            (a, b) => panic!("one of them loses: {:?} {:?}", a.0, b.0),
        };
        assert!(is_conflict(&lost), "{lost:#}");
        won.tx.commit().await.unwrap_or_else(|e| panic!("{e}"));
        drop(nodes);
        drop_database(&name).await;
    }
}
