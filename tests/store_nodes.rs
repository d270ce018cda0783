//! Contract tests of two nodes on one database: two store instances (two pools, as two Belay
//! processes have) writing for the same users at once, on every backend this build has. On
//! SQLite the two instances are two writers on one file.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use belay::domain::{
    Cursor, Discipline, Event, IdempotencyKey, Match, MatchOrigin, MatchStatus, Player, PostId,
    PostLiked,
};
use belay::matchmaking::rating;
use belay::store::{
    AppendOutcome, Appended, Change, ListQuery, NewEvent, Page, ReadSelector, Store,
};
use chrono::Utc;
use support::{Server, backends, fresh_database, user};
use uuid::Uuid;

const USERS: usize = 20;
const EVENTS: usize = 2_000;
const WRITERS_PER_NODE: usize = 4;

/// The `i`-th event of the run: likes of 7 posts per user by many fans (so they collapse while
/// unread), every fifth with an idempotency key that both nodes send.
fn event(i: usize) -> NewEvent {
    let to = format!("u{}", i % USERS);
    let post = format!("p{}", (i / USERS) % 7);
    let by = format!("fan{}", i / (USERS * 7));
    NewEvent {
        user: user(&to),
        event: Event::PostLiked(PostLiked::new(PostId::parse(post).unwrap(), user(&by))),
        idempotency_key: i
            .is_multiple_of(5)
            .then(|| IdempotencyKey::parse(format!("k{i}")).unwrap()),
    }
}

/// What one node's commit hooks saw, in the order they ran: `(user, cursor)`.
type HookLog = Arc<Mutex<Vec<(String, i64)>>>;

async fn send(store: Arc<dyn Store>, items: Vec<usize>, log: HookLog) -> Vec<(usize, Appended)> {
    let mut out = Vec::with_capacity(items.len());
    // Small batches, so that groups mix several callers and several users.
    for chunk in items.chunks(3) {
        let log = log.clone();
        let hook = Box::new(move |appended: &[Appended]| {
            let mut log = log.lock().unwrap();
            for a in appended.iter().filter(|a| a.outcome.is_new()) {
                log.push((a.user.to_string(), a.notification.cursor.0));
            }
        });
        let batch = chunk.iter().map(|&i| event(i)).collect();
        let appended = store.append_then(batch, hook).await.unwrap();
        out.extend(chunk.iter().copied().zip(appended));
    }
    out
}

