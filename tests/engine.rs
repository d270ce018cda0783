#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Property and example tests of the match lifecycle (`matchmaking::engine`): random command
//! sequences checked against a model built only from what the engine emitted, plus examples.
//!
//! The properties follow DESIGN.md ("Matchmaking", invariant 2): no climber is held by two
//! matches at once, no ticket is paired twice, nobody is paired with themself, queue pairings
//! respect both rating windows, a requeued player keeps their original queue time, only a ready
//! queue player is requeued, refused commands change nothing, and every `match_found` ends in
//! exactly one of `match_confirmed` / `match_cancelled`.

use std::collections::{BTreeMap, BTreeSet};

use belay::domain::event::CancelReason;
use belay::domain::{
    Challenge, ChallengeStatus, Discipline, Event, Match, MatchOrigin, MatchStatus, QueuedTicket,
    Scope, UserId,
};
use belay::matchmaking::Millis;
use belay::matchmaking::engine::{Engine, QueueSpot, Refusal, Step, Timing};
use belay::matchmaking::policy::Policy;
use belay::matchmaking::pool::{Pool, QueueKey, Ticket};
use belay::store::{Change, NewEvent};
use chrono::{DateTime, Utc};
use proptest::prelude::*;
use proptest::strategy::Union;
use proptest::test_runner::TestCaseError;
use uuid::Uuid;

const TIMING: Timing = Timing {
    ready_ms: 10_000,
    challenge_ms: 20_000,
    result_ms: 30_000,
};

/// The clock starts somewhere in 2025, as the server's would.
const START: Millis = 1_750_000_000_000;

// ---- helpers shared by the examples and the properties ----

fn user(n: usize) -> UserId {
    UserId::parse(format!("u{n}")).unwrap()
}

fn at(ms: Millis) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap()
}

fn ms(t: DateTime<Utc>) -> Millis {
    t.timestamp_millis()
}

/// An engine with the default policy and ids 1, 2, 3… so runs are reproducible.
fn engine() -> Engine {
    let mut next: u128 = 0;
    Engine::with_ids(
        Pool::new(Policy::default()),
        TIMING,
        Box::new(move || {
            next += 1;
            Uuid::from_u128(next)
        }),
    )
}

fn queue(discipline: Discipline, scope: Option<&str>) -> QueueKey {
    QueueKey {
        discipline,
        scope: scope.map(|s| Scope::parse(s).unwrap()),
    }
}

fn boulder() -> QueueKey {
    queue(Discipline::Boulder, None)
}

fn events_of(step: &Step, u: &UserId) -> Vec<Event> {
    step.events
        .iter()
        .filter(|e| e.user == *u)
        .map(|e| e.event.clone())
        .collect()
}

fn saved_matches(step: &Step) -> Vec<Match> {
    step.changes
        .iter()
        .filter_map(|c| match c {
            Change::SaveMatch(m) => Some(m.clone()),
            _ => None,
        })
        .collect()
}

fn saved_challenges(step: &Step) -> Vec<Challenge> {
    step.changes
        .iter()
        .filter_map(|c| match c {
            Change::SaveChallenge(c) => Some(c.clone()),
            _ => None,
        })
        .collect()
}

/// The match a step started (its first `SaveMatch` in the ready check).
fn new_match(step: &Step) -> Match {
    saved_matches(step)
        .into_iter()
        .find(|m| m.status == MatchStatus::ReadyCheck)
        .expect("the step starts a match")
}

/// Queues `a` then `b` at 1500 and 1510 in boulder at `now`: they are paired at once.
fn pair(engine: &mut Engine, a: &UserId, b: &UserId, now: Millis) -> Uuid {
    assert!(
        engine
            .join(a, boulder(), 1500.0, now)
            .unwrap()
            .events
            .is_empty()
    );
    let step = engine.join(b, boulder(), 1510.0, now).unwrap();
    new_match(&step).match_id
}

/// What a client can observe of the engine, to compare before and after a refused command.
#[derive(Debug, PartialEq)]
struct Snapshot {
    users: Vec<UserView>,
    matches: Vec<Option<Match>>,
    challenges: Vec<Option<Challenge>>,
    pool: Vec<(QueueKey, Ticket)>,
    counts: (usize, usize),
    next_wake: Option<Millis>,
}

#[derive(Debug, PartialEq)]
struct UserView {
    spot: Option<QueueSpot>,
    window: Option<f64>,
    current: Option<Match>,
    recent: Option<Uuid>,
    incoming: Vec<Challenge>,
    outgoing: Vec<Challenge>,
}

fn snapshot(
    engine: &Engine,
    users: &[UserId],
    matches: &[Uuid],
    challenges: &[Uuid],
    now: Millis,
) -> Snapshot {
    Snapshot {
        users: users
            .iter()
            .map(|u| {
                let (incoming, outgoing) = engine.challenges_of(u);
                UserView {
                    spot: engine.queue_spot(u),
                    window: engine.pool().window(u, now),
                    current: engine.current_match(u).cloned(),
                    recent: engine.recent_match(u),
                    incoming: incoming.into_iter().cloned().collect(),
                    outgoing: outgoing.into_iter().cloned().collect(),
                }
            })
            .collect(),
        matches: matches
            .iter()
            .map(|id| engine.live_match(*id).cloned())
            .collect(),
        challenges: challenges
            .iter()
            .map(|id| engine.pending_challenge(*id).cloned())
            .collect(),
        pool: engine
            .pool()
            .iter()
            .map(|(q, t)| (q.clone(), t.clone()))
            .collect(),
        counts: engine.counts(),
        next_wake: engine.next_wake(now),
    }
}

// ---- the model ----

/// A waiting ticket as the model knows it: `since` is the time of the player's own join.
#[derive(Debug, Clone)]
struct Queued {
    queue: QueueKey,
    rating: f64,
    since: Millis,
}

/// A match that has not ended, as the model knows it from the engine's output.
#[derive(Debug, Clone)]
struct Live {
    players: [UserId; 2],
    origin: MatchOrigin,
    queue: QueueKey,
    ratings: [f64; 2],
    since: [Option<Millis>; 2],
    ready: [bool; 2],
    ready_deadline: Millis,
    /// Set once confirmed.
    result_deadline: Option<Millis>,
    reported: [Option<UserId>; 2],
}

impl Live {
    fn of(m: &Match) -> Live {
        Live {
            players: [m.players[0].user_id.clone(), m.players[1].user_id.clone()],
            origin: m.origin,
            queue: QueueKey {
                discipline: m.discipline,
                scope: m.scope.clone(),
            },
            ratings: [m.players[0].rating, m.players[1].rating],
            since: [
                m.players[0].queued_since.map(ms),
                m.players[1].queued_since.map(ms),
            ],
            ready: [false, false],
            ready_deadline: ms(m.ready_deadline),
            result_deadline: None,
            reported: [None, None],
        }
    }

    fn index(&self, u: &UserId) -> Option<usize> {
        self.players.iter().position(|p| p == u)
    }

    fn deadline(&self) -> Millis {
        self.result_deadline.unwrap_or(self.ready_deadline)
    }
}

/// Every match ever found: how its ready check ended.
#[derive(Debug, Clone)]
struct Life {
    players: [UserId; 2],
    confirmed: bool,
    cancelled: bool,
}

/// The command a step came from, for what it may contain.
#[derive(Debug, Clone)]
enum Cmd {
    Join(UserId),
    Tick,
    Ready(Uuid),
    Cancel(Uuid, UserId),
    Report(Uuid),
    Challenge,
    Accept(Challenge),
    Decline(Uuid),
}

/// What one step contained, sorted out by `Run::absorb`.
#[derive(Debug, Default)]
struct Seen {
    saved: BTreeMap<Uuid, Vec<Match>>,
    settled: Vec<Match>,
    challenge_saves: Vec<Challenge>,
    found: BTreeMap<Uuid, Vec<(UserId, UserId)>>,
    cancelled: BTreeMap<Uuid, (Live, Vec<(UserId, CancelReason)>)>,
    requeued: Vec<UserId>,
    expired: BTreeMap<Uuid, (Live, Vec<UserId>)>,
    confirmed: Vec<(UserId, Uuid)>,
    opponent_ready: Vec<(UserId, Uuid)>,
    disputed: Vec<(UserId, Uuid)>,
    result_reported: Vec<(UserId, Uuid, UserId, UserId)>,
    requested: Vec<(UserId, Event)>,
    declined: Vec<(UserId, Uuid, UserId)>,
    heard_expired: BTreeMap<Uuid, Vec<UserId>>,
    /// Users who got `match_found` in this step.
    entered: BTreeSet<UserId>,
}

/// Picks a match or challenge id: a live one, any one seen so far, or one never issued.
#[derive(Debug, Clone, Copy)]
enum Pick {
    Live,
    Seen,
    Unknown,
}

#[derive(Debug, Clone)]
enum Op {
    Join {
        user: usize,
        lead: bool,
        scoped: bool,
        rating: u16,
    },
    Leave {
        user: usize,
    },
    Tick,
    /// Jump to the next deadline or a little past it, then tick, or not: then the next
    /// command meets the deadline before the engine has acted on it.
    Timeout {
        extra: u16,
        tick: bool,
    },
    Ready {
        target: (Pick, usize),
        who: u8,
    },
    Cancel {
        target: (Pick, usize),
        who: u8,
    },
    Report {
        target: (Pick, usize),
        who: u8,
        winner: u8,
    },
    Challenge {
        from: usize,
        to: usize,
        lead: bool,
    },
    Accept {
        target: (Pick, usize),
        who: u8,
        ratings: (u16, u16),
    },
    Decline {
        target: (Pick, usize),
        who: u8,
    },
}

