//! Duels: the open queue, direct challenges, the ready check, results, the leaderboard.
//! Handlers validate input, read ratings, and hand commands to the `MatchmakerActor`; a 2xx is
//! sent once the change and its events are stored.

use crate::http::body::Body;
use actix_web::{HttpResponse, web};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::openapi::{BearerRefusal, JsonBodyRefusal, MatchmakerRefusal};
use super::{AppState, auth::AuthUser};
use crate::actors::matchmaker::{MatchAction, MatchmakingError, Standing};
use crate::cluster::CallError;
use crate::domain::{Challenge, Discipline, LeaderboardEntry, Match, Scope, UserId};
use crate::error::{ApiError, ErrorBody, ErrorKind};
use crate::matchmaking::engine::Refusal;
use crate::matchmaking::pool::QueueKey;
use crate::matchmaking::rating;
use crate::store::Change;

/// Leaderboard page size when `limit` is not given.
const DEFAULT_LEADERBOARD_PAGE: u32 = 20;

impl Refusal {
    pub fn error_kind(self) -> ErrorKind {
        match self {
            Refusal::UnknownMatch | Refusal::UnknownChallenge | Refusal::NotQueued => {
                ErrorKind::NotFound
            }
            Refusal::NotYourMatch | Refusal::NotYourChallenge => ErrorKind::Forbidden,
            Refusal::ChallengeSelf | Refusal::WinnerNotAPlayer => ErrorKind::InvalidRequest,
            Refusal::AlreadyQueued
            | Refusal::InMatch
            | Refusal::NotInReadyCheck
            | Refusal::DeadlinePassed
            | Refusal::AlreadyReady
            | Refusal::NotConfirmed
            | Refusal::AlreadyReported
            | Refusal::ChallengeClosed
            | Refusal::OpponentBusy
            | Refusal::AlreadyChallenged
            | Refusal::TooManyChallenges => ErrorKind::Conflict(self.code()),
        }
    }

    /// The `error` field of a 409.
    pub fn code(self) -> &'static str {
        match self {
            Refusal::AlreadyQueued => "already_queued",
            Refusal::InMatch => "in_match",
            Refusal::NotQueued => "not_queued",
            Refusal::UnknownMatch => "unknown_match",
            Refusal::NotYourMatch => "not_your_match",
            Refusal::NotInReadyCheck => "not_in_ready_check",
            Refusal::DeadlinePassed => "deadline_passed",
            Refusal::AlreadyReady => "already_ready",
            Refusal::NotConfirmed => "not_confirmed",
            Refusal::AlreadyReported => "already_reported",
            Refusal::WinnerNotAPlayer => "winner_not_a_player",
            Refusal::UnknownChallenge => "unknown_challenge",
            Refusal::NotYourChallenge => "not_your_challenge",
            Refusal::ChallengeClosed => "challenge_closed",
            Refusal::ChallengeSelf => "challenge_self",
            Refusal::OpponentBusy => "opponent_busy",
            Refusal::AlreadyChallenged => "already_challenged",
            Refusal::TooManyChallenges => "too_many_challenges",
        }
    }
}

impl From<Refusal> for ApiError {
    fn from(refusal: Refusal) -> Self {
        ApiError::new(refusal.error_kind(), refusal.to_string())
    }
}

impl From<MatchmakingError> for ApiError {
    fn from(error: MatchmakingError) -> Self {
        match error {
            MatchmakingError::Refused(refusal) => refusal.into(),
            MatchmakingError::Store(message) => ApiError::internal(anyhow::anyhow!(message)),
            MatchmakingError::Fenced => unavailable(error.to_string()),
        }
    }
}

/// How long a client is asked to wait when the matchmaker did not answer.
const MATCHMAKER_RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

fn unavailable(message: String) -> ApiError {
    ApiError::new(ErrorKind::Unavailable, message).retry_after(MATCHMAKER_RETRY_AFTER)
}

impl From<CallError> for ApiError {
    fn from(error: CallError) -> Self {
        match error {
            CallError::Matchmaking(error) => error.into(),
            CallError::Unavailable(message) => unavailable(message),
            CallError::Store(error) => error.into(),
        }
    }
}

