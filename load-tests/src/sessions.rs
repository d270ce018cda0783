//! Scenarios `connections` and `fanout`: many SSE sessions held by worker processes (`fleet`),
//! against Belay or Nchan (`adapter`). `connections` opens and holds them and measures the
//! server's memory per session, before and after a burst of broadcasts; `fanout` broadcasts to
//! all of them and measures the time until every session has each event, frames per second and
//! server CPU per delivered frame.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Args, value_parser};
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use reqwest::Client;
use serde::Serialize;

use crate::adapter::{ServerKind, ServerSpec};
use crate::common::{self, ErrorCount, ErrorTally, LatencySummary, Target, row};
use crate::fleet::{self, Fleet};
use crate::output;
use crate::plot::{self, Plot, Series};
use crate::procfs::{self, Memory};
use crate::worker::{ResumeSpec, Stats, WorkerReport};

/// How often delivery progress is polled from the workers.
const POLL: Duration = Duration::from_millis(100);
/// Pause before reading memory, so frees and socket buffers settle.
const SETTLE: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Args)]
pub struct SessionArgs {
    /// Which server answers at --url.
    #[arg(long, value_enum, default_value_t = ServerKind::Belay)]
    pub server: ServerKind,
    /// Server base URL; plain http on loopback only.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// SSE sessions to open and hold.
    #[arg(long, default_value_t = 1_000, value_parser = value_parser!(u32).range(1..=200_000))]
    pub sessions: u32,
    /// Sessions per client process (at most 18,500: a process may open 20,000 files).
    #[arg(long, default_value_t = 5_000, value_parser = value_parser!(u32).range(1..=18_500))]
    pub per_worker: u32,
    /// Sessions being opened at the same time, per client process.
    #[arg(long, default_value_t = 64, value_parser = value_parser!(u32).range(1..=10_000))]
    pub open_concurrency: u32,
    /// Seconds each session may take to open (token, connect, first event).
    #[arg(long, default_value_t = 60, value_parser = value_parser!(u64).range(1..=600))]
    pub open_timeout: u64,
    /// Belay's host API key; default: env BELAY_API_KEY, else GET /v1/dev/config (dev mode).
    #[arg(long)]
    pub api_key: Option<String>,
    /// Nchan channel the sessions subscribe to.
    #[arg(long, default_value = "belay_load")]
    pub channel: String,
    /// Server process id for CPU and memory, repeatable; default: every process that listens
    /// on the --url port (for nginx: master and workers).
    #[arg(long = "server-pid")]
    pub server_pids: Vec<u32>,
    /// More nodes of the same Belay cluster, repeatable: client process *i* opens its sessions
    /// on node *i* mod the number of nodes (`--url` first); broadcasts go to `--url`. Given one
    /// `--server-pid` per node, in the same order, memory is also reported per node.
    #[arg(long = "node")]
    pub nodes: Vec<String>,
    /// Seconds to wait, after the last publish, for broadcasts to reach every session.
    #[arg(long, default_value_t = 60, value_parser = value_parser!(u64).range(1..=3_600))]
    pub drain: u64,
    /// JSON result file (the SVG plot goes beside it); default: load-tests/results/.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ConnectionsArgs {
    #[command(flatten)]
    pub common: SessionArgs,
    /// Seconds to hold the sessions open before the burst.
    #[arg(long, default_value_t = 5, value_parser = value_parser!(u64).range(0..=3_600))]
    pub hold: u64,
    /// Broadcasts sent back to back once the sessions are open; memory is read again after.
    #[arg(long, default_value_t = 20, value_parser = value_parser!(u64).range(0..=100_000))]
    pub burst: u64,
    /// Notifications stored for each user before the sessions open (Belay only): every connect
    /// then reads an `unread` summary with its newest entries, as a returning user's does.
    #[arg(long, default_value_t = 0, value_parser = value_parser!(u32).range(0..=100))]
    pub unread: u32,
}

