//! The request-body deadline: a body must arrive within `server.body_timeout_secs` of its
//! request's head. actix-http times out a head that trickles in, but not a body, so a client
//! sending one byte every few seconds would hold its connection (and a graceful stop) for ever.
//! The body extractors see a timed-out read, which is answered 408 and closes the connection.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use actix_web::HttpMessage as _;
use actix_web::dev::{Payload, ServiceRequest};
use actix_web::error::PayloadError;
use actix_web::web::Bytes;
use futures_util::Stream;
use tokio::time::Sleep;

/// A boxed body stream, as `Payload::Stream` holds one.
type BoxedBody = Pin<Box<dyn Stream<Item = Result<Bytes, PayloadError>>>>;

/// Wraps the body of `req`, if it has one, so that reading it fails once `limit` has passed.
pub fn limit(req: &mut ServiceRequest, limit: Duration) {
    let payload = req.take_payload();
    if matches!(payload, Payload::None) {
        // No body (a GET, an event stream): nothing to wait for, nothing allocated.
        req.set_payload(payload);
        return;
    }
    req.set_payload(Payload::from(
        Box::pin(Deadline::new(payload, limit)) as BoxedBody
    ));
}

/// Whether a body read failed because its deadline passed.
pub fn is_timeout(error: &PayloadError) -> bool {
    matches!(error, PayloadError::Io(e) if e.kind() == io::ErrorKind::TimedOut)
}

/// A body stream that ends in a `TimedOut` error at its deadline.
struct Deadline {
    inner: Payload,
    sleep: Pin<Box<Sleep>>,
    expired: bool,
}

impl Deadline {
    fn new(inner: Payload, limit: Duration) -> Deadline {
        Deadline {
            inner,
            sleep: Box::pin(tokio::time::sleep(limit)),
            expired: false,
        }
    }
}

impl Stream for Deadline {
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.expired {
            return Poll::Ready(None);
        }
        if let Poll::Ready(item) = Pin::new(&mut this.inner).poll_next(cx) {
            return Poll::Ready(item);
        }
        if this.sleep.as_mut().poll(cx).is_ready() {
            this.expired = true;
            return Poll::Ready(Some(Err(PayloadError::Io(io::Error::new(
                io::ErrorKind::TimedOut,
                "the request body did not arrive in time",
            )))));
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::{StreamExt, stream};

    fn body(chunks: &'static [&'static [u8]], then_silence: bool) -> Payload {
        let chunks = stream::iter(chunks.iter().map(|c| Ok(Bytes::from_static(c))));
        let stream: BoxedBody = if then_silence {
            Box::pin(chunks.chain(stream::pending()))
        } else {
            Box::pin(chunks)
        };
        Payload::from(stream)
    }

    #[actix_web::test]
    async fn a_body_that_stops_arriving_ends_in_a_timeout() {
        tokio::time::pause();
        let mut body = Deadline::new(body(&[b"{"], true), Duration::from_secs(10));
        assert_eq!(
            body.next().await.unwrap().unwrap(),
            Bytes::from_static(b"{")
        );
        let error = body.next().await.unwrap().unwrap_err();
        assert!(is_timeout(&error), "{error:?}");
        assert!(body.next().await.is_none());
    }

    #[actix_web::test]
    async fn a_body_that_arrives_in_time_is_passed_through() {
        let mut body = Deadline::new(body(&[b"{", b"}"], false), Duration::from_secs(10));
        assert_eq!(
            body.next().await.unwrap().unwrap(),
            Bytes::from_static(b"{")
        );
        assert_eq!(
            body.next().await.unwrap().unwrap(),
            Bytes::from_static(b"}")
        );
        assert!(body.next().await.is_none());
    }
}
