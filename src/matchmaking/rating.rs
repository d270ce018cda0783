//! Rating maths: Glicko-2 through `skillratings` for settled matches, the Elo win chance the
//! pairing policy weighs, and which climbers a settled match moved on the leaderboard.
//!
//! Rank is 1 + the number of climbers in the discipline with a strictly higher rating, so ties
//! share a rank. A settled match tells each player their rank whenever it changed (and always
//! on their first settled match), and tells every other climber whose rank changed because a
//! player crossed them: overtook them, or fell to or below them. Entering the leaderboard is not
//! crossing: a newcomer's first rating pushes the climbers below it down one place, but that
//! alone notifies no one — otherwise every first match would notify most of the leaderboard.

use skillratings::Outcomes;
use skillratings::glicko2::{Glicko2Config, Glicko2Rating, glicko2};

use crate::domain::{RankChange, Rating, UserId};

/// A climber's rating before their first settled match: the Glicko-2 defaults (1500, deviation
/// 350, volatility 0.06).
pub fn initial() -> Rating {
    from_glicko2(&Glicko2Rating::new(), 0)
}

/// One Glicko-2 game won by `winner`; returns `(winner_after, loser_after)`, each with one more
/// match counted.
pub fn settle(winner: &Rating, loser: &Rating) -> (Rating, Rating) {
    let (w, l) = glicko2(
        &to_glicko2(winner),
        &to_glicko2(loser),
        &Outcomes::WIN,
        &Glicko2Config::new(),
    );
    (
        from_glicko2(&w, winner.matches.saturating_add(1)),
        from_glicko2(&l, loser.matches.saturating_add(1)),
    )
}

/// The Elo expectation that a climber rated `a` beats one rated `b`: 1 / (1 + 10^((b - a) / 400)).
pub fn win_chance(a: f64, b: f64) -> f64 {
    1.0 / (1.0 + 10f64.powf((b - a) / 400.0))
}

fn to_glicko2(r: &Rating) -> Glicko2Rating {
    Glicko2Rating {
        rating: r.rating,
        deviation: r.deviation,
        volatility: r.volatility,
    }
}

fn from_glicko2(r: &Glicko2Rating, matches: u32) -> Rating {
    Rating {
        rating: r.rating,
        deviation: r.deviation,
        volatility: r.volatility,
        matches,
    }
}

/// What [`rank_changes`] needs from the leaderboard. Only a player who was rated before can
/// cross anyone, so the store reads the climbers between the lowest and the highest rating such
/// a player had ([`RankInputs::span`]) and counts those above; for a player rating outside that
/// span (a newcomer's first rating) it counts the climbers above it instead of reading them.
/// A match between two newcomers thus reads no climber at all, however crowded their ratings.
#[derive(Debug, Clone, PartialEq)]
pub struct RankInputs {
    /// Both players of the settled match: (user, rating before (None: unrated so far), rating after).
    pub players: [(UserId, Option<f64>, f64); 2],
    /// Every other rated climber whose rating lies in the span (bounds included); empty when
    /// there is no span. Entries naming a player are ignored.
    pub others_in_span: Vec<(UserId, f64)>,
    /// How many other rated climbers are rated strictly above the span's top.
    pub others_above_span: u32,
    /// For each player rating outside the span ([`RankInputs::counted`]): how many other rated
    /// climbers are rated strictly above it.
    pub others_above: Vec<(f64, u32)>,
}

impl RankInputs {
    /// `(lo, hi)`: the lowest and highest rating, before and after, of the players who were rated
    /// before; `None` when neither was. Nobody outside it can have been crossed.
    pub fn span(players: &[(UserId, Option<f64>, f64); 2]) -> Option<(f64, f64)> {
        players
            .iter()
            .filter_map(|(_, before, after)| before.map(|b| (b.min(*after), b.max(*after))))
            .reduce(|(lo, hi), (l, h)| (lo.min(l), hi.max(h)))
    }

    /// The player ratings outside the span, whose rank is counted rather than read.
    pub fn counted(players: &[(UserId, Option<f64>, f64); 2]) -> Vec<f64> {
        let span = Self::span(players);
        let mut outside: Vec<f64> = players
            .iter()
            .flat_map(|(_, before, after)| before.iter().copied().chain([*after]))
            .filter(|r| !span.is_some_and(|(lo, hi)| (lo..=hi).contains(r)))
            .collect();
        outside.sort_by(f64::total_cmp);
        outside.dedup();
        outside
    }
}

