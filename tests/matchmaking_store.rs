//! Contract tests of the matchmaking side of the `Store` interface (matches, challenges,
//! climbers, ratings, leaderboards, ascents), run against every backend this build has.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use belay::domain::event::Performance;
use belay::domain::{
    AscentOutcome, AscentResult, Challenge, ChallengeStatus, Cursor, Discipline, Event, Grade,
    Match, MatchOrigin, MatchStatus, NewAscent, Player, PostId, PostLiked, Rating, RouteId, UserId,
};
use belay::matchmaking::rating;
use belay::store::{Applied, Change, ChangeOutcome, NewEvent, Settlement, Store};
use chrono::{DateTime, TimeZone, Utc};
use support::{backends, user};
use uuid::Uuid;

// ---- builders ----

/// A fixed instant plus `ms`, so stored and expected values compare exactly.
fn at(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(1_750_000_000_000 + ms).unwrap()
}

fn player(id: &str) -> Player {
    Player {
        user_id: user(id),
        ready: false,
        reported_winner: None,
        queued_since: Some(at(-5_000)),
        rating: 1500.0,
    }
}

fn a_match(a: &str, b: &str, discipline: Discipline, status: MatchStatus) -> Match {
    Match {
        match_id: Uuid::new_v4(),
        discipline,
        scope: None,
        origin: MatchOrigin::Queue,
        status,
        created_at: at(0),
        ready_deadline: at(30_000),
        result_deadline: None,
        players: [player(a), player(b)],
        winner: None,
        cancel_reason: None,
        cancelled_by: Vec::new(),
        updated_at: at(0),
    }
}

/// A match between `a` and `b` that both reported `winner` won.
fn settled(a: &str, b: &str, winner: &str, discipline: Discipline) -> Match {
    let mut m = a_match(a, b, discipline, MatchStatus::Settled);
    m.result_deadline = Some(at(900_000));
    for p in &mut m.players {
        p.ready = true;
        p.reported_winner = Some(user(winner));
    }
    m.winner = Some(user(winner));
    m.updated_at = at(60_000);
    m
}

fn challenge(from: &str, to: &str, status: ChallengeStatus) -> Challenge {
    Challenge {
        challenge_id: Uuid::new_v4(),
        from: user(from),
        to: user(to),
        discipline: Discipline::Boulder,
        created_at: at(0),
        expires_at: at(120_000),
        status,
        match_id: None,
    }
}

fn like(to: &str, post: &str) -> NewEvent {
    NewEvent {
        user: user(to),
        event: Event::PostLiked(PostLiked::new(PostId::parse(post).unwrap(), user("fan"))),
        idempotency_key: None,
    }
}

fn grade(discipline: Discipline, raw: &str) -> AscentResult {
    AscentResult::Grade(Grade::parse(discipline, raw).unwrap())
}

fn ascent(who: &str, route: &str, discipline: Discipline, result: AscentResult) -> NewAscent {
    NewAscent {
        ascent_id: Uuid::new_v4(),
        user: user(who),
        route_id: RouteId::parse(route).unwrap(),
        discipline,
        result,
        at: at(NEXT_ASCENT_MS.fetch_add(1_000, Ordering::Relaxed)),
    }
}

/// Ascents are logged a second apart, in the order a test logs them.
static NEXT_ASCENT_MS: AtomicI64 = AtomicI64::new(0);

// ---- actions and reads ----

async fn apply(store: &dyn Store, changes: Vec<Change>, batch: Vec<NewEvent>) -> Applied {
    store
        .apply_then(changes, batch, Box::new(|_| ()))
        .await
        .unwrap()
}

async fn save(store: &dyn Store, changes: Vec<Change>) {
    let applied = apply(store, changes, Vec::new()).await;
    assert!(
        applied.outcomes.iter().all(|o| *o == ChangeOutcome::Done),
        "saving has no outcome: {:?}",
        applied.outcomes
    );
    assert!(applied.appended.is_empty(), "saving emits no event");
}

/// Settles `m` alone and returns its settlement and the events it appended.
async fn settle(store: &dyn Store, m: Match) -> (Settlement, Vec<(UserId, Event)>) {
    let applied = apply(store, vec![Change::Settle(m)], Vec::new()).await;
    let [ChangeOutcome::Settled(settlement)] = applied.outcomes.as_slice() else {
        panic!("one settlement expected, got {:?}", applied.outcomes);
    };
    (settlement.clone(), emitted(&applied))
}

/// Logs one ascent; returns its outcome and the events it caused (all for the climber).
async fn log(store: &dyn Store, a: NewAscent) -> (AscentOutcome, Vec<Event>) {
    let who = a.user.clone();
    let applied = apply(store, vec![Change::Ascent(a)], Vec::new()).await;
    let [ChangeOutcome::Ascent(outcome)] = applied.outcomes.as_slice() else {
        panic!("one ascent outcome expected, got {:?}", applied.outcomes);
    };
    let events = emitted(&applied)
        .into_iter()
        .map(|(to, event)| {
            assert_eq!(to, who, "ascent events go to the climber only");
            event
        })
        .collect();
    (outcome.clone(), events)
}

fn emitted(applied: &Applied) -> Vec<(UserId, Event)> {
    applied
        .appended
        .iter()
        .map(|a| (a.user.clone(), a.notification.event.clone()))
        .collect()
}

async fn events_after(store: &dyn Store, who: &str, after: Cursor) -> Vec<Event> {
    store
        .events_after(&user(who), after, 1_000)
        .await
        .unwrap()
        .into_iter()
        .map(|n| n.event)
        .collect()
}

