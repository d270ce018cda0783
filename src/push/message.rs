//! What a push says for each event kind: a short title and body in the climber's words, the
//! cursor the app resumes its stream from, and per-kind delivery options (urgency, time to live,
//! collapse key).
//!
//! A push is a tickle: the app opens its stream at `data.cursor` for the content, so the text
//! only has to be right at a glance. Provider limits (FCM's 4,096 bytes, Web Push's 3,993) are
//! the providers' to enforce; they cut the body first.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

use crate::domain::event::{CancelReason, Performance};
use crate::domain::{Discipline, Event, EventKind, Notification, UserId};

/// `data` key naming the event kind.
pub const DATA_KIND: &str = "kind";
/// `data` key holding the notification's id.
pub const DATA_NOTIFICATION_ID: &str = "notification_id";
/// `data` key holding the cursor the app resumes its stream from.
pub const DATA_CURSOR: &str = "cursor";

/// Time to live of a social push (likes, posts): a like seen tomorrow is still news.
pub const SOCIAL_TTL: Duration = Duration::from_secs(24 * 60 * 60);
/// Time to live of achievements, ranks and settled results.
pub const DEFAULT_TTL: Duration = Duration::from_secs(24 * 60 * 60);
/// Time to live of a match-state change (opponent ready, confirmed, cancelled, requeued): stale
/// within minutes, when the app's own stream will have told the story.
pub const MATCH_STATE_TTL: Duration = Duration::from_secs(5 * 60);
/// FCM refuses a longer TTL (four weeks); Web Push services cap theirs lower anyway.
pub const MAX_TTL: Duration = Duration::from_secs(28 * 24 * 60 * 60);
/// A push with less than this left to live is not worth sending.
pub const MIN_TTL: Duration = Duration::from_secs(1);
/// APNs' limit on `apns-collapse-id`; longer keys are hashed.
pub const MAX_COLLAPSE_ID_BYTES: usize = 64;
/// RFC 8030's limit on `Topic`: 32 characters of the URL-safe base64 alphabet.
pub const TOPIC_CHARS: usize = 32;

/// Kinds pushed to an offline climber unless they chose otherwise: matchmaking, likes,
/// achievements and rank changes. `unread` is a stream bookkeeping frame and `new_post` a
/// broadcast: neither is worth waking a phone for.
pub fn push_worthy_by_default(kind: EventKind) -> bool {
    match kind {
        EventKind::MatchRequested
        | EventKind::ChallengeDeclined
        | EventKind::ChallengeExpired
        | EventKind::MatchFound
        | EventKind::OpponentReady
        | EventKind::MatchConfirmed
        | EventKind::MatchCancelled
        | EventKind::Requeued
        | EventKind::MatchResult
        | EventKind::ResultReported
        | EventKind::MatchDisputed
        | EventKind::MatchExpired
        | EventKind::PostLiked
        | EventKind::RouteCompleted
        | EventKind::PersonalRecord
        | EventKind::RankChanged => true,
        EventKind::NewPost | EventKind::Unread => false,
    }
}

/// How urgently a provider should deliver: `High` wakes a dozing phone at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Urgency {
    High,
    Normal,
}

impl Urgency {
    /// Matchmaking runs on deadlines of seconds; everything else can wait for the next wake-up.
    pub fn of(kind: EventKind) -> Urgency {
        match kind {
            EventKind::MatchRequested
            | EventKind::ChallengeDeclined
            | EventKind::ChallengeExpired
            | EventKind::MatchFound
            | EventKind::OpponentReady
            | EventKind::MatchConfirmed
            | EventKind::MatchCancelled
            | EventKind::Requeued => Urgency::High,
            _ => Urgency::Normal,
        }
    }

