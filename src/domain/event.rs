//! The event catalogue: one typed enum that is the wire format for SSE, the store and (later)
//! Redis and push. `kind` names the variant, `data` carries its fields.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::ids::{Cursor, PostId, RouteId, UserId};

/// Longest accepted post title, in characters.
pub const MAX_TITLE_CHARS: usize = 200;
/// Longest accepted grade string, in characters.
pub const MAX_GRADE_CHARS: usize = 8;
/// How many recent likers a collapsed `post_liked` notification remembers by name.
pub const MAX_LIKERS_KEPT: usize = 10;

/// Climbing disciplines, each with its own queue and leaderboard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Discipline {
    Boulder,
    Lead,
    Speed,
}

impl Discipline {
    pub const ALL: [Discipline; 3] = [Discipline::Boulder, Discipline::Lead, Discipline::Speed];

    pub fn as_str(self) -> &'static str {
        match self {
            Discipline::Boulder => "boulder",
            Discipline::Lead => "lead",
            Discipline::Speed => "speed",
        }
    }

    pub fn parse(raw: &str) -> Result<Discipline, String> {
        Discipline::ALL
            .into_iter()
            .find(|d| d.as_str() == raw)
            .ok_or_else(|| {
                format!(
                    "unknown discipline {:?}: expected boulder, lead or speed",
                    super::ids::truncate(raw, 32)
                )
            })
    }
}

impl std::fmt::Display for Discipline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a match ended before it was confirmed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CancelReason {
    /// The receiver cancelled it themself.
    Cancelled,
    OpponentCancelled,
    /// The receiver did not confirm before the ready deadline.
    ReadyTimeout,
    OpponentReadyTimeout,
}

/// A best performance: a grade (boulder, lead) or a time (speed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum Performance {
    Grade(String),
    TimeMs(u64),
}

/// Every event Belay sends. Serialized as `{"kind": "...", "data": {...}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "kind", content = "data", rename_all = "snake_case")]
pub enum Event {
    // matching
    MatchRequested {
        challenge_id: Uuid,
        from: UserId,
        discipline: Discipline,
        expires_at: DateTime<Utc>,
    },
    ChallengeDeclined {
        challenge_id: Uuid,
        by: UserId,
    },
    ChallengeExpired {
        challenge_id: Uuid,
    },
    MatchFound {
        match_id: Uuid,
        opponent: UserId,
        discipline: Discipline,
        ready_deadline: DateTime<Utc>,
    },
    OpponentReady {
        match_id: Uuid,
    },
    MatchConfirmed {
        match_id: Uuid,
    },
    MatchCancelled {
        match_id: Uuid,
        reason: CancelReason,
    },
    Requeued {
        discipline: Discipline,
        queued_since: DateTime<Utc>,
    },
    MatchResult {
        match_id: Uuid,
        winner: UserId,
        rating: f64,
    },
    /// The opponent reported a result; the receiver's own report settles or disputes it.
    ResultReported {
        match_id: Uuid,
        by: UserId,
        winner: UserId,
    },
    /// The two reports named different winners: ratings stay as they were.
    MatchDisputed {
        match_id: Uuid,
    },
    /// The result deadline passed without both reports: ratings stay as they were.
    MatchExpired {
        match_id: Uuid,
    },
    // social
    PostLiked(PostLiked),
    NewPost {
        post_id: PostId,
        by: UserId,
        title: String,
    },
    // achievement
    RouteCompleted {
        route_id: RouteId,
        grade: String,
    },
    PersonalRecord {
        discipline: Discipline,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[schema(nullable = false)]
        grade: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[schema(nullable = false)]
        time_ms: Option<u64>,
        // Always sent, null before the first record.
        #[schema(required = true)]
        previous: Option<Performance>,
    },
    // ranking
    RankChanged {
        discipline: Discipline,
        // Always sent, null when the user was not ranked before.
        #[schema(required = true)]
        old_rank: Option<u32>,
        new_rank: u32,
        rating: f64,
    },
    // system
    Unread(UnreadSummary),
}

/// `post_liked`: collapses per post while unread ("ana and 3 others liked your post").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PostLiked {
    pub post_id: PostId,
    /// The latest liker.
    pub by: UserId,
    // Serde's defaults below only apply when reading; these fields are always sent.
    /// Most recent distinct likers first, at most [`MAX_LIKERS_KEPT`].
    #[serde(default)]
    #[schema(required = true)]
    pub likers: Vec<UserId>,
    /// Distinct likers since the notification was created.
    #[serde(default = "one")]
    #[schema(required = true)]
    pub count: u32,
    /// What to show, e.g. "cy and 1 other liked your post".
    #[serde(default)]
    #[schema(required = true)]
    pub text: String,
}