#[derive(Debug, Args)]
pub struct FanoutArgs {
    #[command(flatten)]
    pub common: SessionArgs,
    /// Broadcasts to send.
    #[arg(long, default_value_t = 100, value_parser = value_parser!(u64).range(1..=100_000))]
    pub broadcasts: u64,
    /// Broadcasts per second; 0 sends them back to back (each as soon as the last was answered).
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
}

/// Sessions open, and what it took.
pub(crate) struct Opened {
    pub spec: ServerSpec,
    pub api: Client,
    pub server_pids: Vec<u32>,
    pub fleet: Fleet,
    pub workers: usize,
    pub memory_idle: Memory,
    pub stats: Stats,
    pub open_wall_s: f64,
    pub server_cpu_open_s: f64,
    pub client_cpu_open_s: f64,
    /// The run's tag: its users are `lt-<run>-<n>`.
    pub run: String,
    /// With `--node`: the node (index into `--url`, `--node`…) of each client process, and
    /// when one pid per node was given, those pids and each one's idle memory.
    pub node_urls: Vec<String>,
    pub node_of_worker: Vec<usize>,
    pub node_pids: Vec<u32>,
    pub node_idle: Vec<Memory>,
}

/// One node's memory with its share of the sessions.
#[derive(Debug, Clone, Serialize)]
pub struct NodeMemory {
    pub url: String,
    pub pid: u32,
    pub sessions: u64,
    pub idle: Memory,
    pub now: MemoryPerSession,
}

/// Each node's memory now, per session it holds beyond its idle figure (empty without one
/// `--server-pid` per node).
pub(crate) async fn node_memory(opened: &mut Opened) -> Result<Vec<NodeMemory>> {
    if opened.node_pids.is_empty() {
        return Ok(Vec::new());
    }
    let reports = opened.fleet.reports().await?;
    let mut sessions = vec![0u64; opened.node_pids.len()];
    for (worker, report) in reports.iter().enumerate() {
        if let Some(&node) = opened.node_of_worker.get(worker) {
            sessions[node] += report.stats.opened - report.stats.dropped;
        }
    }
    Ok(opened
        .node_pids
        .iter()
        .enumerate()
        .map(|(node, &pid)| NodeMemory {
            url: opened.node_urls[node].clone(),
            pid,
            sessions: sessions[node],
            idle: opened.node_idle[node],
            now: MemoryPerSession::new(
                procfs::memory(&[pid]),
                opened.node_idle[node],
                sessions[node],
            ),
        })
        .collect())
}

fn print_node_memory(label: &str, nodes: &[NodeMemory]) {
    for node in nodes {
        row(
            &format!("{label} {}", node.url),
            format!("{} sessions  {}", node.sessions, node.now.display()),
        );
    }
}