async fn rating_of(store: &dyn Store, who: &str, discipline: Discipline) -> Option<Rating> {
    store.rating(&user(who), discipline).await.unwrap()
}

/// `(old_rank, new_rank, rating)` of a `rank_changed`.
type RankMove = (Option<u32>, u32, f64);

/// Every `rank_changed` among `events`.
fn rank_moves(events: &[Event]) -> Vec<RankMove> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::RankChanged {
                old_rank,
                new_rank,
                rating,
                ..
            } => Some((*old_rank, *new_rank, *rating)),
            _ => None,
        })
        .collect()
}

fn route_completions(events: &[Event]) -> Vec<(String, String)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::RouteCompleted { route_id, grade } => {
                Some((route_id.to_string(), grade.clone()))
            }
            _ => None,
        })
        .collect()
}

/// `(grade, time_ms, previous)` of every `personal_record` among `events`.
type Record = (Option<String>, Option<u64>, Option<Performance>);

fn records(events: &[Event]) -> Vec<Record> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::PersonalRecord {
                grade,
                time_ms,
                previous,
                ..
            } => Some((grade.clone(), *time_ms, previous.clone())),
            _ => None,
        })
        .collect()
}

fn prev_grade(g: &str) -> Option<Performance> {
    Some(Performance::Grade(g.to_owned()))
}

/// The whole leaderboard of a discipline: user → (rank, rating).
async fn board(store: &dyn Store, discipline: Discipline) -> BTreeMap<String, (u32, f64)> {
    store
        .leaderboard(discipline, 0, 1_000)
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.user_id.to_string(), (e.rank, e.rating)))
        .collect()
}

/// Three newcomer matches (a, c, e win; b, d, f lose), then a beats c. Boulder afterwards:
/// a > e (1662) > c > b = d = f (1338).
async fn seed_boulder_board(store: &dyn Store) {
    for (w, l) in [("a", "b"), ("c", "d"), ("e", "f"), ("a", "c")] {
        settle(store, settled(w, l, w, Discipline::Boulder)).await;
    }
}

// ---- matches, challenges, climbers ----

#[tokio::test]
async fn a_saved_match_reads_back_as_saved_and_a_second_save_replaces_it() {
    for (name, backend) in backends().await {
        let store = &*backend.store;
        let mut m = a_match("ana", "bob", Discipline::Lead, MatchStatus::ReadyCheck);

        save(store, vec![Change::SaveMatch(m.clone())]).await;
        assert_eq!(
            store.get_match(m.match_id).await.unwrap(),
            Some(m.clone()),
            "{name}"
        );

        m.status = MatchStatus::Confirmed;
        m.players[0].ready = true;
        m.players[1].ready = true;
        m.result_deadline = Some(at(900_000));
        m.updated_at = at(10_000);
        save(store, vec![Change::SaveMatch(m.clone())]).await;

        assert_eq!(
            store.get_match(m.match_id).await.unwrap(),
            Some(m),
            "{name}"
        );
        assert_eq!(
            store.get_match(Uuid::new_v4()).await.unwrap(),
            None,
            "{name}"
        );
    }
}

#[tokio::test]
async fn live_matches_are_only_those_in_the_ready_check_or_confirmed() {
    for (name, backend) in backends().await {
        let store = &*backend.store;
        let all = [
            MatchStatus::ReadyCheck,
            MatchStatus::Confirmed,
            MatchStatus::Settled,
            MatchStatus::Disputed,
            MatchStatus::Cancelled,
            MatchStatus::Expired,
        ];
        let matches: Vec<Match> = all
            .iter()
            .enumerate()
            .map(|(i, status)| {
                a_match(
                    &format!("p{i}"),
                    &format!("q{i}"),
                    Discipline::Boulder,
                    *status,
                )
            })
            .collect();
        save(
            store,
            matches.iter().cloned().map(Change::SaveMatch).collect(),
        )
        .await;

        let mut live = store.live_matches().await.unwrap();
        live.sort_by_key(|m| m.status.as_str());

        let mut expected = matches[..2].to_vec();
        expected.sort_by_key(|m| m.status.as_str());
        assert_eq!(live, expected, "{name}");

        // A live match that ends leaves the list.
        let mut ended = matches[0].clone();
        ended.status = MatchStatus::Cancelled;
        save(store, vec![Change::SaveMatch(ended)]).await;
        let live = store.live_matches().await.unwrap();
        assert_eq!(live, [matches[1].clone()], "{name}");
    }
}

#[tokio::test]
async fn pending_challenges_are_only_those_still_pending() {
    for (name, backend) in backends().await {
        let store = &*backend.store;
        let pending = challenge("ana", "bob", ChallengeStatus::Pending);
        let others = [
            ChallengeStatus::Accepted,
            ChallengeStatus::Declined,
            ChallengeStatus::Expired,
            ChallengeStatus::Withdrawn,
        ]
        .map(|s| challenge("carl", "dora", s));
        let mut changes = vec![Change::SaveChallenge(pending.clone())];
        changes.extend(others.iter().cloned().map(Change::SaveChallenge));
        save(store, changes).await;

        assert_eq!(
            store.pending_challenges().await.unwrap(),
            std::slice::from_ref(&pending),
            "{name}"
        );

        let mut accepted = pending;
        accepted.status = ChallengeStatus::Accepted;
        accepted.match_id = Some(Uuid::new_v4());
        save(store, vec![Change::SaveChallenge(accepted)]).await;
        assert!(
            store.pending_challenges().await.unwrap().is_empty(),
            "{name}: the replaced challenge is no longer pending"
        );
    }
}

