//! The store's decisions, written once for every backend: which cursor an event gets, when a
//! retried key is a duplicate, how likes collapse, how a settlement moves ratings and ranks, and
//! what counts as a first send or a personal record. A backend reads and writes rows through
//! [`PlayTx`] and [`GroupTx`]; it never decides.
//!
//! A group's order is fixed: the changes in order (a settlement or an ascent locks its climbers'
//! head rows, reads, decides and writes its ratings or ascent at once; rows written only by key
//! are folded to their net effect), then the head rows of every user the group writes to are
//! locked in user-id order, then the events' look-ups, then every append decision in memory
//! ([`plan_appends`]), then the folded rows and the appends' rows.

use std::collections::{HashMap, HashSet};

use anyhow::Context;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{AppendOutcome, Appended, Fenced, MatchmakerFence};
use crate::domain::event::Performance;
use crate::domain::{
    AscentOutcome, AscentResult, Challenge, ChangeOutcome, Discipline, Event, LeaderboardEntry,
    Match, NewAscent, NewEvent, Notification, QueuedTicket, Rating, Settlement, UserId,
};
use crate::matchmaking::rating::{self, RankInputs};

/// A stored notification with the columns the decisions need.
#[derive(Debug, Clone)]
pub(crate) struct Stored {
    pub user: UserId,
    pub notification: Notification,
    pub collapse_key: Option<String>,
}

/// What a group of appends reads before it decides, all under the users' head-row locks.
#[derive(Debug, Default)]
pub(crate) struct Found {
    /// The last cursor of each user of the group (0 for a user without events yet).
    pub heads: HashMap<String, i64>,
    /// `(user, idempotency key)` seen before → the notification it made.
    pub keys: HashMap<(String, String), Uuid>,
    /// The notifications those keys point at, and the unread ones that new events collapse into.
    pub rows: Vec<Stored>,
}

/// A collapsed notification that moves to a new cursor.
#[derive(Debug, Clone)]
pub(crate) struct Moved {
    pub id: Uuid,
    pub cursor: i64,
    /// The event's `data` as stored.
    pub data: String,
}

/// A user's head row after the group: its new last cursor and how many unread it gained.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HeadMove {
    pub user: String,
    pub last_cursor: i64,
    pub created: i64,
}

/// A new notification row.
#[derive(Debug, Clone)]
pub(crate) struct NewRow {
    pub user: UserId,
    pub notification: Notification,
    pub collapse_key: Option<String>,
    /// The event's `data` as stored.
    pub data: String,
}

/// Every row a group of appends writes; a backend writes each list with a fixed number of
/// statements.
#[derive(Debug, Default)]
pub(crate) struct AppendWrites {
    pub new_rows: Vec<NewRow>,
    pub moved: Vec<Moved>,
    /// In user-id order.
    pub heads: Vec<HeadMove>,
    /// `(user, key, notification id)`.
    pub keys: Vec<(String, String, Uuid)>,
    /// Push jobs of the new events, one per device of their user.
    pub push_jobs: Vec<super::push::JobRow>,
}

/// The `(user, idempotency key)` pairs of a group, to look up.
pub(crate) fn keyed_pairs(items: &[&NewEvent]) -> Vec<(String, String)> {
    items
        .iter()
        .filter_map(|i| {
            i.idempotency_key
                .as_ref()
                .map(|k| (i.user.to_string(), k.to_string()))
        })
        .collect()
}

/// The `(user, collapse key)` pairs of a group: unread notifications these may collapse into.
pub(crate) fn collapsible_pairs(items: &[&NewEvent]) -> Vec<(String, String)> {
    items
        .iter()
        .filter_map(|i| i.event.collapse_key().map(|k| (i.user.to_string(), k)))
        .collect()
}

