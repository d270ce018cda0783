//! PostgreSQL: the SQL of push (devices, preferences, push jobs). Nodes take jobs with
//! `FOR UPDATE SKIP LOCKED`, so two nodes taking at once take different ones; the rules are in
//! `push`.

use std::collections::HashMap;

use anyhow::Context;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::Row;
use sqlx::postgres::{PgPool, PgRow};
use uuid::Uuid;

use super::postgres::{COLUMNS, PgStore, from_ms, notification_from_row, to_ms};
use super::push::{
    Device, NewDevice, Platform, PushJob, PushStore, TakenRow, assemble, by_user, distinct,
};
use super::writer::look_up;
use crate::domain::UserId;

const DEVICE_COLUMNS: &str = "id, user_id, platform, token, p256dh, auth, created_at, last_seen";

fn device_from_row(row: &PgRow) -> anyhow::Result<Device> {
    let id: &str = row.try_get("id")?;
    let user: String = row.try_get("user_id")?;
    let platform: &str = row.try_get("platform")?;
    Ok(Device {
        id: Uuid::parse_str(id).context("stored device id")?,
        user: UserId::parse(user).map_err(anyhow::Error::msg)?,
        platform: Platform::parse(platform)?,
        token: row.try_get("token")?,
        p256dh: row.try_get("p256dh")?,
        auth: row.try_get("auth")?,
        created_at: from_ms(row.try_get("created_at")?),
        last_seen: from_ms(row.try_get("last_seen")?),
    })
}