#[tokio::test]
async fn a_seen_climber_is_known_and_an_unseen_one_is_not() {
    for (name, backend) in backends().await {
        let store = &*backend.store;

        save(store, vec![Change::SeeUser(user("ana"))]).await;
        save(store, vec![Change::SeeUser(user("ana"))]).await;

        assert!(store.user_known(&user("ana")).await.unwrap(), "{name}");
        assert!(!store.user_known(&user("bob")).await.unwrap(), "{name}");
    }
}

#[tokio::test]
async fn many_rating_lookups_at_once_each_get_their_own_climber_and_discipline() {
    for (name, backend) in backends().await {
        let store = &*backend.store;
        // c0..c19 have boulder ratings, c10..c29 lead ratings, c30..c39 none.
        let mut expected = std::collections::HashMap::new();
        for (discipline, first) in [(Discipline::Boulder, 0), (Discipline::Lead, 10)] {
            for pair in (first..first + 20).step_by(2) {
                let (a, b) = (format!("c{pair}"), format!("c{}", pair + 1));
                let (settlement, _) = settle(store, settled(&a, &b, &b, discipline)).await;
                for (who, _, after) in settlement.ratings {
                    expected.insert((who.to_string(), discipline), after);
                }
            }
        }
        let mut lookups = Vec::new();
        for round in 0..3 {
            for n in 0..40 {
                // Interleaved, so one batch holds climbers with, without and with other ratings.
                let who = format!("c{}", (n * 7 + round) % 40);
                for discipline in [Discipline::Boulder, Discipline::Lead, Discipline::Speed] {
                    lookups.push((user(&who), discipline));
                }
            }
        }
        let answers = futures_util::future::join_all(
            lookups
                .iter()
                .map(|(who, discipline)| store.rating(who, *discipline)),
        )
        .await;
        for ((who, discipline), answer) in lookups.iter().zip(answers) {
            assert_eq!(
                answer.unwrap(),
                expected.get(&(who.to_string(), *discipline)).copied(),
                "{name}: {who} {discipline:?}"
            );
        }
    }
}

// ---- settling and ranks ----

#[tokio::test]
async fn settling_stores_the_glicko2_update_of_the_previous_ratings() {
    for (name, backend) in backends().await {
        let store = &*backend.store;
        // The winner is listed second: settlements follow the match's player order.
        let first = settled("bob", "ana", "ana", Discipline::Boulder);

        let (settlement, _) = settle(store, first.clone()).await;

        let (ana_1, bob_1) = rating::settle(&rating::initial(), &rating::initial());
        assert_eq!(
            settlement.ratings,
            [
                (user("bob"), rating::initial(), bob_1),
                (user("ana"), rating::initial(), ana_1)
            ],
            "{name}"
        );
        assert_eq!(
            rating_of(store, "ana", Discipline::Boulder).await,
            Some(ana_1)
        );
        assert_eq!(
            rating_of(store, "bob", Discipline::Boulder).await,
            Some(bob_1)
        );
        assert_eq!((ana_1.matches, bob_1.matches), (1, 1), "{name}");
        assert_eq!(store.get_match(first.match_id).await.unwrap(), Some(first));

        let second = settled("ana", "bob", "bob", Discipline::Boulder);
        let (settlement, _) = settle(store, second).await;

        let (bob_2, ana_2) = rating::settle(&bob_1, &ana_1);
        assert_eq!(
            settlement.ratings,
            [(user("ana"), ana_1, ana_2), (user("bob"), bob_1, bob_2)],
            "{name}"
        );
        assert_eq!(
            rating_of(store, "ana", Discipline::Boulder).await,
            Some(ana_2)
        );
        assert_eq!(
            rating_of(store, "bob", Discipline::Boulder).await,
            Some(bob_2)
        );
        assert_eq!((ana_2.matches, bob_2.matches), (2, 2), "{name}");
        assert_eq!(
            rating_of(store, "ana", Discipline::Lead).await,
            None,
            "{name}"
        );
    }
}

#[tokio::test]
async fn settling_tells_both_players_the_winner_and_their_own_new_rating() {
    for (name, backend) in backends().await {
        let store = &*backend.store;
        let m = settled("ana", "bob", "bob", Discipline::Lead);

        let (settlement, _) = settle(store, m.clone()).await;

        for (who, _, after) in &settlement.ratings {
            let results: Vec<Event> = events_after(store, who.as_str(), Cursor::ZERO)
                .await
                .into_iter()
                .filter(|e| matches!(e, Event::MatchResult { .. }))
                .collect();
            assert_eq!(
                results,
                [Event::MatchResult {
                    match_id: m.match_id,
                    winner: user("bob"),
                    rating: after.rating,
                }],
                "{name}: {who}"
            );
        }
    }
}

