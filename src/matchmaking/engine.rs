//! The match lifecycle around the pool: queue joins and leaves, direct challenges, the ready
//! check, cancels and timeouts (with requeue at the original queue time), result reports.
//!
//! Every accepted command returns a [`Step`]: the state to persist and the events to send, which
//! the `MatchmakerActor` commits in one store transaction. Refused commands change nothing.

use std::collections::{BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::Millis;
use super::pool::{Pairing, Pool, QueueKey, Ticket};
use crate::domain::event::CancelReason;
use crate::domain::{
    Challenge, ChallengeStatus, Change, Discipline, Event, Match, MatchOrigin, MatchStatus,
    NewEvent, Player, QueuedTicket, UserId,
};

/// Pending challenges one climber may have sent at a time.
pub const MAX_OUTGOING_CHALLENGES: usize = 10;

/// Deadlines, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// From `match_found` to the ready deadline.
    pub ready_ms: Millis,
    /// From a challenge to its expiry.
    pub challenge_ms: Millis,
    /// From `match_confirmed` to the result deadline.
    pub result_ms: Millis,
}

/// Why a command was refused. Each maps to one 4xx (see `http::matchmaking`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("you are already in a queue")]
    AlreadyQueued,
    #[error("you are in a match: finish it first")]
    InMatch,
    #[error("you are not in a queue")]
    NotQueued,
    #[error("no such match")]
    UnknownMatch,
    #[error("this is not your match")]
    NotYourMatch,
    #[error("the ready check of this match is over")]
    NotInReadyCheck,
    #[error("the deadline for this has passed")]
    DeadlinePassed,
    #[error("you are already ready")]
    AlreadyReady,
    #[error("results can only be reported for a confirmed match")]
    NotConfirmed,
    #[error("you already reported a result for this match")]
    AlreadyReported,
    #[error("the winner must be one of the two players")]
    WinnerNotAPlayer,
    #[error("no such challenge")]
    UnknownChallenge,
    #[error("this challenge is not addressed to you")]
    NotYourChallenge,
    #[error("this challenge is no longer pending")]
    ChallengeClosed,
    #[error("you cannot challenge yourself")]
    ChallengeSelf,
    #[error("the opponent is in a match")]
    OpponentBusy,
    #[error("you already challenged this climber")]
    AlreadyChallenged,
    #[error("too many pending challenges: wait for answers first")]
    TooManyChallenges,
}

/// What to persist and send after an accepted command.
#[derive(Debug, Default)]
pub struct Step {
    pub changes: Vec<Change>,
    pub events: Vec<NewEvent>,
}

impl Step {
    fn event(&mut self, user: &UserId, event: Event) {
        self.events.push(NewEvent {
            user: user.clone(),
            event,
            idempotency_key: None,
        });
    }

    fn absorb(&mut self, other: Step) {
        self.changes.extend(other.changes);
        self.events.extend(other.events);
    }

    pub fn is_empty(&self) -> bool {
        self.changes.is_empty() && self.events.is_empty()
    }
}

/// A climber's place in the queue, as `GET /v1/me/match` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueSpot {
    pub queue: QueueKey,
    pub ticket: Ticket,
}

/// Deadlines the engine watches, ordered by time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Deadline {
    Challenge(Uuid),
    Ready(Uuid),
    Result(Uuid),
}

pub struct Engine {
    pool: Pool,
    timing: Timing,
    /// Matches not yet ended: in the ready check, or confirmed and awaiting results.
    matches: HashMap<Uuid, Match>,
    /// The match that holds a climber: from `match_found` until they report its result or it ends.
    held: HashMap<UserId, Uuid>,
    /// Each climber's latest match while it has not ended, including one they reported and whose
    /// opponent has not. Once it ends it is forgotten here: `GET /v1/me/match` reads it from the
    /// store, so this map holds no more entries than there are live matches.
    recent: HashMap<UserId, Uuid>,
    challenges: HashMap<Uuid, Challenge>,
    /// Pending challenge ids per climber (sent or received).
    challenges_of: HashMap<UserId, BTreeSet<Uuid>>,
    deadlines: BTreeSet<(Millis, Deadline)>,
    new_id: Box<dyn FnMut() -> Uuid + Send>,
}

