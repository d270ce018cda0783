//! SQLite: matchmaking tables (climbers, matches, challenges, ratings, ascents). Changes run
//! inside the writer's transaction, so the events they cause commit with them.

use std::collections::{HashMap, HashSet};

use anyhow::Context;
use chrono::{DateTime, Utc};
use sqlx::sqlite::{SqlitePool, SqliteRow};
use sqlx::{QueryBuilder, Row, Sqlite, Transaction};
use uuid::Uuid;

use super::sqlite::{Statements, padded, push_list};
use super::{Change, ChangeOutcome, NewEvent, Settlement};
use crate::domain::event::Performance;
use crate::domain::{
    AscentOutcome, AscentResult, Challenge, Discipline, Event, LeaderboardEntry, Match, NewAscent,
    QueuedTicket, Rating, Scope, UserId,
};
use crate::matchmaking::rating::{self, RankInputs};

fn to_ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

/// Rows of one multi-row statement (matches have the most columns: 8 binds a row).
const ROWS_PER_STATEMENT: usize = 400;

/// Changes that only write rows by key, read nothing and cause no events (climbers, matches,
/// challenges, queue tickets), held back and folded to their net effect: the last write of each
/// key wins. They are written with a few multi-row statements in one round trip: by
/// [`Folded::flush`] before any change that reads (a settlement, an ascent), and at the end of
/// the transaction with the group's other writes ([`Folded::write_into`]). A group of a few
/// hundred matchmaking steps then costs one trip instead of one statement per change.
#[derive(Default)]
pub(super) struct Folded<'a> {
    climbers: HashSet<&'a str>,
    matches: HashMap<Uuid, &'a Match>,
    challenges: HashMap<Uuid, &'a Challenge>,
    /// `None`: the ticket is dropped.
    tickets: HashMap<&'a str, Option<&'a QueuedTicket>>,
}

impl<'a> Folded<'a> {
    /// Writes what is held now, in one round trip, then forgets it.
    pub(super) async fn flush(
        &mut self,
        tx: &mut Transaction<'_, Sqlite>,
        now: DateTime<Utc>,
    ) -> anyhow::Result<()> {
        let mut writes = Statements::new();
        self.write_into(&mut writes, now)?;
        writes.run(tx, "saving matchmaking rows").await
    }

