//! The request deadline: every request is answered within `server.request_timeout_secs`. A
//! handler still waiting then (a database that hangs instead of refusing, say: its reads would
//! otherwise wait for ever) is dropped and the client gets 503 `unavailable` with
//! `Retry-After: 1`, the same answer as for a store it cannot reach. An event stream counts as
//! answered once its response starts; the stream itself is not bounded.

use std::sync::Arc;
use std::time::Duration;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use futures_util::future::LocalBoxFuture;

use crate::error::{ApiError, ErrorKind};
use crate::metrics::Metrics;

/// Runs the rest of the chain for `req`, answering 503 if it has no response within `limit`.
/// The answer is an error, not a response, so the layers around (CORS, the request log) treat
/// it as any refusal.
///
/// The waiting is boxed: a connection keeps the future of its request's service call inline in
/// its state for as long as it lives (an event stream: for hours), and a timer's entry inline
/// there cost about 0.8 KiB per held session (docs/BENCHMARKS.md). Boxed, it is freed with the
/// answer.
pub fn bound<B: MessageBody + 'static>(
    req: ServiceRequest,
    next: Next<B>,
    limit: Duration,
    metrics: Arc<Metrics>,
) -> LocalBoxFuture<'static, Result<ServiceResponse<B>, actix_web::Error>> {
    Box::pin(async move {
        // The request itself cannot be kept: routing needs it unshared.
        let (method, uri) = (req.method().clone(), req.uri().clone());
        match tokio::time::timeout(limit, next.call(req)).await {
            Ok(answered) => answered,
            Err(_) => {
                Metrics::add(&metrics.requests_timed_out, 1);
                tracing::warn!(
                    %method,
                    path = uri.path(),
                    limit_secs = limit.as_secs(),
                    "request not answered in time; answering 503"
                );
                Err(ApiError::new(
                    ErrorKind::Unavailable,
                    format!(
                        "no answer within {} s (server.request_timeout_secs): the store may be \
                         unreachable; try again",
                        limit.as_secs()
                    ),
                )
                .retry_after(Duration::from_secs(1))
                .into())
            }
        }
    })
}
