//! SQLite: the SQL of the matchmaking tables (climbers, matches, challenges, ratings, ascents).
//! Writes run inside the writer's transaction, so the events they cause commit with them; the
//! decisions are in `rules`.

use std::collections::HashMap;

use anyhow::Context;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::sqlite::{SqlitePool, SqliteRow};
use sqlx::{QueryBuilder, Row, Sqlite};
use uuid::Uuid;

use super::MatchmakerFence;
use super::rules::{FoldedRows, PlayTx, ascent_columns, rank_page};
use super::sqlite::{SqliteTx, Statements, push_list};
use super::writer::padded;
use crate::domain::{
    Challenge, Discipline, LeaderboardEntry, Match, NewAscent, QueuedTicket, Rating, Scope, UserId,
};

fn to_ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

/// Rows of one multi-row statement (matches have the most columns: 8 binds a row).
const ROWS_PER_STATEMENT: usize = 400;

/// The statements that write the folded matchmaking rows (see [`super::rules::Folded`]).
pub(super) fn write_folded<'a>(
    writes: &mut Statements<'a>,
    folded: &FoldedRows<'a>,
    now: DateTime<Utc>,
) -> anyhow::Result<()> {
    for chunk in folded.climbers.chunks(ROWS_PER_STATEMENT) {
        writes
            .start("INSERT INTO climbers (user_id, first_seen) ")
            .push_values(chunk, |mut b, user| {
                b.push_bind(*user).push_bind(to_ms(now));
            })
            .push(" ON CONFLICT DO NOTHING");
    }

    let challenges: Vec<(&Challenge, String)> = folded
        .challenges
        .iter()
        .map(|c| Ok((*c, serde_json::to_string(c)?)))
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
            .push(" ON CONFLICT (id) DO UPDATE SET status = excluded.status, data = excluded.data");
    }

    let matches: Vec<(&Match, String)> = folded
        .matches
        .iter()
        .map(|m| Ok((*m, serde_json::to_string(m)?)))
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

    for chunk in folded.saved_tickets.chunks(ROWS_PER_STATEMENT) {
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
    for chunk in folded.dropped_tickets.chunks(ROWS_PER_STATEMENT) {
        let query = writes.start("DELETE FROM queue_tickets WHERE user_id IN ");
        push_list(query, chunk.iter().copied());
    }
    Ok(())
}

fn rating_from_row(row: &SqliteRow) -> anyhow::Result<Rating> {
    Ok(Rating {
        rating: row.try_get("rating")?,
        deviation: row.try_get("deviation")?,
        volatility: row.try_get("volatility")?,
        matches: u32::try_from(row.try_get::<i64, _>("matches")?).unwrap_or(u32::MAX),
    })
}

#[async_trait]
impl PlayTx for SqliteTx {
    async fn lock_heads(&mut self, users: &[String]) -> anyhow::Result<HashMap<String, i64>> {
        // The group holds SQLite's one write lock since its BEGIN IMMEDIATE: a read is enough.
        let mut heads = HashMap::with_capacity(users.len());
        for chunk in users.chunks(ROWS_PER_STATEMENT) {
            let mut qb = QueryBuilder::<Sqlite>::new(
                "SELECT user_id, last_cursor FROM user_cursors WHERE user_id IN ",
            );
            push_list(&mut qb, chunk.iter().map(String::as_str));
            for row in qb.build().fetch_all(&mut *self.tx).await? {
                heads.insert(row.try_get("user_id")?, row.try_get("last_cursor")?);
            }
        }
        Ok(heads)
    }

    async fn rating(
        &mut self,
        user: &UserId,
        discipline: Discipline,
    ) -> anyhow::Result<Option<Rating>> {
        let row = sqlx::query(
            "SELECT rating, deviation, volatility, matches FROM ratings \
             WHERE user_id = ?1 AND discipline = ?2",
        )
        .bind(user.as_str())
        .bind(discipline.as_str())
        .fetch_optional(&mut *self.tx)
        .await
        .context("reading a rating")?;
        row.as_ref().map(rating_from_row).transpose()
    }

    async fn rated_between(
        &mut self,
        discipline: Discipline,
        lo: f64,
        hi: f64,
        except: [&UserId; 2],
    ) -> anyhow::Result<Vec<(UserId, f64)>> {
        let rows = sqlx::query(
            "SELECT user_id, rating FROM ratings WHERE discipline = ?1 AND rating >= ?2 \
             AND rating <= ?3 AND user_id NOT IN (?4, ?5)",
        )
        .bind(discipline.as_str())
        .bind(lo)
        .bind(hi)
        .bind(except[0].as_str())
        .bind(except[1].as_str())
        .fetch_all(&mut *self.tx)
        .await
        .context("reading the climbers a match may have passed")?;
        rows.iter()
            .map(|row| {
                let user = UserId::parse(row.try_get::<String, _>("user_id")?)
                    .map_err(anyhow::Error::msg)?;
                Ok((user, row.try_get::<f64, _>("rating")?))
            })
            .collect()
    }