fn one() -> u32 {
    1
}

impl PostLiked {
    /// A first like, as the host app reports it.
    pub fn new(post_id: PostId, by: UserId) -> Self {
        let mut like = PostLiked {
            post_id,
            likers: vec![by.clone()],
            by,
            count: 1,
            text: String::new(),
        };
        like.text = like.describe();
        like
    }

    /// Folds this like into the unread notification `previous` for the same post.
    /// A liker already counted moves to the front without being counted twice.
    pub fn collapse_onto(self, previous: PostLiked) -> PostLiked {
        let mut likers = previous.likers;
        let seen = likers.iter().position(|u| *u == self.by);
        let count = match seen {
            Some(i) => {
                likers.remove(i);
                previous.count
            }
            None => previous.count.saturating_add(1),
        };
        likers.insert(0, self.by.clone());
        likers.truncate(MAX_LIKERS_KEPT);
        let mut merged = PostLiked {
            post_id: previous.post_id,
            by: self.by,
            likers,
            count,
            text: String::new(),
        };
        merged.text = merged.describe();
        merged
    }

    fn describe(&self) -> String {
        match self.count {
            0 | 1 => format!("{} liked your post", self.by),
            2 => format!("{} and 1 other liked your post", self.by),
            n => format!("{} and {} others liked your post", self.by, n - 1),
        }
    }
}

/// `unread`: sent first on every connect, and again when the count changes by a read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct UnreadSummary {
    pub count: u64,
    /// The user's newest cursor when `count` was taken (on connect and after a read). A stored
    /// event with a larger cursor is not in `count`; one at or below it is, if it is unread.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<i64>, nullable = false)]
    pub cursor: Option<Cursor>,
    /// Newest unread notifications, on connect only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    // A notification can hold an `unread` event: collecting schemas must stop here.
    #[schema(no_recursion, nullable = false)]
    pub latest: Option<Vec<Notification>>,
}

/// The kinds, as names. `Event::kind` maps a value to its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    MatchRequested,
    ChallengeDeclined,
    ChallengeExpired,
    MatchFound,
    OpponentReady,
    MatchConfirmed,
    MatchCancelled,
    Requeued,
    MatchResult,
    ResultReported,
    MatchDisputed,
    MatchExpired,
    PostLiked,
    NewPost,
    RouteCompleted,
    PersonalRecord,
    RankChanged,
    Unread,
}

impl EventKind {
    pub const ALL: [EventKind; 18] = [
        EventKind::MatchRequested,
        EventKind::ChallengeDeclined,
        EventKind::ChallengeExpired,
        EventKind::MatchFound,
        EventKind::OpponentReady,
        EventKind::MatchConfirmed,
        EventKind::MatchCancelled,
        EventKind::Requeued,
        EventKind::MatchResult,
        EventKind::ResultReported,
        EventKind::MatchDisputed,
        EventKind::MatchExpired,
        EventKind::PostLiked,
        EventKind::NewPost,
        EventKind::RouteCompleted,
        EventKind::PersonalRecord,
        EventKind::RankChanged,
        EventKind::Unread,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::MatchRequested => "match_requested",
            EventKind::ChallengeDeclined => "challenge_declined",
            EventKind::ChallengeExpired => "challenge_expired",
            EventKind::MatchFound => "match_found",
            EventKind::OpponentReady => "opponent_ready",
            EventKind::MatchConfirmed => "match_confirmed",
            EventKind::MatchCancelled => "match_cancelled",
            EventKind::Requeued => "requeued",
            EventKind::MatchResult => "match_result",
            EventKind::ResultReported => "result_reported",
            EventKind::MatchDisputed => "match_disputed",
            EventKind::MatchExpired => "match_expired",
            EventKind::PostLiked => "post_liked",
            EventKind::NewPost => "new_post",
            EventKind::RouteCompleted => "route_completed",
            EventKind::PersonalRecord => "personal_record",
            EventKind::RankChanged => "rank_changed",
            EventKind::Unread => "unread",
        }
    }

    pub fn parse(raw: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|k| k.as_str() == raw)
    }

    /// Kinds the host app may send to one user through `POST /v1/notify`; every other kind is
    /// produced by Belay itself, so a host cannot forge a match or a ranking.
    pub fn host_may_notify(self) -> bool {
        matches!(self, EventKind::PostLiked)
    }

    /// Kinds the host app may send to everyone through `POST /v1/broadcast`.
    pub fn host_may_broadcast(self) -> bool {
        matches!(self, EventKind::NewPost)
    }
}

