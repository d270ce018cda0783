//! `simulate` scenario: feeds Belay's pairing pool (no server) with Poisson arrivals in simulated
//! time and compares its default policy with grid-searched linear and step policies, FIFO and a
//! fixed 15-second batch, on wait, rating gap and the share of fair matches.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use belay::domain::{Discipline, UserId};
use belay::matchmaking::Millis;
use belay::matchmaking::policy::Policy;
use belay::matchmaking::pool::{Pool, QueueKey, Ticket};
use clap::{Args, value_parser};
use serde::Serialize;

/// Interval of the batch baseline: Nakama's default matchmaker interval (`interval_sec`).
const BATCH_INTERVAL_MS: Millis = 15_000;

/// Upper bound on arrivals per simulated run, so a typo in --rates cannot exhaust memory.
const MAX_ARRIVALS: f64 = 5_000_000.0;

/// The issue's targets for Belay's default: (arrivals/s, median s, p95 s, fair %).
const TARGETS: [(f64, f64, f64, f64); 2] = [(0.5, 3.0, 30.0, 80.0), (2.0, 1.0, 12.0, 93.0)];

/// The issue's best simple policy at the same rates: (arrivals/s, median s, p95 s, fair %).
const ISSUE_SIMPLE_BEST: [(f64, f64, f64, f64); 2] =
    [(0.5, 3.0, 35.0, 81.0), (2.0, 0.3, 14.0, 93.0)];

/// Grid of the linear baseline: initial window × widening per second × cap.
const LINEAR_INITIAL: [f64; 5] = [0.0, 35.0, 50.0, 70.0, 100.0];
const LINEAR_PER_SEC: [f64; 10] = [1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 32.0, 64.0];
const LINEAR_CAP: [f64; 5] = [150.0, 200.0, 300.0, 600.0, f64::INFINITY];

/// Grid of the step baseline: narrow width × wait before the step (ms) × wide width.
const STEP_NARROW: [f64; 5] = [35.0, 50.0, 70.0, 80.0, 100.0];
const STEP_AFTER_MS: [Millis; 11] = [
    2_000, 3_000, 5_000, 7_000, 10_000, 12_000, 15_000, 20_000, 25_000, 30_000, 45_000,
];
const STEP_WIDE: [f64; 5] = [150.0, 200.0, 300.0, 600.0, f64::INFINITY];

#[derive(Debug, Args)]
pub struct SimulateArgs {
    /// Arrival rates to simulate, in players per second (comma-separated).
    #[arg(long, value_delimiter = ',', default_values_t = [0.1, 0.5, 2.0])]
    pub rates: Vec<f64>,
    /// Simulated hours of one run.
    #[arg(long, default_value_t = 2.0)]
    pub hours: f64,
    /// Independent runs per rate (seeds seed, seed+1, ...); their players are pooled.
    #[arg(long, default_value_t = 5, value_parser = value_parser!(u32).range(1..=100))]
    pub runs: u32,
    /// Seed of the arrival times and ratings: the same seed gives the same table.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Mean of the players' ratings.
    #[arg(long, default_value_t = 1500.0)]
    pub rating_mean: f64,
    /// Standard deviation of the players' ratings.
    #[arg(long, default_value_t = 350.0)]
    pub rating_sd: f64,
    /// Players still unmatched after this many seconds leave the queue; 0: nobody leaves.
    #[arg(long, default_value_t = 0)]
    pub abandon_after: u64,
    /// Tick the pool every this many ms; 0: tick exactly when `next_tick_at` says.
    #[arg(long, default_value_t = 0)]
    pub tick_ms: u64,
    /// Policy of the "Belay" row as JSON, e.g. '{"hold_ms": 8000}' (unset fields: the default).
    #[arg(long, value_name = "JSON")]
    pub policy: Option<String>,
    /// Skip the grid search of the linear and step baselines.
    #[arg(long)]
    pub no_grid: bool,
    /// Also print Belay's numbers per rating band (distance from the mean in standard deviations).
    #[arg(long)]
    pub breakdown: bool,
    /// Also write the tables as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
}

