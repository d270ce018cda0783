//! PostgreSQL: the SQL of the matchmaking tables (climbers, matches, challenges, ratings,
//! ascents, queue tickets). Writes run inside the writer's transaction, so the events they cause
//! commit with them; the decisions are in `rules`.

use std::collections::HashMap;

use anyhow::Context;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::Row;
use sqlx::postgres::{PgPool, PgRow};
use uuid::Uuid;

use super::MatchmakerFence;
use super::postgres::{PgTx, from_ms, to_ms};
use super::rules::{PlayTx, ascent_columns, rank_page};
use crate::domain::{
    Challenge, Discipline, LeaderboardEntry, Match, NewAscent, QueuedTicket, Rating, Scope, UserId,
};

fn rating_from_row(row: &PgRow) -> anyhow::Result<Rating> {
    Ok(Rating {
        rating: row.try_get("rating")?,
        deviation: row.try_get("deviation")?,
        volatility: row.try_get("volatility")?,
        matches: u32::try_from(row.try_get::<i64, _>("matches")?).unwrap_or(u32::MAX),
    })
}

fn user_from_row(row: &PgRow) -> anyhow::Result<UserId> {
    UserId::parse(row.try_get::<String, _>("user_id")?).map_err(anyhow::Error::msg)
}

#[async_trait]
impl PlayTx for PgTx {
    async fn lock_heads(&mut self, users: &[String]) -> anyhow::Result<HashMap<String, i64>> {
        if users.is_empty() {
            return Ok(HashMap::new());
        }
        // Creates the missing head rows and locks every one, in user-id order (byte order, as
        // the users arrive), so that two writers never wait for each other in a cycle. The
        // no-op update is what takes the row lock of an existing row.
        let rows = sqlx::query(
            "INSERT INTO user_cursors (user_id, last_cursor, unread) \
             SELECT u, 0, 0 FROM unnest($1::text[]) AS u ORDER BY u COLLATE \"C\" \
             ON CONFLICT (user_id) DO UPDATE SET last_cursor = user_cursors.last_cursor \
             RETURNING user_id, last_cursor",
        )
        .bind(users)
        .fetch_all(&mut *self.tx)
        .await
        .context("locking head rows")?;
        rows.iter()
            .map(|row| Ok((row.try_get("user_id")?, row.try_get("last_cursor")?)))
            .collect()
    }

