//! Helpers shared by scenarios: loopback target, dev credentials, SSE sessions, latency and CPU stats.

use std::collections::BTreeMap;
use std::fmt::Display;
use std::hash::{BuildHasher, Hasher, RandomState};
use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use eventsource_stream::{Event, EventStreamError, Eventsource};
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use hdrhistogram::Histogram;
use reqwest::{Client, Response, Url, header};
use serde::{Deserialize, Serialize};

/// Env var consulted when `--api-key` is not given.
pub const API_KEY_ENV: &str = "BELAY_API_KEY";

/// A server base URL that has been checked to point at this machine.
#[derive(Debug, Clone)]
pub struct Target {
    base: String,
}

impl Target {
    /// Accepts only plain-http loopback URLs: this tool generates enough load to hurt a real
    /// deployment, so it must never be aimed at one by a typo.
    pub fn loopback(url: &str) -> Result<Self> {
        let parsed = Url::parse(url).with_context(|| format!("invalid --url {url:?}"))?;
        if parsed.scheme() != "http" {
            bail!("refusing --url {url}: only plain http:// is supported (no TLS)");
        }
        let host = parsed.host_str().unwrap_or_default();
        // host_str() keeps the brackets around IPv6 literals.
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let is_loopback = match bare.parse::<IpAddr>() {
            Ok(IpAddr::V4(ip)) => ip.is_loopback(),
            Ok(IpAddr::V6(ip)) => {
                ip.is_loopback() || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
            }
            Err(_) => bare.eq_ignore_ascii_case("localhost"),
        };
        if !is_loopback {
            bail!(
                "refusing --url {url}: host {host:?} is not loopback \
                 (allowed: 127.0.0.0/8, localhost, ::1); belay-load only targets a local server"
            );
        }
        let mut base = format!("{}://{}", parsed.scheme(), host);
        if let Some(port) = parsed.port() {
            base.push_str(&format!(":{port}"));
        }
        base.push_str(parsed.path().trim_end_matches('/'));
        Ok(Self { base })
    }

    /// Full URL of an API path such as `/v1/events`.
    pub fn endpoint(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub fn base(&self) -> &str {
        &self.base
    }
}

/// Short random tag that keeps user ids of repeated (or parallel) runs apart.
pub fn run_tag() -> String {
    // RandomState is seeded from the OS per process: randomness without a `rand` dependency.
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    hasher.write_u32(std::process::id());
    format!("{:08x}", hasher.finish() & 0xffff_ffff)
}

/// Client for short request/response calls (tokens, publishing): every request has a deadline.
pub fn api_client(request_timeout: Duration, max_idle: usize) -> Result<Client> {
    Client::builder()
        .no_proxy() // loopback only; an HTTP_PROXY in the environment must not intercept
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(5))
        .timeout(request_timeout)
        .pool_max_idle_per_host(max_idle)
        // Below the server's keep-alive (5 s): a connection is never reused just as the server
        // closes it, which would fail the request on the client side alone.
        .pool_idle_timeout(Duration::from_secs(3))
        .build()
        .context("building the HTTP client")
}

/// Client for SSE sessions: no total timeout, since the response body lives for the whole run.
pub fn sse_client() -> Result<Client> {
    Client::builder()
        .no_proxy()
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(5))
        .build()
        .context("building the SSE HTTP client")
}

/// First bytes of an error response, for messages the operator can act on.
pub async fn describe_error(resp: Response) -> String {
    let status = resp.status();
    let body = resp.text().await.unwrap_or_default();
    let snippet: String = body.chars().take(200).collect();
    format!("HTTP {status}: {}", snippet.trim())
}

#[derive(Deserialize)]
struct DevConfig {
    api_key: String,
}

#[derive(Deserialize)]
struct DevToken {
    token: String,
}

/// API key from the flag, else `BELAY_API_KEY`, else the dev-mode config endpoint.
pub async fn resolve_api_key(
    client: &Client,
    target: &Target,
    flag: Option<&str>,
) -> Result<String> {
    if let Some(key) = flag.filter(|k| !k.is_empty()) {
        return Ok(key.to_owned());
    }
    if let Ok(key) = std::env::var(API_KEY_ENV)
        && !key.is_empty()
    {
        return Ok(key);
    }
    let url = target.endpoint("/v1/dev/config");
    let hint = format!(
        "no API key: pass --api-key, set {API_KEY_ENV}, or run the server in dev mode so GET {url} works"
    );
    let resp = client.get(&url).send().await.context(hint.clone())?;
    if !resp.status().is_success() {
        bail!("{hint} ({})", describe_error(resp).await);
    }
    let config: DevConfig = resp.json().await.context(hint)?;
    Ok(config.api_key)
}