/// Stores `unread` notifications per user (Belay), then opens `args.sessions` sessions over
/// as many client processes as `per_worker` needs.
pub(crate) async fn open_all(
    args: &SessionArgs,
    seqs: u64,
    unread: u32,
    resume: Option<ResumeSpec>,
) -> Result<Opened> {
    let target = Target::loopback(&args.url)?;
    let api = common::api_client(Duration::from_secs(30), 16)?;
    let spec = ServerSpec::resolve(
        args.server,
        &target,
        &api,
        args.api_key.as_deref(),
        &args.channel,
    )
    .await?;
    let run = common::run_tag();
    if unread > 0 {
        if spec.kind != ServerKind::Belay {
            bail!("--unread needs a Belay server: Nchan stores no notifications per user");
        }
        store_likes(&api, &spec, &run, args.sessions, unread, "unread").await?;
    }
    let server_pids = fleet::server_pids(&args.server_pids, spec.dest.port())?;
    let memory_idle = procfs::memory(&server_pids);
    let mut node_urls = vec![spec.base.clone()];
    node_urls.extend(args.nodes.iter().cloned());
    let node_pids = if !args.nodes.is_empty() && args.server_pids.len() == node_urls.len() {
        args.server_pids.clone()
    } else {
        Vec::new()
    };
    let node_idle: Vec<Memory> = node_pids.iter().map(|&p| procfs::memory(&[p])).collect();
    let shared = fleet::Shared {
        server: spec.clone(),
        run: run.clone(),
        open_concurrency: args.open_concurrency,
        open_timeout_s: args.open_timeout,
        seqs,
        climb: None,
        resume,
    };
    let mut specs = fleet::specs(&shared, args.sessions, args.per_worker)?;
    let mut node_of_worker = vec![0; specs.len()];
    if !args.nodes.is_empty() {
        if spec.kind != ServerKind::Belay {
            bail!("--node needs Belay nodes");
        }
        let mut servers = vec![spec.clone()];
        for url in &args.nodes {
            let node = Target::loopback(url)?;
            let key = Some(spec.api_key.as_str());
            servers.push(ServerSpec::resolve(spec.kind, &node, &api, key, &args.channel).await?);
        }
        for worker in &mut specs {
            node_of_worker[worker.index] = worker.index % servers.len();
            worker.server = servers[worker.index % servers.len()].clone();
        }
    }
    eprintln!(
        "run {run}: {} sessions to {:?} at {} over {} client processes; server pids {:?}",
        args.sessions,
        args.server,
        spec.base,
        specs.len(),
        server_pids
    );
    let server_cpu = procfs::cpu_seconds_sum(&server_pids);
    let self_cpu = common::process_cpu_seconds().unwrap_or(0.0);
    let started = Instant::now();
    let mut fleet = Fleet::spawn(&specs)?;
    let bar = output::bar(u64::from(args.sessions), "opening");
    let stats = fleet.wait_open(&bar).await?;
    bar.finish();
    let open_wall_s = started.elapsed().as_secs_f64();
    let client_cpu_open_s =
        fleet.cpu_seconds() + common::process_cpu_seconds().unwrap_or(0.0) - self_cpu;
    let server_cpu_open_s = procfs::cpu_seconds_sum(&server_pids) - server_cpu;
    if stats.opened == 0 {
        let reports = fleet.reports().await.unwrap_or_default();
        fleet.stop().await;
        let first = reports.iter().flat_map(|r| r.errors.iter()).next();
        bail!(
            "no session opened (first error: {})",
            first.map_or("unknown", |e| e.message.as_str())
        );
    }
    Ok(Opened {
        spec,
        api,
        server_pids,
        workers: specs.len(),
        fleet,
        memory_idle,
        stats,
        open_wall_s,
        server_cpu_open_s,
        client_cpu_open_s,
        run,
        node_urls,
        node_of_worker,
        node_pids,
        node_idle,
    })
}

/// Stores `per_user` likes, of distinct posts `<label>-<k>` so none collapses, for each of the
/// run's `users`, in requests of up to 100 events, 16 in flight.
pub(crate) async fn store_likes(
    api: &Client,
    spec: &ServerSpec,
    run: &str,
    users: u32,
    per_user: u32,
    label: &'static str,
) -> Result<()> {
    const PER_REQUEST: usize = 100;
    let url = format!("{}/v1/notify", spec.base.trim_end_matches('/'));
    let events: Vec<serde_json::Value> = (0..u64::from(users))
        .flat_map(|n| {
            let user = crate::worker::run_user(run, n);
            (0..per_user).map(move |k| {
                serde_json::json!({
                    "user_id": user,
                    "kind": "post_liked",
                    "data": { "post_id": format!("{label}-{k}"), "by": "loadgen" },
                })
            })
        })
        .collect();
    let bar = output::bar(events.len() as u64, &format!("storing {label}"));
    let sends = events.chunks(PER_REQUEST).map(|chunk| {
        let request = api
            .post(&url)
            .header("X-Api-Key", &spec.api_key)
            .json(&serde_json::json!({ "events": chunk }));
        let (bar, count) = (bar.clone(), chunk.len() as u64);
        async move {
            let response = request
                .send()
                .await
                .with_context(|| format!("storing {label} notifications"))?;
            if !response.status().is_success() {
                bail!(
                    "storing {label} notifications: {}",
                    common::describe_error(response).await
                );
            }
            bar.inc(count);
            Ok(())
        }
    });
    let mut sends = futures_util::stream::iter(sends).buffer_unordered(16);
    while let Some(sent) = sends.next().await {
        sent?;
    }
    bar.finish();
    Ok(())
}

