//! A climber's notification preferences: per kind, whether it reaches them live on the stream
//! and whether it is pushed; and quiet hours in their own time zone, during which only the
//! ready check (`match_found`, `opponent_ready`) is pushed. A muted kind is still stored and
//! listed: preferences decide what interrupts the climber, not what they can read.

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveTime, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::EventKind;

/// Kinds a climber can set: every stored kind (`unread` is a summary frame, not an event).
pub fn settable_kinds() -> impl Iterator<Item = EventKind> {
    EventKind::ALL
        .into_iter()
        .filter(|kind| *kind != EventKind::Unread)
}

/// Kinds pushed even in quiet hours: a ready check that waits for the morning is lost.
pub fn pierces_quiet_hours(kind: EventKind) -> bool {
    matches!(kind, EventKind::MatchFound | EventKind::OpponentReady)
}

/// One kind's switches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KindSetting {
    /// Sent on the live stream as it happens.
    pub live: bool,
    /// Pushed to the climber's devices when they have no live stream.
    pub push: bool,
}

/// Local times `HH:MM`; `start` after `end` spans midnight (`22:00`–`07:00`). Equal times are
/// no quiet hours at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuietHours {
    pub start: NaiveTime,
    pub end: NaiveTime,
}

impl QuietHours {
    pub fn contains(&self, local: NaiveTime) -> bool {
        if self.start <= self.end {
            self.start <= local && local < self.end
        } else {
            local >= self.start || local < self.end
        }
    }
}

/// The kinds a climber muted on the live stream, one bit per kind of [`EventKind::ALL`]: cheap
/// to copy into every session of theirs and to test for every frame.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LiveMask(u32);

impl LiveMask {
    fn bit(kind: EventKind) -> u32 {
        EventKind::ALL
            .iter()
            .position(|k| *k == kind)
            .map_or(0, |i| 1 << i)
    }

    pub fn mutes(self, kind: EventKind) -> bool {
        self.0 & Self::bit(kind) != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

/// Why a push was not sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Held {
    /// The climber turned pushes of this kind off.
    Muted,
    /// It is night where the climber is, and the kind can wait.
    QuietHours,
}

impl Held {
    pub fn label(self) -> &'static str {
        match self {
            Held::Muted => "muted",
            Held::QuietHours => "quiet_hours",
        }
    }
}

/// The preferences as decided: what the climber set, over the defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct Preferences {
    /// Only the kinds the climber set; the others follow the defaults.
    kinds: BTreeMap<&'static str, KindSetting>,
    time_zone: Tz,
    quiet_hours: Option<QuietHours>,
}

impl Default for Preferences {
    fn default() -> Self {
        Preferences {
            kinds: BTreeMap::new(),
            time_zone: Tz::UTC,
            quiet_hours: None,
        }
    }
}

/// What clients send and receive (and what the store keeps).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({
    "kinds": {"post_liked": {"live": true, "push": false}},
    "time_zone": "Europe/Paris",
    "quiet_hours": {"start": "22:00", "end": "07:00"}
}))]
pub struct PreferencesBody {
    /// Per kind. In a request, kinds left out take their defaults (live on; push on for the
    /// kinds `push.kinds` names); an answer lists every kind.
    #[serde(default)]
    pub kinds: BTreeMap<String, KindSetting>,
    /// An IANA time zone name, such as `Europe/Paris`: where quiet hours are read. Default
    /// `UTC`.
    #[serde(default)]
    pub time_zone: Option<String>,
    /// Local times `HH:MM`. Only `match_found` and `opponent_ready` are pushed in them.
    #[serde(default)]
    pub quiet_hours: Option<QuietHoursBody>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QuietHoursBody {
    /// `HH:MM`, 24-hour.
    pub start: String,
    /// `HH:MM`, 24-hour; before `start` when the quiet hours span midnight.
    pub end: String,
}

fn parse_time(field: &str, raw: &str) -> Result<NaiveTime, String> {
    let valid = raw.len() == 5 && raw.as_bytes()[2] == b':';
    valid
        .then(|| NaiveTime::parse_from_str(raw, "%H:%M").ok())
        .flatten()
        .ok_or_else(|| format!("quiet_hours.{field}: {raw:?} is not a time HH:MM (00:00 to 23:59)"))
}

impl Preferences {
    /// Parses and checks a body: known kinds, a real time zone, real times.
    pub fn from_body(body: &PreferencesBody) -> Result<Preferences, String> {
        let mut kinds = BTreeMap::new();
        for (name, setting) in &body.kinds {
            let kind = EventKind::parse(name)
                .filter(|kind| *kind != EventKind::Unread)
                .ok_or_else(|| {
                    let known: Vec<&str> = settable_kinds().map(EventKind::as_str).collect();
                    format!("kinds: unknown kind {name:?}; known: {}", known.join(", "))
                })?;
            kinds.insert(kind.as_str(), *setting);
        }
        let time_zone = match body.time_zone.as_deref() {
            None => Tz::UTC,
            Some(name) => name.parse::<Tz>().map_err(|_| {
                format!("time_zone: {name:?} is not an IANA time zone name such as Europe/Paris")
            })?,
        };
        let quiet_hours = body
            .quiet_hours
            .as_ref()
            .map(|q| {
                Ok::<_, String>(QuietHours {
                    start: parse_time("start", &q.start)?,
                    end: parse_time("end", &q.end)?,
                })
            })
            .transpose()?;
        Ok(Preferences {
            kinds,
            time_zone,
            quiet_hours,
        })
    }

