//! Contract tests of the `Store` interface, run against every backend this build has.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::HashSet;
use std::sync::Arc;

use belay::domain::{Cursor, Event, IdempotencyKey, PostId, PostLiked};
use belay::store::{self, AppendOutcome, ListQuery, NewEvent, Page, ReadSelector};
use support::{backends, user};

fn like(to: &str, post: &str, by: &str) -> NewEvent {
    NewEvent {
        user: user(to),
        event: Event::PostLiked(PostLiked::new(PostId::parse(post).unwrap(), user(by))),
        idempotency_key: None,
    }
}

#[tokio::test]
async fn concurrent_writers_get_gapless_cursors_in_commit_order() {
    for (name, backend) in backends().await {
        let store = backend.store.clone();
        let writers = (0..8).map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut mine = Vec::new();
                for i in 0..50 {
                    let appended = store
                        .append(vec![like("ana", &format!("w{w}-{i}"), "bob")])
                        .await
                        .unwrap();
                    mine.push(appended[0].notification.cursor.0);
                }
                mine
            })
        });
        let mut all = Vec::new();
        for writer in writers {
            let mine = writer.await.unwrap();
            assert!(
                mine.windows(2).all(|w| w[0] < w[1]),
                "{name}: one writer's cursors only grow"
            );
            all.extend(mine);
        }
        all.sort_unstable();
        assert_eq!(
            all,
            (1..=400).collect::<Vec<_>>(),
            "{name}: gapless and unique"
        );
        assert_eq!(
            store.head(&user("ana")).await.unwrap(),
            Cursor(400),
            "{name}"
        );
        let replay = store
            .events_after(&user("ana"), Cursor(390), 100)
            .await
            .unwrap();
        let cursors: Vec<i64> = replay.iter().map(|n| n.cursor.0).collect();
        assert_eq!(
            cursors,
            (391..=400).collect::<Vec<_>>(),
            "{name}: replay in cursor order"
        );
    }
}

#[tokio::test]
async fn cursors_are_per_user() {
    for (name, backend) in backends().await {
        let store = backend.store;
        let out = store
            .append(vec![
                like("ana", "p1", "x"),
                like("bob", "p1", "x"),
                like("ana", "p2", "x"),
            ])
            .await
            .unwrap();
        let got: Vec<(String, i64)> = out
            .iter()
            .map(|a| (a.user.to_string(), a.notification.cursor.0))
            .collect();
        assert_eq!(
            got,
            [("ana".into(), 1), ("bob".into(), 1), ("ana".into(), 2)],
            "{name}"
        );
        assert_eq!(
            store.head(&user("nobody")).await.unwrap(),
            Cursor::ZERO,
            "{name}"
        );
    }
}

#[tokio::test]
async fn a_collapse_moves_the_notification_to_a_new_cursor() {
    for (name, backend) in backends().await {
        let store = backend.store;
        let first = store
            .append(vec![like("ana", "p1", "bob")])
            .await
            .unwrap()
            .remove(0);
        store.append(vec![like("ana", "p2", "bob")]).await.unwrap();
        let second = store
            .append(vec![like("ana", "p1", "cy")])
            .await
            .unwrap()
            .remove(0);
        assert_eq!(second.outcome, AppendOutcome::Collapsed, "{name}");
        assert_eq!(second.notification.id, first.notification.id, "{name}");
        assert_eq!(second.notification.cursor, Cursor(3), "{name}");
        assert_eq!(
            second.notification.created_at, first.notification.created_at,
            "{name}"
        );
        // A client resuming after cursor 1 sees the like once, at its new place.
        let replay = store
            .events_after(&user("ana"), Cursor::ZERO, 10)
            .await
            .unwrap();
        let cursors: Vec<i64> = replay.iter().map(|n| n.cursor.0).collect();
        assert_eq!(cursors, [2, 3], "{name}");
        assert_eq!(replay[1], second.notification, "{name}: stored as returned");
    }
}

