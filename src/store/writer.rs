//! What every backend shares around its SQL: the group-commit writer (one per store, so a node's
//! commits and their hooks run in one order), the retry of a group that lost a deadlock, and the
//! batching readers behind the connect-time look-ups. The writer's commit hooks are where
//! "Delivery order" (docs/ARCHITECTURE.md) starts: a node's events leave in commit order.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::push::{FilterSlot, PushFilter};
use super::rules::{self, AppendWrites, Folded, FoldedRows, Found, PlayTx, Stored};
use super::{Applied, OnCommit};
use crate::domain::{Change, ChangeOutcome, NewEvent};

/// Events committed together at most.
pub(crate) const MAX_GROUP_EVENTS: usize = 1000;
/// Appends waiting for the writer before callers wait to enqueue.
const WRITE_QUEUE: usize = 1024;
/// Look-ups waiting for a batching reader before callers wait to enqueue.
pub(crate) const LOOKUP_QUEUE: usize = 1024;
/// Times a group that lost a deadlock or a serialisation check is run again before its callers
/// see the error.
const MAX_ATTEMPTS: u32 = 8;
/// How long one attempt at a group may take before it fails as unavailable.
const GROUP_TIMEOUT: Duration = Duration::from_secs(10);
/// The first wait before running such a group again; it doubles, with jitter, each time.
const RETRY_BACKOFF: Duration = Duration::from_millis(5);

/// A write transaction of one group, as the decisions see it.
#[async_trait]
pub(crate) trait GroupTx: PlayTx {
    /// The notifications that `(user, idempotency key)` pairs made before, by pair.
    async fn idempotency_keys(
        &mut self,
        pairs: &[(String, String)],
    ) -> anyhow::Result<HashMap<(String, String), Uuid>>;
    /// The notifications with these ids.
    async fn notifications(&mut self, ids: &[Uuid]) -> anyhow::Result<Vec<Stored>>;
    /// Unread notifications that still collapse, by `(user, collapse key)`.
    async fn open_collapsible(&mut self, pairs: &[(String, String)])
    -> anyhow::Result<Vec<Stored>>;
    /// Writes the folded rows and the appends' rows, then commits.
    async fn finish(
        self: Box<Self>,
        folded: FoldedRows<'_>,
        writes: AppendWrites,
        now: DateTime<Utc>,
    ) -> anyhow::Result<()>;
}

/// A backend, as the writer sees it: transactions, and which failures are worth a retry.
#[async_trait]
pub(crate) trait Backend: Send + Sync + 'static {
    async fn begin(&self) -> anyhow::Result<Box<dyn GroupTx>>;

    /// A round trip on the writer's own connection(s), for readiness.
    async fn ping(&self) -> anyhow::Result<()>;

    /// Whether a group that failed with `error` may succeed when run again from the start.
    fn retryable(&self, error: &anyhow::Error) -> bool {
        is_conflict(error)
    }
}

/// A deadlock or a serialisation failure (SQLSTATE 40001 or 40P01; MySQL and MariaDB report a
/// deadlock as 40001): the transaction was rolled back and nothing of it was written.
pub(crate) fn is_conflict(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        matches!(
            cause.downcast_ref::<sqlx::Error>(),
            Some(sqlx::Error::Database(db))
                if matches!(db.code().as_deref(), Some("40001" | "40P01"))
        )
    })
}

/// An I/O error on a connection: the server closed it, or the network cut it.
fn is_dropped_connection(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        matches!(
            cause.downcast_ref::<sqlx::Error>(),
            Some(sqlx::Error::Io(_))
        )
    })
}

/// Millisecond precision, as stored: live frames and replays carry the same timestamps.
pub(crate) fn now_ms() -> DateTime<Utc> {
    DateTime::from_timestamp_millis(Utc::now().timestamp_millis()).unwrap_or_default()
}

