//! The hidden `worker` subcommand: one client process of a multi-process run. The parent
//! (`fleet`) starts it with a JSON spec; it opens its share of SSE sessions from its own source
//! address, then answers one-line commands on stdin (`stats`, `go`, `report`, `stop`) with one
//! JSON line each on stdout. One thread, so the per-frame bookkeeping needs no locks.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io::Write;
use std::net::IpAddr;
use std::ops::ControlFlow;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::{Semaphore, watch};
use tokio::task::LocalSet;
use tokio::time::timeout;

use crate::adapter::{self, ServerSpec};
use crate::common::{self, ErrorCount, Target};
use crate::lean::{self, End, SseStream};

/// How often a worker reports its opening progress.
const PROGRESS_EVERY: Duration = Duration::from_millis(200);
/// Distinct error messages kept per worker.
const MAX_DISTINCT_ERRORS: usize = 8;

#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// The worker's share of the run, as JSON (written by the parent process).
    #[arg(long)]
    spec: String,
}

/// One worker's share of a run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerSpec {
    pub index: usize,
    pub server: ServerSpec,
    /// Local address every socket of this worker binds.
    pub source: IpAddr,
    /// Tag of the run: user ids are `lt-<run>-<n>`.
    pub run: String,
    pub first_user: u64,
    pub sessions: u32,
    pub open_concurrency: u32,
    pub open_timeout_s: u64,
    /// Broadcast sequence numbers tracked (0..seqs).
    pub seqs: u64,
    /// Set for the matchmaking scenario: each session is a climber.
    pub climb: Option<ClimbSpec>,
    /// Set for the reconnect scenario: sessions close on `away` and resume on `back`.
    pub resume: Option<ResumeSpec>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResumeSpec {
    /// Stored events each user gets while its session is away; the resumed stream must replay
    /// exactly these, in cursor order.
    pub missed: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClimbSpec {
    pub discipline: String,
    pub scope: String,
    /// Joins and ready requests in flight per worker.
    pub concurrency: u32,
    /// Press ready after match_found (else stop at match_found).
    pub ready: bool,
    /// After match_confirmed, report the result (the pair's first user id in order wins) and
    /// take match_result: the match ends, as played matches do.
    #[serde(default)]
    pub settle: bool,
}

/// One line on the worker's stdout.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum WorkerMsg {
    Progress(Stats),
    Ready(Stats),
    Stats(Stats),
    Report(Box<WorkerReport>),
}

/// Running counts, summed over workers by the parent.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Stats {
    pub opened: u64,
    pub failed: u64,
    /// Open sessions whose stream ended before the run did.
    pub dropped: u64,
    pub frames: u64,
    /// Broadcast frames of this run (those with a marker).
    pub marked: u64,
    pub joined: u64,
    pub found: u64,
    pub confirmed: u64,
    /// Climbers whose match ended with the result both reported (`--settle`).
    pub settled: u64,
    pub climb_errors: u64,
    /// Reconnect scenario: sessions closed on `away`, reopened with `Last-Event-ID` on `back`,
    /// that failed to reopen, and that have received every event they missed.
    pub away: u64,
    pub resumed: u64,
    pub resume_failed: u64,
    pub caught_up: u64,
    /// Missed events received after a resume, each counted once.
    pub replayed: u64,
    /// After a resume: stored events received twice, events skipped (a cursor jumped past
    /// them), and `unread` frames whose count or cursor disagreed with what was missed.
    pub replay_duplicates: u64,
    pub replay_skipped: u64,
    pub unread_mismatches: u64,
}

impl Stats {
    pub fn add(&mut self, other: &Stats) {
        self.opened += other.opened;
        self.failed += other.failed;
        self.dropped += other.dropped;
        self.frames += other.frames;
        self.marked += other.marked;
        self.joined += other.joined;
        self.found += other.found;
        self.confirmed += other.confirmed;
        self.settled += other.settled;
        self.climb_errors += other.climb_errors;
        self.away += other.away;
        self.resumed += other.resumed;
        self.resume_failed += other.resume_failed;
        self.caught_up += other.caught_up;
        self.replayed += other.replayed;
        self.replay_duplicates += other.replay_duplicates;
        self.replay_skipped += other.replay_skipped;
        self.unread_mismatches += other.unread_mismatches;
    }
}

