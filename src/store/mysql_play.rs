//! MariaDB / MySQL: the head-row locks and the SQL of the matchmaking tables (climbers, matches,
//! challenges, ratings, ascents, queue tickets). Writes run inside the writer's transaction, so
//! the events they cause commit with them; the decisions are in `rules`.

use std::collections::HashMap;

use anyhow::Context;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::mysql::{MySqlPool, MySqlRow};
use sqlx::{MySql, QueryBuilder, Row, Transaction};
use uuid::Uuid;

use super::MatchmakerFence;
use super::mysql::{
    MySqlTx, ROWS_PER_STATEMENT, from_ms, opt_text, push_list, text, to_ms, user_of,
};
use super::rules::{FoldedRows, PlayTx, ascent_columns, rank_page};
use super::writer::padded;
use crate::domain::{
    Challenge, Discipline, LeaderboardEntry, Match, NewAscent, QueuedTicket, Rating, Scope, UserId,
};

/// `users` (sorted) padded to a power of two with repeats of the last one: the statement that
/// creates missing head rows takes a handful of shapes, and a repeat is a no-op in the same
/// lock order.
fn padded_with_last<'a>(users: &[&'a str]) -> Vec<&'a str> {
    let mut padded = users.to_vec();
    if let Some(last) = users.last() {
        padded.resize(users.len().next_power_of_two(), last);
    }
    padded
}

/// Writes the folded matchmaking rows (see [`super::rules::Folded`]): one statement per list
/// (per chunk of rows).
pub(super) async fn write_folded(
    tx: &mut Transaction<'static, MySql>,
    folded: &FoldedRows<'_>,
    now: DateTime<Utc>,
) -> anyhow::Result<()> {
    for chunk in folded.climbers.chunks(ROWS_PER_STATEMENT) {
        // INSERT IGNORE takes a shared lock on a climber already there: two nodes seeing the
        // same climber do not wait for each other.
        let mut qb =
            QueryBuilder::<MySql>::new("INSERT IGNORE INTO climbers (user_id, first_seen) ");
        qb.push_values(chunk, |mut b, user| {
            b.push_bind(*user).push_bind(to_ms(now));
        });
        qb.build()
            .execute(&mut **tx)
            .await
            .context("recording climbers")?;
    }

    let challenges: Vec<(&Challenge, String)> = folded
        .challenges
        .iter()
        .map(|c| Ok((*c, serde_json::to_string(c)?)))
        .collect::<anyhow::Result<_>>()?;
    for chunk in challenges.chunks(ROWS_PER_STATEMENT) {
        let mut qb = QueryBuilder::<MySql>::new(
            "INSERT INTO challenges (id, status, from_user, to_user, data, created_at) ",
        );
        qb.push_values(chunk, |mut b, (c, data)| {
            b.push_bind(c.challenge_id.to_string())
                .push_bind(c.status.as_str())
                .push_bind(c.from.as_str())
                .push_bind(c.to.as_str())
                .push_bind(data.as_str())
                .push_bind(to_ms(c.created_at));
        })
        .push(" ON DUPLICATE KEY UPDATE status = VALUES(status), data = VALUES(data)");
        qb.build()
            .execute(&mut **tx)
            .await
            .context("saving challenges")?;
    }

    let matches: Vec<(&Match, String)> = folded
        .matches
        .iter()
        .map(|m| Ok((*m, serde_json::to_string(m)?)))
        .collect::<anyhow::Result<_>>()?;
    for chunk in matches.chunks(ROWS_PER_STATEMENT) {
        let mut qb = QueryBuilder::<MySql>::new(
            "INSERT INTO matches \
             (id, status, discipline, player_a, player_b, data, created_at, updated_at) ",
        );
        qb.push_values(chunk, |mut b, (m, data)| {
            b.push_bind(m.match_id.to_string())
                .push_bind(m.status.as_str())
                .push_bind(m.discipline.as_str())
                .push_bind(m.players[0].user_id.as_str())
                .push_bind(m.players[1].user_id.as_str())
                .push_bind(data.as_str())
                .push_bind(to_ms(m.created_at))
                .push_bind(to_ms(m.updated_at));
        })
        .push(
            " ON DUPLICATE KEY UPDATE status = VALUES(status), data = VALUES(data), \
             updated_at = VALUES(updated_at)",
        );
        qb.build()
            .execute(&mut **tx)
            .await
            .context("saving matches")?;
    }

    for chunk in folded.saved_tickets.chunks(ROWS_PER_STATEMENT) {
        let mut qb = QueryBuilder::<MySql>::new(
            "INSERT INTO queue_tickets (user_id, discipline, scope, rating, queued_at) ",
        );
        qb.push_values(chunk, |mut b, t| {
            b.push_bind(t.user.as_str())
                .push_bind(t.discipline.as_str())
                .push_bind(t.scope.as_ref().map(|s| s.as_str()))
                .push_bind(t.rating)
                .push_bind(to_ms(t.queued_at));
        })
        .push(
            " ON DUPLICATE KEY UPDATE discipline = VALUES(discipline), scope = VALUES(scope), \
             rating = VALUES(rating), queued_at = VALUES(queued_at)",
        );
        qb.build()
            .execute(&mut **tx)
            .await
            .context("saving queue tickets")?;
    }
    for chunk in folded.dropped_tickets.chunks(ROWS_PER_STATEMENT) {
        let mut qb = QueryBuilder::<MySql>::new("DELETE FROM queue_tickets WHERE user_id IN ");
        push_list(&mut qb, padded(chunk));
        qb.build()
            .execute(&mut **tx)
            .await
            .context("dropping queue tickets")?;
    }
    Ok(())
}