/// A batch of broadcasts and how they were delivered.
#[derive(Debug, Clone, Serialize)]
pub struct BroadcastRun {
    pub broadcasts: u64,
    /// Target broadcasts per second; 0 = back to back.
    pub rate: f64,
    pub published_ok: u64,
    pub publish_errors: Vec<ErrorCount>,
    /// Sessions open when the batch started.
    pub sessions: u64,
    /// `published_ok × sessions`.
    pub frames_expected: u64,
    pub frames_delivered: u64,
    /// Broadcasts received by every session open at the start.
    pub complete_events: u64,
    /// Per broadcast: time until the last session had it.
    pub all_received: LatencySummary,
    /// Per delivery: publish-to-receive time.
    pub delivery: LatencySummary,
    /// First publish to last receipt.
    pub delivery_window_s: f64,
    pub frames_per_sec: f64,
    pub server_cpu_s: f64,
    pub client_cpu_s: f64,
    /// Server CPU seconds / (broadcasts published × sessions), in µs.
    pub server_cpu_per_frame_us: f64,
    pub client_cpu_per_frame_us: f64,
    /// Wall time of the phase (first publish until delivered or the drain ran out).
    pub wall_s: f64,
    /// Sessions that ended during the batch.
    pub dropped: u64,
    #[serde(skip)]
    per_event_us: Vec<(u64, u64)>,
    #[serde(skip)]
    all_received_hist: Option<Histogram<u64>>,
    #[serde(skip)]
    delivery_hist: Option<Histogram<u64>>,
}

async fn broadcast(
    opened: &mut Opened,
    count: u64,
    rate: f64,
    drain: Duration,
    label: &str,
) -> Result<BroadcastRun> {
    let before = opened.fleet.stats().await?;
    let sessions = before.opened - before.dropped;
    let server_cpu = procfs::cpu_seconds_sum(&opened.server_pids);
    let client_cpu = opened.fleet.cpu_seconds() + common::process_cpu_seconds().unwrap_or(0.0);
    let started = Instant::now();
    let bar = output::bar(count * sessions, label);

    let (spec, api) = (opened.spec.clone(), opened.api.clone());
    let publisher = tokio::spawn(async move {
        let errors = ErrorTally::default();
        let mut sent_us = vec![0u64; usize::try_from(count).unwrap_or(0)];
        let start = tokio::time::Instant::now();
        for seq in 0..count {
            if rate > 0.0 {
                tokio::time::sleep_until(start + Duration::from_secs_f64(seq as f64 / rate)).await;
            }
            match spec.publish(&api, seq).await {
                Ok(us) => sent_us[seq as usize] = us,
                Err(err) => errors.add(format!("{err:#}")),
            }
        }
        (sent_us, errors.sorted())
    });
    let mut publisher = Some(publisher);
    let mut published: Option<(Vec<u64>, Vec<ErrorCount>, Instant)> = None;
    let mut stats;
    loop {
        tokio::time::sleep(POLL).await;
        stats = opened.fleet.stats().await?;
        let delivered = stats.marked - before.marked;
        bar.set_position(delivered);
        bar.set_message(format!("dropped {}", stats.dropped - before.dropped));
        if publisher.as_ref().is_some_and(|p| p.is_finished())
            && let Some(handle) = publisher.take()
        {
            let (sent, errors) = handle.await.context("publisher task")?;
            published = Some((sent, errors, Instant::now()));
        }
        if let Some((sent, _, done)) = &published {
            let ok = sent.iter().filter(|&&s| s > 0).count() as u64;
            let live = stats.opened - stats.dropped;
            if delivered >= ok * live || done.elapsed() > drain {
                break;
            }
        }
    }
    bar.finish();
    let wall_s = started.elapsed().as_secs_f64();
    let server_cpu_s = procfs::cpu_seconds_sum(&opened.server_pids) - server_cpu;
    let client_cpu_s =
        opened.fleet.cpu_seconds() + common::process_cpu_seconds().unwrap_or(0.0) - client_cpu;
    let (sent_us, publish_errors, _) = published.context("publisher did not finish")?;
    let reports = opened.fleet.reports().await?;
    analyse(
        sent_us,
        publish_errors,
        &reports,
        sessions,
        rate,
        stats.marked - before.marked,
        stats.dropped - before.dropped,
        (server_cpu_s, client_cpu_s, wall_s),
    )
}

