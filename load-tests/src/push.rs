//! `push` scenario: many offline climbers, each with one FCM device, get a wave of
//! notifications; the fake FCM (`belay-load fake-fcm`) records when each push arrives. Beside
//! the wave, a few hundred online users receive live notifies over SSE, to see what the wave
//! does to them (and the same without the wave, `--no-wave`, for the baseline).
//!
//! Every time is Unix µs (`CLOCK_REALTIME`), shared with the fake FCM process.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, value_parser};
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use reqwest::Client;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::{Semaphore, watch};
use tokio::time::{Instant, MissedTickBehavior};

use crate::common::{self, LatencySummary, Target, row};
use crate::fakefcm::now_us;
use crate::plot::{self, Panel, Plot, Series, XAxis};
use crate::{output, procfs};

#[derive(Debug, Args)]
pub struct PushArgs {
    /// Belay's base URL (loopback only).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// The fake FCM's base URL (`belay-load fake-fcm`), for its `/stats`.
    #[arg(long)]
    pub fake: String,
    /// Offline climbers, each registering one FCM device, each getting one event in the wave.
    #[arg(long, default_value_t = 10_000, value_parser = value_parser!(u32).range(1..=200_000))]
    pub climbers: u32,
    /// Online users with an SSE session, receiving live notifies during the run.
    #[arg(long, default_value_t = 500, value_parser = value_parser!(u32).range(0..=10_000))]
    pub online: u32,
    /// Events per wave request (`POST /v1/notify` batch; the server's limit is 100).
    #[arg(long, default_value_t = 100, value_parser = value_parser!(u32).range(1..=1000))]
    pub batch: u32,
    /// Wave requests in flight at once.
    #[arg(long, default_value_t = 4, value_parser = value_parser!(u32).range(1..=256))]
    pub wave_concurrency: u32,
    /// Live notifies per second to the online users (one event each).
    #[arg(long, default_value_t = 100, value_parser = value_parser!(u32).range(0..=10_000))]
    pub live_rate: u32,
    /// Seconds of live notifies.
    #[arg(long, default_value_t = 20, value_parser = value_parser!(u64).range(1..=170))]
    pub live_seconds: u64,
    /// Seconds into the live notifies when the wave starts.
    #[arg(long, default_value_t = 3, value_parser = value_parser!(u64).range(0..=60))]
    pub wave_at: u64,
    /// Register the devices but send no wave: the baseline for live latency.
    #[arg(long)]
    pub no_wave: bool,
    /// Seconds to wait, after the wave, for every push to reach the fake.
    #[arg(long, default_value_t = 90, value_parser = value_parser!(u64).range(1..=170))]
    pub drain: u64,
    /// Requests in flight while registering devices.
    #[arg(long, default_value_t = 32, value_parser = value_parser!(u32).range(1..=1024))]
    pub register_concurrency: u32,
    /// API key; default: env BELAY_API_KEY, else GET /v1/dev/config (dev mode).
    #[arg(long)]
    pub api_key: Option<String>,
    /// Server process for memory; default: the listeners of the --url port.
    #[arg(long)]
    pub server_pid: Vec<u32>,
    /// JSON result file (the SVG plot goes beside it); default: load-tests/results/.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

/// One send as the fake FCM recorded it (`GET /stats`).
#[derive(Deserialize)]
struct FakeSend {
    at_us: u64,
    notification_id: String,
    status: u16,
}

#[derive(Deserialize)]
struct FakeStats {
    token_requests: u64,
    by_status: BTreeMap<String, u64>,
    sends: Vec<FakeSend>,
}

#[derive(Deserialize)]
struct NotifyAnswer {
    results: Vec<NotifyItem>,
}

#[derive(Deserialize)]
struct NotifyItem {
    id: String,
}

#[derive(Debug, Serialize)]
struct Report {
    scenario: &'static str,
    run: String,
    url: String,
    climbers: u32,
    online: u32,
    wave: bool,
    devices_registered: u64,
    register_s: f64,
    register_errors: u64,
    wave_events: u64,
    wave_errors: u64,
    /// From the first wave request sent to the last answered.
    wave_store_s: f64,
    /// Wave notifications that reached the fake at least once / with a final answer (200, 404).
    pushed: u64,
    pushed_final: u64,
    fake_requests: u64,
    fake_by_status: BTreeMap<String, u64>,
    fake_token_requests: u64,
    /// First attempts per second: pushed / (last first attempt − first wave request).
    pushes_per_s: f64,
    /// Every send request per second over the span the fake saw them.
    fake_requests_per_s: f64,
    /// Notify answered → first FCM request of that notification.
    event_to_fcm: LatencySummary,
    /// Notify answered → final FCM answer (200/404), retries included.
    event_to_final: LatencySummary,
    live_sent: u64,
    live_received: u64,
    live_errors: u64,
    /// Live notify sent → SSE frame received, every live event.
    live_all: LatencySummary,
    /// Live events sent while the wave was being pushed (wave start → last push), or, without
    /// a wave, from `--wave-at` on.
    live_during: LatencySummary,
    server_rss_before_kib: u64,
    server_rss_after_kib: u64,
    server_cpu_s: f64,
    wall_s: f64,
}

fn histogram() -> Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).context("creating a histogram")
}

