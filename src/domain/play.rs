//! Matches, challenges, ratings and ascents as the engine, the store and the API see them.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::event::{CancelReason, Discipline, Performance};
use super::grade::Grade;
use super::ids::{RouteId, Scope, UserId};

/// How two climbers came to face each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MatchOrigin {
    Queue,
    Challenge,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MatchStatus {
    /// Waiting for both players to confirm before the ready deadline.
    ReadyCheck,
    /// Both ready: the climb is on, results are awaited.
    Confirmed,
    /// Both players reported the same winner; ratings were updated.
    Settled,
    /// The players reported different winners; ratings were left alone.
    Disputed,
    /// Cancelled by a player or by a missed ready deadline.
    Cancelled,
    /// Not both results arrived before the result deadline; ratings were left alone.
    Expired,
}

impl MatchStatus {
    /// A live match is not over yet. It holds its players (no queueing, challenging or being
    /// matched): both during the ready check, and once confirmed each until they report.
    pub fn is_live(self) -> bool {
        matches!(self, MatchStatus::ReadyCheck | MatchStatus::Confirmed)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            MatchStatus::ReadyCheck => "ready_check",
            MatchStatus::Confirmed => "confirmed",
            MatchStatus::Settled => "settled",
            MatchStatus::Disputed => "disputed",
            MatchStatus::Cancelled => "cancelled",
            MatchStatus::Expired => "expired",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Player {
    pub user_id: UserId,
    pub ready: bool,
    /// The winner this player reported, once they did.
    #[schema(required = true)]
    pub reported_winner: Option<UserId>,
    /// When this player joined the queue (queue matches): kept if they are requeued.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub queued_since: Option<DateTime<Utc>>,
    /// Rating when the match was made.
    pub rating: f64,
}

/// A duel from `match_found` to its end. Also the JSON of `GET /v1/matches/{id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Match {
    pub match_id: Uuid,
    pub discipline: Discipline,
    #[schema(required = true)]
    pub scope: Option<Scope>,
    pub origin: MatchOrigin,
    pub status: MatchStatus,
    pub created_at: DateTime<Utc>,
    pub ready_deadline: DateTime<Utc>,
    /// Set when the match is confirmed: results must be in by then.
    #[schema(required = true)]
    pub result_deadline: Option<DateTime<Utc>>,
    pub players: [Player; 2],
    #[schema(required = true)]
    pub winner: Option<UserId>,
    /// Why it was cancelled, as the first player cancelled or timed out saw it.
    #[schema(required = true)]
    pub cancel_reason: Option<CancelReason>,
    /// Who cancelled or missed the deadline (one or both).
    #[serde(default)]
    #[schema(required = true)]
    pub cancelled_by: Vec<UserId>,
    pub updated_at: DateTime<Utc>,
}

impl Match {
    pub fn player(&self, user: &UserId) -> Option<&Player> {
        self.players.iter().find(|p| p.user_id == *user)
    }

    pub fn player_mut(&mut self, user: &UserId) -> Option<&mut Player> {
        self.players.iter_mut().find(|p| p.user_id == *user)
    }

    pub fn opponent_of(&self, user: &UserId) -> Option<&Player> {
        if self.players[0].user_id == *user {
            Some(&self.players[1])
        } else if self.players[1].user_id == *user {
            Some(&self.players[0])
        } else {
            None
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ChallengeStatus {
    Pending,
    Accepted,
    Declined,
    Expired,
    /// Withdrawn because one of the two entered another match first.
    Withdrawn,
}

impl ChallengeStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ChallengeStatus::Pending => "pending",
            ChallengeStatus::Accepted => "accepted",
            ChallengeStatus::Declined => "declined",
            ChallengeStatus::Expired => "expired",
            ChallengeStatus::Withdrawn => "withdrawn",
        }
    }
}

/// A direct challenge: `from` asks `to` for a duel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Challenge {
    pub challenge_id: Uuid,
    pub from: UserId,
    pub to: UserId,
    pub discipline: Discipline,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub status: ChallengeStatus,
    /// The match it became, once accepted.
    #[schema(required = true)]
    pub match_id: Option<Uuid>,
}

/// A Glicko-2 rating in one discipline, on the familiar (Elo-like) scale.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Rating {
    pub rating: f64,
    pub deviation: f64,
    pub volatility: f64,
    /// Settled matches that counted.
    pub matches: u32,
}

/// One row of `GET /v1/leaderboard`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct LeaderboardEntry {
    /// 1 + the number of climbers with a strictly higher rating (ties share a rank).
    pub rank: u32,
    pub user_id: UserId,
    pub rating: f64,
    pub deviation: f64,
    pub matches: u32,
}

/// A climber whose leaderboard position moved because of a settled match.
#[derive(Debug, Clone, PartialEq)]
pub struct RankChange {
    pub user: UserId,
    /// None when the climber had no rank before (first settled match).
    pub old_rank: Option<u32>,
    pub new_rank: u32,
    pub rating: f64,
}

/// What an ascent achieved: a grade (boulder, lead) or a time (speed).
#[derive(Debug, Clone, PartialEq)]
pub enum AscentResult {
    Grade(Grade),
    TimeMs(u64),
}

impl AscentResult {
    pub fn performance(&self) -> Performance {
        match self {
            AscentResult::Grade(g) => Performance::Grade(g.to_string()),
            AscentResult::TimeMs(ms) => Performance::TimeMs(*ms),
        }
    }
}

/// A logged ascent, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct NewAscent {
    pub ascent_id: Uuid,
    pub user: UserId,
    pub route_id: RouteId,
    pub discipline: Discipline,
    pub result: AscentResult,
    pub at: DateTime<Utc>,
}

/// What logging an ascent meant for the climber.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AscentOutcome {
    pub ascent_id: Uuid,
    /// First time this climber sent this route.
    pub first_send: bool,
    /// A new hardest grade (boulder, lead) or fastest time (speed) in the discipline.
    pub personal_record: bool,
    /// The record before this ascent, if any.
    #[schema(required = true)]
    pub previous: Option<Performance>,
}

/// A climber waiting in an open queue, as stored so that a restart keeps their place.
#[derive(Debug, Clone, PartialEq)]
pub struct QueuedTicket {
    pub user: UserId,
    pub discipline: Discipline,
    pub scope: Option<Scope>,
    pub rating: f64,
    pub queued_at: DateTime<Utc>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_status_names_are_the_wire_names() {
        let wire = |v: serde_json::Value| v.as_str().unwrap().to_owned();
        for s in [
            ChallengeStatus::Pending,
            ChallengeStatus::Accepted,
            ChallengeStatus::Declined,
            ChallengeStatus::Expired,
            ChallengeStatus::Withdrawn,
        ] {
            assert_eq!(s.as_str(), wire(serde_json::to_value(s).unwrap()));
        }
        for s in [
            MatchStatus::ReadyCheck,
            MatchStatus::Confirmed,
            MatchStatus::Settled,
            MatchStatus::Disputed,
            MatchStatus::Cancelled,
            MatchStatus::Expired,
        ] {
            assert_eq!(s.as_str(), wire(serde_json::to_value(s).unwrap()));
        }
    }
}