#[tokio::test]
async fn idempotency_keys_return_the_first_result_even_within_a_batch() {
    for (name, backend) in backends().await {
        let store = backend.store;
        let mut keyed = like("ana", "p1", "bob");
        keyed.idempotency_key = Some(IdempotencyKey::parse("k1").unwrap());
        let out = store
            .append(vec![keyed.clone(), keyed.clone()])
            .await
            .unwrap();
        assert_eq!(out[0].outcome, AppendOutcome::Created, "{name}");
        assert_eq!(out[1].outcome, AppendOutcome::Duplicate, "{name}");
        let again = store.append(vec![keyed]).await.unwrap().remove(0);
        assert_eq!(again.outcome, AppendOutcome::Duplicate, "{name}");
        assert_eq!(again.notification.id, out[0].notification.id, "{name}");
        assert_eq!(
            store.head(&user("ana")).await.unwrap(),
            Cursor(1),
            "{name}: no cursor used"
        );
        // The same key for another user is another request.
        let mut other = like("bob", "p1", "cy");
        other.idempotency_key = Some(IdempotencyKey::parse("k1").unwrap());
        assert_eq!(
            store.append(vec![other]).await.unwrap()[0].outcome,
            AppendOutcome::Created
        );
    }
}

#[tokio::test]
async fn read_state_filters_the_list_and_counts() {
    for (name, backend) in backends().await {
        let store = backend.store;
        let ana = user("ana");
        let mut ids = Vec::new();
        for i in 1..=5 {
            ids.push(
                store
                    .append(vec![like("ana", &format!("p{i}"), "x")])
                    .await
                    .unwrap()[0]
                    .notification
                    .id,
            );
        }
        assert_eq!(
            store
                .mark_read(&ana, &ReadSelector::Ids(vec![ids[0], ids[4]]))
                .await
                .unwrap(),
            2
        );
        assert_eq!(
            store
                .mark_read(&ana, &ReadSelector::Ids(vec![ids[0]]))
                .await
                .unwrap(),
            0,
            "{name}"
        );
        assert_eq!(
            store
                .mark_read(&ana, &ReadSelector::UpTo(Cursor(2)))
                .await
                .unwrap(),
            1,
            "{name}"
        );
        assert_eq!(store.unread_count(&ana).await.unwrap(), 2, "{name}");
        let unread = store
            .list(
                &ana,
                ListQuery {
                    page: Page::Newest { before: None },
                    unread_only: true,
                    limit: 10,
                },
            )
            .await
            .unwrap();
        let cursors: HashSet<i64> = unread.iter().map(|n| n.cursor.0).collect();
        assert_eq!(cursors, HashSet::from([3, 4]), "{name}");
        assert_eq!(
            store.mark_read(&ana, &ReadSelector::All).await.unwrap(),
            2,
            "{name}"
        );
        assert_eq!(store.unread_count(&ana).await.unwrap(), 0, "{name}");
        store.ping().await.unwrap();
    }
}

/// The unread count is kept beside the head, not counted from the rows: after every kind of
/// write it must still equal the rows that are unread, for each user.
#[tokio::test]
async fn the_unread_count_equals_the_unread_rows_after_every_write() {
    for (name, backend) in backends().await {
        let store = backend.store;
        let users = ["ana", "bob"];
        let mut ids: Vec<uuid::Uuid> = Vec::new();
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = |n: u64| {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (seed >> 33) % n
        };
        for step in 0..120 {
            let who = users[usize::try_from(next(2)).unwrap()];
            match next(5) {
                // A batch of likes: few posts, so some collapse; some keys repeat.
                0..=2 => {
                    let batch: Vec<NewEvent> = (0..1 + next(4))
                        .map(|_| {
                            let to = users[usize::try_from(next(2)).unwrap()];
                            let mut e = like(to, &format!("p{}", next(6)), "cy");
                            if next(3) == 0 {
                                e.idempotency_key =
                                    Some(IdempotencyKey::parse(format!("k{}", next(8))).unwrap());
                            }
                            e
                        })
                        .collect();
                    for a in store.append(batch).await.unwrap() {
                        ids.push(a.notification.id);
                    }
                }
                // Some ids, of either user, some already read.
                3 => {
                    let some: Vec<uuid::Uuid> = (0..next(4))
                        .filter_map(|_| {
                            let len = u64::try_from(ids.len()).unwrap();
                            (len > 0).then(|| ids[usize::try_from(next(len)).unwrap()])
                        })
                        .collect();
                    store
                        .mark_read(&user(who), &ReadSelector::Ids(some))
                        .await
                        .unwrap();
                }
                _ => {
                    let head = store.head(&user(who)).await.unwrap().0;
                    let selector = if next(4) == 0 {
                        ReadSelector::All
                    } else {
                        ReadSelector::UpTo(Cursor(
                            i64::try_from(next(u64::try_from(head).unwrap() + 1)).unwrap(),
                        ))
                    };
                    store.mark_read(&user(who), &selector).await.unwrap();
                }
            }
            for u in users {
                let newest = |unread_only| ListQuery {
                    page: Page::Newest { before: None },
                    unread_only,
                    limit: 1000,
                };
                let all = store.list(&user(u), newest(false)).await.unwrap();
                let unread_rows = all.iter().filter(|n| !n.read).count() as u64;
                let listed = store.list(&user(u), newest(true)).await.unwrap();
                assert!(listed.iter().all(|n| !n.read), "{name} step {step}");
                assert_eq!(listed.len() as u64, unread_rows, "{name} step {step} {u}");
                assert_eq!(
                    store.unread_count(&user(u)).await.unwrap(),
                    unread_rows,
                    "{name} step {step} {u}"
                );
                let (count, head) = store.unread_as_of(&user(u)).await.unwrap();
                assert_eq!(count, unread_rows, "{name} step {step} {u}");
                assert_eq!(head, store.head(&user(u)).await.unwrap(), "{name}");
            }
        }
    }
}