#[tokio::test]
async fn two_nodes_writing_for_the_same_users_keep_every_promise_of_one() {
    for (name, backend) in backends().await {
        let nodes = [backend.store.clone(), backend.another_node().await];
        let logs: [HookLog; 2] = Default::default();
        // Every event goes to one node; a keyed one goes to both (a client retrying elsewhere).
        let mut tasks = Vec::new();
        for (n, node) in nodes.iter().enumerate() {
            for w in 0..WRITERS_PER_NODE {
                let items: Vec<usize> = (0..EVENTS)
                    .filter(|i| i.is_multiple_of(5) || (i / 5) % 2 == n)
                    .filter(|i| (i / 10) % WRITERS_PER_NODE == w)
                    .collect();
                tasks.push(tokio::spawn(send(node.clone(), items, logs[n].clone())));
            }
        }
        let mut results: Vec<(usize, Appended)> = Vec::new();
        for task in tasks {
            results.extend(task.await.unwrap());
        }

        // Each keyed event was stored once: one answer new, the other a duplicate of it.
        let mut keyed: HashMap<usize, Vec<&Appended>> = HashMap::new();
        for (i, a) in &results {
            if i.is_multiple_of(5) {
                keyed.entry(*i).or_default().push(a);
            }
        }
        for (i, answers) in &keyed {
            let new: Vec<_> = answers.iter().filter(|a| a.outcome.is_new()).collect();
            assert_eq!(new.len(), 1, "{name}: key k{i} stored once: {answers:?}");
            assert!(
                answers
                    .iter()
                    .all(|a| a.notification.id == new[0].notification.id),
                "{name}: the duplicate answers with the notification the key made"
            );
        }

        for u in 0..USERS {
            let who = format!("u{u}");
            // Gapless: the new answers' cursors are exactly 1..=n, each once.
            let mut cursors: Vec<i64> = results
                .iter()
                .filter(|(_, a)| a.user.as_str() == who && a.outcome.is_new())
                .map(|(_, a)| a.notification.cursor.0)
                .collect();
            cursors.sort_unstable();
            let n = i64::try_from(cursors.len()).unwrap();
            assert_eq!(cursors, (1..=n).collect::<Vec<_>>(), "{name}: {who}");
            let store = &nodes[u % 2];
            assert_eq!(store.head(&user(&who)).await.unwrap(), Cursor(n), "{name}");

            // Each node's hooks saw this user's cursors in increasing order: commit order.
            for log in &logs {
                let seen: Vec<i64> = log
                    .lock()
                    .unwrap()
                    .iter()
                    .filter(|(owner, _)| *owner == who)
                    .map(|(_, c)| *c)
                    .collect();
                assert!(
                    seen.windows(2).all(|w| w[0] < w[1]),
                    "{name}: {who}'s hooks in cursor order: {seen:?}"
                );
            }

            // No collapse lost: one unread notification per post, counting every distinct fan.
            let listed = store
                .list(
                    &user(&who),
                    ListQuery {
                        page: Page::Newest { before: None },
                        unread_only: false,
                        limit: 1_000,
                    },
                )
                .await
                .unwrap();
            let mut fans: BTreeMap<String, HashSet<String>> = BTreeMap::new();
            for i in (0..EVENTS).filter(|i| i % USERS == u) {
                let Event::PostLiked(like) = event(i).event else {
                    unreachable!()
                };
                fans.entry(like.post_id.to_string())
                    .or_default()
                    .insert(like.by.to_string());
            }
            assert_eq!(listed.len(), fans.len(), "{name}: {who} has one per post");
            for n in &listed {
                let Event::PostLiked(like) = &n.event else {
                    panic!("{name}: only likes were sent")
                };
                let expected = fans[like.post_id.as_str()].len();
                assert_eq!(
                    like.count as usize, expected,
                    "{name}: {who}'s {} counts every fan",
                    like.post_id
                );
            }
            // The latest cursor of each notification is where the stream says it is.
            let replay = store
                .events_after(&user(&who), Cursor::ZERO, 1_000)
                .await
                .unwrap();
            assert!(replay.windows(2).all(|w| w[0].cursor < w[1].cursor));
            assert_eq!(replay.len(), fans.len(), "{name}");
            assert_eq!(
                store.unread_count(&user(&who)).await.unwrap(),
                fans.len() as u64,
                "{name}: {who}'s unread count"
            );
        }
    }
}

#[tokio::test]
async fn marking_read_on_one_node_while_the_other_appends_keeps_the_unread_count_right() {
    for (name, backend) in backends().await {
        let writer = backend.store.clone();
        let reader = backend.another_node().await;
        let ana = user("ana");
        let appends = tokio::spawn({
            let writer = writer.clone();
            async move {
                for i in 0..150 {
                    // Three posts: likes collapse into unread ones, or start anew once read.
                    let like = NewEvent {
                        user: user("ana"),
                        event: Event::PostLiked(PostLiked::new(
                            PostId::parse(format!("p{}", i % 3)).unwrap(),
                            user(&format!("fan{i}")),
                        )),
                        idempotency_key: None,
                    };
                    writer.append(vec![like]).await.unwrap();
                }
            }
        });
        let marks = tokio::spawn({
            let reader = reader.clone();
            async move {
                for i in 0..60 {
                    let selector = match i % 3 {
                        0 => ReadSelector::All,
                        1 => {
                            let head = reader.head(&user("ana")).await.unwrap();
                            ReadSelector::UpTo(Cursor(head.0 - 1))
                        }
                        _ => {
                            let newest = reader
                                .list(
                                    &user("ana"),
                                    ListQuery {
                                        page: Page::Newest { before: None },
                                        unread_only: true,
                                        limit: 2,
                                    },
                                )
                                .await
                                .unwrap();
                            ReadSelector::Ids(newest.iter().map(|n| n.id).collect())
                        }
                    };
                    reader.mark_read(&user("ana"), &selector).await.unwrap();
                }
            }
        });
        appends.await.unwrap();
        marks.await.unwrap();

        for store in [&writer, &reader] {
            let unread = store
                .list(
                    &ana,
                    ListQuery {
                        page: Page::Newest { before: None },
                        unread_only: false,
                        limit: 1_000,
                    },
                )
                .await
                .unwrap()
                .iter()
                .filter(|n| !n.read)
                .count();
            assert_eq!(
                store.unread_count(&ana).await.unwrap(),
                unread as u64,
                "{name}: the counter equals the unread rows"
            );
            // No unread like has been lost into a read one: every unread row is a post's newest.
            let (count, head) = store.unread_as_of(&ana).await.unwrap();
            assert_eq!(count, unread as u64, "{name}");
            assert!(head.0 >= 1, "{name}");
        }
    }
}