pub fn run(args: SimulateArgs) -> Result<()> {
    let belay: Policy = match &args.policy {
        Some(json) => serde_json::from_str(json).context("parsing --policy")?,
        None => Policy::default(),
    };
    let positive = |x: f64| x.is_finite() && x > 0.0;
    let sd_ok = args.rating_sd.is_finite() && args.rating_sd >= 0.0;
    if !positive(args.hours) || !sd_ok {
        bail!("--hours must be positive and --rating-sd not negative");
    }
    let started = std::time::Instant::now();
    let mut reports = Vec::new();
    for &rate in &args.rates {
        if !positive(rate) || rate * args.hours * 3600.0 > MAX_ARRIVALS {
            bail!("rate {rate}/s gives no arrivals or more than {MAX_ARRIVALS} per run");
        }
        let sessions = (0..args.runs)
            .map(|run| Session::generate(&args, rate, args.seed.wrapping_add(u64::from(run))))
            .collect::<Result<Vec<_>>>()?;
        let report = RateReport::measure(&args, rate, &belay, &sessions);
        report.print(&args);
        reports.push(report);
    }
    eprintln!("simulated in {:.1} s", started.elapsed().as_secs_f64());
    if let Some(path) = &args.json {
        let file =
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
        serde_json::to_writer_pretty(std::io::BufWriter::new(file), &reports)
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

/// SplitMix64: a tiny deterministic generator, plenty for arrival times and ratings.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1]: never 0, so its logarithm is finite.
    fn unit(&mut self) -> f64 {
        ((self.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64
    }

    fn exponential(&mut self, per_sec: f64) -> f64 {
        -self.unit().ln() / per_sec
    }

    /// Box-Muller; the second value of each pair is dropped to keep the stream simple.
    fn normal(&mut self, mean: f64, sd: f64) -> f64 {
        let (u1, u2) = (self.unit(), self.unit());
        mean + sd * (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
}

/// One simulated session: everyone who arrives, in order.
struct Session {
    players: Vec<Player>,
    end: Millis,
}

struct Player {
    user: UserId,
    rating: f64,
    at: Millis,
}

impl Session {
    fn generate(args: &SimulateArgs, rate: f64, seed: u64) -> Result<Self> {
        let mut rng = SplitMix64(seed ^ rate.to_bits().rotate_left(17));
        let end_secs = args.hours * 3600.0;
        let mut players = Vec::new();
        let mut t = rng.exponential(rate);
        while t < end_secs {
            let user = UserId::parse(format!("p{}", players.len())).map_err(anyhow::Error::msg)?;
            let rating = rng.normal(args.rating_mean, args.rating_sd);
            players.push(Player {
                user,
                rating,
                at: (t * 1000.0) as Millis,
            });
            t += rng.exponential(rate);
        }
        Ok(Self {
            players,
            end: (end_secs * 1000.0) as Millis,
        })
    }
}

/// What a matcher under test must do; the pool and the two baselines implement it.
trait Matcher {
    fn join(&mut self, ticket: Ticket, now: Millis, out: &mut Vec<(Ticket, Ticket)>);
    fn leave(&mut self, user: &UserId) -> bool;
    fn tick(&mut self, now: Millis, out: &mut Vec<(Ticket, Ticket)>);
    fn next_tick_at(&self, now: Millis) -> Option<Millis>;
    fn waiting(&self) -> Vec<Ticket>;
}

fn queue() -> QueueKey {
    QueueKey {
        discipline: Discipline::Boulder,
        scope: None,
    }
}

struct PoolMatcher {
    pool: Pool,
    /// Fixed tick interval; 0: trust `next_tick_at`.
    tick_ms: Millis,
}

impl Matcher for PoolMatcher {
    fn join(&mut self, ticket: Ticket, now: Millis, out: &mut Vec<(Ticket, Ticket)>) {
        // Every simulated player is new, so AlreadyQueued cannot happen.
        if let Ok(Some(pairing)) = self.pool.join(queue(), ticket, now) {
            out.push((pairing.a, pairing.b));
        }
    }

    fn leave(&mut self, user: &UserId) -> bool {
        self.pool.leave(user).is_some()
    }

    fn tick(&mut self, now: Millis, out: &mut Vec<(Ticket, Ticket)>) {
        out.extend(self.pool.tick(now).into_iter().map(|p| (p.a, p.b)));
    }

    fn next_tick_at(&self, now: Millis) -> Option<Millis> {
        if self.tick_ms > 0 {
            return (!self.pool.is_empty()).then(|| (now / self.tick_ms + 1) * self.tick_ms);
        }
        self.pool.next_tick_at(now)
    }

    fn waiting(&self) -> Vec<Ticket> {
        self.pool.iter().map(|(_, t)| t.clone()).collect()
    }
}

/// Pairs each arrival with whoever is waiting, whatever the ratings.
#[derive(Default)]
struct Fifo {
    waiting: Option<Ticket>,
}

impl Matcher for Fifo {
    fn join(&mut self, ticket: Ticket, _now: Millis, out: &mut Vec<(Ticket, Ticket)>) {
        match self.waiting.take() {
            Some(first) => out.push((first, ticket)),
            None => self.waiting = Some(ticket),
        }
    }

    fn leave(&mut self, user: &UserId) -> bool {
        let here = self.waiting.as_ref().is_some_and(|t| &t.user == user);
        if here {
            self.waiting = None;
        }
        here
    }

    fn tick(&mut self, _now: Millis, _out: &mut Vec<(Ticket, Ticket)>) {}

    fn next_tick_at(&self, _now: Millis) -> Option<Millis> {
        None
    }

    fn waiting(&self) -> Vec<Ticket> {
        self.waiting.iter().cloned().collect()
    }
}

/// Every 15 s, sorts the waiting tickets by rating and pairs neighbours (Nakama's interval).
/// With an odd count, the ticket left over is the one whose absence makes the gaps smallest.
#[derive(Default)]
struct Batch {
    waiting: Vec<Ticket>,
}

impl Matcher for Batch {
    fn join(&mut self, ticket: Ticket, _now: Millis, _out: &mut Vec<(Ticket, Ticket)>) {
        self.waiting.push(ticket);
    }

    fn leave(&mut self, user: &UserId) -> bool {
        let before = self.waiting.len();
        self.waiting.retain(|t| &t.user != user);
        self.waiting.len() != before
    }

    fn tick(&mut self, now: Millis, out: &mut Vec<(Ticket, Ticket)>) {
        if now % BATCH_INTERVAL_MS != 0 || self.waiting.len() < 2 {
            return;
        }
        let mut sorted = std::mem::take(&mut self.waiting);
        sorted.sort_by(|x, y| x.rating.total_cmp(&y.rating));
        let skip = (sorted.len() % 2 == 1).then(|| best_left_out(&sorted));
        let mut rest = sorted
            .into_iter()
            .enumerate()
            .filter_map(|(i, t)| {
                if Some(i) == skip {
                    self.waiting.push(t);
                    None
                } else {
                    Some(t)
                }
            })
            .collect::<Vec<_>>()
            .into_iter();
        while let (Some(x), Some(y)) = (rest.next(), rest.next()) {
            let (a, b) = if x.queued_at <= y.queued_at {
                (x, y)
            } else {
                (y, x)
            };
            out.push((a, b));
        }
    }

    fn next_tick_at(&self, now: Millis) -> Option<Millis> {
        Some((now / BATCH_INTERVAL_MS + 1) * BATCH_INTERVAL_MS)
    }

    fn waiting(&self) -> Vec<Ticket> {
        self.waiting.clone()
    }
}

/// Index (even, in a sorted odd-length list) whose removal minimises the sum of neighbour gaps.
fn best_left_out(sorted: &[Ticket]) -> usize {
    let gap = |i: usize| sorted[i + 1].rating - sorted[i].rating;
    // Leaving out k (even) pairs (0,1)…(k-2,k-1) and (k+1,k+2)…: prefix and suffix sums.
    let n = sorted.len();
    let mut suffix = vec![0.0; n + 2];
    for i in (1..n.saturating_sub(1)).step_by(2).rev() {
        suffix[i] = gap(i) + suffix[i + 2];
    }
    let (mut best, mut best_cost, mut prefix) = (0, f64::INFINITY, 0.0);
    for k in (0..n).step_by(2) {
        let cost = prefix + suffix[k + 1];
        // `<=`: on a tie leave out the higher rating, as a plain left-to-right pairing would.
        if cost <= best_cost {
            (best, best_cost) = (k, cost);
        }
        if k + 1 < n {
            prefix += gap(k);
        }
    }
    best
}

/// Numbers of one policy at one rate, all runs pooled.
#[derive(Debug, Clone, Serialize)]
struct Outcome {
    label: String,
    policy: String,
    matches: u64,
    /// Percentiles over every player who arrived: matched players at their wait, players still
    /// waiting (or who abandoned) at the time they had waited, so starving people shows.
    median_wait_s: f64,
    p95_wait_s: f64,
    mean_gap: f64,
    fair_pct: f64,
    waiting_at_end: u64,
    oldest_waiting_s: f64,
    abandoned: u64,
}

/// The Elo win chance of the lower-rated player of a match with this gap.
fn win_chance(gap: f64) -> f64 {
    1.0 / (1.0 + 10f64.powf(gap / 400.0))
}

fn is_fair(gap: f64) -> bool {
    (0.4..=0.6).contains(&win_chance(gap))
}

/// What became of one player: their rating, how long they waited, and how it ended.
#[derive(Debug, Clone, Copy)]
struct Fate {
    rating: f64,
    wait: Millis,
    end: End,
}

#[derive(Debug, Clone, Copy)]
enum End {
    /// Matched, with this rating gap.
    Matched(f64),
    /// Left after --abandon-after seconds.
    Abandoned,
    /// Still waiting when the session ended.
    Waiting,
}

/// Plays every session through a fresh matcher and returns each player's fate.
fn play(
    args: &SimulateArgs,
    sessions: &[Session],
    mut make: impl FnMut() -> Box<dyn Matcher>,
) -> Vec<Fate> {
    let abandon_ms = Millis::try_from(args.abandon_after)
        .unwrap_or(Millis::MAX)
        .saturating_mul(1000);
    let mut fates = Vec::new();
    let mut pairs = Vec::new();
    for session in sessions {
        let mut matcher = make();
        let mut next_player = 0;
        // Arrival order is queue-time order, so the next to abandon is the oldest still queued.
        let mut next_abandon = 0;
        let mut now = 0;
        loop {
            let arrival = session.players.get(next_player).map(|p| p.at);
            let wake = matcher.next_tick_at(now);
            let give_up = if abandon_ms > 0 {
                session
                    .players
                    .get(next_abandon)
                    .filter(|_| next_abandon < next_player)
                    .map(|p| p.at.saturating_add(abandon_ms))
            } else {
                None
            };
            let Some(t) = [arrival, wake, give_up].into_iter().flatten().min() else {
                break;
            };
            if t >= session.end {
                break;
            }
            now = t;
            if give_up == Some(t) {
                let player = &session.players[next_abandon];
                if matcher.leave(&player.user) {
                    fates.push(Fate {
                        rating: player.rating,
                        wait: t - player.at,
                        end: End::Abandoned,
                    });
                }
                next_abandon += 1;
            }
            if wake.is_some_and(|w| w <= t) {
                matcher.tick(now, &mut pairs);
            }
            if arrival == Some(t) {
                let player = &session.players[next_player];
                let ticket = Ticket {
                    user: player.user.clone(),
                    rating: player.rating,
                    queued_at: player.at,
                };
                matcher.join(ticket, now, &mut pairs);
                next_player += 1;
            }
            for (a, b) in pairs.drain(..) {
                let gap = (a.rating - b.rating).abs();
                for t in [a, b] {
                    fates.push(Fate {
                        rating: t.rating,
                        wait: now - t.queued_at,
                        end: End::Matched(gap),
                    });
                }
            }
        }
        // Still waiting: counted at their wait so far, so starving people shows in the waits.
        for ticket in matcher.waiting() {
            fates.push(Fate {
                rating: ticket.rating,
                wait: session.end - ticket.queued_at,
                end: End::Waiting,
            });
        }
    }
    fates
}

/// Numbers of a set of players (all of a run, or one rating band).
struct Summary {
    players: u64,
    /// Matched players; matches when all players are counted is half of it.
    matched: u64,
    waiting: u64,
    abandoned: u64,
    median_wait_s: f64,
    p95_wait_s: f64,
    oldest_waiting_s: f64,
    /// Per matched player, which is per match when whole runs are summarized.
    mean_gap: f64,
    fair_pct: f64,
}

fn summarize<'a>(fates: impl Iterator<Item = &'a Fate>) -> Summary {
    let (mut waits, mut matched, mut gap_sum, mut fair) = (Vec::new(), 0u64, 0.0, 0u64);
    let (mut waiting, mut abandoned, mut oldest) = (0u64, 0u64, 0);
    for fate in fates {
        waits.push(fate.wait);
        match fate.end {
            End::Matched(gap) => {
                matched += 1;
                gap_sum += gap;
                fair += u64::from(is_fair(gap));
            }
            End::Abandoned => abandoned += 1,
            End::Waiting => {
                waiting += 1;
                oldest = oldest.max(fate.wait);
            }
        }
    }
    waits.sort_unstable();
    let percentile = |p: f64| {
        if waits.is_empty() {
            return f64::NAN;
        }
        let rank = ((p * waits.len() as f64).ceil() as usize).clamp(1, waits.len());
        waits[rank - 1] as f64 / 1000.0
    };
    let per_matched = |x: f64| {
        if matched == 0 {
            f64::NAN
        } else {
            x / matched as f64
        }
    };
    Summary {
        players: waits.len() as u64,
        matched,
        waiting,
        abandoned,
        median_wait_s: percentile(0.5),
        p95_wait_s: percentile(0.95),
        oldest_waiting_s: oldest as f64 / 1000.0,
        mean_gap: per_matched(gap_sum),
        fair_pct: per_matched(fair as f64 * 100.0),
    }
}

fn simulate(
    args: &SimulateArgs,
    sessions: &[Session],
    label: &str,
    policy: String,
    make: impl FnMut() -> Box<dyn Matcher>,
) -> Outcome {
    outcome(label, policy, &play(args, sessions, make))
}

fn outcome(label: &str, policy: String, fates: &[Fate]) -> Outcome {
    let all = summarize(fates.iter());
    Outcome {
        label: label.to_owned(),
        policy,
        matches: all.matched / 2,
        median_wait_s: all.median_wait_s,
        p95_wait_s: all.p95_wait_s,
        mean_gap: all.mean_gap,
        fair_pct: all.fair_pct,
        waiting_at_end: all.waiting,
        oldest_waiting_s: all.oldest_waiting_s,
        abandoned: all.abandoned,
    }
}

fn pool_fates(args: &SimulateArgs, sessions: &[Session], policy: &Policy) -> Vec<Fate> {
    let tick_ms = Millis::try_from(args.tick_ms).unwrap_or(Millis::MAX);
    play(args, sessions, || {
        Box::new(PoolMatcher {
            pool: Pool::new(policy.clone()),
            tick_ms,
        })
    })
}

fn pool_outcome(
    args: &SimulateArgs,
    sessions: &[Session],
    label: &str,
    policy: &Policy,
) -> Outcome {
    outcome(label, describe(policy), &pool_fates(args, sessions, policy))
}

/// Edges of the rating bands of --breakdown, in standard deviations from the mean.
const BAND_EDGES: [f64; 6] = [0.0, 1.0, 1.5, 2.0, 2.5, f64::INFINITY];

/// Belay's numbers for the players of one rating band.
#[derive(Debug, Serialize)]
struct BandRow {
    /// |rating - mean| / sd in [from_sd, to_sd).
    from_sd: f64,
    to_sd: f64,
    players_pct: f64,
    median_wait_s: f64,
    p95_wait_s: f64,
    /// Share of this band's matched players whose match was fair.
    fair_pct: f64,
    mean_gap: f64,
    waiting_at_end: u64,
}

fn by_band(args: &SimulateArgs, fates: &[Fate]) -> Vec<BandRow> {
    let z = |f: &Fate| ((f.rating - args.rating_mean) / args.rating_sd).abs();
    BAND_EDGES
        .windows(2)
        .map(|edge| {
            let band = summarize(fates.iter().filter(|f| (edge[0]..edge[1]).contains(&z(f))));
            BandRow {
                from_sd: edge[0],
                to_sd: edge[1],
                players_pct: band.players as f64 * 100.0 / fates.len().max(1) as f64,
                median_wait_s: band.median_wait_s,
                p95_wait_s: band.p95_wait_s,
                fair_pct: band.fair_pct,
                mean_gap: band.mean_gap,
                waiting_at_end: band.waiting,
            }
        })
        .collect()
}

fn describe(policy: &Policy) -> String {
    let cap = if policy.max_window.is_finite() {
        format!(", cap {}", policy.max_window)
    } else {
        String::new()
    };
    let secs = |ms: Millis| ms as f64 / 1000.0;
    if policy.sparse_share > 0.0 {
        let hold = if policy.hold_rate_exponent != 0.0 {
            format!(
                "{} s x (rate/{})^{} <= {} s",
                secs(policy.hold_ms),
                policy.hold_rate_per_sec,
                policy.hold_rate_exponent,
                secs(policy.max_hold_ms)
            )
        } else {
            format!("{} s", secs(policy.hold_ms))
        };
        format!(
            "{} for {hold} ({} s where < {}% of joins are fair opponents), then +{}/s{cap}",
            policy.initial_window,
            secs(policy.sparse_hold_ms),
            policy.sparse_share * 100.0,
            policy.widen_per_sec
        )
    } else if policy.widen_per_sec == 0.0 {
        format!(
            "{} then {} after {} s",
            policy.initial_window,
            policy.initial_window + policy.step,
            secs(policy.hold_ms)
        )
    } else {
        format!("{} +{}/s{cap}", policy.initial_window, policy.widen_per_sec)
    }
}

fn linear_grid() -> Vec<Policy> {
    let mut grid = Vec::new();
    for initial in LINEAR_INITIAL {
        for per_sec in LINEAR_PER_SEC {
            for cap in LINEAR_CAP {
                grid.push(Policy::linear(initial, per_sec, cap));
            }
        }
    }
    grid
}

fn step_grid() -> Vec<Policy> {
    let mut grid = Vec::new();
    for narrow in STEP_NARROW {
        for after in STEP_AFTER_MS {
            for wide in STEP_WIDE {
                grid.push(Policy::steps(narrow, after, wide));
            }
        }
    }
    grid
}

/// Runs every policy of the grid on the sessions, on all cores.
fn run_grid(args: &SimulateArgs, sessions: &[Session], grid: &[Policy]) -> Vec<Outcome> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = grid.len().div_ceil(threads).max(1);
    std::thread::scope(|scope| {
        let handles: Vec<_> = grid
            .chunks(chunk)
            .map(|policies| {
                scope.spawn(move || {
                    policies
                        .iter()
                        .map(|p| pool_outcome(args, sessions, "", p))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        // A panicking worker is a bug in the pool: let it surface.
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    })
}

/// The grid's best by the two criteria, compared with Belay's row.
fn best_of(grid: &[Outcome], belay: &Outcome, family: &str) -> [Outcome; 2] {
    let none = |label: String| Outcome {
        label,
        policy: "no grid point qualifies".to_owned(),
        matches: 0,
        median_wait_s: f64::NAN,
        p95_wait_s: f64::NAN,
        mean_gap: f64::NAN,
        fair_pct: f64::NAN,
        waiting_at_end: 0,
        oldest_waiting_s: f64::NAN,
        abandoned: 0,
    };
    // Most fair among those that keep p95 as low as Belay's (ties: lower median, then p95).
    let by_fair = format!("best {family}: max fair, p95 <= Belay's");
    let most_fair = grid
        .iter()
        .filter(|o| o.p95_wait_s <= belay.p95_wait_s)
        .max_by(|x, y| {
            x.fair_pct
                .total_cmp(&y.fair_pct)
                .then(y.median_wait_s.total_cmp(&x.median_wait_s))
                .then(y.p95_wait_s.total_cmp(&x.p95_wait_s))
        })
        .map_or_else(
            || none(by_fair.clone()),
            |o| Outcome {
                label: by_fair.clone(),
                ..o.clone()
            },
        );
    // Quickest p95 among those at least as fair as Belay (ties: lower median, then more fair).
    let by_wait = format!("best {family}: min p95, fair >= Belay's");
    let quickest = grid
        .iter()
        .filter(|o| o.fair_pct >= belay.fair_pct)
        .min_by(|x, y| {
            x.p95_wait_s
                .total_cmp(&y.p95_wait_s)
                .then(x.median_wait_s.total_cmp(&y.median_wait_s))
                .then(y.fair_pct.total_cmp(&x.fair_pct))
        })
        .map_or_else(
            || none(by_wait.clone()),
            |o| Outcome {
                label: by_wait.clone(),
                ..o.clone()
            },
        );
    [most_fair, quickest]
}

/// One table: every row at one arrival rate.
#[derive(Debug, Serialize)]
struct RateReport {
    arrivals_per_sec: f64,
    hours_per_run: f64,
    runs: u32,
    players: u64,
    grid_points: usize,
    rows: Vec<Outcome>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    belay_by_band: Vec<BandRow>,
}

impl RateReport {
    fn measure(args: &SimulateArgs, rate: f64, belay: &Policy, sessions: &[Session]) -> Self {
        let fates = pool_fates(args, sessions, belay);
        let own = outcome("Belay default", describe(belay), &fates);
        let belay_by_band = if args.breakdown {
            by_band(args, &fates)
        } else {
            Vec::new()
        };
        let mut rows = vec![own.clone()];
        let mut grid_points = 0;
        if !args.no_grid {
            for (family, grid) in [("linear", linear_grid()), ("step", step_grid())] {
                grid_points += grid.len();
                rows.extend(best_of(&run_grid(args, sessions, &grid), &own, family));
            }
        }
        rows.push(simulate(
            args,
            sessions,
            "FIFO",
            "two longest waiting, at once".into(),
            || Box::new(Fifo::default()),
        ));
        rows.push(simulate(
            args,
            sessions,
            "batch every 15 s",
            "sort by rating, pair neighbours".into(),
            || Box::new(Batch::default()),
        ));
        Self {
            arrivals_per_sec: rate,
            hours_per_run: args.hours,
            runs: args.runs,
            players: sessions.iter().map(|s| s.players.len() as u64).sum(),
            grid_points,
            rows,
            belay_by_band,
        }
    }

    fn print(&self, args: &SimulateArgs) {
        println!();
        println!(
            "{} arrivals/s, ratings N({}, {}), {} run(s) x {} h, {} players; fair = win chance \
             40-60% (gap <= 70.4){}",
            self.arrivals_per_sec,
            args.rating_mean,
            args.rating_sd,
            self.runs,
            self.hours_per_run,
            self.players,
            if args.abandon_after > 0 {
                format!("; players leave after {} s", args.abandon_after)
            } else {
                String::new()
            },
        );
        // The "left" column only when players may abandon (--abandon-after).
        let abandons = args.abandon_after > 0;
        let left = |n: u64| {
            if abandons {
                format!(" {n:>6}")
            } else {
                String::new()
            }
        };
        println!(
            "  {:<38} {:>7} {:>7} {:>7} {:>6} {:>6} {:>7} {:>8}{}  policy",
            "",
            "matches",
            "median",
            "p95",
            "gap",
            "fair",
            "waiting",
            "oldest",
            if abandons { "   left" } else { "" }
        );
        for o in &self.rows {
            println!(
                "  {:<38} {:>7} {:>6.1}s {:>6.1}s {:>6.1} {:>5.1}% {:>7} {:>7.0}s{}  {}",
                o.label,
                o.matches,
                o.median_wait_s,
                o.p95_wait_s,
                o.mean_gap,
                o.fair_pct,
                o.waiting_at_end,
                o.oldest_waiting_s,
                left(o.abandoned),
                o.policy
            );
        }
        if self.grid_points > 0 {
            println!(
                "  best of {} linear and {} step policies: \"max fair\" = the fairest whose p95 is \
                 no worse than Belay's; \"min p95\" = the shortest p95 at least as fair as \
                 Belay's (ties: lower median)",
                linear_grid().len(),
                step_grid().len()
            );
        }
        if let Some(own) = self.rows.first() {
            self.print_targets(own);
        }
        if !self.belay_by_band.is_empty() {
            println!("  Belay default by rating band (distance from the mean rating):");
            println!(
                "    {:<12} {:>8} {:>7} {:>7} {:>6} {:>6} {:>7}",
                "band", "players", "median", "p95", "gap", "fair", "waiting"
            );
            for b in &self.belay_by_band {
                let band = if b.to_sd.is_finite() {
                    format!("{}-{} sd", b.from_sd, b.to_sd)
                } else {
                    format!(">= {} sd", b.from_sd)
                };
                println!(
                    "    {:<12} {:>7.1}% {:>6.1}s {:>6.1}s {:>6.1} {:>5.1}% {:>7}",
                    band,
                    b.players_pct,
                    b.median_wait_s,
                    b.p95_wait_s,
                    b.mean_gap,
                    b.fair_pct,
                    b.waiting_at_end
                );
            }
        }
    }

    fn print_targets(&self, own: &Outcome) {
        let rate = self.arrivals_per_sec;
        if let Some(&(_, median, p95, fair)) = TARGETS.iter().find(|t| t.0 == rate) {
            // How far inside (positive) or outside (negative) each target Belay's default is.
            let verdict = |margin: f64, unit: &str| {
                if margin >= 0.0 {
                    "met".to_owned()
                } else {
                    format!("MISSED by {:.2}{unit}", -margin)
                }
            };
            println!(
                "  targets: median {:.2} s <= {median} s {}; p95 {:.2} s <= {p95} s {}; \
                 fair {:.2}% >= {fair}% {}",
                own.median_wait_s,
                verdict(median - own.median_wait_s, " s"),
                own.p95_wait_s,
                verdict(p95 - own.p95_wait_s, " s"),
                own.fair_pct,
                verdict(own.fair_pct - fair, " points"),
            );
        }
        if let Some(&(_, median, p95, fair)) = ISSUE_SIMPLE_BEST.iter().find(|t| t.0 == rate) {
            println!("  issue's best simple policy: median {median} s, p95 {p95} s, {fair}% fair");
        }
        println!(
            "  waits count everyone who arrived (still waiting: their wait so far); gap and fair \
             are per match; waiting/oldest: unmatched at the end of the runs"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tickets(ratings: &[f64]) -> Vec<Ticket> {
        ratings
            .iter()
            .enumerate()
            .map(|(i, &rating)| Ticket {
                user: UserId::parse(format!("u{i}")).unwrap(),
                rating,
                queued_at: 0,
            })
            .collect()
    }

    #[test]
    fn batch_leaves_out_the_ticket_that_keeps_gaps_smallest() {
        assert_eq!(best_left_out(&tickets(&[1.0])), 0);
        assert_eq!(best_left_out(&tickets(&[0.0, 10.0, 11.0])), 0);
        assert_eq!(best_left_out(&tickets(&[0.0, 1.0, 50.0])), 2);
        assert_eq!(best_left_out(&tickets(&[0.0, 1.0, 50.0, 99.0, 100.0])), 2);
    }

    #[test]
    fn the_generator_gives_the_requested_mean_and_spread() {
        let mut rng = SplitMix64(7);
        let xs: Vec<f64> = (0..100_000).map(|_| rng.normal(1500.0, 350.0)).collect();
        let mean = xs.iter().sum::<f64>() / xs.len() as f64;
        let sd = (xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / xs.len() as f64).sqrt();
        assert!((mean - 1500.0).abs() < 5.0, "mean {mean}");
        assert!((sd - 350.0).abs() < 5.0, "sd {sd}");
    }

    #[test]
    fn seventy_points_is_the_edge_of_fair() {
        assert!(is_fair(0.0));
        assert!(is_fair(70.0));
        assert!(!is_fair(71.0));
    }
}