struct Run {
    engine: Engine,
    now: Millis,
    users: Vec<UserId>,
    queued: BTreeMap<UserId, Queued>,
    /// The queue tickets as the store has them, from the steps' SaveTicket / DropTicket.
    stored: BTreeMap<UserId, QueuedTicket>,
    /// The match holding each climber: from `match_found` until they report or it ends.
    held: BTreeMap<UserId, Uuid>,
    recent: BTreeMap<UserId, Uuid>,
    live: BTreeMap<Uuid, Live>,
    lives: BTreeMap<Uuid, Life>,
    pending: BTreeMap<Uuid, Challenge>,
    challenges_seen: Vec<Uuid>,
}

fn discipline(lead: bool) -> Discipline {
    if lead {
        Discipline::Lead
    } else {
        Discipline::Boulder
    }
}

fn accepted(expected: Result<(), Refusal>) -> Result<(), TestCaseError> {
    prop_assert_eq!(
        expected,
        Ok(()),
        "the engine accepted a command the model refuses"
    );
    Ok(())
}

impl Run {
    fn new(users: usize) -> Run {
        Run {
            engine: engine(),
            now: START,
            users: (0..users).map(user).collect(),
            queued: BTreeMap::new(),
            stored: BTreeMap::new(),
            held: BTreeMap::new(),
            recent: BTreeMap::new(),
            live: BTreeMap::new(),
            lives: BTreeMap::new(),
            pending: BTreeMap::new(),
            challenges_seen: Vec::new(),
        }
    }

    fn user(&self, n: usize) -> UserId {
        self.users[n % self.users.len()].clone()
    }

    fn snapshot(&self) -> Snapshot {
        let matches: Vec<Uuid> = self.lives.keys().copied().collect();
        snapshot(
            &self.engine,
            &self.users,
            &matches,
            &self.challenges_seen,
            self.now,
        )
    }

    /// What to compare after the command, when the model expects a refusal.
    fn before(&self, expected: Result<(), Refusal>) -> Option<Snapshot> {
        expected.is_err().then(|| self.snapshot())
    }

    fn refused(
        &self,
        before: Option<Snapshot>,
        got: Refusal,
        expected: Result<(), Refusal>,
    ) -> Result<(), TestCaseError> {
        prop_assert_eq!(Err(got), expected, "the refusal differs from the model's");
        let before = before.unwrap();
        let after = self.snapshot();
        prop_assert_eq!(
            &after,
            &before,
            "a refused command ({:?}) changed the engine",
            got
        );
        Ok(())
    }

    /// Mostly a live match, preferably confirmed or not as asked; else an ended or unknown id.
    fn match_id(&self, (pick, n): (Pick, usize), confirmed: bool) -> Uuid {
        let wanted: Vec<Uuid> = self
            .live
            .iter()
            .filter(|(_, live)| live.result_deadline.is_some() == confirmed)
            .map(|(id, _)| *id)
            .collect();
        match pick {
            Pick::Live if !wanted.is_empty() => wanted[n % wanted.len()],
            Pick::Live if !self.live.is_empty() => {
                *self.live.keys().nth(n % self.live.len()).unwrap()
            }
            Pick::Live | Pick::Seen if !self.lives.is_empty() => {
                *self.lives.keys().nth(n % self.lives.len()).unwrap()
            }
            _ => Uuid::from_u128(u128::MAX - n as u128),
        }
    }

    fn challenge_id(&self, (pick, n): (Pick, usize)) -> Uuid {
        match pick {
            Pick::Live if !self.pending.is_empty() => {
                *self.pending.keys().nth(n % self.pending.len()).unwrap()
            }
            Pick::Live | Pick::Seen if !self.challenges_seen.is_empty() => {
                self.challenges_seen[n % self.challenges_seen.len()]
            }
            _ => Uuid::from_u128(u128::MAX - n as u128),
        }
    }

    /// Mostly a player of the match who still has something to do (`done` tells whether a
    /// player is done: ready, or reported), sometimes either player, sometimes anyone.
    fn who(&self, id: Uuid, who: u8, n: usize, done: impl Fn(&Live, usize) -> bool) -> UserId {
        let live = self.live.get(&id);
        match self.lives.get(&id) {
            Some(life) if who < 5 => {
                let i = usize::from(who % 2);
                let i = match live {
                    Some(live) if done(live, i) => 1 - i,
                    _ => i,
                };
                life.players[i].clone()
            }
            Some(life) if who < 7 => life.players[usize::from(who % 2)].clone(),
            _ => self.user(usize::from(who) + n),
        }
    }

    /// Mostly the challenged climber, sometimes the challenger, sometimes anyone.
    fn challenge_who(&self, id: Uuid, who: u8, n: usize) -> UserId {
        let c = self.pending.get(&id);
        match c {
            Some(c) if who < 7 => c.to.clone(),
            Some(c) if who < 9 => c.from.clone(),
            _ => self.user(usize::from(who) + n),
        }
    }

    fn next_deadline(&self) -> Option<Millis> {
        let matches = self.live.values().map(Live::deadline);
        let challenges = self.pending.values().map(|c| ms(c.expires_at));
        matches.chain(challenges).min()
    }

    /// The rating window of everyone this command may pair: exact for queued tickets and a
    /// joining one; for players a cancel could requeue, the window they would get when joining
    /// now, an upper bound (other requeues in the same tick only make fair opponents look more
    /// frequent, so the hold longer and the window narrower).
    fn windows(&self, join: Option<(&QueueKey, &Ticket)>) -> BTreeMap<UserId, f64> {
        let pool = self.engine.pool();
        let mut windows = BTreeMap::new();
        for u in self.queued.keys() {
            windows.insert(u.clone(), pool.window(u, self.now).unwrap_or(f64::NAN));
        }
        for live in self.live.values() {
            if live.origin != MatchOrigin::Queue || live.result_deadline.is_some() {
                continue;
            }
            for i in 0..2 {
                if let Some(since) = live.since[i] {
                    let ticket = Ticket {
                        user: live.players[i].clone(),
                        rating: live.ratings[i],
                        queued_at: since,
                    };
                    let window = pool.window_on_join(&live.queue, &ticket, self.now);
                    windows.insert(live.players[i].clone(), window);
                }
            }
        }
        if let Some((queue, ticket)) = join {
            let window = pool.window_on_join(queue, ticket, self.now);
            windows.insert(ticket.user.clone(), window);
        }
        windows
    }

    fn apply(&mut self, dt: Millis, op: &Op) -> Result<(), TestCaseError> {
        if let Op::Timeout { extra, .. } = op {
            if let Some(deadline) = self.next_deadline() {
                self.now = self.now.max(deadline) + Millis::from(*extra);
            } else {
                self.now += dt;
            }
        } else {
            self.now += dt;
        }
        match op {
            Op::Join {
                user,
                lead,
                scoped,
                rating,
            } => {
                let scope = scoped.then_some("gym-1");
                self.join(*user, queue(discipline(*lead), scope), f64::from(*rating))?
            }
            Op::Leave { user } => self.leave(*user)?,
            Op::Tick | Op::Timeout { tick: true, .. } => self.tick()?,
            Op::Timeout { tick: false, .. } => {}
            Op::Ready { target, who } => self.ready(*target, *who)?,
            Op::Cancel { target, who } => self.cancel(*target, *who)?,
            Op::Report {
                target,
                who,
                winner,
            } => self.report(*target, *who, *winner)?,
            Op::Challenge { from, to, lead } => self.challenge(*from, *to, discipline(*lead))?,
            Op::Accept {
                target,
                who,
                ratings,
            } => self.accept(*target, *who, *ratings)?,
            Op::Decline { target, who } => self.decline(*target, *who)?,
        }
        self.check_state()
    }

    fn join(&mut self, n: usize, queue: QueueKey, rating: f64) -> Result<(), TestCaseError> {
        let u = self.user(n);
        let expected = if self.held.contains_key(&u) {
            Err(Refusal::InMatch)
        } else if self.queued.contains_key(&u) {
            Err(Refusal::AlreadyQueued)
        } else {
            Ok(())
        };
        let before = self.before(expected);
        let ticket = Ticket {
            user: u.clone(),
            rating,
            queued_at: self.now,
        };
        let windows = self.windows(Some((&queue, &ticket)));
        match self.engine.join(&u, queue.clone(), rating, self.now) {
            Err(r) => self.refused(before, r, expected),
            Ok(step) => {
                accepted(expected)?;
                self.queued.insert(
                    u.clone(),
                    Queued {
                        queue,
                        rating,
                        since: self.now,
                    },
                );
                self.absorb(&step, &Cmd::Join(u), &windows)?;
                Ok(())
            }
        }
    }

    fn leave(&mut self, n: usize) -> Result<(), TestCaseError> {
        let u = self.user(n);
        let expected = self.queued.get(&u).map(|q| QueueSpot {
            queue: q.queue.clone(),
            ticket: Ticket {
                user: u.clone(),
                rating: q.rating,
                queued_at: q.since,
            },
        });
        let model = if expected.is_some() {
            Ok(())
        } else {
            Err(Refusal::NotQueued)
        };
        let before = self.before(model);
        match self.engine.leave(&u) {
            Err(r) => self.refused(before, r, model),
            Ok((spot, step)) => {
                prop_assert_eq!(Some(spot), expected);
                // Leaving tells nobody; it only forgets the stored ticket.
                prop_assert!(step.events.is_empty());
                prop_assert!(
                    matches!(&step.changes[..], [Change::DropTicket(who)] if *who == u),
                    "leave wrote {:?}",
                    step.changes
                );
                self.queued.remove(&u);
                self.stored.remove(&u);
                Ok(())
            }
        }
    }