/// Records, once per node and climber, that the climber exists: only known climbers can be
/// challenged.
pub async fn remember(state: &AppState, user: &UserId) -> Result<(), ApiError> {
    if state.known_users.contains(user) {
        return Ok(());
    }
    state
        .notifier
        .apply(vec![(vec![Change::SeeUser(user.clone())], Vec::new())])
        .await?;
    state.known_users.insert(user);
    Ok(())
}

async fn rating_of(
    state: &AppState,
    user: &UserId,
    discipline: Discipline,
) -> Result<f64, ApiError> {
    Ok(state
        .store
        .rating(user, discipline)
        .await?
        .unwrap_or_else(rating::initial)
        .rating)
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct QueueView {
    pub discipline: Discipline,
    #[schema(required = true)]
    pub scope: Option<Scope>,
    pub queued_since: DateTime<Utc>,
    pub rating: f64,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ChallengeLists {
    pub incoming: Vec<Challenge>,
    pub outgoing: Vec<Challenge>,
}

/// Where the climber stands: `GET /v1/me/match`, and the answer to queue joins and leaves.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct MeView {
    /// Their ticket, while waiting in a queue.
    #[schema(required = true)]
    pub queue: Option<QueueView>,
    /// The match holding them, else their latest match (ended, or awaiting the opponent's
    /// result). Joins and leaves of the queue answer with a live match only (`null` when none
    /// holds them): `GET /v1/me/match` reads the latest ended one.
    #[serde(rename = "match")]
    #[schema(required = true)]
    pub current: Option<Match>,
    pub challenges: ChallengeLists,
}

/// Which match an answer carries when none holds the climber.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    /// Their latest ended match, read from the store (the engine forgets a match once it
    /// ended): `GET /v1/me/match`.
    Read,
    /// None: a queue join or leave, whose answer would otherwise cost a database read per
    /// join and halve the rate climbers are paired at.
    Skip,
}

async fn me_view(
    state: &AppState,
    user: &UserId,
    standing: Standing,
    ended: Ended,
) -> Result<MeView, ApiError> {
    let current = match (standing.current, standing.ended, ended) {
        (Some(m), _, _) => Some(m),
        (None, Some(m), Ended::Read) => Some(m),
        (None, None, Ended::Read) => state.store.latest_match(user).await?,
        (None, _, Ended::Skip) => None,
    };
    Ok(MeView {
        queue: standing.queue.map(|spot| QueueView {
            discipline: spot.queue.discipline,
            scope: spot.queue.scope,
            queued_since: DateTime::from_timestamp_millis(spot.ticket.queued_at)
                .unwrap_or_default(),
            rating: spot.ticket.rating,
        }),
        current,
        challenges: ChallengeLists {
            incoming: standing.incoming,
            outgoing: standing.outgoing,
        },
    })
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"discipline": "boulder", "scope": "gym-1"}))]
pub struct JoinBody {
    pub discipline: Discipline,
    /// A gym or region; climbers are only paired within the same scope.
    #[serde(default)]
    pub scope: Option<Scope>,
}

/// `POST /v1/queue`: wait for an opponent of a similar rating. `match_found` follows on the
/// stream, at once if one is waiting.
#[utoipa::path(
    post,
    path = "/v1/queue",
    tag = "user",
    summary = "Waits in the queue of a discipline for an opponent of a similar rating",
    description = "Climbers are paired within the same discipline and scope, the rating window \
        widening the longer they wait. When paired, both get `match_found` on their streams and \
        the match starts its ready check; this happens at once if a fitting opponent is waiting, \
        and then the answer already holds the `match`.",
    request_body = JoinBody,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Where the climber stands: queued, or already paired",
            body = MeView),
        (status = 400, body = ErrorBody, description = "`invalid_json`: malformed JSON; \
            `invalid_request`: a missing or unknown field, an unknown `discipline` or an invalid \
            `scope`"),
        BearerRefusal,
        (status = 409, body = ErrorBody, description = "`already_queued`: already waiting in a \
            queue; `in_match`: in a live match (ready check or confirmed)"),
        JsonBodyRefusal,
        MatchmakerRefusal,
    )
)]
pub async fn join_queue(
    AuthUser(user): AuthUser,
    body: Body<JoinBody>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    remember(&state, &user).await?;
    let JoinBody { discipline, scope } = body.into_inner();
    let rating = rating_of(&state, &user, discipline).await?;
    let standing = state
        .matchmaker
        .join(user.clone(), QueueKey { discipline, scope }, rating)
        .await?;
    Ok(HttpResponse::Created().json(me_view(&state, &user, standing, Ended::Skip).await?))
}

