//! Validated identifiers: parsed once at the edge so the core never re-checks them.

use std::fmt;

use serde::{Deserialize, Serialize};
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};

/// Longest accepted user, post or route id, in bytes.
pub const MAX_ID_LEN: usize = 64;

/// Punctuation allowed in ids besides ASCII letters and digits; `-` last, so that it is literal
/// in the schema's character class.
const ID_PUNCTUATION: &str = "_.@:-";

/// Characters allowed in ids: enough for usernames, e-mails and UUIDs, nothing that needs escaping.
fn valid_id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || ID_PUNCTUATION.contains(c)
}

/// The OpenAPI schema of every id type, built from the same limits as [`check_id`].
fn id_schema() -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length(Some(1))
        .max_length(Some(MAX_ID_LEN))
        .pattern(Some(format!("^[A-Za-z0-9{ID_PUNCTUATION}]+$")))
        .description(Some(format!(
            "1 to {MAX_ID_LEN} bytes of ASCII letters, digits and `{ID_PUNCTUATION}`"
        )))
        .into()
}

fn check_id(what: &str, raw: &str) -> Result<(), String> {
    if raw.is_empty() {
        return Err(format!("{what} must not be empty"));
    }
    if raw.len() > MAX_ID_LEN {
        return Err(format!("{what} is longer than {MAX_ID_LEN} bytes"));
    }
    if !raw.chars().all(valid_id_char) {
        return Err(format!(
            "{what} may only contain letters, digits and _ - . @ :"
        ));
    }
    Ok(())
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Accepts 1 to [`MAX_ID_LEN`] bytes of `[A-Za-z0-9_.@:-]`.
            pub fn parse(raw: impl Into<String>) -> Result<Self, String> {
                let raw = raw.into();
                check_id($what, &raw)?;
                Ok(Self(raw))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl utoipa::PartialSchema for $name {
            fn schema() -> RefOr<Schema> {
                id_schema()
            }
        }

        impl utoipa::ToSchema for $name {}

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let raw = String::deserialize(d)?;
                Self::parse(raw).map_err(serde::de::Error::custom)
            }
        }
    };
}

id_type!(
    /// A climber, as named by the host app (the JWT `sub`).
    UserId,
    "user id"
);
id_type!(
    /// A post of the host app.
    PostId,
    "post id"
);
id_type!(
    /// A climbing route.
    RouteId,
    "route id"
);
id_type!(
    /// Where an open queue is limited to: a gym or a region, as the host app names them.
    Scope,
    "scope"
);
id_type!(
    /// A host-chosen key that makes a retried notify request create nothing new.
    IdempotencyKey,
    "idempotency key"
);

/// Position of an event in one user's stream; the SSE `id`. Starts at 1 and only grows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, utoipa::ToSchema)]
#[serde(transparent)]
#[schema(minimum = 0)]
pub struct Cursor(pub i64);

/// Reads an optional non-negative JSON integer, `5160.0` too (see [`Cursor`]'s `Deserialize`).
pub fn integral_u64<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<u64>, D::Error> {
    let Some(number) = Option::<serde_json::Number>::deserialize(deserializer)? else {
        return Ok(None);
    };
    if let Some(n) = number.as_u64() {
        return Ok(Some(n));
    }
    match number.as_f64() {
        // u64::MAX as f64 rounds up to 2^64, so the upper bound is exclusive.
        Some(v) if v.fract() == 0.0 && v >= 0.0 && v < u64::MAX as f64 => Ok(Some(v as u64)),
        _ => Err(serde::de::Error::custom(format!(
            "invalid value {number}, expected a non-negative integer"
        ))),
    }
}

/// A JSON integer; `16710.0` too, since JSON Schema's `integer` (and so the OpenAPI document)
/// counts a number with a zero fraction as one.
impl<'de> serde::Deserialize<'de> for Cursor {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Integer;
        impl serde::de::Visitor<'_> for Integer {
            type Value = Cursor;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an integer cursor")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Cursor, E> {
                Ok(Cursor(v))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Cursor, E> {
                i64::try_from(v)
                    .map(Cursor)
                    .map_err(|_| E::custom("cursor out of range"))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Cursor, E> {
                // i64::MAX as f64 rounds up to 2^63, so the upper bound is exclusive.
                if v.fract() == 0.0 && v >= i64::MIN as f64 && v < i64::MAX as f64 {
                    Ok(Cursor(v as i64))
                } else {
                    Err(E::invalid_type(serde::de::Unexpected::Float(v), &self))
                }
            }
        }
        deserializer.deserialize_any(Integer)
    }
}

impl Cursor {
    /// The position before the first event.
    pub const ZERO: Cursor = Cursor(0);

    /// Parses a `Last-Event-ID` / `after` value: a non-negative decimal integer.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let trimmed = raw.trim();
        match trimmed.parse::<i64>() {
            Ok(n) if n >= 0 && trimmed.len() <= 19 => Ok(Cursor(n)),
            _ => Err(format!(
                "cursor must be a non-negative integer, got {:?}",
                truncate(raw, 32)
            )),
        }
    }

    pub fn next(self) -> Cursor {
        Cursor(self.0 + 1)
    }
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Cuts user input for inclusion in an error message.
pub fn truncate(raw: &str, max: usize) -> &str {
    match raw.char_indices().nth(max) {
        Some((i, _)) => &raw[..i],
        None => raw,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_integral_number_is_read_as_an_integer() {
        #[derive(serde::Deserialize)]
        struct Body {
            #[serde(default, deserialize_with = "integral_u64")]
            n: Option<u64>,
        }
        let read = |json: &str| serde_json::from_str::<Body>(json).map(|b| b.n).ok();
        assert_eq!(read(r#"{"n": 5160}"#), Some(Some(5160)));
        assert_eq!(read(r#"{"n": 5160.0}"#), Some(Some(5160)));
        assert_eq!(read(r#"{"n": null}"#), Some(None));
        assert_eq!(read("{}"), Some(None));
        assert_eq!(read(r#"{"n": 1.5}"#), None);
        assert_eq!(read(r#"{"n": -1}"#), None);
    }

    #[test]
    fn a_cursor_is_read_from_a_json_integer_or_an_integral_number() {
        let read = |json: &str| serde_json::from_str::<Cursor>(json).map_err(|e| e.to_string());
        assert_eq!(read("16710"), Ok(Cursor(16710)));
        assert_eq!(read("16710.0"), Ok(Cursor(16710)));
        assert_eq!(read("-3"), Ok(Cursor(-3)));
        assert!(read("1.5").is_err());
        assert!(read("1e300").is_err());
        assert!(read("9223372036854775808").is_err());
        assert!(read("\"7\"").is_err());
    }

    #[test]
    fn user_ids_accept_names_emails_and_uuids() {
        for ok in [
            "ana",
            "ana.b@gym.example",
            "550e8400-e29b-41d4-a716-446655440000",
            "a:b",
        ] {
            assert!(UserId::parse(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn user_ids_reject_empty_long_and_odd_characters() {
        assert!(UserId::parse("").is_err());
        assert!(UserId::parse("a".repeat(MAX_ID_LEN + 1)).is_err());
        for bad in ["a b", "a/b", "é", "a\nb", "<script>"] {
            assert!(UserId::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cursors_are_non_negative_integers() {
        assert_eq!(Cursor::parse("42"), Ok(Cursor(42)));
        assert_eq!(Cursor::parse("0"), Ok(Cursor::ZERO));
        for bad in ["-1", "abc", "", "1.5", "99999999999999999999"] {
            assert!(Cursor::parse(bad).is_err(), "{bad}");
        }
    }
}
