//! What the engine hands to the store: events for users, and matchmaking changes that commit
//! with the events they cause. Plain data, so that the pure matchmaking core can produce them
//! without depending on the storage module.

use super::{AscentOutcome, Event, IdempotencyKey, Match, NewAscent, RankChange, Rating, UserId};
use super::{Challenge, QueuedTicket};

/// An event the engine accepted for one user.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub user: UserId,
    pub event: Event,
    pub idempotency_key: Option<IdempotencyKey>,
}

/// A change to matchmaking state, written in the same transaction as the events it causes:
/// either both are committed or neither is.
#[derive(Debug, Clone)]
pub enum Change {
    /// Remembers that a climber exists (they signed in), so others can challenge them.
    SeeUser(UserId),
    /// Inserts or replaces a match.
    SaveMatch(Match),
    /// Inserts or replaces a challenge.
    SaveChallenge(Challenge),
    /// Records a climber's place in a queue (joined or requeued).
    SaveTicket(QueuedTicket),
    /// Forgets a climber's place in the queue (left or paired); nothing if there is none.
    DropTicket(UserId),
    /// Saves a match that has just been settled (status `Settled`, `winner` set), updates both
    /// players' ratings and emits `match_result` to both and `rank_changed` to every climber
    /// whose rank moved.
    Settle(Match),
    /// Records an ascent and emits `route_completed` (first send of the route) and
    /// `personal_record` (new hardest grade or fastest time).
    Ascent(NewAscent),
    /// Cluster mode: the matchmaker lease's fencing number, and the id of the stream command
    /// this work applies (`None`: a timer or a restore). The whole transaction is refused if a
    /// larger number has been recorded: a deposed leader can never write after its successor
    /// started. Otherwise the number is recorded, and the command id when there is one, so a new
    /// leader continues the stream after the last command applied.
    Fence { token: i64, command: Option<String> },
}

/// What one [`Change`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum ChangeOutcome {
    Done,
    Settled(Settlement),
    Ascent(AscentOutcome),
}

/// Ratings before and after a settled match, and the rank moves it caused.
#[derive(Debug, Clone, PartialEq)]
pub struct Settlement {
    /// `(player, before, after)` for both players, in the match's player order.
    pub ratings: Vec<(UserId, Rating, Rating)>,
    pub rank_changes: Vec<RankChange>,
}