/// The users of a group, sorted and without repeats: the order their head rows are locked in,
/// so that two writers locking overlapping users never wait for each other in a cycle.
pub(crate) fn users_of(items: &[&NewEvent]) -> Vec<String> {
    let mut users: Vec<String> = items.iter().map(|i| i.user.to_string()).collect();
    users.sort_unstable();
    users.dedup();
    users
}

/// A notification in the group's working set.
struct Touched {
    stored: Stored,
    /// Not in the database before this group.
    is_new: bool,
    /// Must be written.
    changed: bool,
}

/// Decides every append of a group, in order: a key seen before is a duplicate of what it made;
/// a like of a post whose like is still unread collapses into it and moves it to a new cursor;
/// anything else is a new notification. Each user's cursors follow on from their head, gapless.
pub(crate) fn plan_appends(
    items: &[&NewEvent],
    found: Found,
    now: DateTime<Utc>,
) -> anyhow::Result<(Vec<Appended>, AppendWrites)> {
    let Found {
        mut heads,
        keys: mut seen_keys,
        rows: stored,
    } = found;
    let mut rows: HashMap<Uuid, Touched> = HashMap::with_capacity(stored.len() + items.len());
    let mut open: HashMap<(String, String), Uuid> = HashMap::new();
    for row in stored {
        if let Some(key) = &row.collapse_key
            && !row.notification.read
        {
            open.insert((row.user.to_string(), key.clone()), row.notification.id);
        }
        rows.entry(row.notification.id).or_insert(Touched {
            stored: row,
            is_new: false,
            changed: false,
        });
    }

    let mut out = Vec::with_capacity(items.len());
    let mut moved_users: HashSet<String> = HashSet::new();
    // New notifications per user: each is one more unread.
    let mut created: HashMap<String, i64> = HashMap::new();
    let mut new_keys: Vec<(String, String, Uuid)> = Vec::new();
    let mut new_order: Vec<Uuid> = Vec::new();
    for item in items {
        let user_key = item.user.to_string();
        let idem = item
            .idempotency_key
            .as_ref()
            .map(|k| (user_key.clone(), k.to_string()));
        // A key whose notification retention has removed counts as expired: the event is
        // written again, and the key taken over (the backends write keys as upserts).
        let seen = idem
            .as_ref()
            .and_then(|k| seen_keys.get(k))
            .and_then(|id| rows.get(id));
        if let Some(row) = seen {
            out.push(Appended {
                user: item.user.clone(),
                notification: row.stored.notification.clone(),
                outcome: AppendOutcome::Duplicate,
            });
            continue;
        }
        moved_users.insert(user_key.clone());
        let head = heads.entry(user_key.clone()).or_insert(0);
        *head += 1;
        let cursor = crate::domain::Cursor(*head);
        let collapse_key = item.event.collapse_key();
        let target = collapse_key
            .as_ref()
            .and_then(|k| open.get(&(user_key.clone(), k.clone())));
        let (notification, outcome) = match target.and_then(|id| rows.get_mut(id)) {
            Some(row) => {
                let n = &mut row.stored.notification;
                let previous = n.event.clone();
                n.event = item.event.clone().collapse_onto(previous);
                n.cursor = cursor;
                n.updated_at = now;
                row.changed = true;
                (n.clone(), AppendOutcome::Collapsed)
            }
            None => {
                let n = Notification {
                    id: Uuid::now_v7(),
                    cursor,
                    event: item.event.clone(),
                    created_at: now,
                    updated_at: now,
                    read: false,
                };
                if let Some(key) = &collapse_key {
                    open.insert((user_key.clone(), key.clone()), n.id);
                }
                *created.entry(user_key.clone()).or_insert(0) += 1;
                new_order.push(n.id);
                rows.insert(
                    n.id,
                    Touched {
                        stored: Stored {
                            user: item.user.clone(),
                            notification: n.clone(),
                            collapse_key,
                        },
                        is_new: true,
                        changed: true,
                    },
                );
                (n, AppendOutcome::Created)
            }
        };
        if let Some((user, key)) = idem {
            seen_keys.insert((user.clone(), key.clone()), notification.id);
            new_keys.push((user, key, notification.id));
        }
        out.push(Appended {
            user: item.user.clone(),
            notification,
            outcome,
        });
    }

    let mut writes = AppendWrites {
        keys: new_keys,
        ..AppendWrites::default()
    };
    for id in &new_order {
        if let Some(row) = rows.remove(id) {
            let data = row.stored.notification.event.data_json_text()?;
            writes.new_rows.push(NewRow {
                user: row.stored.user,
                notification: row.stored.notification,
                collapse_key: row.stored.collapse_key,
                data,
            });
        }
    }
    let mut moved: Vec<&Touched> = rows.values().filter(|r| r.changed && !r.is_new).collect();
    moved.sort_by_key(|row| row.stored.notification.id);
    for row in moved {
        let n = &row.stored.notification;
        writes.moved.push(Moved {
            id: n.id,
            cursor: n.cursor.0,
            data: n.event.data_json_text()?,
        });
    }
    let mut users: Vec<String> = moved_users.into_iter().collect();
    users.sort_unstable();
    writes.heads = users
        .into_iter()
        .map(|user| HeadMove {
            last_cursor: heads.get(&user).copied().unwrap_or(0),
            created: created.get(&user).copied().unwrap_or(0),
            user,
        })
        .collect();
    Ok((out, writes))
}

