//! SQLite backend: the embedded default. One writer connection (SQLite has one writer anyway,
//! and a single connection never hits SQLITE_BUSY on upgrade) and a small pool of readers.

use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{Row, Sqlite, Transaction};
use uuid::Uuid;

use super::{AppendOutcome, Appended, ListQuery, NewEvent, Page, ReadSelector, Store};
use crate::domain::{Cursor, Event, Notification, UserId};

/// How long a statement waits for a lock held by another process before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

pub struct SqliteStore {
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
        if !in_memory {
            if let Some(dir) = options
                .get_filename()
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
            {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating database folder {}", dir.display()))?;
            }
        }
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options.clone())
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
                .connect_with(options.read_only(true))
                .await
                .with_context(|| format!("opening readers for {url}"))?
        };
        Ok(SqliteStore { writer, reader })
    }
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
    let data: String = row.try_get("data")?;
    let read_at: Option<i64> = row.try_get("read_at")?;
    let data = serde_json::from_str(&data).context("stored event data is not JSON")?;
    Ok(Notification {
        id: Uuid::parse_str(&id).context("stored notification id")?,
        cursor: Cursor(row.try_get("cursor")?),
        event: Event::from_parts(&kind, data)
            .with_context(|| format!("stored event of kind {kind} does not parse"))?,
        created_at: from_ms(row.try_get("created_at")?),
        updated_at: from_ms(row.try_get("updated_at")?),
        read: read_at.is_some(),
    })
}

const COLUMNS: &str = "id, cursor, kind, data, created_at, updated_at, read_at";

/// Hands out the next cursor of `user` inside the caller's transaction.
async fn bump_cursor(tx: &mut Transaction<'_, Sqlite>, user: &UserId) -> anyhow::Result<Cursor> {
    let next: i64 = sqlx::query_scalar(
        "INSERT INTO user_cursors (user_id, last_cursor) VALUES (?1, 1) \
         ON CONFLICT (user_id) DO UPDATE SET last_cursor = last_cursor + 1 \
         RETURNING last_cursor",
    )
    .bind(user.as_str())
    .fetch_one(&mut **tx)
    .await
    .context("bumping the user's cursor")?;
    Ok(Cursor(next))
}

async fn fetch_by_id(
    tx: &mut Transaction<'_, Sqlite>,
    id: &str,
) -> anyhow::Result<Option<Notification>> {
    let row = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM notifications WHERE id = ?1"
    ))
    .bind(id)
    .fetch_optional(&mut **tx)
    .await?;
    row.as_ref().map(notification_from_row).transpose()
}

async fn append_one(
    tx: &mut Transaction<'_, Sqlite>,
    item: NewEvent,
    now: DateTime<Utc>,
) -> anyhow::Result<Appended> {
    let user = item.user;
    if let Some(key) = &item.idempotency_key {
        let seen: Option<String> = sqlx::query_scalar(
            "SELECT notification_id FROM idempotency_keys WHERE user_id = ?1 AND key = ?2",
        )
        .bind(user.as_str())
        .bind(key.as_str())
        .fetch_optional(&mut **tx)
        .await?;
        if let Some(id) = seen {
            let notification = fetch_by_id(tx, &id)
                .await?
                .context("idempotency key points at a missing notification")?;
            return Ok(Appended {
                user,
                notification,
                outcome: AppendOutcome::Duplicate,
            });
        }
    }

    let cursor = bump_cursor(tx, &user).await?;
    let collapse_key = item.event.collapse_key();
    let previous = match &collapse_key {
        Some(key) => sqlx::query(&format!(
            "SELECT {COLUMNS} FROM notifications WHERE user_id = ?1 AND collapse_key = ?2"
        ))
        .bind(user.as_str())
        .bind(key)
        .fetch_optional(&mut **tx)
        .await?
        .as_ref()
        .map(notification_from_row)
        .transpose()?,
        None => None,
    };

    let (notification, outcome) = match previous {
        Some(prev) => {
            let event = item.event.collapse_onto(prev.event);
            sqlx::query(
                "UPDATE notifications SET cursor = ?1, data = ?2, updated_at = ?3 WHERE id = ?4",
            )
            .bind(cursor.0)
            .bind(event.data_json().to_string())
            .bind(to_ms(now))
            .bind(prev.id.to_string())
            .execute(&mut **tx)
            .await
            .context("collapsing into the unread notification")?;
            let n = Notification {
                cursor,
                event,
                updated_at: now,
                ..prev
            };
            (n, AppendOutcome::Collapsed)
        }
        None => {
            let n = Notification {
                id: Uuid::now_v7(),
                cursor,
                event: item.event,
                created_at: now,
                updated_at: now,
                read: false,
            };
            sqlx::query(
                "INSERT INTO notifications \
                 (id, user_id, cursor, kind, data, collapse_key, created_at, updated_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7)",
            )
            .bind(n.id.to_string())
            .bind(user.as_str())
            .bind(cursor.0)
            .bind(n.event.kind().as_str())
            .bind(n.event.data_json().to_string())
            .bind(collapse_key)
            .bind(to_ms(now))
            .execute(&mut **tx)
            .await
            .context("inserting the notification")?;
            (n, AppendOutcome::Created)
        }
    };

    if let Some(key) = &item.idempotency_key {
        sqlx::query(
            "INSERT INTO idempotency_keys (user_id, key, notification_id, created_at) \
             VALUES (?1, ?2, ?3, ?4)",
        )
        .bind(user.as_str())
        .bind(key.as_str())
        .bind(notification.id.to_string())
        .bind(to_ms(now))
        .execute(&mut **tx)
        .await
        .context("recording the idempotency key")?;
    }
    Ok(Appended {
        user,
        notification,
        outcome,
    })
}