#[tokio::test]
async fn settling_tells_the_players_and_exactly_the_climbers_they_passed_their_new_rank() {
    for (name, backend) in backends().await {
        let store = &*backend.store;
        seed_boulder_board(store).await;
        let before = board(store, Discipline::Boulder).await;
        let mut heads = BTreeMap::new();
        for who in before.keys() {
            heads.insert(who.clone(), store.head(&user(who)).await.unwrap());
        }

        // f (1338, tied with b and d) upsets e (1662).
        let (settlement, _) = settle(store, settled("e", "f", "f", Discipline::Boulder)).await;

        let after = board(store, Discipline::Boulder).await;
        let mut told = BTreeMap::new();
        for (who, head) in &heads {
            let moves = rank_moves(&events_after(store, who, *head).await);
            if !moves.is_empty() {
                told.insert(who.clone(), moves);
            }
        }
        // Both players were rated before, so everyone whose rank changed was passed.
        let expected: BTreeMap<String, Vec<RankMove>> = after
            .iter()
            .filter(|(who, (rank, _))| before[*who].0 != *rank)
            .map(|(who, (rank, rating))| (who.clone(), vec![(Some(before[who].0), *rank, *rating)]))
            .collect();
        assert_eq!(told, expected, "{name}: before {before:?} after {after:?}");
        assert_eq!(
            told["b"],
            [(Some(4), 5, before["b"].1)],
            "{name}: f passed b"
        );
        assert_eq!(
            told["d"],
            [(Some(4), 5, before["d"].1)],
            "{name}: f passed d"
        );
        assert!(told.contains_key("f") && told.contains_key("e"), "{name}");
        assert!(!told.contains_key("a"), "{name}: nobody passed the leader");
        let mut reported: Vec<(String, RankMove)> = settlement
            .rank_changes
            .iter()
            .map(|c| (c.user.to_string(), (c.old_rank, c.new_rank, c.rating)))
            .collect();
        reported.sort_by(|x, y| x.0.cmp(&y.0));
        let flat: Vec<(String, RankMove)> = told
            .iter()
            .map(|(who, moves)| (who.clone(), moves[0]))
            .collect();
        assert_eq!(reported, flat, "{name}: the settlement lists what was sent");
    }
}

#[tokio::test]
async fn a_first_match_ranks_the_newcomers_without_telling_those_they_enter_above() {
    for (name, backend) in backends().await {
        let store = &*backend.store;
        seed_boulder_board(store).await;
        let seeded = board(store, Discipline::Boulder).await;
        let mut heads = BTreeMap::new();
        for who in seeded.keys() {
            heads.insert(who.clone(), store.head(&user(who)).await.unwrap());
        }

        settle(store, settled("gil", "hal", "gil", Discipline::Boulder)).await;

        let after = board(store, Discipline::Boulder).await;
        for newcomer in ["gil", "hal"] {
            let moves = rank_moves(&events_after(store, newcomer, Cursor::ZERO).await);
            let (rank, rating) = after[newcomer];
            assert_eq!(moves, [(None, rank, rating)], "{name}: {newcomer}");
        }
        // gil (1662) now sits above c, b, d and f; hal (1338) ties with b, d and f.
        assert!(after["c"].0 > seeded["c"].0, "{name}: c's rank did change");
        for (who, head) in &heads {
            let moves = rank_moves(&events_after(store, who, *head).await);
            assert!(moves.is_empty(), "{name}: {who} was not passed: {moves:?}");
        }
    }
}

// ---- leaderboards ----

#[tokio::test]
async fn the_leaderboard_lists_highest_rating_first_with_ties_sharing_a_rank() {
    for (name, backend) in backends().await {
        let store = &*backend.store;
        for (w, l) in [("e", "f"), ("a", "b"), ("c", "d")] {
            settle(store, settled(w, l, w, Discipline::Boulder)).await;
        }

        let entries = store.leaderboard(Discipline::Boulder, 0, 10).await.unwrap();

        let got: Vec<(String, u32)> = entries
            .iter()
            .map(|e| (e.user_id.to_string(), e.rank))
            .collect();
        let expected = [("a", 1), ("c", 1), ("e", 1), ("b", 4), ("d", 4), ("f", 4)]
            .map(|(u, r)| (u.to_owned(), r));
        assert_eq!(got, expected, "{name}: ties ordered by user id");
        for e in &entries {
            let r = rating_of(store, e.user_id.as_str(), Discipline::Boulder)
                .await
                .unwrap();
            assert_eq!(
                (e.rating, e.deviation, e.matches),
                (r.rating, r.deviation, r.matches),
                "{name}: {}",
                e.user_id
            );
        }
    }
}

#[tokio::test]
async fn leaderboard_pages_keep_the_ranks_of_the_whole_board() {
    for (name, backend) in backends().await {
        let store = &*backend.store;
        for (w, l) in [("a", "b"), ("c", "d"), ("e", "f")] {
            settle(store, settled(w, l, w, Discipline::Boulder)).await;
        }
        let page = |offset, limit| async move {
            store
                .leaderboard(Discipline::Boulder, offset, limit)
                .await
                .unwrap()
                .into_iter()
                .map(|e| (e.user_id.to_string(), e.rank))
                .collect::<Vec<_>>()
        };
        let owned = |rows: &[(&str, u32)]| -> Vec<(String, u32)> {
            rows.iter().map(|(u, r)| ((*u).to_owned(), *r)).collect()
        };

        assert_eq!(page(0, 2).await, owned(&[("a", 1), ("c", 1)]), "{name}");
        assert_eq!(page(2, 2).await, owned(&[("e", 1), ("b", 4)]), "{name}");
        assert_eq!(page(4, 10).await, owned(&[("d", 4), ("f", 4)]), "{name}");
        assert_eq!(page(6, 10).await, owned(&[]), "{name}");
    }
}