    /// The RFC 8030 `Urgency` header value.
    pub fn web_push(self) -> &'static str {
        match self {
            Urgency::High => "high",
            Urgency::Normal => "normal",
        }
    }

    /// FCM's `android.priority`.
    pub fn android(self) -> &'static str {
        match self {
            Urgency::High => "HIGH",
            Urgency::Normal => "NORMAL",
        }
    }

    /// APNs' `apns-priority`: 10 delivers now, 5 when the device is awake anyway.
    pub fn apns(self) -> &'static str {
        match self {
            Urgency::High => "10",
            Urgency::Normal => "5",
        }
    }
}

/// One push, provider-neutral.
#[derive(Debug, Clone, PartialEq)]
pub struct PushMessage {
    pub kind: EventKind,
    pub title: String,
    pub body: String,
    /// String values only: FCM refuses anything else.
    pub data: BTreeMap<String, String>,
    pub urgency: Urgency,
    /// Absolute, so that a push retried later gets a shorter TTL rather than a fresh one.
    pub expires_at: DateTime<Utc>,
    /// Pushes with the same key replace each other on the device.
    pub collapse_key: Option<String>,
}

impl PushMessage {
    /// The push for `notification`, addressed to `recipient`, as of `now`.
    pub fn for_notification(
        notification: &Notification,
        recipient: &UserId,
        now: DateTime<Utc>,
    ) -> PushMessage {
        let event = &notification.event;
        let kind = event.kind();
        let (title, body) = words(event, recipient, now);
        let data = BTreeMap::from([
            (DATA_KIND.to_owned(), kind.as_str().to_owned()),
            (DATA_NOTIFICATION_ID.to_owned(), notification.id.to_string()),
            (DATA_CURSOR.to_owned(), notification.cursor.to_string()),
        ]);
        PushMessage {
            kind,
            title,
            body,
            data,
            urgency: Urgency::of(kind),
            expires_at: expiry(event, now),
            collapse_key: collapse_key(event),
        }
    }

    /// Time left to live at `now`, whole seconds, at most [`MAX_TTL`]; `None` once less than
    /// [`MIN_TTL`] is left.
    pub fn ttl(&self, now: DateTime<Utc>) -> Option<Duration> {
        let left = (self.expires_at - now).to_std().ok()?;
        let whole = Duration::from_secs(left.as_secs()).min(MAX_TTL);
        (whole >= MIN_TTL).then_some(whole)
    }

    /// The collapse key as APNs and Android take it: hashed when longer than
    /// [`MAX_COLLAPSE_ID_BYTES`].
    pub fn collapse_id(&self) -> Option<String> {
        self.collapse_key.as_deref().map(|key| {
            if key.len() <= MAX_COLLAPSE_ID_BYTES {
                key.to_owned()
            } else {
                hashed(key)
            }
        })
    }

    /// The Web Push `Topic`: always hashed, since keys hold characters the header may not.
    pub fn topic(&self) -> Option<String> {
        self.collapse_key.as_deref().map(hashed)
    }
}

/// [`TOPIC_CHARS`] URL-safe base64 characters: the first 24 bytes of SHA-256.
fn hashed(key: &str) -> String {
    let digest = Sha256::digest(key.as_bytes());
    URL_SAFE_NO_PAD.encode(&digest[..TOPIC_CHARS * 3 / 4])
}

fn expiry(event: &Event, now: DateTime<Utc>) -> DateTime<Utc> {
    let after = |ttl: Duration| now + chrono::Duration::from_std(ttl).unwrap_or_default();
    match event {
        // Worthless once the ready check or the challenge has run out.
        Event::MatchFound { ready_deadline, .. } => *ready_deadline,
        Event::MatchRequested { expires_at, .. } => *expires_at,
        Event::OpponentReady { .. }
        | Event::MatchConfirmed { .. }
        | Event::MatchCancelled { .. }
        | Event::Requeued { .. } => after(MATCH_STATE_TTL),
        Event::PostLiked(_) | Event::NewPost { .. } => after(SOCIAL_TTL),
        _ => after(DEFAULT_TTL),
    }
}

