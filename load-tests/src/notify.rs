//! `notify` scenario: one SSE session per user, a paced publisher of `post_liked` events, and
//! receivers that measure delivery latency, loss, duplicates and cursor order. The same client
//! drives Nchan (one channel per user) for the cross-node comparison, and can keep its sessions
//! alive across a node's loss (`--resume`: reopen with `Last-Event-ID`, as an `EventSource`
//! does).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Args, value_parser};
use eventsource_stream::Event;
use futures_util::StreamExt;
use reqwest::Client;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::{MissedTickBehavior, timeout, timeout_at};

use crate::adapter::ServerKind;
use crate::common::{
    self, CpuUsage, ErrorCount, ErrorTally, LatencySummary, ShardedHistogram, SseStream, Target,
    row,
};
use crate::output;
use crate::plot::{self, Plot};

/// Upper bound on events per run: the per-event bookkeeping is preallocated (16 bytes each).
const MAX_EVENTS: u64 = 20_000_000;

#[derive(Debug, Args)]
pub struct NotifyArgs {
    /// Which server answers: Belay, or Nchan (a channel per user, subscribed at
    /// `/sub/<channel>` and published to at `/pub/<channel>`: no tokens, no cursors, one event
    /// per request).
    #[arg(long, value_enum, default_value_t = ServerKind::Belay)]
    pub server: ServerKind,
    /// Belay only: a session whose stream ends reopens it with `Last-Event-ID` (its last
    /// cursor) until the run ends, as an `EventSource` does; reports how long sessions were away.
    #[arg(long)]
    pub resume: bool,
    /// Server base URL; must be plain http on loopback (127.0.0.0/8, localhost, ::1).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// Another node of the same cluster to publish to (cross-node: sessions on `--url`, the
    /// host's notifies to this one); loopback only. Default: `--url`.
    #[arg(long)]
    pub publish_url: Option<String>,
    /// Number of users, each with one SSE session.
    #[arg(long, default_value_t = 200, value_parser = value_parser!(u32).range(1..=200_000))]
    pub users: u32,
    /// Publish requests per second (each request carries --batch events).
    #[arg(long, default_value_t = 500, value_parser = value_parser!(u32).range(1..=1_000_000))]
    pub rate: u32,
    /// Seconds of measured publishing, after the warmup.
    #[arg(long, default_value_t = 10, value_parser = value_parser!(u64).range(1..=3600))]
    pub duration: u64,
    /// Seconds of publishing before measuring: checked for loss and order, excluded from
    /// latency and achieved rate.
    #[arg(long, default_value_t = 1, value_parser = value_parser!(u64).range(0..=600))]
    pub warmup: u64,
    /// Seconds to wait after publishing for events still on their way.
    #[arg(long, default_value_t = 5, value_parser = value_parser!(u64).range(0..=600))]
    pub drain: u64,
    /// Events per request; above 1 the body is {"events":[...]} (server default limit: 100).
    #[arg(long, default_value_t = 1, value_parser = value_parser!(u32).range(1..=10_000))]
    pub batch: u32,
    /// API key for /v1/notify; default: env BELAY_API_KEY, else GET /v1/dev/config (dev mode).
    #[arg(long)]
    pub api_key: Option<String>,
    /// Publish requests in flight at most, so the rate is not capped by request latency.
    #[arg(long, default_value_t = 64, value_parser = value_parser!(u32).range(1..=10_000))]
    pub concurrency: u32,
    /// Sessions being opened at the same time.
    #[arg(long, default_value_t = 50, value_parser = value_parser!(u32).range(1..=10_000))]
    pub open_concurrency: u32,
    /// Seconds each session may take to get its token and receive the `unread` event.
    #[arg(long, default_value_t = 10, value_parser = value_parser!(u64).range(1..=600))]
    pub open_timeout: u64,
    /// Timeout in seconds of each publish or token request.
    #[arg(long, default_value_t = 10, value_parser = value_parser!(u64).range(1..=600))]
    pub request_timeout: u64,
    /// JSON result file (the SVG plot goes beside it); default: load-tests/results/.
    #[arg(long, alias = "json", value_name = "FILE")]
    pub out: Option<PathBuf>,
}

/// Lifecycle of one published event (`Slot::state`).
const UNSENT: u8 = 0;
const IN_FLIGHT: u8 = 1;
const ACCEPTED: u8 = 2;
const REJECTED: u8 = 3;

/// Bookkeeping for one event, indexed by its sequence number (the `<seq>` of `lt-<seq>`):
/// a lock-free "map" from post id to send instant, target user and receipt.
#[derive(Default)]
struct Slot {
    /// Nanoseconds since `Shared::t0` plus one; 0 means never sent.
    sent_ns: AtomicU64,
    user: AtomicU32,
    state: AtomicU8,
    received: AtomicBool,
    /// Publish-to-receive latency in µs, for the plot (0: not measured).
    latency_us: AtomicU32,
}