#[expect(
    clippy::too_many_arguments,
    reason = "one call site; the inputs are all different"
)]
fn analyse(
    sent_us: Vec<u64>,
    publish_errors: Vec<ErrorCount>,
    reports: &[WorkerReport],
    sessions: u64,
    rate: f64,
    frames_delivered: u64,
    dropped: u64,
    (server_cpu_s, client_cpu_s, wall_s): (f64, f64, f64),
) -> Result<BroadcastRun> {
    let new_hist = || Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3);
    let mut all_received = new_hist()?;
    let mut delivery = new_hist()?;
    for report in reports {
        for &(value, count) in &report.delivery_us {
            delivery.saturating_record_n(value.max(1), count);
        }
    }
    let published_ok = sent_us.iter().filter(|&&s| s > 0).count() as u64;
    let mut complete_events = 0;
    let mut per_event_us = Vec::new();
    for (seq, &sent) in sent_us.iter().enumerate() {
        if sent == 0 {
            continue;
        }
        let receipts: u64 = reports
            .iter()
            .filter_map(|r| r.per_seq.get(seq))
            .map(|c| u64::from(c.0))
            .sum();
        let slowest = reports
            .iter()
            .filter_map(|r| r.per_seq.get(seq))
            .map(|c| c.1)
            .max()
            .unwrap_or(0);
        if receipts >= sessions {
            complete_events += 1;
            all_received.saturating_record(slowest.max(1));
            per_event_us.push((sent, slowest));
        }
    }
    let first_sent = sent_us
        .iter()
        .copied()
        .filter(|&s| s > 0)
        .min()
        .unwrap_or(0);
    let last_recv = reports.iter().map(|r| r.last_recv_us).max().unwrap_or(0);
    let delivery_window_s = last_recv.saturating_sub(first_sent) as f64 / 1e6;
    let frames_expected = published_ok * sessions;
    let per_frame = |cpu: f64| {
        if frames_expected > 0 {
            cpu * 1e6 / frames_expected as f64
        } else {
            0.0
        }
    };
    Ok(BroadcastRun {
        broadcasts: sent_us.len() as u64,
        rate,
        published_ok,
        publish_errors,
        sessions,
        frames_expected,
        frames_delivered,
        complete_events,
        all_received: LatencySummary::from_micros(&all_received),
        delivery: LatencySummary::from_micros(&delivery),
        delivery_window_s,
        frames_per_sec: if delivery_window_s > 0.0 {
            frames_delivered as f64 / delivery_window_s
        } else {
            0.0
        },
        server_cpu_s,
        client_cpu_s,
        server_cpu_per_frame_us: per_frame(server_cpu_s),
        client_cpu_per_frame_us: per_frame(client_cpu_s),
        wall_s,
        dropped,
        per_event_us,
        all_received_hist: Some(all_received),
        delivery_hist: Some(delivery),
    })
}

impl BroadcastRun {
    fn print(&self, indent: &str) {
        row(
            &format!("{indent}published"),
            format!(
                "{} of {}  ({})",
                self.published_ok,
                self.broadcasts,
                if self.rate > 0.0 {
                    format!("{} /s", self.rate)
                } else {
                    "back to back".to_owned()
                }
            ),
        );
        row(
            &format!("{indent}frames"),
            format!(
                "delivered {} of {}  complete events {}  dropped sessions {}",
                self.frames_delivered, self.frames_expected, self.complete_events, self.dropped
            ),
        );
        row(
            &format!("{indent}all received ms"),
            self.all_received.display(),
        );
        row(
            &format!("{indent}each delivery ms"),
            self.delivery.display(),
        );
        row(
            &format!("{indent}frames/s"),
            format!(
                "{:.0}  over {:.2} s",
                self.frames_per_sec, self.delivery_window_s
            ),
        );
        row(
            &format!("{indent}CPU server / client"),
            format!(
                "{:.2} s / {:.2} s over {:.1} s = {:.2} µs / {:.2} µs per frame",
                self.server_cpu_s,
                self.client_cpu_s,
                self.wall_s,
                self.server_cpu_per_frame_us,
                self.client_cpu_per_frame_us
            ),
        );
        for e in &self.publish_errors {
            row(
                &format!("{indent}publish error"),
                format!("{}x {}", e.count, e.message),
            );
        }
    }

