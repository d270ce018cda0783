//! Retention: read notifications older than `retention.max_age_days`, or beyond a user's newest
//! `retention.max_per_user`, are deleted in small batches by a background task. Unread ones and
//! head rows are never deleted, so a user's cursors never go back; a client resuming from a
//! cursor whose events are gone gets what is left after it, in order.
//!
//! A notification is only deleted once every idempotency key that could point at it has expired
//! (it was last changed before the key lifetime), so a retried notify still finds its original.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::Store;
use crate::config::RetentionSettings;

/// A pause between two batches, so that retention never holds the writer for long.
const BETWEEN_BATCHES: Duration = Duration::from_millis(50);

/// What one pass deleted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pass {
    pub by_age: u64,
    pub beyond_limit: u64,
}

/// Runs one pass: batches until a batch comes back short, by age, then beyond the per-user limit.
pub async fn run_pass(
    store: &dyn Store,
    settings: &RetentionSettings,
    key_lifetime: Duration,
    now: DateTime<Utc>,
) -> anyhow::Result<Pass> {
    let keys_expired = now - key_lifetime;
    let too_old = now - chrono::Duration::days(i64::from(settings.max_age_days));
    let mut pass = Pass::default();
    loop {
        let n = store
            .delete_read_before(too_old.min(keys_expired), settings.batch)
            .await?;
        pass.by_age += n;
        if n < u64::from(settings.batch) {
            break;
        }
        tokio::time::sleep(BETWEEN_BATCHES).await;
    }
    loop {
        let n = store
            .delete_read_beyond(settings.max_per_user, keys_expired, settings.batch)
            .await?;
        pass.beyond_limit += n;
        if n < u64::from(settings.batch) {
            break;
        }
        tokio::time::sleep(BETWEEN_BATCHES).await;
    }
    Ok(pass)
}

/// Runs a pass now and every `settings.every_secs`, for the life of the process.
pub fn spawn(
    store: Arc<dyn Store>,
    settings: RetentionSettings,
    key_lifetime: Duration,
    on_pass: impl Fn(Pass) + Send + 'static,
) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(settings.every_secs));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match run_pass(store.as_ref(), &settings, key_lifetime, Utc::now()).await {
                Ok(pass) => {
                    if pass != Pass::default() {
                        tracing::info!(
                            by_age = pass.by_age,
                            beyond_limit = pass.beyond_limit,
                            "retention deleted read notifications"
                        );
                    }
                    on_pass(pass);
                }
                Err(error) => {
                    tracing::warn!(error = %format!("{error:#}"), "retention pass failed")
                }
            }
        }
    });
}
