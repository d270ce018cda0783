//! Event serialisation: the JSON of a notification (an SSE `data:` line, a list item), the
//! stored `data` object (as a `Value`, and as the text the store writes), and reading a stored
//! event back (a catch-up replays from the store).
// A benchmark is not a test target: clippy.toml's unwrap allowance does not reach it.
#![expect(clippy::unwrap_used, reason = "fixed, valid ids and events")]

use std::hint::black_box;
use std::time::Duration;

use belay::domain::{Cursor, Discipline, Event, Notification, PostId, PostLiked, UserId};
use chrono::{TimeZone, Utc};
use criterion::{Criterion, criterion_group, criterion_main};
use uuid::Uuid;

fn notification(event: Event) -> Notification {
    let at = Utc.with_ymd_and_hms(2026, 11, 3, 18, 30, 0).unwrap();
    Notification {
        id: Uuid::from_u128(0x0193_5c4e_8b1a_7c3d_9e2f_0a1b_2c3d_4e5f),
        cursor: Cursor(1_234_567),
        event,
        created_at: at,
        updated_at: at,
        read: false,
    }
}

fn post_liked() -> Event {
    Event::PostLiked(PostLiked::new(
        PostId::parse("post-8f2c1a").unwrap(),
        UserId::parse("ana").unwrap(),
    ))
}

fn match_found() -> Event {
    Event::MatchFound {
        match_id: Uuid::from_u128(7),
        opponent: UserId::parse("bo").unwrap(),
        discipline: Discipline::Boulder,
        ready_deadline: Utc.with_ymd_and_hms(2026, 11, 3, 18, 30, 30).unwrap(),
    }
}

fn serialisation(c: &mut Criterion) {
    let mut group = c.benchmark_group("event");
    group
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    for (name, event) in [("post_liked", post_liked()), ("match_found", match_found())] {
        let n = notification(event.clone());
        group.bench_function(format!("notification_to_json/{name}"), |b| {
            b.iter(|| serde_json::to_vec(black_box(&n)).unwrap())
        });
        group.bench_function(format!("data_json/{name}"), |b| {
            b.iter(|| black_box(&event).data_json())
        });
        group.bench_function(format!("data_json_text/{name}"), |b| {
            b.iter(|| black_box(&event).data_json_text().unwrap())
        });
        let kind = event.kind().as_str();
        let data = event.data_json();
        group.bench_function(format!("from_parts/{name}"), |b| {
            b.iter(|| Event::from_parts(black_box(kind), black_box(data.clone())).unwrap())
        });
        let text = event.data_json_text().unwrap();
        group.bench_function(format!("from_stored/{name}"), |b| {
            b.iter(|| Event::from_stored(black_box(kind), black_box(&text)).unwrap())
        });
    }
    group.finish();
}

criterion_group!(benches, serialisation);
criterion_main!(benches);
