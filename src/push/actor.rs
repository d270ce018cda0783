//! The PushActor: takes due push jobs from the store and sends them, for climbers who have no
//! live session anywhere.
//!
//! The path of one push:
//! 1. In the transaction of an event, [`OfflineFilter`] decides whether it gets jobs: a kind in
//!    `push.kinds`, and no session of the climber on this node. The store writes one job per
//!    device of the climber, due `push.grace_ms` later (`store/push.rs`).
//! 2. After the commit, the writer tells the actor when the earliest job falls due; the actor
//!    also polls every `push.poll_ms` for retries and other nodes' jobs.
//! 3. The actor takes due jobs (a lease in the store: nodes never take the same job) and, per
//!    job, drops it when the notification was read or is gone, when the climber is online on
//!    any node (presence), when they muted the kind or it is their quiet hours; otherwise it
//!    sends, with at most `push.concurrency` sends in flight. One slow or failing device holds
//!    one slot and its own job, nothing else.
//! 4. The provider's [`Outcome`] decides: sent → done; dead token → the device goes; transient
//!    → the job is due again after a backoff (never past the push's expiry); configuration
//!    fault → logged as an error, counted, the device kept and the job retried.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use tokio::sync::{Notify, Semaphore};

use super::fcm::{FcmClient, FcmToken, ServiceAccount};
use super::webpush::{
    EndpointPolicy, Subscription, SubscriptionJson, SubscriptionKeys, VapidKeys, WebPushClient,
};
use super::{Clock, Outcome, PushMessage, SystemClock};
use crate::cluster::Presence;
use crate::cluster::presence::OpenSessions;
use crate::config::PushSettings;
use crate::domain::preferences::Preferences;
use crate::domain::{EventKind, UserId};
use crate::metrics::Metrics;
use crate::store::Store;
use crate::store::push::{JOB_LEASE, Platform, PushFilter, PushJob};

/// How long the actor waits after the store failed before trying again.
const STORE_RETRY: Duration = Duration::from_secs(1);
/// How often the waiting-jobs gauge is sampled.
const GAUGE_EVERY: Duration = Duration::from_secs(15);
/// How often devices past `push.device_max_idle_days` are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(6 * 60 * 60);

/// The providers this node sends through; at least one is configured.
pub struct Providers {
    pub fcm: Option<FcmClient>,
    pub webpush: Option<WebPushClient>,
    /// Which Web Push endpoints devices may register.
    pub endpoints: EndpointPolicy,
}

impl Providers {
    /// The providers `settings` configure, or None when neither is: push is off.
    pub fn from_settings(settings: &PushSettings) -> anyhow::Result<Option<Providers>> {
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let fcm = match settings.fcm.credentials_file.trim() {
            "" => None,
            path => {
                let account = ServiceAccount::from_file(Path::new(path))
                    .context("push.fcm.credentials_file")?;
                Some(FcmClient::new(
                    account,
                    &settings.fcm.base_url,
                    clock.clone(),
                )?)
            }
        };
        use secrecy::ExposeSecret;
        let webpush = match settings.webpush.vapid_private_key.expose_secret().trim() {
            "" => None,
            key => {
                let vapid = VapidKeys::from_private_key(key, &settings.webpush.subject)
                    .context("push.webpush.vapid_private_key and push.webpush.subject")?;
                Some(WebPushClient::new(vapid, clock).context("building the Web Push client")?)
            }
        };
        if fcm.is_none() && webpush.is_none() {
            return Ok(None);
        }
        Ok(Some(Providers {
            fcm,
            webpush,
            endpoints: if settings.webpush.allow_loopback_http {
                EndpointPolicy::AllowLoopbackHttp
            } else {
                EndpointPolicy::HttpsOnly
            },
        }))
    }

    /// Whether devices of `platform` can be served.
    pub fn serves(&self, platform: Platform) -> bool {
        match platform {
            Platform::Fcm => self.fcm.is_some(),
            Platform::Webpush => self.webpush.is_some(),
        }
    }
}

/// When the next committed job falls due, in Unix milliseconds (`i64::MAX`: none known), and
/// the bell that rings when it moves earlier.
#[derive(Default)]
struct Wake {
    next_due: AtomicI64,
    bell: Notify,
}

/// Decides in each event's transaction whether it gets push jobs (see the module doc).
pub struct OfflineFilter {
    kinds: HashSet<EventKind>,
    grace: chrono::Duration,
    local: OpenSessions,
    wake: Arc<Wake>,
}

