//! SSE frames, encoded once per event and then shared: every session that receives an event gets
//! a clone of the same bytes. Event frames are written here directly, in the layout of
//! actix-web-lab's `sse` writer (a test holds them to it); the static frames come from that
//! writer.

use std::io::Write as _;
use std::time::Duration;

use actix_web::body::{self, MessageBody};
use actix_web_lab::sse::{self, Sse};
use bytes::Bytes;
use futures_util::FutureExt as _;
use serde::Serialize;

use crate::domain::preferences::LiveMask;
use crate::domain::{Broadcast, Cursor, EventKind, Notification, UnreadSummary};

/// Runs actix-web-lab's encoder over a finished body; it is ready at once (no I/O, no timers).
fn collect<B: MessageBody>(body: B) -> anyhow::Result<Bytes> {
    match body::to_bytes(body).now_or_never() {
        Some(Ok(bytes)) => Ok(bytes),
        Some(Err(e)) => Err(anyhow::anyhow!("encoding an SSE frame: {}", e.into())),
        None => Err(anyhow::anyhow!("SSE encoder was not ready")),
    }
}

fn encode(event: sse::Event) -> anyhow::Result<Bytes> {
    collect(Sse::from_infallible_stream(futures_util::stream::iter([
        event,
    ])))
}

/// `id:` when given, `event:`, and the payload as one `data:` line: compact JSON holds no line
/// break (serde_json escapes them inside strings), so it never needs splitting.
fn data_frame<T: Serialize>(id: Option<i64>, kind: &str, payload: &T) -> anyhow::Result<Bytes> {
    let mut buf = Vec::with_capacity(384);
    if let Some(id) = id {
        writeln!(buf, "id: {id}")?;
    }
    buf.extend_from_slice(b"event: ");
    buf.extend_from_slice(kind.as_bytes());
    buf.extend_from_slice(b"\ndata: ");
    serde_json::to_writer(&mut buf, payload)?;
    buf.extend_from_slice(b"\n\n");
    Ok(Bytes::from(buf))
}

/// A user event: `id: <cursor>`, `event: <kind>`, `data: <notification JSON>`.
pub fn user_event(n: &Notification) -> anyhow::Result<Bytes> {
    data_frame(Some(n.cursor.0), n.event.kind().as_str(), n)
}

/// What a session sends for a stored event of a kind its climber muted on the live stream:
/// `id:` alone. A browser's `EventSource` moves its resume cursor to it and fires no event, so a
/// reconnect does not bring the muted event back.
pub fn cursor_only(cursor: Cursor) -> Bytes {
    Bytes::from(format!("id: {}\n\n", cursor.0))
}

/// A user event's frame as its session sends it: whole, or [`cursor_only`] when muted.
pub fn user_event_for(n: &Notification, muted: LiveMask) -> anyhow::Result<Bytes> {
    if muted.mutes(n.event.kind()) {
        return Ok(cursor_only(n.cursor));
    }
    user_event(n)
}

/// The kind named by a frame's `event:` line (within its first two lines).
pub fn kind_of(frame: &[u8]) -> Option<EventKind> {
    frame
        .split(|&b| b == b'\n')
        .take(2)
        .find_map(|line| line.strip_prefix(b"event: "))
        .and_then(|kind| std::str::from_utf8(kind).ok())
        .and_then(EventKind::parse)
}

/// A broadcast: no `id`, so it leaves the client's resume cursor alone.
pub fn broadcast(b: &Broadcast) -> anyhow::Result<Bytes> {
    data_frame(None, b.event.kind().as_str(), b)
}

/// The `unread` summary: no `id`, it is a snapshot rather than a stored event.
pub fn unread(summary: &UnreadSummary) -> anyhow::Result<Bytes> {
    data_frame(None, EventKind::Unread.as_str(), summary)
}

/// The opening `unread` summary of a stream that starts at `head` with nothing to replay: its
/// `id` is the client's resume point, so a stream that drops before its first stored event
/// still resumes from where it began. Never for a stream that replays after it: the `id` would
/// move the resume point past events not sent yet.
pub fn unread_at_head(summary: &UnreadSummary, head: Cursor) -> anyhow::Result<Bytes> {
    data_frame(Some(head.0), EventKind::Unread.as_str(), summary)
}

/// Frames that are the same for every session, encoded at startup.
#[derive(Clone)]
pub struct StaticFrames {
    /// `retry:` hint, the first frame of every stream.
    pub retry: Bytes,
    /// Comment frame sent on the shared heartbeat tick.
    pub heartbeat: Bytes,
}