#[tokio::test]
async fn reopening_a_database_keeps_its_events() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/nested/again.db", dir.path().display());
    let first = store::connect(&url, 2).await.unwrap();
    first.append(vec![like("ana", "p1", "bob")]).await.unwrap();
    drop(first);
    let second = store::connect(&url, 2).await.unwrap();
    assert_eq!(second.head(&user("ana")).await.unwrap(), Cursor(1));
    assert!(store::connect("mysqlish://nope", 1).await.is_err());
}

#[tokio::test]
async fn one_batch_collapses_and_deduplicates_within_itself() {
    for (name, backend) in backends().await {
        let store = backend.store;
        let mut keyed = like("ana", "p3", "dee");
        keyed.idempotency_key = Some(IdempotencyKey::parse("k").unwrap());
        let out = store
            .append(vec![
                like("ana", "p1", "bob"),
                like("ana", "p1", "cy"),
                like("ana", "p2", "bob"),
                keyed.clone(),
                keyed,
            ])
            .await
            .unwrap();
        let outcomes: Vec<AppendOutcome> = out.iter().map(|a| a.outcome).collect();
        use AppendOutcome::*;
        assert_eq!(
            outcomes,
            [Created, Collapsed, Created, Created, Duplicate],
            "{name}"
        );
        let cursors: Vec<i64> = out.iter().map(|a| a.notification.cursor.0).collect();
        assert_eq!(cursors, [1, 2, 3, 4, 4], "{name}");
        assert_eq!(out[1].notification.id, out[0].notification.id, "{name}");
        let stored = store
            .events_after(&user("ana"), Cursor::ZERO, 10)
            .await
            .unwrap();
        let stored_cursors: Vec<i64> = stored.iter().map(|n| n.cursor.0).collect();
        assert_eq!(
            stored_cursors,
            [2, 3, 4],
            "{name}: the collapsed like sits at its last cursor"
        );
        assert_eq!(stored[0], out[1].notification, "{name}");
        let Event::PostLiked(merged) = &stored[0].event else {
            panic!("{name}: kind")
        };
        assert_eq!(merged.count, 2, "{name}");
        assert_eq!(store.head(&user("ana")).await.unwrap(), Cursor(4), "{name}");
    }
}

#[tokio::test]
async fn expired_idempotency_keys_are_forgotten() {
    for (name, backend) in backends().await {
        let store = backend.store;
        let mut keyed = like("ana", "p1", "bob");
        keyed.idempotency_key = Some(IdempotencyKey::parse("k").unwrap());
        store.append(vec![keyed.clone()]).await.unwrap();
        let past = chrono::Utc::now() - chrono::Duration::hours(1);
        assert_eq!(
            store.expire_idempotency_keys(past).await.unwrap(),
            0,
            "{name}: fresh keys stay"
        );
        let future = chrono::Utc::now() + chrono::Duration::seconds(1);
        assert_eq!(
            store.expire_idempotency_keys(future).await.unwrap(),
            1,
            "{name}"
        );
        keyed.event = Event::PostLiked(PostLiked::new(PostId::parse("p2").unwrap(), user("bob")));
        let again = store.append(vec![keyed]).await.unwrap().remove(0);
        assert_eq!(
            again.outcome,
            AppendOutcome::Created,
            "{name}: the key is free again"
        );
    }
}