/// Everything a worker measured.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct WorkerReport {
    pub stats: Stats,
    /// Per broadcast seq: (receipts, largest publish-to-receive latency in µs).
    pub per_seq: Vec<(u32, u64)>,
    /// First and last broadcast receipt, µs since the epoch (0: none).
    pub first_recv_us: u64,
    pub last_recv_us: u64,
    /// Publish-to-receive latency of every broadcast delivery: (µs, count) pairs.
    pub delivery_us: Vec<(u64, u64)>,
    /// Per opened session: (start µs since the epoch, µs until open).
    pub connects: Vec<(u64, u64)>,
    pub errors: Vec<ErrorCount>,
    pub climbers: Vec<Climber>,
    pub resumes: Vec<Resume>,
}

/// One session's resume in the reconnect scenario.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Resume {
    /// When the session was told to come back, µs since the epoch (the same moment for all).
    pub storm_us: u64,
    /// When it began to reopen, after waiting for a turn, µs since the epoch.
    pub asked_us: u64,
    /// µs from `asked_us` to its `unread` frame.
    pub to_unread_us: u64,
    /// When it had every event it missed, µs since the epoch; 0 if it never did.
    pub caught_up_us: u64,
}

/// What happened to one climber in the matchmaking scenario.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Climber {
    pub user: String,
    /// When the join request left, µs since the epoch (0: never joined).
    pub joined_us: u64,
    pub match_id: Option<String>,
    pub opponent: Option<String>,
    /// µs from join to match_found, and to match_confirmed.
    pub found_after_us: Option<u64>,
    pub confirmed_after_us: Option<u64>,
    /// match_found frames seen on the stream (more than one means matched twice).
    pub found_frames: u32,
    pub error: Option<String>,
}

/// The worker's bookkeeping; one thread, so a RefCell.
struct Tally {
    stats: Stats,
    per_seq: Vec<(u32, u64)>,
    first_recv_us: u64,
    last_recv_us: u64,
    delivery: Histogram<u64>,
    connects: Vec<(u64, u64)>,
    errors: BTreeMap<String, u64>,
    climbers: Vec<Climber>,
    resumes: Vec<Resume>,
}

impl Tally {
    fn error(&mut self, message: String) {
        let key = if self.errors.contains_key(&message) || self.errors.len() < MAX_DISTINCT_ERRORS {
            message
        } else {
            "(other errors)".to_owned()
        };
        *self.errors.entry(key).or_default() += 1;
    }

    fn on_frame(&mut self, frame: &[u8]) {
        self.stats.frames += 1;
        let Some((seq, sent_us)) = adapter::parse_marker(frame) else {
            return;
        };
        let Some(cell) = usize::try_from(seq)
            .ok()
            .and_then(|i| self.per_seq.get_mut(i))
        else {
            return;
        };
        let now = adapter::now_us();
        let latency = now.saturating_sub(sent_us);
        cell.0 += 1;
        cell.1 = cell.1.max(latency);
        self.stats.marked += 1;
        if self.first_recv_us == 0 {
            self.first_recv_us = now;
        }
        self.last_recv_us = now;
        self.delivery.saturating_record(latency.max(1));
    }

    fn report(&self) -> WorkerReport {
        WorkerReport {
            stats: self.stats,
            per_seq: self.per_seq.clone(),
            first_recv_us: self.first_recv_us,
            last_recv_us: self.last_recv_us,
            delivery_us: self
                .delivery
                .iter_recorded()
                .map(|v| (v.value_iterated_to(), v.count_at_value()))
                .collect(),
            connects: self.connects.clone(),
            errors: self
                .errors
                .iter()
                .map(|(message, &count)| ErrorCount {
                    count,
                    message: message.clone(),
                })
                .collect(),
            climbers: self.climbers.clone(),
            resumes: self.resumes.clone(),
        }
    }
}