    /// Adds the statements that write what is held to `writes`, then forgets it.
    pub(super) fn write_into(
        &mut self,
        writes: &mut Statements<'a>,
        now: DateTime<Utc>,
    ) -> anyhow::Result<()> {
        let climbers: Vec<&str> = self.climbers.drain().collect();
        for chunk in climbers.chunks(ROWS_PER_STATEMENT) {
            writes
                .start("INSERT INTO climbers (user_id, first_seen) ")
                .push_values(chunk, |mut b, user| {
                    b.push_bind(*user).push_bind(to_ms(now));
                })
                .push(" ON CONFLICT DO NOTHING");
        }

        let challenges: Vec<(&Challenge, String)> = self
            .challenges
            .drain()
            .map(|(_, c)| Ok((c, serde_json::to_string(c)?)))
            .collect::<anyhow::Result<_>>()?;
        for chunk in challenges.chunks(ROWS_PER_STATEMENT) {
            writes
                .start("INSERT INTO challenges (id, status, from_user, to_user, data, created_at) ")
                .push_values(chunk, |mut b, (c, data)| {
                    b.push_bind(c.challenge_id.to_string())
                        .push_bind(c.status.as_str())
                        .push_bind(c.from.as_str())
                        .push_bind(c.to.as_str())
                        .push_bind(data.clone())
                        .push_bind(to_ms(c.created_at));
                })
                .push(
                    " ON CONFLICT (id) DO UPDATE SET status = excluded.status, data = excluded.data",
                );
        }

        let matches: Vec<(&Match, String)> = self
            .matches
            .drain()
            .map(|(_, m)| Ok((m, serde_json::to_string(m)?)))
            .collect::<anyhow::Result<_>>()?;
        for chunk in matches.chunks(ROWS_PER_STATEMENT) {
            writes
                .start(
                    "INSERT INTO matches \
                     (id, status, discipline, player_a, player_b, data, created_at, updated_at) ",
                )
                .push_values(chunk, |mut b, (m, data)| {
                    b.push_bind(m.match_id.to_string())
                        .push_bind(m.status.as_str())
                        .push_bind(m.discipline.as_str())
                        .push_bind(m.players[0].user_id.as_str())
                        .push_bind(m.players[1].user_id.as_str())
                        .push_bind(data.clone())
                        .push_bind(to_ms(m.created_at))
                        .push_bind(to_ms(m.updated_at));
                })
                .push(
                    " ON CONFLICT (id) DO UPDATE SET status = excluded.status, \
                     data = excluded.data, updated_at = excluded.updated_at",
                );
        }

        let (saved, dropped): (Vec<_>, Vec<_>) =
            self.tickets.drain().partition(|(_, t)| t.is_some());
        let saved: Vec<&QueuedTicket> = saved.into_iter().filter_map(|(_, t)| t).collect();
        for chunk in saved.chunks(ROWS_PER_STATEMENT) {
            writes
                .start("INSERT INTO queue_tickets (user_id, discipline, scope, rating, queued_at) ")
                .push_values(chunk, |mut b, t| {
                    b.push_bind(t.user.as_str())
                        .push_bind(t.discipline.as_str())
                        .push_bind(t.scope.as_ref().map(|s| s.as_str()))
                        .push_bind(t.rating)
                        .push_bind(to_ms(t.queued_at));
                })
                .push(
                    " ON CONFLICT (user_id) DO UPDATE SET discipline = excluded.discipline, \
                     scope = excluded.scope, rating = excluded.rating, queued_at = excluded.queued_at",
                );
        }
        for chunk in dropped.chunks(ROWS_PER_STATEMENT) {
            let query = writes.start("DELETE FROM queue_tickets WHERE user_id IN ");
            push_list(query, chunk.iter().map(|(user, _)| *user));
        }
        Ok(())
    }
}

/// Applies one change; returns what it did and the events it causes. Key-only writes are held
/// in `folded` (the caller flushes it before committing); a change that reads flushes it first.
pub(super) async fn apply_change<'a>(
    tx: &mut Transaction<'_, Sqlite>,
    folded: &mut Folded<'a>,
    change: &'a Change,
    now: DateTime<Utc>,
) -> anyhow::Result<(ChangeOutcome, Vec<NewEvent>)> {
    match change {
        Change::SeeUser(user) => {
            folded.climbers.insert(user.as_str());
        }
        Change::SaveMatch(m) => {
            folded.matches.insert(m.match_id, m);
        }
        Change::SaveChallenge(c) => {
            folded.challenges.insert(c.challenge_id, c);
        }
        Change::SaveTicket(t) => {
            folded.tickets.insert(t.user.as_str(), Some(t));
        }
        Change::DropTicket(user) => {
            folded.tickets.insert(user.as_str(), None);
        }
        Change::Settle(m) => {
            folded.flush(tx, now).await?;
            return settle(tx, m, now).await;
        }
        Change::Ascent(a) => {
            folded.flush(tx, now).await?;
            return ascent(tx, a).await;
        }
    }
    Ok((ChangeOutcome::Done, Vec::new()))
}

/// One match, at once (a settlement writes its match before reading ratings).
async fn save_match(tx: &mut Transaction<'_, Sqlite>, m: &Match) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO matches (id, status, discipline, player_a, player_b, data, created_at, updated_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) \
         ON CONFLICT (id) DO UPDATE SET status = excluded.status, data = excluded.data, \
         updated_at = excluded.updated_at",
    )
    .bind(m.match_id.to_string())
    .bind(m.status.as_str())
    .bind(m.discipline.as_str())
    .bind(m.players[0].user_id.as_str())
    .bind(m.players[1].user_id.as_str())
    .bind(serde_json::to_string(m)?)
    .bind(to_ms(m.created_at))
    .bind(to_ms(m.updated_at))
    .execute(&mut **tx)
    .await
    .context("saving a match")?;
    Ok(())
}