    fn tick(&mut self) -> Result<(), TestCaseError> {
        let windows = self.windows(None);
        let step = self.engine.tick(self.now);
        self.absorb(&step, &Cmd::Tick, &windows)?;
        self.check_state()?;
        // The actor sleeps until `next_wake`: after a tick it lies in the future.
        let wake = self.engine.next_wake(self.now);
        prop_assert!(
            wake.is_none_or(|t| t > self.now),
            "next_wake {:?} is not after the tick at {}",
            wake,
            self.now
        );
        // Nothing compatible is left waiting.
        let pool = self.engine.pool();
        let waiting: Vec<(&UserId, &Queued)> = self.queued.iter().collect();
        for (i, (u, q)) in waiting.iter().enumerate() {
            for (v, r) in &waiting[i + 1..] {
                let gap = (q.rating - r.rating).abs();
                let compatible = q.queue == r.queue
                    && gap <= pool.window(u, self.now).unwrap()
                    && gap <= pool.window(v, self.now).unwrap();
                prop_assert!(!compatible, "{} and {} left compatible after a tick", u, v);
            }
        }
        Ok(())
    }

    fn expect_own(&self, id: Uuid, u: &UserId) -> Result<(&Live, usize), Refusal> {
        let live = self.live.get(&id).ok_or(Refusal::UnknownMatch)?;
        let i = live.index(u).ok_or(Refusal::NotYourMatch)?;
        Ok((live, i))
    }

    fn ready(&mut self, target: (Pick, usize), who: u8) -> Result<(), TestCaseError> {
        let id = self.match_id(target, false);
        let u = self.who(id, who, target.1, |live, i| live.ready[i]);
        let expected = self.expect_own(id, &u).and_then(|(live, i)| {
            if live.result_deadline.is_some() {
                Err(Refusal::NotInReadyCheck)
            } else if self.now >= live.ready_deadline {
                Err(Refusal::DeadlinePassed)
            } else if live.ready[i] {
                Err(Refusal::AlreadyReady)
            } else {
                Ok(())
            }
        });
        let before = self.before(expected);
        let windows = self.windows(None);
        match self.engine.ready(id, &u, self.now) {
            Err(r) => self.refused(before, r, expected),
            Ok((m, step)) => {
                accepted(expected)?;
                let now = self.now;
                let live = self.live.get_mut(&id).unwrap();
                let i = live.index(&u).unwrap();
                live.ready[i] = true;
                let both = live.ready.iter().all(|r| *r);
                if both {
                    live.result_deadline = Some(now + TIMING.result_ms);
                }
                let players = live.players.clone();
                let result_deadline = live.result_deadline;
                let seen = self.absorb(&step, &Cmd::Ready(id), &windows)?;
                prop_assert_eq!(step.changes.len(), 1);
                prop_assert_eq!(seen.saved.get(&id), Some(&vec![m.clone()]));
                prop_assert_eq!(m.result_deadline, result_deadline.map(at));
                prop_assert_eq!(
                    &seen.opponent_ready,
                    &vec![(players[1 - i].clone(), id)],
                    "opponent_ready goes to the opponent only"
                );
                if both {
                    prop_assert_eq!(m.status, MatchStatus::Confirmed);
                    let told = vec![(players[0].clone(), id), (players[1].clone(), id)];
                    prop_assert_eq!(&seen.confirmed, &told);
                    let life = self.lives.get_mut(&id).unwrap();
                    prop_assert!(!life.confirmed && !life.cancelled, "{} ended twice", id);
                    life.confirmed = true;
                } else {
                    prop_assert_eq!(m.status, MatchStatus::ReadyCheck);
                    prop_assert!(seen.confirmed.is_empty());
                }
                Ok(())
            }
        }
    }

    fn cancel(&mut self, target: (Pick, usize), who: u8) -> Result<(), TestCaseError> {
        let id = self.match_id(target, false);
        let u = self.who(id, who, target.1, |_, _| false);
        let expected = self.expect_own(id, &u).and_then(|(live, _)| {
            if live.result_deadline.is_some() {
                Err(Refusal::NotInReadyCheck)
            } else if self.now >= live.ready_deadline {
                Err(Refusal::DeadlinePassed)
            } else {
                Ok(())
            }
        });
        let before = self.before(expected);
        let windows = self.windows(None);
        match self.engine.cancel(id, &u, self.now) {
            Err(r) => self.refused(before, r, expected),
            Ok((m, step)) => {
                accepted(expected)?;
                let seen = self.absorb(&step, &Cmd::Cancel(id, u), &windows)?;
                prop_assert!(seen.cancelled.contains_key(&id));
                prop_assert_eq!(seen.saved.get(&id).and_then(|v| v.first()), Some(&m));
                Ok(())
            }
        }
    }

    fn report(&mut self, target: (Pick, usize), who: u8, winner: u8) -> Result<(), TestCaseError> {
        let id = self.match_id(target, true);
        let u = self.who(id, who, target.1, |live, i| live.reported[i].is_some());
        let w = match self.lives.get(&id) {
            Some(life) if winner < 5 => life.players[usize::from(winner % 2)].clone(),
            _ => self.user(usize::from(winner) * 7 + target.1),
        };
        let expected = self.expect_own(id, &u).and_then(|(live, i)| {
            if live.result_deadline.is_none() {
                Err(Refusal::NotConfirmed)
            } else if live.result_deadline.is_some_and(|d| self.now >= d) {
                Err(Refusal::DeadlinePassed)
            } else if live.index(&w).is_none() {
                Err(Refusal::WinnerNotAPlayer)
            } else if live.reported[i].is_some() {
                Err(Refusal::AlreadyReported)
            } else {
                Ok(())
            }
        });
        let before = self.before(expected);
        let windows = self.windows(None);
        match self.engine.report(id, &u, &w, self.now) {
            Err(r) => self.refused(before, r, expected),
            Ok((m, step)) => {
                accepted(expected)?;
                let mut live = self.live.get(&id).cloned().unwrap();
                let i = live.index(&u).unwrap();
                live.reported[i] = Some(w.clone());
                prop_assert_eq!(
                    self.held.remove(&u),
                    Some(id),
                    "a reporter must have been held by the match"
                );
                let seen = self.absorb(&step, &Cmd::Report(id), &windows)?;
                let other = live.players[1 - i].clone();
                prop_assert_eq!(m.player(&u).unwrap().reported_winner.as_ref(), Some(&w));
                match (&live.reported[0], &live.reported[1]) {
                    (Some(a), Some(b)) => {
                        self.live.remove(&id);
                        prop_assert!(
                            self.held.get(&other) != Some(&id),
                            "{} reported yet is still held",
                            other
                        );
                        prop_assert!(seen.result_reported.is_empty());
                        if a == b {
                            prop_assert_eq!(m.status, MatchStatus::Settled);
                            prop_assert_eq!(m.winner.as_ref(), Some(a));
                            prop_assert_eq!(&seen.settled, &vec![m.clone()]);
                            prop_assert!(seen.saved.is_empty() && seen.disputed.is_empty());
                        } else {
                            prop_assert_eq!(m.status, MatchStatus::Disputed);
                            prop_assert_eq!(&m.winner, &None);
                            prop_assert_eq!(seen.saved.get(&id), Some(&vec![m.clone()]));
                            let told =
                                vec![(live.players[0].clone(), id), (live.players[1].clone(), id)];
                            prop_assert_eq!(&seen.disputed, &told);
                        }
                    }
                    _ => {
                        self.live.insert(id, live);
                        prop_assert_eq!(m.status, MatchStatus::Confirmed);
                        prop_assert_eq!(seen.saved.get(&id), Some(&vec![m.clone()]));
                        prop_assert_eq!(&seen.result_reported, &vec![(other, id, u, w)]);
                        prop_assert!(seen.settled.is_empty() && seen.disputed.is_empty());
                    }
                }
                Ok(())
            }
        }
    }

    fn challenge(&mut self, from: usize, to: usize, d: Discipline) -> Result<(), TestCaseError> {
        let (f, t) = (self.user(from), self.user(to));
        let outgoing = self.pending.values().filter(|c| c.from == f).count();
        let expected = if f == t {
            Err(Refusal::ChallengeSelf)
        } else if self.held.contains_key(&f) {
            Err(Refusal::InMatch)
        } else if self.held.contains_key(&t) {
            Err(Refusal::OpponentBusy)
        } else if self.pending.values().any(|c| c.from == f && c.to == t) {
            Err(Refusal::AlreadyChallenged)
        } else if outgoing >= belay::matchmaking::engine::MAX_OUTGOING_CHALLENGES {
            Err(Refusal::TooManyChallenges)
        } else {
            Ok(())
        };
        let before = self.before(expected);
        let windows = self.windows(None);
        match self.engine.challenge(&f, &t, d, self.now) {
            Err(r) => self.refused(before, r, expected),
            Ok((c, step)) => {
                accepted(expected)?;
                prop_assert_eq!(&c.from, &f);
                prop_assert_eq!(&c.to, &t);
                prop_assert_eq!(c.discipline, d);
                prop_assert_eq!(c.status, ChallengeStatus::Pending);
                prop_assert_eq!(c.created_at, at(self.now));
                prop_assert_eq!(c.expires_at, at(self.now + TIMING.challenge_ms));
                prop_assert_eq!(c.match_id, None);
                prop_assert!(!self.challenges_seen.contains(&c.challenge_id));
                let seen = self.absorb(&step, &Cmd::Challenge, &windows)?;
                prop_assert_eq!(&seen.challenge_saves, &vec![c.clone()]);
                let told = Event::MatchRequested {
                    challenge_id: c.challenge_id,
                    from: f,
                    discipline: d,
                    expires_at: c.expires_at,
                };
                prop_assert_eq!(&seen.requested, &vec![(t, told)]);
                self.challenges_seen.push(c.challenge_id);
                Ok(())
            }
        }
    }