fn player(id: &str) -> Player {
    Player {
        user_id: user(id),
        ready: true,
        reported_winner: None,
        queued_since: None,
        rating: 1500.0,
    }
}

/// A settled match between `a` and `b` that `a` won.
fn won_by(a: &str, b: &str) -> Match {
    let now = Utc::now();
    let mut m = Match {
        match_id: Uuid::new_v4(),
        discipline: Discipline::Boulder,
        scope: None,
        origin: MatchOrigin::Queue,
        status: MatchStatus::Settled,
        created_at: now,
        ready_deadline: now,
        result_deadline: Some(now),
        players: [player(a), player(b)],
        winner: Some(user(a)),
        cancel_reason: None,
        cancelled_by: Vec::new(),
        updated_at: now,
    };
    for p in &mut m.players {
        p.reported_winner = Some(user(a));
    }
    m
}

#[tokio::test]
async fn settlements_sharing_a_player_on_two_nodes_each_count_once() {
    const ROUNDS: usize = 12;
    for (name, backend) in backends().await {
        let nodes = [backend.store.clone(), backend.another_node().await];
        // Ana plays Bob on one node and Cy on the other, at the same time, round after round.
        let tasks: Vec<_> = nodes
            .iter()
            .zip(["bob", "cy"])
            .map(|(node, opponent)| {
                let node = node.clone();
                tokio::spawn(async move {
                    for _ in 0..ROUNDS {
                        node.apply_then(
                            vec![Change::Settle(won_by("ana", opponent))],
                            Vec::new(),
                            Box::new(|_| ()),
                        )
                        .await
                        .unwrap();
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        let ana = nodes[0]
            .rating(&user("ana"), Discipline::Boulder)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            ana.matches as usize,
            2 * ROUNDS,
            "{name}: no settlement overwrote another's update of Ana"
        );
        // Ana won every match: her rating only grew, from the first update on.
        let first = rating::settle(&rating::initial(), &rating::initial()).0;
        assert!(ana.rating > first.rating, "{name}: {ana:?}");
        // Every settlement told Ana its result: 2 × ROUNDS match_result events, gapless.
        let events = nodes[1]
            .events_after(&user("ana"), Cursor::ZERO, 1_000)
            .await
            .unwrap();
        let results = events
            .iter()
            .filter(|n| matches!(n.event, Event::MatchResult { .. }))
            .count();
        assert_eq!(results, 2 * ROUNDS, "{name}");
        let cursors: Vec<i64> = events.iter().map(|n| n.cursor.0).collect();
        assert_eq!(
            cursors,
            (1..=i64::try_from(events.len()).unwrap()).collect::<Vec<_>>(),
            "{name}: Ana's stream has no gap"
        );
    }
}

#[tokio::test]
async fn the_same_retried_notify_on_two_nodes_at_once_is_stored_once() {
    for (name, backend) in backends().await {
        let nodes = [backend.store.clone(), backend.another_node().await];
        for round in 0..30 {
            let key = IdempotencyKey::parse(format!("retry-{round}")).unwrap();
            let item = || NewEvent {
                user: user("ana"),
                event: Event::PostLiked(PostLiked::new(
                    PostId::parse(format!("p{round}")).unwrap(),
                    user("bob"),
                )),
                idempotency_key: Some(key.clone()),
            };
            let (a, b) = tokio::join!(nodes[0].append(vec![item()]), nodes[1].append(vec![item()]));
            let (a, b) = (a.unwrap().remove(0), b.unwrap().remove(0));
            let outcomes = [a.outcome, b.outcome];
            assert!(
                outcomes.contains(&AppendOutcome::Created)
                    && outcomes.contains(&AppendOutcome::Duplicate),
                "{name}: {outcomes:?}"
            );
            assert_eq!(a.notification.id, b.notification.id, "{name}");
        }
        assert_eq!(
            nodes[0].head(&user("ana")).await.unwrap(),
            Cursor(30),
            "{name}"
        );
    }
}

/// Pushes everything at once: the store-level half of push, without the actor.
struct PushAll;

impl belay::store::push::PushFilter for PushAll {
    fn due(
        &self,
        _user: &belay::domain::UserId,
        _kind: belay::domain::EventKind,
        now: chrono::DateTime<Utc>,
    ) -> Option<chrono::DateTime<Utc>> {
        Some(now)
    }
}

fn like(to: &str, post: &str, by: &str) -> NewEvent {
    NewEvent {
        user: user(to),
        event: Event::PostLiked(PostLiked::new(PostId::parse(post).unwrap(), user(by))),
        idempotency_key: None,
    }
}

#[tokio::test]
async fn push_jobs_commit_with_their_events_and_two_nodes_never_take_the_same_one() {
    use belay::store::push::{NewDevice, Platform};
    const CLIMBERS: usize = 30;
    const LIKES: usize = 10;
    for (name, backend) in backends().await {
        let a = backend.store.clone();
        let b = backend.another_node().await;
        a.enable_push(Arc::new(PushAll));
        b.enable_push(Arc::new(PushAll));
        let now = Utc::now();
        // Two devices each for all but the last climber, who has none.
        for c in 0..CLIMBERS - 1 {
            for d in 0..2 {
                let device = NewDevice {
                    platform: Platform::Fcm,
                    token: format!("token-{c}-{d}"),
                    p256dh: None,
                    auth: None,
                };
                a.register_device(&user(&format!("c{c}")), &device, 10, now)
                    .await
                    .unwrap();
            }
        }
        // Each node writes half of the likes, each of its own post (nothing collapses).
        let writes = (0..CLIMBERS * LIKES).map(|i| {
            let store = if i % 2 == 0 { a.clone() } else { b.clone() };
            let event = like(&format!("c{}", i % CLIMBERS), &format!("p{i}"), "fan");
            async move { store.append(vec![event]).await.unwrap() }
        });
        futures_util::future::join_all(writes).await;
        let expected = (CLIMBERS - 1) * LIKES * 2;
        assert_eq!(
            a.push_jobs_waiting().await.unwrap(),
            expected as u64,
            "{name}: one job per device and event, none for a climber without devices"
        );

        // Both nodes take at once, in small batches, until nothing is left.
        let take = |store: Arc<dyn Store>| async move {
            let mut taken = Vec::new();
            loop {
                let now = Utc::now();
                let jobs = store
                    .take_push_jobs(now, now + chrono::Duration::seconds(60), 7)
                    .await
                    .unwrap();
                if jobs.is_empty() {
                    return taken;
                }
                for job in jobs {
                    let n = job
                        .notification
                        .as_ref()
                        .expect("the notification is there");
                    // Like `i` (post `p<i>`) went to climber `c<i mod CLIMBERS>`: the job is for
                    // a device of the notification's own climber.
                    let Event::PostLiked(liked) = &n.event else {
                        panic!("{name}: a job for {:?}", n.event.kind());
                    };
                    let i: usize = liked.post_id.as_str()[1..].parse().unwrap();
                    assert_eq!(job.device.user.as_str(), format!("c{}", i % CLIMBERS));
                    taken.push(job.id);
                }
            }
        };
        let (from_a, from_b) = tokio::join!(take(a.clone()), take(b.clone()));
        let mut all: Vec<i64> = from_a.iter().chain(&from_b).copied().collect();
        let count = all.len();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), count, "{name}: a job was taken twice");
        assert_eq!(count, expected, "{name}: every job was taken once");
        // Which node takes how many is up to the scheduler (on SQLite one may take all): shown,
        // not asserted.
        eprintln!(
            "{name}: the nodes took {} and {} jobs",
            from_a.len(),
            from_b.len()
        );
        // Taken jobs are leased: nothing is due again until the lease passes.
        let now = Utc::now();
        let again = a
            .take_push_jobs(now, now + chrono::Duration::seconds(60), 100)
            .await
            .unwrap();
        assert!(again.is_empty(), "{name}: a leased job was taken again");
        let later = now + chrono::Duration::seconds(61);
        let expired = b
            .take_push_jobs(later, later + chrono::Duration::seconds(60), 1000)
            .await
            .unwrap();
        assert_eq!(
            expired.len(),
            expected,
            "{name}: a lease that passed frees its jobs"
        );
        let ids: Vec<i64> = expired.iter().map(|job| job.id).collect();
        a.finish_push_jobs(&ids[..1]).await.unwrap();
        assert_eq!(
            a.push_jobs_waiting().await.unwrap(),
            expected as u64 - 1,
            "{name}: one finished"
        );
        a.finish_push_jobs(&ids[1..]).await.unwrap();
        assert_eq!(a.push_jobs_waiting().await.unwrap(), 0, "{name}");
    }
}

#[tokio::test]
async fn a_collapsed_like_keeps_one_push_job_and_a_removed_device_takes_its_jobs_along() {
    use belay::store::push::{NewDevice, Platform};
    for (name, backend) in backends().await {
        let store = backend.store.clone();
        store.enable_push(Arc::new(PushAll));
        let now = Utc::now();
        let device = NewDevice {
            platform: Platform::Fcm,
            token: "t-1".into(),
            p256dh: None,
            auth: None,
        };
        let (registered, created) = store
            .register_device(&user("ana"), &device, 10, now)
            .await
            .unwrap();
        assert!(created, "{name}");
        store.append(vec![like("ana", "p1", "bob")]).await.unwrap();
        store.append(vec![like("ana", "p1", "cleo")]).await.unwrap();
        assert_eq!(store.push_jobs_waiting().await.unwrap(), 1, "{name}");
        store.append(vec![like("ana", "p2", "bob")]).await.unwrap();
        assert_eq!(store.push_jobs_waiting().await.unwrap(), 2, "{name}");
        assert!(store.delete_device(None, registered.id).await.unwrap());
        assert_eq!(store.push_jobs_waiting().await.unwrap(), 0, "{name}");

        // The per-climber cap forgets the least recently seen device.
        for i in 0..4 {
            let device = NewDevice {
                token: format!("cap-{i}"),
                ..device.clone()
            };
            let at = now + chrono::Duration::seconds(i);
            store
                .register_device(&user("bob"), &device, 3, at)
                .await
                .unwrap();
        }
        let kept: Vec<String> = store
            .devices(&user("bob"))
            .await
            .unwrap()
            .into_iter()
            .map(|d| d.token)
            .collect();
        assert_eq!(kept, ["cap-3", "cap-2", "cap-1"], "{name}");
        // Devices not seen since a moment are pruned.
        let pruned = store
            .prune_devices(now + chrono::Duration::milliseconds(1500))
            .await
            .unwrap();
        assert_eq!(pruned, 1, "{name}");
    }
}

/// Nodes started together on a new database take turns with the migrations: each opens the
/// store, none fails on another's half-applied schema (MariaDB/MySQL cannot roll back DDL).
#[tokio::test]
async fn nodes_starting_together_on_a_new_database_take_turns_with_the_migrations() {
    const NODES: usize = 6;
    for server in [Server::Postgres, Server::MySql] {
        let Some(database) = fresh_database(server).await else {
            continue;
        };
        let opened = futures_util::future::join_all(
            (0..NODES).map(|_| belay::store::connect(&database.url, 2)),
        )
        .await;
        let stores: Vec<Arc<dyn Store>> = opened
            .into_iter()
            .enumerate()
            .map(|(i, store)| {
                store.unwrap_or_else(|e| panic!("{}: node {i}: {e:#}", server.name()))
            })
            .collect();
        // Every node writes through the schema the others saw applied.
        for (i, store) in stores.iter().enumerate() {
            let appended = store
                .append(vec![event(i)])
                .await
                .unwrap_or_else(|e| panic!("{}: node {i}: {e:#}", server.name()));
            assert_eq!(appended.len(), 1, "{}", server.name());
        }
    }
}
