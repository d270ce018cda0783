//! SQLite: the SQL of push (devices, preferences, push jobs). Writes go through the writer
//! connection, as every write does on SQLite; the rules are in `push`.

use std::collections::HashMap;

use anyhow::Context;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::sqlite::{SqlitePool, SqliteRow};
use sqlx::{QueryBuilder, Row, Sqlite};
use uuid::Uuid;

use super::push::{
    Device, NewDevice, Platform, PushJob, PushStore, TakenRow, assemble, by_user, distinct,
    padded_ids,
};
use super::sqlite::{COLUMNS, SqliteStore, from_ms, notification_from_row, push_list, to_ms};
use super::writer::{look_up, padded};
use crate::domain::UserId;

/// Job ids one delete names at most.
const MAX_FINISH_BATCH: usize = 256;

const DEVICE_COLUMNS: &str = "id, user_id, platform, token, p256dh, auth, created_at, last_seen";

fn device_from_row(row: &SqliteRow) -> anyhow::Result<Device> {
    let id: String = row.try_get("id")?;
    let user: String = row.try_get("user_id")?;
    let platform: String = row.try_get("platform")?;
    Ok(Device {
        id: Uuid::parse_str(&id).context("stored device id")?,
        user: UserId::parse(user).map_err(anyhow::Error::msg)?,
        platform: Platform::parse(&platform)?,
        token: row.try_get("token")?,
        p256dh: row.try_get("p256dh")?,
        auth: row.try_get("auth")?,
        created_at: from_ms(row.try_get("created_at")?),
        last_seen: from_ms(row.try_get("last_seen")?),
    })
}

/// The stored preferences of the given climbers, in one statement: every stream's connect asks.
pub(super) async fn preferences_of(
    pool: SqlitePool,
    users: Vec<UserId>,
) -> anyhow::Result<HashMap<UserId, String>> {
    let mut qb =
        QueryBuilder::<Sqlite>::new("SELECT user_id, body FROM user_preferences WHERE user_id IN ");
    let keys: Vec<&str> = users.iter().map(UserId::as_str).collect();
    push_list(&mut qb, padded(&keys));
    let rows = qb
        .build()
        .fetch_all(&pool)
        .await
        .context("reading preferences")?;
    let mut found: HashMap<String, String> = HashMap::with_capacity(rows.len());
    for row in &rows {
        found.insert(row.try_get("user_id")?, row.try_get("body")?);
    }
    Ok(by_user(users, found))
}

#[async_trait]
impl PushStore for SqliteStore {
    async fn register_device(
        &self,
        user: &UserId,
        device: &NewDevice,
        max_per_user: u32,
        now: DateTime<Utc>,
    ) -> anyhow::Result<(Device, bool)> {
        let hash = device.token_hash();
        let mut tx = self
            .writer
            .begin_with("BEGIN IMMEDIATE")
            .await
            .context("begin registering a device")?;
        let known: Option<(String, String)> =
            sqlx::query_as("SELECT id, user_id FROM push_devices WHERE token_hash = ?1")
                .bind(&hash)
                .fetch_optional(&mut *tx)
                .await
                .context("looking up a device")?;
        let created = known.is_none();
        let id = match known {
            Some((id, owner)) => {
                sqlx::query(
                    "UPDATE push_devices SET user_id = ?1, p256dh = ?2, auth = ?3, \
                     last_seen = ?4 WHERE id = ?5",
                )
                .bind(user.as_str())
                .bind(device.p256dh.as_deref())
                .bind(device.auth.as_deref())
                .bind(to_ms(now))
                .bind(&id)
                .execute(&mut *tx)
                .await
                .context("refreshing a device")?;
                if owner != user.as_str() {
                    // The phone changed hands: the former climber's pushes stay with them.
                    sqlx::query("DELETE FROM push_jobs WHERE device_id = ?1")
                        .bind(&id)
                        .execute(&mut *tx)
                        .await
                        .context("dropping the former owner's pushes")?;
                }
                id
            }
            None => {
                let id = Uuid::new_v4().to_string();
                sqlx::query(
                    "INSERT INTO push_devices (id, user_id, platform, token, token_hash, \
                     p256dh, auth, created_at, last_seen) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8)",
                )
                .bind(&id)
                .bind(user.as_str())
                .bind(device.platform.as_str())
                .bind(&device.token)
                .bind(&hash)
                .bind(device.p256dh.as_deref())
                .bind(device.auth.as_deref())
                .bind(to_ms(now))
                .execute(&mut *tx)
                .await
                .context("adding a device")?;
                id
            }
        };
        sqlx::query(
            "DELETE FROM push_devices WHERE id IN (SELECT id FROM push_devices \
             WHERE user_id = ?1 ORDER BY last_seen DESC, id LIMIT -1 OFFSET ?2)",
        )
        .bind(user.as_str())
        .bind(i64::from(max_per_user))
        .execute(&mut *tx)
        .await
        .context("dropping devices beyond the limit")?;
        let row = sqlx::query(&format!(
            "SELECT {DEVICE_COLUMNS} FROM push_devices WHERE id = ?1"
        ))
        .bind(&id)
        .fetch_one(&mut *tx)
        .await
        .context("reading the device back")?;
        tx.commit().await.context("commit registering a device")?;
        Ok((device_from_row(&row)?, created))
    }