    async fn rating(
        &mut self,
        user: &UserId,
        discipline: Discipline,
    ) -> anyhow::Result<Option<Rating>> {
        let row = sqlx::query(
            "SELECT rating, deviation, volatility, matches FROM ratings \
             WHERE user_id = $1 AND discipline = $2",
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
            "SELECT user_id, rating FROM ratings WHERE discipline = $1 AND rating >= $2 \
             AND rating <= $3 AND user_id NOT IN ($4, $5)",
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
            .map(|row| Ok((user_from_row(row)?, row.try_get::<f64, _>("rating")?)))
            .collect()
    }

    async fn count_rated_above(
        &mut self,
        discipline: Discipline,
        hi: f64,
        except: [&UserId; 2],
    ) -> anyhow::Result<u32> {
        let above: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM ratings WHERE discipline = $1 AND rating > $2 \
             AND user_id NOT IN ($3, $4)",
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
            "INSERT INTO ratings \
             (user_id, discipline, rating, deviation, volatility, matches, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) \
             ON CONFLICT (user_id, discipline) DO UPDATE SET rating = EXCLUDED.rating, \
             deviation = EXCLUDED.deviation, volatility = EXCLUDED.volatility, \
             matches = EXCLUDED.matches, updated_at = EXCLUDED.updated_at",
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
        let found: Option<i32> = sqlx::query_scalar(
            "SELECT 1 FROM ascents WHERE user_id = $1 AND route_id = $2 LIMIT 1",
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
            "SELECT grade, difficulty FROM ascents WHERE user_id = $1 AND discipline = $2 \
             AND difficulty IS NOT NULL ORDER BY difficulty DESC, created_at ASC, seq ASC LIMIT 1",
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
            "SELECT MIN(time_ms) FROM ascents WHERE user_id = $1 AND discipline = $2",
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
            "INSERT INTO ascents \
             (id, user_id, route_id, discipline, grade, difficulty, time_ms, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
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
        let row =
            sqlx::query("SELECT token, last_command FROM matchmaker_fence WHERE id = 1 FOR UPDATE")
                .fetch_one(&mut *self.tx)
                .await
                .context("locking the matchmaker fence")?;
        Ok(MatchmakerFence {
            token: row.try_get("token")?,
            last_command: row.try_get("last_command")?,
        })
    }

    async fn save_fence(&mut self, fence: &MatchmakerFence) -> anyhow::Result<()> {
        sqlx::query("UPDATE matchmaker_fence SET token = $1, last_command = $2 WHERE id = 1")
            .bind(fence.token)
            .bind(fence.last_command.as_deref())
            .execute(&mut *self.tx)
            .await
            .context("recording the matchmaker fence")?;
        Ok(())
    }
}

pub(super) async fn matchmaker_fence(pool: &PgPool) -> anyhow::Result<MatchmakerFence> {
    let row = sqlx::query("SELECT token, last_command FROM matchmaker_fence WHERE id = 1")
        .fetch_one(pool)
        .await
        .context("reading the matchmaker fence")?;
    Ok(MatchmakerFence {
        token: row.try_get("token")?,
        last_command: row.try_get("last_command")?,
    })
}

fn match_from_row(row: &PgRow) -> anyhow::Result<Match> {
    let data: &str = row.try_get("data")?;
    serde_json::from_str(data).context("stored match is not valid")
}

pub(super) async fn get_match(pool: &PgPool, id: Uuid) -> anyhow::Result<Option<Match>> {
    let row = sqlx::query("SELECT data FROM matches WHERE id = $1")
        .bind(id.to_string())
        .fetch_optional(pool)
        .await
        .context("reading a match")?;
    row.as_ref().map(match_from_row).transpose()
}

/// A climber's latest match, live or ended (each side of the match has its own index).
pub(super) async fn latest_match_of(pool: &PgPool, user: &UserId) -> anyhow::Result<Option<Match>> {
    let row = sqlx::query(
        "SELECT data FROM (\
           SELECT data, created_at FROM (SELECT data, created_at FROM matches \
             WHERE player_a = $1 ORDER BY created_at DESC LIMIT 1) AS a \
           UNION ALL \
           SELECT data, created_at FROM (SELECT data, created_at FROM matches \
             WHERE player_b = $2 ORDER BY created_at DESC LIMIT 1) AS b) AS latest \
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
    pool: &PgPool,
    user: &UserId,
) -> anyhow::Result<super::StoredStanding> {
    Ok(super::StoredStanding {
        ticket: queued_tickets(pool, Some(user)).await?.pop(),
        latest: latest_match_of(pool, user).await?,
        challenges: pending_challenges(pool, Some(user)).await?,
    })
}

pub(super) async fn live_matches(pool: &PgPool) -> anyhow::Result<Vec<Match>> {
    let rows = sqlx::query(
        "SELECT data FROM matches WHERE status IN ('ready_check', 'confirmed') ORDER BY created_at",
    )
    .fetch_all(pool)
    .await
    .context("reading live matches")?;
    rows.iter().map(match_from_row).collect()
}

pub(super) async fn pending_challenges(
    pool: &PgPool,
    only: Option<&UserId>,
) -> anyhow::Result<Vec<Challenge>> {
    let rows = match only {
        None => {
            sqlx::query("SELECT data FROM challenges WHERE status = 'pending' ORDER BY created_at")
        }
        Some(user) => sqlx::query(
            "SELECT data FROM challenges WHERE status = 'pending' \
             AND (from_user = $1 OR to_user = $2) ORDER BY created_at",
        )
        .bind(user.as_str())
        .bind(user.as_str()),
    }
    .fetch_all(pool)
    .await
    .context("reading pending challenges")?;
    rows.iter()
        .map(|row| {
            let data: &str = row.try_get("data")?;
            serde_json::from_str(data).context("stored challenge is not valid")
        })
        .collect()
}

pub(super) async fn queued_tickets(
    pool: &PgPool,
    only: Option<&UserId>,
) -> anyhow::Result<Vec<QueuedTicket>> {
    let rows = match only {
        None => sqlx::query(
            "SELECT user_id, discipline, scope, rating, queued_at FROM queue_tickets \
             ORDER BY queued_at, user_id",
        ),
        Some(user) => sqlx::query(
            "SELECT user_id, discipline, scope, rating, queued_at FROM queue_tickets \
             WHERE user_id = $1",
        )
        .bind(user.as_str()),
    }
    .fetch_all(pool)
    .await
    .context("reading queue tickets")?;
    rows.iter()
        .map(|row| {
            let scope: Option<String> = row.try_get("scope")?;
            let discipline: &str = row.try_get("discipline")?;
            Ok(QueuedTicket {
                user: user_from_row(row)?,
                discipline: Discipline::parse(discipline).map_err(anyhow::Error::msg)?,
                scope: scope
                    .map(Scope::parse)
                    .transpose()
                    .map_err(anyhow::Error::msg)?,
                rating: row.try_get("rating")?,
                queued_at: from_ms(row.try_get("queued_at")?),
            })
        })
        .collect()
}

pub(super) async fn user_known(pool: &PgPool, user: &UserId) -> anyhow::Result<bool> {
    let found: Option<i32> = sqlx::query_scalar("SELECT 1 FROM climbers WHERE user_id = $1")
        .bind(user.as_str())
        .fetch_optional(pool)
        .await
        .context("looking up a climber")?;
    Ok(found.is_some())
}

/// The ratings of the given climbers in the given disciplines, in one statement.
pub(super) async fn ratings_by_key(
    pool: PgPool,
    keys: Vec<(UserId, Discipline)>,
) -> anyhow::Result<HashMap<(UserId, Discipline), Rating>> {
    let (users, disciplines): (Vec<&str>, Vec<&str>) = keys
        .iter()
        .map(|(user, discipline)| (user.as_str(), discipline.as_str()))
        .unzip();
    let rows = sqlx::query(
        "SELECT user_id, discipline, rating, deviation, volatility, matches FROM ratings \
         WHERE (user_id, discipline) IN (SELECT * FROM unnest($1::text[], $2::text[]))",
    )
    .bind(&users)
    .bind(&disciplines)
    .fetch_all(&pool)
    .await
    .context("reading ratings")?;
    let mut found: HashMap<(&str, &str), Rating> = HashMap::with_capacity(rows.len());
    for row in &rows {
        found.insert(
            (row.try_get("user_id")?, row.try_get("discipline")?),
            rating_from_row(row)?,
        );
    }
    Ok(keys
        .iter()
        .filter_map(|key| {
            let rating = found.get(&(key.0.as_str(), key.1.as_str()))?;
            Some((key.clone(), *rating))
        })
        .collect())
}

/// One page of the leaderboard. The first row's rank is counted; the others follow from it
/// (a tie keeps the rank of the row above).
pub(super) async fn leaderboard(
    pool: &PgPool,
    discipline: Discipline,
    offset: u32,
    limit: u32,
) -> anyhow::Result<Vec<LeaderboardEntry>> {
    // One statement, so one snapshot: the page and the count above its first row see the same
    // ratings, in one round trip.
    let rows = sqlx::query(
        "WITH page AS ( \
             SELECT user_id, rating, deviation, volatility, matches FROM ratings \
             WHERE discipline = $1 ORDER BY rating DESC, user_id ASC LIMIT $2 OFFSET $3) \
         SELECT page.*, (SELECT COUNT(*) FROM ratings WHERE discipline = $1 \
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
        .map(|row| Ok((user_from_row(row)?, rating_from_row(row)?)))
        .collect::<anyhow::Result<_>>()?;
    Ok(rank_page(
        offset,
        u32::try_from(above).unwrap_or(u32::MAX),
        page,
    ))
}
