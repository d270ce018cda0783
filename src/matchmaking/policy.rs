//! Rating window policy: how far apart two ratings may be, as a function of how long a ticket has
//! waited and of how often fair opponents for its rating join its queue.
//!
//! A ticket's window is `initial_window` for a *hold* time, then widens by `step` at once and by
//! `widen_per_sec` after that, up to `max_window`. The hold is decided when the ticket joins:
//! `sparse_hold_ms` in a sparse rating band, where fewer than `sparse_share` of the queue's joins
//! are fair opponents (such a player would wait long for fairness anyway, so they give it up early
//! and do not lengthen everyone's waiting tail); in a dense band, `hold_ms` scaled by
//! `(queue rate / hold_rate_per_sec) ^ hold_rate_exponent` (in a busy queue few dense-band players
//! are still waiting when the hold ends, so holding them longer is cheap), up to `max_hold_ms`.
//! Join rates are estimated per queue and rating band from the joins the pool has seen
//! ([`ArrivalRates`]), so a window is a pure function of the calls made and their `now` values.
//!
//! The linear and FlexMatch-style step policies Belay is compared with are special cases:
//! [`Policy::linear`] and [`Policy::steps`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::Millis;

/// Largest rating gap with a predicted win chance of at least 40% on the Elo scale
/// (`400 * log10(1.5)`): the issue's definition of a fair match.
pub const FAIR_GAP: f64 = 70.0;

/// How far apart two ratings may be, as a function of how long a ticket has waited (and of how
/// often fair opponents for its rating join). Sits flattened in the server's `[matchmaking]`
/// config section. Windows never shrink: a negative `step` or `widen_per_sec` counts as 0.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct Policy {
    /// Rating gap every ticket accepts from the moment it joins (70 = a 40–60% win chance).
    pub initial_window: f64,
    /// How long a ticket keeps `initial_window` before widening, in ms, in a dense rating band of
    /// a queue that receives `hold_rate_per_sec` joins per second (scaled for other rates).
    pub hold_ms: Millis,
    /// Queue join rate (per second) at which a dense band's hold is exactly `hold_ms`.
    pub hold_rate_per_sec: f64,
    /// How the dense hold scales with the queue's join rate: `hold_ms * (rate /
    /// hold_rate_per_sec) ^ hold_rate_exponent`; 0 keeps `hold_ms` at every rate.
    pub hold_rate_exponent: f64,
    /// Longest dense hold the scaling may give, in ms; it never goes below
    /// `hold_ms.min(sparse_hold_ms)`.
    pub max_hold_ms: Millis,
    /// The hold instead, in ms, of a ticket in a sparse rating band (see `sparse_share`).
    pub sparse_hold_ms: Millis,
    /// A rating band is sparse when fewer than this share of the queue's joins are within
    /// `fair_gap` of it; 0 turns the rule off (every ticket holds `hold_ms`).
    pub sparse_share: f64,
    /// Rating gap added at once when the hold ends (a FlexMatch-style expansion step).
    pub step: f64,
    /// How fast the window widens after the hold, in rating points per second.
    pub widen_per_sec: f64,
    /// Widest window a ticket ever accepts (`inf`: no cap, so nobody waits forever while others
    /// wait too); players further than this from everyone keep waiting.
    pub max_window: f64,
    /// Rating gap that counts as fair when measuring how often fair opponents join.
    pub fair_gap: f64,
    /// Width of the rating bands in which joins are counted.
    pub band_width: f64,
    /// Half-life of the join counts, in ms: how fast the estimate forgets old joins.
    pub rate_half_life_ms: Millis,
}

impl Default for Policy {
    /// Belay's tuned default (docs/MATCHMAKING.md has the simulation behind it).
    fn default() -> Self {
        Self {
            initial_window: FAIR_GAP,
            hold_ms: 26_000,
            hold_rate_per_sec: 0.5,
            hold_rate_exponent: 0.5,
            max_hold_ms: 90_000,
            sparse_hold_ms: 2_000,
            sparse_share: 0.0475,
            step: 0.0,
            widen_per_sec: 400.0,
            max_window: f64::INFINITY,
            fair_gap: FAIR_GAP,
            band_width: 20.0,
            rate_half_life_ms: 30 * 60 * 1000,
        }
    }
}

