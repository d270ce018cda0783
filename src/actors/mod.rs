//! The actors: one `Hub` per worker thread owning that worker's sessions, and one
//! `SessionActor` per SSE connection.

pub mod hub;
pub mod session;

pub use hub::{Delivery, Hub, HubSet, Registry, Target};
pub use session::{SessionActor, SessionLimiter};