struct Ctx {
    spec: WorkerSpec,
    target: Target,
    api: reqwest::Client,
    tally: RefCell<Tally>,
    open_permits: Semaphore,
    request_permits: Semaphore,
    stop: watch::Receiver<bool>,
    go: watch::Receiver<bool>,
    away: watch::Receiver<bool>,
    back: watch::Receiver<bool>,
}

pub fn main(args: WorkerArgs) -> Result<()> {
    let spec: WorkerSpec = serde_json::from_str(&args.spec).context("parsing --spec")?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    LocalSet::new().block_on(&runtime, run(spec))
}

fn emit(msg: &WorkerMsg) -> Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, msg).context("writing to the parent")?;
    out.write_all(b"\n").context("writing to the parent")?;
    out.flush().context("writing to the parent")
}

async fn run(spec: WorkerSpec) -> Result<()> {
    let target = Target::loopback(&spec.server.base)?;
    let concurrency = spec.climb.as_ref().map_or(1, |c| c.concurrency.max(1));
    let api = reqwest::Client::builder()
        .no_proxy()
        .tcp_nodelay(true)
        .local_address(spec.source)
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host((concurrency as usize).max(spec.open_concurrency as usize))
        .build()
        .context("building the HTTP client")?;
    let (stop_tx, stop) = watch::channel(false);
    let (go_tx, go) = watch::channel(false);
    let (away_tx, away) = watch::channel(false);
    let (back_tx, back) = watch::channel(false);
    let ctx = Rc::new(Ctx {
        tally: RefCell::new(Tally {
            stats: Stats::default(),
            per_seq: vec![(0, 0); usize::try_from(spec.seqs).unwrap_or(0)],
            first_recv_us: 0,
            last_recv_us: 0,
            delivery: Histogram::new_with_bounds(1, 3_600_000_000, 3)
                .context("creating a histogram")?,
            connects: Vec::with_capacity(spec.sessions as usize),
            errors: BTreeMap::new(),
            climbers: Vec::new(),
            resumes: Vec::new(),
        }),
        open_permits: Semaphore::new(spec.open_concurrency.max(1) as usize),
        request_permits: Semaphore::new(concurrency as usize),
        target,
        api,
        stop,
        go,
        away,
        back,
        spec,
    });
    if ctx.spec.climb.is_some() {
        ctx.tally.borrow_mut().climbers = (0..ctx.spec.sessions)
            .map(|i| Climber {
                user: user_id(&ctx.spec, i),
                ..Climber::default()
            })
            .collect();
    }
    for i in 0..ctx.spec.sessions {
        tokio::task::spawn_local(session(Rc::clone(&ctx), i));
    }

    // Report opening progress until every session has opened or failed.
    loop {
        let stats = ctx.tally.borrow().stats;
        if stats.opened + stats.failed >= u64::from(ctx.spec.sessions) {
            emit(&WorkerMsg::Ready(stats))?;
            break;
        }
        emit(&WorkerMsg::Progress(stats))?;
        tokio::time::sleep(PROGRESS_EVERY).await;
    }

    let mut commands = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = commands.next_line().await.context("reading commands")? {
        match line.trim() {
            "stats" => emit(&WorkerMsg::Stats(ctx.tally.borrow().stats))?,
            "go" => {
                let _ = go_tx.send(true);
                emit(&WorkerMsg::Stats(ctx.tally.borrow().stats))?;
            }
            "away" => {
                let _ = away_tx.send(true);
                emit(&WorkerMsg::Stats(ctx.tally.borrow().stats))?;
            }
            "back" => {
                let _ = back_tx.send(true);
                emit(&WorkerMsg::Stats(ctx.tally.borrow().stats))?;
            }
            "report" => emit(&WorkerMsg::Report(Box::new(ctx.tally.borrow().report())))?,
            "stop" => break,
            other => bail!("unknown command {other:?}"),
        }
    }
    // Sockets close when the process exits; nothing else to flush.
    let _ = stop_tx.send(true);
    Ok(())
}

