//! Throughput of the pairing pool: a join/leave/tick mix replayed on a pool that holds about
//! 1,000 waiting tickets spread over 240 queues (3 disciplines x 80 gyms), default policy.
// A benchmark is not a test target: clippy.toml's unwrap allowance does not reach it.
#![expect(
    clippy::unwrap_used,
    reason = "fixed, valid ids and a scenario that always records"
)]

use std::hint::black_box;

use belay::domain::{Discipline, Scope, UserId};
use belay::matchmaking::Millis;
use belay::matchmaking::policy::Policy;
use belay::matchmaking::pool::{Pool, QueueKey, Ticket};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};

/// Gyms per discipline: each (discipline, gym) is one queue.
const GYMS: usize = 80;
/// Joins per simulated second over all queues; with the default policy about 1,000 wait.
const JOINS_PER_SEC: f64 = 550.0;
/// Leaves per simulated second (players who give up), taken at random among those waiting.
const LEAVES_PER_SEC: f64 = 40.0;
/// How often the matchmaker ticks, in simulated ms.
const TICK_EVERY_MS: Millis = 20;
/// Simulated time run before the measured operations, to reach a steady pool.
const WARMUP_MS: Millis = 120_000;
/// Operations replayed per benchmark iteration.
const MEASURED_OPS: usize = 20_000;

#[derive(Clone)]
enum Op {
    Join(QueueKey, Ticket),
    Leave(UserId),
    Tick,
}

/// SplitMix64, as in the simulator: deterministic and dependency-free.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn unit(&mut self) -> f64 {
        ((self.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64
    }

    fn after_ms(&mut self, per_sec: f64) -> f64 {
        -self.unit().ln() / per_sec * 1000.0
    }

    fn rating(&mut self) -> f64 {
        let (u1, u2) = (self.unit(), self.unit());
        1500.0 + 350.0 * (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
}

/// Runs the mix through a pool: first the warmup, then records `MEASURED_OPS` operations.
/// Returns the pool as it was before the recorded operations, the operations with their
/// times, and the mean number of waiting tickets while they ran.
fn scenario() -> (Pool, Vec<(Millis, Op)>, f64) {
    let queues: Vec<QueueKey> = [Discipline::Boulder, Discipline::Lead, Discipline::Speed]
        .into_iter()
        .flat_map(|discipline| {
            (0..GYMS).map(move |gym| QueueKey {
                discipline,
                scope: Some(Scope::parse(format!("gym-{gym}")).unwrap()),
            })
        })
        .collect();
    let mut rng = Rng(42);
    let mut pool = Pool::new(Policy::default());
    let mut start = None;
    let mut ops = Vec::with_capacity(MEASURED_OPS);
    let (mut next_join, mut next_leave, mut next_tick) = (0.0, rng.after_ms(LEAVES_PER_SEC), 0);
    let (mut users, mut waiting_sum) = (0u64, 0.0);
    while ops.len() < MEASURED_OPS {
        let now = (next_join as Millis)
            .min(next_leave as Millis)
            .min(next_tick);
        let op = if now == next_tick {
            next_tick += TICK_EVERY_MS;
            Op::Tick
        } else if now == next_join as Millis {
            next_join += rng.after_ms(JOINS_PER_SEC);
            users += 1;
            let queue = queues[(rng.next_u64() % queues.len() as u64) as usize].clone();
            let ticket = Ticket {
                user: UserId::parse(format!("user-{users}")).unwrap(),
                rating: rng.rating(),
                queued_at: now,
            };
            Op::Join(queue, ticket)
        } else {
            next_leave += rng.after_ms(LEAVES_PER_SEC);
            let nth = (rng.next_u64() % pool.len().max(1) as u64) as usize;
            match pool.iter().nth(nth) {
                Some((_, ticket)) => Op::Leave(ticket.user.clone()),
                None => continue,
            }
        };
        if now >= WARMUP_MS {
            if start.is_none() {
                start = Some(pool.clone());
            }
            ops.push((now, op.clone()));
            waiting_sum += pool.len() as f64;
        }
        apply(&mut pool, now, op);
    }
    (start.unwrap(), ops, waiting_sum / MEASURED_OPS as f64)
}

fn apply(pool: &mut Pool, now: Millis, op: Op) -> usize {
    match op {
        Op::Join(queue, ticket) => {
            usize::from(pool.join(queue, ticket, now).ok().flatten().is_some())
        }
        Op::Leave(user) => usize::from(pool.leave(&user).is_some()),
        Op::Tick => pool.tick(now).len(),
    }
}

fn join_leave_tick(c: &mut Criterion) {
    let (pool, ops, mean_waiting) = scenario();
    let joins = ops
        .iter()
        .filter(|(_, op)| matches!(op, Op::Join(..)))
        .count();
    let leaves = ops
        .iter()
        .filter(|(_, op)| matches!(op, Op::Leave(_)))
        .count();
    eprintln!(
        "pool bench: {} ops ({joins} joins, {leaves} leaves, {} ticks), {mean_waiting:.0} tickets \
         waiting on average",
        ops.len(),
        ops.len() - joins - leaves,
    );
    let mut group = c.benchmark_group("pool");
    group
        .sample_size(20)
        .warm_up_time(std::time::Duration::from_secs(1))
        .measurement_time(std::time::Duration::from_secs(3))
        .throughput(Throughput::Elements(ops.len() as u64));
    group.bench_function("join_leave_tick_mix_1000_waiting", |b| {
        b.iter_batched(
            || (pool.clone(), ops.clone()),
            |(mut pool, ops)| {
                let mut paired = 0;
                for (now, op) in ops {
                    paired += apply(&mut pool, now, op);
                }
                // Returned, so that dropping the pool is not timed.
                (pool, black_box(paired))
            },
            BatchSize::LargeInput,
        );
    });
    group.finish();
}

criterion_group!(benches, join_leave_tick);
criterion_main!(benches);