/// Matchmaking rows that are only written by key, read by nothing in the group and cause no
/// events (climbers, matches, challenges, queue tickets), held back and folded to their net
/// effect: the last write of each key wins. A backend writes them with a few multi-row
/// statements, with the group's other writes at the end.
#[derive(Default)]
pub(crate) struct Folded<'a> {
    pub climbers: HashSet<&'a str>,
    pub matches: HashMap<Uuid, &'a Match>,
    pub challenges: HashMap<Uuid, &'a Challenge>,
    /// `None`: the ticket is dropped.
    pub tickets: HashMap<&'a str, Option<&'a QueuedTicket>>,
}

impl<'a> Folded<'a> {
    /// Takes what is held, in a fixed order (by key), leaving nothing behind.
    pub(crate) fn take(&mut self) -> FoldedRows<'a> {
        let mut climbers: Vec<&str> = self.climbers.drain().collect();
        climbers.sort_unstable();
        let mut matches: Vec<&Match> = self.matches.drain().map(|(_, m)| m).collect();
        matches.sort_by_key(|m| m.match_id);
        let mut challenges: Vec<&Challenge> = self.challenges.drain().map(|(_, c)| c).collect();
        challenges.sort_by_key(|c| c.challenge_id);
        let mut tickets: Vec<(&str, Option<&QueuedTicket>)> = self.tickets.drain().collect();
        tickets.sort_by_key(|(user, _)| *user);
        let (saved, dropped): (Vec<_>, Vec<_>) =
            tickets.into_iter().partition(|(_, t)| t.is_some());
        FoldedRows {
            climbers,
            matches,
            challenges,
            saved_tickets: saved.into_iter().filter_map(|(_, t)| t).collect(),
            dropped_tickets: dropped.into_iter().map(|(user, _)| user).collect(),
        }
    }
}

/// The net effect of folded changes, each list in key order.
pub(crate) struct FoldedRows<'a> {
    pub climbers: Vec<&'a str>,
    pub matches: Vec<&'a Match>,
    pub challenges: Vec<&'a Challenge>,
    pub saved_tickets: Vec<&'a QueuedTicket>,
    pub dropped_tickets: Vec<&'a str>,
}