/// Session token for `user_id` from the dev-mode token endpoint.
pub async fn dev_token(
    client: &Client,
    target: &Target,
    api_key: &str,
    user_id: &str,
) -> Result<String> {
    let url = target.endpoint("/v1/dev/token");
    let resp = client
        .post(&url)
        // Harmless if the endpoint is open; needed if the server guards it with the key.
        .header("X-Api-Key", api_key)
        .json(&serde_json::json!({ "user_id": user_id }))
        .send()
        .await
        .with_context(|| format!("POST {url}"))?;
    if !resp.status().is_success() {
        bail!("POST {url} for {user_id}: {}", describe_error(resp).await);
    }
    let token: DevToken = resp
        .json()
        .await
        .with_context(|| format!("POST {url}: response has no \"token\""))?;
    Ok(token.token)
}

/// Parsed SSE frames of one session.
pub type SseStream = BoxStream<'static, Result<Event, EventStreamError<reqwest::Error>>>;

/// Opens `GET /v1/events` and reads up to the `unread` event, which the server sends once the
/// session is registered; only then will published events reach it.
pub async fn open_session(client: &Client, target: &Target, token: &str) -> Result<SseStream> {
    let url = target.endpoint("/v1/events");
    let resp = client
        .get(&url)
        .bearer_auth(token)
        .header(header::ACCEPT, "text/event-stream")
        .send()
        .await
        .with_context(|| format!("GET {url}"))?;
    if !resp.status().is_success() {
        bail!("GET {url}: {}", describe_error(resp).await);
    }
    let mut stream: SseStream = resp.bytes_stream().eventsource().boxed();
    while let Some(frame) = stream.next().await {
        let event = frame.with_context(|| format!("GET {url}: reading the stream"))?;
        if event.event == "unread" {
            return Ok(stream);
        }
    }
    bail!("GET {url}: stream closed before the `unread` event")
}

/// Latency histograms split in shards so many receiver tasks rarely wait on the same lock,
/// without paying for one full histogram per session.
pub struct ShardedHistogram {
    shards: Vec<Mutex<Histogram<u64>>>,
}

impl ShardedHistogram {
    /// Records microseconds from 1 µs to 1 h at 3 significant digits (larger values clamp).
    pub fn new(shards: usize) -> Result<Self> {
        let shards = (0..shards.max(1))
            .map(|_| new_histogram().map(Mutex::new))
            .collect::<Result<_>>()?;
        Ok(Self { shards })
    }

    pub fn record(&self, shard: usize, micros: u64) {
        let cell = &self.shards[shard % self.shards.len()];
        cell.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .saturating_record(micros);
    }

    pub fn merged(&self) -> Result<Histogram<u64>> {
        let mut total = new_histogram()?;
        for cell in &self.shards {
            total
                .add(&*cell.lock().unwrap_or_else(PoisonError::into_inner))
                .context("merging latency histograms")?;
        }
        Ok(total)
    }
}

fn new_histogram() -> Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).context("creating latency histogram")
}

/// Percentiles of a microsecond histogram, in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct LatencySummary {
    pub samples: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

impl LatencySummary {
    pub fn from_micros(hist: &Histogram<u64>) -> Self {
        let ms = |us: u64| us as f64 / 1000.0;
        Self {
            samples: hist.len(),
            p50_ms: ms(hist.value_at_quantile(0.50)),
            p90_ms: ms(hist.value_at_quantile(0.90)),
            p99_ms: ms(hist.value_at_quantile(0.99)),
            p999_ms: ms(hist.value_at_quantile(0.999)),
            max_ms: ms(hist.max()),
            mean_ms: hist.mean() / 1000.0,
        }
    }

    /// One table cell: `p50 1.20  p90 ...  max 9.80` (or a note when nothing was measured).
    pub fn display(&self) -> String {
        if self.samples == 0 {
            return "no samples".to_owned();
        }
        format!(
            "p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}  (n={})",
            self.p50_ms, self.p90_ms, self.p99_ms, self.p999_ms, self.max_ms, self.samples
        )
    }
}

/// This process's user+system CPU seconds, from /proc/self/stat (Linux only, else None).
pub fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name may contain spaces; the numeric fields start after its closing ')'.
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 (utime) and 15 (stime) of proc(5), counted from field 3 (state) here.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    // /proc reports in USER_HZ, which Linux fixes at 100 on the architectures we run on.
    Some((utime + stime) as f64 / 100.0)
}

/// Client CPU use over a phase, so the operator can tell when the load generator is the limit.
#[derive(Debug, Clone, Serialize)]
pub struct CpuUsage {
    pub cpu_s: Option<f64>,
    pub wall_s: f64,
    /// Average cores busy (cpu_s / wall_s); near `cores_available` means the client saturated.
    pub avg_cores: Option<f64>,
    pub cores_available: usize,
}