#[tokio::test]
async fn commit_hooks_run_in_cursor_order_before_append_returns() {
    for (name, backend) in backends().await {
        let store = backend.store;
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let appends = (0..40).map(|i| {
            let (store, seen) = (store.clone(), seen.clone());
            tokio::spawn(async move {
                let batch = vec![
                    like("ana", &format!("a{i}"), "x"),
                    like("ana", &format!("b{i}"), "x"),
                ];
                let hook_seen = seen.clone();
                let out = store
                    .append_then(
                        batch,
                        Box::new(move |appended| {
                            let mut seen = hook_seen.lock().unwrap();
                            seen.extend(appended.iter().map(|a| a.notification.cursor.0));
                        }),
                    )
                    .await
                    .unwrap();
                let seen = seen.lock().unwrap();
                assert!(
                    out.iter().all(|a| seen.contains(&a.notification.cursor.0)),
                    "hook ran first"
                );
            })
        });
        for task in appends {
            task.await.unwrap();
        }
        let seen = seen.lock().unwrap().clone();
        assert_eq!(
            seen,
            (1..=80).collect::<Vec<_>>(),
            "{name}: hooks saw every cursor in order"
        );
    }
}

#[tokio::test]
async fn the_unread_count_and_the_head_are_read_together() {
    for (name, backend) in backends().await {
        let store = backend.store;
        let ana = user("ana");
        assert_eq!(
            store.unread_as_of(&ana).await.unwrap(),
            (0, Cursor(0)),
            "{name}"
        );
        // Every like is a new unread notification, so a consistent snapshot has count == head
        // however the reads and the writes interleave.
        let writer = {
            let store = store.clone();
            tokio::spawn(async move {
                for i in 0..300 {
                    store
                        .append(vec![like("ana", &format!("p{i}"), "x")])
                        .await
                        .unwrap();
                }
            })
        };
        let mut snapshots = 0;
        while !writer.is_finished() {
            let (count, head) = store.unread_as_of(&ana).await.unwrap();
            assert_eq!(count, u64::try_from(head.0).unwrap(), "{name}");
            // The connect's summary: its newest entries end at its head, whatever commits since.
            let summary = store.unread_summary(&ana, 10).await.unwrap();
            assert_eq!(
                summary.count,
                u64::try_from(summary.head.0).unwrap(),
                "{name}"
            );
            let cursors: Vec<i64> = summary.latest.iter().map(|n| n.cursor.0).collect();
            let newest: Vec<i64> = (1..=summary.head.0).rev().take(10).collect();
            assert_eq!(cursors, newest, "{name}");
            snapshots += 1;
            tokio::task::yield_now().await;
        }
        writer.await.unwrap();
        assert!(snapshots > 1, "{name}: the reads overlapped the writes");
        store
            .mark_read(&ana, &ReadSelector::UpTo(Cursor(100)))
            .await
            .unwrap();
        assert_eq!(
            store.unread_as_of(&ana).await.unwrap(),
            (200, Cursor(300)),
            "{name}"
        );
    }
}

#[tokio::test]
async fn many_unread_lookups_at_once_each_get_their_own_users_numbers() {
    for (name, backend) in backends().await {
        let store = backend.store;
        // u{n} has n likes, the first n / 2 of them read; the users from u30 on have none.
        let mut expected = std::collections::HashMap::new();
        for n in 1..30u64 {
            let who = format!("u{n}");
            let likes: Vec<_> = (0..n).map(|i| like(&who, &format!("p{i}"), "x")).collect();
            store.append(likes).await.unwrap();
            let head = i64::try_from(n).unwrap();
            store
                .mark_read(&user(&who), &ReadSelector::UpTo(Cursor(head / 2)))
                .await
                .unwrap();
            expected.insert(who, (n - n / 2, Cursor(head)));
        }
        // Interleaved, so one batch holds users with, without and with several look-ups.
        let asked: Vec<_> = (0..3)
            .flat_map(|round| (0..40).map(move |n| user(&format!("u{}", (n * 7 + round) % 40))))
            .collect();
        let answers =
            futures_util::future::join_all(asked.iter().map(|who| store.unread_as_of(who))).await;
        for (who, answer) in asked.iter().zip(answers) {
            let want = expected
                .get(who.as_str())
                .copied()
                .unwrap_or((0, Cursor(0)));
            assert_eq!(answer.unwrap(), want, "{name}: {who}");
        }
    }
}