/// A climber's rating, inside the writer's transaction or from a reader.
async fn read_rating<'e>(
    executor: impl sqlx::Executor<'e, Database = Sqlite>,
    user: &UserId,
    discipline: Discipline,
) -> anyhow::Result<Option<Rating>> {
    let row = sqlx::query(
        "SELECT rating, deviation, volatility, matches FROM ratings \
         WHERE user_id = ?1 AND discipline = ?2",
    )
    .bind(user.as_str())
    .bind(discipline.as_str())
    .fetch_optional(executor)
    .await
    .context("reading a rating")?;
    row.as_ref().map(rating_from_row).transpose()
}

fn rating_from_row(row: &SqliteRow) -> anyhow::Result<Rating> {
    Ok(Rating {
        rating: row.try_get("rating")?,
        deviation: row.try_get("deviation")?,
        volatility: row.try_get("volatility")?,
        matches: u32::try_from(row.try_get::<i64, _>("matches")?).unwrap_or(u32::MAX),
    })
}

/// Glicko-2 for both players, the rank moves it causes, and the events telling everyone.
async fn settle(
    tx: &mut Transaction<'_, Sqlite>,
    m: &Match,
    now: DateTime<Utc>,
) -> anyhow::Result<(ChangeOutcome, Vec<NewEvent>)> {
    let winner = m.winner.clone().context("a settled match needs a winner")?;
    let loser = m
        .opponent_of(&winner)
        .context("the winner is not a player of the match")?
        .user_id
        .clone();
    let discipline = m.discipline;
    let winner_before = read_rating(&mut **tx, &winner, discipline).await?;
    let loser_before = read_rating(&mut **tx, &loser, discipline).await?;
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
    let (lo, hi) = RankInputs::span(&players);
    let rows = sqlx::query(
        "SELECT user_id, rating FROM ratings WHERE discipline = ?1 AND rating >= ?2 \
         AND rating <= ?3 AND user_id NOT IN (?4, ?5)",
    )
    .bind(discipline.as_str())
    .bind(lo)
    .bind(hi)
    .bind(winner.as_str())
    .bind(loser.as_str())
    .fetch_all(&mut **tx)
    .await
    .context("reading the climbers a match may have passed")?;
    let mut others_in_span = Vec::with_capacity(rows.len());
    for row in &rows {
        let user =
            UserId::parse(row.try_get::<String, _>("user_id")?).map_err(anyhow::Error::msg)?;
        others_in_span.push((user, row.try_get::<f64, _>("rating")?));
    }
    let above: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM ratings WHERE discipline = ?1 AND rating > ?2 \
         AND user_id NOT IN (?3, ?4)",
    )
    .bind(discipline.as_str())
    .bind(hi)
    .bind(winner.as_str())
    .bind(loser.as_str())
    .fetch_one(&mut **tx)
    .await
    .context("counting climbers above a match")?;
    let rank_changes = rating::rank_changes(&RankInputs {
        players,
        others_in_span,
        others_above_span: u32::try_from(above).unwrap_or(u32::MAX),
    });

    for (user, r) in [(&winner, &winner_after), (&loser, &loser_after)] {
        sqlx::query(
            "INSERT INTO ratings (user_id, discipline, rating, deviation, volatility, matches, updated_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) \
             ON CONFLICT (user_id, discipline) DO UPDATE SET rating = excluded.rating, \
             deviation = excluded.deviation, volatility = excluded.volatility, \
             matches = excluded.matches, updated_at = excluded.updated_at",
        )
        .bind(user.as_str())
        .bind(discipline.as_str())
        .bind(r.rating)
        .bind(r.deviation)
        .bind(r.volatility)
        .bind(i64::from(r.matches))
        .bind(to_ms(now))
        .execute(&mut **tx)
        .await
        .context("saving a rating")?;
    }
    save_match(tx, m).await?;

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