#[tokio::test]
async fn each_discipline_has_its_own_ratings_and_leaderboard() {
    for (name, backend) in backends().await {
        let store = &*backend.store;
        settle(store, settled("a", "b", "a", Discipline::Boulder)).await;
        let boulder_a = rating_of(store, "a", Discipline::Boulder).await.unwrap();
        let head_a = store.head(&user("a")).await.unwrap();

        let (settlement, _) = settle(store, settled("b", "a", "b", Discipline::Lead)).await;

        // Lead starts from scratch, whatever happened in boulder.
        let (b_lead, a_lead) = rating::settle(&rating::initial(), &rating::initial());
        assert_eq!(
            settlement.ratings,
            [
                (user("b"), rating::initial(), b_lead),
                (user("a"), rating::initial(), a_lead)
            ],
            "{name}"
        );
        assert_eq!(
            rating_of(store, "a", Discipline::Boulder).await,
            Some(boulder_a),
            "{name}"
        );
        let lead: Vec<String> = board(store, Discipline::Lead).await.into_keys().collect();
        assert_eq!(lead, ["a", "b"], "{name}");
        let boulder = store.leaderboard(Discipline::Boulder, 0, 10).await.unwrap();
        let boulder: Vec<(String, u32)> = boulder
            .iter()
            .map(|e| (e.user_id.to_string(), e.rank))
            .collect();
        assert_eq!(
            boulder,
            [("a".to_owned(), 1), ("b".to_owned(), 2)],
            "{name}: lead results leave boulder alone"
        );
        assert!(
            store
                .leaderboard(Discipline::Speed, 0, 10)
                .await
                .unwrap()
                .is_empty(),
            "{name}"
        );
        let lead_ranks: Vec<Discipline> = events_after(store, "a", head_a)
            .await
            .iter()
            .filter_map(|e| match e {
                Event::RankChanged { discipline, .. } => Some(*discipline),
                _ => None,
            })
            .collect();
        assert_eq!(lead_ranks, [Discipline::Lead], "{name}");
    }
}

// ---- ascents ----

#[tokio::test]
async fn a_first_send_completes_the_route_and_sending_it_again_does_not() {
    for (name, backend) in backends().await {
        let store = &*backend.store;
        let b = Discipline::Boulder;

        let (first, events) = log(store, ascent("ana", "r1", b, grade(b, "7a"))).await;

        assert_eq!(
            route_completions(&events),
            [("r1".to_owned(), "7A".to_owned())],
            "{name}"
        );
        assert_eq!(
            records(&events),
            [(Some("7A".to_owned()), None, None)],
            "{name}"
        );
        assert!(first.first_send && first.personal_record, "{name}");
        assert_eq!(first.previous, None, "{name}");

        let (again, events) = log(store, ascent("ana", "r1", b, grade(b, "7A"))).await;

        assert!(events.is_empty(), "{name}: {events:?}");
        assert!(!again.first_send && !again.personal_record, "{name}");
        assert_eq!(again.previous, prev_grade("7A"), "{name}");

        // Another climber's first send of the same route is theirs.
        let (other, events) = log(store, ascent("bob", "r1", b, grade(b, "7A"))).await;
        assert!(other.first_send, "{name}");
        assert_eq!(route_completions(&events).len(), 1, "{name}");
    }
}

#[tokio::test]
async fn a_harder_grade_is_a_personal_record_and_an_easier_one_is_not() {
    for (name, backend) in backends().await {
        let store = &*backend.store;
        let l = Discipline::Lead;
        log(store, ascent("ana", "r1", l, grade(l, "6c"))).await;

        let (harder, events) = log(store, ascent("ana", "r2", l, grade(l, "7B+"))).await;

        assert_eq!(
            records(&events),
            [(Some("7b+".to_owned()), None, prev_grade("6c"))],
            "{name}"
        );
        assert!(harder.first_send && harder.personal_record, "{name}");
        assert_eq!(harder.previous, prev_grade("6c"), "{name}");

        let (easier, events) = log(store, ascent("ana", "r3", l, grade(l, "6a"))).await;

        assert_eq!(
            route_completions(&events),
            [("r3".to_owned(), "6a".to_owned())],
            "{name}"
        );
        assert!(records(&events).is_empty(), "{name}: {events:?}");
        assert!(easier.first_send && !easier.personal_record, "{name}");
        assert_eq!(easier.previous, prev_grade("7b+"), "{name}");
    }
}

#[tokio::test]
async fn v_scale_and_font_grades_compare_for_boulder_records() {
    for (name, backend) in backends().await {
        let store = &*backend.store;
        let b = Discipline::Boulder;
        log(store, ascent("ana", "r1", b, grade(b, "6C"))).await;

        // V5 is 6C: as hard, not harder.
        let (same, events) = log(store, ascent("ana", "r2", b, grade(b, "v5"))).await;
        assert!(
            !same.personal_record && records(&events).is_empty(),
            "{name}"
        );

        // V6 is 7A: harder than 6C.
        let (harder, events) = log(store, ascent("ana", "r3", b, grade(b, "V6"))).await;
        assert!(harder.personal_record, "{name}");
        assert_eq!(
            records(&events),
            [(Some("V6".to_owned()), None, prev_grade("6C"))],
            "{name}"
        );

        let (font, events) = log(store, ascent("ana", "r4", b, grade(b, "7A+"))).await;
        assert!(font.personal_record, "{name}");
        assert_eq!(
            records(&events),
            [(Some("7A+".to_owned()), None, prev_grade("V6"))],
            "{name}"
        );
    }
}