/// The rows a settlement or an ascent reads and writes, inside the group's transaction.
#[async_trait]
pub(crate) trait PlayTx: Send {
    /// Locks the head rows of `users` (sorted, no repeats), creating the missing ones, and
    /// returns each one's last cursor. The lock is held until the transaction ends: it is what
    /// serialises two writers (two nodes) on one user.
    async fn lock_heads(&mut self, users: &[String]) -> anyhow::Result<HashMap<String, i64>>;
    async fn rating(
        &mut self,
        user: &UserId,
        discipline: Discipline,
    ) -> anyhow::Result<Option<Rating>>;
    /// Climbers other than `except` rated within `[lo, hi]`.
    async fn rated_between(
        &mut self,
        discipline: Discipline,
        lo: f64,
        hi: f64,
        except: [&UserId; 2],
    ) -> anyhow::Result<Vec<(UserId, f64)>>;
    /// How many climbers other than `except` are rated above `hi`.
    async fn count_rated_above(
        &mut self,
        discipline: Discipline,
        hi: f64,
        except: [&UserId; 2],
    ) -> anyhow::Result<u32>;
    async fn save_rating(
        &mut self,
        user: &UserId,
        discipline: Discipline,
        rating: &Rating,
        now: DateTime<Utc>,
    ) -> anyhow::Result<()>;
    /// Whether the climber logged this route before.
    async fn sent_before(&mut self, ascent: &NewAscent) -> anyhow::Result<bool>;
    /// The climber's hardest graded ascent in the discipline: `(grade, difficulty)`.
    async fn hardest(&mut self, ascent: &NewAscent) -> anyhow::Result<Option<(String, i64)>>;
    /// The climber's fastest time in the discipline.
    async fn fastest(&mut self, ascent: &NewAscent) -> anyhow::Result<Option<i64>>;
    async fn insert_ascent(&mut self, ascent: &NewAscent) -> anyhow::Result<()>;
    /// Locks the matchmaker's fence row (created by the migrations) until the transaction ends
    /// and reads it: two leaders' transactions are serialised on it.
    async fn lock_fence(&mut self) -> anyhow::Result<MatchmakerFence>;
    async fn save_fence(&mut self, fence: &MatchmakerFence) -> anyhow::Result<()>;
}

/// What a group's fences leave in the fence row: the largest number offered, and the last
/// command id offered (or the stored one when none is). A number below the stored one refuses
/// the whole group, so the transaction changes nothing.
pub(crate) fn decide_fence(
    stored: MatchmakerFence,
    offered: &[(i64, Option<&str>)],
) -> Result<MatchmakerFence, Fenced> {
    let mut next = stored;
    for &(token, command) in offered {
        if token < next.token {
            return Err(Fenced {
                offered: token,
                recorded: next.token,
            });
        }
        next.token = token;
        if let Some(id) = command {
            next.last_command = Some(id.to_owned());
        }
    }
    Ok(next)
}

/// Checks and records a group's fences (see [`crate::domain::Change::Fence`]) before anything
/// else of the group is written: the fence row is locked first, so every matchmaking
/// transaction takes its locks in one order (fence, then head rows).
pub(crate) async fn fence(
    tx: &mut dyn PlayTx,
    offered: &[(i64, Option<&str>)],
) -> anyhow::Result<()> {
    let stored = tx.lock_fence().await?;
    let next = decide_fence(stored.clone(), offered)?;
    if next != stored {
        tx.save_fence(&next).await?;
    }
    Ok(())
}

/// Sorted ids of two climbers.
fn pair(a: &UserId, b: &UserId) -> Vec<String> {
    let mut users = vec![a.to_string(), b.to_string()];
    users.sort_unstable();
    users.dedup();
    users
}