fn summary(samples: impl Iterator<Item = u64>) -> Result<LatencySummary> {
    let mut h = histogram()?;
    for us in samples {
        h.saturating_record(us.max(1));
    }
    Ok(LatencySummary::from_micros(&h))
}

/// A device token shaped like FCM's (about 160 characters).
fn device_token(run: &str, i: u32) -> String {
    format!("{run}:c{i}:APA91b{}", "x".repeat(140))
}

pub async fn run(args: PushArgs) -> Result<()> {
    let target = Target::loopback(&args.url)?;
    let fake = Target::loopback(&args.fake)?;
    let run = common::run_tag();
    let api = common::api_client(Duration::from_secs(30), 256)?;
    let api_key = common::resolve_api_key(&api, &target, args.api_key.as_deref()).await?;
    let pids = if args.server_pid.is_empty() {
        let port = reqwest::Url::parse(target.base())?
            .port_or_known_default()
            .context("--url has no port")?;
        procfs::listeners(port)?
    } else {
        args.server_pid.clone()
    };
    if pids.is_empty() {
        bail!("no server process found listening on {}", target.base());
    }
    common::warn_if_fd_limit_below(u64::from(args.online) + 512);
    let started = Instant::now();

    // Phase 1: every climber registers one FCM device, through the API.
    eprintln!("run {run}: registering {} devices", args.climbers);
    let register_start = Instant::now();
    let (registered, register_errors) = register(&api, &target, &api_key, &run, &args).await;
    let register_s = register_start.elapsed().as_secs_f64();
    eprintln!("run {run}: {registered} devices in {register_s:.1} s, {register_errors} errors");

    // Phase 2: the online users open their streams.
    let (stop_tx, stop_rx) = watch::channel(false);
    let live = Arc::new(Live::default());
    let mut sessions = Vec::new();
    let sse = common::sse_client()?;
    let opens = Arc::new(Semaphore::new(32));
    for i in 0..args.online {
        let user = format!("lt-{run}-o{i}");
        let (api, sse, target, key, live, opens, stop) = (
            api.clone(),
            sse.clone(),
            target.clone(),
            api_key.clone(),
            live.clone(),
            opens.clone(),
            stop_rx.clone(),
        );
        sessions.push(tokio::spawn(async move {
            let stream = async {
                let _permit = opens.acquire().await?;
                let token = common::dev_token(&api, &target, &key, &user).await?;
                common::open_session(&sse, &target, &token).await
            };
            match tokio::time::timeout(Duration::from_secs(30), stream).await {
                Ok(Ok(stream)) => {
                    live.opened.fetch_add(1, Ordering::Relaxed);
                    receive(stream, &live, stop).await;
                }
                _ => {
                    live.open_errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    while live.opened.load(Ordering::Relaxed) + live.open_errors.load(Ordering::Relaxed)
        < u64::from(args.online)
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "run {run}: {} sessions open, {} failed",
        live.opened.load(Ordering::Relaxed),
        live.open_errors.load(Ordering::Relaxed)
    );
    // Let the registration's writes and the opens settle before measuring.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_before = procfs::memory(&pids).rss_kib;
    let cpu_before = procfs::cpu_seconds_sum(&pids);

    // Phase 3: live notifies, and the wave among them.
    let live_users: Vec<String> = (0..args.online).map(|i| format!("lt-{run}-o{i}")).collect();
    let live_start_us = now_us();
    let publisher = tokio::spawn(publish_live(
        api.clone(),
        target.clone(),
        api_key.clone(),
        live_users,
        args.live_rate,
        Duration::from_secs(args.live_seconds),
        live.clone(),
    ));
    tokio::time::sleep(Duration::from_secs(args.wave_at)).await;
    let wave_start_us = now_us();
    let wave = if args.no_wave {
        Wave::default()
    } else {
        eprintln!("run {run}: wave of {} events", args.climbers);
        send_wave(&api, &target, &api_key, &run, &args).await
    };
    let wave_end_us = now_us();
    let expected = wave.answered_us.len();

    // Phase 4: wait until every wave event reached the fake with a final answer.
    let deadline = Instant::now() + Duration::from_secs(args.drain);
    let mut stats = fake_stats(&api, &fake).await?;
    while expected > 0 && Instant::now() < deadline {
        let finals = final_ids(&stats, &wave.answered_us);
        if finals >= expected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        stats = fake_stats(&api, &fake).await?;
    }
    let last_push_us = stats
        .sends
        .iter()
        .filter(|s| wave.answered_us.contains_key(&s.notification_id))
        .map(|s| s.at_us)
        .max()
        .unwrap_or(wave_end_us);
    publisher.await.context("live publisher")?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let cpu_after = procfs::cpu_seconds_sum(&pids);
    let rss_after = procfs::memory(&pids).rss_kib;
    let _ = stop_tx.send(true);
    for session in sessions {
        let _ = tokio::time::timeout(Duration::from_secs(5), session).await;
    }

    // Tally.
    let mut first: HashMap<&str, u64> = HashMap::new();
    let mut last_final: HashMap<&str, u64> = HashMap::new();
    for send in &stats.sends {
        if !wave.answered_us.contains_key(&send.notification_id) {
            continue;
        }
        let id = send.notification_id.as_str();
        first
            .entry(id)
            .and_modify(|t| *t = (*t).min(send.at_us))
            .or_insert(send.at_us);
        if matches!(send.status, 200 | 404) {
            last_final
                .entry(id)
                .and_modify(|t| *t = (*t).max(send.at_us))
                .or_insert(send.at_us);
        }
    }
    let delay = |map: &HashMap<&str, u64>| {
        map.iter()
            .filter_map(|(id, at)| Some(at.saturating_sub(*wave.answered_us.get(*id)?)))
            .collect::<Vec<u64>>()
    };
    let last_first = first.values().copied().max().unwrap_or(wave_start_us);
    let span = |a: u64, b: u64| (b.saturating_sub(a)) as f64 / 1e6;
    let pushes_per_s = if first.is_empty() {
        0.0
    } else {
        first.len() as f64 / span(wave_start_us, last_first).max(1e-3)
    };
    let fake_first = stats.sends.iter().map(|s| s.at_us).min().unwrap_or(0);
    let fake_last = stats.sends.iter().map(|s| s.at_us).max().unwrap_or(0);
    let (during_from, during_to) = if args.no_wave {
        (wave_start_us, u64::MAX)
    } else {
        (wave_start_us, last_push_us)
    };
    let samples = live.samples();
    let report = Report {
        scenario: "push",
        run: run.clone(),
        url: target.base().to_owned(),
        climbers: args.climbers,
        online: args.online,
        wave: !args.no_wave,
        devices_registered: registered,
        register_s,
        register_errors,
        wave_events: expected as u64,
        wave_errors: wave.errors,
        wave_store_s: span(wave_start_us, wave_end_us),
        pushed: first.len() as u64,
        pushed_final: last_final.len() as u64,
        fake_requests: stats.sends.len() as u64,
        fake_by_status: stats.by_status.clone(),
        fake_token_requests: stats.token_requests,
        pushes_per_s,
        fake_requests_per_s: stats.sends.len() as f64 / span(fake_first, fake_last).max(1e-3),
        event_to_fcm: summary(delay(&first).into_iter())?,
        event_to_final: summary(delay(&last_final).into_iter())?,
        live_sent: live.sent.load(Ordering::Relaxed),
        live_received: samples.len() as u64,
        live_errors: live.errors.load(Ordering::Relaxed),
        live_all: summary(samples.iter().map(|s| s.1))?,
        live_during: summary(
            samples
                .iter()
                .filter(|s| s.0 >= during_from && s.0 <= during_to)
                .map(|s| s.1),
        )?,
        server_rss_before_kib: rss_before,
        server_rss_after_kib: rss_after,
        server_cpu_s: cpu_after - cpu_before,
        wall_s: started.elapsed().as_secs_f64(),
    };
    report.print();
    let plot = chart(&report, &samples, live_start_us, &first, &wave)?;
    output::write(args.out.as_deref(), "push", &report, &plot)?;
    let lost = report.live_sent.saturating_sub(report.live_received);
    let unpushed = report.wave_events.saturating_sub(report.pushed_final);
    common::verdict(&[
        ("live events lost", lost),
        ("wave events never pushed", unpushed),
        ("wave requests failed", report.wave_errors),
        ("devices not registered", report.register_errors),
    ])
}

/// How many wave notifications have a final answer at the fake.
fn final_ids(stats: &FakeStats, wave: &HashMap<String, u64>) -> usize {
    let mut done: std::collections::HashSet<&str> = std::collections::HashSet::new();
    for send in &stats.sends {
        if matches!(send.status, 200 | 404) && wave.contains_key(&send.notification_id) {
            done.insert(&send.notification_id);
        }
    }
    done.len()
}

async fn fake_stats(api: &Client, fake: &Target) -> Result<FakeStats> {
    let url = fake.endpoint("/stats");
    api.get(&url)
        .send()
        .await
        .with_context(|| format!("GET {url}"))?
        .error_for_status()?
        .json()
        .await
        .with_context(|| format!("GET {url}: not the fake's stats"))
}

async fn register(
    api: &Client,
    target: &Target,
    api_key: &str,
    run: &str,
    args: &PushArgs,
) -> (u64, u64) {
    let ok = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let permits = Arc::new(Semaphore::new(args.register_concurrency as usize));
    let bar = output::bar(u64::from(args.climbers), "registering");
    let mut tasks = Vec::with_capacity(args.climbers as usize);
    for i in 0..args.climbers {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            break;
        };
        let (api, target, key, ok, errors, bar) = (
            api.clone(),
            target.clone(),
            api_key.to_owned(),
            ok.clone(),
            errors.clone(),
            bar.clone(),
        );
        let user = format!("lt-{run}-c{i}");
        let device = device_token(run, i);
        tasks.push(tokio::spawn(async move {
            let done = async {
                let token = common::dev_token(&api, &target, &key, &user).await?;
                let response = api
                    .post(target.endpoint("/v1/devices"))
                    .bearer_auth(token)
                    .json(&json!({"platform": "fcm", "token": device}))
                    .send()
                    .await?;
                if !response.status().is_success() {
                    bail!("{}", common::describe_error(response).await);
                }
                Ok(())
            };
            match done.await {
                Ok(()) => ok.fetch_add(1, Ordering::Relaxed),
                Err(error) => {
                    if errors.fetch_add(1, Ordering::Relaxed) == 0 {
                        eprintln!("registering {user}: {error:#}");
                    }
                    0
                }
            };
            bar.inc(1);
            drop(permit);
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
    bar.finish();
    (ok.load(Ordering::Relaxed), errors.load(Ordering::Relaxed))
}

#[derive(Default)]
struct Wave {
    /// Notification id → when its notify was answered (Unix µs).
    answered_us: HashMap<String, u64>,
    errors: u64,
}

/// One `post_liked` per climber, `--batch` to a request, `--wave-concurrency` in flight.
async fn send_wave(
    api: &Client,
    target: &Target,
    api_key: &str,
    run: &str,
    args: &PushArgs,
) -> Wave {
    let wave = Arc::new(Mutex::new(Wave::default()));
    let permits = Arc::new(Semaphore::new(args.wave_concurrency as usize));
    let mut tasks = Vec::new();
    let batch = args.batch;
    for first in (0..args.climbers).step_by(batch as usize) {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            break;
        };
        let items: Vec<Value> = (first..(first + batch).min(args.climbers))
            .map(|i| {
                json!({
                    "user_id": format!("lt-{run}-c{i}"),
                    "kind": "post_liked",
                    "data": {"post_id": format!("wave-{i}"), "by": "loadgen"},
                })
            })
            .collect();
        let request = api
            .post(target.endpoint("/v1/notify"))
            .header("X-Api-Key", api_key)
            .json(&json!({ "events": items }));
        let wave = wave.clone();
        tasks.push(tokio::spawn(async move {
            let answer = match request.send().await {
                Ok(r) if r.status().is_success() => r.json::<NotifyAnswer>().await.ok(),
                Ok(r) => {
                    eprintln!("wave request refused: {}", common::describe_error(r).await);
                    None
                }
                Err(e) => {
                    eprintln!("wave request failed: {}", common::error_chain(&e));
                    None
                }
            };
            let at = now_us();
            let mut wave = wave.lock().unwrap_or_else(PoisonError::into_inner);
            match answer {
                Some(answer) => {
                    for item in answer.results {
                        wave.answered_us.insert(item.id, at);
                    }
                }
                None => wave.errors += 1,
            }
            drop(permit);
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
    let mut wave = wave.lock().unwrap_or_else(PoisonError::into_inner);
    std::mem::take(&mut *wave)
}

/// Live traffic and what the sessions received: (sent µs, latency µs) per event.
#[derive(Default)]
struct Live {
    opened: AtomicU64,
    open_errors: AtomicU64,
    sent: AtomicU64,
    errors: AtomicU64,
    received: Mutex<Vec<(u64, u64)>>,
}

impl Live {
    fn samples(&self) -> Vec<(u64, u64)> {
        let mut samples = self
            .received
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        samples.sort_unstable();
        samples
    }
}

#[derive(Deserialize)]
struct LiveFrame {
    data: LiveData,
}

#[derive(Deserialize)]
struct LiveData {
    post_id: String,
}

async fn receive(mut stream: common::SseStream, live: &Live, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            biased;
            _ = stop.changed() => return,
            frame = stream.next() => match frame {
                Some(Ok(event)) if event.event == "post_liked" => {
                    let at = now_us();
                    let sent = serde_json::from_str::<LiveFrame>(&event.data)
                        .ok()
                        .and_then(|f| f.data.post_id.rsplit('-').next()?.parse::<u64>().ok());
                    if let Some(sent) = sent {
                        live.received
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .push((sent, at.saturating_sub(sent)));
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return,
            },
        }
    }
}

/// Open-loop: notify k is due at k / rate seconds; each carries its send time in its post id.
async fn publish_live(
    api: Client,
    target: Target,
    api_key: String,
    users: Vec<String>,
    rate: u32,
    duration: Duration,
    live: Arc<Live>,
) {
    if users.is_empty() || rate == 0 {
        tokio::time::sleep(duration).await;
        return;
    }
    let start = Instant::now();
    let period = Duration::from_secs_f64(1.0 / f64::from(rate)).max(Duration::from_millis(1));
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let permits = Arc::new(Semaphore::new(64));
    let url = target.endpoint("/v1/notify");
    let mut next = 0u64;
    let mut tasks = Vec::new();
    while start.elapsed() < duration {
        ticker.tick().await;
        let due = (start.elapsed().min(duration).as_secs_f64() * f64::from(rate)) as u64 + 1;
        while next < due {
            let Ok(permit) = permits.clone().acquire_owned().await else {
                return;
            };
            let user = &users[(next % users.len() as u64) as usize];
            let sent = now_us();
            let request = api.post(&url).header("X-Api-Key", &api_key).json(&json!({
                "user_id": user,
                "kind": "post_liked",
                "data": {"post_id": format!("live-{next}-{sent}"), "by": "loadgen"},
            }));
            let live = live.clone();
            live.sent.fetch_add(1, Ordering::Relaxed);
            tasks.push(tokio::spawn(async move {
                match request.send().await {
                    Ok(r) if r.status().is_success() => {}
                    _ => {
                        live.errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                drop(permit);
            }));
            next += 1;
        }
    }
    for task in tasks {
        let _ = task.await;
    }
}

/// Live latency over time and its distribution, and the count of pushes arrived at the fake.
fn chart(
    report: &Report,
    samples: &[(u64, u64)],
    start_us: u64,
    first: &HashMap<&str, u64>,
    wave: &Wave,
) -> Result<Plot> {
    let secs = |us: u64| us.saturating_sub(start_us) as f64 / 1e6;
    let live: Vec<(f64, f64)> = samples
        .iter()
        .map(|&(sent, latency)| (secs(sent), latency as f64 / 1e3))
        .collect();
    let mut arrivals: Vec<u64> = first.values().copied().collect();
    arrivals.sort_unstable();
    let pushes: Vec<(f64, f64)> = arrivals
        .iter()
        .enumerate()
        .step_by(50)
        .map(|(n, &at)| (secs(at), n as f64))
        .collect();
    let mut hist = histogram()?;
    for &(_, latency) in samples {
        hist.saturating_record(latency.max(1));
    }
    let title = format!(
        "push: {} climbers, {:.0} pushes/s, {} wave events; {} online",
        report.climbers,
        report.pushes_per_s,
        wave.answered_us.len(),
        report.online
    );
    let time_label = "seconds since the live notifies began";
    let mut plot = Plot::latency(
        &title,
        time_label,
        plot::binned("live notify → SSE", &live, 200),
        vec![plot::spectrum("live notify → SSE", &hist)],
    );
    plot.panels.insert(
        1,
        Panel {
            title: "pushes at the fake FCM".to_owned(),
            x_label: time_label.to_owned(),
            y_label: "pushes so far".to_owned(),
            x_axis: XAxis::Linear,
            series: vec![Series::line("first sends", pushes)],
        },
    );
    Ok(plot)
}

impl Report {
    fn print(&self) {
        println!();
        println!(
            "belay-load push  run={}  url={}  wave={}",
            self.run, self.url, self.wave
        );
        row(
            "devices",
            format!(
                "{} registered in {:.1} s, {} errors",
                self.devices_registered, self.register_s, self.register_errors
            ),
        );
        if self.wave {
            row(
                "wave",
                format!(
                    "{} events stored in {:.2} s, {} failed requests",
                    self.wave_events, self.wave_store_s, self.wave_errors
                ),
            );
            row(
                "pushed",
                format!(
                    "{} reached FCM, {} with a final answer; {:.0} pushes/s",
                    self.pushed, self.pushed_final, self.pushes_per_s
                ),
            );
            let statuses: Vec<String> = self
                .fake_by_status
                .iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect();
            row(
                "fake FCM",
                format!(
                    "{} requests ({}), {:.0} req/s, {} token requests",
                    self.fake_requests,
                    statuses.join(", "),
                    self.fake_requests_per_s,
                    self.fake_token_requests
                ),
            );
            row("event → FCM ms", self.event_to_fcm.display());
            row("event → final ms", self.event_to_final.display());
        }
        row(
            "live",
            format!(
                "{} sent, {} received, {} errors",
                self.live_sent, self.live_received, self.live_errors
            ),
        );
        row("live ms (all)", self.live_all.display());
        row("live ms (during)", self.live_during.display());
        row(
            "server RSS",
            format!(
                "{:.1} MiB before, {:.1} MiB after",
                self.server_rss_before_kib as f64 / 1024.0,
                self.server_rss_after_kib as f64 / 1024.0
            ),
        );
        row("server CPU", format!("{:.2} s", self.server_cpu_s));
    }
}