    fn expect_open(&self, id: Uuid, u: &UserId) -> Result<&Challenge, Refusal> {
        let c = self.pending.get(&id).ok_or(Refusal::UnknownChallenge)?;
        if c.to != *u {
            return Err(if c.from == *u {
                Refusal::NotYourChallenge
            } else {
                Refusal::UnknownChallenge
            });
        }
        if self.now >= ms(c.expires_at) {
            return Err(Refusal::ChallengeClosed);
        }
        Ok(c)
    }

    fn accept(
        &mut self,
        target: (Pick, usize),
        who: u8,
        ratings: (u16, u16),
    ) -> Result<(), TestCaseError> {
        let id = self.challenge_id(target);
        let u = self.challenge_who(id, who, target.1);
        let expected = self.expect_open(id, &u).and_then(|c| {
            if self.held.contains_key(&u) {
                Err(Refusal::InMatch)
            } else if self.held.contains_key(&c.from) {
                Err(Refusal::OpponentBusy)
            } else {
                Ok(())
            }
        });
        let c = self.pending.get(&id).cloned();
        let ratings = (f64::from(ratings.0), f64::from(ratings.1));
        let before = self.before(expected);
        let windows = self.windows(None);
        match self.engine.accept(id, &u, ratings, self.now) {
            Err(r) => self.refused(before, r, expected),
            Ok((m, step)) => {
                accepted(expected)?;
                let c = c.unwrap();
                let seen = self.absorb(&step, &Cmd::Accept(c.clone()), &windows)?;
                prop_assert_eq!(seen.found.keys().collect::<Vec<_>>(), vec![&m.match_id]);
                prop_assert_eq!(
                    seen.saved.get(&m.match_id).and_then(|v| v.first()),
                    Some(&m)
                );
                prop_assert_eq!(m.origin, MatchOrigin::Challenge);
                prop_assert_eq!((m.players[0].rating, m.players[1].rating), ratings);
                let saves: Vec<&Challenge> = seen
                    .challenge_saves
                    .iter()
                    .filter(|s| s.challenge_id == id)
                    .collect();
                let accepted = Challenge {
                    status: ChallengeStatus::Accepted,
                    match_id: Some(m.match_id),
                    ..c
                };
                prop_assert_eq!(
                    saves,
                    vec![&accepted],
                    "the accepted challenge must be saved as accepted, with its match"
                );
                Ok(())
            }
        }
    }

    fn decline(&mut self, target: (Pick, usize), who: u8) -> Result<(), TestCaseError> {
        let id = self.challenge_id(target);
        let u = self.challenge_who(id, who, target.1);
        let expected = self.expect_open(id, &u).map(|_| ());
        let c = self.pending.get(&id).cloned();
        let before = self.before(expected);
        let windows = self.windows(None);
        match self.engine.decline(id, &u, self.now) {
            Err(r) => self.refused(before, r, expected),
            Ok((declined, step)) => {
                accepted(expected)?;
                let c = c.unwrap();
                let seen = self.absorb(&step, &Cmd::Decline(id), &windows)?;
                let want = Challenge {
                    status: ChallengeStatus::Declined,
                    ..c.clone()
                };
                prop_assert_eq!(&declined, &want);
                prop_assert_eq!(&seen.challenge_saves, &vec![want]);
                prop_assert_eq!(&seen.declined, &vec![(c.from, id, u)]);
                Ok(())
            }
        }
    }

