//! The servers the session scenarios drive, behind one shape: Belay, and Nchan (nginx's
//! pub/sub module) for comparison. Each knows its subscribe request, when a new session counts
//! as open, and how to publish a broadcast.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use clap::ValueEnum;
use reqwest::{Client, Url};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::common::{self, Target};
use crate::lean::{self, StreamRequest};

/// Prefix of the id that broadcast payloads carry: `lt-b<seq>-<sent µs since the epoch>`.
const MARKER: &[u8] = b"lt-b";

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServerKind {
    /// Belay: `GET /v1/events` with a dev token per user, `POST /v1/broadcast` with the API key.
    Belay,
    /// Nchan: EventSource subscriber at `/sub/<channel>`, publisher at `/pub/<channel>`.
    Nchan,
}

/// Where and how to reach the server; sent to every worker process.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServerSpec {
    pub kind: ServerKind,
    /// Base URL, checked to be loopback.
    pub base: String,
    pub dest: SocketAddr,
    /// Path prefix of the base URL (empty or `/prefix`).
    pub prefix: String,
    /// Belay's host API key (empty for Nchan).
    pub api_key: String,
    /// Nchan channel every session subscribes to.
    pub channel: String,
}

impl ServerSpec {
    pub async fn resolve(
        kind: ServerKind,
        target: &Target,
        api: &Client,
        api_key: Option<&str>,
        channel: &str,
    ) -> Result<Self> {
        let url = Url::parse(target.base()).context("parsing --url")?;
        let host = url.host_str().unwrap_or_default();
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let ip: IpAddr = if bare.eq_ignore_ascii_case("localhost") {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else {
            bare.parse()
                .with_context(|| format!("host {host:?} is not an address"))?
        };
        let dest = SocketAddr::new(ip, url.port_or_known_default().unwrap_or(80));
        let api_key = match kind {
            ServerKind::Belay => common::resolve_api_key(api, target, api_key).await?,
            ServerKind::Nchan => String::new(),
        };
        if !channel
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            bail!("--channel must be letters, digits and `_`");
        }
        Ok(Self {
            kind,
            base: target.base().to_owned(),
            dest,
            prefix: url.path().trim_end_matches('/').to_owned(),
            api_key,
            channel: channel.to_owned(),
        })
    }

    /// Belay streams need a token per user; Nchan subscribers are anonymous.
    pub fn needs_tokens(&self) -> bool {
        self.kind == ServerKind::Belay
    }

    /// The subscribe request of one session.
    pub fn stream_request(&self, token: Option<&str>, source: Option<IpAddr>) -> StreamRequest {
        let (path, headers) = match self.kind {
            ServerKind::Belay => (
                format!("{}/v1/events", self.prefix),
                token
                    .map(|t| vec![format!("Authorization: Bearer {t}")])
                    .unwrap_or_default(),
            ),
            ServerKind::Nchan => (format!("{}/sub/{}", self.prefix, self.channel), Vec::new()),
        };
        StreamRequest {
            dest: self.dest,
            source,
            path,
            headers,
        }
    }

    /// Whether a session is open only once a first frame arrives: Belay registers the session
    /// before it sends `unread`; Nchan has subscribed once it answers 200.
    pub fn waits_for_open_frame(&self) -> bool {
        self.kind == ServerKind::Belay
    }

    pub fn is_open_frame(&self, frame: &[u8]) -> bool {
        lean::field(frame, b"event") == Some(&b"unread"[..])
    }

    /// Publishes broadcast `seq`, stamped with the current time just before the request leaves.
    /// Returns the stamp (µs since the epoch).
    pub async fn publish(&self, api: &Client, seq: u64) -> Result<u64> {
        let sent_us = now_us();
        let data = json!({
            "post_id": format!("lt-b{seq}-{sent_us}"),
            "by": "loadgen",
            "title": "Load test broadcast",
        });
        let request = match self.kind {
            ServerKind::Belay => api
                .post(format!("{}/v1/broadcast", self.base))
                .header("X-Api-Key", &self.api_key)
                .json(&json!({ "kind": "new_post", "data": data })),
            ServerKind::Nchan => api
                .post(format!("{}/pub/{}", self.base, self.channel))
                .json(&json!({ "kind": "new_post", "data": data })),
        };
        let resp = request.send().await.context("publishing")?;
        if !resp.status().is_success() {
            bail!("publish: {}", common::describe_error(resp).await);
        }
        Ok(sent_us)
    }
}

/// Microseconds since the Unix epoch: one clock for the publisher and every worker process.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or_default()
}

/// `(seq, sent µs)` of a broadcast frame, or None for any other frame.
pub fn parse_marker(frame: &[u8]) -> Option<(u64, u64)> {
    let at = memchr::memmem::find(frame, MARKER)? + MARKER.len();
    let rest = &frame[at..];
    let (seq, rest) = leading_number(rest)?;
    let (sent, _) = leading_number(rest.strip_prefix(b"-")?)?;
    Some((seq, sent))
}

fn leading_number(bytes: &[u8]) -> Option<(u64, &[u8])> {
    let digits = bytes.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || digits > 19 {
        return None;
    }
    let mut value = 0u64;
    for &b in &bytes[..digits] {
        value = value * 10 + u64::from(b - b'0');
    }
    Some((value, &bytes[digits..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_marker_of_either_servers_frame() {
        let belay = br#"event: new_post
data: {"kind":"new_post","data":{"post_id":"lt-b12-1733000000123456","by":"loadgen"}}"#;
        assert_eq!(parse_marker(belay), Some((12, 1_733_000_000_123_456)));
        let nchan = br#"id: 1733:0
data: {"data":{"post_id":"lt-b0-5"},"kind":"new_post"}"#;
        assert_eq!(parse_marker(nchan), Some((0, 5)));
        assert_eq!(parse_marker(b": heartbeat"), None);
        assert_eq!(parse_marker(b"data: lt-b-5"), None);
    }
}
