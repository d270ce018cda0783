//! The actors: one `Hub` per worker thread owning that worker's sessions, one `SessionActor`
//! per SSE connection, and one `MatchmakerActor` per node.

pub mod hub;
pub mod matchmaker;
pub mod session;

pub use hub::{Delivery, Hub, HubSet, Registry, Target};
pub use matchmaker::MatchmakerActor;
pub use session::{SessionActor, SessionLimiter};
