//! What the store keeps for push: climbers' devices, their preferences, and the push jobs
//! waiting to be sent. The rules of the push path live above (`push/dispatch.rs`); this file
//! is the interface each backend implements, with the rows it reads and writes.
//!
//! A push job is one `(device, notification)` pair. It is written in the transaction of its
//! event (so a crash between the commit and the send loses nothing), one row per device of the
//! climber at that moment, due `push.grace_ms` after the event. A node takes due jobs by moving
//! their due time forward by a lease ([`JOB_LEASE`]): another node skips them (`FOR UPDATE SKIP
//! LOCKED` while taking), and a node that died holding them lets them fall due again.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::domain::{EventKind, Notification, UserId};

/// How long a taken job stays with the node that took it before another may take it.
pub const JOB_LEASE: Duration = Duration::from_secs(60);

/// Which service carries pushes to a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Platform {
    /// Firebase Cloud Messaging (Android, iOS through APNs, and web with the Firebase SDK).
    Fcm,
    /// A browser's own push service (RFC 8030), encrypted and signed with VAPID.
    Webpush,
}

impl Platform {
    pub fn as_str(self) -> &'static str {
        match self {
            Platform::Fcm => "fcm",
            Platform::Webpush => "webpush",
        }
    }

    pub fn parse(stored: &str) -> anyhow::Result<Platform> {
        match stored {
            "fcm" => Ok(Platform::Fcm),
            "webpush" => Ok(Platform::Webpush),
            other => anyhow::bail!("unknown push platform {other:?} in the store"),
        }
    }
}

/// A device to register, already validated (`http/devices.rs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDevice {
    pub platform: Platform,
    /// The FCM registration token, or the Web Push endpoint URL.
    pub token: String,
    /// Web Push only: the subscription's P-256 public key and auth secret, base64url.
    pub p256dh: Option<String>,
    pub auth: Option<String>,
}

impl NewDevice {
    /// The device's identity, whoever registers it: SHA-256 of platform and token, hex. Tokens
    /// and endpoints run to kilobytes, too long for a unique index on every backend.
    pub fn token_hash(&self) -> String {
        let mut hash = Sha256::new();
        hash.update(self.platform.as_str().as_bytes());
        hash.update([0]);
        hash.update(self.token.as_bytes());
        hash.finalize()
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect()
    }
}

/// A registered device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    pub id: Uuid,
    pub user: UserId,
    pub platform: Platform,
    pub token: String,
    pub p256dh: Option<String>,
    pub auth: Option<String>,
    pub created_at: DateTime<Utc>,
    /// The last registration of this token; pruned after `push.device_max_idle_days`.
    pub last_seen: DateTime<Utc>,
}

/// A job to write with its event: pushes of `notification` to every device of `user`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobRow {
    pub user: String,
    pub notification: Uuid,
    /// Unix milliseconds: the event's time plus the grace for coming online.
    pub due_at: i64,
}

/// A job taken for sending.
#[derive(Debug, Clone)]
pub struct PushJob {
    pub id: i64,
    pub device: Device,
    /// None when the notification is gone (retention deleted it after it was read).
    pub notification: Option<Notification>,
    /// Sends tried before this one.
    pub attempts: u32,
}

/// Decides, in the transaction of each event, whether it gets push jobs: set by the push path
/// when push is on ([`crate::store::Store::enable_push`]); without one, nothing is queued.
pub trait PushFilter: Send + Sync + 'static {
    /// When the event's jobs fall due, or None when it is not to be pushed (a kind that is not
    /// push-worthy, or a climber with a live session on this node).
    fn due(&self, user: &UserId, kind: EventKind, now: DateTime<Utc>) -> Option<DateTime<Utc>>;

    /// Jobs were committed; the earliest falls due at `due`.
    fn committed(&self, _due: DateTime<Utc>) {}
}

/// Where the writer finds the filter once push is on.
pub(crate) type FilterSlot = Arc<std::sync::OnceLock<Arc<dyn PushFilter>>>;

/// The devices, preferences and push jobs of a store.
#[async_trait]
pub trait PushStore: Send + Sync {
    /// Registers a device for `user`, or refreshes it when the token is known: its
    /// `last_seen` moves to `now`, and a token that moved to another climber (a shared
    /// phone) follows them. Beyond `max_per_user` devices, the least recently seen go.
    /// Returns the device and whether it is new.
    async fn register_device(
        &self,
        user: &UserId,
        device: &NewDevice,
        max_per_user: u32,
        now: DateTime<Utc>,
    ) -> anyhow::Result<(Device, bool)>;

    /// A climber's devices, most recently seen first.
    async fn devices(&self, user: &UserId) -> anyhow::Result<Vec<Device>>;

    /// Removes a device (and its waiting jobs); with `user`, only if it is theirs. Whether
    /// something was removed.
    async fn delete_device(&self, user: Option<&UserId>, id: Uuid) -> anyhow::Result<bool>;

