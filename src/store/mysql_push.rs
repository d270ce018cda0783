//! MariaDB / MySQL: the SQL of push (devices, preferences, push jobs). Nodes take jobs with
//! `FOR UPDATE SKIP LOCKED` (MariaDB 10.6, MySQL 8), so two nodes taking at once take different
//! ones; the rules are in `push`.

use std::collections::HashMap;

use anyhow::Context;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::mysql::{MySqlPool, MySqlRow};
use sqlx::{MySql, QueryBuilder, Row, Transaction};
use uuid::Uuid;

use super::mysql::{
    COLUMNS, MySqlStore, from_ms, notification_from_row, opt_text, push_list, text, to_ms, user_of,
};
use super::push::{
    Device, JobRow, NewDevice, Platform, PushJob, PushStore, TakenRow, assemble, by_user, distinct,
    padded_ids,
};
use super::writer::{look_up, padded};
use crate::domain::UserId;

const DEVICE_COLUMNS: &str = "id, user_id, platform, token, p256dh, auth, created_at, last_seen";
/// Job rows one insert writes at most.
const MAX_JOB_ROWS: usize = 256;

fn device_from_row(row: &MySqlRow) -> anyhow::Result<Device> {
    Ok(Device {
        id: Uuid::parse_str(&text(row, "id")?).context("stored device id")?,
        user: user_of(row, "user_id")?,
        platform: Platform::parse(&text(row, "platform")?)?,
        token: text(row, "token")?,
        p256dh: opt_text(row, "p256dh")?,
        auth: opt_text(row, "auth")?,
        created_at: from_ms(row.try_get("created_at")?),
        last_seen: from_ms(row.try_get("last_seen")?),
    })
}

/// Writes a group's push jobs in its transaction: the devices of their users, read with a
/// shared lock (a device removed meanwhile waits for this commit, so no job points at a
/// device that is gone), then one row per device and job.
pub(super) async fn write_jobs(
    tx: &mut Transaction<'static, MySql>,
    jobs: &[JobRow],
    now: DateTime<Utc>,
) -> anyhow::Result<()> {
    let mut users: Vec<&str> = jobs.iter().map(|j| j.user.as_str()).collect();
    users.sort_unstable();
    users.dedup();
    let mut devices: Vec<(String, String)> = Vec::new();
    for chunk in users.chunks(MAX_JOB_ROWS) {
        let mut qb =
            QueryBuilder::<MySql>::new("SELECT id, user_id FROM push_devices WHERE user_id IN ");
        // Padded: a handful of statement shapes stay prepared.
        push_list(&mut qb, padded(chunk));
        qb.push(" LOCK IN SHARE MODE");
        for row in qb.build().fetch_all(&mut **tx).await? {
            devices.push((text(&row, "id")?, text(&row, "user_id")?));
        }
    }
    let rows: Vec<(&str, &JobRow)> = jobs
        .iter()
        .flat_map(|job| {
            devices
                .iter()
                .filter(move |(_, user)| *user == job.user)
                .map(move |(device, _)| (device.as_str(), job))
        })
        .collect();
    // Inserts of power-of-two sizes (13 rows: 8, 4, 1): few statement shapes to keep prepared.
    let mut rest = rows.as_slice();
    while !rest.is_empty() {
        let size = if rest.len() >= MAX_JOB_ROWS {
            MAX_JOB_ROWS
        } else {
            1 << (usize::BITS - 1 - rest.len().leading_zeros())
        };
        let (chunk, after) = rest.split_at(size);
        rest = after;
        let mut qb = QueryBuilder::<MySql>::new(
            "INSERT INTO push_jobs \
             (device_id, user_id, notification_id, due_at, attempts, created_at) ",
        );
        qb.push_values(chunk, |mut b, (device, job)| {
            b.push_bind(*device)
                .push_bind(job.user.as_str())
                .push_bind(job.notification.to_string())
                .push_bind(job.due_at)
                .push_bind(0_i32)
                .push_bind(to_ms(now));
        })
        // A collapsed notification that still waits for its push is due again from now.
        .push(" ON DUPLICATE KEY UPDATE due_at = VALUES(due_at), attempts = 0");
        qb.build()
            .execute(&mut **tx)
            .await
            .context("writing push jobs")?;
    }
    Ok(())
}