/// Why host input was refused; each maps to a 400 with its own error kind.
#[derive(Debug, Clone, PartialEq)]
pub enum EventInputError {
    UnknownKind(String),
    KindNotAllowed(EventKind),
    InvalidData(String),
}

impl Event {
    pub fn kind(&self) -> EventKind {
        match self {
            Event::MatchRequested { .. } => EventKind::MatchRequested,
            Event::ChallengeDeclined { .. } => EventKind::ChallengeDeclined,
            Event::ChallengeExpired { .. } => EventKind::ChallengeExpired,
            Event::MatchFound { .. } => EventKind::MatchFound,
            Event::OpponentReady { .. } => EventKind::OpponentReady,
            Event::MatchConfirmed { .. } => EventKind::MatchConfirmed,
            Event::MatchCancelled { .. } => EventKind::MatchCancelled,
            Event::Requeued { .. } => EventKind::Requeued,
            Event::MatchResult { .. } => EventKind::MatchResult,
            Event::ResultReported { .. } => EventKind::ResultReported,
            Event::MatchDisputed { .. } => EventKind::MatchDisputed,
            Event::MatchExpired { .. } => EventKind::MatchExpired,
            Event::PostLiked(_) => EventKind::PostLiked,
            Event::NewPost { .. } => EventKind::NewPost,
            Event::RouteCompleted { .. } => EventKind::RouteCompleted,
            Event::PersonalRecord { .. } => EventKind::PersonalRecord,
            Event::RankChanged { .. } => EventKind::RankChanged,
            Event::Unread(_) => EventKind::Unread,
        }
    }

    /// Parses host input `{"kind", "data"}` for a kind the host is allowed to send
    /// (`allowed` is [`EventKind::host_may_notify`] or [`EventKind::host_may_broadcast`]).
    pub fn from_host(
        kind: &str,
        data: serde_json::Value,
        allowed: fn(EventKind) -> bool,
    ) -> Result<Event, EventInputError> {
        let parsed =
            EventKind::parse(kind).ok_or_else(|| EventInputError::UnknownKind(kind.to_owned()))?;
        if !allowed(parsed) {
            return Err(EventInputError::KindNotAllowed(parsed));
        }
        let invalid = |e: serde_json::Error| EventInputError::InvalidData(e.to_string());
        let event = match parsed {
            EventKind::PostLiked => {
                #[derive(Deserialize)]
                struct Like {
                    post_id: PostId,
                    by: UserId,
                }
                let like: Like = serde_json::from_value(data).map_err(invalid)?;
                Event::PostLiked(PostLiked::new(like.post_id, like.by))
            }
            _ => {
                let envelope = serde_json::json!({ "kind": parsed.as_str(), "data": data });
                serde_json::from_value(envelope).map_err(invalid)?
            }
        };
        event.check_sizes()?;
        Ok(event)
    }

    fn check_sizes(&self) -> Result<(), EventInputError> {
        match self {
            Event::NewPost { title, .. } if title.chars().count() > MAX_TITLE_CHARS => {
                Err(EventInputError::InvalidData(format!(
                    "title is longer than {MAX_TITLE_CHARS} characters"
                )))
            }
            Event::RouteCompleted { grade, .. } if grade.chars().count() > MAX_GRADE_CHARS => {
                Err(EventInputError::InvalidData(format!(
                    "grade is longer than {MAX_GRADE_CHARS} characters"
                )))
            }
            _ => Ok(()),
        }
    }

    /// Events with a collapse key replace the unread notification with the same key instead of
    /// adding a row.
    pub fn collapse_key(&self) -> Option<String> {
        match self {
            Event::PostLiked(like) => Some(format!("post_liked:{}", like.post_id)),
            _ => None,
        }
    }

    /// Folds `self` into `previous`, the unread event with the same collapse key.
    pub fn collapse_onto(self, previous: Event) -> Event {
        match (self, previous) {
            (Event::PostLiked(new), Event::PostLiked(old)) => {
                Event::PostLiked(new.collapse_onto(old))
            }
            (new, _) => new,
        }
    }

    /// The `data` object alone, as stored.
    pub fn data_json(&self) -> serde_json::Value {
        match serde_json::to_value(self) {
            Ok(serde_json::Value::Object(mut map)) => {
                map.remove("data").unwrap_or(serde_json::Value::Null)
            }
            _ => serde_json::Value::Null,
        }
    }

