//! The per-event and per-session costs of the SSE path: encoding a frame (once per event) and
//! one session's share of a delivery (a push onto its outbox and the body taking it back).
// A benchmark is not a test target: clippy.toml's unwrap allowance does not reach it.
#![expect(clippy::unwrap_used, reason = "fixed, valid ids and events")]

use std::hint::black_box;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use belay::domain::{Broadcast, Cursor, Event, Notification, PostId, PostLiked, UserId};
use belay::sse::{Offer, Outbox, frame};
use bytes::Bytes;
use chrono::{TimeZone, Utc};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use uuid::Uuid;

fn notification() -> Notification {
    let at = Utc.with_ymd_and_hms(2026, 11, 3, 18, 30, 0).unwrap();
    Notification {
        id: Uuid::from_u128(0x0193_5c4e_8b1a_7c3d_9e2f_0a1b_2c3d_4e5f),
        cursor: Cursor(1_234_567),
        event: Event::PostLiked(PostLiked::new(
            PostId::parse("post-8f2c1a").unwrap(),
            UserId::parse("ana").unwrap(),
        )),
        created_at: at,
        updated_at: at,
        read: false,
    }
}

fn broadcast() -> Broadcast {
    Broadcast {
        event: Event::NewPost {
            post_id: PostId::parse("p7").unwrap(),
            by: UserId::parse("cy").unwrap(),
            title: "New boulder at the gym".to_owned(),
        },
        sent_at: Utc.with_ymd_and_hms(2026, 11, 3, 18, 30, 0).unwrap(),
    }
}

fn encoding(c: &mut Criterion) {
    let mut group = c.benchmark_group("sse_frame");
    group
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    let n = notification();
    group.bench_function("user_event_post_liked", |b| {
        b.iter(|| frame::user_event(black_box(&n)).unwrap())
    });
    let bc = broadcast();
    group.bench_function("broadcast_new_post", |b| {
        b.iter(|| frame::broadcast(black_box(&bc)).unwrap())
    });
    group.finish();
}

/// Frames offered per iteration; the body takes each back at once, as a keeping-up client does.
const DELIVERIES: u64 = 1_000;

fn delivery(c: &mut Criterion) {
    let mut group = c.benchmark_group("sse_outbox");
    group
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .throughput(Throughput::Elements(DELIVERIES));
    let shared = frame::broadcast(&broadcast()).unwrap();
    let mut cx = Context::from_waker(Waker::noop());
    let mut outbox = Outbox::new(256, Bytes::from_static(b"retry: 3000\n\n"));
    outbox.start_from(Cursor(0));
    outbox.release_held();
    let _ = outbox.poll_frame(&mut cx);
    group.bench_function("offer_then_take_shared_frame", |b| {
        b.iter(|| {
            for _ in 0..DELIVERIES {
                assert_eq!(outbox.offer(shared.clone()), Offer::Queued);
                let Poll::Ready(Some(frame)) = outbox.poll_frame(&mut cx) else {
                    unreachable!("a frame was just queued");
                };
                black_box(frame);
            }
        })
    });
    let mut cursor = 0;
    group.bench_function("offer_user_then_take", |b| {
        b.iter(|| {
            for _ in 0..DELIVERIES {
                cursor += 1;
                assert_eq!(
                    outbox.offer_user(Cursor(cursor), shared.clone()),
                    Offer::Queued
                );
                let Poll::Ready(Some(frame)) = outbox.poll_frame(&mut cx) else {
                    unreachable!("a frame was just queued");
                };
                black_box(frame);
            }
        })
    });
    group.finish();
}

criterion_group!(benches, encoding, delivery);
criterion_main!(benches);
