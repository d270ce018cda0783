//! Scenario `pair`: how long pairing takes through HTTP when a compatible opponent is already
//! waiting. For each pair, climber A (with an open stream) joins a queue of its own scope; then
//! climber B joins the same queue and the tool times B's `POST /v1/queue` (it answers once the
//! match is stored) and A's `match_found` frame on the stream. Pairs run one after another, so
//! the numbers are latency, not throughput.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use serde_json::{Value, json};

use crate::common::{self, LatencySummary, Target};

/// Upper bound on `--pairs`, so a typo cannot run for hours.
const MAX_PAIRS: u32 = 100_000;
/// How long to wait for a response or a frame before calling the run failed.
const WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, Args)]
pub struct PairArgs {
    /// Server base URL (loopback only).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Pairs to make, one after another.
    #[arg(long, default_value_t = 500)]
    pairs: u32,
    /// Host API key (else BELAY_API_KEY, else the dev-mode config endpoint).
    #[arg(long)]
    api_key: Option<String>,
}

pub async fn run(args: PairArgs) -> Result<()> {
    if args.pairs == 0 || args.pairs > MAX_PAIRS {
        bail!("--pairs must be between 1 and {MAX_PAIRS}");
    }
    let target = Target::loopback(&args.url)?;
    let api = common::api_client(WAIT, 8)?;
    let sse = common::sse_client()?;
    let key = common::resolve_api_key(&api, &target, args.api_key.as_deref()).await?;
    let tag = common::run_tag();
    let max = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let (mut joined, mut found) = (max.clone(), max);
    let started = Instant::now();
    for i in 0..args.pairs {
        let (a, b) = (format!("pa{tag}-{i}"), format!("pb{tag}-{i}"));
        let token_a = common::dev_token(&api, &target, &key, &a).await?;
        let token_b = common::dev_token(&api, &target, &key, &b).await?;
        let mut stream = common::open_session(&sse, &target, &token_a).await?;
        // A queue of its own: nobody else can take A, and B fits A's window at once.
        let body = json!({ "discipline": "boulder", "scope": format!("pair{tag}-{i}") });
        join(&api, &target, &token_a, &body).await?;
        let t0 = Instant::now();
        let me = join(&api, &target, &token_b, &body).await?;
        joined.record(micros(t0.elapsed()))?;
        if me["match"]["status"] != "ready_check" {
            bail!("{b} joined a waiting opponent's queue but was not paired: {me}");
        }
        loop {
            let frame = tokio::time::timeout(WAIT, stream.next())
                .await
                .with_context(|| format!("no match_found for {a} within {WAIT:?}"))?
                .with_context(|| format!("the stream of {a} ended"))?
                .with_context(|| format!("reading the stream of {a}"))?;
            if frame.event == "match_found" {
                found.record(micros(t0.elapsed()))?;
                break;
            }
        }
        if (i + 1) % 100 == 0 {
            eprintln!("{} pairs", i + 1);
        }
    }
    println!(
        "pairs: {}  in {:.1} s (sequential)",
        args.pairs,
        started.elapsed().as_secs_f64()
    );
    println!(
        "join answered (paired, stored):   {}",
        LatencySummary::from_micros(&joined).display()
    );
    println!(
        "match_found on the waiting side:  {}",
        LatencySummary::from_micros(&found).display()
    );
    Ok(())
}

async fn join(api: &reqwest::Client, target: &Target, token: &str, body: &Value) -> Result<Value> {
    let url = target.endpoint("/v1/queue");
    let resp = api
        .post(&url)
        .bearer_auth(token)
        .json(body)
        .send()
        .await
        .with_context(|| format!("POST {url}"))?;
    if !resp.status().is_success() {
        bail!("POST {url}: {}", common::describe_error(resp).await);
    }
    resp.json().await.context("queue answer is not JSON")
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}