impl StaticFrames {
    pub fn new(retry: Duration) -> anyhow::Result<Self> {
        let empty = futures_util::stream::empty::<sse::Event>();
        Ok(StaticFrames {
            retry: collect(Sse::from_infallible_stream(empty).with_retry_duration(retry))?,
            heartbeat: encode(sse::Event::Comment("heartbeat".into()))?,
        })
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use uuid::Uuid;

    use super::*;
    use crate::domain::{Event, PostId, PostLiked, UserId};

    fn like_at(cursor: i64) -> Notification {
        Notification {
            id: Uuid::now_v7(),
            cursor: Cursor(cursor),
            event: Event::PostLiked(PostLiked::new(
                PostId::parse("p1").unwrap(),
                UserId::parse("ana").unwrap(),
            )),
            created_at: Utc::now(),
            updated_at: Utc::now(),
            read: false,
        }
    }

    #[test]
    fn user_frames_carry_cursor_kind_and_json() {
        let n = like_at(42);
        let frame = String::from_utf8(user_event(&n).unwrap().to_vec()).unwrap();
        let lines: Vec<&str> = frame.split('\n').collect();
        assert!(lines.contains(&"id: 42"), "{frame}");
        assert!(lines.contains(&"event: post_liked"), "{frame}");
        let data = lines.iter().find_map(|l| l.strip_prefix("data: ")).unwrap();
        let parsed: Notification = serde_json::from_str(data).unwrap();
        assert_eq!(parsed, n);
        assert!(frame.ends_with("\n\n"));
    }

    /// The frames written here are byte for byte what actix-web-lab's writer makes of the same
    /// event, including text with line breaks.
    #[test]
    fn frames_match_the_sse_writer() {
        let reference = |id: Option<i64>, kind: &str, json: String| {
            let mut data = sse::Data::new(json).event(kind.to_owned());
            if let Some(id) = id {
                data = data.id(id.to_string());
            }
            encode(sse::Event::Data(data)).unwrap()
        };
        let n = like_at(7);
        assert_eq!(
            user_event(&n).unwrap(),
            reference(Some(7), "post_liked", serde_json::to_string(&n).unwrap())
        );
        let b = Broadcast {
            event: Event::NewPost {
                post_id: PostId::parse("p2").unwrap(),
                by: UserId::parse("bob").unwrap(),
                title: "two\nlines\r\nand \u{2028} more".into(),
            },
            sent_at: Utc::now(),
        };
        let frame = broadcast(&b).unwrap();
        assert_eq!(
            frame,
            reference(None, "new_post", serde_json::to_string(&b).unwrap())
        );
        assert_eq!(
            frame.iter().filter(|&&c| c == b'\n').count(),
            3,
            "one data line"
        );
        let summary = UnreadSummary {
            count: 1,
            cursor: Some(Cursor(7)),
            latest: Some(vec![n]),
        };
        assert_eq!(
            unread(&summary).unwrap(),
            reference(None, "unread", serde_json::to_string(&summary).unwrap())
        );
    }

    #[test]
    fn static_frames_are_retry_and_comment() {
        let f = StaticFrames::new(Duration::from_millis(2500)).unwrap();
        assert_eq!(&f.retry[..], b"retry: 2500\n\n");
        assert!(f.heartbeat.starts_with(b": "));
        assert!(f.heartbeat.ends_with(b"\n\n"));
    }

    #[test]
    fn unread_frames_have_no_id() {
        let frame = unread(&UnreadSummary {
            count: 3,
            cursor: None,
            latest: None,
        })
        .unwrap();
        let text = String::from_utf8(frame.to_vec()).unwrap();
        assert!(!text.contains("id:"), "{text}");
        assert!(text.contains("event: unread\n"), "{text}");
        assert!(text.contains(r#"data: {"count":3}"#), "{text}");
    }

    #[test]
    fn an_unread_frame_at_the_head_carries_the_head_as_its_id() {
        let summary = UnreadSummary {
            count: 0,
            cursor: Some(Cursor(7)),
            latest: None,
        };
        let frame =
            String::from_utf8(unread_at_head(&summary, Cursor(7)).unwrap().to_vec()).unwrap();
        assert_eq!(
            frame,
            "id: 7\nevent: unread\ndata: {\"count\":0,\"cursor\":7}\n\n"
        );
    }
}