impl PushFilter for OfflineFilter {
    fn due(&self, user: &UserId, kind: EventKind, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        if !self.kinds.contains(&kind) {
            return None;
        }
        // A session here has the event live; one on another node is found at send time.
        let open = self.local.lock().unwrap_or_else(|p| p.into_inner());
        if open.get(user).is_some_and(|&n| n > 0) {
            return None;
        }
        Some(now + self.grace)
    }

    fn committed(&self, due: DateTime<Utc>) {
        let due = due.timestamp_millis();
        if self.wake.next_due.fetch_min(due, Ordering::AcqRel) > due {
            self.wake.bell.notify_one();
        }
    }
}

/// The push sender of one node.
pub struct PushActor {
    store: Arc<dyn Store>,
    presence: Arc<dyn Presence>,
    providers: Arc<Providers>,
    kinds: HashSet<EventKind>,
    settings: PushSettings,
    metrics: Arc<Metrics>,
    wake: Arc<Wake>,
    slots: Arc<Semaphore>,
    stop: tokio::sync::watch::Receiver<bool>,
    /// Jobs done with, deleted in batches by [`finisher`]: a send's slot is free as soon as the
    /// provider answered, and a wave of pushes costs a delete per batch, not per push.
    done: tokio::sync::mpsc::UnboundedSender<i64>,
}

/// Stops a node's PushActor: it takes no more jobs; sends in flight finish. A job it took but
/// did not finish falls due again when its lease passes.
#[derive(Clone)]
pub struct PushHandle {
    stop: Arc<tokio::sync::watch::Sender<bool>>,
}

impl PushHandle {
    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }
}

impl PushActor {
    /// Turns push on: events get jobs from now on, and the actor's task starts. Returns the
    /// providers (the HTTP layer checks registrations against them) and the actor's handle.
    pub fn start(
        settings: &PushSettings,
        providers: Providers,
        store: Arc<dyn Store>,
        presence: Arc<dyn Presence>,
        local: OpenSessions,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<(Arc<Providers>, PushHandle)> {
        let kinds: HashSet<EventKind> = settings.push_kinds()?.into_iter().collect();
        let wake = Arc::new(Wake {
            next_due: AtomicI64::new(i64::MAX),
            bell: Notify::new(),
        });
        store.enable_push(Arc::new(OfflineFilter {
            kinds: kinds.clone(),
            grace: chrono::Duration::milliseconds(
                i64::try_from(settings.grace_ms).unwrap_or(i64::MAX),
            ),
            local,
            wake: wake.clone(),
        }));
        let providers = Arc::new(providers);
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let (done, finished) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(finisher(store.clone(), finished));
        let actor = Arc::new(PushActor {
            store,
            presence,
            providers: providers.clone(),
            kinds,
            settings: settings.clone(),
            metrics,
            wake,
            slots: Arc::new(Semaphore::new(settings.concurrency)),
            stop: stopped,
            done,
        });
        tokio::spawn(actor.clone().run());
        tokio::spawn(actor.housekeeping());
        Ok((
            providers,
            PushHandle {
                stop: Arc::new(stop),
            },
        ))
    }

    fn stopped(&self) -> bool {
        *self.stop.borrow()
    }

    async fn run(self: Arc<Self>) {
        let poll = Duration::from_millis(self.settings.poll_ms);
        let mut stop = self.stop.clone();
        while !self.stopped() {
            // Wait for a free slot, then take as many jobs as there are free slots.
            let Ok(first) = self.slots.clone().acquire_owned().await else {
                return;
            };
            let free = self.slots.available_permits() + 1;
            drop(first);
            let now = Utc::now();
            if self.wake.next_due.load(Ordering::Acquire) <= now.timestamp_millis() {
                self.wake.next_due.store(i64::MAX, Ordering::Release);
            }
            let lease = now + chrono::Duration::from_std(JOB_LEASE).unwrap_or_default();
            let limit = u32::try_from(free).unwrap_or(u32::MAX);
            match self.store.take_push_jobs(now, lease, limit).await {
                Ok(jobs) if !jobs.is_empty() => {
                    let took_all = jobs.len() == free;
                    self.dispatch(jobs).await;
                    if took_all {
                        continue;
                    }
                }
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(error = %format!("{error:#}"), "taking push jobs failed");
                    tokio::time::sleep(STORE_RETRY).await;
                    continue;
                }
            }
            let next = self.wake.next_due.load(Ordering::Acquire);
            let until_next = u64::try_from(next.saturating_sub(Utc::now().timestamp_millis()))
                .map_or(Duration::ZERO, Duration::from_millis);
            tokio::select! {
                () = self.wake.bell.notified() => {}
                () = tokio::time::sleep(poll.min(until_next)) => {}
                _ = stop.changed() => {}
            }
        }
    }