/// State read by the publisher and every receiver.
struct Shared {
    t0: Instant,
    slots: Vec<Slot>,
    /// Events with a lower sequence number belong to the warmup.
    warmup_events: u64,
    latency_us: ShardedHistogram,
    /// `--resume`: the first stream that ended and the last one reopened (ns since `t0`, plus
    /// one; 0: none), and per reopened stream the time from its end to its `unread` frame.
    first_drop_ns: AtomicU64,
    last_resume_ns: AtomicU64,
    away_us: ShardedHistogram,
}

impl Shared {
    fn now_ns(&self) -> u64 {
        u64::try_from(self.t0.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn slot(&self, seq: u64) -> Option<&Slot> {
        self.slots.get(usize::try_from(seq).ok()?)
    }
}

/// Everything a session task needs besides its user.
struct SessionCtx {
    server: ServerKind,
    /// Nchan: the channel of user `i` is `<prefix>_<i>`.
    channel_prefix: String,
    resume: bool,
    shared: Arc<Shared>,
    target: Target,
    api_key: String,
    api: Client,
    sse: Client,
    open_permits: Arc<Semaphore>,
    open_timeout: Duration,
}

/// What one session saw; summed over sessions for the report.
#[derive(Default)]
struct ReceiverStats {
    opened: bool,
    open_error: Option<String>,
    /// Why the stream ended before the run did, if it did.
    dropped: Option<String>,
    delivered: u64,
    duplicates: u64,
    out_of_order: u64,
    /// `--resume`: streams reopened, and attempts that failed (each retried).
    resumes: u64,
    resume_failures: u64,
    misrouted: u64,
    unknown: u64,
    unparsable: u64,
}

/// The part of a delivered event the receiver checks.
#[derive(Deserialize)]
struct Delivered {
    cursor: Option<u64>,
    data: Payload,
}

#[derive(Deserialize)]
struct Payload {
    post_id: String,
}

pub async fn run(args: NotifyArgs) -> Result<()> {
    let cpu_start = common::process_cpu_seconds();
    let wall_start = Instant::now();
    let target = Target::loopback(&args.url)?;
    let publish_target = match &args.publish_url {
        Some(url) => Target::loopback(url)?,
        None => target.clone(),
    };
    let run = common::run_tag();
    let nchan = args.server == ServerKind::Nchan;
    if nchan && args.batch != 1 {
        bail!("--batch must be 1 with --server nchan: a publish is one message");
    }
    if nchan && args.resume {
        bail!("--resume needs a Belay server");
    }

    let total_requests = u64::from(args.rate) * (args.warmup + args.duration);
    let total_events = total_requests * u64::from(args.batch);
    if total_events > MAX_EVENTS {
        bail!(
            "{total_events} events requested (rate x batch x (warmup + duration)); \
             the limit is {MAX_EVENTS}: lower --rate, --batch or --duration"
        );
    }
    common::warn_if_fd_limit_below(u64::from(args.users) + u64::from(args.concurrency) + 64);

    let request_timeout = Duration::from_secs(args.request_timeout);
    let api = common::api_client(request_timeout, args.concurrency as usize)?;
    let sse = common::sse_client()?;
    let api_key = if nchan {
        String::new()
    } else {
        common::resolve_api_key(&api, &target, args.api_key.as_deref()).await?
    };
    let channel_prefix = format!("lt_{run}");

    let slots_len = usize::try_from(total_events).context("event count does not fit in memory")?;
    let shard_count = std::thread::available_parallelism().map_or(4, |n| n.get() * 4);
    let shared = Arc::new(Shared {
        t0: Instant::now(),
        slots: (0..slots_len).map(|_| Slot::default()).collect(),
        warmup_events: u64::from(args.rate) * args.warmup * u64::from(args.batch),
        latency_us: ShardedHistogram::new(shard_count)?,
        first_drop_ns: AtomicU64::new(0),
        last_resume_ns: AtomicU64::new(0),
        away_us: ShardedHistogram::new(shard_count)?,
    });

    // Phase 1: open every session (bounded concurrency) and wait for all to report.
    eprintln!(
        "run {run}: opening {} SSE sessions against {}",
        args.users,
        target.base()
    );
    let ctx = Arc::new(SessionCtx {
        server: args.server,
        channel_prefix: channel_prefix.clone(),
        resume: args.resume,
        shared: Arc::clone(&shared),
        target: target.clone(),
        api_key: api_key.clone(),
        api: api.clone(),
        sse,
        open_permits: Arc::new(Semaphore::new(args.open_concurrency as usize)),
        open_timeout: Duration::from_secs(args.open_timeout),
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let (sessions, open_users, open_failures) =
        open_sessions(&ctx, &run, args.users, &stop_rx).await;
    eprintln!(
        "run {run}: {} sessions open, {open_failures} failed to open",
        open_users.len()
    );
    if open_users.is_empty() {
        let _ = stop_tx.send(true);
        let reasons = collect_stats(sessions).await;
        let first = reasons.iter().find_map(|s| s.open_error.clone());
        bail!(
            "no SSE session could be opened (first error: {})",
            first.unwrap_or_else(|| "unknown".to_owned())
        );
    }

    // Phase 2: publish, then drain until every accepted event arrived or --drain expires.
    eprintln!(
        "run {run}: publishing {} req/s x {} events for {} s (+{} s warmup)",
        args.rate, args.batch, args.duration, args.warmup
    );
    let cpu_publish = common::process_cpu_seconds();
    let wall_publish = Instant::now();
    let publisher = Publisher {
        shared: Arc::clone(&shared),
        api,
        server: args.server,
        channel_prefix,
        target: publish_target.clone(),
        url: publish_target.endpoint("/v1/notify"),
        api_key,
        users: Arc::new(open_users),
        batch: args.batch,
        counters: Arc::new(PublishCounters::default()),
    };
    let counters = Arc::clone(&publisher.counters);
    let bar = output::bar(total_requests, "publishing");
    let progress = {
        let bar = bar.clone();
        tokio::spawn(async move {
            loop {
                let ok = counters.ok.load(Ordering::Relaxed);
                let errors = counters.errors.load(Ordering::Relaxed);
                bar.set_position(ok + errors);
                bar.set_message(format!("errors {errors}"));
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    let published = publisher.run(&args, total_requests).await;
    progress.abort();
    bar.finish();
    let published = published?;
    wait_for_delivery(&shared, Duration::from_secs(args.drain)).await;
    let cpu_end = common::process_cpu_seconds();
    let phase_wall = wall_publish.elapsed();

    // Phase 3: close the sessions and tally.
    let _ = stop_tx.send(true);
    let stats = collect_stats(sessions).await;
    let report = build_report(
        &args,
        &run,
        &target,
        &publish_target,
        &shared,
        &published,
        &stats,
    )?
    .with_cpu(
        CpuUsage::between(cpu_publish, cpu_end, phase_wall),
        CpuUsage::between(
            cpu_start,
            common::process_cpu_seconds(),
            wall_start.elapsed(),
        ),
    );
    report.print();
    let plot = chart(&report, &shared)?;
    output::write(args.out.as_deref(), "notify", &report, &plot)?;
    common::verdict(&[
        ("events lost", report.events_lost),
        ("duplicates", report.duplicates),
        ("out of order", report.out_of_order),
    ])
}

/// Latency of every measured event by publish time, and its percentile spectrum.
fn chart(report: &Report, shared: &Shared) -> Result<Plot> {
    let mut samples: Vec<(f64, f64)> = shared
        .slots
        .iter()
        .skip(usize::try_from(shared.warmup_events).unwrap_or(usize::MAX))
        .filter_map(|slot| {
            let latency = slot.latency_us.load(Ordering::Relaxed);
            let sent = slot.sent_ns.load(Ordering::Relaxed);
            (latency > 0 && sent > 0).then(|| (sent as f64 / 1e9, f64::from(latency) / 1e3))
        })
        .collect();
    let start = samples.iter().map(|s| s.0).fold(f64::INFINITY, f64::min);
    for sample in &mut samples {
        sample.0 -= start;
    }
    samples.sort_by(|a, b| a.0.total_cmp(&b.0));
    let title = format!(
        "notify: {:.0} events/s to {} users, batch {}",
        report.achieved_rate_eps, report.users, report.batch
    );
    Ok(Plot::latency(
        &title,
        "seconds since the first measured publish",
        plot::binned("publish to receive", &samples, 200),
        vec![plot::spectrum(
            "publish to receive",
            &shared.latency_us.merged()?,
        )],
    ))
}

/// Spawns one session task per user and waits until each has opened or failed.
/// Returns the tasks, the open users as (index, user id) and the number that failed.
async fn open_sessions(
    ctx: &Arc<SessionCtx>,
    run: &str,
    users: u32,
    stop: &watch::Receiver<bool>,
) -> (Vec<JoinHandle<ReceiverStats>>, Vec<(u32, String)>, u64) {
    let (open_tx, mut open_rx) = mpsc::unbounded_channel();
    let sessions: Vec<_> = (0..users)
        .map(|idx| {
            let user_id = format!("lt-{run}-{idx}");
            tokio::spawn(session(
                Arc::clone(ctx),
                idx,
                user_id,
                open_tx.clone(),
                stop.clone(),
            ))
        })
        .collect();
    // Each task reports exactly once; dropping our sender lets recv() end if one dies early.
    drop(open_tx);
    let mut open_users = Vec::with_capacity(users as usize);
    let mut failures = 0;
    let bar = output::bar(u64::from(users), "opening");
    while let Some((idx, user_id, ok)) = open_rx.recv().await {
        bar.inc(1);
        if ok {
            open_users.push((idx, user_id));
        } else {
            failures += 1;
        }
    }
    bar.finish();
    open_users.sort_unstable_by_key(|(idx, _)| *idx);
    (sessions, open_users, failures)
}

/// One user's task: open the session, report the outcome, then receive until told to stop;
/// with `--resume`, reopen the stream with `Last-Event-ID` whenever it ends.
async fn session(
    ctx: Arc<SessionCtx>,
    idx: u32,
    user_id: String,
    opened: mpsc::UnboundedSender<(u32, String, bool)>,
    mut stop: watch::Receiver<bool>,
) -> ReceiverStats {
    let mut stats = ReceiverStats::default();
    let open = async {
        // The permit bounds concurrent opens only; it is released once the session is up.
        let _permit = ctx
            .open_permits
            .acquire()
            .await
            .context("open limiter closed")?;
        timeout(ctx.open_timeout, async {
            match ctx.server {
                ServerKind::Belay => {
                    let token =
                        common::dev_token(&ctx.api, &ctx.target, &ctx.api_key, &user_id).await?;
                    let (stream, cursor) = open_belay(&ctx.sse, &ctx.target, &token, None).await?;
                    Ok::<_, anyhow::Error>((stream, token, cursor))
                }
                ServerKind::Nchan => {
                    let channel = format!("{}_{idx}", ctx.channel_prefix);
                    let stream = open_nchan(&ctx.sse, &ctx.target, &channel).await?;
                    Ok((stream, String::new(), None))
                }
            }
        })
        .await
        .with_context(|| {
            format!(
                "session {user_id}: not open within {} s",
                ctx.open_timeout.as_secs()
            )
        })?
    };
    let (mut stream, token, mut last_cursor) = match open.await {
        Ok(opened) => opened,
        Err(err) => {
            stats.open_error = Some(format!("{err:#}"));
            let _ = opened.send((idx, user_id, false));
            return stats;
        }
    };
    stats.opened = true;
    let _ = opened.send((idx, user_id, true));
    drop(opened);

    loop {
        let ended = loop {
            tokio::select! {
                biased;
                // A dropped sender also ends the session, so an early error cannot leak tasks.
                _ = stop.changed() => return stats,
                frame = stream.next() => match frame {
                    Some(Ok(event)) => {
                        on_event(&ctx, idx, &event, &mut last_cursor, &mut stats);
                    }
                    Some(Err(err)) => break common::sse_error(&err),
                    None => break "server closed the stream".to_owned(),
                },
            }
        };
        if !ctx.resume || *stop.borrow() {
            stats.dropped = Some(ended);
            return stats;
        }
        let Some(resumed) = resume(&ctx, &token, last_cursor, &mut stop, &mut stats).await else {
            if !*stop.borrow() {
                stats.dropped = Some(format!("{ended}; not resumed"));
            }
            return stats;
        };
        stream = resumed;
    }
}

/// Reopens a session's stream after it ended, from `last_cursor` (0: from the start), retrying
/// every 100 ms for up to the open timeout. None when the run stops first or the time is up.
async fn resume(
    ctx: &SessionCtx,
    token: &str,
    last_cursor: Option<u64>,
    stop: &mut watch::Receiver<bool>,
    stats: &mut ReceiverStats,
) -> Option<SseStream> {
    let shared = &ctx.shared;
    let dropped_ns = shared.now_ns().saturating_add(1);
    let _ = shared
        .first_drop_ns
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |first| {
            (first == 0 || dropped_ns < first).then_some(dropped_ns)
        });
    let deadline = tokio::time::Instant::now() + ctx.open_timeout;
    let cursor = last_cursor.unwrap_or(0);
    loop {
        let attempt = timeout_at(
            deadline,
            open_belay(&ctx.sse, &ctx.target, token, Some(cursor)),
        );
        let outcome = tokio::select! {
            biased;
            _ = stop.changed() => return None,
            outcome = attempt => outcome,
        };
        match outcome {
            Ok(Ok((stream, _))) => {
                let now = shared.now_ns().saturating_add(1);
                shared.last_resume_ns.fetch_max(now, Ordering::AcqRel);
                shared
                    .away_us
                    .record(stats.resumes as usize, (now - dropped_ns) / 1000);
                stats.resumes += 1;
                return Some(stream);
            }
            Ok(Err(_)) => stats.resume_failures += 1,
            Err(_) => return None,
        }
        tokio::select! {
            biased;
            _ = stop.changed() => return None,
            () = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
    }
}

/// Belay: `GET /v1/events` (from `Last-Event-ID` when given), read up to the `unread` event,
/// which the server sends once the session is registered. Returns the stream and the
/// summary's cursor.
async fn open_belay(
    client: &Client,
    target: &Target,
    token: &str,
    last_event_id: Option<u64>,
) -> Result<(SseStream, Option<u64>)> {
    let url = target.endpoint("/v1/events");
    let mut request = client
        .get(&url)
        .bearer_auth(token)
        .header(reqwest::header::ACCEPT, "text/event-stream");
    if let Some(cursor) = last_event_id {
        request = request.header("Last-Event-ID", cursor.to_string());
    }
    let resp = request.send().await.with_context(|| format!("GET {url}"))?;
    if !resp.status().is_success() {
        bail!("GET {url}: {}", common::describe_error(resp).await);
    }
    let mut stream: SseStream =
        eventsource_stream::Eventsource::eventsource(resp.bytes_stream()).boxed();
    while let Some(frame) = stream.next().await {
        let event = frame.with_context(|| format!("GET {url}: reading the stream"))?;
        if event.event == "unread" {
            let cursor = serde_json::from_str::<Value>(&event.data)
                .ok()
                .and_then(|v| v.get("cursor").and_then(Value::as_u64));
            return Ok((stream, cursor));
        }
    }
    bail!("GET {url}: stream closed before the `unread` event")
}

/// Nchan: an EventSource subscriber of `channel`; subscribed once it answers 200.
async fn open_nchan(client: &Client, target: &Target, channel: &str) -> Result<SseStream> {
    let url = target.endpoint(&format!("/sub/{channel}"));
    let resp = client
        .get(&url)
        .header(reqwest::header::ACCEPT, "text/event-stream")
        .send()
        .await
        .with_context(|| format!("GET {url}"))?;
    if !resp.status().is_success() {
        bail!("GET {url}: {}", common::describe_error(resp).await);
    }
    Ok(eventsource_stream::Eventsource::eventsource(resp.bytes_stream()).boxed())
}

/// Checks one SSE event against what the publisher sent.
fn on_event(
    ctx: &SessionCtx,
    idx: u32,
    event: &Event,
    last_cursor: &mut Option<u64>,
    stats: &mut ReceiverStats,
) {
    let shared = &ctx.shared;
    // Nchan frames carry no event name: they arrive as EventSource's default, `message`.
    let expected = match ctx.server {
        ServerKind::Belay => "post_liked",
        ServerKind::Nchan => "message",
    };
    if event.event != expected {
        // `unread` may be re-sent by the server; anything else is unexpected here.
        if event.event != "unread" {
            stats.unknown += 1;
        }
        return;
    }
    let Ok(delivered) = serde_json::from_str::<Delivered>(&event.data) else {
        stats.unparsable += 1;
        return;
    };
    let seq = delivered
        .data
        .post_id
        .strip_prefix("lt-")
        .and_then(|s| s.parse::<u64>().ok());
    let Some(slot) = seq.and_then(|seq| shared.slot(seq).map(|slot| (seq, slot))) else {
        stats.unknown += 1;
        return;
    };
    let (seq, slot) = slot;
    let sent_ns = slot.sent_ns.load(Ordering::Acquire);
    if sent_ns == 0 {
        stats.unknown += 1;
        return;
    }
    if slot.received.swap(true, Ordering::AcqRel) {
        stats.duplicates += 1;
        return;
    }
    stats.delivered += 1;
    if slot.user.load(Ordering::Relaxed) != idx {
        stats.misrouted += 1;
    }
    // The SSE id is the cursor too; it is only a fallback because the parser keeps the last id.
    let cursor = delivered.cursor.or_else(|| event.id.parse().ok());
    if let Some(cursor) = cursor {
        if last_cursor.is_some_and(|last| cursor <= last) {
            stats.out_of_order += 1;
        }
        *last_cursor = Some(last_cursor.map_or(cursor, |last| last.max(cursor)));
    }
    if seq >= shared.warmup_events {
        let latency_us = shared.now_ns().saturating_sub(sent_ns - 1) / 1000;
        shared.latency_us.record(idx as usize, latency_us);
        slot.latency_us.store(
            u32::try_from(latency_us.max(1)).unwrap_or(u32::MAX),
            Ordering::Relaxed,
        );
    }
}

/// Waits until every accepted event was received, or `drain` elapses.
async fn wait_for_delivery(shared: &Shared, drain: Duration) {
    let deadline = Instant::now() + drain;
    // Events mostly arrive in order, so skip the settled prefix instead of rescanning it.
    let mut settled = 0;
    loop {
        while let Some(slot) = shared.slots.get(settled) {
            let waiting = slot.state.load(Ordering::Acquire) == ACCEPTED
                && !slot.received.load(Ordering::Acquire);
            if waiting {
                break;
            }
            settled += 1;
        }
        if settled >= shared.slots.len() || Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Stops waiting for sessions after this long; stragglers are aborted.
const JOIN_TIMEOUT: Duration = Duration::from_secs(10);

async fn collect_stats(
    sessions: Vec<tokio::task::JoinHandle<ReceiverStats>>,
) -> Vec<ReceiverStats> {
    let deadline = tokio::time::Instant::now() + JOIN_TIMEOUT;
    let mut all = Vec::with_capacity(sessions.len());
    for handle in sessions {
        let abort = handle.abort_handle();
        match timeout_at(deadline, handle).await {
            Ok(Ok(stats)) => all.push(stats),
            Ok(Err(err)) => all.push(ReceiverStats {
                dropped: Some(format!("session task failed: {err}")),
                ..ReceiverStats::default()
            }),
            Err(_) => {
                abort.abort();
                all.push(ReceiverStats {
                    dropped: Some("session did not stop in time".to_owned()),
                    ..ReceiverStats::default()
                });
            }
        }
    }
    all
}

/// Publisher-side counters, updated by the concurrent sender tasks.
#[derive(Default)]
struct PublishCounters {
    ok: AtomicU64,
    errors: AtomicU64,
    outcomes: Mutex<BTreeMap<String, u64>>,
    error_messages: ErrorTally,
}

impl PublishCounters {
    fn error(&self, message: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        self.error_messages.add(message);
    }
}

/// What the publish phase did.
struct Published {
    requests_sent: u64,
    warmup_requests: u64,
    measured_requests: u64,
    measured_window: Duration,
    counters: Arc<PublishCounters>,
}

struct Publisher {
    shared: Arc<Shared>,
    api: Client,
    server: ServerKind,
    /// Nchan: the channel of user `i` is `<prefix>_<i>`, published at `target`'s `/pub/…`.
    channel_prefix: String,
    target: Target,
    /// Belay: `/v1/notify`.
    url: String,
    api_key: String,
    /// Users with an open session, as (index, user id); events go round-robin over them.
    users: Arc<Vec<(u32, String)>>,
    batch: u32,
    counters: Arc<PublishCounters>,
}

impl Publisher {
    /// Open-loop pacing: request k is due at k / rate seconds however long earlier ones take,
    /// with up to --concurrency in flight. Stops at warmup + duration even if behind.
    async fn run(self, args: &NotifyArgs, total_requests: u64) -> Result<Published> {
        let this = Arc::new(self);
        let permits = Arc::new(Semaphore::new(args.concurrency as usize));
        let rate = f64::from(args.rate);
        let warmup_requests = u64::from(args.rate) * args.warmup;
        let start = tokio::time::Instant::now();
        let deadline = start + Duration::from_secs(args.warmup + args.duration);
        // Timers are ~1 ms grained; above 1000 req/s each tick sends every request now due.
        let period = Duration::from_secs_f64(1.0 / rate).max(Duration::from_millis(1));
        let mut ticker = tokio::time::interval(period);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);

        let mut next = 0u64;
        'pace: while next < total_requests {
            ticker.tick().await;
            let now = tokio::time::Instant::now();
            // One tick of slack lets timer jitter still send the last request, not a backlog.
            if now >= deadline + period {
                break;
            }
            let due = ((now.min(deadline) - start).as_secs_f64() * rate) as u64 + 1;
            while next < due.min(total_requests) {
                // Waiting here means the server (or --concurrency) is the limit; it shows
                // up as an achieved rate below target.
                let Ok(permit) =
                    timeout_at(deadline + period, Arc::clone(&permits).acquire_owned()).await
                else {
                    break 'pace;
                };
                let permit = permit.context("publish limiter closed")?;
                let sender = Arc::clone(&this);
                tokio::spawn(async move {
                    sender.send(next).await;
                    drop(permit);
                });
                next += 1;
            }
        }
        // Finish the window so the achieved rate is over the full duration.
        tokio::time::sleep_until(deadline).await;
        // Nominal window: requests the client failed to send in time simply are not counted.
        let measured_window = Duration::from_secs(args.duration);
        // Every sender holds a permit: getting all of them back means no request is in flight.
        let _all = permits
            .acquire_many(args.concurrency)
            .await
            .context("publish limiter closed")?;
        Ok(Published {
            requests_sent: next,
            warmup_requests: next.min(warmup_requests),
            measured_requests: next.saturating_sub(warmup_requests),
            measured_window,
            counters: Arc::clone(&this.counters),
        })
    }

    /// Sends request `index`, carrying events `index * batch ..`.
    async fn send(&self, index: u64) {
        let batch = u64::from(self.batch);
        let first = index * batch;
        let mut items = Vec::with_capacity(self.batch as usize);
        for seq in first..first + batch {
            // Round-robin over open users; distinct post ids so the server collapses nothing.
            let (idx, user_id) = &self.users[(seq % self.users.len() as u64) as usize];
            if let Some(slot) = self.shared.slot(seq) {
                slot.user.store(*idx, Ordering::Relaxed);
            }
            items.push(json!({
                "user_id": user_id,
                "kind": "post_liked",
                "data": { "post_id": format!("lt-{seq}"), "by": "loadgen" },
            }));
        }
        let body = if self.batch == 1 {
            items.pop().unwrap_or_default()
        } else {
            json!({ "events": items })
        };
        // Serialize first, then stamp: latency starts when the request leaves, not before.
        let request = match self.server {
            ServerKind::Belay => self
                .api
                .post(&self.url)
                .header("X-Api-Key", &self.api_key)
                .json(&body),
            ServerKind::Nchan => {
                let (idx, _) = &self.users[(first % self.users.len() as u64) as usize];
                let url = self
                    .target
                    .endpoint(&format!("/pub/{}_{idx}", self.channel_prefix));
                self.api.post(url).json(&body)
            }
        };
        let sent_ns = self.shared.now_ns().saturating_add(1);
        self.mark(first, batch, |slot| {
            slot.sent_ns.store(sent_ns, Ordering::Release);
            slot.state.store(IN_FLIGHT, Ordering::Release);
        });

        let outcome = match request.send().await {
            Ok(resp) if resp.status().is_success() => Ok(resp.json::<Value>().await.ok()),
            Ok(resp) => Err(common::describe_error(resp).await),
            Err(err) => Err(format!("publish failed: {}", common::error_chain(&err))),
        };
        match outcome {
            Ok(body) => {
                self.mark(first, batch, |slot| {
                    slot.state.store(ACCEPTED, Ordering::Release)
                });
                self.counters.ok.fetch_add(1, Ordering::Relaxed);
                if self.server == ServerKind::Belay {
                    self.tally_outcomes(body.as_ref());
                }
            }
            Err(message) => {
                self.mark(first, batch, |slot| {
                    slot.state.store(REJECTED, Ordering::Release)
                });
                self.counters.error(message);
            }
        }
    }

    fn mark(&self, first: u64, count: u64, f: impl Fn(&Slot)) {
        for seq in first..first + count {
            if let Some(slot) = self.shared.slot(seq) {
                f(slot);
            }
        }
    }

    /// Counts `results[].outcome` values, e.g. how many events were pushed live vs stored.
    fn tally_outcomes(&self, body: Option<&Value>) {
        let results = body
            .and_then(|b| b.get("results"))
            .and_then(Value::as_array);
        let mut outcomes = self
            .counters
            .outcomes
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match results {
            Some(results) => {
                for result in results {
                    let outcome = result
                        .get("outcome")
                        .and_then(Value::as_str)
                        .unwrap_or("(missing)");
                    *outcomes.entry(outcome.to_owned()).or_default() += 1;
                }
            }
            None => {
                *outcomes
                    .entry("(unparsed response)".to_owned())
                    .or_default() += 1
            }
        }
    }
}

/// The numbers printed as the summary table and written by --out.
#[derive(Debug, Serialize)]
struct Report {
    scenario: &'static str,
    server: ServerKind,
    run: String,
    url: String,
    publish_url: String,
    users: u32,
    batch: u32,
    target_rate_rps: u32,
    duration_s: u64,
    warmup_s: u64,
    sessions_opened: u64,
    session_open_errors: u64,
    /// Sessions whose stream ended before the run did.
    sessions_dropped: u64,
    requests_sent: u64,
    requests_ok: u64,
    requests_errors: u64,
    warmup_requests: u64,
    /// Measured-window requests per second (warmup excluded).
    achieved_rate_rps: f64,
    achieved_rate_eps: f64,
    events_sent: u64,
    events_accepted: u64,
    /// First receipts of our events (warmup included).
    events_delivered: u64,
    /// Accepted by the server but never received.
    events_lost: u64,
    /// The first lost events (up to [`LOST_LISTED`]), to look them up in the store.
    lost_first: Vec<LostEvent>,
    /// Received although the request failed (e.g. timed out after the server stored it).
    delivered_despite_error: u64,
    duplicates: u64,
    out_of_order: u64,
    misrouted: u64,
    unknown_events: u64,
    unparsable_events: u64,
    outcomes: BTreeMap<String, u64>,
    latency: LatencySummary,
    /// `--resume`: streams reopened with `Last-Event-ID`, failed attempts (retried), the time
    /// from the first stream that ended to the last one reopened, and per reopened stream the
    /// time from its end to its `unread` frame.
    resumes: u64,
    resume_failures: u64,
    all_resumed_s: Option<f64>,
    away: LatencySummary,
    /// CPU of this client during publish + drain, then over the whole run.
    client_cpu_publish: Option<CpuUsage>,
    client_cpu_total: Option<CpuUsage>,
    /// Distinct messages with counts: why sessions failed to open or ended early.
    session_errors: Vec<ErrorCount>,
    /// Distinct messages with counts: why publish requests failed.
    publish_errors: Vec<ErrorCount>,
}

/// How many lost events a report names.
const LOST_LISTED: usize = 20;

/// A lost event: its user, its post id (`lt-<sequence>`) and when it was sent (ms into the run).
#[derive(Debug, Serialize)]
struct LostEvent {
    user_id: String,
    post_id: String,
    sent_ms: u64,
}

fn build_report(
    args: &NotifyArgs,
    run: &str,
    target: &Target,
    publish_target: &Target,
    shared: &Shared,
    published: &Published,
    stats: &[ReceiverStats],
) -> Result<Report> {
    let sum = |f: fn(&ReceiverStats) -> u64| stats.iter().map(f).sum::<u64>();
    let (mut sent, mut accepted, mut lost, mut despite_error) = (0, 0, 0, 0);
    let mut lost_first = Vec::new();
    for (seq, slot) in shared.slots.iter().enumerate() {
        let state = slot.state.load(Ordering::Acquire);
        if state == UNSENT {
            continue;
        }
        sent += 1;
        let received = slot.received.load(Ordering::Acquire);
        if state == ACCEPTED {
            accepted += 1;
            lost += u64::from(!received);
            if !received && lost_first.len() < LOST_LISTED {
                lost_first.push(LostEvent {
                    user_id: format!("lt-{run}-{}", slot.user.load(Ordering::Relaxed)),
                    post_id: format!("lt-{seq}"),
                    sent_ms: slot.sent_ns.load(Ordering::Acquire).saturating_sub(1) / 1_000_000,
                });
            }
        } else {
            despite_error += u64::from(received);
        }
    }
    let session_errors = ErrorTally::default();
    for message in stats
        .iter()
        .filter_map(|s| s.open_error.as_ref().or(s.dropped.as_ref()))
    {
        session_errors.add(message.clone());
    }
    let window = published.measured_window.as_secs_f64();
    let achieved_rps = if window > 0.0 {
        published.measured_requests as f64 / window
    } else {
        0.0
    };
    let first_drop = shared.first_drop_ns.load(Ordering::Acquire);
    let last_resume = shared.last_resume_ns.load(Ordering::Acquire);
    Ok(Report {
        scenario: "notify",
        server: args.server,
        run: run.to_owned(),
        url: target.base().to_owned(),
        publish_url: publish_target.base().to_owned(),
        users: args.users,
        batch: args.batch,
        target_rate_rps: args.rate,
        duration_s: args.duration,
        warmup_s: args.warmup,
        sessions_opened: sum(|s| u64::from(s.opened)),
        session_open_errors: sum(|s| u64::from(s.open_error.is_some())),
        sessions_dropped: sum(|s| u64::from(s.opened && s.dropped.is_some())),
        requests_sent: published.requests_sent,
        requests_ok: published.counters.ok.load(Ordering::Relaxed),
        requests_errors: published.counters.errors.load(Ordering::Relaxed),
        warmup_requests: published.warmup_requests,
        achieved_rate_rps: achieved_rps,
        achieved_rate_eps: achieved_rps * f64::from(args.batch),
        events_sent: sent,
        events_accepted: accepted,
        events_delivered: sum(|s| s.delivered),
        events_lost: lost,
        lost_first,
        delivered_despite_error: despite_error,
        duplicates: sum(|s| s.duplicates),
        out_of_order: sum(|s| s.out_of_order),
        misrouted: sum(|s| s.misrouted),
        unknown_events: sum(|s| s.unknown),
        unparsable_events: sum(|s| s.unparsable),
        outcomes: published
            .counters
            .outcomes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone(),
        latency: LatencySummary::from_micros(&shared.latency_us.merged()?),
        resumes: sum(|s| s.resumes),
        resume_failures: sum(|s| s.resume_failures),
        all_resumed_s: (first_drop > 0 && last_resume > first_drop)
            .then(|| (last_resume - first_drop) as f64 / 1e9),
        away: LatencySummary::from_micros(&shared.away_us.merged()?),
        client_cpu_publish: None,
        client_cpu_total: None,
        session_errors: session_errors.sorted(),
        publish_errors: published.counters.error_messages.sorted(),
    })
}

impl Report {
    fn with_cpu(mut self, publish: CpuUsage, total: CpuUsage) -> Self {
        self.client_cpu_publish = Some(publish);
        self.client_cpu_total = Some(total);
        self
    }

    fn print(&self) {
        println!();
        println!(
            "belay-load notify  server={:?}  run={}  url={}  publish to {}",
            self.server, self.run, self.url, self.publish_url
        );
        row("users", self.users);
        row(
            "sessions",
            format!(
                "opened {}  open errors {}  dropped {}",
                self.sessions_opened, self.session_open_errors, self.sessions_dropped
            ),
        );
        row(
            "requests",
            format!(
                "sent {}  ok {}  errors {}  (warmup {}, batch {})",
                self.requests_sent,
                self.requests_ok,
                self.requests_errors,
                self.warmup_requests,
                self.batch
            ),
        );
        row(
            "publish rate",
            format!(
                "{:.1} req/s = {:.1} events/s  (target {} req/s)",
                self.achieved_rate_rps, self.achieved_rate_eps, self.target_rate_rps
            ),
        );
        row(
            "events",
            format!(
                "sent {}  accepted {}  delivered {}",
                self.events_sent, self.events_accepted, self.events_delivered
            ),
        );
        row("lost", self.events_lost);
        if !self.lost_first.is_empty() {
            let listed: Vec<String> = self
                .lost_first
                .iter()
                .map(|l| format!("{} {} ({} ms)", l.user_id, l.post_id, l.sent_ms))
                .collect();
            row("lost, the first", listed.join(", "));
        }
        row(
            "duplicates / out-of-order",
            format!("{} / {}", self.duplicates, self.out_of_order),
        );
        if self.misrouted
            + self.unknown_events
            + self.unparsable_events
            + self.delivered_despite_error
            > 0
        {
            row(
                "other anomalies",
                format!(
                    "misrouted {}  unknown {}  unparsable {}  delivered despite error {}",
                    self.misrouted,
                    self.unknown_events,
                    self.unparsable_events,
                    self.delivered_despite_error
                ),
            );
        }
        if !self.outcomes.is_empty() {
            let outcomes: Vec<String> = self
                .outcomes
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect();
            row("outcomes", outcomes.join("  "));
        }
        row("latency ms", self.latency.display());
        if self.resumes + self.resume_failures > 0 {
            row(
                "resumed streams",
                format!(
                    "{}  failed attempts {}  first end to last resume {}",
                    self.resumes,
                    self.resume_failures,
                    self.all_resumed_s
                        .map_or_else(|| "-".to_owned(), |s| format!("{s:.3} s"))
                ),
            );
            row("end to unread ms", self.away.display());
        }
        if let Some(cpu) = &self.client_cpu_publish {
            row("client CPU publish+drain", cpu.display());
        }
        if let Some(cpu) = &self.client_cpu_total {
            row("client CPU whole run", cpu.display());
        }
        for (label, errors) in [
            ("session error", &self.session_errors),
            ("publish error", &self.publish_errors),
        ] {
            for error in errors {
                row(label, format!("{}x {}", error.count, error.message));
            }
        }
    }
}