fn at(ms: Millis) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

fn ms(t: DateTime<Utc>) -> Millis {
    t.timestamp_millis()
}

impl Engine {
    pub fn new(pool: Pool, timing: Timing) -> Engine {
        Engine::with_ids(pool, timing, Box::new(Uuid::now_v7))
    }

    /// With a chosen id source (deterministic tests).
    pub fn with_ids(pool: Pool, timing: Timing, new_id: Box<dyn FnMut() -> Uuid + Send>) -> Engine {
        Engine {
            pool,
            timing,
            matches: HashMap::new(),
            held: HashMap::new(),
            recent: HashMap::new(),
            challenges: HashMap::new(),
            challenges_of: HashMap::new(),
            deadlines: BTreeSet::new(),
            new_id,
        }
    }

    pub fn timing(&self) -> Timing {
        self.timing
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Takes back matches and challenges that were live when the node stopped.
    /// Takes back what was live when the node stopped: matches, pending challenges and queue
    /// tickets (with their original queue times). Tickets that have become compatible meanwhile
    /// are paired: the returned step holds those matches.
    pub fn restore(
        &mut self,
        matches: Vec<Match>,
        challenges: Vec<Challenge>,
        tickets: Vec<QueuedTicket>,
        now: Millis,
    ) -> Step {
        for m in matches {
            if !m.status.is_live() {
                continue;
            }
            for p in &m.players {
                self.recent.insert(p.user_id.clone(), m.match_id);
                let done = m.status == MatchStatus::Confirmed && p.reported_winner.is_some();
                if !done {
                    self.held.insert(p.user_id.clone(), m.match_id);
                }
            }
            self.watch_match(&m);
            self.matches.insert(m.match_id, m);
        }
        for c in challenges {
            if c.status == ChallengeStatus::Pending {
                self.track_challenge(c);
            }
        }
        let mut step = Step::default();
        for t in tickets {
            if self.held.contains_key(&t.user) {
                step.changes.push(Change::DropTicket(t.user));
                continue;
            }
            let queue = QueueKey {
                discipline: t.discipline,
                scope: t.scope,
            };
            let ticket = Ticket {
                user: t.user,
                rating: t.rating,
                queued_at: ms(t.queued_at),
            };
            if let Ok(Some(pairing)) = self.pool.join(queue, ticket, now) {
                let started = self.start_queue_match(pairing, now);
                step.absorb(started);
            }
        }
        step
    }

    /// The match holding `user`, if any.
    pub fn current_match(&self, user: &UserId) -> Option<&Match> {
        self.held.get(user).and_then(|id| self.matches.get(id))
    }

    /// The latest match of `user` while it is live here. `None` once it ended: the store has it.
    pub fn recent_match(&self, user: &UserId) -> Option<Uuid> {
        self.recent.get(user).copied()
    }

    /// A match that has not ended yet.
    pub fn live_match(&self, id: Uuid) -> Option<&Match> {
        self.matches.get(&id)
    }

    pub fn queue_spot(&self, user: &UserId) -> Option<QueueSpot> {
        self.pool.ticket(user).map(|(queue, ticket)| QueueSpot {
            queue: queue.clone(),
            ticket: ticket.clone(),
        })
    }

    /// Pending challenges sent to `user` (incoming) and by `user` (outgoing).
    pub fn challenges_of(&self, user: &UserId) -> (Vec<&Challenge>, Vec<&Challenge>) {
        let mut incoming = Vec::new();
        let mut outgoing = Vec::new();
        for id in self.challenges_of.get(user).into_iter().flatten() {
            if let Some(c) = self.challenges.get(id) {
                if c.to == *user {
                    incoming.push(c);
                } else {
                    outgoing.push(c);
                }
            }
        }
        (incoming, outgoing)
    }

    pub fn pending_challenge(&self, id: Uuid) -> Option<&Challenge> {
        self.challenges.get(&id)
    }

    /// Live matches and pending challenges, for metrics.
    pub fn counts(&self) -> (usize, usize) {
        (self.matches.len(), self.challenges.len())
    }

    /// When `tick` next has something to do (a deadline or a widening window).
    pub fn next_wake(&self, now: Millis) -> Option<Millis> {
        let deadline = self.deadlines.first().map(|(t, _)| *t);
        match (deadline, self.pool.next_tick_at(now)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    pub fn join(
        &mut self,
        user: &UserId,
        queue: QueueKey,
        rating: f64,
        now: Millis,
    ) -> Result<Step, Refusal> {
        if self.held.contains_key(user) {
            return Err(Refusal::InMatch);
        }
        let ticket = Ticket {
            user: user.clone(),
            rating,
            queued_at: now,
        };
        self.enqueue(queue, ticket, now)
    }

    pub fn leave(&mut self, user: &UserId) -> Result<(QueueSpot, Step), Refusal> {
        let (queue, ticket) = self.pool.leave(user).ok_or(Refusal::NotQueued)?;
        let step = Step {
            changes: vec![Change::DropTicket(user.clone())],
            events: Vec::new(),
        };
        Ok((QueueSpot { queue, ticket }, step))
    }

    /// Puts a ticket in the pool: paired at once, or stored as waiting.
    fn enqueue(&mut self, queue: QueueKey, ticket: Ticket, now: Millis) -> Result<Step, Refusal> {
        let saved = Change::SaveTicket(QueuedTicket {
            user: ticket.user.clone(),
            discipline: queue.discipline,
            scope: queue.scope.clone(),
            rating: ticket.rating,
            queued_at: at(ticket.queued_at),
        });
        match self.pool.join(queue, ticket, now) {
            Err(_) => Err(Refusal::AlreadyQueued),
            Ok(None) => Ok(Step {
                changes: vec![saved],
                events: Vec::new(),
            }),
            Ok(Some(pairing)) => Ok(self.start_queue_match(pairing, now)),
        }
    }

    pub fn challenge(
        &mut self,
        from: &UserId,
        to: &UserId,
        discipline: Discipline,
        now: Millis,
    ) -> Result<(Challenge, Step), Refusal> {
        if from == to {
            return Err(Refusal::ChallengeSelf);
        }
        if self.held.contains_key(from) {
            return Err(Refusal::InMatch);
        }
        if self.held.contains_key(to) {
            return Err(Refusal::OpponentBusy);
        }
        let (_, outgoing) = self.challenges_of(from);
        if outgoing.iter().any(|c| c.to == *to) {
            return Err(Refusal::AlreadyChallenged);
        }
        if outgoing.len() >= MAX_OUTGOING_CHALLENGES {
            return Err(Refusal::TooManyChallenges);
        }
        let challenge = Challenge {
            challenge_id: (self.new_id)(),
            from: from.clone(),
            to: to.clone(),
            discipline,
            created_at: at(now),
            expires_at: at(now + self.timing.challenge_ms),
            status: ChallengeStatus::Pending,
            match_id: None,
        };
        let mut step = Step::default();
        step.changes.push(Change::SaveChallenge(challenge.clone()));
        step.event(
            to,
            Event::MatchRequested {
                challenge_id: challenge.challenge_id,
                from: from.clone(),
                discipline,
                expires_at: challenge.expires_at,
            },
        );
        self.track_challenge(challenge.clone());
        Ok((challenge, step))
    }

    /// The challenged climber accepts: the two go straight to a ready check. `ratings` are the
    /// challenger's and the accepting climber's, in that order.
    pub fn accept(
        &mut self,
        id: Uuid,
        user: &UserId,
        ratings: (f64, f64),
        now: Millis,
    ) -> Result<(Match, Step), Refusal> {
        let challenge = self.open_challenge(id, user, now)?;
        if self.held.contains_key(user) {
            return Err(Refusal::InMatch);
        }
        if self.held.contains_key(&challenge.from) {
            return Err(Refusal::OpponentBusy);
        }
        let mut step = Step::default();
        // Answered before the match starts, so it is not withdrawn with the players' others.
        self.untrack_challenge(id);
        let players = [
            self.player(&challenge.from, ratings.0, None),
            self.player(user, ratings.1, None),
        ];
        let m = self.start_match(
            players,
            challenge.discipline,
            None,
            MatchOrigin::Challenge,
            now,
            &mut step,
        );
        step.changes.push(Change::SaveChallenge(Challenge {
            status: ChallengeStatus::Accepted,
            match_id: Some(m.match_id),
            ..challenge
        }));
        Ok((m, step))
    }

    pub fn decline(
        &mut self,
        id: Uuid,
        user: &UserId,
        now: Millis,
    ) -> Result<(Challenge, Step), Refusal> {
        let challenge = self.open_challenge(id, user, now)?;
        let mut step = Step::default();
        self.untrack_challenge(id);
        let declined = Challenge {
            status: ChallengeStatus::Declined,
            ..challenge
        };
        step.changes.push(Change::SaveChallenge(declined.clone()));
        step.event(
            &declined.from,
            Event::ChallengeDeclined {
                challenge_id: id,
                by: user.clone(),
            },
        );
        Ok((declined, step))
    }

    pub fn ready(
        &mut self,
        id: Uuid,
        user: &UserId,
        now: Millis,
    ) -> Result<(Match, Step), Refusal> {
        let m = self.in_ready_check(id, user, now)?;
        if m.player(user).is_some_and(|p| p.ready) {
            return Err(Refusal::AlreadyReady);
        }
        let mut m = m.clone();
        if let Some(p) = m.player_mut(user) {
            p.ready = true;
        }
        m.updated_at = at(now);
        let mut step = Step::default();
        let opponent = m.opponent_of(user).map(|p| p.user_id.clone());
        if let Some(opponent) = &opponent {
            step.event(opponent, Event::OpponentReady { match_id: id });
        }
        if m.players.iter().all(|p| p.ready) {
            self.unwatch(ms(m.ready_deadline), Deadline::Ready(id));
            m.status = MatchStatus::Confirmed;
            let deadline = now + self.timing.result_ms;
            m.result_deadline = Some(at(deadline));
            self.deadlines.insert((deadline, Deadline::Result(id)));
            for p in &m.players {
                step.event(&p.user_id, Event::MatchConfirmed { match_id: id });
            }
        }
        step.changes.push(Change::SaveMatch(m.clone()));
        self.matches.insert(id, m.clone());
        Ok((m, step))
    }

    /// A player calls the match off during the ready check. The other player, if they were
    /// ready, goes back to the queue with their original queue time.
    pub fn cancel(
        &mut self,
        id: Uuid,
        user: &UserId,
        now: Millis,
    ) -> Result<(Match, Step), Refusal> {
        self.in_ready_check(id, user, now)?;
        let failed = vec![user.clone()];
        self.end_ready_check(id, &failed, CancelReason::Cancelled, now)
            .ok_or(Refusal::UnknownMatch)
    }

    pub fn report(
        &mut self,
        id: Uuid,
        user: &UserId,
        winner: &UserId,
        now: Millis,
    ) -> Result<(Match, Step), Refusal> {
        let m = self.own_match(id, user)?;
        if m.status != MatchStatus::Confirmed {
            return Err(Refusal::NotConfirmed);
        }
        if m.result_deadline.is_some_and(|d| now >= ms(d)) {
            return Err(Refusal::DeadlinePassed);
        }
        if m.player(winner).is_none() {
            return Err(Refusal::WinnerNotAPlayer);
        }
        if m.player(user).is_some_and(|p| p.reported_winner.is_some()) {
            return Err(Refusal::AlreadyReported);
        }
        let mut m = m.clone();
        if let Some(p) = m.player_mut(user) {
            p.reported_winner = Some(winner.clone());
        }
        m.updated_at = at(now);
        self.release(user, id);
        let mut step = Step::default();
        let reports: Vec<Option<UserId>> = m
            .players
            .iter()
            .map(|p| p.reported_winner.clone())
            .collect();
        match (&reports[0], &reports[1]) {
            (Some(a), Some(b)) if a == b => {
                m.status = MatchStatus::Settled;
                m.winner = Some(a.clone());
                step.changes.push(Change::Settle(m.clone()));
                self.finish(&m);
            }
            (Some(_), Some(_)) => {
                m.status = MatchStatus::Disputed;
                step.changes.push(Change::SaveMatch(m.clone()));
                for p in &m.players {
                    step.event(&p.user_id, Event::MatchDisputed { match_id: id });
                }
                self.finish(&m);
            }
            _ => {
                if let Some(opponent) = m.opponent_of(user) {
                    step.event(
                        &opponent.user_id,
                        Event::ResultReported {
                            match_id: id,
                            by: user.clone(),
                            winner: winner.clone(),
                        },
                    );
                }
                step.changes.push(Change::SaveMatch(m.clone()));
                self.matches.insert(id, m.clone());
            }
        }
        Ok((m, step))
    }

    /// Ends whatever is due at `now` (challenges, ready checks, result windows), then pairs the
    /// tickets whose windows have widened enough.
    pub fn tick(&mut self, now: Millis) -> Step {
        let mut step = Step::default();
        while let Some(&(when, deadline)) = self.deadlines.first() {
            if when > now {
                break;
            }
            self.deadlines.remove(&(when, deadline));
            match deadline {
                Deadline::Challenge(id) => {
                    if let Some(c) = self.untrack_challenge(id) {
                        for u in [&c.from, &c.to] {
                            step.event(u, Event::ChallengeExpired { challenge_id: id });
                        }
                        step.changes.push(Change::SaveChallenge(Challenge {
                            status: ChallengeStatus::Expired,
                            ..c
                        }));
                    }
                }
                Deadline::Ready(id) => {
                    let late: Vec<UserId> = match self.matches.get(&id) {
                        Some(m) if m.status == MatchStatus::ReadyCheck => m
                            .players
                            .iter()
                            .filter(|p| !p.ready)
                            .map(|p| p.user_id.clone())
                            .collect(),
                        _ => continue,
                    };
                    if let Some((_, ended)) =
                        self.end_ready_check(id, &late, CancelReason::ReadyTimeout, now)
                    {
                        step.absorb(ended);
                    }
                }
                Deadline::Result(id) => {
                    if let Some(m) = self.matches.get(&id).cloned() {
                        let mut m = m;
                        m.status = MatchStatus::Expired;
                        m.updated_at = at(now);
                        for p in &m.players {
                            step.event(&p.user_id, Event::MatchExpired { match_id: id });
                        }
                        step.changes.push(Change::SaveMatch(m.clone()));
                        self.finish(&m);
                    }
                }
            }
        }
        for pairing in self.pool.tick(now) {
            let started = self.start_queue_match(pairing, now);
            step.absorb(started);
        }
        step
    }

    fn player(&self, user: &UserId, rating: f64, queued_at: Option<Millis>) -> Player {
        Player {
            user_id: user.clone(),
            ready: false,
            reported_winner: None,
            queued_since: queued_at.map(at),
            rating,
        }
    }

    fn start_queue_match(&mut self, pairing: Pairing, now: Millis) -> Step {
        let mut step = Step::default();
        let players = [
            self.player(&pairing.a.user, pairing.a.rating, Some(pairing.a.queued_at)),
            self.player(&pairing.b.user, pairing.b.rating, Some(pairing.b.queued_at)),
        ];
        self.start_match(
            players,
            pairing.queue.discipline,
            pairing.queue.scope,
            MatchOrigin::Queue,
            now,
            &mut step,
        );
        step
    }

    fn start_match(
        &mut self,
        players: [Player; 2],
        discipline: Discipline,
        scope: Option<crate::domain::Scope>,
        origin: MatchOrigin,
        now: Millis,
        step: &mut Step,
    ) -> Match {
        let id = (self.new_id)();
        let deadline = now + self.timing.ready_ms;
        let m = Match {
            match_id: id,
            discipline,
            scope,
            origin,
            status: MatchStatus::ReadyCheck,
            created_at: at(now),
            ready_deadline: at(deadline),
            result_deadline: None,
            players,
            winner: None,
            cancel_reason: None,
            cancelled_by: Vec::new(),
            updated_at: at(now),
        };
        step.changes.push(Change::SaveMatch(m.clone()));
        for (me, other) in [(0, 1), (1, 0)] {
            let user = m.players[me].user_id.clone();
            // A climber in a match leaves the queue and their other challenges.
            self.pool.leave(&user);
            step.changes.push(Change::DropTicket(user.clone()));
            self.withdraw_challenges(&user, step);
            self.held.insert(user.clone(), id);
            self.recent.insert(user.clone(), id);
            step.event(
                &user,
                Event::MatchFound {
                    match_id: id,
                    opponent: m.players[other].user_id.clone(),
                    discipline,
                    ready_deadline: m.ready_deadline,
                },
            );
        }
        self.deadlines.insert((deadline, Deadline::Ready(id)));
        self.matches.insert(id, m.clone());
        m
    }

    /// Cancels a match in its ready check because `failed` cancelled or missed the deadline.
    /// Players who were ready and came from the queue are requeued at their original time.
    fn end_ready_check(
        &mut self,
        id: Uuid,
        failed: &[UserId],
        reason: CancelReason,
        now: Millis,
    ) -> Option<(Match, Step)> {
        let mut step = Step::default();
        let mut m = self.matches.get(&id).cloned()?;
        let (own, other) = match reason {
            CancelReason::Cancelled | CancelReason::OpponentCancelled => {
                (CancelReason::Cancelled, CancelReason::OpponentCancelled)
            }
            CancelReason::ReadyTimeout | CancelReason::OpponentReadyTimeout => (
                CancelReason::ReadyTimeout,
                CancelReason::OpponentReadyTimeout,
            ),
        };
        m.status = MatchStatus::Cancelled;
        m.cancel_reason = Some(own);
        m.cancelled_by = failed.to_vec();
        m.updated_at = at(now);
        self.unwatch(ms(m.ready_deadline), Deadline::Ready(id));
        self.finish(&m);
        step.changes.push(Change::SaveMatch(m.clone()));
        let mut requeue = Vec::new();
        for p in &m.players {
            let failed_here = failed.contains(&p.user_id);
            let reason = if failed_here { own } else { other };
            step.event(
                &p.user_id,
                Event::MatchCancelled {
                    match_id: id,
                    reason,
                },
            );
            if !failed_here
                && p.ready
                && m.origin == MatchOrigin::Queue
                && let Some(since) = p.queued_since
            {
                requeue.push((p.user_id.clone(), p.rating, ms(since)));
            }
        }
        for (user, rating, since) in requeue {
            step.event(
                &user,
                Event::Requeued {
                    discipline: m.discipline,
                    queued_since: at(since),
                },
            );
            let queue = QueueKey {
                discipline: m.discipline,
                scope: m.scope.clone(),
            };
            let ticket = Ticket {
                user: user.clone(),
                rating,
                queued_at: since,
            };
            if let Ok(requeued) = self.enqueue(queue, ticket, now) {
                step.absorb(requeued);
            }
        }
        Some((m, step))
    }

    /// Forgets an ended match: its players are free.
    fn finish(&mut self, m: &Match) {
        for p in &m.players {
            self.release(&p.user_id, m.match_id);
            if self.recent.get(&p.user_id) == Some(&m.match_id) {
                self.recent.remove(&p.user_id);
            }
        }
        if let Some(d) = m.result_deadline {
            self.unwatch(ms(d), Deadline::Result(m.match_id));
        }
        self.matches.remove(&m.match_id);
    }

    fn release(&mut self, user: &UserId, id: Uuid) {
        if self.held.get(user) == Some(&id) {
            self.held.remove(user);
        }
    }

    fn unwatch(&mut self, when: Millis, deadline: Deadline) {
        self.deadlines.remove(&(when, deadline));
    }

    fn watch_match(&mut self, m: &Match) {
        match m.status {
            MatchStatus::ReadyCheck => {
                self.deadlines
                    .insert((ms(m.ready_deadline), Deadline::Ready(m.match_id)));
            }
            MatchStatus::Confirmed => {
                if let Some(d) = m.result_deadline {
                    self.deadlines.insert((ms(d), Deadline::Result(m.match_id)));
                }
            }
            _ => {}
        }
    }

    fn own_match(&self, id: Uuid, user: &UserId) -> Result<&Match, Refusal> {
        let m = self.matches.get(&id).ok_or(Refusal::UnknownMatch)?;
        if m.player(user).is_none() {
            return Err(Refusal::NotYourMatch);
        }
        Ok(m)
    }

    /// `user`'s match, still in its ready check at `now`. Past the deadline the next tick ends
    /// it as a timeout, with the reasons that say so, so ready and cancel are refused.
    fn in_ready_check(&self, id: Uuid, user: &UserId, now: Millis) -> Result<&Match, Refusal> {
        let m = self.own_match(id, user)?;
        if m.status != MatchStatus::ReadyCheck {
            return Err(Refusal::NotInReadyCheck);
        }
        if now >= ms(m.ready_deadline) {
            return Err(Refusal::DeadlinePassed);
        }
        Ok(m)
    }

    /// A pending challenge addressed to `user`, still open at `now`.
    fn open_challenge(&self, id: Uuid, user: &UserId, now: Millis) -> Result<Challenge, Refusal> {
        let c = self.challenges.get(&id).ok_or(Refusal::UnknownChallenge)?;
        if c.to != *user {
            return Err(if c.from == *user {
                Refusal::NotYourChallenge
            } else {
                Refusal::UnknownChallenge
            });
        }
        if c.status != ChallengeStatus::Pending || now >= ms(c.expires_at) {
            return Err(Refusal::ChallengeClosed);
        }
        Ok(c.clone())
    }

    fn track_challenge(&mut self, c: Challenge) {
        for u in [&c.from, &c.to] {
            self.challenges_of
                .entry(u.clone())
                .or_default()
                .insert(c.challenge_id);
        }
        self.deadlines
            .insert((ms(c.expires_at), Deadline::Challenge(c.challenge_id)));
        self.challenges.insert(c.challenge_id, c);
    }

    fn untrack_challenge(&mut self, id: Uuid) -> Option<Challenge> {
        let c = self.challenges.remove(&id)?;
        for u in [&c.from, &c.to] {
            if let Some(set) = self.challenges_of.get_mut(u) {
                set.remove(&id);
                if set.is_empty() {
                    self.challenges_of.remove(u);
                }
            }
        }
        self.unwatch(ms(c.expires_at), Deadline::Challenge(id));
        Some(c)
    }

    /// Pending challenges of a climber who just entered a match are withdrawn; the other side
    /// learns it through `challenge_expired`.
    fn withdraw_challenges(&mut self, user: &UserId, step: &mut Step) {
        let ids: Vec<Uuid> = self
            .challenges_of
            .get(user)
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default();
        for id in ids {
            if let Some(c) = self.untrack_challenge(id) {
                let other = if c.from == *user { &c.to } else { &c.from };
                step.event(other, Event::ChallengeExpired { challenge_id: id });
                step.changes.push(Change::SaveChallenge(Challenge {
                    status: ChallengeStatus::Withdrawn,
                    ..c
                }));
            }
        }
    }
}