/// Glicko-2 for both players, the rank moves it causes, and the events telling everyone. The
/// players' head rows are locked first, so that two settlements sharing a player (two nodes)
/// read and write that player's rating one after the other.
pub(crate) async fn settle<'a>(
    tx: &mut (dyn PlayTx + '_),
    folded: &mut Folded<'a>,
    m: &'a Match,
    now: DateTime<Utc>,
) -> anyhow::Result<(ChangeOutcome, Vec<NewEvent>)> {
    let winner = m.winner.clone().context("a settled match needs a winner")?;
    let loser = m
        .opponent_of(&winner)
        .context("the winner is not a player of the match")?
        .user_id
        .clone();
    let discipline = m.discipline;
    tx.lock_heads(&pair(&winner, &loser)).await?;
    let winner_before = tx.rating(&winner, discipline).await?;
    let loser_before = tx.rating(&loser, discipline).await?;
    let (winner_after, loser_after) = rating::settle(
        &winner_before.unwrap_or_else(rating::initial),
        &loser_before.unwrap_or_else(rating::initial),
    );
    let players = [
        (
            winner.clone(),
            winner_before.map(|r| r.rating),
            winner_after.rating,
        ),
        (
            loser.clone(),
            loser_before.map(|r| r.rating),
            loser_after.rating,
        ),
    ];
    // Climbers are read only where a player who was rated before can have crossed them; a
    // newcomer's rating is placed by a count.
    let (others_in_span, others_above_span) = match RankInputs::span(&players) {
        Some((lo, hi)) => (
            tx.rated_between(discipline, lo, hi, [&winner, &loser])
                .await?,
            tx.count_rated_above(discipline, hi, [&winner, &loser])
                .await?,
        ),
        None => (Vec::new(), 0),
    };
    let mut others_above = Vec::new();
    for rating in RankInputs::counted(&players) {
        let above = tx
            .count_rated_above(discipline, rating, [&winner, &loser])
            .await?;
        others_above.push((rating, above));
    }
    let rank_changes = rating::rank_changes(&RankInputs {
        players,
        others_in_span,
        others_above_span,
        others_above,
    });
    for (user, r) in [(&winner, &winner_after), (&loser, &loser_after)] {
        tx.save_rating(user, discipline, r, now).await?;
    }
    // The settled match is the last word on it: an earlier save of it in this group is folded
    // away, and it is written with the group's other rows.
    folded.matches.insert(m.match_id, m);

    // Before and after, in the match's player order.
    let ratings: Vec<(UserId, Rating, Rating)> = m
        .players
        .iter()
        .map(|p| {
            let (before, after) = if p.user_id == winner {
                (winner_before, winner_after)
            } else {
                (loser_before, loser_after)
            };
            (
                p.user_id.clone(),
                before.unwrap_or_else(rating::initial),
                after,
            )
        })
        .collect();
    let mut events = Vec::with_capacity(2 + rank_changes.len());
    for (user, _, after) in &ratings {
        events.push(NewEvent {
            user: user.clone(),
            event: Event::MatchResult {
                match_id: m.match_id,
                winner: winner.clone(),
                rating: after.rating,
            },
            idempotency_key: None,
        });
    }
    for change in &rank_changes {
        events.push(NewEvent {
            user: change.user.clone(),
            event: Event::RankChanged {
                discipline,
                old_rank: change.old_rank,
                new_rank: change.new_rank,
                rating: change.rating,
            },
            idempotency_key: None,
        });
    }
    Ok((
        ChangeOutcome::Settled(Settlement {
            ratings,
            rank_changes,
        }),
        events,
    ))
}