    /// Decides each job of a take and starts the sends, each in its own slot.
    async fn dispatch(self: &Arc<Self>, jobs: Vec<PushJob>) {
        let now = Utc::now();
        let mut users: Vec<UserId> = jobs.iter().map(|job| job.device.user.clone()).collect();
        users.sort_unstable();
        users.dedup();
        let online: HashMap<UserId, bool> = match self.presence.online(&users).await {
            Ok(online) => users.iter().cloned().zip(online).collect(),
            Err(error) => {
                // Unknown is taken as offline: a push too many beats a lost ready check.
                tracing::warn!(error = %format!("{error:#}"), "presence unavailable for push");
                HashMap::new()
            }
        };
        // Asked together, so the store's batching reader answers them in one query.
        let offline: Vec<&UserId> = users
            .iter()
            .filter(|user| !online.get(*user).copied().unwrap_or(false))
            .collect();
        let reads = offline.iter().map(|user| self.store.preferences(user));
        let stored = futures_util::future::join_all(reads).await;
        let preferences: HashMap<UserId, Preferences> = offline
            .into_iter()
            .zip(stored)
            .map(|(user, stored)| {
                let stored = stored.unwrap_or_else(|error| {
                    tracing::warn!(error = %format!("{error:#}"), "reading preferences failed");
                    None
                });
                (user.clone(), Preferences::from_stored(stored.as_deref()))
            })
            .collect();
        for job in jobs {
            if self.stopped() {
                // Not sent: its lease passes and it falls due again, here or on another node.
                return;
            }
            let user = job.device.user.clone();
            let skip = match &job.notification {
                None => Some("gone"),
                Some(n) if n.read => Some("read"),
                Some(_) if online.get(&user).copied().unwrap_or(false) => Some("online"),
                Some(_) if !self.providers.serves(job.device.platform) => Some("no_provider"),
                Some(n) => preferences
                    .get(&user)
                    .and_then(|p| {
                        p.push(n.event.kind(), now, |k| self.kinds.contains(&k))
                            .err()
                    })
                    .map(|held| held.label()),
            };
            if let Some(reason) = skip {
                self.metrics.push.skipped(reason);
                self.finish(job.id);
                continue;
            }
            let Ok(slot) = self.slots.clone().acquire_owned().await else {
                return;
            };
            let actor = self.clone();
            tokio::spawn(async move {
                actor.send(job).await;
                drop(slot);
            });
        }
    }

    /// Sends one job and records what came of it.
    async fn send(&self, job: PushJob) {
        let Some(notification) = &job.notification else {
            return;
        };
        let now = Utc::now();
        let user = &job.device.user;
        let mut message = PushMessage::for_notification(notification, user, now);
        // Expiry counts from the event, not from this attempt: a retry gets what is left.
        message.expires_at =
            PushMessage::for_notification(notification, user, notification.updated_at).expires_at;
        let (provider, outcome) = match job.device.platform {
            Platform::Fcm => ("fcm", self.send_fcm(&job, &message).await),
            Platform::Webpush => ("webpush", self.send_webpush(&job, &message).await),
        };
        self.metrics.push.sent(provider, outcome.label());
        let device = job.device.id;
        match outcome {
            Outcome::Sent | Outcome::Expired => self.finish(job.id),
            Outcome::RemoveDevice { reason } => {
                tracing::info!(%device, provider, reason, "push token is dead; device removed");
                if let Err(error) = self.store.delete_device(None, device).await {
                    tracing::warn!(error = %format!("{error:#}"), "removing a dead device failed");
                }
            }
            Outcome::Failed { reason } => {
                tracing::warn!(%device, provider, reason, "push refused; not retried");
                self.finish(job.id);
            }
            Outcome::Retry(retry) => {
                let delay = retry.delay(job.attempts, rand::random::<f64>());
                tracing::debug!(%device, provider, reason = retry.reason, ?delay, "push retried");
                self.retry(&job, &message, delay).await;
            }
            Outcome::ConfigFault { reason } => {
                tracing::error!(
                    %device,
                    provider,
                    reason,
                    "push provider refused our credentials: check the push configuration"
                );
                let delay = super::backoff(job.attempts, rand::random::<f64>());
                self.retry(&job, &message, delay).await;
            }
        }
    }