    /// Updates the model from a step and checks what every step must satisfy.
    fn absorb(
        &mut self,
        step: &Step,
        cmd: &Cmd,
        windows: &BTreeMap<UserId, f64>,
    ) -> Result<Seen, TestCaseError> {
        let now = self.now;
        let mut seen = Seen::default();
        for change in &step.changes {
            match change {
                Change::SaveMatch(m) => seen.saved.entry(m.match_id).or_default().push(m.clone()),
                Change::Settle(m) => seen.settled.push(m.clone()),
                Change::SaveChallenge(c) => seen.challenge_saves.push(c.clone()),
                Change::SaveTicket(t) => {
                    self.stored.insert(t.user.clone(), t.clone());
                }
                Change::DropTicket(u) => {
                    self.stored.remove(u);
                }
                other => prop_assert!(false, "unexpected change {:?}", other),
            }
        }
        for NewEvent {
            user: u,
            event,
            idempotency_key,
        } in &step.events
        {
            prop_assert!(idempotency_key.is_none());
            match event {
                Event::MatchFound { .. } => self.found(&mut seen, cmd, windows, u, event)?,
                Event::MatchCancelled { match_id, reason } => {
                    if !seen.cancelled.contains_key(match_id) {
                        let live = self.live.remove(match_id);
                        prop_assert!(live.is_some(), "{} cancelled though not live", match_id);
                        let live = live.unwrap();
                        prop_assert!(
                            live.result_deadline.is_none(),
                            "confirmed match {} cancelled",
                            match_id
                        );
                        seen.cancelled.insert(*match_id, (live, Vec::new()));
                    }
                    let (live, told) = seen.cancelled.get_mut(match_id).unwrap();
                    prop_assert!(
                        live.index(u).is_some(),
                        "{} told of {}, not theirs",
                        u,
                        match_id
                    );
                    told.push((u.clone(), *reason));
                    prop_assert_eq!(self.held.remove(u), Some(*match_id), "{} was not held", u);
                }
                Event::Requeued {
                    discipline,
                    queued_since,
                } => {
                    let found = seen
                        .cancelled
                        .iter()
                        .find(|(_, (live, _))| live.index(u).is_some());
                    prop_assert!(found.is_some(), "{} requeued without a cancelled match", u);
                    let (id, (live, told)) = found.unwrap();
                    let i = live.index(u).unwrap();
                    prop_assert_eq!(told.len(), 2, "requeue before both heard of {}", id);
                    let reason = told.iter().find(|(v, _)| v == u).map(|(_, r)| *r);
                    prop_assert!(
                        matches!(
                            reason,
                            Some(
                                CancelReason::OpponentCancelled
                                    | CancelReason::OpponentReadyTimeout
                            )
                        ),
                        "{} requeued though they failed the ready check ({:?})",
                        u,
                        reason
                    );
                    prop_assert!(live.ready[i], "{} requeued though not ready", u);
                    prop_assert_eq!(live.origin, MatchOrigin::Queue, "requeued from a challenge");
                    prop_assert_eq!(*discipline, live.queue.discipline);
                    let since = live.since[i].unwrap();
                    prop_assert_eq!(*queued_since, at(since), "{} lost their queue time", u);
                    let queued = Queued {
                        queue: live.queue.clone(),
                        rating: live.ratings[i],
                        since,
                    };
                    let before = self.queued.insert(u.clone(), queued);
                    prop_assert!(before.is_none(), "{} requeued while queued", u);
                    seen.requeued.push(u.clone());
                }
                Event::MatchExpired { match_id } => {
                    if !seen.expired.contains_key(match_id) {
                        let live = self.live.remove(match_id);
                        prop_assert!(live.is_some(), "{} expired though not live", match_id);
                        let live = live.unwrap();
                        prop_assert!(matches!(cmd, Cmd::Tick), "expiry outside a tick");
                        prop_assert!(
                            live.result_deadline.is_some_and(|d| d <= now),
                            "{} expired before its result deadline",
                            match_id
                        );
                        seen.expired.insert(*match_id, (live, Vec::new()));
                    }
                    let (live, told) = seen.expired.get_mut(match_id).unwrap();
                    let i = live.index(u);
                    prop_assert!(i.is_some(), "{} told of {}, not theirs", u, match_id);
                    told.push(u.clone());
                    if self.held.get(u) == Some(match_id) {
                        self.held.remove(u);
                    } else {
                        prop_assert!(live.reported[i.unwrap()].is_some(), "{} not held", u);
                    }
                }
                Event::MatchConfirmed { match_id } => seen.confirmed.push((u.clone(), *match_id)),
                Event::OpponentReady { match_id } => {
                    seen.opponent_ready.push((u.clone(), *match_id))
                }
                Event::MatchDisputed { match_id } => seen.disputed.push((u.clone(), *match_id)),
                Event::ResultReported {
                    match_id,
                    by,
                    winner,
                } => seen
                    .result_reported
                    .push((u.clone(), *match_id, by.clone(), winner.clone())),
                Event::MatchRequested { .. } => seen.requested.push((u.clone(), event.clone())),
                Event::ChallengeDeclined { challenge_id, by } => {
                    seen.declined.push((u.clone(), *challenge_id, by.clone()))
                }
                Event::ChallengeExpired { challenge_id } => seen
                    .heard_expired
                    .entry(*challenge_id)
                    .or_default()
                    .push(u.clone()),
                other => prop_assert!(false, "unexpected event {:?} to {}", other, u),
            }
        }

        // Every match found here: both players told, naming each other.
        for (id, told) in &seen.found {
            prop_assert_eq!(told.len(), 2, "match_found of {} not sent to both", id);
            let ((a, a_saw), (b, b_saw)) = (&told[0], &told[1]);
            prop_assert!(
                a == b_saw && b == a_saw,
                "{} and {} do not name each other",
                a,
                b
            );
            let life = &self.lives[id];
            prop_assert!(life.players.contains(a) && life.players.contains(b));
        }
        match cmd {
            Cmd::Join(u) => {
                prop_assert!(seen.found.len() <= 1, "one join started two matches");
                for told in seen.found.values() {
                    prop_assert!(told.iter().any(|(v, _)| v == u), "a join paired others");
                }
            }
            Cmd::Cancel(..) => {
                for told in seen.found.values() {
                    let requeued = told.iter().any(|(v, _)| seen.requeued.contains(v));
                    prop_assert!(requeued, "a cancel paired players it did not requeue");
                }
            }
            Cmd::Accept(_) => prop_assert_eq!(seen.found.len(), 1),
            Cmd::Tick => {}
            _ => prop_assert!(seen.found.is_empty(), "{:?} started a match", cmd),
        }

        // Every match cancelled here: both told, the right reasons, the right requeues.
        for (id, (live, told)) in &seen.cancelled {
            let mut who: Vec<&UserId> = told.iter().map(|(v, _)| v).collect();
            who.sort();
            let mut players: Vec<&UserId> = live.players.iter().collect();
            players.sort();
            prop_assert_eq!(who, players, "match_cancelled of {} not sent to both", id);
            let (failed, own, other) = match cmd {
                Cmd::Cancel(cancelled, by) => {
                    prop_assert_eq!(cancelled, id, "a cancel ended another match");
                    (
                        vec![by.clone()],
                        CancelReason::Cancelled,
                        CancelReason::OpponentCancelled,
                    )
                }
                Cmd::Tick => {
                    prop_assert!(live.ready_deadline <= now, "{} timed out early", id);
                    let late = (0..2)
                        .filter(|&i| !live.ready[i])
                        .map(|i| live.players[i].clone())
                        .collect();
                    (
                        late,
                        CancelReason::ReadyTimeout,
                        CancelReason::OpponentReadyTimeout,
                    )
                }
                _ => {
                    let why = format!("{cmd:?} cancelled {id}");
                    return Err(TestCaseError::fail(why));
                }
            };
            let saved = seen.saved.get(id).and_then(|v| v.last());
            prop_assert!(saved.is_some(), "cancel of {} not saved", id);
            let saved = saved.unwrap();
            prop_assert_eq!(saved.status, MatchStatus::Cancelled);
            prop_assert_eq!(&saved.cancelled_by, &failed);
            prop_assert_eq!(saved.cancel_reason, Some(own));
            for (v, reason) in told {
                let want = if failed.contains(v) { own } else { other };
                prop_assert_eq!(*reason, want, "reason told to {}", v);
            }
            let want: Vec<&UserId> = (0..2)
                .filter(|&i| {
                    !failed.contains(&live.players[i])
                        && live.ready[i]
                        && live.origin == MatchOrigin::Queue
                })
                .map(|i| &live.players[i])
                .collect();
            let got: Vec<&UserId> = live
                .players
                .iter()
                .filter(|p| seen.requeued.contains(p))
                .collect();
            prop_assert_eq!(got, want, "requeued after {}", id);
            let life = self.lives.get_mut(id).unwrap();
            prop_assert!(!life.confirmed && !life.cancelled, "{} ended twice", id);
            life.cancelled = true;
        }
        if let Cmd::Cancel(id, _) = cmd {
            prop_assert_eq!(seen.cancelled.keys().collect::<Vec<_>>(), vec![id]);
        }

        // Every match expired here: both told, saved as expired.
        for (id, (live, told)) in &seen.expired {
            prop_assert_eq!(
                told,
                &live.players.to_vec(),
                "match_expired of {} not to both",
                id
            );
            let saved = seen.saved.get(id).and_then(|v| v.last());
            prop_assert_eq!(saved.map(|m| m.status), Some(MatchStatus::Expired));
        }

        // Events that only some commands cause.
        let ready = matches!(cmd, Cmd::Ready(_));
        prop_assert!(
            ready || seen.confirmed.is_empty(),
            "match_confirmed outside ready"
        );
        prop_assert!(
            ready || seen.opponent_ready.is_empty(),
            "opponent_ready outside ready"
        );
        if let Cmd::Ready(id) = cmd {
            prop_assert!(seen.confirmed.iter().all(|(_, m)| m == id));
        }
        let report = matches!(cmd, Cmd::Report(_));
        prop_assert!(
            report || seen.disputed.is_empty(),
            "match_disputed outside report"
        );
        prop_assert!(report || seen.settled.is_empty(), "settled outside report");
        prop_assert!(
            report || seen.result_reported.is_empty(),
            "result_reported outside report"
        );
        if let Cmd::Report(id) = cmd {
            prop_assert!(seen.disputed.iter().all(|(_, m)| m == id));
            prop_assert!(seen.settled.iter().all(|m| m.match_id == *id));
        }
        let challenge = matches!(cmd, Cmd::Challenge);
        prop_assert!(
            challenge || seen.requested.is_empty(),
            "match_requested outside challenge"
        );
        let decline = matches!(cmd, Cmd::Decline(_));
        prop_assert!(
            decline || seen.declined.is_empty(),
            "challenge_declined outside decline"
        );

        // Challenges that closed here, and who heard of it.
        for c in &seen.challenge_saves {
            let id = c.challenge_id;
            let heard = seen.heard_expired.remove(&id).unwrap_or_default();
            if c.status == ChallengeStatus::Pending {
                prop_assert!(challenge, "a pending challenge saved by {:?}", cmd);
                prop_assert!(heard.is_empty());
                prop_assert!(self.pending.insert(id, c.clone()).is_none());
                continue;
            }
            let before = self.pending.remove(&id);
            prop_assert!(
                before.is_some(),
                "challenge {} closed though not pending",
                id
            );
            let before = before.unwrap();
            let want = Challenge {
                status: c.status,
                match_id: c.match_id,
                ..before.clone()
            };
            prop_assert_eq!(c, &want);
            match c.status {
                ChallengeStatus::Expired => {
                    prop_assert!(matches!(cmd, Cmd::Tick), "challenge expired outside a tick");
                    prop_assert!(ms(c.expires_at) <= now, "challenge {} expired early", id);
                    prop_assert_eq!(c.match_id, None);
                    let mut heard = heard.clone();
                    heard.sort();
                    let mut both = vec![c.from.clone(), c.to.clone()];
                    both.sort();
                    prop_assert_eq!(heard, both, "challenge_expired of {} not to both", id);
                }
                ChallengeStatus::Withdrawn => {
                    prop_assert_eq!(heard.len(), 1, "withdrawal of {} told {:?}", id, heard);
                    let quiet = if heard[0] == c.from {
                        &c.to
                    } else {
                        prop_assert_eq!(&heard[0], &c.to);
                        &c.from
                    };
                    prop_assert!(
                        seen.entered.contains(quiet),
                        "challenge {} withdrawn though {} entered no match",
                        id,
                        quiet
                    );
                }
                ChallengeStatus::Accepted => {
                    let Cmd::Accept(accepted) = cmd else {
                        return Err(TestCaseError::fail("challenge accepted outside accept"));
                    };
                    prop_assert_eq!(accepted.challenge_id, id);
                    prop_assert!(
                        heard.is_empty(),
                        "accepted challenge {} told {:?}",
                        id,
                        heard
                    );
                    let found: Vec<Option<&Uuid>> = seen.found.keys().map(Some).collect();
                    prop_assert_eq!(found, vec![c.match_id.as_ref()]);
                }
                ChallengeStatus::Declined => {
                    prop_assert!(matches!(cmd, Cmd::Decline(d) if *d == id));
                    prop_assert!(heard.is_empty());
                }
                ChallengeStatus::Pending => unreachable!(),
            }
        }
        prop_assert!(
            seen.heard_expired.is_empty(),
            "challenge_expired for challenges that did not close: {:?}",
            seen.heard_expired
        );
        // Whoever entered a match has no pending challenge left.
        for u in &seen.entered {
            let left: Vec<&Uuid> = self
                .pending
                .iter()
                .filter(|(_, c)| c.from == *u || c.to == *u)
                .map(|(id, _)| id)
                .collect();
            prop_assert!(
                left.is_empty(),
                "{} entered a match with challenges {:?}",
                u,
                left
            );
        }
        if let Cmd::Tick = cmd {
            for (id, live) in &self.live {
                prop_assert!(live.deadline() > now, "{} outlived its deadline", id);
            }
            for (id, c) in &self.pending {
                prop_assert!(
                    ms(c.expires_at) > now,
                    "challenge {} outlived its expiry",
                    id
                );
            }
        }
        Ok(seen)
    }