fn rating_from_row(row: &MySqlRow) -> anyhow::Result<Rating> {
    Ok(Rating {
        rating: row.try_get("rating")?,
        deviation: row.try_get("deviation")?,
        volatility: row.try_get("volatility")?,
        matches: u32::try_from(row.try_get::<i64, _>("matches")?).unwrap_or(u32::MAX),
    })
}

#[async_trait]
impl PlayTx for MySqlTx {
    async fn lock_heads(&mut self, users: &[String]) -> anyhow::Result<HashMap<String, i64>> {
        let mut heads = HashMap::with_capacity(users.len());
        for chunk in users.chunks(ROWS_PER_STATEMENT) {
            let chunk: Vec<&str> = chunk.iter().map(String::as_str).collect();
            // Missing head rows first, in user-id order. A no-op update rather than INSERT
            // IGNORE: on a row already there it takes the exclusive lock at once, where INSERT
            // IGNORE's shared lock, upgraded by the SELECT below, deadlocks two nodes.
            let mut qb = QueryBuilder::<MySql>::new(
                "INSERT INTO user_cursors (user_id, last_cursor, unread) ",
            );
            qb.push_values(padded_with_last(&chunk), |mut b, user| {
                b.push_bind(user).push("0, 0");
            })
            .push(" ON DUPLICATE KEY UPDATE last_cursor = last_cursor");
            qb.build()
                .execute(&mut *self.tx)
                .await
                .context("creating head rows")?;
            // Held already; the locking read returns the latest committed value whatever the
            // isolation level.
            let mut qb = QueryBuilder::<MySql>::new(
                "SELECT user_id, last_cursor FROM user_cursors WHERE user_id IN ",
            );
            push_list(&mut qb, padded(&chunk));
            qb.push(" ORDER BY user_id FOR UPDATE");
            let rows = qb
                .build()
                .fetch_all(&mut *self.tx)
                .await
                .context("locking head rows")?;
            for row in &rows {
                heads.insert(text(row, "user_id")?, row.try_get("last_cursor")?);
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
             WHERE user_id = ? AND discipline = ?",
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
            "SELECT user_id, rating FROM ratings WHERE discipline = ? AND rating >= ? \
             AND rating <= ? AND user_id NOT IN (?, ?)",
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
            .map(|row| Ok((user_of(row, "user_id")?, row.try_get::<f64, _>("rating")?)))
            .collect()
    }

    async fn count_rated_above(
        &mut self,
        discipline: Discipline,
        hi: f64,
        except: [&UserId; 2],
    ) -> anyhow::Result<u32> {
        let above: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM ratings WHERE discipline = ? AND rating > ? \
             AND user_id NOT IN (?, ?)",
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
             VALUES (?, ?, ?, ?, ?, ?, ?) \
             ON DUPLICATE KEY UPDATE rating = VALUES(rating), deviation = VALUES(deviation), \
             volatility = VALUES(volatility), matches = VALUES(matches), \
             updated_at = VALUES(updated_at)",
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
        let found = sqlx::query("SELECT 1 FROM ascents WHERE user_id = ? AND route_id = ? LIMIT 1")
            .bind(a.user.as_str())
            .bind(a.route_id.as_str())
            .fetch_optional(&mut *self.tx)
            .await
            .context("looking for an earlier send")?;
        Ok(found.is_some())
    }

    async fn hardest(&mut self, a: &NewAscent) -> anyhow::Result<Option<(String, i64)>> {
        let best = sqlx::query(
            "SELECT grade, difficulty FROM ascents WHERE user_id = ? AND discipline = ? \
             AND difficulty IS NOT NULL ORDER BY difficulty DESC, created_at ASC, seq ASC LIMIT 1",
        )
        .bind(a.user.as_str())
        .bind(a.discipline.as_str())
        .fetch_optional(&mut *self.tx)
        .await
        .context("reading the hardest grade")?;
        best.map(|row| Ok((text(&row, "grade")?, row.try_get("difficulty")?)))
            .transpose()
    }

    async fn fastest(&mut self, a: &NewAscent) -> anyhow::Result<Option<i64>> {
        sqlx::query_scalar("SELECT MIN(time_ms) FROM ascents WHERE user_id = ? AND discipline = ?")
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
             VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
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
            last_command: opt_text(&row, "last_command")?,
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

pub(super) async fn matchmaker_fence(pool: &MySqlPool) -> anyhow::Result<MatchmakerFence> {
    let row = sqlx::query("SELECT token, last_command FROM matchmaker_fence WHERE id = 1")
        .fetch_one(pool)
        .await
        .context("reading the matchmaker fence")?;
    Ok(MatchmakerFence {
        token: row.try_get("token")?,
        last_command: opt_text(&row, "last_command")?,
    })
}

fn match_from_row(row: &MySqlRow) -> anyhow::Result<Match> {
    serde_json::from_str(&text(row, "data")?).context("stored match is not valid")
}

pub(super) async fn get_match(pool: &MySqlPool, id: Uuid) -> anyhow::Result<Option<Match>> {
    let row = sqlx::query("SELECT data FROM matches WHERE id = ?")
        .bind(id.to_string())
        .fetch_optional(pool)
        .await
        .context("reading a match")?;
    row.as_ref().map(match_from_row).transpose()
}

/// A climber's latest match, live or ended (each side of the match has its own index).
pub(super) async fn latest_match_of(
    pool: &MySqlPool,
    user: &UserId,
) -> anyhow::Result<Option<Match>> {
    let row = sqlx::query(
        "SELECT data FROM (\
           SELECT data, created_at FROM (SELECT data, created_at FROM matches \
             WHERE player_a = ? ORDER BY created_at DESC LIMIT 1) AS a \
           UNION ALL \
           SELECT data, created_at FROM (SELECT data, created_at FROM matches \
             WHERE player_b = ? ORDER BY created_at DESC LIMIT 1) AS b) AS latest \
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
    pool: &MySqlPool,
    user: &UserId,
) -> anyhow::Result<super::StoredStanding> {
    Ok(super::StoredStanding {
        ticket: queued_tickets(pool, Some(user)).await?.pop(),
        latest: latest_match_of(pool, user).await?,
        challenges: pending_challenges(pool, Some(user)).await?,
    })
}

pub(super) async fn live_matches(pool: &MySqlPool) -> anyhow::Result<Vec<Match>> {
    let rows = sqlx::query(
        "SELECT data FROM matches WHERE status IN ('ready_check', 'confirmed') ORDER BY created_at",
    )
    .fetch_all(pool)
    .await
    .context("reading live matches")?;
    rows.iter().map(match_from_row).collect()
}

pub(super) async fn pending_challenges(
    pool: &MySqlPool,
    only: Option<&UserId>,
) -> anyhow::Result<Vec<Challenge>> {
    let rows = match only {
        None => {
            sqlx::query("SELECT data FROM challenges WHERE status = 'pending' ORDER BY created_at")
        }
        Some(user) => sqlx::query(
            "SELECT data FROM challenges WHERE status = 'pending' \
             AND (from_user = ? OR to_user = ?) ORDER BY created_at",
        )
        .bind(user.as_str())
        .bind(user.as_str()),
    }
    .fetch_all(pool)
    .await
    .context("reading pending challenges")?;
    rows.iter()
        .map(|row| {
            serde_json::from_str(&text(row, "data")?).context("stored challenge is not valid")
        })
        .collect()
}

pub(super) async fn queued_tickets(
    pool: &MySqlPool,
    only: Option<&UserId>,
) -> anyhow::Result<Vec<QueuedTicket>> {
    let rows = match only {
        None => sqlx::query(
            "SELECT user_id, discipline, scope, rating, queued_at FROM queue_tickets \
             ORDER BY queued_at, user_id",
        ),
        Some(user) => sqlx::query(
            "SELECT user_id, discipline, scope, rating, queued_at FROM queue_tickets \
             WHERE user_id = ?",
        )
        .bind(user.as_str()),
    }
    .fetch_all(pool)
    .await
    .context("reading queue tickets")?;
    rows.iter()
        .map(|row| {
            Ok(QueuedTicket {
                user: user_of(row, "user_id")?,
                discipline: Discipline::parse(&text(row, "discipline")?)
                    .map_err(anyhow::Error::msg)?,
                scope: super::mysql::opt_text(row, "scope")?
                    .map(Scope::parse)
                    .transpose()
                    .map_err(anyhow::Error::msg)?,
                rating: row.try_get("rating")?,
                queued_at: from_ms(row.try_get("queued_at")?),
            })
        })
        .collect()
}

pub(super) async fn user_known(pool: &MySqlPool, user: &UserId) -> anyhow::Result<bool> {
    let found = sqlx::query("SELECT 1 FROM climbers WHERE user_id = ?")
        .bind(user.as_str())
        .fetch_optional(pool)
        .await
        .context("looking up a climber")?;
    Ok(found.is_some())
}

/// Every rating of the given climbers, in one statement: `(user, discipline, rating)`.
pub(super) async fn ratings_of(
    pool: &MySqlPool,
    users: &[&str],
) -> anyhow::Result<Vec<(String, String, Rating)>> {
    if users.is_empty() {
        return Ok(Vec::new());
    }
    let mut qb = QueryBuilder::<MySql>::new(
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
                text(row, "user_id")?,
                text(row, "discipline")?,
                rating_from_row(row)?,
            ))
        })
        .collect()
}

/// One page of the leaderboard. The first row's rank is counted; the others follow from it
/// (a tie keeps the rank of the row above).
pub(super) async fn leaderboard(
    pool: &MySqlPool,
    discipline: Discipline,
    offset: u32,
    limit: u32,
) -> anyhow::Result<Vec<LeaderboardEntry>> {
    // One statement, so one snapshot: the page and the count above its first row see the same
    // ratings (each statement reads its own snapshot under READ COMMITTED).
    let rows = sqlx::query(
        "WITH page AS (SELECT user_id, rating, deviation, volatility, matches FROM ratings \
                       WHERE discipline = ? ORDER BY rating DESC, user_id ASC LIMIT ? OFFSET ?) \
         SELECT page.*, (SELECT COUNT(*) FROM ratings a WHERE a.discipline = ? \
                         AND a.rating > (SELECT MAX(rating) FROM page)) AS above \
         FROM page ORDER BY rating DESC, user_id ASC",
    )
    .bind(discipline.as_str())
    .bind(i64::from(limit))
    .bind(i64::from(offset))
    .bind(discipline.as_str())
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
        .map(|row| Ok((user_of(row, "user_id")?, rating_from_row(row)?)))
        .collect::<anyhow::Result<_>>()?;
    Ok(rank_page(
        offset,
        u32::try_from(above).unwrap_or(u32::MAX),
        page,
    ))
}