/// `DELETE /v1/queue`: stop waiting.
#[utoipa::path(
    delete,
    path = "/v1/queue",
    tag = "user",
    summary = "Stops waiting in the queue",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Where the climber stands, out of the queue", body = MeView),
        BearerRefusal,
        (status = 404, body = ErrorBody, description = "`not_found`: not waiting in a queue"),
        MatchmakerRefusal,
    )
)]
pub async fn leave_queue(
    AuthUser(user): AuthUser,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let standing = state.matchmaker.leave(user.clone()).await?;
    Ok(HttpResponse::Ok().json(me_view(&state, &user, standing, Ended::Skip).await?))
}

/// `GET /v1/me/match`: queue ticket, current or latest match, pending challenges.
#[utoipa::path(
    get,
    path = "/v1/me/match",
    tag = "user",
    operation_id = "my_match",
    summary = "Where the climber stands: queue ticket, current or latest match, pending challenges",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Where the climber stands", body = MeView),
        BearerRefusal,
        MatchmakerRefusal,
    )
)]
pub async fn me_match(
    AuthUser(user): AuthUser,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    remember(&state, &user).await?;
    let standing = state.matchmaker.standing(user.clone()).await?;
    Ok(HttpResponse::Ok().json(me_view(&state, &user, standing, Ended::Read).await?))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"opponent": "bob", "discipline": "lead"}))]
pub struct ChallengeBody {
    pub opponent: UserId,
    pub discipline: Discipline,
}

/// `POST /v1/challenges`: ask a climber for a duel; they get `match_requested`.
#[utoipa::path(
    post,
    path = "/v1/challenges",
    tag = "user",
    summary = "Challenges a climber to a duel",
    description = "The opponent gets `match_requested`; they accept or decline before \
        `expires_at`, or both get `challenge_expired`.",
    request_body = ChallengeBody,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "The pending challenge", body = Challenge),
        (status = 400, body = ErrorBody, description = "`invalid_json`: malformed JSON; \
            `invalid_request`: a missing or unknown field, an invalid `opponent`, an unknown \
            `discipline`, or a challenge to oneself"),
        BearerRefusal,
        (status = 404, body = ErrorBody, description = "`not_found`: the opponent has never \
            signed in to Belay"),
        (status = 409, body = ErrorBody, description = "`in_match`: the challenger is in a live \
            match; `opponent_busy`: the opponent is; `already_challenged`: a challenge to this \
            opponent is pending; `too_many_challenges`: 10 outgoing challenges are pending"),
        JsonBodyRefusal,
        MatchmakerRefusal,
    )
)]
pub async fn create_challenge(
    AuthUser(user): AuthUser,
    body: Body<ChallengeBody>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    remember(&state, &user).await?;
    let ChallengeBody {
        opponent,
        discipline,
    } = body.into_inner();
    if opponent == user {
        return Err(Refusal::ChallengeSelf.into());
    }
    if !state.store.user_known(&opponent).await? {
        return Err(ApiError::new(
            ErrorKind::NotFound,
            format!("no climber {opponent} has signed in to Belay"),
        ));
    }
    let challenge = state
        .matchmaker
        .challenge(user, opponent, discipline)
        .await?;
    Ok(HttpResponse::Created().json(challenge))
}

/// `POST /v1/challenges/{id}/accept`: the challenged climber accepts; `match_found` to both.
#[utoipa::path(
    post,
    path = "/v1/challenges/{id}/accept",
    tag = "user",
    summary = "Accepts a challenge: the two climbers go straight to a ready check",
    description = "Both get `match_found`.",
    params(("id" = Uuid, Path, description = "The `challenge_id`")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The new match, in its ready check", body = Match),
        BearerRefusal,
        (status = 403, body = ErrorBody, description = "`forbidden`: the caller sent this \
            challenge; only its opponent answers it"),
        (status = 404, body = ErrorBody, description = "`not_found`: no such pending challenge \
            to the caller, or `id` is not a UUID"),
        (status = 409, body = ErrorBody, description = "`challenge_closed`: the challenge is no \
            longer pending (it expired); `in_match`: the caller is in a live match; \
            `opponent_busy`: the challenger is"),
        MatchmakerRefusal,
    )
)]
pub async fn accept_challenge(
    AuthUser(user): AuthUser,
    path: web::Path<Uuid>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let id = path.into_inner();
    let challenge = state
        .matchmaker
        .pending_challenge(id)
        .await?
        .ok_or(Refusal::UnknownChallenge)?;
    let ratings = (
        rating_of(&state, &challenge.from, challenge.discipline).await?,
        rating_of(&state, &user, challenge.discipline).await?,
    );
    let m = state.matchmaker.accept(id, user, ratings).await?;
    Ok(HttpResponse::Ok().json(m))
}