    async fn send_fcm(&self, job: &PushJob, message: &PushMessage) -> Outcome {
        let Some(fcm) = &self.providers.fcm else {
            return Outcome::Failed {
                reason: "FCM is not configured".to_owned(),
            };
        };
        match FcmToken::parse(&job.device.token) {
            Ok(token) => fcm.send(&token, message).await,
            Err(error) => Outcome::RemoveDevice {
                reason: error.to_string(),
            },
        }
    }

    async fn send_webpush(&self, job: &PushJob, message: &PushMessage) -> Outcome {
        let Some(webpush) = &self.providers.webpush else {
            return Outcome::Failed {
                reason: "Web Push is not configured".to_owned(),
            };
        };
        let json = SubscriptionJson {
            endpoint: job.device.token.clone(),
            keys: SubscriptionKeys {
                p256dh: job.device.p256dh.clone().unwrap_or_default(),
                auth: job.device.auth.clone().unwrap_or_default(),
            },
        };
        match Subscription::parse(&json, self.providers.endpoints) {
            Ok(subscription) => webpush.send(&subscription, message).await,
            Err(error) => Outcome::RemoveDevice {
                reason: error.to_string(),
            },
        }
    }

    /// Puts a job back for another attempt after `delay`, unless the push will have expired.
    async fn retry(&self, job: &PushJob, message: &PushMessage, delay: Duration) {
        let due = Utc::now() + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::MAX);
        if due >= message.expires_at {
            self.metrics.push.sent(provider_of(job), "expired");
            self.finish(job.id);
            return;
        }
        let attempts = job.attempts.saturating_add(1);
        if let Err(error) = self.store.retry_push_job(job.id, due, attempts).await {
            // The lease runs out and the job falls due again: nothing is lost.
            tracing::warn!(error = %format!("{error:#}"), "putting a push job back failed");
        }
    }

    fn finish(&self, id: i64) {
        // Fails only once the finisher is gone (the process is ending): the job's lease passes
        // and it is taken again, then dropped or sent again.
        let _ = self.done.send(id);
    }

    /// Samples the waiting-jobs gauge and prunes devices not seen for too long.
    async fn housekeeping(self: Arc<Self>) {
        let mut gauge = tokio::time::interval(GAUGE_EVERY);
        let mut prune = tokio::time::interval(PRUNE_EVERY);
        let idle = chrono::Duration::days(i64::from(self.settings.device_max_idle_days));
        let mut stop = self.stop.clone();
        while !self.stopped() {
            tokio::select! {
                _ = stop.changed() => {}
                _ = gauge.tick() => {
                    if let Ok(n) = self.store.push_jobs_waiting().await {
                        self.metrics
                            .push
                            .jobs_waiting
                            .store(i64::try_from(n).unwrap_or(i64::MAX), Ordering::Relaxed);
                    }
                }
                _ = prune.tick() => match self.store.prune_devices(Utc::now() - idle).await {
                    Ok(0) => {}
                    Ok(n) => {
                        tracing::info!(pruned = n, "devices not seen for too long forgotten");
                        Metrics::add(&self.metrics.push.devices_pruned, n);
                    }
                    Err(error) => {
                        tracing::warn!(error = %format!("{error:#}"), "pruning devices failed");
                    }
                },
            }
        }
    }
}

/// Job ids deleted at most per statement.
const FINISH_BATCH: usize = 256;

/// Deletes finished jobs, whatever is waiting at once in one statement.
async fn finisher(store: Arc<dyn Store>, mut finished: tokio::sync::mpsc::UnboundedReceiver<i64>) {
    let mut batch = Vec::with_capacity(FINISH_BATCH);
    while finished.recv_many(&mut batch, FINISH_BATCH).await > 0 {
        if let Err(error) = store.finish_push_jobs(&batch).await {
            // Their leases pass and they are taken again: dropped or sent again, never lost.
            tracing::warn!(error = %format!("{error:#}"), jobs = batch.len(), "finishing push jobs failed");
        }
        batch.clear();
    }
}

fn provider_of(job: &PushJob) -> &'static str {
    match job.device.platform {
        Platform::Fcm => "fcm",
        Platform::Webpush => "webpush",
    }
}