#[tokio::test]
async fn records_are_kept_per_discipline() {
    for (name, backend) in backends().await {
        let store = &*backend.store;
        let (b, l) = (Discipline::Boulder, Discipline::Lead);
        log(store, ascent("ana", "boulder-1", b, grade(b, "8A"))).await;

        let (lead, events) = log(store, ascent("ana", "lead-1", l, grade(l, "5a"))).await;

        assert!(lead.personal_record, "{name}");
        assert_eq!(lead.previous, None, "{name}");
        assert_eq!(
            records(&events),
            [(Some("5a".to_owned()), None, None)],
            "{name}"
        );
    }
}

#[tokio::test]
async fn a_faster_speed_time_is_a_personal_record_and_a_slower_one_is_not() {
    for (name, backend) in backends().await {
        let store = &*backend.store;
        let s = Discipline::Speed;

        let (first, events) =
            log(store, ascent("ana", "wall", s, AscentResult::TimeMs(7_200))).await;
        assert!(first.first_send && first.personal_record, "{name}");
        assert_eq!(records(&events), [(None, Some(7_200), None)], "{name}");
        // What `grade` says for a speed route is not part of the contract; the route is.
        let completed: Vec<String> = route_completions(&events)
            .into_iter()
            .map(|r| r.0)
            .collect();
        assert_eq!(completed, ["wall"], "{name}");

        let (faster, events) =
            log(store, ascent("ana", "wall", s, AscentResult::TimeMs(6_450))).await;
        assert!(!faster.first_send && faster.personal_record, "{name}");
        assert_eq!(faster.previous, Some(Performance::TimeMs(7_200)), "{name}");
        assert_eq!(
            records(&events),
            [(None, Some(6_450), Some(Performance::TimeMs(7_200)))],
            "{name}"
        );
        assert!(route_completions(&events).is_empty(), "{name}");

        let (slower, events) =
            log(store, ascent("ana", "wall", s, AscentResult::TimeMs(6_900))).await;
        assert!(!slower.personal_record, "{name}");
        assert_eq!(slower.previous, Some(Performance::TimeMs(6_450)), "{name}");
        assert!(events.is_empty(), "{name}: {events:?}");
    }
}

// ---- transactions and cursors ----

#[tokio::test]
async fn a_change_and_its_batch_commit_together_with_gapless_cursors() {
    for (name, backend) in backends().await {
        let store = &*backend.store;
        store
            .append(vec![like("ana", "p1"), like("ana", "p2")])
            .await
            .unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let hook = seen.clone();

        let applied = store
            .apply_then(
                vec![
                    Change::SeeUser(user("ana")),
                    Change::Settle(settled("ana", "bob", "ana", Discipline::Boulder)),
                ],
                vec![like("ana", "p3"), like("cyd", "p4")],
                Box::new(move |appended| {
                    let mut seen = hook.lock().unwrap();
                    seen.extend(
                        appended
                            .iter()
                            .map(|a| (a.user.to_string(), a.notification.cursor.0)),
                    );
                }),
            )
            .await
            .unwrap();

        let kinds: Vec<(String, &str)> = applied
            .appended
            .iter()
            .map(|a| (a.user.to_string(), event_kind(&a.notification.event)))
            .collect();
        assert_eq!(
            kinds[..4],
            [
                ("ana".to_owned(), "post_liked"),
                ("cyd".to_owned(), "post_liked"),
                ("ana".to_owned(), "match_result"),
                ("bob".to_owned(), "match_result"),
            ],
            "{name}: the batch first, then what the changes produced"
        );
        let cursors: Vec<(String, i64)> = applied
            .appended
            .iter()
            .map(|a| (a.user.to_string(), a.notification.cursor.0))
            .collect();
        assert_eq!(
            *seen.lock().unwrap(),
            cursors,
            "{name}: the hook saw every event"
        );
        let ana: Vec<i64> = store
            .events_after(&user("ana"), Cursor::ZERO, 100)
            .await
            .unwrap()
            .iter()
            .map(|n| n.cursor.0)
            .collect();
        assert_eq!(
            ana,
            [1, 2, 3, 4, 5],
            "{name}: likes, match_result, rank_changed"
        );
        assert_eq!(store.head(&user("ana")).await.unwrap(), Cursor(5), "{name}");
        let bob: Vec<&str> = events_after(store, "bob", Cursor::ZERO)
            .await
            .iter()
            .map(event_kind)
            .collect();
        assert_eq!(bob, ["match_result", "rank_changed"], "{name}");
        assert_eq!(
            events_after(store, "cyd", Cursor::ZERO).await.len(),
            1,
            "{name}"
        );
        assert!(store.user_known(&user("ana")).await.unwrap(), "{name}");
    }
}