/// `POST /v1/challenges/{id}/decline`: the challenger gets `challenge_declined`.
#[utoipa::path(
    post,
    path = "/v1/challenges/{id}/decline",
    tag = "user",
    summary = "Declines a challenge",
    description = "The challenger gets `challenge_declined`.",
    params(("id" = Uuid, Path, description = "The `challenge_id`")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The challenge, declined", body = Challenge),
        BearerRefusal,
        (status = 403, body = ErrorBody, description = "`forbidden`: the caller sent this \
            challenge; only its opponent answers it"),
        (status = 404, body = ErrorBody, description = "`not_found`: no such pending challenge \
            to the caller, or `id` is not a UUID"),
        (status = 409, body = ErrorBody, description = "`challenge_closed`: the challenge is no \
            longer pending (it expired)"),
        MatchmakerRefusal,
    )
)]
pub async fn decline_challenge(
    AuthUser(user): AuthUser,
    path: web::Path<Uuid>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let challenge = state.matchmaker.decline(path.into_inner(), user).await?;
    Ok(HttpResponse::Ok().json(challenge))
}

/// Runs a player's action on a match. An ended match is not in the engine any more: the store
/// tells whether the caller played in it (409) or not (403).
async fn act(
    state: &AppState,
    user: UserId,
    id: Uuid,
    action: MatchAction,
) -> Result<HttpResponse, ApiError> {
    let late = match &action {
        MatchAction::Ready | MatchAction::Cancel => Refusal::NotInReadyCheck,
        MatchAction::Report { .. } => Refusal::NotConfirmed,
    };
    let result = state.matchmaker.act(id, user.clone(), action).await;
    match result {
        Ok(m) => Ok(HttpResponse::Ok().json(m)),
        Err(CallError::Matchmaking(MatchmakingError::Refused(Refusal::UnknownMatch))) => {
            match state.store.get_match(id).await? {
                None => Err(Refusal::UnknownMatch.into()),
                Some(m) if m.player(&user).is_none() => Err(Refusal::NotYourMatch.into()),
                Some(_) => Err(late.into()),
            }
        }
        Err(other) => Err(other.into()),
    }
}

/// `POST /v1/matches/{id}/ready`: the opponent gets `opponent_ready`; both → `match_confirmed`.
#[utoipa::path(
    post,
    path = "/v1/matches/{id}/ready",
    tag = "user",
    operation_id = "ready_match",
    summary = "Confirms the caller is ready to climb",
    description = "The opponent gets `opponent_ready`; once both are ready, both get \
        `match_confirmed` and the results are due by `result_deadline`.",
    params(("id" = Uuid, Path, description = "The `match_id`")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The match: still in its ready check, or confirmed",
            body = Match),
        BearerRefusal,
        (status = 403, body = ErrorBody, description = "`forbidden`: the caller is not a player \
            of this match"),
        (status = 404, body = ErrorBody, description = "`not_found`: no such match, or `id` is \
            not a UUID"),
        (status = 409, body = ErrorBody, description = "`not_in_ready_check`: the ready check \
            is over (the match is confirmed or ended); `deadline_passed`: the ready deadline has \
            passed; `already_ready`: the caller is already ready"),
        MatchmakerRefusal,
    )
)]
pub async fn ready(
    AuthUser(user): AuthUser,
    path: web::Path<Uuid>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    act(&state, user, path.into_inner(), MatchAction::Ready).await
}