/// The rank moves a settled match caused: each player whose rank changed or who was unrated
/// before, then each other climber a player crossed whose rank changed (by user id). Passing a
/// climber upward while the other player drops below them leaves their rank alone: no entry.
pub fn rank_changes(inputs: &RankInputs) -> Vec<RankChange> {
    let players = &inputs.players;
    let is_player = |user: &UserId| players.iter().any(|(p, _, _)| p == user);
    let mut others: Vec<(&UserId, f64)> = inputs
        .others_in_span
        .iter()
        .filter(|(user, _)| !is_player(user))
        .map(|(user, rating)| (user, *rating))
        .collect();
    others.sort_by(|a, b| a.0.cmp(b.0));
    let mut descending: Vec<f64> = others.iter().map(|(_, r)| *r).collect();
    descending.sort_by(|a, b| b.total_cmp(a));
    let span = RankInputs::span(players);
    // The rank `rating` would have among the other climbers alone: counted by the store outside
    // the span, from the climbers read inside it.
    let rank_among_others = |rating: f64| -> u32 {
        let above = match span {
            Some((lo, hi)) if (lo..=hi).contains(&rating) => {
                let above_in_span = descending.partition_point(|r| *r > rating);
                u32::try_from(above_in_span)
                    .unwrap_or(u32::MAX)
                    .saturating_add(inputs.others_above_span)
            }
            _ => inputs
                .others_above
                .iter()
                .find(|(r, _)| *r == rating)
                .map_or(0, |(_, n)| *n),
        };
        above.saturating_add(1)
    };
    let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);

    let mut changes = Vec::new();
    for (i, (user, before, after)) in players.iter().enumerate() {
        let (_, other_before, other_after) = &players[1 - i];
        let old_rank = before.map(|b| {
            let passed_by_other = other_before.is_some_and(|ob| ob > b);
            rank_among_others(b).saturating_add(u32::from(passed_by_other))
        });
        let new_rank = rank_among_others(*after).saturating_add(u32::from(*other_after > *after));
        if old_rank != Some(new_rank) {
            changes.push(RankChange {
                user: user.clone(),
                old_rank,
                new_rank,
                rating: *after,
            });
        }
    }
    for (user, rating) in others {
        let crossed = players
            .iter()
            .any(|(_, before, after)| before.is_some_and(|b| (b > rating) != (*after > rating)));
        if !crossed {
            continue;
        }
        let base = rank_among_others(rating);
        let above_before = players
            .iter()
            .filter(|(_, before, _)| before.is_some_and(|b| b > rating))
            .count();
        let above_after = players.iter().filter(|(_, _, a)| *a > rating).count();
        if above_before != above_after {
            changes.push(RankChange {
                user: user.clone(),
                old_rank: Some(base.saturating_add(count(above_before))),
                new_rank: base.saturating_add(count(above_after)),
                rating,
            });
        }
    }
    changes
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn user(s: &str) -> UserId {
        UserId::parse(s).unwrap()
    }

    fn rated(r: f64) -> Rating {
        Rating {
            rating: r,
            deviation: 80.0,
            volatility: 0.06,
            matches: 12,
        }
    }

    fn change(u: &str, old: Option<u32>, new: u32, rating: f64) -> RankChange {
        RankChange {
            user: user(u),
            old_rank: old,
            new_rank: new,
            rating,
        }
    }

    #[test]
    fn a_new_climber_starts_at_the_glicko2_defaults() {
        assert_eq!(
            initial(),
            Rating {
                rating: 1500.0,
                deviation: 350.0,
                volatility: 0.06,
                matches: 0
            }
        );
    }

    #[test]
    fn a_win_between_newcomers_moves_both_by_the_same_amount_and_shrinks_deviations() {
        let (winner, loser) = settle(&initial(), &initial());

        // The values skillratings documents for this game.
        assert_eq!(winner.rating.round(), 1662.0);
        assert_eq!(loser.rating.round(), 1338.0);
        assert_eq!(winner.deviation.round(), 290.0);
        assert!((winner.volatility - 0.059_999_675_372_338_14).abs() < 1e-12);
        assert!(((winner.rating - 1500.0) - (1500.0 - loser.rating)).abs() < 1e-9);
        assert!((winner.deviation - loser.deviation).abs() < 1e-9);
        assert!(winner.deviation < 350.0 && loser.deviation < 350.0);
        assert_eq!((winner.matches, loser.matches), (1, 1));
    }

    #[test]
    fn an_upset_moves_ratings_more_than_an_expected_win() {
        let (strong, weak) = (rated(1800.0), rated(1400.0));

        let (expected_w, _) = settle(&strong, &weak);
        let (upset_w, upset_l) = settle(&weak, &strong);

        assert!(upset_w.rating - weak.rating > expected_w.rating - strong.rating);
        assert!(upset_l.rating < strong.rating);
        assert_eq!((upset_w.matches, upset_l.matches), (13, 13));
    }

    #[test]
    fn win_chance_is_the_elo_expectation() {
        assert!((win_chance(1500.0, 1500.0) - 0.5).abs() < 1e-12);
        assert!((win_chance(1700.0, 1500.0) - 0.759_746_926_647_958).abs() < 1e-12);
        assert!((win_chance(1500.0, 1900.0) - 1.0 / 11.0).abs() < 1e-12);
        assert!((win_chance(1623.0, 1411.0) + win_chance(1411.0, 1623.0) - 1.0).abs() < 1e-12);
    }

    #[test]
    fn the_span_covers_both_players_before_and_after_ratings() {
        let players = [
            (user("a"), Some(1500.0), 1530.0),
            (user("b"), Some(1520.0), 1490.0),
        ];
        assert_eq!(RankInputs::span(&players), Some((1490.0, 1530.0)));
        assert_eq!(RankInputs::counted(&players), Vec::<f64>::new());
        // A newcomer crosses nobody: their first rating is counted, not spanned.
        let newcomer = [(user("a"), None, 1662.0), (user("b"), Some(1400.0), 1380.0)];
        assert_eq!(RankInputs::span(&newcomer), Some((1380.0, 1400.0)));
        assert_eq!(RankInputs::counted(&newcomer), [1662.0]);
        let newcomers = [(user("a"), None, 1662.0), (user("b"), None, 1338.0)];
        assert_eq!(RankInputs::span(&newcomers), None);
        assert_eq!(RankInputs::counted(&newcomers), [1338.0, 1662.0]);
    }

    #[test]
    fn a_winner_who_overtakes_climbers_tells_them_and_both_players() {
        // Leaderboard: x 1700 (1), c 1520 (2), w 1500 (3), d 1450 (4), l 1400 (5).
        let inputs = RankInputs {
            players: [
                (user("w"), Some(1500.0), 1560.0),
                (user("l"), Some(1400.0), 1380.0),
            ],
            others_in_span: vec![(user("d"), 1450.0), (user("c"), 1520.0)],
            others_above_span: 1,
            others_above: Vec::new(),
        };

        let got = rank_changes(&inputs);

        // w passes c; l stays last; d is not crossed.
        assert_eq!(
            got,
            [
                change("w", Some(3), 2, 1560.0),
                change("c", Some(2), 3, 1520.0)
            ]
        );
    }

    #[test]
    fn a_climber_passed_upward_by_one_player_and_downward_by_the_other_hears_nothing() {
        // w 1480 climbs past o 1500; l 1520 falls below o.
        let inputs = RankInputs {
            players: [
                (user("w"), Some(1480.0), 1530.0),
                (user("l"), Some(1520.0), 1470.0),
            ],
            others_in_span: vec![(user("o"), 1500.0)],
            others_above_span: 0,
            others_above: Vec::new(),
        };

        let got = rank_changes(&inputs);

        assert_eq!(
            got,
            [
                change("w", Some(3), 1, 1530.0),
                change("l", Some(1), 3, 1470.0)
            ]
        );
    }

    #[test]
    fn a_first_match_always_tells_the_player_but_entering_is_not_passing() {
        // Newcomers n (wins) and m; o is rated 1600 and is not crossed by anyone rated before.
        let players = [(user("n"), None, 1662.0), (user("m"), None, 1338.0)];
        // Nobody was rated before: nothing is read, the climbers above each rating are counted.
        let inputs = RankInputs {
            others_in_span: Vec::new(),
            others_above_span: 0,
            others_above: vec![(1338.0, 3), (1662.0, 2)],
            players,
        };

        let got = rank_changes(&inputs);

        assert_eq!(
            got,
            [change("n", None, 3, 1662.0), change("m", None, 5, 1338.0)]
        );
    }

    #[test]
    fn ties_share_a_rank_and_reaching_a_tie_is_a_move() {
        // o and w tie at 1500 after the match; w was below o before.
        let inputs = RankInputs {
            players: [
                (user("w"), Some(1480.0), 1500.0),
                (user("l"), Some(1600.0), 1590.0),
            ],
            others_in_span: vec![(user("o"), 1500.0)],
            others_above_span: 0,
            others_above: Vec::new(),
        };

        let got = rank_changes(&inputs);

        // w rises from 3 to 2 (sharing it with o); o keeps rank 2: no entry for o.
        assert_eq!(got, [change("w", Some(3), 2, 1500.0)]);
    }

    #[test]
    fn a_player_listed_among_the_others_is_not_counted_twice() {
        let inputs = RankInputs {
            players: [
                (user("w"), Some(1500.0), 1550.0),
                (user("l"), Some(1520.0), 1480.0),
            ],
            others_in_span: vec![(user("w"), 1500.0), (user("l"), 1520.0)],
            others_above_span: 0,
            others_above: Vec::new(),
        };

        let got = rank_changes(&inputs);

        assert_eq!(
            got,
            [
                change("w", Some(2), 1, 1550.0),
                change("l", Some(1), 2, 1480.0)
            ]
        );
    }

    /// Ranks computed from the whole leaderboard.
    fn rank_in(board: &[f64], rating: f64) -> u32 {
        1 + board.iter().filter(|r| **r > rating).count() as u32
    }

    /// The rank changes recomputed from the full leaderboard, by definition.
    fn brute_force(
        players: &[(UserId, Option<f64>, f64); 2],
        others: &[(UserId, f64)],
    ) -> Vec<RankChange> {
        let mut before: Vec<f64> = others.iter().map(|(_, r)| *r).collect();
        let mut after = before.clone();
        before.extend(players.iter().filter_map(|(_, b, _)| *b));
        after.extend(players.iter().map(|(_, _, a)| *a));
        let mut expected = Vec::new();
        for (user, b, a) in players {
            let old = b.map(|b| rank_in(&before, b));
            let new = rank_in(&after, *a);
            if old != Some(new) {
                expected.push(RankChange {
                    user: user.clone(),
                    old_rank: old,
                    new_rank: new,
                    rating: *a,
                });
            }
        }
        let mut sorted = others.to_vec();
        sorted.sort_by(|x, y| x.0.cmp(&y.0));
        for (user, r) in sorted {
            let old = rank_in(&before, r);
            let new = rank_in(&after, r);
            let crossed = players
                .iter()
                .any(|(_, b, a)| b.is_some_and(|b| (b > r) != (*a > r)));
            if old != new && crossed {
                expected.push(RankChange {
                    user,
                    old_rank: Some(old),
                    new_rank: new,
                    rating: r,
                });
            }
        }
        expected
    }

    /// Ratings on a coarse grid, so that ties and span edges are common.
    fn grid_rating() -> impl Strategy<Value = f64> {
        (0u32..24).prop_map(|step| 1350.0 + 12.5 * f64::from(step))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn rank_changes_match_the_full_leaderboard(
            others in proptest::collection::vec(grid_rating(), 0..40)
                .prop_map(|rs| rs.into_iter().enumerate()
                    .map(|(i, r)| (UserId::parse(format!("o{i:02}")).unwrap(), r))
                    .collect::<Vec<_>>())
                .prop_shuffle(),
            a_before in proptest::option::weighted(0.8, grid_rating()),
            b_before in proptest::option::weighted(0.8, grid_rating()),
            a_after in grid_rating(),
            b_after in grid_rating(),
        ) {
            let players = [
                (user("pa"), a_before, a_after),
                (user("pb"), b_before, b_after),
            ];
            // As the store builds them.
            let above = |x: f64| others.iter().filter(|(_, r)| *r > x).count() as u32;
            let (others_in_span, others_above_span) = match RankInputs::span(&players) {
                Some((lo, hi)) => (
                    others.iter().filter(|(_, r)| (lo..=hi).contains(r)).cloned().collect(),
                    above(hi),
                ),
                None => (Vec::new(), 0),
            };
            let inputs = RankInputs {
                players: players.clone(),
                others_in_span,
                others_above_span,
                others_above: RankInputs::counted(&players)
                    .into_iter()
                    .map(|r| (r, above(r)))
                    .collect(),
            };

            let got = rank_changes(&inputs);

            prop_assert_eq!(&got, &brute_force(&players, &others));
            if a_before.is_some() && b_before.is_some() {
                // With no newcomer, every climber whose rank changed is told.
                let moved = others.iter().filter(|(_, r)| {
                    let above = |x: Option<f64>| x.is_some_and(|x| x > *r);
                    u8::from(above(a_before)) + u8::from(above(b_before))
                        != u8::from(a_after > *r) + u8::from(b_after > *r)
                }).count();
                prop_assert_eq!(got.iter().filter(|c| !c.user.as_str().starts_with('p')).count(), moved);
            }
        }
    }
}