    /// One `match_found` event.
    fn found(
        &mut self,
        seen: &mut Seen,
        cmd: &Cmd,
        windows: &BTreeMap<UserId, f64>,
        u: &UserId,
        event: &Event,
    ) -> Result<(), TestCaseError> {
        let Event::MatchFound {
            match_id: id,
            opponent,
            discipline,
            ready_deadline,
        } = event
        else {
            unreachable!()
        };
        let id = *id;
        prop_assert_ne!(u, opponent, "{} paired with themself", u);
        if let Some(other) = self.held.get(u) {
            prop_assert!(false, "{} found {} while held by {}", u, id, other);
        }
        let m = seen.saved.get(&id).and_then(|v| v.first()).cloned();
        prop_assert!(m.is_some(), "match_found {} without its SaveMatch", id);
        let m = m.unwrap();
        prop_assert_eq!(m.status, MatchStatus::ReadyCheck);
        prop_assert_eq!(m.created_at, at(self.now));
        prop_assert_eq!(m.ready_deadline, at(self.now + TIMING.ready_ms));
        prop_assert_eq!(*ready_deadline, m.ready_deadline);
        prop_assert_eq!(*discipline, m.discipline);
        prop_assert_ne!(
            &m.players[0].user_id,
            &m.players[1].user_id,
            "a match with one climber"
        );
        let (me, them) = (m.player(u), m.player(opponent));
        prop_assert!(
            me.is_some() && them.is_some(),
            "{} is told of a match not theirs",
            u
        );
        let (me, them) = (me.unwrap(), them.unwrap());
        prop_assert!(!me.ready && me.reported_winner.is_none());
        let first = !seen.found.contains_key(&id);
        if first {
            prop_assert!(!self.lives.contains_key(&id), "match id {} reused", id);
        }
        match m.origin {
            MatchOrigin::Queue => {
                prop_assert!(
                    matches!(cmd, Cmd::Join(_) | Cmd::Tick | Cmd::Cancel(..)),
                    "{:?} paired from the queue",
                    cmd
                );
                let q = self.queued.remove(u);
                prop_assert!(
                    q.is_some(),
                    "{} paired without a ticket (paired twice, or never queued)",
                    u
                );
                let q = q.unwrap();
                let key = QueueKey {
                    discipline: m.discipline,
                    scope: m.scope.clone(),
                };
                prop_assert_eq!(&q.queue, &key, "{} paired in another queue", u);
                prop_assert_eq!(
                    me.queued_since,
                    Some(at(q.since)),
                    "{} lost their queue time",
                    u
                );
                prop_assert_eq!(me.rating, q.rating);
                let gap = (me.rating - them.rating).abs();
                // Independently of the pool's bookkeeping: no hold gives a wider window.
                let policy = self.engine.pool().policy();
                let hold = policy.hold_ms.min(policy.sparse_hold_ms);
                let widest = policy.window(hold, self.now - q.since);
                prop_assert!(
                    gap <= widest,
                    "{} paired at a gap of {} > {}",
                    u,
                    gap,
                    widest
                );
                let window = windows.get(u).copied();
                prop_assert!(
                    window.is_some_and(|w| gap <= w),
                    "{} paired at a gap of {} beyond their window {:?}",
                    u,
                    gap,
                    window
                );
            }
            MatchOrigin::Challenge => {
                let Cmd::Accept(c) = cmd else {
                    return Err(TestCaseError::fail("a challenge match outside accept"));
                };
                prop_assert_eq!(m.discipline, c.discipline);
                prop_assert_eq!(&m.scope, &None);
                prop_assert_eq!(&m.players[0].user_id, &c.from);
                prop_assert_eq!(&m.players[1].user_id, &c.to);
                prop_assert_eq!(me.queued_since, None);
                // A queued climber who accepts a challenge leaves the queue.
                self.queued.remove(u);
            }
        }
        self.held.insert(u.clone(), id);
        self.recent.insert(u.clone(), id);
        if first {
            let live = Live::of(&m);
            self.lives.insert(
                id,
                Life {
                    players: live.players.clone(),
                    confirmed: false,
                    cancelled: false,
                },
            );
            self.live.insert(id, live);
        }
        seen.found
            .entry(id)
            .or_default()
            .push((u.clone(), opponent.clone()));
        seen.entered.insert(u.clone());
        Ok(())
    }

    /// The engine agrees with the model, and the model with itself.
    fn check_state(&self) -> Result<(), TestCaseError> {
        let e = &self.engine;
        // The stored tickets are the pool: a restart restores exactly who was waiting, and since when.
        let pool: BTreeMap<UserId, QueuedTicket> = e
            .pool()
            .iter()
            .map(|(q, t)| {
                (
                    t.user.clone(),
                    QueuedTicket {
                        user: t.user.clone(),
                        discipline: q.discipline,
                        scope: q.scope.clone(),
                        rating: t.rating,
                        queued_at: at(t.queued_at),
                    },
                )
            })
            .collect();
        prop_assert_eq!(&self.stored, &pool, "stored tickets differ from the pool");
        for u in &self.users {
            let expected = self.queued.get(u).map(|q| QueueSpot {
                queue: q.queue.clone(),
                ticket: Ticket {
                    user: u.clone(),
                    rating: q.rating,
                    queued_at: q.since,
                },
            });
            prop_assert_eq!(e.queue_spot(u), expected, "queue spot of {}", u);
            let current = e.current_match(u);
            prop_assert_eq!(
                current.map(|m| m.match_id),
                self.held.get(u).copied(),
                "{}",
                u
            );
            if let Some(m) = current {
                prop_assert!(m.player(u).is_some() && m.status.is_live());
                prop_assert!(e.pool().ticket(u).is_none(), "{} queued while held", u);
                prop_assert!(self.live.contains_key(&m.match_id));
            }
            // The engine names a climber's latest match only while it is live; an ended one is
            // read from the store.
            let recent = self.recent.get(u).filter(|id| self.live.contains_key(id));
            prop_assert_eq!(e.recent_match(u), recent.copied(), "recent of {}", u);
            let (incoming, outgoing) = e.challenges_of(u);
            let ids = |v: Vec<&Challenge>| {
                let mut ids: Vec<Uuid> = v.iter().map(|c| c.challenge_id).collect();
                ids.sort();
                ids
            };
            let model = |f: &dyn Fn(&Challenge) -> bool| -> Vec<Uuid> {
                self.pending
                    .values()
                    .filter(|c| f(c))
                    .map(|c| c.challenge_id)
                    .collect()
            };
            prop_assert_eq!(ids(incoming), model(&|c| c.to == *u));
            prop_assert_eq!(ids(outgoing), model(&|c| c.from == *u));
            if current.is_some() {
                prop_assert!(model(&|c| c.to == *u || c.from == *u).is_empty());
            }
        }
        prop_assert_eq!(e.counts(), (self.live.len(), self.pending.len()));
        prop_assert_eq!(e.pool().len(), self.queued.len());
        for (id, live) in &self.live {
            let m = e.live_match(*id);
            prop_assert!(m.is_some(), "{} is not live in the engine", id);
            let m = m.unwrap();
            for i in 0..2 {
                let p = &m.players[i];
                prop_assert_eq!(&p.user_id, &live.players[i]);
                prop_assert_eq!(p.ready, live.ready[i]);
                prop_assert_eq!(&p.reported_winner, &live.reported[i]);
                let held = self.held.get(&live.players[i]) == Some(id);
                prop_assert_eq!(
                    held,
                    live.reported[i].is_none(),
                    "{} holds {}",
                    id,
                    p.user_id
                );
            }
            let status = if live.result_deadline.is_some() {
                MatchStatus::Confirmed
            } else {
                MatchStatus::ReadyCheck
            };
            prop_assert_eq!(m.status, status);
            prop_assert_eq!(m.ready_deadline, at(live.ready_deadline));
            prop_assert_eq!(m.result_deadline, live.result_deadline.map(at));
        }
        for (u, id) in &self.held {
            prop_assert!(
                self.live.contains_key(id),
                "{} held by ended match {}",
                u,
                id
            );
        }
        for (id, c) in &self.pending {
            prop_assert_eq!(e.pending_challenge(*id), Some(c));
        }
        if let Some(deadline) = self.next_deadline() {
            let wake = e.next_wake(self.now);
            prop_assert!(
                wake.is_some_and(|w| w <= deadline),
                "next_wake {:?} sleeps past the deadline {}",
                wake,
                deadline
            );
        }
        Ok(())
    }

    /// Lets every deadline pass, then checks that each match found ended in exactly one of
    /// `match_confirmed` and `match_cancelled`, and that nothing is left hanging.
    fn finish(&mut self) -> Result<(), TestCaseError> {
        let far = TIMING.ready_ms + TIMING.challenge_ms + TIMING.result_ms + 120_000;
        for _ in 0..20 {
            self.now += far;
            self.tick()?;
            if self.live.is_empty() && self.pending.is_empty() {
                break;
            }
        }
        prop_assert!(self.live.is_empty() && self.pending.is_empty() && self.held.is_empty());
        prop_assert_eq!(self.engine.counts(), (0, 0));
        for (id, life) in &self.lives {
            prop_assert!(
                life.confirmed != life.cancelled,
                "{} ended in {:?}",
                id,
                life
            );
        }
        // Windows are at their widest by now: at most one ticket waits per queue.
        let mut queues = BTreeSet::new();
        for q in self.queued.values() {
            prop_assert!(
                queues.insert(q.queue.clone()),
                "two tickets wait in {:?}",
                q.queue
            );
        }
        Ok(())
    }
}

// ---- strategies ----

/// Weights of the commands in a random session, and its size.
#[derive(Debug, Clone, Copy)]
struct Mix {
    users: usize,
    /// Whether joins spread over four queues (two disciplines, with or without a scope).
    spread: bool,
    join: u32,
    leave: u32,
    tick: u32,
    timeout: u32,
    ready: u32,
    cancel: u32,
    report: u32,
    challenge: u32,
    accept: u32,
    decline: u32,
    /// Weight of stale (ended or closed) and never-issued ids against live ones (8).
    stale: u32,
}