fn collapse_key(event: &Event) -> Option<String> {
    match event {
        Event::MatchRequested { challenge_id, .. }
        | Event::ChallengeDeclined { challenge_id, .. }
        | Event::ChallengeExpired { challenge_id } => Some(format!("challenge:{challenge_id}")),
        Event::MatchFound { match_id, .. }
        | Event::OpponentReady { match_id }
        | Event::MatchConfirmed { match_id }
        | Event::MatchCancelled { match_id, .. }
        | Event::MatchResult { match_id, .. }
        | Event::ResultReported { match_id, .. }
        | Event::MatchDisputed { match_id }
        | Event::MatchExpired { match_id } => Some(format!("match:{match_id}")),
        Event::Requeued { discipline, .. } => Some(format!("queue:{discipline}")),
        Event::PostLiked(like) => Some(format!("post_liked:{}", like.post_id)),
        Event::NewPost { post_id, .. } => Some(format!("post:{post_id}")),
        Event::PersonalRecord { discipline, .. } => Some(format!("record:{discipline}")),
        Event::RankChanged { discipline, .. } => Some(format!("rank:{discipline}")),
        Event::Unread(_) => Some("unread".to_owned()),
        Event::RouteCompleted { .. } => None,
    }
}

/// Title and body.
fn words(event: &Event, recipient: &UserId, now: DateTime<Utc>) -> (String, String) {
    let you_or = |user: &UserId| {
        if user == recipient {
            "you".to_owned()
        } else {
            user.to_string()
        }
    };
    match event {
        Event::MatchRequested {
            from,
            discipline,
            expires_at,
            ..
        } => (
            format!("{from} challenges you"),
            format!(
                "A {} match — answer within {}",
                discipline_words(*discipline),
                time_left(*expires_at, now)
            ),
        ),
        Event::ChallengeDeclined { by, .. } => (
            "Challenge declined".to_owned(),
            format!("{by} declined your challenge"),
        ),
        Event::ChallengeExpired { .. } => (
            "Challenge expired".to_owned(),
            "Your challenge was not answered in time".to_owned(),
        ),
        Event::MatchFound {
            opponent,
            ready_deadline,
            ..
        } => (
            "Match found".to_owned(),
            format!(
                "{opponent} is waiting — ready in {}",
                time_left(*ready_deadline, now)
            ),
        ),
        Event::OpponentReady { .. } => (
            "Your opponent is ready".to_owned(),
            "Confirm now to start the match".to_owned(),
        ),
        Event::MatchConfirmed { .. } => (
            "Match on".to_owned(),
            "You are both ready — go climb".to_owned(),
        ),
        Event::MatchCancelled { reason, .. } => (
            "Match cancelled".to_owned(),
            match reason {
                CancelReason::Cancelled => "You cancelled the match",
                CancelReason::OpponentCancelled => "Your opponent cancelled the match",
                CancelReason::ReadyTimeout => "You missed the ready check",
                CancelReason::OpponentReadyTimeout => "Your opponent missed the ready check",
            }
            .to_owned(),
        ),
        Event::Requeued { discipline, .. } => (
            "Back in the queue".to_owned(),
            format!(
                "Looking for a new {} opponent",
                discipline_words(*discipline)
            ),
        ),
        Event::MatchResult { winner, rating, .. } => (
            if winner == recipient {
                "You won".to_owned()
            } else {
                format!("{winner} won")
            },
            format!("Your rating is now {rating:.0}"),
        ),
        Event::ResultReported { by, winner, .. } => (
            format!("{by} reported a result"),
            format!(
                "They say {} won — report yours to settle it",
                you_or(winner)
            ),
        ),
        Event::MatchDisputed { .. } => (
            "Result disputed".to_owned(),
            "You named different winners; ratings stay as they were".to_owned(),
        ),
        Event::MatchExpired { .. } => (
            "Match expired".to_owned(),
            "No result in time; ratings stay as they were".to_owned(),
        ),
        Event::PostLiked(like) => ("New like".to_owned(), like.text.clone()),
        Event::NewPost { by, title, .. } => (format!("New post from {by}"), title.clone()),
        Event::RouteCompleted { grade, .. } => {
            ("Route completed".to_owned(), format!("You sent a {grade}"))
        }
        Event::PersonalRecord {
            discipline,
            grade,
            time_ms,
            previous,
        } => {
            let best = match (grade, time_ms) {
                (Some(grade), _) => grade.clone(),
                (None, Some(ms)) => seconds_words(*ms),
                (None, None) => "a new best".to_owned(),
            };
            let before = match previous {
                Some(Performance::Grade(grade)) => format!(" (was {grade})"),
                Some(Performance::TimeMs(ms)) => format!(" (was {})", seconds_words(*ms)),
                None => String::new(),
            };
            (
                "New personal record".to_owned(),
                format!(
                    "{}: {best}{before}",
                    capitalized(discipline_words(*discipline))
                ),
            )
        }
        Event::RankChanged {
            discipline,
            old_rank,
            new_rank,
            rating,
        } => (
            format!("#{new_rank} in {}", discipline_words(*discipline)),
            match old_rank {
                Some(old) if old > new_rank => format!("Up from #{old} — rating {rating:.0}"),
                Some(old) if old < new_rank => format!("Down from #{old} — rating {rating:.0}"),
                Some(_) => format!("Rating {rating:.0}"),
                None => format!("Your first ranking — rating {rating:.0}"),
            },
        ),
        Event::Unread(summary) => (
            "Belay".to_owned(),
            match summary.count {
                1 => "1 unread notification".to_owned(),
                n => format!("{n} unread notifications"),
            },
        ),
    }
}