#[async_trait]
impl Store for SqliteStore {
    async fn append(&self, batch: Vec<NewEvent>) -> anyhow::Result<Vec<Appended>> {
        let mut tx = self
            .writer
            .begin_with("BEGIN IMMEDIATE")
            .await
            .context("begin append")?;
        // Millisecond precision, as stored: live frames and replays carry the same timestamps.
        let now = from_ms(to_ms(Utc::now()));
        let mut out = Vec::with_capacity(batch.len());
        for item in batch {
            out.push(append_one(&mut tx, item, now).await?);
        }
        tx.commit().await.context("commit append")?;
        Ok(out)
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
        let unread = if query.unread_only {
            " AND read_at IS NULL"
        } else {
            ""
        };
        let (bound, order, cursor) = match query.page {
            Page::Newest { before: Some(c) } => (" AND cursor < ?2", "DESC", c.0),
            Page::Newest { before: None } => (" AND cursor < ?2", "DESC", i64::MAX),
            Page::After(c) => (" AND cursor > ?2", "ASC", c.0),
        };
        let sql = format!(
            "SELECT {COLUMNS} FROM notifications WHERE user_id = ?1{bound}{unread} \
             ORDER BY cursor {order} LIMIT ?3"
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
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM notifications WHERE user_id = ?1 AND read_at IS NULL",
        )
        .bind(user.as_str())
        .fetch_one(&self.reader)
        .await
        .context("counting unread notifications")?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn mark_read(&self, user: &UserId, selector: &ReadSelector) -> anyhow::Result<u64> {
        let now = to_ms(Utc::now());
        // Clearing collapse_key ends collapsing: the next like of that post is a new notification.
        let base = "UPDATE notifications SET read_at = ?1, collapse_key = NULL \
                    WHERE user_id = ?2 AND read_at IS NULL";
        let result = match selector {
            ReadSelector::All => {
                sqlx::query(base)
                    .bind(now)
                    .bind(user.as_str())
                    .execute(&self.writer)
                    .await
            }
            ReadSelector::UpTo(c) => {
                sqlx::query(&format!("{base} AND cursor <= ?3"))
                    .bind(now)
                    .bind(user.as_str())
                    .bind(c.0)
                    .execute(&self.writer)
                    .await
            }
            ReadSelector::Ids(ids) => {
                if ids.is_empty() {
                    return Ok(0);
                }
                let marks: Vec<String> = (0..ids.len()).map(|i| format!("?{}", i + 3)).collect();
                let sql = format!("{base} AND id IN ({})", marks.join(", "));
                let mut q = sqlx::query(&sql).bind(now).bind(user.as_str());
                for id in ids {
                    q = q.bind(id.to_string());
                }
                q.execute(&self.writer).await
            }
        }
        .context("marking notifications read")?;
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