impl Policy {
    /// A window that starts at `initial` and widens by `per_sec` rating points per second up
    /// to `cap`, whatever the arrival rate.
    pub fn linear(initial: f64, per_sec: f64, cap: f64) -> Self {
        Self {
            initial_window: initial,
            hold_ms: 0,
            hold_rate_exponent: 0.0,
            sparse_hold_ms: 0,
            sparse_share: 0.0,
            step: 0.0,
            widen_per_sec: per_sec,
            max_window: cap,
            ..Self::default()
        }
    }

    /// FlexMatch-style expansion: `narrow` until a ticket has waited `after_ms`, then `wide`.
    pub fn steps(narrow: f64, after_ms: Millis, wide: f64) -> Self {
        Self {
            initial_window: narrow,
            hold_ms: after_ms,
            hold_rate_exponent: 0.0,
            sparse_hold_ms: after_ms,
            sparse_share: 0.0,
            step: (wide - narrow).max(0.0),
            widen_per_sec: 0.0,
            max_window: wide.max(narrow),
            ..Self::default()
        }
    }

    /// The hold of a ticket that joins where fair opponents join at `fair_per_sec` and the whole
    /// queue at `queue_per_sec`. Sparse bands give up fairness early: their players would wait
    /// long for a fair opponent anyway, and holding them would only lengthen the waiting tail.
    /// Dense bands hold longer in busier queues, where few players are left when the hold ends.
    /// Never shorter than `hold_ms.min(sparse_hold_ms)`.
    pub fn hold_for(&self, fair_per_sec: f64, queue_per_sec: f64) -> Millis {
        if fair_per_sec < self.sparse_share * queue_per_sec {
            return self.sparse_hold_ms;
        }
        let scaled = self.hold_rate_exponent != 0.0
            && self.hold_rate_per_sec > 0.0
            && queue_per_sec > 0.0
            && queue_per_sec.is_finite();
        if !scaled {
            // Before anyone has joined (no rate yet), or scaling turned off.
            return self.hold_ms;
        }
        let factor = (queue_per_sec / self.hold_rate_per_sec).powf(self.hold_rate_exponent);
        let hold = (self.hold_ms.max(0) as f64 * factor).min(self.max_hold_ms.max(0) as f64);
        // NaN (from a NaN exponent) falls to the floor; `as` saturates.
        let floor = self.hold_ms.min(self.sparse_hold_ms).max(0);
        if hold.is_nan() {
            return floor;
        }
        (hold as Millis).max(floor)
    }

    /// The window of a ticket with the given hold after it has waited `waited` ms.
    pub fn window(&self, hold: Millis, waited: Millis) -> f64 {
        let hold = hold.max(0);
        if waited < hold {
            return self.initial_window.min(self.max_window);
        }
        let widened = waited.saturating_sub(hold) as f64 / 1000.0 * self.widen_per_sec.max(0.0);
        (self.initial_window + self.step.max(0.0) + widened).min(self.max_window)
    }

    /// The shortest wait after which a ticket with the given hold accepts `gap`, if it ever does.
    pub fn wait_for_gap(&self, hold: Millis, gap: f64) -> Option<Millis> {
        if gap <= self.window(hold, Millis::MIN) {
            return Some(0);
        }
        // NaN gaps (non-finite ratings) never fit.
        if gap.is_nan() || gap > self.max_window {
            return None;
        }
        let hold = hold.max(0);
        let after_step = self.initial_window + self.step.max(0.0);
        let guess = if gap <= after_step {
            hold
        } else if self.widen_per_sec > 0.0 {
            let secs = (gap - after_step) / self.widen_per_sec;
            // Far beyond any real wait: treat as never rather than overflow.
            if secs.is_nan() || secs >= 1e12 {
                return None;
            }
            hold.saturating_add((secs * 1000.0).ceil() as Millis)
        } else {
            return None;
        };
        // Float rounding may leave the window a hair short at `guess`: step until it fits, so
        // a scheduled wake-up always finds the gap acceptable.
        (0..4)
            .map(|extra| guess.saturating_add(extra))
            .find(|&wait| gap <= self.window(hold, wait))
    }
}