/// The stored preferences of the given climbers, in one statement: every stream's connect asks.
pub(super) async fn preferences_of(
    pool: MySqlPool,
    users: Vec<UserId>,
) -> anyhow::Result<HashMap<UserId, String>> {
    let mut qb =
        QueryBuilder::<MySql>::new("SELECT user_id, body FROM user_preferences WHERE user_id IN ");
    let keys: Vec<&str> = users.iter().map(UserId::as_str).collect();
    push_list(&mut qb, padded(&keys));
    let rows = qb
        .build()
        .fetch_all(&pool)
        .await
        .context("reading preferences")?;
    let mut found: HashMap<String, String> = HashMap::with_capacity(rows.len());
    for row in &rows {
        found.insert(text(row, "user_id")?, text(row, "body")?);
    }
    Ok(by_user(users, found))
}

#[async_trait]
impl PushStore for MySqlStore {
    async fn register_device(
        &self,
        user: &UserId,
        device: &NewDevice,
        max_per_user: u32,
        now: DateTime<Utc>,
    ) -> anyhow::Result<(Device, bool)> {
        let hash = device.token_hash();
        let mut tx = self
            .pool
            .begin()
            .await
            .context("begin registering a device")?;
        let known =
            sqlx::query("SELECT id, user_id FROM push_devices WHERE token_hash = ? FOR UPDATE")
                .bind(&hash)
                .fetch_optional(&mut *tx)
                .await
                .context("looking up a device")?;
        let created = known.is_none();
        let id = match known {
            Some(row) => {
                let id = text(&row, "id")?;
                let owner = text(&row, "user_id")?;
                sqlx::query(
                    "UPDATE push_devices SET user_id = ?, p256dh = ?, auth = ?, last_seen = ? \
                     WHERE id = ?",
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
                    sqlx::query("DELETE FROM push_jobs WHERE device_id = ?")
                        .bind(&id)
                        .execute(&mut *tx)
                        .await
                        .context("dropping the former owner's pushes")?;
                }
                id
            }
            None => {
                let id = Uuid::new_v4().to_string();
                // Two first registrations of one token race on the unique key: the loser
                // refreshes the winner's row.
                sqlx::query(
                    "INSERT INTO push_devices (id, user_id, platform, token, token_hash, \
                     p256dh, auth, created_at, last_seen) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) \
                     ON DUPLICATE KEY UPDATE user_id = VALUES(user_id), p256dh = VALUES(p256dh), \
                     auth = VALUES(auth), last_seen = VALUES(last_seen)",
                )
                .bind(&id)
                .bind(user.as_str())
                .bind(device.platform.as_str())
                .bind(&device.token)
                .bind(&hash)
                .bind(device.p256dh.as_deref())
                .bind(device.auth.as_deref())
                .bind(to_ms(now))
                .bind(to_ms(now))
                .execute(&mut *tx)
                .await
                .context("adding a device")?;
                id
            }
        };
        // The devices beyond the limit, least recently seen; LIMIT takes no expression in a
        // subquery here, so they are read first.
        let beyond: Vec<MySqlRow> = sqlx::query(
            "SELECT id FROM push_devices WHERE user_id = ? ORDER BY last_seen DESC, id \
             LIMIT 1000 OFFSET ?",
        )
        .bind(user.as_str())
        .bind(i64::from(max_per_user))
        .fetch_all(&mut *tx)
        .await
        .context("finding devices beyond the limit")?;
        for row in &beyond {
            sqlx::query("DELETE FROM push_devices WHERE id = ?")
                .bind(text(row, "id")?)
                .execute(&mut *tx)
                .await
                .context("dropping devices beyond the limit")?;
        }
        let row = sqlx::query(&format!(
            "SELECT {DEVICE_COLUMNS} FROM push_devices WHERE token_hash = ?"
        ))
        .bind(&hash)
        .fetch_one(&mut *tx)
        .await
        .context("reading the device back")?;
        tx.commit().await.context("commit registering a device")?;
        let registered = device_from_row(&row)?;
        Ok((
            registered.clone(),
            created && registered.id.to_string() == id,
        ))
    }

