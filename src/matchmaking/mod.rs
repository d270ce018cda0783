//! Matchmaking without I/O: the pairing pool, the match lifecycle (ready check, cancel, timeout,
//! requeue, challenges, results) and rating maths. Time is passed in as milliseconds, so the
//! `MatchmakerActor`, the simulator and the property tests drive the same code.

pub mod engine;
pub mod policy;
pub mod pool;
pub mod rating;

/// Milliseconds on the caller's clock (Unix time in the server, simulated time elsewhere).
pub type Millis = i64;