#[tokio::test]
async fn unread_summaries_read_at_once_each_hold_their_own_users_newest_unread() {
    for (name, backend) in backends().await {
        let store = backend.store;
        // s{n} has n likes and has read the oldest n / 3; s0 and the users from s25 have none.
        for n in 1..25i64 {
            let who = format!("s{n}");
            let likes: Vec<_> = (0..n).map(|i| like(&who, &format!("p{i}"), "x")).collect();
            store.append(likes).await.unwrap();
            store
                .mark_read(&user(&who), &ReadSelector::UpTo(Cursor(n / 3)))
                .await
                .unwrap();
        }
        let asked: Vec<_> = (0..3)
            .flat_map(|round| (0..30).map(move |n| (n, [4, 10, 10][round])))
            .collect();
        let users: Vec<_> = asked.iter().map(|(n, _)| user(&format!("s{n}"))).collect();
        let answers = futures_util::future::join_all(
            users
                .iter()
                .zip(&asked)
                .map(|(who, (_, latest))| store.unread_summary(who, *latest)),
        )
        .await;
        for ((n, latest), answer) in asked.iter().zip(answers) {
            let snapshot = answer.unwrap();
            let (n, latest) = (i64::from(*n), i64::from(*latest));
            let head = if n < 25 { n } else { 0 };
            let unread = if n < 25 { n - n / 3 } else { 0 };
            assert_eq!(snapshot.head, Cursor(head), "{name}: s{n}");
            assert_eq!(snapshot.count, unread as u64, "{name}: s{n}");
            let cursors: Vec<i64> = snapshot.latest.iter().map(|e| e.cursor.0).collect();
            let expected: Vec<i64> = (head - unread.min(latest) + 1..=head).rev().collect();
            assert_eq!(cursors, expected, "{name}: s{n} latest {latest}");
            assert!(snapshot.latest.iter().all(|e| !e.read), "{name}: s{n}");
        }
    }
}

#[tokio::test]
async fn replay_pages_read_at_once_each_hold_their_own_users_events_after_their_cursor() {
    for (name, backend) in backends().await {
        let store = backend.store;
        // r{n} has n likes, at cursors 1..=n; r0 and the users from r20 have none.
        for n in 1..20i64 {
            let who = format!("r{n}");
            let likes: Vec<_> = (0..n).map(|i| like(&who, &format!("p{i}"), "x")).collect();
            store.append(likes).await.unwrap();
        }
        // Every user with several cursors and limits, and some pages asked twice.
        let asked: Vec<(i64, i64, u32)> = (0..3)
            .flat_map(|round| {
                (0..24).map(move |n| (n, (n + round * 3) % 7, [3, 50, 3][round as usize]))
            })
            .chain((0..6).map(|n| (n, 1, 3)))
            .collect();
        let users: Vec<_> = asked.iter().map(|(n, ..)| user(&format!("r{n}"))).collect();
        let pages = futures_util::future::join_all(
            users
                .iter()
                .zip(&asked)
                .map(|(who, (_, after, limit))| store.events_after(who, Cursor(*after), *limit)),
        )
        .await;
        for ((n, after, limit), page) in asked.iter().zip(pages) {
            let head = if *n < 20 { *n } else { 0 };
            let cursors: Vec<i64> = page.unwrap().iter().map(|e| e.cursor.0).collect();
            let expected: Vec<i64> = (after + 1..=head.min(after + i64::from(*limit))).collect();
            assert_eq!(
                cursors, expected,
                "{name}: r{n} after {after} limit {limit}"
            );
        }
    }
}