fn discipline_words(discipline: Discipline) -> &'static str {
    match discipline {
        Discipline::Boulder => "bouldering",
        Discipline::Lead => "lead",
        Discipline::Speed => "speed",
    }
}

fn capitalized(word: &str) -> String {
    let mut chars = word.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// "30 s" under two minutes, "5 min" above; rounded up, so "ready in 0 s" means it is over.
fn time_left(deadline: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let millis = (deadline - now).num_milliseconds().max(0);
    let seconds = (millis + 999) / 1000;
    if seconds < 120 {
        format!("{seconds} s")
    } else {
        format!("{} min", (seconds + 59) / 60)
    }
}

fn seconds_words(ms: u64) -> String {
    format!("{}.{:02} s", ms / 1000, (ms % 1000) / 10)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::event::{PostLiked, UnreadSummary};
    use crate::domain::{Cursor, PostId};
    use uuid::Uuid;

    fn user(s: &str) -> UserId {
        UserId::parse(s).unwrap()
    }

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-20T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    fn secs(n: i64) -> chrono::Duration {
        chrono::Duration::seconds(n)
    }

    fn notification(event: Event) -> Notification {
        Notification {
            id: Uuid::from_u128(0x1234),
            cursor: Cursor(42),
            event,
            created_at: now(),
            updated_at: now(),
            read: false,
        }
    }

    fn push(event: Event) -> PushMessage {
        PushMessage::for_notification(&notification(event), &user("ana"), now())
    }

    fn match_found(ready_in: chrono::Duration) -> Event {
        Event::MatchFound {
            match_id: Uuid::from_u128(7),
            opponent: user("bob"),
            discipline: Discipline::Boulder,
            ready_deadline: now() + ready_in,
        }
    }

    #[test]
    fn match_found_names_the_opponent_and_the_time_left() {
        let message = push(match_found(secs(30)));
        assert_eq!(
            format!("{}: {}", message.title, message.body),
            "Match found: bob is waiting — ready in 30 s"
        );
        assert_eq!(message.urgency, Urgency::High);
        let message = push(match_found(chrono::Duration::milliseconds(29_001)));
        assert!(message.body.ends_with("ready in 30 s"), "{}", message.body);
        let message = push(match_found(secs(-3)));
        assert!(message.body.ends_with("ready in 0 s"), "{}", message.body);
        let message = push(match_found(secs(300)));
        assert!(message.body.ends_with("ready in 5 min"), "{}", message.body);
    }

    #[test]
    fn match_found_expires_at_its_ready_deadline() {
        let message = push(match_found(secs(30)));
        assert_eq!(message.expires_at, now() + secs(30));
        assert_eq!(message.ttl(now()), Some(Duration::from_secs(30)));
        assert_eq!(
            message.ttl(now() + chrono::Duration::milliseconds(10_500)),
            Some(Duration::from_secs(19))
        );
        assert_eq!(
            message.ttl(now() + chrono::Duration::milliseconds(29_500)),
            None
        );
        assert_eq!(message.ttl(now() + secs(31)), None);
    }

    #[test]
    fn data_carries_kind_notification_id_and_cursor_as_strings() {
        let message = push(match_found(secs(30)));
        let expected: BTreeMap<String, String> = [
            ("kind", "match_found"),
            ("notification_id", "00000000-0000-0000-0000-000000001234"),
            ("cursor", "42"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        assert_eq!(message.data, expected);
    }

    #[test]
    fn defaults_push_matchmaking_likes_achievements_and_ranks_but_not_unread_or_broadcasts() {
        for kind in EventKind::ALL {
            let expected = !matches!(kind, EventKind::Unread | EventKind::NewPost);
            assert_eq!(push_worthy_by_default(kind), expected, "{kind:?}");
        }
    }

    #[test]
    fn urgency_is_high_for_matchmaking_and_normal_for_the_rest() {
        assert_eq!(Urgency::of(EventKind::MatchFound), Urgency::High);
        assert_eq!(Urgency::of(EventKind::MatchRequested), Urgency::High);
        assert_eq!(Urgency::of(EventKind::PostLiked), Urgency::Normal);
        assert_eq!(Urgency::of(EventKind::RankChanged), Urgency::Normal);
        assert_eq!(
            (
                Urgency::High.android(),
                Urgency::High.apns(),
                Urgency::High.web_push()
            ),
            ("HIGH", "10", "high")
        );
    }

    #[test]
    fn likes_collapse_per_post_and_match_pushes_per_match() {
        let like = |by: &str| {
            push(Event::PostLiked(PostLiked::new(
                PostId::parse("p1").unwrap(),
                user(by),
            )))
        };
        assert_eq!(like("cy").collapse_key, like("dee").collapse_key);
        assert_eq!(like("cy").collapse_key.as_deref(), Some("post_liked:p1"));
        assert_eq!(like("cy").body, "cy liked your post");
        assert_eq!(like("cy").ttl(now()), Some(SOCIAL_TTL));

        let found = push(match_found(secs(30)));
        let ready = push(Event::OpponentReady {
            match_id: Uuid::from_u128(7),
        });
        assert_eq!(found.collapse_key, ready.collapse_key);
        assert_eq!(ready.ttl(now()), Some(MATCH_STATE_TTL));
    }

    #[test]
    fn topics_are_32_url_safe_base64_chars_and_stable() {
        let message = push(match_found(secs(30)));
        let topic = message.topic().unwrap();
        assert_eq!(topic.len(), TOPIC_CHARS);
        assert!(
            topic
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        );
        assert_eq!(push(match_found(secs(10))).topic(), Some(topic));
        let other = push(Event::OpponentReady {
            match_id: Uuid::from_u128(8),
        });
        assert_ne!(other.topic(), message.topic());
    }

    #[test]
    fn long_collapse_keys_are_hashed_for_apns() {
        let long_post = PostId::parse("p".repeat(64)).unwrap();
        let message = push(Event::PostLiked(PostLiked::new(long_post, user("cy"))));
        assert!(message.collapse_key.as_ref().unwrap().len() > MAX_COLLAPSE_ID_BYTES);
        assert_eq!(message.collapse_id().unwrap().len(), TOPIC_CHARS);
        let short = push(match_found(secs(30)));
        assert_eq!(short.collapse_id(), short.collapse_key);
    }

    #[test]
    fn every_kind_has_words_and_a_ttl() {
        let id = Uuid::from_u128(1);
        let events = vec![
            Event::MatchRequested {
                challenge_id: id,
                from: user("bob"),
                discipline: Discipline::Lead,
                expires_at: now() + secs(90),
            },
            Event::ChallengeDeclined {
                challenge_id: id,
                by: user("bob"),
            },
            Event::ChallengeExpired { challenge_id: id },
            match_found(secs(30)),
            Event::OpponentReady { match_id: id },
            Event::MatchConfirmed { match_id: id },
            Event::MatchCancelled {
                match_id: id,
                reason: CancelReason::OpponentReadyTimeout,
            },
            Event::Requeued {
                discipline: Discipline::Speed,
                queued_since: now(),
            },
            Event::MatchResult {
                match_id: id,
                winner: user("ana"),
                rating: 1523.4,
            },
            Event::ResultReported {
                match_id: id,
                by: user("bob"),
                winner: user("ana"),
            },
            Event::MatchDisputed { match_id: id },
            Event::MatchExpired { match_id: id },
            Event::PostLiked(PostLiked::new(PostId::parse("p1").unwrap(), user("cy"))),
            Event::NewPost {
                post_id: PostId::parse("p2").unwrap(),
                by: user("cy"),
                title: "Send train".to_owned(),
            },
            Event::RouteCompleted {
                route_id: crate::domain::RouteId::parse("r1").unwrap(),
                grade: "7a".to_owned(),
            },
            Event::PersonalRecord {
                discipline: Discipline::Speed,
                grade: None,
                time_ms: Some(7_120),
                previous: Some(Performance::TimeMs(7_480)),
            },
            Event::RankChanged {
                discipline: Discipline::Boulder,
                old_rank: Some(12),
                new_rank: 9,
                rating: 1610.0,
            },
            Event::Unread(UnreadSummary {
                count: 3,
                cursor: None,
                latest: None,
            }),
        ];
        let kinds: Vec<EventKind> = events.iter().map(Event::kind).collect();
        assert_eq!(kinds, EventKind::ALL.to_vec());
        for event in events {
            let message = push(event);
            assert!(!message.title.is_empty() && !message.body.is_empty());
            assert!(message.ttl(now()).is_some(), "{:?}", message.kind);
        }
    }

    #[test]
    fn texts_speak_to_the_recipient() {
        let result = push(Event::MatchResult {
            match_id: Uuid::nil(),
            winner: user("ana"),
            rating: 1523.4,
        });
        assert_eq!(
            (result.title.as_str(), result.body.as_str()),
            ("You won", "Your rating is now 1523")
        );
        let reported = push(Event::ResultReported {
            match_id: Uuid::nil(),
            by: user("bob"),
            winner: user("bob"),
        });
        assert_eq!(
            reported.body,
            "They say bob won — report yours to settle it"
        );
        let record = push(Event::PersonalRecord {
            discipline: Discipline::Speed,
            grade: None,
            time_ms: Some(7_120),
            previous: Some(Performance::TimeMs(7_480)),
        });
        assert_eq!(record.body, "Speed: 7.12 s (was 7.48 s)");
        let rank = push(Event::RankChanged {
            discipline: Discipline::Boulder,
            old_rank: Some(12),
            new_rank: 9,
            rating: 1610.0,
        });
        assert_eq!(
            (rank.title.as_str(), rank.body.as_str()),
            ("#9 in bouldering", "Up from #12 — rating 1610")
        );
        let challenge = push(Event::MatchRequested {
            challenge_id: Uuid::nil(),
            from: user("bob"),
            discipline: Discipline::Lead,
            expires_at: now() + secs(90),
        });
        assert_eq!(challenge.body, "A lead match — answer within 90 s");
        assert_eq!(challenge.ttl(now()), Some(Duration::from_secs(90)));
    }
}