    /// What the store keeps: the climber's own settings only, so that a default changed in
    /// configuration reaches every kind they never touched.
    pub fn to_stored(&self) -> PreferencesBody {
        PreferencesBody {
            kinds: self
                .kinds
                .iter()
                .map(|(name, setting)| ((*name).to_owned(), *setting))
                .collect(),
            time_zone: Some(self.time_zone.name().to_owned()),
            quiet_hours: self.quiet_hours.map(|q| QuietHoursBody {
                start: q.start.format("%H:%M").to_string(),
                end: q.end.format("%H:%M").to_string(),
            }),
        }
    }

    /// Every kind, as in effect; `push_default` says which kinds are pushed by default.
    pub fn to_body(&self, push_default: impl Fn(EventKind) -> bool) -> PreferencesBody {
        let mut body = self.to_stored();
        body.kinds = settable_kinds()
            .map(|kind| (kind.as_str().to_owned(), self.setting(kind, &push_default)))
            .collect();
        body
    }

    /// A kind's switches as in effect.
    pub fn setting(
        &self,
        kind: EventKind,
        push_default: impl Fn(EventKind) -> bool,
    ) -> KindSetting {
        self.kinds
            .get(kind.as_str())
            .copied()
            .unwrap_or(KindSetting {
                live: true,
                push: push_default(kind),
            })
    }

    /// Whether the climber wants `kind` on their live stream.
    pub fn live(&self, kind: EventKind) -> bool {
        self.kinds.get(kind.as_str()).is_none_or(|s| s.live)
    }

    /// The kinds muted on the live stream.
    pub fn live_mask(&self) -> LiveMask {
        LiveMask(
            settable_kinds()
                .filter(|kind| !self.live(*kind))
                .map(LiveMask::bit)
                .fold(0, |mask, bit| mask | bit),
        )
    }

    /// Reads stored preferences; anything unreadable counts as the defaults.
    pub fn from_stored(json: Option<&str>) -> Preferences {
        json.and_then(|json| serde_json::from_str::<PreferencesBody>(json).ok())
            .and_then(|body| Preferences::from_body(&body).ok())
            .unwrap_or_default()
    }