/// Retention with the given limits, run as if `days` from now, with idempotency keys already
/// expired.
async fn retain(store: &dyn store::Store, max_age_days: u32, max_per_user: u32, days: i64) -> u64 {
    let settings = belay::config::RetentionSettings {
        max_age_days,
        max_per_user,
        every_secs: 60,
        batch: 2,
    };
    let now = chrono::Utc::now() + chrono::Duration::days(days);
    let pass = store::retention::run_pass(store, &settings, std::time::Duration::ZERO, now)
        .await
        .unwrap();
    pass.by_age + pass.beyond_limit
}

#[tokio::test]
async fn retention_deletes_only_read_notifications_and_a_resume_gets_what_is_left_in_order() {
    for (name, backend) in backends().await {
        let store = backend.store;
        let ana = user("ana");
        let likes: Vec<NewEvent> = (1..=10)
            .map(|i| like("ana", &format!("p{i}"), "bob"))
            .collect();
        store.append(likes).await.unwrap();
        store
            .mark_read(&ana, &ReadSelector::UpTo(Cursor(6)))
            .await
            .unwrap();
        store
            .append(vec![like("ana", "p11", "bob"), like("bob", "p1", "ana")])
            .await
            .unwrap();

        // Beyond the newest 3: the read ones (1..=6) go, the unread ones (7..=11) all stay.
        assert_eq!(retain(store.as_ref(), 90, 3, 0).await, 6, "{name}");
        let left: Vec<i64> = store
            .events_after(&ana, Cursor(2), 100)
            .await
            .unwrap()
            .iter()
            .map(|n| n.cursor.0)
            .collect();
        assert_eq!(
            left,
            vec![7, 8, 9, 10, 11],
            "{name}: a resume from a deleted cursor"
        );
        assert_eq!(store.unread_count(&ana).await.unwrap(), 5, "{name}");
        assert_eq!(store.head(&ana).await.unwrap(), Cursor(11), "{name}");

        // By age: read notifications go once old enough, unread ones never.
        store
            .mark_read(&ana, &ReadSelector::UpTo(Cursor(8)))
            .await
            .unwrap();
        assert_eq!(
            retain(store.as_ref(), 30, 1_000, 1).await,
            0,
            "{name}: not old yet"
        );
        assert_eq!(retain(store.as_ref(), 30, 1_000, 31).await, 2, "{name}");
        let left: Vec<i64> = store
            .events_after(&ana, Cursor::ZERO, 100)
            .await
            .unwrap()
            .iter()
            .map(|n| n.cursor.0)
            .collect();
        assert_eq!(left, vec![9, 10, 11], "{name}");
        assert_eq!(store.unread_count(&ana).await.unwrap(), 3, "{name}");
        assert_eq!(
            store
                .events_after(&user("bob"), Cursor::ZERO, 10)
                .await
                .unwrap()
                .len(),
            1,
            "{name}: Bob's unread like stays"
        );

        // Cursors never go back: the next event follows the head.
        let next = store.append(vec![like("ana", "p12", "bob")]).await.unwrap();
        assert_eq!(next[0].notification.cursor, Cursor(12), "{name}");
    }
}

#[tokio::test]
async fn a_key_whose_notification_retention_removed_stores_its_event_again() {
    for (name, backend) in backends().await {
        let store = backend.store;
        let ana = user("ana");
        let keyed = || NewEvent {
            idempotency_key: Some(IdempotencyKey::parse("like-1").unwrap()),
            ..like("ana", "p1", "bob")
        };
        store.append(vec![keyed()]).await.unwrap();
        store.mark_read(&ana, &ReadSelector::All).await.unwrap();
        assert_eq!(retain(store.as_ref(), 1, 1_000, 2).await, 1, "{name}");

        let again = store.append(vec![keyed()]).await.unwrap();
        assert_eq!(again[0].outcome, AppendOutcome::Created, "{name}");
        assert_eq!(again[0].notification.cursor, Cursor(2), "{name}");
        // And the key now answers with the new notification.
        let retried = store.append(vec![keyed()]).await.unwrap();
        assert_eq!(retried[0].outcome, AppendOutcome::Duplicate, "{name}");
        assert_eq!(
            retried[0].notification.id, again[0].notification.id,
            "{name}"
        );
    }
}