fn user_id(spec: &WorkerSpec, i: u32) -> String {
    run_user(&spec.run, spec.first_user + u64::from(i))
}

/// The user id of session `n` (counted over all client processes) of run `run`.
pub fn run_user(run: &str, n: u64) -> String {
    format!("lt-{run}-{n}")
}

/// One session: open it, then either hold it (counting frames) or play a climber.
async fn session(ctx: Rc<Ctx>, i: u32) {
    let user = user_id(&ctx.spec, i);
    let opened = open(&ctx, &user, None).await;
    let OpenStream {
        mut stream,
        token,
        started_us,
        micros,
        unread,
    } = match opened {
        Ok(opened) => opened,
        Err(err) => {
            let mut tally = ctx.tally.borrow_mut();
            tally.stats.failed += 1;
            tally.error(format!("open: {err:#}"));
            return;
        }
    };
    {
        let mut tally = ctx.tally.borrow_mut();
        tally.stats.opened += 1;
        tally.connects.push((started_us, micros));
    }
    if ctx.spec.climb.is_some()
        && let Err(err) = climb(&ctx, i, &mut stream, token.as_deref()).await
    {
        let mut tally = ctx.tally.borrow_mut();
        tally.stats.climb_errors += 1;
        tally.error(format!("climb: {err:#}"));
        if let Some(c) = tally.climbers.get_mut(i as usize) {
            c.error = Some(format!("{err:#}"));
        }
    }
    // After a resume: the last cursor it had to replay. Nothing new is stored after the storm,
    // so a stored event at or below it arriving later is one replayed twice.
    let mut replayed_up_to = None;
    if let Some(resume) = &ctx.spec.resume {
        match away_and_back(&ctx, &user, stream, token.as_deref(), unread, resume).await {
            Ok(Some((resumed, last))) => {
                stream = resumed;
                replayed_up_to = Some(last);
            }
            Ok(None) => return,
            Err(err) => {
                let mut tally = ctx.tally.borrow_mut();
                tally.stats.resume_failed += 1;
                tally.error(format!("resume: {err:#}"));
                return;
            }
        }
    }
    // Hold until told to stop, counting frames (and any late match_found).
    let mut stop = ctx.stop.clone();
    let ended = tokio::select! {
        _ = stop.wait_for(|s| *s) => None,
        ended = stream.frames(|frame| {
            let mut tally = ctx.tally.borrow_mut();
            tally.on_frame(frame);
            if lean::field(frame, b"event") == Some(&b"match_found"[..])
                && let Some(c) = tally.climbers.get_mut(i as usize)
            {
                c.found_frames += 1;
            }
            if let (Some(last), Some(cursor)) = (replayed_up_to, cursor_of(frame))
                && cursor <= last
            {
                tally.stats.replay_duplicates += 1;
            }
            ControlFlow::Continue(())
        }) => Some(ended),
    };
    if let Some(ended) = ended {
        count_drop(&ctx, ended, "dropped");
    }
}

/// Counts a stream that ended before the run told it to: the server closed it, or it failed.
fn count_drop(ctx: &Ctx, ended: Result<End>, what: &str) {
    let mut tally = ctx.tally.borrow_mut();
    tally.stats.dropped += 1;
    let why = match ended {
        Ok(_) => "server closed the stream".to_owned(),
        Err(err) => format!("{err:#}"),
    };
    tally.error(format!("{what}: {why}"));
}

/// A stream as it opened.
struct OpenStream {
    stream: SseStream,
    token: Option<String>,
    /// When opening started (µs since the epoch, after the wait for a turn).
    started_us: u64,
    /// How long it took (µs).
    micros: u64,
    /// Belay's `unread` frame: (count, the cursor it was taken at).
    unread: Option<(u64, i64)>,
}

