//! Domain types: validated ids and the event catalogue. No I/O.

pub mod event;
pub mod ids;

pub use event::{Broadcast, Discipline, Event, EventKind, Notification, PostLiked, UnreadSummary};
pub use ids::{Cursor, IdempotencyKey, PostId, RouteId, UserId};