/// Commits a group of works in one transaction: each work's changes in order, then every event
/// (each work's batch followed by what its changes produced).
async fn write_group(
    backend: &dyn Backend,
    works: &[Work<'_>],
    push: Option<&Arc<dyn PushFilter>>,
) -> anyhow::Result<(Vec<Applied>, Option<i64>)> {
    let mut tx = match backend.begin().await {
        // A pooled connection the server has dropped (it restarted, or cut idle connections):
        // nothing was sent in this transaction yet, so opening it again on another is safe. A
        // pool that could not connect at all has waited its acquire timeout already: no retry.
        Err(error) if is_dropped_connection(&error) => backend.begin().await?,
        opened => opened?,
    };
    let now = now_ms();
    let mut outcomes = Vec::with_capacity(works.len());
    let mut produced = Vec::with_capacity(works.len());
    let mut folded = Folded::default();
    let fences: Vec<(i64, Option<&str>)> = works
        .iter()
        .flat_map(|work| work.changes)
        .filter_map(|change| match change {
            Change::Fence { token, command } => Some((*token, command.as_deref())),
            _ => None,
        })
        .collect();
    if !fences.is_empty() {
        rules::fence(&mut *tx, &fences).await?;
    }
    for work in works {
        let mut done = Vec::with_capacity(work.changes.len());
        let mut events = Vec::new();
        for change in work.changes {
            let (outcome, caused) = match change {
                Change::SeeUser(user) => {
                    folded.climbers.insert(user.as_str());
                    (ChangeOutcome::Done, Vec::new())
                }
                Change::SaveMatch(m) => {
                    folded.matches.insert(m.match_id, m);
                    (ChangeOutcome::Done, Vec::new())
                }
                Change::SaveChallenge(c) => {
                    folded.challenges.insert(c.challenge_id, c);
                    (ChangeOutcome::Done, Vec::new())
                }
                Change::SaveTicket(t) => {
                    folded.tickets.insert(t.user.as_str(), Some(t));
                    (ChangeOutcome::Done, Vec::new())
                }
                Change::DropTicket(user) => {
                    folded.tickets.insert(user.as_str(), None);
                    (ChangeOutcome::Done, Vec::new())
                }
                Change::Settle(m) => rules::settle(&mut *tx, &mut folded, m, now).await?,
                Change::Ascent(a) => rules::ascent(&mut *tx, a).await?,
                // Checked and recorded before the group's other changes.
                Change::Fence { .. } => (ChangeOutcome::Done, Vec::new()),
            };
            done.push(outcome);
            events.extend(caused);
        }
        outcomes.push(done);
        produced.push(events);
    }
    let items: Vec<&NewEvent> = works
        .iter()
        .zip(&produced)
        .flat_map(|(work, caused)| work.batch.iter().chain(caused.iter()))
        .collect();
    let (appended, mut writes) = if items.is_empty() {
        (Vec::new(), AppendWrites::default())
    } else {
        let heads = tx.lock_heads(&rules::users_of(&items)).await?;
        let keyed = rules::keyed_pairs(&items);
        let keys = if keyed.is_empty() {
            HashMap::new()
        } else {
            tx.idempotency_keys(&keyed).await?
        };
        let mut rows = if keys.is_empty() {
            Vec::new()
        } else {
            let mut ids: Vec<Uuid> = keys.values().copied().collect();
            ids.sort_unstable();
            ids.dedup();
            tx.notifications(&ids).await?
        };
        let collapsible = rules::collapsible_pairs(&items);
        if !collapsible.is_empty() {
            rows.extend(tx.open_collapsible(&collapsible).await?);
        }
        rules::plan_appends(&items, Found { heads, keys, rows }, now)?
    };
    // Push jobs commit with their events: a crash after the commit still sends them.
    writes.push_jobs = super::push::jobs_for(push, &appended, now);
    let earliest_due = writes.push_jobs.iter().map(|job| job.due_at).min();
    tx.finish(folded.take(), writes, now).await?;
    let mut appended = appended.into_iter();
    let applied = outcomes
        .into_iter()
        .zip(&produced)
        .zip(works)
        .map(|((outcomes, caused), work)| Applied {
            outcomes,
            appended: appended
                .by_ref()
                .take(work.batch.len() + caused.len())
                .collect(),
        })
        .collect();
    Ok((applied, earliest_due))
}

/// [`write_group`], run again from the start while it loses deadlocks (two nodes writing for
/// the same users): a conflict is the store's to settle, never a client's.
async fn commit_group(
    backend: &dyn Backend,
    works: &[Work<'_>],
    push: &FilterSlot,
) -> anyhow::Result<Vec<Applied>> {
    let filter = push.get();
    let mut wait = RETRY_BACKOFF;
    let mut attempt = 1;
    loop {
        // A database that stops answering fails the group instead of holding every writer.
        let attempt_result =
            tokio::time::timeout(GROUP_TIMEOUT, write_group(backend, works, filter))
                .await
                .unwrap_or_else(|_| Err(super::Unavailable(GROUP_TIMEOUT).into()));
        match attempt_result {
            Err(error) if attempt < MAX_ATTEMPTS && backend.retryable(&error) => {
                tracing::debug!(attempt, error = %error, "write group conflicted; running it again");
                tokio::time::sleep(jitter(wait)).await;
                wait = wait.saturating_mul(2);
                attempt += 1;
            }
            Ok((applied, earliest_due)) => {
                if let (Some(filter), Some(due)) = (filter, earliest_due) {
                    filter.committed(DateTime::from_timestamp_millis(due).unwrap_or_default());
                }
                return Ok(applied);
            }
            Err(error) => return Err(error),
        }
    }
}

/// A wait between half and all of `wait`, so that two writers that collided do not collide again.
pub(crate) fn jitter(wait: Duration) -> Duration {
    let spread = u64::try_from(wait.as_micros() / 2)
        .unwrap_or(u64::MAX)
        .max(1);
    let nanos = u64::from(Utc::now().timestamp_subsec_nanos());
    wait / 2 + Duration::from_micros(nanos % spread)
}

/// What one work asks of the writer (the job itself holds a hook that is not `Sync`).
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
                let all: Vec<super::Appended> = applied
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

/// The handle of a store's writer task.
pub(crate) struct Writer {
    jobs: mpsc::Sender<WriteJob>,
    push: FilterSlot,
    backend: Arc<dyn Backend>,
}

impl Writer {
    /// Starts the writer task of `backend`; it ends when the last handle is dropped.
    pub(crate) fn spawn(backend: Arc<dyn Backend>) -> Writer {
        let (jobs, queue) = mpsc::channel(WRITE_QUEUE);
        let push = FilterSlot::default();
        tokio::spawn(write_loop(backend.clone(), queue, push.clone()));
        Writer {
            jobs,
            push,
            backend,
        }
    }

    /// From now on, events the filter wants pushed get push jobs in their transaction. Set
    /// once; later calls change nothing.
    pub(crate) fn enable_push(&self, filter: Arc<dyn PushFilter>) {
        let _ = self.push.set(filter);
    }

    /// Whether writes can be made: the task runs (a panic ends it, and then every write fails
    /// while reads still work) and the writer's connection answers. Readiness asks this.
    pub(crate) async fn ping(&self) -> anyhow::Result<()> {
        if self.jobs.is_closed() {
            anyhow::bail!("the store writer has stopped");
        }
        self.backend
            .ping()
            .await
            .context("the store writer's connection")
    }

    /// A handle that does not keep the writer alive: background tasks stop with the store.
    pub(crate) fn alive(&self) -> WriterAlive {
        WriterAlive(self.jobs.downgrade())
    }

    /// See [`super::Store::apply_many`].
    pub(crate) async fn apply_many(
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
        self.jobs
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
}

/// Tells a background task whether its store still exists.
pub(crate) struct WriterAlive(mpsc::WeakSender<WriteJob>);

impl WriterAlive {
    pub(crate) fn is_alive(&self) -> bool {
        self.0.upgrade().is_some()
    }
}

/// Group commit: takes every job waiting (up to [`MAX_GROUP_EVENTS`] events) into one
/// transaction, so a burst of concurrent requests costs one commit and a few statements. If a
/// group fails, each of its jobs is retried alone, so one bad request cannot fail others.
async fn write_loop(
    backend: Arc<dyn Backend>,
    mut jobs: mpsc::Receiver<WriteJob>,
    push: FilterSlot,
) {
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
        match commit_group(backend.as_ref(), &parts, &push).await {
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
                    let result = commit_group(backend.as_ref(), &parts, &push).await;
                    job.finish(result);
                }
            }
        }
    }
}

