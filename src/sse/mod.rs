//! Server-Sent Events: frames encoded once and shared, the per-session outbox, and the response
//! body that writes it.

pub mod body;
pub mod frame;
pub mod outbox;

pub use body::SessionBody;
pub use frame::StaticFrames;
pub use outbox::{Offer, Outbox, Release};
