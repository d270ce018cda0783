//! What crosses Redis between nodes: a one-line text header (sender, kind, and for a user's
//! stored event its user, cursor and notification id), then the SSE frame bytes as encoded once
//! by the sending node. Ids never hold spaces or line breaks (`domain::ids`), so the header
//! needs no escaping and the frame is not copied into JSON. Several messages for one node travel
//! as one batch ([`encode_batch`]).

use bytes::Bytes;
use uuid::Uuid;

use crate::domain::{Cursor, UserId};

/// Marks the wire format, so a future change can be told apart.
const MAGIC: &str = "BLY1";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A stored event: the receiving outbox orders it by cursor and fills gaps from the store.
    Event {
        user: UserId,
        cursor: Cursor,
        id: Uuid,
    },
    /// A user's new unread count (no cursor).
    Unread { user: UserId },
    /// For every session.
    Broadcast,
    /// A node's own probe, back on its own channel.
    Probe { seq: u64 },
    /// The sender could not publish everything it owed: every node catches all sessions up.
    Resync,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub node: String,
    pub kind: Kind,
    pub frame: Bytes,
}

impl Message {
    /// The user whose sessions receive it, for routing through presence.
    pub fn user(&self) -> Option<&UserId> {
        match &self.kind {
            Kind::Event { user, .. } | Kind::Unread { user } => Some(user),
            _ => None,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let header = match &self.kind {
            Kind::Event { user, cursor, id } => format!("E {user} {} {id}", cursor.0),
            Kind::Unread { user } => format!("U {user}"),
            Kind::Broadcast => "B".to_owned(),
            Kind::Probe { seq } => format!("P {seq}"),
            Kind::Resync => "R".to_owned(),
        };
        let mut out =
            Vec::with_capacity(MAGIC.len() + self.node.len() + header.len() + 3 + self.frame.len());
        out.extend_from_slice(format!("{MAGIC} {} {header}\n", self.node).as_bytes());
        out.extend_from_slice(&self.frame);
        out
    }

    /// `None` for anything not in this format (another program on the channel).
    pub fn decode(raw: &[u8]) -> Option<Message> {
        let end = raw.iter().position(|&b| b == b'\n')?;
        let header = std::str::from_utf8(&raw[..end]).ok()?;
        let mut parts = header.split(' ');
        if parts.next()? != MAGIC {
            return None;
        }
        let node = parts.next().filter(|n| !n.is_empty())?.to_owned();
        let user = |p: Option<&str>| p.and_then(|u| UserId::parse(u).ok());
        let kind = match parts.next()? {
            "E" => Kind::Event {
                user: user(parts.next())?,
                // Stored events have cursors from 1 on.
                cursor: Cursor(parts.next()?.parse().ok().filter(|&c: &i64| c > 0)?),
                id: parts.next()?.parse().ok()?,
            },
            "U" => Kind::Unread {
                user: user(parts.next())?,
            },
            "B" => Kind::Broadcast,
            "P" => Kind::Probe {
                seq: parts.next()?.parse().ok()?,
            },
            "R" => Kind::Resync,
            _ => return None,
        };
        if parts.next().is_some() {
            return None;
        }
        Some(Message {
            node,
            kind,
            frame: Bytes::copy_from_slice(&raw[end + 1..]),
        })
    }
}

/// Whether `raw` claims to be a Belay message (its magic), readable or not.
pub fn is_ours(raw: &[u8]) -> bool {
    raw.strip_prefix(MAGIC.as_bytes())
        .is_some_and(|rest| rest.first() == Some(&b' '))
}

/// Most messages one batch may announce (a bridge publishes at most 256 at a time).
const MAX_BATCH: usize = 4096;

/// Several messages for one node in one publish: a header line `BLY1 <node> M <count>`, then
/// each message as its length in decimal, a line break, and its bytes (as [`Message::encode`]
/// made them). The receiving node handles them in order, as if published one by one.
pub fn encode_batch(node: &str, messages: &[&[u8]]) -> Vec<u8> {
    let size: usize = messages.iter().map(|m| m.len() + 8).sum();
    let mut out = Vec::with_capacity(MAGIC.len() + node.len() + 16 + size);
    out.extend_from_slice(format!("{MAGIC} {node} M {}\n", messages.len()).as_bytes());
    for m in messages {
        out.extend_from_slice(format!("{}\n", m.len()).as_bytes());
        out.extend_from_slice(m);
    }
    out
}

/// The messages of one publish: a message alone, or a batch ([`encode_batch`]). `None` for
/// anything not in this format, a batch with one bad message included (it is all or nothing:
/// a gap it would leave is filled from the store anyway).
pub fn decode_any(raw: &[u8]) -> Option<Vec<Message>> {
    let end = raw.iter().position(|&b| b == b'\n')?;
    let header = std::str::from_utf8(&raw[..end]).ok()?;
    let mut parts = header.split(' ');
    if parts.next()? != MAGIC {
        return None;
    }
    parts.next().filter(|n| !n.is_empty())?;
    if parts.next()? != "M" {
        return Message::decode(raw).map(|m| vec![m]);
    }
    let count: usize = parts.next()?.parse().ok().filter(|&n| n <= MAX_BATCH)?;
    if parts.next().is_some() {
        return None;
    }
    let mut rest = &raw[end + 1..];
    let mut messages = Vec::with_capacity(count);
    for _ in 0..count {
        let line = rest.iter().position(|&b| b == b'\n')?;
        let len: usize = std::str::from_utf8(&rest[..line]).ok()?.parse().ok()?;
        let end = line.checked_add(1)?.checked_add(len)?;
        let body = rest.get(line + 1..end)?;
        // A batch holds single messages only (`decode` knows no `M`).
        messages.push(Message::decode(body)?);
        rest = &rest[end..];
    }
    rest.is_empty().then_some(messages)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_survives_the_wire_and_junk_is_refused() {
        let ana = UserId::parse("ana@x.io").unwrap();
        let frame = Bytes::from_static(b"id: 7\nevent: post_liked\ndata: {\"a\":1}\n\n");
        for kind in [
            Kind::Event {
                user: ana.clone(),
                cursor: Cursor(7),
                id: Uuid::now_v7(),
            },
            Kind::Unread { user: ana },
            Kind::Broadcast,
            Kind::Probe { seq: 42 },
            Kind::Resync,
        ] {
            let m = Message {
                node: "n-1".into(),
                kind,
                frame: frame.clone(),
            };
            assert_eq!(Message::decode(&m.encode()), Some(m));
        }
        for junk in [
            &b""[..],
            b"hello",
            b"BLY1 n X\n",
            b"BLY1 n E ana x y\n",
            b"BLY2 n B\n",
            b"BLY1  B\n",
            b"BLY1 n E ana -7 0195d1a0-0000-7000-8000-000000000000\n",
            b"BLY1 n E ana 0 0195d1a0-0000-7000-8000-000000000000\n",
        ] {
            assert_eq!(Message::decode(junk), None);
        }
        for theirs in [&b""[..], b"hello", b"BLY2 n B\n", b"BLY1", b"BLY1x n B\n"] {
            assert!(!is_ours(theirs), "{:?}", String::from_utf8_lossy(theirs));
        }
        assert!(is_ours(b"BLY1 n X\n"));
    }

    #[test]
    fn a_batch_carries_its_messages_in_order_and_a_bad_one_spoils_it() {
        let frame = Bytes::from_static(b"id: 7\nevent: post_liked\ndata: {\"a\":1}\n\n");
        let messages: Vec<Message> = (1..=3)
            .map(|c| Message {
                node: "n-1".into(),
                kind: Kind::Event {
                    user: UserId::parse(format!("u{c}")).unwrap(),
                    cursor: Cursor(c),
                    id: Uuid::now_v7(),
                },
                frame: frame.clone(),
            })
            .collect();
        let encoded: Vec<Vec<u8>> = messages.iter().map(Message::encode).collect();
        let slices: Vec<&[u8]> = encoded.iter().map(Vec::as_slice).collect();
        let batch = encode_batch("n-1", &slices);
        assert_eq!(decode_any(&batch), Some(messages.clone()));
        assert_eq!(decode_any(&encoded[0]), Some(vec![messages[0].clone()]));
        assert_eq!(decode_any(&encode_batch("n-1", &[])), Some(Vec::new()));

        let cut = &batch[..batch.len() - 1];
        let mut longer = batch.clone();
        longer.extend_from_slice(b"x");
        let mut bad = slices.clone();
        bad[1] = b"BLY1 n-1 X\n";
        let nested = encode_batch("n-1", &[&batch]);
        for junk in [
            cut.to_vec(),
            longer,
            encode_batch("n-1", &bad),
            nested,
            b"BLY1 n-1 M 2\n".to_vec(),
            b"BLY1 n-1 M 99999\n".to_vec(),
            b"BLY1 n-1 M x\n".to_vec(),
            b"BLY1 n-1 M 1 2\n1\nx".to_vec(),
            format!("BLY1 n-1 M 1\n{}\nx", usize::MAX).into_bytes(),
        ] {
            assert_eq!(
                decode_any(&junk),
                None,
                "{:?}",
                String::from_utf8_lossy(&junk)
            );
            assert!(is_ours(&junk), "{:?}", String::from_utf8_lossy(&junk));
        }
    }
}