    async fn devices(&self, user: &UserId) -> anyhow::Result<Vec<Device>> {
        let rows = sqlx::query(&format!(
            "SELECT {DEVICE_COLUMNS} FROM push_devices WHERE user_id = ? \
             ORDER BY last_seen DESC, id"
        ))
        .bind(user.as_str())
        .fetch_all(&self.pool)
        .await
        .context("listing devices")?;
        rows.iter().map(device_from_row).collect()
    }

    async fn delete_device(&self, user: Option<&UserId>, id: Uuid) -> anyhow::Result<bool> {
        let result = match user {
            Some(user) => sqlx::query("DELETE FROM push_devices WHERE id = ? AND user_id = ?")
                .bind(id.to_string())
                .bind(user.as_str()),
            None => sqlx::query("DELETE FROM push_devices WHERE id = ?").bind(id.to_string()),
        }
        .execute(&self.pool)
        .await
        .context("removing a device")?;
        Ok(result.rows_affected() > 0)
    }

    async fn prune_devices(&self, before: DateTime<Utc>) -> anyhow::Result<u64> {
        let result = sqlx::query("DELETE FROM push_devices WHERE last_seen < ?")
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
            "INSERT INTO user_preferences (user_id, body, updated_at) VALUES (?, ?, ?) \
             ON DUPLICATE KEY UPDATE body = VALUES(body), updated_at = VALUES(updated_at)",
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
        let mut tx = self.pool.begin().await.context("begin taking push jobs")?;
        let rows = sqlx::query(
            "SELECT id, device_id, notification_id, attempts FROM push_jobs \
             WHERE due_at <= ? ORDER BY due_at LIMIT ? FOR UPDATE SKIP LOCKED",
        )
        .bind(to_ms(now))
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await
        .context("taking push jobs")?;
        let mut taken = Vec::with_capacity(rows.len());
        for row in &rows {
            taken.push(TakenRow {
                id: row.try_get("id")?,
                device: Uuid::parse_str(&text(row, "device_id")?)?,
                notification: Uuid::parse_str(&text(row, "notification_id")?)?,
                attempts: u32::try_from(row.try_get::<i32, _>("attempts")?).unwrap_or(0),
            });
        }
        if taken.is_empty() {
            tx.commit().await.context("commit taking push jobs")?;
            return Ok(Vec::new());
        }
        taken.sort_by_key(|row| row.id);
        let mut qb = QueryBuilder::<MySql>::new("UPDATE push_jobs SET due_at = ");
        qb.push_bind(to_ms(lease_until)).push(" WHERE id IN ");
        push_list(&mut qb, taken.iter().map(|row| row.id));
        qb.build()
            .execute(&mut *tx)
            .await
            .context("leasing push jobs")?;
        tx.commit().await.context("commit taking push jobs")?;
        let mut qb = QueryBuilder::<MySql>::new(format!(
            "SELECT {DEVICE_COLUMNS} FROM push_devices WHERE id IN "
        ));
        push_list(&mut qb, distinct(taken.iter().map(|row| row.device)));
        let devices = qb
            .build()
            .fetch_all(&self.pool)
            .await
            .context("reading the devices of push jobs")?
            .iter()
            .map(device_from_row)
            .collect::<anyhow::Result<Vec<_>>>()?;
        let mut qb =
            QueryBuilder::<MySql>::new(format!("SELECT {COLUMNS} FROM notifications WHERE id IN "));
        push_list(&mut qb, distinct(taken.iter().map(|row| row.notification)));
        let notifications = qb
            .build()
            .fetch_all(&self.pool)
            .await
            .context("reading the notifications of push jobs")?
            .iter()
            .map(notification_from_row)
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(assemble(taken, devices, notifications))
    }

    async fn finish_push_jobs(&self, ids: &[i64]) -> anyhow::Result<()> {
        for chunk in ids.chunks(MAX_JOB_ROWS) {
            let mut qb = QueryBuilder::<MySql>::new("DELETE FROM push_jobs WHERE id IN ");
            push_list(&mut qb, padded_ids(chunk));
            qb.build()
                .execute(&self.pool)
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
        sqlx::query("UPDATE push_jobs SET due_at = ?, attempts = ? WHERE id = ?")
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