impl CpuUsage {
    pub fn between(cpu_start: Option<f64>, cpu_end: Option<f64>, wall: Duration) -> Self {
        let wall_s = wall.as_secs_f64();
        let cpu_s = cpu_start.zip(cpu_end).map(|(a, b)| (b - a).max(0.0));
        Self {
            cpu_s,
            wall_s,
            avg_cores: cpu_s.filter(|_| wall_s > 0.0).map(|c| c / wall_s),
            cores_available: std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }

    pub fn display(&self) -> String {
        match (self.cpu_s, self.avg_cores) {
            (Some(cpu), Some(cores)) => format!(
                "{cpu:.2} s over {:.1} s wall = {cores:.2} of {} cores",
                self.wall_s, self.cores_available
            ),
            _ => format!("n/a (no /proc/self/stat), {:.1} s wall", self.wall_s),
        }
    }
}

/// Warns when the soft open-files limit is below what the run needs (one socket per session).
pub fn warn_if_fd_limit_below(needed: u64) {
    let Ok(limits) = std::fs::read_to_string("/proc/self/limits") else {
        return;
    };
    let soft = limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(soft) = soft
        && soft < needed
    {
        eprintln!(
            "warning: open-files limit is {soft} but this run needs about {needed}; raise it with `ulimit -n`"
        );
    }
}

/// `err` and its sources on one line, like anyhow's `{:#}`, for errors that are not anyhow's.
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Why an SSE stream failed, with the transport's cause chain (the wrapper hides it).
pub fn sse_error(err: &EventStreamError<reqwest::Error>) -> String {
    match err {
        EventStreamError::Transport(inner) => format!("stream error: {}", error_chain(inner)),
        other => format!("stream error: {other}"),
    }
}

/// Distinct error messages with counts, capped so a flood of varied errors stays bounded.
#[derive(Default)]
pub struct ErrorTally {
    counts: Mutex<BTreeMap<String, u64>>,
}

/// One line of the error list in a report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorCount {
    pub count: u64,
    pub message: String,
}

impl ErrorTally {
    const MAX_DISTINCT: usize = 8;
    const OVERFLOW: &str = "(other errors)";

    pub fn add(&self, message: String) {
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        let key = if counts.contains_key(&message) || counts.len() < Self::MAX_DISTINCT {
            message
        } else {
            Self::OVERFLOW.to_owned()
        };
        *counts.entry(key).or_default() += 1;
    }

    /// Most frequent first.
    pub fn sorted(&self) -> Vec<ErrorCount> {
        let counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        let mut list: Vec<ErrorCount> = counts
            .iter()
            .map(|(message, &count)| ErrorCount {
                count,
                message: message.clone(),
            })
            .collect();
        list.sort_by_key(|e| std::cmp::Reverse(e.count));
        list
    }
}

/// One line of a summary table: label column, then the value.
pub fn row(label: &str, value: impl Display) {
    println!("  {label:<27} {value}");
}

/// One summary row per distinct error, with its count.
pub fn error_rows(errors: &[ErrorCount]) {
    for e in errors {
        row("error", format!("{}x {}", e.count, e.message));
    }
}

/// The run's verdict, once its results are written: an error (and so a non-zero exit) naming
/// every check that found something, so a script can gate on the run.
pub fn verdict(checks: &[(&str, u64)]) -> Result<()> {
    let failed: Vec<String> = checks
        .iter()
        .filter(|(_, count)| *count > 0)
        .map(|(what, count)| format!("{count} {what}"))
        .collect();
    if failed.is_empty() {
        Ok(())
    } else {
        bail!("checks failed: {}", failed.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_verdict_names_every_failed_check() {
        assert!(verdict(&[("lost", 0), ("duplicates", 0)]).is_ok());
        let failed = verdict(&[("lost", 2), ("duplicates", 0), ("out of order", 1)]);
        assert_eq!(
            failed.map_err(|e| e.to_string()),
            Err("checks failed: 2 lost, 1 out of order".to_owned())
        );
    }

    #[test]
    fn accepts_loopback_hosts() {
        for url in [
            "http://127.0.0.1:8080",
            "http://127.3.2.1:8080/",
            "http://localhost:8080",
            "http://LOCALHOST",
            "http://[::1]:8080",
            "http://[::ffff:127.0.0.1]:9000",
        ] {
            assert!(Target::loopback(url).is_ok(), "{url} should be accepted");
        }
    }

    #[test]
    fn refuses_remote_hosts_and_tls() {
        for url in [
            "http://10.0.0.1:8080",
            "http://0.0.0.0:8080",
            "http://example.com",
            "http://localhost.example.com",
            "http://[2001:db8::1]",
            "https://127.0.0.1:8080",
            "not a url",
        ] {
            assert!(Target::loopback(url).is_err(), "{url} should be refused");
        }
    }

    #[test]
    fn endpoint_joins_without_double_slash() -> Result<()> {
        let target = Target::loopback("http://127.0.0.1:8080/")?;
        assert_eq!(
            target.endpoint("/v1/events"),
            "http://127.0.0.1:8080/v1/events"
        );
        let target = Target::loopback("http://[::1]:8080/prefix/")?;
        assert_eq!(
            target.endpoint("/v1/notify"),
            "http://[::1]:8080/prefix/v1/notify"
        );
        Ok(())
    }

    #[test]
    fn cpu_time_is_readable_on_linux() {
        if cfg!(target_os = "linux") {
            assert!(process_cpu_seconds().is_some());
        }
    }
}