/// `POST /v1/matches/{id}/cancel`: `match_cancelled` to both; a ready opponent is requeued.
#[utoipa::path(
    post,
    path = "/v1/matches/{id}/cancel",
    tag = "user",
    operation_id = "cancel_match",
    summary = "Calls the match off during its ready check",
    description = "Both get `match_cancelled`; an opponent who was ready goes back to the queue \
        at their original queue time and gets `requeued`.",
    params(("id" = Uuid, Path, description = "The `match_id`")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The match, cancelled", body = Match),
        BearerRefusal,
        (status = 403, body = ErrorBody, description = "`forbidden`: the caller is not a player \
            of this match"),
        (status = 404, body = ErrorBody, description = "`not_found`: no such match, or `id` is \
            not a UUID"),
        (status = 409, body = ErrorBody, description = "`not_in_ready_check`: the ready check \
            is over (the match is confirmed or ended); `deadline_passed`: the ready deadline has \
            passed (the match is about to be cancelled as a timeout)"),
        MatchmakerRefusal,
    )
)]
pub async fn cancel(
    AuthUser(user): AuthUser,
    path: web::Path<Uuid>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    act(&state, user, path.into_inner(), MatchAction::Cancel).await
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"winner": "ana"}))]
pub struct ResultBody {
    pub winner: UserId,
}

/// `POST /v1/matches/{id}/result`: both players report the winner; agreement settles the match
/// and updates ratings, disagreement marks it disputed.
#[utoipa::path(
    post,
    path = "/v1/matches/{id}/result",
    tag = "user",
    summary = "Reports the winner of a confirmed match",
    description = "The opponent gets `result_reported`. When both reports name the same winner \
        the match is settled: both get `match_result` with their new rating, and climbers whose \
        leaderboard rank moved get `rank_changed`. Different winners make it disputed \
        (`match_disputed`), and ratings stay as they were; so they do when the result deadline \
        passes without both reports (`match_expired`).",
    params(("id" = Uuid, Path, description = "The `match_id`")),
    request_body = ResultBody,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The match: awaiting the opponent's report, settled or \
            disputed", body = Match),
        (status = 400, body = ErrorBody, description = "`invalid_json`: malformed JSON; \
            `invalid_request`: a missing or unknown field, an invalid `winner`, or a `winner` who \
            is not one of the two players"),
        BearerRefusal,
        (status = 403, body = ErrorBody, description = "`forbidden`: the caller is not a player \
            of this match"),
        (status = 404, body = ErrorBody, description = "`not_found`: no such match, or `id` is \
            not a UUID"),
        (status = 409, body = ErrorBody, description = "`not_confirmed`: the match is not \
            confirmed (still in its ready check, or ended); `already_reported`: the caller \
            already reported; `deadline_passed`: the result deadline has passed"),
        JsonBodyRefusal,
        MatchmakerRefusal,
    )
)]
pub async fn report_result(
    AuthUser(user): AuthUser,
    path: web::Path<Uuid>,
    body: Body<ResultBody>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let winner = body.into_inner().winner;
    act(
        &state,
        user,
        path.into_inner(),
        MatchAction::Report { winner },
    )
    .await
}