    async fn devices(&self, user: &UserId) -> anyhow::Result<Vec<Device>> {
        let rows = sqlx::query(&format!(
            "SELECT {DEVICE_COLUMNS} FROM push_devices WHERE user_id = ?1 \
             ORDER BY last_seen DESC, id"
        ))
        .bind(user.as_str())
        .fetch_all(&self.reader)
        .await
        .context("listing devices")?;
        rows.iter().map(device_from_row).collect()
    }

    async fn delete_device(&self, user: Option<&UserId>, id: Uuid) -> anyhow::Result<bool> {
        let result =
            sqlx::query("DELETE FROM push_devices WHERE id = ?1 AND (?2 IS NULL OR user_id = ?2)")
                .bind(id.to_string())
                .bind(user.map(UserId::as_str))
                .execute(&self.writer)
                .await
                .context("removing a device")?;
        Ok(result.rows_affected() > 0)
    }

    async fn prune_devices(&self, before: DateTime<Utc>) -> anyhow::Result<u64> {
        let result = sqlx::query("DELETE FROM push_devices WHERE last_seen < ?1")
            .bind(to_ms(before))
            .execute(&self.writer)
            .await
            .context("pruning devices")?;
        Ok(result.rows_affected())
    }

    async fn preferences(&self, user: &UserId) -> anyhow::Result<Option<String>> {
        look_up(&self.preferences, user.clone(), "preferences").await
    }

    async fn set_preferences(
        &self,
        user: &UserId,
        json: &str,
        now: DateTime<Utc>,
    ) -> anyhow::Result<()> {
        sqlx::query(
            "INSERT INTO user_preferences (user_id, body, updated_at) VALUES (?1, ?2, ?3) \
             ON CONFLICT (user_id) DO UPDATE SET body = excluded.body, \
             updated_at = excluded.updated_at",
        )
        .bind(user.as_str())
        .bind(json)
        .bind(to_ms(now))
        .execute(&self.writer)
        .await
        .context("writing preferences")?;
        Ok(())
    }

    async fn take_push_jobs(
        &self,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        limit: u32,
    ) -> anyhow::Result<Vec<PushJob>> {
        let mut tx = self
            .writer
            .begin_with("BEGIN IMMEDIATE")
            .await
            .context("begin taking push jobs")?;
        let rows = sqlx::query(
            "UPDATE push_jobs SET due_at = ?1 WHERE id IN (SELECT id FROM push_jobs \
             WHERE due_at <= ?2 ORDER BY due_at LIMIT ?3) \
             RETURNING id, device_id, notification_id, attempts",
        )
        .bind(to_ms(lease_until))
        .bind(to_ms(now))
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await
        .context("taking push jobs")?;
        let mut taken = Vec::with_capacity(rows.len());
        for row in &rows {
            let device: String = row.try_get("device_id")?;
            let notification: String = row.try_get("notification_id")?;
            taken.push(TakenRow {
                id: row.try_get("id")?,
                device: Uuid::parse_str(&device)?,
                notification: Uuid::parse_str(&notification)?,
                attempts: u32::try_from(row.try_get::<i64, _>("attempts")?).unwrap_or(0),
            });
        }
        taken.sort_by_key(|row| row.id);
        if taken.is_empty() {
            tx.commit().await.context("commit taking push jobs")?;
            return Ok(Vec::new());
        }
        let mut devices = Vec::new();
        let ids = distinct(taken.iter().map(|row| row.device));
        let mut qb = QueryBuilder::<Sqlite>::new(format!(
            "SELECT {DEVICE_COLUMNS} FROM push_devices WHERE id IN "
        ));
        push_list(&mut qb, ids);
        for row in qb.build().fetch_all(&mut *tx).await? {
            devices.push(device_from_row(&row)?);
        }
        let mut notifications = Vec::new();
        let ids = distinct(taken.iter().map(|row| row.notification));
        let mut qb = QueryBuilder::<Sqlite>::new(format!(
            "SELECT {COLUMNS} FROM notifications WHERE id IN "
        ));
        push_list(&mut qb, ids);
        for row in qb.build().fetch_all(&mut *tx).await? {
            notifications.push(notification_from_row(&row)?);
        }
        tx.commit().await.context("commit taking push jobs")?;
        Ok(assemble(taken, devices, notifications))
    }

    async fn finish_push_jobs(&self, ids: &[i64]) -> anyhow::Result<()> {
        for chunk in ids.chunks(MAX_FINISH_BATCH) {
            let mut qb = QueryBuilder::<Sqlite>::new("DELETE FROM push_jobs WHERE id IN ");
            push_list(&mut qb, padded_ids(chunk));
            qb.build()
                .execute(&self.writer)
                .await
                .context("finishing push jobs")?;
        }
        Ok(())
    }

    async fn retry_push_job(
        &self,
        id: i64,
        due_at: DateTime<Utc>,
        attempts: u32,
    ) -> anyhow::Result<()> {
        sqlx::query("UPDATE push_jobs SET due_at = ?1, attempts = ?2 WHERE id = ?3")
            .bind(to_ms(due_at))
            .bind(i64::from(attempts))
            .bind(id)
            .execute(&self.writer)
            .await
            .context("putting a push job back")?;
        Ok(())
    }

    async fn push_jobs_waiting(&self) -> anyhow::Result<u64> {
        let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM push_jobs")
            .fetch_one(&self.reader)
            .await
            .context("counting push jobs")?;
        Ok(u64::try_from(count).unwrap_or(0))
    }
}