fn session(mix: Mix, len: std::ops::Range<usize>) -> BoxedStrategy<Vec<(Millis, Op)>> {
    let users = mix.users;
    let target = || {
        (
            prop_oneof![
                8 => Just(Pick::Live),
                mix.stale => Just(Pick::Seen),
                1 => Just(Pick::Unknown),
            ],
            0..64usize,
        )
    };
    let (lead, scoped) = if mix.spread { (0.3, 0.1) } else { (0.0, 0.0) };
    let rating = 1300..1700u16;
    let arms: Vec<(u32, BoxedStrategy<Op>)> = vec![
        (
            mix.join,
            (
                0..users,
                prop::bool::weighted(lead),
                prop::bool::weighted(scoped),
                rating.clone(),
            )
                .prop_map(|(user, lead, scoped, rating)| Op::Join {
                    user,
                    lead,
                    scoped,
                    rating,
                })
                .boxed(),
        ),
        (
            mix.leave,
            (0..users).prop_map(|user| Op::Leave { user }).boxed(),
        ),
        (mix.tick, Just(Op::Tick).boxed()),
        (
            mix.timeout,
            (
                prop_oneof![Just(0u16), 0..2_000u16],
                prop::bool::weighted(0.6),
            )
                .prop_map(|(extra, tick)| Op::Timeout { extra, tick })
                .boxed(),
        ),
        (
            mix.ready,
            (target(), 0..10u8)
                .prop_map(|(target, who)| Op::Ready { target, who })
                .boxed(),
        ),
        (
            mix.cancel,
            (target(), 0..10u8)
                .prop_map(|(target, who)| Op::Cancel { target, who })
                .boxed(),
        ),
        (
            mix.report,
            (target(), 0..10u8, 0..6u8)
                .prop_map(|(target, who, winner)| Op::Report {
                    target,
                    who,
                    winner,
                })
                .boxed(),
        ),
        (
            mix.challenge,
            (0..users, 0..users, prop::bool::weighted(lead))
                .prop_map(|(from, to, lead)| Op::Challenge { from, to, lead })
                .boxed(),
        ),
        (
            mix.accept,
            (target(), 0..10u8, rating.clone(), rating)
                .prop_map(|(target, who, a, b)| Op::Accept {
                    target,
                    who,
                    ratings: (a, b),
                })
                .boxed(),
        ),
        (
            mix.decline,
            (target(), 0..10u8)
                .prop_map(|(target, who)| Op::Decline { target, who })
                .boxed(),
        ),
    ];
    let arms: Vec<_> = arms.into_iter().filter(|(w, _)| *w > 0).collect();
    let dt = prop_oneof![
        3 => Just(0 as Millis),
        12 => 0..800 as Millis,
        4 => 800..5_000 as Millis,
        1 => 5_000..40_000 as Millis,
    ];
    proptest::collection::vec((dt, Union::new_weighted(arms)), len).boxed()
}

fn play(users: usize, ops: &[(Millis, Op)]) -> Result<(), TestCaseError> {
    let mut run = Run::new(users);
    for (dt, op) in ops {
        run.apply(*dt, op)?;
    }
    run.finish()
}

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        // Only this file is ours to write: no regression files next to it.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Queue play only: joins, leaves, ticks, ready checks, cancels, results, timeouts.
const QUEUE: Mix = Mix {
    users: 8,
    spread: true,
    join: 8,
    leave: 1,
    tick: 2,
    timeout: 1,
    ready: 8,
    cancel: 1,
    report: 6,
    challenge: 0,
    accept: 0,
    decline: 0,
    stale: 1,
};

/// Few climbers in one queue, many ready checks ending badly: requeues galore.
const REQUEUE: Mix = Mix {
    users: 4,
    spread: false,
    join: 5,
    leave: 1,
    tick: 2,
    timeout: 3,
    ready: 5,
    cancel: 2,
    report: 1,
    challenge: 0,
    accept: 0,
    decline: 0,
    stale: 1,
};

/// Many commands the engine must refuse: stale ids, strangers, double joins, busy opponents.
const REFUSALS: Mix = Mix {
    users: 6,
    spread: true,
    join: 4,
    leave: 3,
    tick: 1,
    timeout: 1,
    ready: 4,
    cancel: 3,
    report: 4,
    challenge: 3,
    accept: 0,
    decline: 3,
    stale: 6,
};

/// Everything, challenges accepted included.
const ALL: Mix = Mix {
    users: 8,
    spread: true,
    join: 7,
    leave: 1,
    tick: 2,
    timeout: 1,
    ready: 7,
    cancel: 1,
    report: 5,
    challenge: 3,
    accept: 3,
    decline: 1,
    stale: 1,
};

proptest! {
    #![proptest_config(config(800))]

    #[test]
    fn queue_sessions_keep_every_invariant(ops in session(QUEUE, 1..80)) {
        play(QUEUE.users, &ops)?;
    }

    #[test]
    fn failed_ready_checks_requeue_only_ready_players_at_their_original_queue_time(
        ops in session(REQUEUE, 1..80),
    ) {
        play(REQUEUE.users, &ops)?;
    }

    #[test]
    fn refused_commands_change_nothing(ops in session(REFUSALS, 1..80)) {
        play(REFUSALS.users, &ops)?;
    }

    #[test]
    fn sessions_with_challenges_keep_every_invariant(ops in session(ALL, 1..80)) {
        play(ALL.users, &ops)?;
    }
}

// ---- examples ----

#[test]
fn a_ready_player_is_requeued_with_their_original_queue_time_when_the_opponent_times_out() {
    let mut e = engine();
    let (a, b, c) = (user(1), user(2), user(3));
    let t0 = START;
    assert!(e.join(&a, boulder(), 1500.0, t0).unwrap().events.is_empty());
    let step = e.join(&b, boulder(), 1510.0, t0 + 2_000).unwrap();
    let id = new_match(&step).match_id;
    e.ready(id, &a, t0 + 3_000).unwrap();

    let step = e.tick(t0 + 2_000 + TIMING.ready_ms);

    assert_eq!(
        events_of(&step, &a),
        vec![
            Event::MatchCancelled {
                match_id: id,
                reason: CancelReason::OpponentReadyTimeout,
            },
            Event::Requeued {
                discipline: Discipline::Boulder,
                queued_since: at(t0),
            },
        ]
    );
    assert_eq!(
        events_of(&step, &b),
        vec![Event::MatchCancelled {
            match_id: id,
            reason: CancelReason::ReadyTimeout,
        }]
    );
    assert_eq!(e.queue_spot(&a).unwrap().ticket.queued_at, t0);
    assert!(e.queue_spot(&b).is_none());
    assert!(e.current_match(&a).is_none() && e.current_match(&b).is_none());

    // The next pairing carries the original queue time too.
    let step = e.join(&c, boulder(), 1500.0, t0 + 20_000).unwrap();
    let m = new_match(&step);
    assert_eq!(m.player(&a).unwrap().queued_since, Some(at(t0)));
    assert_eq!(m.player(&c).unwrap().queued_since, Some(at(t0 + 20_000)));
}

#[test]
fn a_player_who_cancels_is_not_requeued() {
    let mut e = engine();
    let (a, b, c, d) = (user(1), user(2), user(3), user(4));
    let t0 = START;
    // b is ready, a cancels: b goes back, a does not.
    let id = pair(&mut e, &a, &b, t0);
    e.ready(id, &b, t0 + 1_000).unwrap();
    let (m, step) = e.cancel(id, &a, t0 + 2_000).unwrap();
    assert_eq!(m.status, MatchStatus::Cancelled);
    assert_eq!(m.cancelled_by, vec![a.clone()]);
    assert_eq!(
        events_of(&step, &a),
        vec![Event::MatchCancelled {
            match_id: id,
            reason: CancelReason::Cancelled,
        }]
    );
    assert_eq!(
        events_of(&step, &b),
        vec![
            Event::MatchCancelled {
                match_id: id,
                reason: CancelReason::OpponentCancelled,
            },
            Event::Requeued {
                discipline: Discipline::Boulder,
                queued_since: at(t0),
            },
        ]
    );
    assert!(e.queue_spot(&a).is_none());
    assert_eq!(e.queue_spot(&b).unwrap().ticket.queued_at, t0);
    e.leave(&b).unwrap();

    // Being ready does not save whoever cancels; the unready opponent is not requeued either.
    let id = pair(&mut e, &c, &d, t0 + 5_000);
    e.ready(id, &c, t0 + 6_000).unwrap();
    let (_, step) = e.cancel(id, &c, t0 + 7_000).unwrap();
    assert!(
        step.events
            .iter()
            .all(|e| !matches!(e.event, Event::Requeued { .. }))
    );
    assert!(e.queue_spot(&c).is_none() && e.queue_spot(&d).is_none());
    assert!(e.pool().is_empty());
}

#[test]
fn when_both_miss_the_ready_deadline_nobody_is_requeued() {
    let mut e = engine();
    let (a, b) = (user(1), user(2));
    let id = pair(&mut e, &a, &b, START);

    let step = e.tick(START + TIMING.ready_ms);

    for u in [&a, &b] {
        assert_eq!(
            events_of(&step, u),
            vec![Event::MatchCancelled {
                match_id: id,
                reason: CancelReason::ReadyTimeout,
            }]
        );
    }
    assert_eq!(saved_matches(&step)[0].cancelled_by, vec![a, b]);
    assert!(e.pool().is_empty());
}