    async fn count_rated_above(
        &mut self,
        discipline: Discipline,
        hi: f64,
        except: [&UserId; 2],
    ) -> anyhow::Result<u32> {
        let above: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM ratings WHERE discipline = ?1 AND rating > ?2 \
             AND user_id NOT IN (?3, ?4)",
        )
        .bind(discipline.as_str())
        .bind(hi)
        .bind(except[0].as_str())
        .bind(except[1].as_str())
        .fetch_one(&mut *self.tx)
        .await
        .context("counting climbers above a match")?;
        Ok(u32::try_from(above).unwrap_or(u32::MAX))
    }

    async fn save_rating(
        &mut self,
        user: &UserId,
        discipline: Discipline,
        r: &Rating,
        now: DateTime<Utc>,
    ) -> anyhow::Result<()> {
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
        .execute(&mut *self.tx)
        .await
        .context("saving a rating")?;
        Ok(())
    }

    async fn sent_before(&mut self, a: &NewAscent) -> anyhow::Result<bool> {
        let found: Option<i64> = sqlx::query_scalar(
            "SELECT 1 FROM ascents WHERE user_id = ?1 AND route_id = ?2 LIMIT 1",
        )
        .bind(a.user.as_str())
        .bind(a.route_id.as_str())
        .fetch_optional(&mut *self.tx)
        .await
        .context("looking for an earlier send")?;
        Ok(found.is_some())
    }

    async fn hardest(&mut self, a: &NewAscent) -> anyhow::Result<Option<(String, i64)>> {
        let best = sqlx::query(
            "SELECT grade, difficulty FROM ascents WHERE user_id = ?1 AND discipline = ?2 \
             AND difficulty IS NOT NULL ORDER BY difficulty DESC, created_at ASC, rowid ASC LIMIT 1",
        )
        .bind(a.user.as_str())
        .bind(a.discipline.as_str())
        .fetch_optional(&mut *self.tx)
        .await
        .context("reading the hardest grade")?;
        best.map(|row| Ok((row.try_get("grade")?, row.try_get("difficulty")?)))
            .transpose()
    }

    async fn fastest(&mut self, a: &NewAscent) -> anyhow::Result<Option<i64>> {
        sqlx::query_scalar(
            "SELECT MIN(time_ms) FROM ascents WHERE user_id = ?1 AND discipline = ?2",
        )
        .bind(a.user.as_str())
        .bind(a.discipline.as_str())
        .fetch_one(&mut *self.tx)
        .await
        .context("reading the fastest time")
    }

    async fn insert_ascent(&mut self, a: &NewAscent) -> anyhow::Result<()> {
        let (grade, difficulty, time_ms) = ascent_columns(a)?;
        sqlx::query(
            "INSERT INTO ascents (id, user_id, route_id, discipline, grade, difficulty, time_ms, created_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )
        .bind(a.ascent_id.to_string())
        .bind(a.user.as_str())
        .bind(a.route_id.as_str())
        .bind(a.discipline.as_str())
        .bind(grade)
        .bind(difficulty)
        .bind(time_ms)
        .bind(to_ms(a.at))
        .execute(&mut *self.tx)
        .await
        .context("recording an ascent")?;
        Ok(())
    }

    async fn lock_fence(&mut self) -> anyhow::Result<MatchmakerFence> {
        // `BEGIN IMMEDIATE` holds the write lock already: a plain read is a locked read.
        let row = sqlx::query("SELECT token, last_command FROM matchmaker_fence WHERE id = 1")
            .fetch_one(&mut *self.tx)
            .await
            .context("reading the matchmaker fence")?;
        Ok(MatchmakerFence {
            token: row.try_get("token")?,
            last_command: row.try_get("last_command")?,
        })
    }

    async fn save_fence(&mut self, fence: &MatchmakerFence) -> anyhow::Result<()> {
        sqlx::query("UPDATE matchmaker_fence SET token = ?, last_command = ? WHERE id = 1")
            .bind(fence.token)
            .bind(fence.last_command.as_deref())
            .execute(&mut *self.tx)
            .await
            .context("recording the matchmaker fence")?;
        Ok(())
    }
}

