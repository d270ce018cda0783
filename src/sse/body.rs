//! The streaming response body of one SSE session: it writes the outbox's frames as they come
//! and tells the session when the connection is gone.

use std::cell::RefCell;
use std::convert::Infallible;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use actix::Recipient;
use actix_web::body::{BodySize, MessageBody};
use bytes::Bytes;

use super::Outbox;
use crate::actors::session::Stop;

pub struct SessionBody {
    outbox: Rc<RefCell<Outbox>>,
    session: Recipient<Stop>,
}

impl SessionBody {
    pub fn new(outbox: Rc<RefCell<Outbox>>, session: Recipient<Stop>) -> Self {
        SessionBody { outbox, session }
    }
}

impl MessageBody for SessionBody {
    type Error = Infallible;

    fn size(&self) -> BodySize {
        BodySize::Stream
    }

    fn poll_next(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, Self::Error>>> {
        self.outbox
            .borrow_mut()
            .poll_frame(cx)
            .map(|frame| frame.map(Ok))
    }
}

impl Drop for SessionBody {
    /// actix drops the body when the response ends or the client disconnects: either way the
    /// session stops and leaves the registry now, not at the next heartbeat.
    fn drop(&mut self) {
        self.outbox.borrow_mut().close();
        self.session.do_send(Stop);
    }
}