/// The keys of a batched look-up, padded with `""` (no user's id) to a power of two: the look-up
/// statements then take a handful of shapes, which stay prepared in each connection's statement
/// cache, instead of one shape per batch size to parse again and again.
pub(crate) fn padded<'a>(keys: &[&'a str]) -> Vec<&'a str> {
    let mut padded = keys.to_vec();
    padded.resize(keys.len().max(1).next_power_of_two(), "");
    padded
}

/// A look-up answered by a batching reader: `None` when there is no row for the key.
pub(crate) struct Lookup<K, V> {
    key: K,
    reply: oneshot::Sender<Result<Option<V>, String>>,
}

/// Starts a batching reader (see [`lookup_loop`]) and returns where to send its look-ups.
pub(crate) fn spawn_lookups<K, V, F, Fut>(max_batch: usize, read: F) -> mpsc::Sender<Lookup<K, V>>
where
    K: Eq + Hash + Clone + Send + 'static,
    V: Clone + Send + 'static,
    F: Fn(Vec<K>) -> Fut + Send + 'static,
    Fut: Future<Output = anyhow::Result<HashMap<K, V>>> + Send + 'static,
{
    let (lookups, queue) = mpsc::channel(LOOKUP_QUEUE);
    tokio::spawn(lookup_loop(queue, max_batch, read));
    lookups
}