#[test]
fn ready_after_the_deadline_is_refused_and_changes_nothing() {
    let mut e = engine();
    let (a, b) = (user(1), user(2));
    let id = pair(&mut e, &a, &b, START);
    e.ready(id, &b, START + 1_000).unwrap();
    let deadline = START + TIMING.ready_ms;
    let users = [a.clone(), b.clone()];
    let before = snapshot(&e, &users, &[id], &[], deadline);

    assert_eq!(
        e.ready(id, &a, deadline).unwrap_err(),
        Refusal::DeadlinePassed
    );
    assert_eq!(snapshot(&e, &users, &[id], &[], deadline), before);

    // The tick that follows times a out and requeues b.
    let step = e.tick(deadline);
    assert_eq!(
        events_of(&step, &a),
        vec![Event::MatchCancelled {
            match_id: id,
            reason: CancelReason::ReadyTimeout,
        }]
    );
    assert!(e.queue_spot(&b).is_some());
}

#[test]
fn a_challenge_expires_and_both_sides_hear_of_it() {
    let mut e = engine();
    let (a, b) = (user(1), user(2));
    let (c, step) = e.challenge(&a, &b, Discipline::Lead, START).unwrap();
    assert_eq!(
        events_of(&step, &b),
        vec![Event::MatchRequested {
            challenge_id: c.challenge_id,
            from: a.clone(),
            discipline: Discipline::Lead,
            expires_at: at(START + TIMING.challenge_ms),
        }]
    );
    let expiry = START + TIMING.challenge_ms;
    let users = [a.clone(), b.clone()];
    let before = snapshot(&e, &users, &[], &[c.challenge_id], expiry);
    assert_eq!(
        e.accept(c.challenge_id, &b, (1500.0, 1500.0), expiry)
            .unwrap_err(),
        Refusal::ChallengeClosed
    );
    assert_eq!(
        e.decline(c.challenge_id, &b, expiry).unwrap_err(),
        Refusal::ChallengeClosed
    );
    assert_eq!(snapshot(&e, &users, &[], &[c.challenge_id], expiry), before);

    let step = e.tick(expiry);

    for u in [&a, &b] {
        assert_eq!(
            events_of(&step, u),
            vec![Event::ChallengeExpired {
                challenge_id: c.challenge_id,
            }]
        );
    }
    assert_eq!(
        saved_challenges(&step),
        vec![Challenge {
            status: ChallengeStatus::Expired,
            ..c.clone()
        }]
    );
    assert!(e.pending_challenge(c.challenge_id).is_none());
    assert_eq!(e.counts(), (0, 0));
    assert_eq!(
        e.accept(c.challenge_id, &b, (1500.0, 1500.0), expiry)
            .unwrap_err(),
        Refusal::UnknownChallenge
    );
}

#[test]
fn agreeing_reports_settle_and_disagreeing_reports_dispute() {
    let mut e = engine();
    let (a, b, c, d) = (user(1), user(2), user(3), user(4));
    let t = START;
    let agreed = pair(&mut e, &a, &b, t);
    let disputed = pair(&mut e, &c, &d, t);
    for (id, u) in [(agreed, &a), (agreed, &b), (disputed, &c), (disputed, &d)] {
        e.ready(id, u, t + 1_000).unwrap();
    }

    let (_, step) = e.report(agreed, &a, &b, t + 2_000).unwrap();
    assert_eq!(
        events_of(&step, &b),
        vec![Event::ResultReported {
            match_id: agreed,
            by: a.clone(),
            winner: b.clone(),
        }]
    );
    let (m, step) = e.report(agreed, &b, &b, t + 3_000).unwrap();
    assert_eq!(m.status, MatchStatus::Settled);
    assert_eq!(m.winner, Some(b.clone()));
    assert!(matches!(&step.changes[..], [Change::Settle(s)] if *s == m));
    assert!(step.events.is_empty());

    e.report(disputed, &c, &c, t + 2_000).unwrap();
    let (m, step) = e.report(disputed, &d, &d, t + 3_000).unwrap();
    assert_eq!(m.status, MatchStatus::Disputed);
    assert_eq!(m.winner, None);
    assert_eq!(saved_matches(&step), vec![m]);
    for u in [&c, &d] {
        assert_eq!(
            events_of(&step, u),
            vec![Event::MatchDisputed { match_id: disputed }]
        );
    }
    assert_eq!(e.counts(), (0, 0));
    for u in [&a, &b, &c, &d] {
        assert!(e.current_match(u).is_none());
    }
}

#[test]
fn unreported_results_expire_at_the_result_deadline() {
    let mut e = engine();
    let (a, b) = (user(1), user(2));
    let id = pair(&mut e, &a, &b, START);
    e.ready(id, &a, START + 1_000).unwrap();
    e.ready(id, &b, START + 2_000).unwrap();
    e.report(id, &a, &a, START + 3_000).unwrap();

    let step = e.tick(START + 2_000 + TIMING.result_ms);

    for u in [&a, &b] {
        assert_eq!(
            events_of(&step, u),
            vec![Event::MatchExpired { match_id: id }]
        );
        assert!(e.current_match(u).is_none());
    }
    assert_eq!(saved_matches(&step)[0].status, MatchStatus::Expired);
}

#[test]
fn a_climber_in_a_match_can_neither_queue_nor_challenge_nor_be_challenged() {
    let mut e = engine();
    let (a, b, c) = (user(1), user(2), user(3));
    let id = pair(&mut e, &a, &b, START);
    let users = [a.clone(), b.clone(), c.clone()];
    let before = snapshot(&e, &users, &[id], &[], START);

    assert_eq!(
        e.join(&a, boulder(), 1500.0, START).unwrap_err(),
        Refusal::InMatch
    );
    assert_eq!(
        e.challenge(&a, &c, Discipline::Boulder, START).unwrap_err(),
        Refusal::InMatch
    );
    assert_eq!(
        e.challenge(&c, &b, Discipline::Boulder, START).unwrap_err(),
        Refusal::OpponentBusy
    );
    assert_eq!(e.leave(&a).unwrap_err(), Refusal::NotQueued);
    assert_eq!(snapshot(&e, &users, &[id], &[], START), before);
}

#[test]
fn settling_an_old_match_does_not_free_a_player_from_their_new_one() {
    let mut e = engine();
    let (a, b, c) = (user(1), user(2), user(3));
    let old = pair(&mut e, &a, &b, START);
    e.ready(old, &a, START + 1_000).unwrap();
    e.ready(old, &b, START + 1_000).unwrap();
    // Having reported, a is free to queue again while b has not reported yet.
    e.report(old, &a, &a, START + 2_000).unwrap();
    assert!(e.current_match(&a).is_none());
    assert!(
        e.join(&a, boulder(), 1500.0, START + 3_000)
            .unwrap()
            .events
            .is_empty()
    );
    let step = e.join(&c, boulder(), 1500.0, START + 3_000).unwrap();
    let new = new_match(&step).match_id;

    let (m, _) = e.report(old, &b, &a, START + 4_000).unwrap();

    assert_eq!(m.status, MatchStatus::Settled);
    assert_eq!(e.current_match(&a).map(|m| m.match_id), Some(new));
    assert!(e.current_match(&b).is_none());
    assert_eq!(
        e.join(&a, boulder(), 1500.0, START + 5_000).unwrap_err(),
        Refusal::InMatch
    );
}

#[test]
fn entering_a_match_withdraws_the_other_pending_challenges() {
    let mut e = engine();
    let (a, b, c, d) = (user(1), user(2), user(3), user(4));
    let (sent, _) = e.challenge(&a, &c, Discipline::Boulder, START).unwrap();
    let (received, _) = e.challenge(&b, &a, Discipline::Lead, START).unwrap();

    assert!(
        e.join(&a, boulder(), 1500.0, START + 1_000)
            .unwrap()
            .events
            .is_empty()
    );
    let step = e.join(&d, boulder(), 1500.0, START + 1_000).unwrap();

    assert_eq!(
        events_of(&step, &c),
        vec![Event::ChallengeExpired {
            challenge_id: sent.challenge_id,
        }]
    );
    assert_eq!(
        events_of(&step, &b),
        vec![Event::ChallengeExpired {
            challenge_id: received.challenge_id,
        }]
    );
    let mut statuses: Vec<_> = saved_challenges(&step)
        .into_iter()
        .map(|c| (c.challenge_id, c.status))
        .collect();
    statuses.sort_by_key(|(id, _)| *id);
    let mut want = vec![
        (sent.challenge_id, ChallengeStatus::Withdrawn),
        (received.challenge_id, ChallengeStatus::Withdrawn),
    ];
    want.sort_by_key(|(id, _)| *id);
    assert_eq!(statuses, want);
    assert_eq!(e.counts(), (1, 0));
}

#[test]
fn accepting_a_challenge_saves_it_as_accepted_and_tells_nobody_it_expired() {
    let mut e = engine();
    let (a, b) = (user(1), user(2));
    let (c, _) = e.challenge(&a, &b, Discipline::Speed, START).unwrap();

    let (m, step) = e
        .accept(c.challenge_id, &b, (1400.0, 1600.0), START + 1_000)
        .unwrap();

    assert_eq!(m.origin, MatchOrigin::Challenge);
    assert_eq!(m.discipline, Discipline::Speed);
    assert_eq!(
        saved_challenges(&step),
        vec![Challenge {
            status: ChallengeStatus::Accepted,
            match_id: Some(m.match_id),
            ..c
        }]
    );
    for u in [&a, &b] {
        let told: Vec<Event> = events_of(&step, u)
            .into_iter()
            .filter(|e| !matches!(e, Event::MatchFound { .. }))
            .collect();
        assert_eq!(told, vec![], "{u} was told more than match_found");
    }
}