#[tokio::test]
async fn a_failing_change_commits_nothing_of_its_transaction() {
    for (name, backend) in backends().await {
        let store = &*backend.store;
        store.append(vec![like("ana", "p1")]).await.unwrap();
        let saved = a_match("ana", "bob", Discipline::Boulder, MatchStatus::ReadyCheck);
        let mut no_winner = settled("ana", "bob", "ana", Discipline::Boulder);
        no_winner.winner = None;
        let hook_ran = Arc::new(Mutex::new(false));
        let hook = hook_ran.clone();

        let result = store
            .apply_then(
                vec![
                    Change::SeeUser(user("ana")),
                    Change::SaveMatch(saved.clone()),
                    Change::Settle(no_winner),
                ],
                vec![like("ana", "p2")],
                Box::new(move |_| *hook.lock().unwrap() = true),
            )
            .await;

        assert!(result.is_err(), "{name}: a settled match needs a winner");
        assert!(!*hook_ran.lock().unwrap(), "{name}: nothing was committed");
        assert_eq!(
            store.get_match(saved.match_id).await.unwrap(),
            None,
            "{name}"
        );
        assert!(!store.user_known(&user("ana")).await.unwrap(), "{name}");
        assert_eq!(store.head(&user("ana")).await.unwrap(), Cursor(1), "{name}");
        assert_eq!(
            rating_of(store, "ana", Discipline::Boulder).await,
            None,
            "{name}"
        );

        // The store still works, and the next cursor follows the last committed one.
        let next = store.append(vec![like("ana", "p3")]).await.unwrap();
        assert_eq!(next[0].notification.cursor, Cursor(2), "{name}");
    }
}

fn event_kind(e: &Event) -> &'static str {
    e.kind().as_str()
}

fn ticket(who: &str, rating: f64, queued_ms: i64) -> belay::domain::QueuedTicket {
    belay::domain::QueuedTicket {
        user: user(who),
        discipline: Discipline::Boulder,
        scope: None,
        rating,
        queued_at: at(queued_ms),
    }
}

/// One write of many steps, as the matchmaker commits them: every key ends as its last change
/// left it, whatever came before it in the same transaction.
#[tokio::test]
async fn within_one_write_the_last_change_of_each_key_wins() {
    for (name, backend) in backends().await {
        let store = backend.store.as_ref();
        let mut m = a_match("ana", "ben", Discipline::Boulder, MatchStatus::ReadyCheck);
        let mut confirmed = m.clone();
        confirmed.status = MatchStatus::Confirmed;
        let mut declined = challenge("cy", "dee", ChallengeStatus::Pending);
        let pending = declined.clone();
        declined.status = ChallengeStatus::Declined;
        m.players[0].ready = true;
        let works = vec![
            (
                vec![
                    Change::SeeUser(user("ana")),
                    Change::SaveTicket(ticket("ana", 1500.0, 1)),
                    Change::SaveTicket(ticket("ben", 1510.0, 2)),
                    Change::SaveTicket(ticket("cy", 1400.0, 3)),
                ],
                Vec::new(),
            ),
            (
                vec![
                    Change::DropTicket(user("ana")),
                    Change::DropTicket(user("ben")),
                    Change::SaveMatch(m.clone()),
                    Change::SaveChallenge(pending),
                ],
                vec![like("ana", "p1")],
            ),
            (
                vec![
                    Change::SaveMatch(confirmed.clone()),
                    Change::SaveTicket(ticket("ben", 1520.0, 2)),
                    Change::DropTicket(user("dee")),
                    Change::SaveChallenge(declined.clone()),
                    Change::SeeUser(user("ana")),
                ],
                Vec::new(),
            ),
        ];
        let applied = store.apply_many(works, Box::new(|_| ())).await.unwrap();
        assert_eq!(applied.len(), 3, "{name}");
        assert!(
            applied
                .iter()
                .flat_map(|a| &a.outcomes)
                .all(|o| *o == ChangeOutcome::Done),
            "{name}"
        );
        assert_eq!(applied[1].appended.len(), 1, "{name}");

        let mut tickets: Vec<(String, f64)> = store
            .queued_tickets()
            .await
            .unwrap()
            .into_iter()
            .map(|t| (t.user.to_string(), t.rating))
            .collect();
        tickets.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            tickets,
            [("ben".to_owned(), 1520.0), ("cy".to_owned(), 1400.0)],
            "{name}"
        );
        assert_eq!(
            store.get_match(m.match_id).await.unwrap(),
            Some(confirmed),
            "{name}"
        );
        assert!(
            store.pending_challenges().await.unwrap().is_empty(),
            "{name}"
        );
        assert!(store.user_known(&user("ana")).await.unwrap(), "{name}");
    }
}

// ---- the matchmaker fence (cluster mode) ----

fn fence(token: i64, command: Option<&str>) -> Change {
    Change::Fence {
        token,
        command: command.map(str::to_owned),
    }
}

#[tokio::test]
async fn a_fresh_store_has_fence_zero_and_no_command_applied() {
    for (name, backend) in backends().await {
        let read = backend.store.matchmaker_fence().await.unwrap();
        assert_eq!(read.token, 0, "{name}");
        assert_eq!(read.last_command, None, "{name}");
    }
}

#[tokio::test]
async fn the_last_command_applied_reads_back_for_a_new_leader() {
    for (name, backend) in backends().await {
        let store = backend.store.as_ref();
        save(store, vec![fence(1, Some("1700000000000-0"))]).await;
        save(store, vec![fence(1, Some("1700000000001-3"))]).await;
        // A timer's step carries the number but no command: the command id stays.
        save(store, vec![fence(1, None), Change::SeeUser(user("ana"))]).await;
        let read = backend
            .another_node()
            .await
            .matchmaker_fence()
            .await
            .unwrap();
        assert_eq!(read.token, 1, "{name}");
        assert_eq!(
            read.last_command.as_deref(),
            Some("1700000000001-3"),
            "{name}"
        );
    }
}