/// Token (Belay), connection, and for Belay the `unread` frame that says the session is live.
/// A resume reuses the session's token and sends its last cursor as `Last-Event-ID`.
async fn open(ctx: &Ctx, user: &str, resume: Option<(&str, i64)>) -> Result<OpenStream> {
    let _permit = ctx.open_permits.acquire().await.context("open limiter")?;
    let started_us = adapter::now_us();
    let started = Instant::now();
    let spec = &ctx.spec;
    timeout(Duration::from_secs(spec.open_timeout_s), async {
        let token = if let Some((token, _)) = resume {
            Some(token.to_owned())
        } else if spec.server.needs_tokens() {
            let key = &spec.server.api_key;
            // One retry: a pooled keep-alive connection may be closed by the server just as
            // it is reused, which fails the request without it having been handled.
            let token = match common::dev_token(&ctx.api, &ctx.target, key, user).await {
                Ok(token) => token,
                Err(_) => common::dev_token(&ctx.api, &ctx.target, key, user).await?,
            };
            Some(token)
        } else {
            None
        };
        let mut request = spec
            .server
            .stream_request(token.as_deref(), Some(spec.source));
        if let Some((_, cursor)) = resume {
            request.headers.push(format!("Last-Event-ID: {cursor}"));
        }
        let mut stream = SseStream::open(&request).await?;
        let mut unread = None;
        if spec.server.waits_for_open_frame() {
            let server = &spec.server;
            let end = stream
                .frames(|frame| {
                    if server.is_open_frame(frame) {
                        unread = unread_of(frame);
                        ControlFlow::Break(())
                    } else {
                        ControlFlow::Continue(())
                    }
                })
                .await?;
            if matches!(end, End::Closed) {
                bail!("stream closed before its first event");
            }
        }
        Ok(OpenStream {
            stream,
            token,
            started_us,
            micros: micros(started.elapsed()),
            unread,
        })
    })
    .await
    .with_context(|| format!("not open within {} s", spec.open_timeout_s))?
}

/// The count and cursor of an `unread` frame.
fn unread_of(frame: &[u8]) -> Option<(u64, i64)> {
    let data: Value = serde_json::from_slice(lean::field(frame, b"data")?).ok()?;
    Some((data.get("count")?.as_u64()?, data.get("cursor")?.as_i64()?))
}

/// The cursor of a stored event's frame (its `id`).
fn cursor_of(frame: &[u8]) -> Option<i64> {
    std::str::from_utf8(lean::field(frame, b"id")?)
        .ok()?
        .parse()
        .ok()
}