    /// All-received time of each complete event, by publish time (s since the first publish).
    fn over_time(&self) -> Vec<(f64, f64)> {
        let first = self.per_event_us.first().map_or(0, |p| p.0);
        self.per_event_us
            .iter()
            .map(|&(sent, us)| (sent.saturating_sub(first) as f64 / 1e6, us as f64 / 1e3))
            .collect()
    }
}

fn kib_per_session(after: u64, idle: u64, sessions: u64) -> f64 {
    if sessions == 0 {
        return 0.0;
    }
    (after as f64 - idle as f64) / sessions as f64
}

/// Points of a plot: (seconds, ms).
type Samples = Vec<(f64, f64)>;

fn connect_latency(reports: &[WorkerReport]) -> Result<(Histogram<u64>, Samples)> {
    let mut hist = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3)?;
    let first = reports
        .iter()
        .flat_map(|r| r.connects.iter().map(|c| c.0))
        .min()
        .unwrap_or(0);
    let mut samples = Vec::new();
    for report in reports {
        for &(start, us) in &report.connects {
            hist.saturating_record(us.max(1));
            samples.push(((start - first) as f64 / 1e6, us as f64 / 1e3));
        }
    }
    samples.sort_by(|a, b| a.0.total_cmp(&b.0));
    Ok((hist, samples))
}

/// Server memory with sessions, per session beyond the idle figure.
#[derive(Debug, Clone, Serialize)]
pub struct MemoryPerSession {
    pub memory: Memory,
    pub rss_kib_per_session: f64,
    pub pss_kib_per_session: f64,
}

impl MemoryPerSession {
    pub(crate) fn new(memory: Memory, idle: Memory, sessions: u64) -> Self {
        Self {
            memory,
            rss_kib_per_session: kib_per_session(memory.rss_kib, idle.rss_kib, sessions),
            pss_kib_per_session: kib_per_session(memory.pss_kib, idle.pss_kib, sessions),
        }
    }

    pub(crate) fn display(&self) -> String {
        format!(
            "RSS {:.1} MiB = {:.2} KiB/session  (PSS {:.1} MiB = {:.2} KiB/session)",
            self.memory.rss_kib as f64 / 1024.0,
            self.rss_kib_per_session,
            self.memory.pss_kib as f64 / 1024.0,
            self.pss_kib_per_session
        )
    }
}

#[derive(Debug, Serialize)]
struct ConnectionsReport {
    scenario: &'static str,
    server: ServerKind,
    url: String,
    server_pids: Vec<u32>,
    client_processes: usize,
    sessions_requested: u32,
    /// Notifications stored for each user before the sessions opened.
    unread_per_user: u32,
    sessions_opened: u64,
    open_errors: u64,
    /// Sessions that ended before the run did.
    sessions_dropped: u64,
    open_wall_s: f64,
    connect_rate_per_s: f64,
    connect_latency: LatencySummary,
    server_cpu_open_s: f64,
    client_cpu_open_s: f64,
    server_memory_idle: Memory,
    server_memory_connected: MemoryPerSession,
    server_memory_after_burst: Option<MemoryPerSession>,
    /// With `--node` and a pid per node: each node connected, and after the burst.
    nodes_connected: Vec<NodeMemory>,
    nodes_after_burst: Vec<NodeMemory>,
    hold_s: u64,
    burst: Option<BroadcastRun>,
    errors: Vec<ErrorCount>,
}

