//! `POST /v1/ascents`: a climber logs a send. A first send of the route gives
//! `route_completed`; a new hardest grade or fastest time gives `personal_record`.

use crate::http::body::Body;
use actix_web::{HttpResponse, web};
use chrono::Utc;
use serde::Deserialize;
use serde_json::json;
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{AdditionalProperties, ObjectBuilder, OneOfBuilder, Schema, Type};
use utoipa::{PartialSchema, ToSchema};
use uuid::Uuid;

use super::openapi::{BearerRefusal, JsonBodyRefusal};
use super::{AppState, auth::AuthUser};
use crate::domain::grade::{self, MAX_TIME_MS, MIN_TIME_MS, validate_time_ms};
use crate::domain::{AscentOutcome, AscentResult, Discipline, Grade, NewAscent, RouteId};
use crate::error::{ApiError, ErrorBody};
use crate::store::{Change, ChangeOutcome};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AscentBody {
    pub route_id: RouteId,
    pub discipline: Discipline,
    #[serde(default)]
    pub grade: Option<String>,
    #[serde(default, deserialize_with = "crate::domain::ids::integral_u64")]
    pub time_ms: Option<u64>,
}

/// A grade for boulder and lead, a time for speed: one branch each, so that the document
/// refuses a body with neither (or the wrong one) as `log_ascent` does.
impl PartialSchema for AscentBody {
    fn schema() -> RefOr<Schema> {
        let absent = || ObjectBuilder::new().schema_type(Type::Null);
        let disciplines = |names: &[&str]| {
            ObjectBuilder::new()
                .schema_type(Type::String)
                .enum_values(Some(names.to_vec()))
        };
        let graded = |discipline: Discipline, scales: &str| {
            ObjectBuilder::new()
                .property("route_id", RouteId::schema())
                .property("discipline", disciplines(&[discipline.as_str()]))
                .property(
                    "grade",
                    ObjectBuilder::new()
                        .schema_type(Type::String)
                        .pattern(grade::pattern(discipline))
                        .description(Some(scales)),
                )
                .property("time_ms", absent())
                .required("route_id")
                .required("discipline")
                .required("grade")
                .additional_properties(Some(AdditionalProperties::<Schema>::FreeForm(false)))
        };
        let timed = ObjectBuilder::new()
            .property("route_id", RouteId::schema())
            .property("discipline", disciplines(&["speed"]))
            .property(
                "time_ms",
                ObjectBuilder::new()
                    .schema_type(Type::Integer)
                    .minimum(Some(MIN_TIME_MS))
                    .maximum(Some(MAX_TIME_MS))
                    .description(Some("The time in milliseconds, 1 second to 10 minutes")),
            )
            .property("grade", absent())
            .required("route_id")
            .required("discipline")
            .required("time_ms")
            .additional_properties(Some(AdditionalProperties::<Schema>::FreeForm(false)));
        OneOfBuilder::new()
            .item(graded(
                Discipline::Boulder,
                "Fontainebleau (`3` to `9A`, such as `7A+`) or V-scale (`VB` to `V17`); letters in \
                 either case",
            ))
            .item(graded(
                Discipline::Lead,
                "French sport grade, `4a` to `9c+` (such as `7a+`); letters in either case",
            ))
            .item(timed)
            .examples([json!({"route_id": "r1", "discipline": "boulder", "grade": "7A+"})])
            .into()
    }
}

impl ToSchema for AscentBody {}

#[utoipa::path(
    post,
    path = "/v1/ascents",
    tag = "user",
    summary = "Logs a send of a route",
    description = "A first send of the route gives `route_completed`; a new hardest grade \
        (boulder, lead) or fastest time (speed) in the discipline gives `personal_record`.",
    request_body = AscentBody,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "The ascent was logged", body = AscentOutcome),
        (status = 400, body = ErrorBody, description = "`invalid_json`: malformed JSON; \
            `invalid_request`: a missing or unknown field, an invalid `route_id`, an unknown \
            `discipline`, both `grade` and `time_ms`, no `grade` for boulder or lead, no \
            `time_ms` for speed, a grade not of the discipline's scale, or a time outside 1 \
            second to 10 minutes"),
        BearerRefusal,
        JsonBodyRefusal,
    )
)]
pub async fn log_ascent(
    AuthUser(user): AuthUser,
    body: Body<AscentBody>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let result = match (body.discipline, body.grade, body.time_ms) {
        (_, Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "give either grade (boulder, lead) or time_ms (speed), not both",
            ));
        }
        (Discipline::Speed, None, Some(ms)) => {
            AscentResult::TimeMs(validate_time_ms(ms).map_err(ApiError::bad_request)?)
        }
        (Discipline::Speed, _, None) => {
            return Err(ApiError::bad_request("speed ascents need time_ms"));
        }
        (discipline, Some(raw), None) => {
            AscentResult::Grade(Grade::parse(discipline, &raw).map_err(ApiError::bad_request)?)
        }
        (_, None, _) => {
            return Err(ApiError::bad_request(
                "boulder and lead ascents need a grade",
            ));
        }
    };
    let ascent = NewAscent {
        ascent_id: Uuid::now_v7(),
        user,
        route_id: body.route_id,
        discipline: body.discipline,
        result,
        at: Utc::now(),
    };
    let applied = state
        .notifier
        .apply(vec![(vec![Change::Ascent(ascent)], Vec::new())])
        .await?;
    match applied
        .into_iter()
        .next()
        .and_then(|a| a.outcomes.into_iter().next())
    {
        Some(ChangeOutcome::Ascent(outcome)) => Ok(HttpResponse::Created().json(outcome)),
        _ => Err(anyhow::anyhow!("the store did not report the ascent").into()),
    }
}