/// Reconnect scenario: hold the stream, following its cursor, until `away`; close it; wait for
/// `back`; reopen with `Last-Event-ID` and read until every missed event has arrived, checking
/// the `unread` frame, order and duplicates on the way. Returns the resumed stream to hold with
/// the last cursor it replayed, or `None` if the first stream ended before `away` (counted as
/// dropped).
async fn away_and_back(
    ctx: &Ctx,
    user: &str,
    mut stream: SseStream,
    token: Option<&str>,
    first_unread: Option<(u64, i64)>,
    resume: &ResumeSpec,
) -> Result<Option<(SseStream, i64)>> {
    let (unread_before, mut position) = first_unread.unwrap_or((0, 0));
    let mut away = ctx.away.clone();
    let ended = tokio::select! {
        _ = away.wait_for(|a| *a) => None,
        ended = stream.frames(|frame| {
            ctx.tally.borrow_mut().on_frame(frame);
            if let Some(cursor) = cursor_of(frame) {
                position = position.max(cursor);
            }
            ControlFlow::Continue(())
        }) => Some(ended),
    };
    if let Some(ended) = ended {
        count_drop(ctx, ended, "dropped before away");
        return Ok(None);
    }
    drop(stream);
    ctx.tally.borrow_mut().stats.away += 1;
    let mut back = ctx.back.clone();
    back.wait_for(|b| *b).await.context("waiting for back")?;
    let storm_us = adapter::now_us();
    let token = token.context("a resume needs the session's token (Belay only)")?;
    let opened = open(ctx, user, Some((token, position))).await?;
    let target = position + i64::from(resume.missed);
    {
        let mut tally = ctx.tally.borrow_mut();
        tally.stats.resumed += 1;
        // Nothing was read meanwhile: the badge counts what was unread plus every missed event,
        // taken at a cursor at or past the last of them.
        let expected = unread_before + u64::from(resume.missed);
        if !matches!(opened.unread, Some((count, cursor)) if count == expected && cursor >= target)
        {
            tally.stats.unread_mismatches += 1;
            tally.error(format!(
                "unread frame {:?}, expected count {expected} at a cursor >= {target}",
                opened.unread
            ));
        }
    }
    let mut stream = opened.stream;
    let (mut next, mut replayed, mut duplicates, mut skipped) = (position + 1, 0u64, 0u64, 0u64);
    let read = if next > target {
        Ok(Ok(End::Stopped))
    } else {
        timeout(
            Duration::from_secs(ctx.spec.open_timeout_s),
            stream.frames(|frame| {
                ctx.tally.borrow_mut().on_frame(frame);
                if let Some(cursor) = cursor_of(frame) {
                    if cursor == next {
                        next += 1;
                        replayed += 1;
                    } else if cursor < next {
                        duplicates += 1;
                    } else {
                        skipped += u64::try_from(cursor - next).unwrap_or(0);
                        next = cursor + 1;
                        replayed += 1;
                    }
                }
                if next > target {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            }),
        )
        .await
    };
    let caught_up_us = adapter::now_us();
    let mut tally = ctx.tally.borrow_mut();
    tally.stats.replayed += replayed;
    tally.stats.replay_duplicates += duplicates;
    tally.stats.replay_skipped += skipped;
    let outcome = match read {
        Ok(Ok(End::Stopped)) => Ok(()),
        Ok(Ok(End::Closed)) => Err(anyhow::anyhow!("stream closed during the replay")),
        Ok(Err(err)) => Err(err.context("reading the replay")),
        Err(_) => Err(anyhow::anyhow!(
            "not caught up within {} s",
            ctx.spec.open_timeout_s
        )),
    };
    let caught = outcome.is_ok();
    tally.resumes.push(Resume {
        storm_us,
        asked_us: opened.started_us,
        to_unread_us: opened.micros,
        caught_up_us: if caught { caught_up_us } else { 0 },
    });
    if caught {
        tally.stats.caught_up += 1;
    }
    drop(tally);
    outcome.map(|()| Some((stream, target)))
}

/// The next frame of one of `kinds`: its kind and parsed data. Frames of other kinds are only
/// counted.
async fn next_event(ctx: &Ctx, stream: &mut SseStream, kinds: &[&str]) -> Result<(String, Value)> {
    let mut found: Option<(String, Value)> = None;
    let end = stream
        .frames(|frame| {
            ctx.tally.borrow_mut().on_frame(frame);
            let Some(kind) = lean::field(frame, b"event") else {
                return ControlFlow::Continue(());
            };
            let Some(kind) = kinds.iter().find(|k| k.as_bytes() == kind) else {
                return ControlFlow::Continue(());
            };
            let data = lean::field(frame, b"data")
                .and_then(|d| serde_json::from_slice(d).ok())
                .unwrap_or(Value::Null);
            found = Some(((*kind).to_owned(), data));
            ControlFlow::Break(())
        })
        .await?;
    match (end, found) {
        (End::Stopped, Some(event)) => Ok(event),
        _ => bail!("stream ended while waiting for {}", kinds.join(" or ")),
    }
}

/// A climber: wait for the go, join the queue, take match_found, press ready, take
/// match_confirmed.
async fn climb(ctx: &Ctx, i: u32, stream: &mut SseStream, token: Option<&str>) -> Result<()> {
    let Some(spec) = ctx.spec.climb.as_ref() else {
        return Ok(());
    };
    let token = token.context("a climber needs a token")?;
    let mut go = ctx.go.clone();
    go.wait_for(|g| *g).await.context("waiting for go")?;
    let update = |f: &dyn Fn(&mut Climber)| {
        if let Some(c) = ctx.tally.borrow_mut().climbers.get_mut(i as usize) {
            f(c);
        }
    };

    let joined_us = adapter::now_us();
    let joined = Instant::now();
    update(&|c| c.joined_us = joined_us);
    {
        let _permit = ctx.request_permits.acquire().await.context("limiter")?;
        post(
            ctx,
            token,
            "/v1/queue",
            json!({ "discipline": spec.discipline, "scope": spec.scope }),
        )
        .await?;
    }
    ctx.tally.borrow_mut().stats.joined += 1;

    let (_, data) = timeout(
        Duration::from_secs(60),
        next_event(ctx, stream, &["match_found"]),
    )
    .await
    .context("no match_found within 60 s")??;
    let found_after = micros(joined.elapsed());
    // A stored event's frame carries the notification; the kind's fields are under "data".
    let fields = &data["data"];
    let Some(match_id) = fields["match_id"].as_str().map(str::to_owned) else {
        bail!("match_found without a match_id: {data}");
    };
    let opponent = fields["opponent"].as_str().map(str::to_owned);
    {
        let mut tally = ctx.tally.borrow_mut();
        tally.stats.found += 1;
        if let Some(c) = tally.climbers.get_mut(i as usize) {
            c.found_after_us = Some(found_after);
            c.match_id = Some(match_id.clone());
            c.opponent = opponent.clone();
            c.found_frames += 1;
        }
    }
    if !spec.ready {
        return Ok(());
    }
    {
        let _permit = ctx.request_permits.acquire().await.context("limiter")?;
        post(
            ctx,
            token,
            &format!("/v1/matches/{match_id}/ready"),
            json!({}),
        )
        .await?;
    }
    loop {
        let (kind, _) = timeout(
            Duration::from_secs(60),
            next_event(ctx, stream, &["match_confirmed", "match_found"]),
        )
        .await
        .context("no match_confirmed within 60 s")??;
        if kind == "match_found" {
            update(&|c| c.found_frames += 1);
            continue;
        }
        break;
    }
    let confirmed_after = micros(joined.elapsed());
    ctx.tally.borrow_mut().stats.confirmed += 1;
    update(&|c| c.confirmed_after_us = Some(confirmed_after));
    if !spec.settle {
        return Ok(());
    }
    let me = user_id(&ctx.spec, i);
    let Some(opponent) = opponent else {
        bail!("match_found without an opponent: {data}");
    };
    let winner = if me <= opponent { me } else { opponent };
    {
        let _permit = ctx.request_permits.acquire().await.context("limiter")?;
        post(
            ctx,
            token,
            &format!("/v1/matches/{match_id}/result"),
            json!({ "winner": winner }),
        )
        .await?;
    }
    timeout(
        Duration::from_secs(60),
        next_event(ctx, stream, &["match_result"]),
    )
    .await
    .context("no match_result within 60 s")??;
    ctx.tally.borrow_mut().stats.settled += 1;
    Ok(())
}

async fn post(ctx: &Ctx, token: &str, path: &str, body: Value) -> Result<()> {
    let url = ctx.target.endpoint(path);
    let resp = ctx
        .api
        .post(&url)
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .with_context(|| format!("POST {path}"))?;
    if !resp.status().is_success() {
        bail!("POST {path}: {}", common::describe_error(resp).await);
    }
    Ok(())
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resume_position_comes_from_the_unread_frame_or_a_stored_events_id() {
        let unread = b"event: unread\ndata: {\"count\":2,\"cursor\":7,\"latest\":[]}";
        assert_eq!(unread_of(unread), Some((2, 7)));
        assert_eq!(cursor_of(unread), None, "the summary has no id");
        let event = b"id: 8\nevent: post_liked\ndata: {\"cursor\":8}";
        assert_eq!(cursor_of(event), Some(8));
        assert_eq!(unread_of(b"event: unread\ndata: {\"count\":2}"), None);
        assert_eq!(cursor_of(b"event: new_post\ndata: {}"), None, "a broadcast");
    }
}