pub async fn connections(args: ConnectionsArgs) -> Result<()> {
    let common = &args.common;
    let mut opened = open_all(common, args.burst, args.unread, None).await?;
    tokio::time::sleep(SETTLE).await;
    let sessions = opened.stats.opened;
    let connected = MemoryPerSession::new(
        procfs::memory(&opened.server_pids),
        opened.memory_idle,
        sessions,
    );
    let nodes_connected = node_memory(&mut opened).await?;
    if args.hold > 0 {
        let bar = output::bar(args.hold, "holding s");
        for _ in 0..args.hold {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let stats = opened.fleet.stats().await?;
            bar.inc(1);
            bar.set_message(format!("dropped {}", stats.dropped));
        }
        bar.finish();
    }
    let burst = if args.burst > 0 {
        let run = broadcast(
            &mut opened,
            args.burst,
            0.0,
            Duration::from_secs(common.drain),
            "burst",
        )
        .await?;
        tokio::time::sleep(SETTLE).await;
        Some(run)
    } else {
        None
    };
    let after_burst = burst.as_ref().map(|_| {
        MemoryPerSession::new(
            procfs::memory(&opened.server_pids),
            opened.memory_idle,
            sessions,
        )
    });
    let nodes_after_burst = if burst.is_some() {
        node_memory(&mut opened).await?
    } else {
        Vec::new()
    };
    let reports = opened.fleet.reports().await?;
    let stats = opened.fleet.stats().await?;
    let (connect_hist, connect_samples) = connect_latency(&reports)?;
    let report = ConnectionsReport {
        scenario: "connections",
        server: common.server,
        url: opened.spec.base.clone(),
        server_pids: opened.server_pids.clone(),
        client_processes: opened.workers,
        sessions_requested: common.sessions,
        unread_per_user: args.unread,
        sessions_opened: sessions,
        open_errors: opened.stats.failed,
        sessions_dropped: stats.dropped,
        open_wall_s: opened.open_wall_s,
        connect_rate_per_s: sessions as f64 / opened.open_wall_s.max(1e-9),
        connect_latency: LatencySummary::from_micros(&connect_hist),
        server_cpu_open_s: opened.server_cpu_open_s,
        client_cpu_open_s: opened.client_cpu_open_s,
        server_memory_idle: opened.memory_idle,
        server_memory_connected: connected,
        server_memory_after_burst: after_burst,
        nodes_connected,
        nodes_after_burst,
        hold_s: args.hold,
        burst,
        errors: fleet::errors(&reports),
    };
    opened.fleet.stop().await;

    println!();
    println!(
        "belay-load connections  server={:?}  url={}  client processes={}",
        report.server, report.url, report.client_processes
    );
    row(
        "sessions",
        format!(
            "opened {} of {}  open errors {}  dropped {}  (unread per user {})",
            report.sessions_opened,
            report.sessions_requested,
            report.open_errors,
            report.sessions_dropped,
            report.unread_per_user
        ),
    );
    row(
        "connect rate",
        format!(
            "{:.0} sessions/s  ({:.2} s)",
            report.connect_rate_per_s, report.open_wall_s
        ),
    );
    row("connect latency ms", report.connect_latency.display());
    row(
        "CPU while opening",
        format!(
            "server {:.2} s  client {:.2} s",
            report.server_cpu_open_s, report.client_cpu_open_s
        ),
    );
    row(
        "server memory idle",
        format!(
            "RSS {:.1} MiB  PSS {:.1} MiB",
            report.server_memory_idle.rss_kib as f64 / 1024.0,
            report.server_memory_idle.pss_kib as f64 / 1024.0
        ),
    );
    row("memory connected", report.server_memory_connected.display());
    if let Some(after) = &report.server_memory_after_burst {
        row("memory after burst", after.display());
    }
    print_node_memory("connected", &report.nodes_connected);
    print_node_memory("after burst", &report.nodes_after_burst);
    if let Some(burst) = &report.burst {
        burst.print("burst: ");
    }
    common::error_rows(&report.errors);

    let title = format!(
        "connections: {} sessions to {:?}",
        report.sessions_opened, report.server
    );
    let plot = Plot::latency(
        &title,
        "seconds since the first connect",
        plot::binned("connect", &connect_samples, 100),
        vec![plot::spectrum("connect", &connect_hist)],
    );
    let name = format!("connections-{}", server_name(common.server));
    output::write(common.out.as_deref(), &name, &report, &plot)
}

