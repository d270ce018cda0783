//! Push delivery to climbers with no live stream: what a push says ([`message`]) and the two
//! providers that carry it, Firebase Cloud Messaging HTTP v1 ([`fcm`]) and Web Push
//! ([`webpush`]).
//!
//! Each provider turns one send into an [`Outcome`]; deciding what to do with it (retry when,
//! drop which device, raise which alarm) is the caller's, so the providers hold no queue and no
//! per-device state. Both talk HTTPS through reqwest on rustls with the ring provider: no OpenSSL
//! and no aws-lc anywhere in the build.

pub mod actor;
pub mod fcm;
pub mod message;
pub mod webpush;

// Loopback fakes of the providers: for the tests and the load tool, never for serving.
#[doc(hidden)]
pub mod fake;

use std::sync::{Arc, Mutex, Once};
use std::time::Duration;

use chrono::{DateTime, Utc};

pub use message::{PushMessage, Urgency, push_worthy_by_default};

/// How long a provider connection may take to open.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one provider request may take, answer included; a send that runs out is retried.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// Idle provider connections kept per host: as many as sends in flight by default
/// (`push.concurrency`), so an HTTP/1.1 push service is not reconnected to for every push.
pub const POOL_IDLE_PER_HOST: usize = 256;

/// First backoff ceiling after a transient failure (attempt 0).
pub const BACKOFF_BASE: Duration = Duration::from_secs(1);
/// Backoff ceilings stop doubling here.
pub const BACKOFF_MAX: Duration = Duration::from_secs(10 * 60);
/// FCM asks for at least a minute after `QUOTA_EXCEEDED` when it names no `Retry-After`.
pub const QUOTA_MIN_WAIT: Duration = Duration::from_secs(60);
/// A `Retry-After` beyond this is taken as this: a provider fault must not park a job for days.
pub const RETRY_AFTER_MAX: Duration = Duration::from_secs(60 * 60);

/// What one send came to. Providers do not log: the caller logs and counts by [`Outcome::label`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Accepted by the provider.
    Sent,
    /// The token or subscription is dead: delete the device, do not retry.
    RemoveDevice { reason: String },
    /// A transient failure: send again after [`Retry::delay`].
    Retry(Retry),
    /// Our credentials or setup are wrong (a refused key, an auth error): keep the device, alarm.
    ConfigFault { reason: String },
    /// The request itself is wrong (our bug, e.g. a payload the provider rejects): do not retry.
    Failed { reason: String },
    /// The push outlived its time to live before it could be sent; nothing was sent.
    Expired,
}

impl Outcome {
    /// A short, fixed label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Sent => "sent",
            Outcome::RemoveDevice { .. } => "device_removed",
            Outcome::Retry(_) => "retried",
            Outcome::ConfigFault { .. } => "config_fault",
            Outcome::Failed { .. } => "failed",
            Outcome::Expired => "expired",
        }
    }
}

/// Why a send is worth trying again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryCause {
    /// The provider's quota for us ran out (429).
    Quota,
    /// The provider or the network failed (5xx, timeout, refused connection).
    Unavailable,
}

/// A transient failure with the provider's own hint, if it gave one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retry {
    pub cause: RetryCause,
    /// The provider's `Retry-After`, already capped at [`RETRY_AFTER_MAX`].
    pub retry_after: Option<Duration>,
    pub reason: String,
}

impl Retry {
    /// How long to wait before attempt `attempt + 1`, given `jitter` in `[0, 1)`.
    ///
    /// Quota: the provider's `Retry-After`, else at least [`QUOTA_MIN_WAIT`]. Unavailable: the
    /// exponential [`backoff`], never sooner than the provider's `Retry-After`.
    pub fn delay(&self, attempt: u32, jitter: f64) -> Duration {
        let backoff = backoff(attempt, jitter);
        match (self.cause, self.retry_after) {
            (RetryCause::Quota, Some(after)) => after,
            (RetryCause::Quota, None) => backoff.max(QUOTA_MIN_WAIT),
            (RetryCause::Unavailable, Some(after)) => backoff.max(after),
            (RetryCause::Unavailable, None) => backoff,
        }
    }
}

/// Exponential backoff with "equal jitter": attempt `n` waits between half and all of
/// `min(BACKOFF_BASE * 2^n, BACKOFF_MAX)`. Half is fixed so retries of one outage spread out
/// without ever hammering the provider right away. `jitter` outside `[0, 1]` is clamped.
pub fn backoff(attempt: u32, jitter: f64) -> Duration {
    let ceiling = BACKOFF_BASE
        .checked_mul(2u32.saturating_pow(attempt))
        .unwrap_or(BACKOFF_MAX)
        .min(BACKOFF_MAX);
    let half = ceiling / 2;
    let jitter = if jitter.is_nan() {
        0.0
    } else {
        jitter.clamp(0.0, 1.0)
    };
    half + half.mul_f64(jitter)
}