/// Answers look-ups in batches: whatever is waiting when a read starts goes into the next one
/// (up to `max_batch`), a single statement on a single connection. A round trip per look-up
/// cost more than the rest of the request under a crowd of them: every queue join reads the
/// climber's rating, every stream's connect the user's unread count and head, and, when
/// something is unread, the newest unread notifications.
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
pub(crate) async fn look_up<K, V>(
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn look_up_keys_are_padded_to_a_power_of_two_with_no_users_id() {
        assert_eq!(padded(&["a"]), ["a"]);
        assert_eq!(padded(&["a", "b", "c"]), ["a", "b", "c", ""]);
        assert_eq!(padded(&["a"; 5]).len(), 8);
        assert_eq!(padded(&["a"; 32]).len(), 32);
        assert!(
            crate::domain::UserId::parse("").is_err(),
            "no user has the padding's id"
        );
    }

    /// A backend whose transactions panic, and whose connection answers as told.
    struct Broken {
        answers: bool,
    }

    #[async_trait]
    impl Backend for Broken {
        async fn begin(&self) -> anyhow::Result<Box<dyn GroupTx>> {
            panic!("a bug in the write path");
        }

        async fn ping(&self) -> anyhow::Result<()> {
            anyhow::ensure!(self.answers, "connection closed");
            Ok(())
        }
    }

    fn like(user: &str) -> NewEvent {
        NewEvent {
            user: crate::domain::UserId::parse(user).unwrap(),
            event: crate::domain::Event::PostLiked(crate::domain::PostLiked::new(
                crate::domain::PostId::parse("p1").unwrap(),
                crate::domain::UserId::parse("bob").unwrap(),
            )),
            idempotency_key: None,
        }
    }

    #[tokio::test]
    async fn a_writer_is_not_ready_once_its_task_died_or_its_connection_fails() {
        let writer = Writer::spawn(Arc::new(Broken { answers: true }));
        writer.ping().await.unwrap();
        let write = writer.apply_many(vec![(Vec::new(), vec![like("ana")])], Box::new(|_| {}));
        assert!(write.await.is_err(), "the task panicked");
        let error = writer.ping().await.unwrap_err();
        assert!(format!("{error:#}").contains("stopped"), "{error:#}");

        let writer = Writer::spawn(Arc::new(Broken { answers: false }));
        let error = writer.ping().await.unwrap_err();
        assert!(
            format!("{error:#}").contains("connection closed"),
            "{error:#}"
        );
    }

    #[test]
    fn a_jittered_wait_lies_between_half_and_all_of_it() {
        for ms in [1, 5, 80, 1000] {
            let wait = Duration::from_millis(ms);
            let got = jitter(wait);
            assert!(got >= wait / 2 && got <= wait, "{ms} ms gave {got:?}");
        }
    }
}