/// Scaled join counts are brought back to the current time once their scale passes this.
const RESCALE_ABOVE: f64 = 1e100;

/// Exponentially decaying counts of joins per rating band of one queue, read as joins per
/// second. A join at `t` adds `e^((t - origin) / tau)` rather than 1, so that decaying all counts
/// to `now` takes one multiplication when they are read, not one `exp` per band.
#[derive(Debug, Clone, Default)]
pub struct ArrivalRates {
    bands: BTreeMap<i64, f64>,
    total: f64,
    /// Reference time of the scaled counts (None before the first join).
    origin: Option<Millis>,
    /// Time of the first join: early on, the counts cover only the time since.
    first_at: Millis,
}

impl ArrivalRates {
    /// Counts a join at `rating`; non-finite ratings are not counted.
    pub fn record(&mut self, policy: &Policy, rating: f64, now: Millis) {
        if !rating.is_finite() {
            return;
        }
        let origin = match self.origin {
            Some(origin) => origin,
            None => {
                self.first_at = now;
                now
            }
        };
        let tau = tau_ms(policy);
        let mut scale = ((now - origin).max(0) as f64 / tau).exp();
        if scale > RESCALE_ABOVE {
            // An infinite scale (a very long pause) shrinks every count to 0, as it should.
            let shrink = 1.0 / scale;
            self.bands.values_mut().for_each(|w| *w *= shrink);
            self.total *= shrink;
            self.origin = Some(now);
            scale = 1.0;
        } else {
            self.origin = Some(origin);
        }
        *self.bands.entry(band_of(policy, rating)).or_insert(0.0) += scale;
        self.total += scale;
    }

    /// Estimated joins per second with a rating within `half_width` of `rating`, and in the
    /// whole queue.
    pub fn per_sec(
        &self,
        policy: &Policy,
        rating: f64,
        half_width: f64,
        now: Millis,
    ) -> (f64, f64) {
        let Some(origin) = self.origin else {
            return (0.0, 0.0);
        };
        let tau = tau_ms(policy);
        // Exponential decay counts the last `tau` on average; early on, only what has elapsed.
        let elapsed = (now - self.first_at).max(1) as f64;
        let span_ms = tau * (1.0 - (-elapsed / tau).exp());
        let to_per_sec = (-((now - origin).max(0) as f64) / tau).exp() / span_ms * 1000.0;
        let total = self.total * to_per_sec;
        if !rating.is_finite() || half_width.is_nan() || half_width < 0.0 {
            return (0.0, total);
        }
        let (lo, hi) = (rating - half_width, rating + half_width);
        let width = band_width(policy);
        let mut near = 0.0;
        for (&band, &weight) in self.bands.range(band_of(policy, lo)..=band_of(policy, hi)) {
            // Count the part of the band inside [lo, hi], as if its joins were spread evenly.
            let start = band as f64 * width;
            let overlap = (hi.min(start + width) - lo.max(start)).max(0.0) / width;
            near += weight * overlap;
        }
        (near * to_per_sec, total)
    }
}

fn band_width(policy: &Policy) -> f64 {
    if policy.band_width > 0.0 {
        policy.band_width
    } else {
        FAIR_GAP
    }
}

fn band_of(policy: &Policy, rating: f64) -> i64 {
    // `as` saturates on huge values; callers pass finite ratings.
    (rating / band_width(policy)).floor() as i64
}