    /// Removes devices not seen since `before`; how many.
    async fn prune_devices(&self, before: DateTime<Utc>) -> anyhow::Result<u64>;

    /// A climber's preferences as stored (JSON), None when they never set any.
    async fn preferences(&self, user: &UserId) -> anyhow::Result<Option<String>>;

    /// Replaces a climber's preferences.
    async fn set_preferences(
        &self,
        user: &UserId,
        json: &str,
        now: DateTime<Utc>,
    ) -> anyhow::Result<()>;

    /// Takes up to `limit` jobs due at `now`, earliest first, moving their due time to
    /// `lease_until` so that no other taker gets them meanwhile.
    async fn take_push_jobs(
        &self,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        limit: u32,
    ) -> anyhow::Result<Vec<PushJob>>;

    /// Deletes jobs: sent, or given up.
    async fn finish_push_jobs(&self, ids: &[i64]) -> anyhow::Result<()>;

    /// Puts a job back, due at `due_at`, with its attempt count.
    async fn retry_push_job(
        &self,
        id: i64,
        due_at: DateTime<Utc>,
        attempts: u32,
    ) -> anyhow::Result<()>;

    /// Jobs waiting, due or not.
    async fn push_jobs_waiting(&self) -> anyhow::Result<u64>;
}

/// The jobs for a group's new events: for every created or collapsed notification that the
/// filter wants pushed.
pub(crate) fn jobs_for(
    filter: Option<&Arc<dyn PushFilter>>,
    appended: &[super::Appended],
    now: DateTime<Utc>,
) -> Vec<JobRow> {
    let Some(filter) = filter else {
        return Vec::new();
    };
    let mut jobs: Vec<JobRow> = Vec::new();
    for a in appended.iter().filter(|a| a.outcome.is_new()) {
        let Some(due) = filter.due(&a.user, a.notification.event.kind(), now) else {
            continue;
        };
        // A notification collapsed twice in one group is one job: a statement may not write
        // one row twice.
        match jobs
            .iter_mut()
            .find(|j| j.notification == a.notification.id)
        {
            Some(job) => job.due_at = due.timestamp_millis(),
            None => jobs.push(JobRow {
                user: a.user.to_string(),
                notification: a.notification.id,
                due_at: due.timestamp_millis(),
            }),
        }
    }
    jobs
}

/// A taken job's row before its device and notification are joined to it.
pub(crate) struct TakenRow {
    pub id: i64,
    pub device: Uuid,
    pub notification: Uuid,
    pub attempts: u32,
}

/// The taken jobs with their devices and notifications, in the order taken. A job whose device
/// went meanwhile (removed between the take and this read) is left out: its row went with it.
pub(crate) fn assemble(
    taken: Vec<TakenRow>,
    devices: Vec<Device>,
    notifications: Vec<Notification>,
) -> Vec<PushJob> {
    let devices: std::collections::HashMap<Uuid, Device> =
        devices.into_iter().map(|d| (d.id, d)).collect();
    let notifications: std::collections::HashMap<Uuid, Notification> =
        notifications.into_iter().map(|n| (n.id, n)).collect();
    taken
        .into_iter()
        .filter_map(|row| {
            Some(PushJob {
                id: row.id,
                device: devices.get(&row.device)?.clone(),
                notification: notifications.get(&row.notification).cloned(),
                attempts: row.attempts,
            })
        })
        .collect()
}

/// The answer of a batched preferences read: the stored body of each asked climber who has one.
pub(crate) fn by_user(
    users: Vec<UserId>,
    mut found: std::collections::HashMap<String, String>,
) -> std::collections::HashMap<UserId, String> {
    users
        .into_iter()
        .filter_map(|user| {
            let body = found.remove(user.as_str())?;
            Some((user, body))
        })
        .collect()
}

/// Job ids padded with 0 (no job's id) to a power of two: a handful of statement shapes.
pub(crate) fn padded_ids(ids: &[i64]) -> Vec<i64> {
    let mut padded = ids.to_vec();
    padded.resize(ids.len().max(1).next_power_of_two(), 0);
    padded
}

/// Distinct ids, sorted: the `IN` lists of the reads after a take.
pub(crate) fn distinct(ids: impl Iterator<Item = Uuid>) -> Vec<String> {
    let mut ids: Vec<Uuid> = ids.collect();
    ids.sort_unstable();
    ids.dedup();
    ids.iter().map(Uuid::to_string).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_hash_tells_platforms_apart_and_is_stable() {
        let fcm = NewDevice {
            platform: Platform::Fcm,
            token: "abc".into(),
            p256dh: None,
            auth: None,
        };
        let web = NewDevice {
            platform: Platform::Webpush,
            ..fcm.clone()
        };
        assert_eq!(fcm.token_hash(), fcm.clone().token_hash());
        assert_ne!(fcm.token_hash(), web.token_hash());
        assert_eq!(fcm.token_hash().len(), 64);
    }
}