#[derive(Debug, Serialize)]
struct FanoutReport {
    scenario: &'static str,
    server: ServerKind,
    url: String,
    server_pids: Vec<u32>,
    client_processes: usize,
    sessions_requested: u32,
    sessions_opened: u64,
    open_errors: u64,
    open_wall_s: f64,
    /// "back-to-back" or "paced".
    mode: &'static str,
    fanout: BroadcastRun,
    server_memory_idle: Memory,
    server_memory_after: MemoryPerSession,
    /// With `--node` and a pid per node: each node connected, and after the broadcasts.
    nodes_connected: Vec<NodeMemory>,
    nodes_after: Vec<NodeMemory>,
    errors: Vec<ErrorCount>,
}

pub async fn fanout(args: FanoutArgs) -> Result<()> {
    let common = &args.common;
    if !(args.rate >= 0.0 && args.rate.is_finite()) {
        bail!("--rate must be 0 (back to back) or a positive number");
    }
    let mut opened = open_all(common, args.broadcasts, 0, None).await?;
    let nodes_connected = if opened.node_pids.is_empty() {
        Vec::new()
    } else {
        tokio::time::sleep(SETTLE).await;
        node_memory(&mut opened).await?
    };
    let run = broadcast(
        &mut opened,
        args.broadcasts,
        args.rate,
        Duration::from_secs(common.drain),
        "fanout",
    )
    .await?;
    let after = MemoryPerSession::new(
        procfs::memory(&opened.server_pids),
        opened.memory_idle,
        opened.stats.opened,
    );
    let nodes_after = node_memory(&mut opened).await?;
    let reports = opened.fleet.reports().await?;
    let report = FanoutReport {
        scenario: "fanout",
        server: common.server,
        url: opened.spec.base.clone(),
        server_pids: opened.server_pids.clone(),
        client_processes: opened.workers,
        sessions_requested: common.sessions,
        sessions_opened: opened.stats.opened,
        open_errors: opened.stats.failed,
        open_wall_s: opened.open_wall_s,
        mode: if args.rate > 0.0 {
            "paced"
        } else {
            "back-to-back"
        },
        fanout: run,
        server_memory_idle: opened.memory_idle,
        server_memory_after: after,
        nodes_connected,
        nodes_after,
        errors: fleet::errors(&reports),
    };
    opened.fleet.stop().await;

    println!();
    println!(
        "belay-load fanout  server={:?}  url={}  client processes={}  {}",
        report.server, report.url, report.client_processes, report.mode
    );
    row(
        "sessions",
        format!(
            "opened {} of {}  open errors {}  ({:.2} s to open)",
            report.sessions_opened,
            report.sessions_requested,
            report.open_errors,
            report.open_wall_s
        ),
    );
    report.fanout.print("");
    row("server memory after", report.server_memory_after.display());
    print_node_memory("connected", &report.nodes_connected);
    print_node_memory("after", &report.nodes_after);
    common::error_rows(&report.errors);

    let mut distribution = Vec::new();
    if let Some(hist) = &report.fanout.all_received_hist {
        distribution.push(plot::spectrum("all received (per event)", hist));
    }
    if let Some(hist) = &report.fanout.delivery_hist {
        distribution.push(plot::spectrum("each delivery", hist));
    }
    let title = format!(
        "fanout: {} broadcasts ({}) to {} sessions of {:?}",
        report.fanout.broadcasts, report.mode, report.sessions_opened, report.server
    );
    let plot = Plot::latency(
        &title,
        "seconds since the first publish",
        vec![Series::dots(
            "all received (per event)",
            report.fanout.over_time(),
        )],
        distribution,
    );
    let name = format!("fanout-{}-{}", server_name(common.server), report.mode);
    output::write(common.out.as_deref(), &name, &report, &plot)
}

fn server_name(kind: ServerKind) -> &'static str {
    match kind {
        ServerKind::Belay => "belay",
        ServerKind::Nchan => "nchan",
    }
}