fn tau_ms(policy: &Policy) -> f64 {
    (policy.rate_half_life_ms.max(1) as f64) / std::f64::consts::LN_2
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_holds_then_widens_up_to_the_cap() {
        let policy = Policy {
            initial_window: 70.0,
            step: 30.0,
            widen_per_sec: 10.0,
            max_window: 200.0,
            ..Policy::default()
        };
        assert_eq!(policy.window(5_000, 0), 70.0);
        assert_eq!(policy.window(5_000, 4_999), 70.0);
        assert_eq!(policy.window(5_000, 5_000), 100.0);
        assert_eq!(policy.window(5_000, 7_000), 120.0);
        assert_eq!(policy.window(5_000, 60_000), 200.0);
    }

    #[test]
    fn wait_for_gap_is_the_first_wait_whose_window_fits() {
        let policy = Policy::linear(10.0, 3.0, 500.0);
        for gap in [0.0, 10.0, 10.001, 33.3, 100.0, 499.9, 500.0] {
            let Some(wait) = policy.wait_for_gap(0, gap) else {
                panic!("gap {gap} should fit eventually");
            };
            assert!(gap <= policy.window(0, wait), "gap {gap} at {wait}");
            if wait > 0 {
                assert!(gap > policy.window(0, wait - 1), "gap {gap} at {wait} - 1");
            }
        }
        assert_eq!(policy.wait_for_gap(0, 500.1), None);
        assert_eq!(policy.wait_for_gap(0, f64::NAN), None);
    }

    #[test]
    fn step_policy_jumps_from_narrow_to_wide_after_the_wait() {
        let policy = Policy::steps(50.0, 10_000, 200.0);
        assert_eq!(policy.window(policy.hold_for(0.0, 0.0), 9_999), 50.0);
        assert_eq!(policy.window(policy.hold_for(0.0, 0.0), 10_000), 200.0);
        assert_eq!(policy.wait_for_gap(10_000, 150.0), Some(10_000));
        assert_eq!(policy.wait_for_gap(10_000, 201.0), None);
    }

    #[test]
    fn sparse_bands_give_up_the_hold() {
        let policy = Policy::default();
        // At the reference queue rate (0.5 joins/s), a dense band holds `hold_ms`.
        assert_eq!(policy.hold_for(0.08, 0.5), policy.hold_ms);
        assert_eq!(policy.hold_for(0.005, 0.5), policy.sparse_hold_ms);
        // Before anyone has joined, nothing counts as sparse.
        assert_eq!(policy.hold_for(0.0, 0.0), policy.hold_ms);
    }

    #[test]
    fn dense_holds_grow_with_the_queue_rate_up_to_the_cap() {
        let policy = Policy::default();
        // At the reference rate the hold is `hold_ms`; four times busier, twice as long.
        assert_eq!(policy.hold_for(0.1, 0.5), policy.hold_ms);
        assert_eq!(policy.hold_for(0.4, 2.0), 2 * policy.hold_ms);
        assert_eq!(policy.hold_for(100.0, 500.0), policy.max_hold_ms);
        // Quiet queues hold shorter, never below the sparse hold.
        assert!(policy.hold_for(0.02, 0.1) < policy.hold_ms);
        assert!(policy.hold_for(1e-9, 1e-8) >= policy.sparse_hold_ms);
        let flat = Policy {
            hold_rate_exponent: 0.0,
            ..Policy::default()
        };
        assert_eq!(flat.hold_for(0.4, 2.0), flat.hold_ms);
    }

    #[test]
    fn arrival_rate_estimate_matches_a_steady_stream() {
        let policy = Policy::default();
        let mut rates = ArrivalRates::default();
        // One join per second at rating 1500 for two hours.
        for second in 0..7_200 {
            rates.record(&policy, 1500.0, second * 1000);
        }
        let (near, total) = rates.per_sec(&policy, 1500.0, 70.0, 7_200_000);
        assert!((near - 1.0).abs() < 0.05, "estimated {near}/s");
        assert!((total - 1.0).abs() < 0.05, "estimated {total}/s in all");
        let (far, _) = rates.per_sec(&policy, 2500.0, 70.0, 7_200_000);
        assert_eq!(far, 0.0);
    }

    #[test]
    fn arrival_rates_forget_a_long_pause_without_overflowing() {
        let policy = Policy::default();
        let mut rates = ArrivalRates::default();
        rates.record(&policy, 1500.0, 0);
        // A year later: the old join has decayed to nothing, the scale has been reset.
        let year = 365 * 24 * 3_600_000;
        rates.record(&policy, 1500.0, year);
        let (near, total) = rates.per_sec(&policy, 1500.0, 70.0, year + 1_000);
        assert!(near.is_finite() && total.is_finite());
        assert!(near > 0.0 && near <= total, "near {near}, total {total}");
    }

    #[test]
    fn policy_reads_from_a_partial_config_section() {
        let policy: Policy = serde_json::from_str(r#"{"hold_ms": 1000}"#).unwrap();
        assert_eq!(policy.hold_ms, 1000);
        assert_eq!(policy.max_window, Policy::default().max_window);
    }
}
