//! Push delivery to climbers with no live stream: what a push says ([`message`]).

pub mod message;

pub use message::{PushMessage, Urgency, push_worthy_by_default};