pub(super) async fn matchmaker_fence(pool: &SqlitePool) -> anyhow::Result<MatchmakerFence> {
    let row = sqlx::query("SELECT token, last_command FROM matchmaker_fence WHERE id = 1")
        .fetch_one(pool)
        .await
        .context("reading the matchmaker fence")?;
    Ok(MatchmakerFence {
        token: row.try_get("token")?,
        last_command: row.try_get("last_command")?,
    })
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

/// A climber's latest match, live or ended (each side of the match has its own index).
pub(super) async fn latest_match_of(
    pool: &SqlitePool,
    user: &UserId,
) -> anyhow::Result<Option<Match>> {
    let row = sqlx::query(
        "SELECT data FROM (\
           SELECT data, created_at FROM (SELECT data, created_at FROM matches \
             WHERE player_a = ?1 ORDER BY created_at DESC LIMIT 1) AS a \
           UNION ALL \
           SELECT data, created_at FROM (SELECT data, created_at FROM matches \
             WHERE player_b = ?2 ORDER BY created_at DESC LIMIT 1) AS b) AS latest \
         ORDER BY created_at DESC LIMIT 1",
    )
    .bind(user.as_str())
    .bind(user.as_str())
    .fetch_optional(pool)
    .await
    .context("reading a climber's latest match")?;
    row.as_ref().map(match_from_row).transpose()
}

/// [`super::Store::standing_of`]: three indexed reads.
pub(super) async fn standing_of(
    pool: &SqlitePool,
    user: &UserId,
) -> anyhow::Result<super::StoredStanding> {
    Ok(super::StoredStanding {
        ticket: queued_tickets(pool, Some(user)).await?.pop(),
        latest: latest_match_of(pool, user).await?,
        challenges: pending_challenges(pool, Some(user)).await?,
    })
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

pub(super) async fn pending_challenges(
    pool: &SqlitePool,
    only: Option<&UserId>,
) -> anyhow::Result<Vec<Challenge>> {
    let rows = match only {
        None => {
            sqlx::query("SELECT data FROM challenges WHERE status = 'pending' ORDER BY created_at")
        }
        Some(user) => sqlx::query(
            "SELECT data FROM challenges WHERE status = 'pending' \
             AND (from_user = ?1 OR to_user = ?2) ORDER BY created_at",
        )
        .bind(user.as_str())
        .bind(user.as_str()),
    }
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

pub(super) async fn queued_tickets(
    pool: &SqlitePool,
    only: Option<&UserId>,
) -> anyhow::Result<Vec<QueuedTicket>> {
    let rows = match only {
        None => sqlx::query(
            "SELECT user_id, discipline, scope, rating, queued_at FROM queue_tickets \
             ORDER BY queued_at, user_id",
        ),
        Some(user) => sqlx::query(
            "SELECT user_id, discipline, scope, rating, queued_at FROM queue_tickets \
             WHERE user_id = ?1",
        )
        .bind(user.as_str()),
    }
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

/// One page of the leaderboard, ranked by [`rank_page`].
pub(super) async fn leaderboard(
    pool: &SqlitePool,
    discipline: Discipline,
    offset: u32,
    limit: u32,
) -> anyhow::Result<Vec<LeaderboardEntry>> {
    // One statement, so one snapshot: the page and the count above its first row see the same
    // ratings.
    let rows = sqlx::query(
        "WITH page AS (SELECT user_id, rating, deviation, volatility, matches FROM ratings \
                       WHERE discipline = ?1 ORDER BY rating DESC, user_id ASC LIMIT ?2 OFFSET ?3) \
         SELECT page.*, (SELECT COUNT(*) FROM ratings WHERE discipline = ?1 \
                         AND rating > (SELECT MAX(rating) FROM page)) AS above \
         FROM page ORDER BY rating DESC, user_id ASC",
    )
    .bind(discipline.as_str())
    .bind(i64::from(limit))
    .bind(i64::from(offset))
    .fetch_all(pool)
    .await
    .context("reading the leaderboard")?;
    let above: i64 = rows
        .first()
        .map(|row| row.try_get("above"))
        .transpose()?
        .unwrap_or(0);
    let page = rows
        .iter()
        .map(|row| {
            let user =
                UserId::parse(row.try_get::<String, _>("user_id")?).map_err(anyhow::Error::msg)?;
            Ok((user, rating_from_row(row)?))
        })
        .collect::<anyhow::Result<_>>()?;
    Ok(rank_page(
        offset,
        u32::try_from(above).unwrap_or(u32::MAX),
        page,
    ))
}