/// The stored preferences of the given climbers, in one statement: every stream's connect asks.
pub(super) async fn preferences_of(
    pool: PgPool,
    users: Vec<UserId>,
) -> anyhow::Result<HashMap<UserId, String>> {
    let keys: Vec<&str> = users.iter().map(UserId::as_str).collect();
    let rows =
        sqlx::query("SELECT user_id, body FROM user_preferences WHERE user_id = ANY($1::text[])")
            .bind(&keys)
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
impl PushStore for PgStore {
    async fn register_device(
        &self,
        user: &UserId,
        device: &NewDevice,
        max_per_user: u32,
        now: DateTime<Utc>,
    ) -> anyhow::Result<(Device, bool)> {
        let mut tx = self
            .pool
            .begin()
            .await
            .context("begin registering a device")?;
        // One statement whether the token is new or known; `xmax = 0` tells which, and the
        // former owner comes back from the row as it was before the update.
        let row = sqlx::query(&format!(
            "WITH before AS (SELECT id, user_id FROM push_devices WHERE token_hash = $5 \
                             FOR UPDATE) \
             INSERT INTO push_devices (id, user_id, platform, token, token_hash, p256dh, auth, \
                                       created_at, last_seen) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8) \
             ON CONFLICT (token_hash) DO UPDATE SET user_id = EXCLUDED.user_id, \
             p256dh = EXCLUDED.p256dh, auth = EXCLUDED.auth, last_seen = EXCLUDED.last_seen \
             RETURNING {DEVICE_COLUMNS}, (xmax = 0) AS created, \
             (SELECT user_id FROM before) AS former"
        ))
        .bind(Uuid::new_v4().to_string())
        .bind(user.as_str())
        .bind(device.platform.as_str())
        .bind(&device.token)
        .bind(device.token_hash())
        .bind(device.p256dh.as_deref())
        .bind(device.auth.as_deref())
        .bind(to_ms(now))
        .fetch_one(&mut *tx)
        .await
        .context("registering a device")?;
        let registered = device_from_row(&row)?;
        let created: bool = row.try_get("created")?;
        let former: Option<String> = row.try_get("former")?;
        if former.is_some_and(|former| former != user.as_str()) {
            // The phone changed hands: the former climber's pushes stay with them.
            sqlx::query("DELETE FROM push_jobs WHERE device_id = $1")
                .bind(registered.id.to_string())
                .execute(&mut *tx)
                .await
                .context("dropping the former owner's pushes")?;
        }
        sqlx::query(
            "DELETE FROM push_devices WHERE id IN (SELECT id FROM push_devices \
             WHERE user_id = $1 ORDER BY last_seen DESC, id OFFSET $2)",
        )
        .bind(user.as_str())
        .bind(i64::from(max_per_user))
        .execute(&mut *tx)
        .await
        .context("dropping devices beyond the limit")?;
        tx.commit().await.context("commit registering a device")?;
        Ok((registered, created))
    }

    async fn devices(&self, user: &UserId) -> anyhow::Result<Vec<Device>> {
        let rows = sqlx::query(&format!(
            "SELECT {DEVICE_COLUMNS} FROM push_devices WHERE user_id = $1 \
             ORDER BY last_seen DESC, id"
        ))
        .bind(user.as_str())
        .fetch_all(&self.pool)
        .await
        .context("listing devices")?;
        rows.iter().map(device_from_row).collect()
    }

    async fn delete_device(&self, user: Option<&UserId>, id: Uuid) -> anyhow::Result<bool> {
        let result = sqlx::query(
            "DELETE FROM push_devices WHERE id = $1 AND ($2::text IS NULL OR user_id = $2)",
        )
        .bind(id.to_string())
        .bind(user.map(UserId::as_str))
        .execute(&self.pool)
        .await
        .context("removing a device")?;
        Ok(result.rows_affected() > 0)
    }

    async fn prune_devices(&self, before: DateTime<Utc>) -> anyhow::Result<u64> {
        let result = sqlx::query("DELETE FROM push_devices WHERE last_seen < $1")
            .bind(to_ms(before))
            .execute(&self.pool)
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
            "INSERT INTO user_preferences (user_id, body, updated_at) VALUES ($1, $2, $3) \
             ON CONFLICT (user_id) DO UPDATE SET body = EXCLUDED.body, \
             updated_at = EXCLUDED.updated_at",
        )
        .bind(user.as_str())
        .bind(json)
        .bind(to_ms(now))
        .execute(&self.pool)
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
        let rows = sqlx::query(
            "WITH due AS (SELECT id FROM push_jobs WHERE due_at <= $2 \
                          ORDER BY due_at LIMIT $3 FOR UPDATE SKIP LOCKED) \
             UPDATE push_jobs j SET due_at = $1 FROM due WHERE j.id = due.id \
             RETURNING j.id, j.device_id, j.notification_id, j.attempts",
        )
        .bind(to_ms(lease_until))
        .bind(to_ms(now))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .context("taking push jobs")?;
        let mut taken = Vec::with_capacity(rows.len());
        for row in &rows {
            let device: &str = row.try_get("device_id")?;
            let notification: &str = row.try_get("notification_id")?;
            taken.push(TakenRow {
                id: row.try_get("id")?,
                device: Uuid::parse_str(device)?,
                notification: Uuid::parse_str(notification)?,
                attempts: u32::try_from(row.try_get::<i32, _>("attempts")?).unwrap_or(0),
            });
        }
        if taken.is_empty() {
            return Ok(Vec::new());
        }
        taken.sort_by_key(|row| row.id);
        let ids = distinct(taken.iter().map(|row| row.device));
        let devices = sqlx::query(&format!(
            "SELECT {DEVICE_COLUMNS} FROM push_devices WHERE id = ANY($1)"
        ))
        .bind(&ids)
        .fetch_all(&self.pool)
        .await
        .context("reading the devices of push jobs")?
        .iter()
        .map(device_from_row)
        .collect::<anyhow::Result<Vec<_>>>()?;
        let ids = distinct(taken.iter().map(|row| row.notification));
        let notifications = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM notifications WHERE id = ANY($1)"
        ))
        .bind(&ids)
        .fetch_all(&self.pool)
        .await
        .context("reading the notifications of push jobs")?
        .iter()
        .map(notification_from_row)
        .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(assemble(taken, devices, notifications))
    }

    async fn finish_push_jobs(&self, ids: &[i64]) -> anyhow::Result<()> {
        sqlx::query("DELETE FROM push_jobs WHERE id = ANY($1)")
            .bind(ids)
            .execute(&self.pool)
            .await
            .context("finishing push jobs")?;
        Ok(())
    }

    async fn retry_push_job(
        &self,
        id: i64,
        due_at: DateTime<Utc>,
        attempts: u32,
    ) -> anyhow::Result<()> {
        sqlx::query("UPDATE push_jobs SET due_at = $1, attempts = $2 WHERE id = $3")
            .bind(to_ms(due_at))
            .bind(i32::try_from(attempts).unwrap_or(i32::MAX))
            .bind(id)
            .execute(&self.pool)
            .await
            .context("putting a push job back")?;
        Ok(())
    }

    async fn push_jobs_waiting(&self) -> anyhow::Result<u64> {
        let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM push_jobs")
            .fetch_one(&self.pool)
            .await
            .context("counting push jobs")?;
        Ok(u64::try_from(count).unwrap_or(0))
    }
}
