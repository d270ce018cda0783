//! End-to-end tests of the HTTP and SSE surface against the real server.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod auth;
mod bad_input;
mod connections;
mod events;
mod helpers;
mod host;
mod matchmaking;
mod notifications;
mod openapi;
mod push;
#[path = "../support/mod.rs"]
mod support;