/// Reads a `Retry-After` header: delay-seconds or an HTTP date, relative to `now`.
pub fn parse_retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let value = value.trim();
    let delay = match value.parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        Err(_) => {
            let at = DateTime::parse_from_rfc2822(value)
                .ok()?
                .with_timezone(&Utc);
            (at - now).to_std().unwrap_or(Duration::ZERO)
        }
    };
    Some(delay.min(RETRY_AFTER_MAX))
}

/// The time, injected so that token expiry and TTLs can be tested without sleeping.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> DateTime<Utc>;
}

/// The wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A clock that moves only when told to.
#[derive(Debug)]
pub struct ManualClock(Mutex<DateTime<Utc>>);

impl ManualClock {
    pub fn new(at: DateTime<Utc>) -> Arc<Self> {
        Arc::new(ManualClock(Mutex::new(at)))
    }

    pub fn advance(&self, by: chrono::Duration) {
        let mut now = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *now += by;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The HTTP client both providers use: rustls with ring, named timeouts, a bounded idle pool.
fn http_client() -> Result<reqwest::Client, reqwest::Error> {
    install_tls_provider();
    reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(REQUEST_TIMEOUT)
        .pool_max_idle_per_host(POOL_IDLE_PER_HOST)
        .user_agent(concat!("belay/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// reqwest is built without a default crypto provider (its default would be aws-lc); rustls
/// needs one installed process-wide before the first client is built, by any part of the
/// process: the server installs it at start, and so must any other program that links Belay
/// and builds a reqwest client (the tests, the load tool).
// rustls 0.23.48 deprecates ring's provider because it lacks post-quantum key exchange; ring is
// the project's choice (no aws-lc build), and FCM and push services still offer classic groups.
#[expect(deprecated)]
pub fn install_tls_provider() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        // Err means another part of the process installed one first, which serves as well.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// `text` cut to at most `max_bytes` on a char boundary, with an ellipsis when anything was cut.
fn cut_text(text: &str, max_bytes: usize) -> String {
    const ELLIPSIS: &str = "…";
    if text.len() <= max_bytes {
        return text.to_owned();
    }
    let Some(room) = max_bytes.checked_sub(ELLIPSIS.len()) else {
        return String::new();
    };
    let mut end = room;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{ELLIPSIS}", text[..end].trim_end())
}

/// The longest cut of `body`, then of `title`, for which `size(title, body)` is at most `limit`;
/// `None` when even empty text does not fit. A binary search over the cut point, because
/// escapes make encoded size grow faster than the text: cutting by the excess alone overshoots.
fn fit_text(
    title: &str,
    body: &str,
    limit: usize,
    size: impl Fn(&str, &str) -> usize,
) -> Option<(String, String)> {
    if size(title, body) <= limit {
        return Some((title.to_owned(), body.to_owned()));
    }
    if let Some(body) = longest_fit(body, |b| size(title, b) <= limit) {
        return Some((title.to_owned(), body));
    }
    let title = longest_fit(title, |t| size(t, "") <= limit)?;
    Some((title, String::new()))
}

/// The longest [`cut_text`] of `text` that `fits`, given that `text` itself does not.
fn longest_fit(text: &str, fits: impl Fn(&str) -> bool) -> Option<String> {
    if !fits("") {
        return None;
    }
    // Invariant: the cut at `lo` fits, the cut at `hi` does not; longer cuts encode longer.
    let (mut lo, mut hi) = (0, text.len());
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if fits(&cut_text(text, mid)) {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Some(cut_text(text, lo))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(rfc3339: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(rfc3339)
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn backoff_doubles_between_half_and_the_whole_ceiling() {
        assert_eq!(backoff(0, 0.0), Duration::from_millis(500));
        assert_eq!(backoff(0, 1.0), Duration::from_secs(1));
        assert_eq!(backoff(1, 0.0), Duration::from_secs(1));
        assert_eq!(backoff(1, 1.0), Duration::from_secs(2));
        assert_eq!(backoff(3, 0.0), Duration::from_secs(4));
        assert_eq!(backoff(3, 0.5), Duration::from_secs(6));
        assert_eq!(backoff(3, 1.0), Duration::from_secs(8));
        for attempt in 0..40 {
            let ceiling = BACKOFF_BASE
                .checked_mul(2u32.saturating_pow(attempt))
                .unwrap_or(BACKOFF_MAX)
                .min(BACKOFF_MAX);
            for jitter in [0.0, 0.25, 0.999, 1.0] {
                let delay = backoff(attempt, jitter);
                assert!(
                    delay >= ceiling / 2 && delay <= ceiling,
                    "{attempt} {jitter}"
                );
            }
        }
    }

    #[test]
    fn backoff_stops_at_its_maximum_and_survives_any_attempt_count() {
        assert_eq!(backoff(9, 1.0), Duration::from_secs(512));
        assert_eq!(backoff(10, 0.0), BACKOFF_MAX / 2);
        assert_eq!(backoff(10, 1.0), BACKOFF_MAX);
        assert_eq!(backoff(u32::MAX, 1.0), BACKOFF_MAX);
        assert_eq!(backoff(u32::MAX, 0.0), BACKOFF_MAX / 2);
        assert_eq!(backoff(2, f64::NAN), Duration::from_secs(2));
        assert_eq!(backoff(2, 7.0), Duration::from_secs(4));
        assert_eq!(backoff(2, -1.0), Duration::from_secs(2));
    }

    #[test]
    fn quota_waits_retry_after_or_at_least_a_minute() {
        let quota = |after| Retry {
            cause: RetryCause::Quota,
            retry_after: after,
            reason: String::new(),
        };
        assert_eq!(
            quota(Some(Duration::from_secs(7))).delay(0, 0.5),
            Duration::from_secs(7)
        );
        assert_eq!(quota(None).delay(0, 0.0), QUOTA_MIN_WAIT);
        assert_eq!(quota(None).delay(0, 1.0), QUOTA_MIN_WAIT);
        // Late attempts back off beyond the minute.
        assert_eq!(quota(None).delay(8, 1.0), Duration::from_secs(256));
    }

    #[test]
    fn unavailable_backs_off_but_never_sooner_than_retry_after() {
        let unavailable = |after| Retry {
            cause: RetryCause::Unavailable,
            retry_after: after,
            reason: String::new(),
        };
        assert_eq!(unavailable(None).delay(2, 0.0), Duration::from_secs(2));
        assert_eq!(
            unavailable(Some(Duration::from_secs(30))).delay(2, 1.0),
            Duration::from_secs(30)
        );
        assert_eq!(
            unavailable(Some(Duration::from_secs(1))).delay(5, 1.0),
            Duration::from_secs(32)
        );
    }

    #[test]
    fn retry_after_reads_seconds_and_http_dates_and_is_capped() {
        let now = at("2026-11-20T10:00:00Z");
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("Fri, 20 Nov 2026 10:00:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Fri, 20 Nov 2026 09:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("99999999", now), Some(RETRY_AFTER_MAX));
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-5", now), None);
    }

    #[test]
    fn cut_text_keeps_whole_chars_and_marks_the_cut() {
        assert_eq!(cut_text("short", 10), "short");
        assert_eq!(cut_text("abcdefghij", 6), "abc…");
        // "é" is 2 bytes, "🧗" 4: a cut never lands inside one.
        let cut = cut_text("éééé", 6);
        assert_eq!(cut, "é…");
        assert!(cut.len() <= 6);
        let cut = cut_text("🧗🧗🧗", 9);
        assert_eq!(cut, "🧗…");
        assert_eq!(cut_text("abc", 2), "");
    }

    #[test]
    fn fit_text_cuts_the_body_first_then_the_title() {
        let size = |t: &str, b: &str| 10 + t.len() + b.len();
        let (t, b) = fit_text("title", "a long body here", 25, size).unwrap_or_default();
        assert_eq!(t, "title");
        assert!(size(&t, &b) <= 25 && b.ends_with('…'), "{b}");
        let (t, b) = fit_text("a long title", "body", 16, size).unwrap_or_default();
        assert_eq!(b, "");
        assert!(size(&t, &b) <= 16, "{t}");
        assert_eq!(fit_text("t", "b", 5, size), None);
    }

    #[test]
    fn fit_text_keeps_as_much_as_fits_when_escapes_inflate_the_encoding() {
        let json_size =
            |t: &str, b: &str| serde_json::to_string(&(t, b)).map_or(usize::MAX, |s| s.len());
        let body = "\u{1}é🧗\"".repeat(100);
        let (t, b) = fit_text("x", &body, 200, json_size).unwrap_or_default();
        let size = json_size(&t, &b);
        // Within one escaped char (at most 6 bytes) of the limit.
        assert!(size <= 200 && size > 200 - 6, "{size}");
        assert!(body.starts_with(b.trim_end_matches('…')));
    }
}
