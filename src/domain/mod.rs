//! Domain types: validated ids and the event catalogue. No I/O.

pub mod change;
pub mod event;
pub mod grade;
pub mod ids;
pub mod play;
pub mod preferences;

pub use change::{Change, ChangeOutcome, NewEvent, Settlement};
pub use event::{Broadcast, Discipline, Event, EventKind, Notification, PostLiked, UnreadSummary};
pub use grade::{Grade, GradeScale, validate_time_ms};
pub use ids::{Cursor, IdempotencyKey, PostId, RouteId, Scope, UserId};
pub use play::{
    AscentOutcome, AscentResult, Challenge, ChallengeStatus, LeaderboardEntry, Match, MatchOrigin,
    MatchStatus, NewAscent, Player, QueuedTicket, RankChange, Rating,
};