    /// The `data` object as JSON text, as stored: the event serialized once, without building a
    /// `serde_json::Value` first.
    pub fn data_json_text(&self) -> Result<String, serde_json::Error> {
        let whole = serde_json::to_string(self)?;
        // `{"kind":"<kind>","data":<data>}`: kinds are plain snake_case names.
        let head = format!(r#"{{"kind":"{}","data":"#, self.kind().as_str());
        Ok(
            match whole
                .strip_prefix(&head)
                .and_then(|rest| rest.strip_suffix('}'))
            {
                Some(data) => data.to_owned(),
                None => self.data_json().to_string(),
            },
        )
    }

    /// Rebuilds an event from its stored kind and data.
    pub fn from_parts(kind: &str, data: serde_json::Value) -> Result<Event, serde_json::Error> {
        serde_json::from_value(serde_json::json!({ "kind": kind, "data": data }))
    }

    /// [`Event::from_parts`] from the stored JSON text, parsed once into the event.
    pub fn from_stored(kind: &str, data: &str) -> Result<Event, serde_json::Error> {
        let kind = serde_json::to_string(kind)?;
        serde_json::from_str(&format!(r#"{{"kind":{kind},"data":{data}}}"#))
    }
}

/// A user-targeted event as stored and as delivered: the SSE `data` of a user event and an item
/// of `GET /v1/notifications`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Notification {
    pub id: Uuid,
    pub cursor: Cursor,
    #[serde(flatten)]
    pub event: Event,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub read: bool,
}

/// An event for every connected user; not stored, so it carries no cursor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Broadcast {
    #[serde(flatten)]
    pub event: Event,
    pub sent_at: DateTime<Utc>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(s: &str) -> UserId {
        UserId::parse(s).unwrap_or_else(|e| panic!("{e}"))
    }

    fn post(s: &str) -> PostId {
        PostId::parse(s).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn every_kind_name_round_trips() {
        for kind in EventKind::ALL {
            assert_eq!(EventKind::parse(kind.as_str()), Some(kind));
            let json = serde_json::to_value(kind).unwrap_or_default();
            assert_eq!(json, serde_json::Value::String(kind.as_str().into()));
        }
        assert_eq!(EventKind::parse("nope"), None);
    }

    #[test]
    fn events_serialize_as_kind_and_data() {
        let event = Event::OpponentReady {
            match_id: Uuid::nil(),
        };
        let json = serde_json::to_value(&event).unwrap_or_default();
        assert_eq!(json["kind"], "opponent_ready");
        assert_eq!(json["data"]["match_id"], Uuid::nil().to_string());
        assert_eq!(
            Event::from_parts("opponent_ready", event.data_json()).ok(),
            Some(event)
        );
    }

    /// The `data` fields each kind carries, as the HTTP contract in the design lists them.
    #[test]
    fn every_kind_carries_the_fields_of_the_contract() {
        let (id, at) = (Uuid::nil(), DateTime::<Utc>::UNIX_EPOCH);
        let cases: Vec<(Event, &[&str])> = vec![
            (
                Event::MatchRequested {
                    challenge_id: id,
                    from: user("bob"),
                    discipline: Discipline::Boulder,
                    expires_at: at,
                },
                &["challenge_id", "from", "discipline", "expires_at"],
            ),
            (
                Event::ChallengeDeclined {
                    challenge_id: id,
                    by: user("bob"),
                },
                &["challenge_id", "by"],
            ),
            (
                Event::ChallengeExpired { challenge_id: id },
                &["challenge_id"],
            ),
            (
                Event::MatchFound {
                    match_id: id,
                    opponent: user("bob"),
                    discipline: Discipline::Lead,
                    ready_deadline: at,
                },
                &["match_id", "opponent", "discipline", "ready_deadline"],
            ),
            (Event::OpponentReady { match_id: id }, &["match_id"]),
            (Event::MatchConfirmed { match_id: id }, &["match_id"]),
            (
                Event::MatchCancelled {
                    match_id: id,
                    reason: CancelReason::ReadyTimeout,
                },
                &["match_id", "reason"],
            ),
            (
                Event::Requeued {
                    discipline: Discipline::Speed,
                    queued_since: at,
                },
                &["discipline", "queued_since"],
            ),
            (
                Event::MatchResult {
                    match_id: id,
                    winner: user("ana"),
                    rating: 1500.0,
                },
                &["match_id", "winner", "rating"],
            ),
            (
                Event::ResultReported {
                    match_id: id,
                    by: user("bob"),
                    winner: user("ana"),
                },
                &["match_id", "by", "winner"],
            ),
            (Event::MatchDisputed { match_id: id }, &["match_id"]),
            (Event::MatchExpired { match_id: id }, &["match_id"]),
            (
                Event::PostLiked(PostLiked::new(post("p1"), user("ana"))),
                &["post_id", "by", "likers", "count", "text"],
            ),
            (
                Event::NewPost {
                    post_id: post("p1"),
                    by: user("ana"),
                    title: "t".into(),
                },
                &["post_id", "by", "title"],
            ),
            (
                Event::RouteCompleted {
                    route_id: RouteId::parse("r1").unwrap(),
                    grade: "7a".into(),
                },
                &["route_id", "grade"],
            ),
            (
                Event::PersonalRecord {
                    discipline: Discipline::Speed,
                    grade: None,
                    time_ms: Some(6200),
                    previous: Some(Performance::TimeMs(6500)),
                },
                &["discipline", "time_ms", "previous"],
            ),
            (
                Event::RankChanged {
                    discipline: Discipline::Boulder,
                    old_rank: Some(4),
                    new_rank: 3,
                    rating: 1612.5,
                },
                &["discipline", "old_rank", "new_rank", "rating"],
            ),
            (
                Event::Unread(UnreadSummary {
                    count: 2,
                    cursor: None,
                    latest: None,
                }),
                &["count"],
            ),
        ];
        assert_eq!(cases.len(), EventKind::ALL.len(), "every kind is listed");
        for (event, fields) in cases {
            let data = event.data_json();
            let mut keys: Vec<&str> = data
                .as_object()
                .unwrap()
                .keys()
                .map(String::as_str)
                .collect();
            keys.sort_unstable();
            let mut want = fields.to_vec();
            want.sort_unstable();
            assert_eq!(keys, want, "{}", event.kind().as_str());
            let text = event.data_json_text().unwrap();
            assert_eq!(
                serde_json::from_str::<serde_json::Value>(&text).unwrap(),
                data,
                "{}: stored text",
                event.kind().as_str()
            );
            let back = Event::from_parts(event.kind().as_str(), data).unwrap();
            assert_eq!(back, event, "{} round-trips", event.kind().as_str());
            let back = Event::from_stored(event.kind().as_str(), &text).unwrap();
            assert_eq!(back, event, "{} round-trips as text", event.kind().as_str());
        }
    }

    #[test]
    fn likes_collapse_counting_each_liker_once() {
        let first = PostLiked::new(post("p1"), user("ana"));
        assert_eq!(first.text, "ana liked your post");
        let second = PostLiked::new(post("p1"), user("bob")).collapse_onto(first);
        assert_eq!(second.count, 2);
        assert_eq!(second.text, "bob and 1 other liked your post");
        let again = PostLiked::new(post("p1"), user("ana")).collapse_onto(second);
        assert_eq!(again.count, 2);
        assert_eq!(again.likers, vec![user("ana"), user("bob")]);
        let third = PostLiked::new(post("p1"), user("cy")).collapse_onto(again);
        assert_eq!(third.text, "cy and 2 others liked your post");
    }

    #[test]
    fn likers_list_is_capped() {
        let mut like = PostLiked::new(post("p"), user("u0"));
        for i in 1..30 {
            like = PostLiked::new(post("p"), user(&format!("u{i}"))).collapse_onto(like);
        }
        assert_eq!(like.count, 30);
        assert_eq!(like.likers.len(), MAX_LIKERS_KEPT);
    }

    #[test]
    fn host_input_is_checked_for_kind_and_fields() {
        let ok = Event::from_host(
            "post_liked",
            serde_json::json!({"post_id": "p1", "by": "ana"}),
            EventKind::host_may_notify,
        );
        assert!(matches!(ok, Ok(Event::PostLiked(_))));
        assert_eq!(
            Event::from_host("nope", serde_json::json!({}), EventKind::host_may_notify),
            Err(EventInputError::UnknownKind("nope".into()))
        );
        assert_eq!(
            Event::from_host(
                "match_found",
                serde_json::json!({}),
                EventKind::host_may_notify
            ),
            Err(EventInputError::KindNotAllowed(EventKind::MatchFound))
        );
        assert!(matches!(
            Event::from_host(
                "post_liked",
                serde_json::json!({"post_id": 1}),
                EventKind::host_may_notify
            ),
            Err(EventInputError::InvalidData(_))
        ));
        let long_title = "x".repeat(MAX_TITLE_CHARS + 1);
        assert!(matches!(
            Event::from_host(
                "new_post",
                serde_json::json!({"post_id": "p", "by": "a", "title": long_title}),
                EventKind::host_may_broadcast
            ),
            Err(EventInputError::InvalidData(_))
        ));
    }
}