#[tokio::test]
async fn a_stale_fence_refuses_its_whole_transaction_and_writes_nothing() {
    for (name, backend) in backends().await {
        let store = backend.store.as_ref();
        save(store, vec![fence(2, Some("5-0"))]).await;
        // The successor (number 3) has written; the deposed leader (2) wakes and tries.
        let successor = backend.another_node().await;
        successor
            .apply_then(vec![fence(3, Some("6-0"))], Vec::new(), Box::new(|_| ()))
            .await
            .unwrap();
        let m = a_match("ana", "bob", Discipline::Boulder, MatchStatus::ReadyCheck);
        let hooked = Arc::new(Mutex::new(0usize));
        let counted = hooked.clone();
        let refused = store
            .apply_then(
                vec![
                    fence(2, Some("7-0")),
                    Change::SaveMatch(m.clone()),
                    Change::SeeUser(user("carla")),
                ],
                vec![like("ana", "p1")],
                Box::new(move |appended| *counted.lock().unwrap() += appended.len()),
            )
            .await
            .expect_err("a stale number is refused");
        assert!(belay::store::Fenced::is(&refused), "{name}: {refused:#}");
        assert_eq!(*hooked.lock().unwrap(), 0, "{name}: nothing published");
        assert_eq!(store.get_match(m.match_id).await.unwrap(), None, "{name}");
        assert!(!store.user_known(&user("carla")).await.unwrap(), "{name}");
        assert!(
            events_after(store, "ana", Cursor(0)).await.is_empty(),
            "{name}: no event stored"
        );
        let read = store.matchmaker_fence().await.unwrap();
        assert_eq!(
            (read.token, read.last_command.as_deref()),
            (3, Some("6-0")),
            "{name}"
        );
        // The same number as the recorded one still writes: it is the current leader's.
        save(
            store,
            vec![fence(3, Some("8-0")), Change::SaveMatch(m.clone())],
        )
        .await;
        assert!(
            store.get_match(m.match_id).await.unwrap().is_some(),
            "{name}"
        );
    }
}

#[tokio::test]
async fn a_refused_fence_does_not_fail_other_writers_grouped_with_it() {
    for (name, backend) in backends().await {
        let store = backend.store.clone();
        save(store.as_ref(), vec![fence(9, None)]).await;
        // Concurrent calls are grouped into one transaction by the writer: the stale one must
        // fail alone.
        let stale = {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .apply_then(
                        vec![fence(8, Some("1-0"))],
                        vec![like("ana", "p1")],
                        Box::new(|_| ()),
                    )
                    .await
            })
        };
        let fine: Vec<_> = (0..8)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move { store.append(vec![like("bob", &format!("p{i}"))]).await })
            })
            .collect();
        assert!(stale.await.unwrap().is_err(), "{name}");
        for f in fine {
            f.await.unwrap().unwrap();
        }
        assert_eq!(
            events_after(store.as_ref(), "bob", Cursor(0)).await.len(),
            8,
            "{name}"
        );
        assert!(
            events_after(store.as_ref(), "ana", Cursor(0))
                .await
                .is_empty(),
            "{name}"
        );
    }
}

#[tokio::test]
async fn a_climbers_standing_holds_only_their_ticket_latest_match_and_pending_challenges() {
    for (name, backend) in backends().await {
        let store = backend.store.as_ref();
        let mut ended = a_match("ana", "bob", Discipline::Boulder, MatchStatus::Cancelled);
        ended.created_at = at(1_000);
        let mut live = a_match("cy", "ana", Discipline::Lead, MatchStatus::ReadyCheck);
        live.created_at = at(2_000);
        let others = a_match("bob", "cy", Discipline::Boulder, MatchStatus::ReadyCheck);
        let incoming = challenge("dan", "ana", ChallengeStatus::Pending);
        let outgoing = challenge("ana", "eve", ChallengeStatus::Pending);
        let declined = challenge("fay", "ana", ChallengeStatus::Declined);
        let not_hers = challenge("dan", "eve", ChallengeStatus::Pending);
        save(
            store,
            vec![
                Change::SaveMatch(ended.clone()),
                Change::SaveMatch(others),
                Change::SaveChallenge(incoming.clone()),
                Change::SaveChallenge(outgoing.clone()),
                Change::SaveChallenge(declined),
                Change::SaveChallenge(not_hers),
                Change::SaveTicket(ticket("ana", 1510.0, 500)),
                Change::SaveTicket(ticket("bob", 1490.0, 600)),
            ],
        )
        .await;

        let standing = store.standing_of(&user("ana")).await.unwrap();
        assert_eq!(
            standing.ticket.map(|t| (t.user, t.rating)),
            Some((user("ana"), 1510.0)),
            "{name}"
        );
        assert_eq!(
            standing.latest.map(|m| m.match_id),
            Some(ended.match_id),
            "{name}: her latest match, ended"
        );
        let mut ids: Vec<Uuid> = standing.challenges.iter().map(|c| c.challenge_id).collect();
        ids.sort();
        let mut expected = vec![incoming.challenge_id, outgoing.challenge_id];
        expected.sort();
        assert_eq!(ids, expected, "{name}: pending, sent or received");

        // A newer match, where she is the second player, is the latest one.
        save(store, vec![Change::SaveMatch(live.clone())]).await;
        let standing = store.standing_of(&user("ana")).await.unwrap();
        assert_eq!(
            standing.latest.map(|m| m.match_id),
            Some(live.match_id),
            "{name}"
        );
        let nobody = store.standing_of(&user("zed")).await.unwrap();
        assert!(
            nobody.ticket.is_none() && nobody.latest.is_none() && nobody.challenges.is_empty(),
            "{name}"
        );
    }
}