    /// Whether a push of `kind` may go out at `at`, given the kinds pushed by default.
    pub fn push(
        &self,
        kind: EventKind,
        at: DateTime<Utc>,
        push_default: impl Fn(EventKind) -> bool,
    ) -> Result<(), Held> {
        if !self.setting(kind, push_default).push {
            return Err(Held::Muted);
        }
        let local = at.with_timezone(&self.time_zone).time();
        if self.quiet_hours.is_some_and(|q| q.contains(local)) && !pierces_quiet_hours(kind) {
            return Err(Held::QuietHours);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(rfc3339: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(rfc3339)
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_else(|e| panic!("{e}"))
    }

    fn body(json: serde_json::Value) -> PreferencesBody {
        serde_json::from_value(json).unwrap_or_else(|e| panic!("{e}"))
    }

    fn prefs(json: serde_json::Value) -> Preferences {
        Preferences::from_body(&body(json)).unwrap_or_else(|e| panic!("{e}"))
    }

    fn all(_: EventKind) -> bool {
        true
    }

    #[test]
    fn quiet_hours_across_midnight_hold_everything_but_the_ready_check() {
        let p = prefs(serde_json::json!({
            "time_zone": "Europe/Paris",
            "quiet_hours": {"start": "22:00", "end": "07:00"}
        }));
        // 23:30 in Paris (UTC+1 in December).
        let night = at("2026-12-06T22:30:00Z");
        assert_eq!(
            p.push(EventKind::PostLiked, night, all),
            Err(Held::QuietHours)
        );
        assert_eq!(p.push(EventKind::MatchFound, night, all), Ok(()));
        assert_eq!(p.push(EventKind::OpponentReady, night, all), Ok(()));
        // 07:00 in Paris: over.
        assert_eq!(
            p.push(EventKind::PostLiked, at("2026-12-07T06:00:00Z"), all),
            Ok(())
        );
        // 21:59 in Paris: not yet.
        assert_eq!(
            p.push(EventKind::PostLiked, at("2026-12-06T20:59:00Z"), all),
            Ok(())
        );
    }

    #[test]
    fn quiet_hours_follow_daylight_saving_time() {
        let p = prefs(serde_json::json!({
            "time_zone": "Europe/Paris",
            "quiet_hours": {"start": "22:00", "end": "23:00"}
        }));
        // 20:30 UTC is 22:30 in Paris in July (UTC+2), 21:30 in January (UTC+1).
        assert_eq!(
            p.push(EventKind::RankChanged, at("2026-07-01T20:30:00Z"), all),
            Err(Held::QuietHours)
        );
        assert_eq!(
            p.push(EventKind::RankChanged, at("2026-01-01T20:30:00Z"), all),
            Ok(())
        );
    }

    #[test]
    fn quiet_hours_within_a_day_and_equal_times() {
        let day = QuietHours {
            start: NaiveTime::from_hms_opt(13, 0, 0).unwrap_or_default(),
            end: NaiveTime::from_hms_opt(14, 0, 0).unwrap_or_default(),
        };
        let t = |h, m| NaiveTime::from_hms_opt(h, m, 0).unwrap_or_default();
        assert!(day.contains(t(13, 0)) && day.contains(t(13, 59)));
        assert!(!day.contains(t(14, 0)) && !day.contains(t(12, 59)));
        let none = QuietHours {
            start: t(8, 0),
            end: t(8, 0),
        };
        assert!(!none.contains(t(8, 0)) && !none.contains(t(3, 0)));
    }

    #[test]
    fn a_muted_kind_is_held_and_unset_kinds_take_the_default() {
        let p = prefs(serde_json::json!({"kinds": {"post_liked": {"live": false, "push": false}}}));
        let now = at("2026-12-06T12:00:00Z");
        assert_eq!(p.push(EventKind::PostLiked, now, all), Err(Held::Muted));
        assert!(!p.live(EventKind::PostLiked));
        assert!(p.live(EventKind::RankChanged));
        let mask = p.live_mask();
        assert!(mask.mutes(EventKind::PostLiked) && !mask.mutes(EventKind::RankChanged));
        assert!(Preferences::default().live_mask().is_empty());
        assert_eq!(p.push(EventKind::RankChanged, now, all), Ok(()));
        assert_eq!(
            p.push(EventKind::NewPost, now, |k| k != EventKind::NewPost),
            Err(Held::Muted)
        );
    }

    #[test]
    fn bad_bodies_say_what_is_wrong() {
        let err = |json| {
            Preferences::from_body(&body(json))
                .err()
                .unwrap_or_default()
        };
        assert!(
            err(serde_json::json!({"kinds": {"likes": {"live": true, "push": true}}}))
                .contains("unknown kind \"likes\"")
        );
        assert!(
            err(serde_json::json!({"kinds": {"unread": {"live": true, "push": true}}}))
                .contains("unknown kind")
        );
        assert!(err(serde_json::json!({"time_zone": "Mars/Olympus"})).contains("time_zone"));
        assert!(
            err(serde_json::json!({"quiet_hours": {"start": "24:00", "end": "07:00"}}))
                .contains("quiet_hours.start")
        );
        assert!(
            err(serde_json::json!({"quiet_hours": {"start": "22:00", "end": "7:00"}}))
                .contains("quiet_hours.end")
        );
        assert!(
            serde_json::from_value::<PreferencesBody>(
                serde_json::json!({"kinds": {"post_liked": {"live": true}}})
            )
            .is_err()
        );
    }

    #[test]
    fn the_stored_form_keeps_only_what_was_set_and_reads_back_the_same() {
        let p = prefs(serde_json::json!({
            "kinds": {"post_liked": {"live": true, "push": false}},
            "time_zone": "America/New_York",
            "quiet_hours": {"start": "23:15", "end": "06:45"}
        }));
        let stored = p.to_stored();
        assert_eq!(stored.kinds.len(), 1);
        assert_eq!(Preferences::from_body(&stored), Ok(p.clone()));
        let shown = p.to_body(all);
        assert_eq!(shown.kinds.len(), settable_kinds().count());
        assert!(!shown.kinds.contains_key("unread"));
        assert!(!shown.kinds["post_liked"].push);
        assert!(shown.kinds["match_found"].push);
    }
}