/// Records an ascent; a first send and a new best are told to the climber.
async fn ascent(
    tx: &mut Transaction<'_, Sqlite>,
    a: &NewAscent,
) -> anyhow::Result<(ChangeOutcome, Vec<NewEvent>)> {
    let sent_before: Option<i64> =
        sqlx::query_scalar("SELECT 1 FROM ascents WHERE user_id = ?1 AND route_id = ?2 LIMIT 1")
            .bind(a.user.as_str())
            .bind(a.route_id.as_str())
            .fetch_optional(&mut **tx)
            .await
            .context("looking for an earlier send")?;
    let first_send = sent_before.is_none();
    let (previous, record) = match &a.result {
        AscentResult::Grade(grade) => {
            let best = sqlx::query(
                "SELECT grade, difficulty FROM ascents WHERE user_id = ?1 AND discipline = ?2 \
                 AND difficulty IS NOT NULL ORDER BY difficulty DESC, created_at ASC, rowid ASC LIMIT 1",
            )
            .bind(a.user.as_str())
            .bind(a.discipline.as_str())
            .fetch_optional(&mut **tx)
            .await
            .context("reading the hardest grade")?;
            match best {
                Some(row) => {
                    let text: String = row.try_get("grade")?;
                    let difficulty: i64 = row.try_get("difficulty")?;
                    (
                        Some(Performance::Grade(text)),
                        i64::from(grade.difficulty()) > difficulty,
                    )
                }
                None => (None, true),
            }
        }
        AscentResult::TimeMs(ms) => {
            let best: Option<i64> = sqlx::query_scalar(
                "SELECT MIN(time_ms) FROM ascents WHERE user_id = ?1 AND discipline = ?2",
            )
            .bind(a.user.as_str())
            .bind(a.discipline.as_str())
            .fetch_one(&mut **tx)
            .await
            .context("reading the fastest time")?;
            match best.and_then(|b| u64::try_from(b).ok()) {
                Some(b) => (Some(Performance::TimeMs(b)), *ms < b),
                None => (None, true),
            }
        }
    };
    let (grade, difficulty, time_ms) = match &a.result {
        AscentResult::Grade(g) => (Some(g.to_string()), Some(i64::from(g.difficulty())), None),
        AscentResult::TimeMs(ms) => (None, None, Some(i64::try_from(*ms)?)),
    };
    sqlx::query(
        "INSERT INTO ascents (id, user_id, route_id, discipline, grade, difficulty, time_ms, created_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )
    .bind(a.ascent_id.to_string())
    .bind(a.user.as_str())
    .bind(a.route_id.as_str())
    .bind(a.discipline.as_str())
    .bind(grade.clone())
    .bind(difficulty)
    .bind(time_ms)
    .bind(to_ms(a.at))
    .execute(&mut **tx)
    .await
    .context("recording an ascent")?;

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

fn match_from_row(row: &SqliteRow) -> anyhow::Result<Match> {
    let data: String = row.try_get("data")?;
    serde_json::from_str(&data).context("stored match is not valid")
}

pub(super) async fn get_match(pool: &SqlitePool, id: Uuid) -> anyhow::Result<Option<Match>> {
    let row = sqlx::query("SELECT data FROM matches WHERE id = ?1")
        .bind(id.to_string())
        .fetch_optional(pool)
        .await
        .context("reading a match")?;
    row.as_ref().map(match_from_row).transpose()
}

pub(super) async fn live_matches(pool: &SqlitePool) -> anyhow::Result<Vec<Match>> {
    let rows = sqlx::query(
        "SELECT data FROM matches WHERE status IN ('ready_check', 'confirmed') ORDER BY created_at",
    )
    .fetch_all(pool)
    .await
    .context("reading live matches")?;
    rows.iter().map(match_from_row).collect()
}

pub(super) async fn pending_challenges(pool: &SqlitePool) -> anyhow::Result<Vec<Challenge>> {
    let rows =
        sqlx::query("SELECT data FROM challenges WHERE status = 'pending' ORDER BY created_at")
            .fetch_all(pool)
            .await
            .context("reading pending challenges")?;
    rows.iter()
        .map(|row| {
            let data: String = row.try_get("data")?;
            serde_json::from_str(&data).context("stored challenge is not valid")
        })
        .collect()
}

pub(super) async fn queued_tickets(pool: &SqlitePool) -> anyhow::Result<Vec<QueuedTicket>> {
    let rows = sqlx::query(
        "SELECT user_id, discipline, scope, rating, queued_at FROM queue_tickets \
         ORDER BY queued_at, user_id",
    )
    .fetch_all(pool)
    .await
    .context("reading queue tickets")?;
    rows.iter()
        .map(|row| {
            let scope: Option<String> = row.try_get("scope")?;
            let discipline: String = row.try_get("discipline")?;
            Ok(QueuedTicket {
                user: UserId::parse(row.try_get::<String, _>("user_id")?)
                    .map_err(anyhow::Error::msg)?,
                discipline: Discipline::parse(&discipline).map_err(anyhow::Error::msg)?,
                scope: scope
                    .map(Scope::parse)
                    .transpose()
                    .map_err(anyhow::Error::msg)?,
                rating: row.try_get("rating")?,
                queued_at: DateTime::from_timestamp_millis(row.try_get("queued_at")?)
                    .unwrap_or_default(),
            })
        })
        .collect()
}

pub(super) async fn user_known(pool: &SqlitePool, user: &UserId) -> anyhow::Result<bool> {
    let found: Option<i64> = sqlx::query_scalar("SELECT 1 FROM climbers WHERE user_id = ?1")
        .bind(user.as_str())
        .fetch_optional(pool)
        .await
        .context("looking up a climber")?;
    Ok(found.is_some())
}

/// Every rating of the given climbers, in one statement: `(user, discipline, rating)`.
pub(super) async fn ratings_of(
    pool: &SqlitePool,
    users: &[&str],
) -> anyhow::Result<Vec<(String, String, Rating)>> {
    if users.is_empty() {
        return Ok(Vec::new());
    }
    let mut qb = QueryBuilder::<Sqlite>::new(
        "SELECT user_id, discipline, rating, deviation, volatility, matches FROM ratings \
         WHERE user_id IN ",
    );
    push_list(&mut qb, padded(users));
    let rows = qb
        .build()
        .fetch_all(pool)
        .await
        .context("reading ratings")?;
    rows.iter()
        .map(|row| {
            Ok((
                row.try_get("user_id")?,
                row.try_get("discipline")?,
                rating_from_row(row)?,
            ))
        })
        .collect()
}

/// One page of the leaderboard. The first row's rank is counted; the others follow from it
/// (a tie keeps the rank of the row above).
pub(super) async fn leaderboard(
    pool: &SqlitePool,
    discipline: Discipline,
    offset: u32,
    limit: u32,
) -> anyhow::Result<Vec<LeaderboardEntry>> {
    // One read transaction: the page and the rank of its first row see the same ratings.
    let mut tx = pool.begin().await.context("begin leaderboard read")?;
    let rows = sqlx::query(
        "SELECT user_id, rating, deviation, volatility, matches FROM ratings \
         WHERE discipline = ?1 ORDER BY rating DESC, user_id ASC LIMIT ?2 OFFSET ?3",
    )
    .bind(discipline.as_str())
    .bind(i64::from(limit))
    .bind(i64::from(offset))
    .fetch_all(&mut *tx)
    .await
    .context("reading the leaderboard")?;
    let mut entries: Vec<LeaderboardEntry> = Vec::with_capacity(rows.len());
    for (i, row) in rows.iter().enumerate() {
        let r = rating_from_row(row)?;
        let user_id =
            UserId::parse(row.try_get::<String, _>("user_id")?).map_err(anyhow::Error::msg)?;
        let rank = match entries.last() {
            Some(prev) if prev.rating == r.rating => prev.rank,
            Some(_) => offset.saturating_add(u32::try_from(i).unwrap_or(u32::MAX)) + 1,
            None => {
                let above: i64 = sqlx::query_scalar(
                    "SELECT COUNT(*) FROM ratings WHERE discipline = ?1 AND rating > ?2",
                )
                .bind(discipline.as_str())
                .bind(r.rating)
                .fetch_one(&mut *tx)
                .await
                .context("ranking the leaderboard page")?;
                u32::try_from(above).unwrap_or(u32::MAX).saturating_add(1)
            }
        };
        entries.push(LeaderboardEntry {
            rank,
            user_id,
            rating: r.rating,
            deviation: r.deviation,
            matches: r.matches,
        });
    }
    Ok(entries)
}