/// Records an ascent; a first send and a new best are told to the climber. The climber's head
/// row is locked first, so that two ascents of one climber (two nodes) decide one after the other.
pub(crate) async fn ascent(
    tx: &mut (dyn PlayTx + '_),
    a: &NewAscent,
) -> anyhow::Result<(ChangeOutcome, Vec<NewEvent>)> {
    tx.lock_heads(&[a.user.to_string()]).await?;
    let first_send = !tx.sent_before(a).await?;
    let (previous, record) = match &a.result {
        AscentResult::Grade(grade) => match tx.hardest(a).await? {
            Some((text, difficulty)) => (
                Some(Performance::Grade(text)),
                i64::from(grade.difficulty()) > difficulty,
            ),
            None => (None, true),
        },
        AscentResult::TimeMs(ms) => {
            match tx.fastest(a).await?.and_then(|b| u64::try_from(b).ok()) {
                Some(best) => (Some(Performance::TimeMs(best)), *ms < best),
                None => (None, true),
            }
        }
    };
    tx.insert_ascent(a).await?;

    let mut events = Vec::new();
    if first_send {
        events.push(NewEvent {
            user: a.user.clone(),
            event: Event::RouteCompleted {
                route_id: a.route_id.clone(),
                grade: match &a.result {
                    AscentResult::Grade(g) => g.to_string(),
                    AscentResult::TimeMs(ms) => format!("{:.2} s", *ms as f64 / 1000.0),
                },
            },
            idempotency_key: None,
        });
    }
    if record {
        let (grade, time_ms) = match &a.result {
            AscentResult::Grade(g) => (Some(g.to_string()), None),
            AscentResult::TimeMs(ms) => (None, Some(*ms)),
        };
        events.push(NewEvent {
            user: a.user.clone(),
            event: Event::PersonalRecord {
                discipline: a.discipline,
                grade,
                time_ms,
                previous: previous.clone(),
            },
            idempotency_key: None,
        });
    }
    Ok((
        ChangeOutcome::Ascent(AscentOutcome {
            ascent_id: a.ascent_id,
            first_send,
            personal_record: record,
            previous,
        }),
        events,
    ))
}

/// The columns of an ascent row: `(grade, difficulty, time_ms)`.
pub(crate) fn ascent_columns(
    a: &NewAscent,
) -> anyhow::Result<(Option<String>, Option<i64>, Option<i64>)> {
    Ok(match &a.result {
        AscentResult::Grade(g) => (Some(g.to_string()), Some(i64::from(g.difficulty())), None),
        AscentResult::TimeMs(ms) => (None, None, Some(i64::try_from(*ms)?)),
    })
}

/// Ranks one page of the leaderboard, read highest rating first (ties by user id) from place
/// `offset`: the first row's rank is one more than the climbers rated above it (`above_first`),
/// and each row after it keeps the rank of the row above when tied with it, else takes its place.
pub(crate) fn rank_page(
    offset: u32,
    above_first: u32,
    rows: Vec<(UserId, Rating)>,
) -> Vec<LeaderboardEntry> {
    let mut entries: Vec<LeaderboardEntry> = Vec::with_capacity(rows.len());
    for (i, (user_id, r)) in rows.into_iter().enumerate() {
        let rank = match entries.last() {
            Some(prev) if prev.rating == r.rating => prev.rank,
            Some(_) => offset.saturating_add(u32::try_from(i).unwrap_or(u32::MAX)) + 1,
            None => above_first.saturating_add(1),
        };
        entries.push(LeaderboardEntry {
            rank,
            user_id,
            rating: r.rating,
            deviation: r.deviation,
            matches: r.matches,
        });
    }
    entries
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_fence_below_the_recorded_one_refuses_the_group() {
        let stored = super::MatchmakerFence {
            token: 5,
            last_command: Some("9-0".into()),
        };
        assert_eq!(
            super::decide_fence(stored.clone(), &[(4, Some("10-0"))]),
            Err(super::Fenced {
                offered: 4,
                recorded: 5
            })
        );
        assert_eq!(
            super::decide_fence(stored.clone(), &[(5, None), (5, Some("10-0")), (5, None)]),
            Ok(super::MatchmakerFence {
                token: 5,
                last_command: Some("10-0".into())
            }),
            "the last command id offered is kept; a fence without one keeps the stored id"
        );
        assert_eq!(
            super::decide_fence(stored, &[(6, None)]),
            Ok(super::MatchmakerFence {
                token: 6,
                last_command: Some("9-0".into())
            }),
            "a new leader's first write moves the number and keeps where the stream stands"
        );
    }

    use super::*;
    use crate::domain::{IdempotencyKey, PostId, PostLiked};

    fn user(s: &str) -> UserId {
        UserId::parse(s).unwrap_or_else(|e| panic!("{e}"))
    }

    fn rated(id: &str, rating: f64) -> (UserId, Rating) {
        let r = Rating {
            rating,
            ..rating::initial()
        };
        (user(id), r)
    }

    #[test]
    fn a_page_ranks_ties_alike_and_starts_from_the_climbers_above_it() {
        // Places 3.. of a board whose top two are rated above 1600, and a tie at 1600 that
        // began at place 2 (one of its climbers is on the page before).
        let page = rank_page(
            2,
            1,
            vec![
                rated("cy", 1600.0),
                rated("dan", 1600.0),
                rated("eve", 1550.0),
                rated("fay", 1550.0),
                rated("gus", 1500.0),
            ],
        );
        let ranks: Vec<u32> = page.iter().map(|e| e.rank).collect();
        assert_eq!(ranks, [2, 2, 5, 5, 7]);
        assert!(rank_page(0, 0, Vec::new()).is_empty());
    }

    fn like(to: &str, post: &str, by: &str, key: Option<&str>) -> NewEvent {
        NewEvent {
            user: user(to),
            event: Event::PostLiked(PostLiked::new(
                PostId::parse(post).unwrap_or_else(|e| panic!("{e}")),
                user(by),
            )),
            idempotency_key: key
                .map(|k| IdempotencyKey::parse(k).unwrap_or_else(|e| panic!("{e}"))),
        }
    }

    #[test]
    fn a_group_follows_on_from_each_users_head_collapses_and_answers_repeated_keys() {
        let items = [
            like("ana", "p1", "bob", Some("k1")),
            like("ana", "p1", "cy", None),
            like("ana", "p1", "bob", Some("k1")),
            like("bob", "p9", "ana", None),
        ];
        let refs: Vec<&NewEvent> = items.iter().collect();
        let found = Found {
            heads: [("ana".to_owned(), 7)].into_iter().collect(),
            ..Found::default()
        };
        let (out, writes) = plan_appends(&refs, found, crate::store::writer::now_ms())
            .unwrap_or_else(|e| panic!("{e}"));
        let got: Vec<(AppendOutcome, i64)> = out
            .iter()
            .map(|a| (a.outcome, a.notification.cursor.0))
            .collect();
        assert_eq!(
            got,
            [
                (AppendOutcome::Created, 8),
                (AppendOutcome::Collapsed, 9),
                (AppendOutcome::Duplicate, 9),
                (AppendOutcome::Created, 1),
            ]
        );
        assert_eq!(out[0].notification.id, out[1].notification.id);
        assert_eq!(
            writes.new_rows.len(),
            2,
            "the collapsed like is written once, new"
        );
        assert!(writes.moved.is_empty(), "it was not in the database before");
        let heads: Vec<(&str, i64, i64)> = writes
            .heads
            .iter()
            .map(|h| (h.user.as_str(), h.last_cursor, h.created))
            .collect();
        assert_eq!(heads, [("ana", 9, 1), ("bob", 1, 1)]);
        assert_eq!(writes.keys.len(), 1);
    }

    #[test]
    fn a_key_whose_notification_is_gone_writes_its_event_again() {
        let items = [like("ana", "p1", "bob", Some("k1"))];
        let refs: Vec<&NewEvent> = items.iter().collect();
        let found = Found {
            heads: [("ana".to_owned(), 3)].into_iter().collect(),
            keys: [(("ana".to_owned(), "k1".to_owned()), Uuid::now_v7())]
                .into_iter()
                .collect(),
            rows: Vec::new(),
        };
        let (out, writes) = plan_appends(&refs, found, crate::store::writer::now_ms())
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(out[0].outcome, AppendOutcome::Created);
        assert_eq!(out[0].notification.cursor.0, 4);
        assert_eq!(writes.keys.len(), 1, "the key is taken over");
    }
}
