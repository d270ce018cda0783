//! The SQLite store's write path, on a file in a temporary folder: a group of targeted events
//! (what a batched `notify` or a burst of requests commits), and a group of matchmaking steps
//! (a pairing: the match, both tickets dropped, `match_found` to both players). Times are per
//! group; divide by the group size for the cost of one event or one step.
// A benchmark is not a test target: clippy.toml's unwrap allowance does not reach it.
#![expect(clippy::unwrap_used, reason = "fixed, valid ids and events")]

use std::sync::Arc;
use std::time::Duration;

use belay::domain::{
    Discipline, Event, Match, MatchOrigin, MatchStatus, Player, PostId, PostLiked, UserId,
};
use belay::store::{Change, NewEvent, Store};
use chrono::Utc;
use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use uuid::Uuid;

const USERS: usize = 200;

fn user(n: usize) -> UserId {
    UserId::parse(format!("climber-{n:05}")).unwrap()
}

fn like(n: u64, to: usize) -> NewEvent {
    NewEvent {
        user: user(to),
        event: Event::PostLiked(PostLiked::new(
            PostId::parse(format!("post-{n}")).unwrap(),
            user(to + 1),
        )),
        idempotency_key: None,
    }
}

fn player(user_id: UserId) -> Player {
    Player {
        user_id,
        ready: false,
        reported_winner: None,
        queued_since: Some(Utc::now()),
        rating: 1500.0,
    }
}

/// One pairing as the matchmaker commits it.
fn pairing(n: usize) -> (Vec<Change>, Vec<NewEvent>) {
    let (a, b) = (user(2 * n), user(2 * n + 1));
    let now = Utc::now();
    let m = Match {
        match_id: Uuid::now_v7(),
        discipline: Discipline::Boulder,
        scope: None,
        origin: MatchOrigin::Queue,
        status: MatchStatus::ReadyCheck,
        created_at: now,
        ready_deadline: now + chrono::Duration::seconds(30),
        result_deadline: None,
        players: [player(a.clone()), player(b.clone())],
        winner: None,
        cancel_reason: None,
        cancelled_by: Vec::new(),
        updated_at: now,
    };
    let found = |me: &UserId, opponent: &UserId| NewEvent {
        user: me.clone(),
        event: Event::MatchFound {
            match_id: m.match_id,
            opponent: opponent.clone(),
            discipline: Discipline::Boulder,
            ready_deadline: m.ready_deadline,
        },
        idempotency_key: None,
    };
    let events = vec![found(&a, &b), found(&b, &a)];
    let changes = vec![
        Change::DropTicket(a.clone()),
        Change::DropTicket(b.clone()),
        Change::SaveMatch(m),
    ];
    (changes, events)
}

fn store(rt: &tokio::runtime::Runtime, dir: &tempfile::TempDir) -> Arc<dyn Store> {
    let url = format!("sqlite://{}", dir.path().join("bench.db").display());
    rt.block_on(belay::store::connect(&url, 2)).unwrap()
}

fn writes(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = store(&rt, &dir);
    let mut group = c.benchmark_group("store");
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
        .sample_size(20);

    // The groups are built outside the timed part; a fresh batch per iteration.
    let mut seq = 0u64;
    for size in [1usize, 50, 500] {
        group.throughput(Throughput::Elements(size as u64));
        group.bench_with_input(BenchmarkId::new("append_likes", size), &size, |b, &size| {
            b.iter_batched(
                || {
                    (0..size)
                        .map(|i| {
                            seq += 1;
                            like(seq, i % USERS)
                        })
                        .collect::<Vec<_>>()
                },
                |batch| rt.block_on(store.append(batch)).unwrap(),
                BatchSize::PerIteration,
            )
        });
    }

    let mut pair = 0usize;
    for steps in [16usize, 128, 512] {
        group.throughput(Throughput::Elements(steps as u64));
        group.bench_with_input(BenchmarkId::new("pairings", steps), &steps, |b, &steps| {
            b.iter_batched(
                || {
                    (0..steps)
                        .map(|_| {
                            pair += 1;
                            pairing(pair)
                        })
                        .collect::<Vec<_>>()
                },
                |works| {
                    rt.block_on(store.apply_many(works, Box::new(|_| ())))
                        .unwrap()
                },
                BatchSize::PerIteration,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, writes);
criterion_main!(benches);