/// `GET /v1/matches/{id}`: the match, live or ended; players only.
#[utoipa::path(
    get,
    path = "/v1/matches/{id}",
    tag = "user",
    summary = "A match, live or ended; for its players only",
    params(("id" = Uuid, Path, description = "The `match_id`")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The match", body = Match),
        BearerRefusal,
        (status = 403, body = ErrorBody, description = "`forbidden`: the caller is not a player \
            of this match"),
        (status = 404, body = ErrorBody, description = "`not_found`: no such match, or `id` is \
            not a UUID"),
        MatchmakerRefusal,
    )
)]
pub async fn get_match(
    AuthUser(user): AuthUser,
    path: web::Path<Uuid>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let id = path.into_inner();
    let live = state.matchmaker.live_match(id).await?;
    let m = match live {
        Some(m) => m,
        None => state
            .store
            .get_match(id)
            .await?
            .ok_or(Refusal::UnknownMatch)?,
    };
    if m.player(&user).is_none() {
        return Err(Refusal::NotYourMatch.into());
    }
    Ok(HttpResponse::Ok().json(m))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LeaderboardParams {
    /// `boulder`, `lead` or `speed`.
    #[param(value_type = Discipline)]
    discipline: Option<String>,
    /// Page size: 1 to `matchmaking.max_leaderboard_page` (100 by default); 20 when left out.
    #[param(minimum = 1)]
    limit: Option<u32>,
    /// Entries to skip.
    offset: Option<u32>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LeaderboardPage {
    pub discipline: Discipline,
    pub entries: Vec<LeaderboardEntry>,
    /// Pass as `offset` for the next page; null at the end.
    #[schema(required = true)]
    pub next_offset: Option<u32>,
}

/// `GET /v1/leaderboard?discipline=`: highest rating first; ties share a rank.
#[utoipa::path(
    get,
    path = "/v1/leaderboard",
    tag = "user",
    summary = "The leaderboard of a discipline, a page at a time",
    description = "Highest rating first; climbers with the same rating share a rank. Only \
        climbers with a settled match are ranked.",
    params(LeaderboardParams),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "A page of the leaderboard", body = LeaderboardPage),
        (status = 400, body = ErrorBody, description = "`invalid_request`: a missing or unknown \
            `discipline`, `limit` out of range, or a malformed query string"),
        BearerRefusal,
    )
)]
pub async fn leaderboard(
    AuthUser(_user): AuthUser,
    params: web::Query<LeaderboardParams>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let raw = params
        .discipline
        .as_deref()
        .ok_or_else(|| ApiError::bad_request("discipline is required: boulder, lead or speed"))?;
    let discipline = Discipline::parse(raw).map_err(ApiError::bad_request)?;
    let max = state.settings.matchmaking.max_leaderboard_page;
    let limit = params.limit.unwrap_or(DEFAULT_LEADERBOARD_PAGE.min(max));
    if limit == 0 || limit > max {
        return Err(ApiError::bad_request(format!(
            "limit must be between 1 and {max}"
        )));
    }
    let offset = params.offset.unwrap_or(0);
    // One more than asked tells whether a next page exists.
    let mut entries = state
        .store
        .leaderboard(discipline, offset, limit + 1)
        .await?;
    let next_offset = (entries.len() > limit as usize).then(|| offset + limit);
    entries.truncate(limit as usize);
    Ok(HttpResponse::Ok().json(LeaderboardPage {
        discipline,
        entries,
        next_offset,
    }))
}

/// Climbers this node has recorded as known, so `remember` writes once per climber. Each is
/// kept as a 64-bit hash of their id (with a per-process key): 8 bytes a climber plus the table,
/// whatever the id's length. Two ids sharing a hash would skip one write of the second; at 2^-64
/// a pair, that is never.
pub struct KnownUsers {
    hasher: std::hash::RandomState,
    seen: std::sync::Mutex<std::collections::HashSet<u64>>,
}

/// Climbers remembered in memory at most (a table of about 1.2 MiB); past it the set starts
/// again (the store keeps all).
const MAX_KNOWN_IN_MEMORY: usize = 100_000;

impl Default for KnownUsers {
    fn default() -> Self {
        KnownUsers {
            hasher: std::hash::RandomState::new(),
            seen: Default::default(),
        }
    }
}

impl KnownUsers {
    fn key(&self, user: &UserId) -> u64 {
        std::hash::BuildHasher::hash_one(&self.hasher, user.as_str())
    }

    pub fn contains(&self, user: &UserId) -> bool {
        let key = self.key(user);
        self.seen.lock().map(|s| s.contains(&key)).unwrap_or(false)
    }

    pub fn insert(&self, user: &UserId) {
        let key = self.key(user);
        if let Ok(mut seen) = self.seen.lock() {
            if seen.len() >= MAX_KNOWN_IN_MEMORY {
                seen.clear();
            }
            seen.insert(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(id: &str) -> UserId {
        UserId::parse(id).unwrap()
    }

    #[test]
    fn known_users_are_told_apart_and_start_again_past_the_cap() {
        let known = KnownUsers::default();
        known.insert(&user("ana"));
        assert!(known.contains(&user("ana")));
        assert!(!known.contains(&user("bob")));
        for n in 1..MAX_KNOWN_IN_MEMORY {
            known.insert(&user(&format!("climber-{n}")));
        }
        assert!(known.contains(&user("ana")) && known.contains(&user("climber-1")));
        // One more than the cap: the set starts again with the newcomer alone.
        known.insert(&user("bob"));
        assert!(known.contains(&user("bob")));
        assert!(!known.contains(&user("ana")));
    }
}
