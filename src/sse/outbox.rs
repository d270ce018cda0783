//! A session's bounded outbound queue and the ordering rules of its stream.
//!
//! User events carry gapless per-user cursors, so the outbox can tell a duplicate (cursor already
//! sent) from a gap (an event still in flight or published by another thread). On a gap it holds
//! live frames and asks its session to catch up from the store; the session replays what is
//! missing and then releases the held frames. The same path serves `Last-Event-ID` resumes: a new
//! session starts out catching up. Single-threaded by design: it lives on its worker's thread.
//! Frames from other nodes (the Redis bridge) are offered the same way. Its part in the whole
//! guarantee: "Delivery order" in docs/ARCHITECTURE.md.

use std::collections::VecDeque;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;

use crate::domain::Cursor;

/// What happened to a frame offered to the outbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    Queued,
    /// Held until the running catch-up ends.
    Held,
    /// Already sent (its cursor is not above the last one).
    Skipped,
    /// A gap: the frame is held and the session must catch up from the store.
    NeedsCatchUp,
    /// The queue is full: the client is too slow and the session must close.
    Full,
    Closed,
}

/// Outcome of releasing held frames after a catch-up read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Release {
    /// The stream is live again.
    Live,
    /// A held frame is still ahead of the store read: read again.
    ReadAgain,
    Full,
}

#[derive(Debug)]
enum Held {
    User(Cursor, Bytes),
    Other(Bytes),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Open,
    /// Ends after the queued frames are written (graceful shutdown).
    Draining,
    Closed,
}

/// Slots a drained queue keeps; one that grew beyond this in a burst gives its memory back, so
/// an idle session costs the same after a burst as before it.
const KEEP_SLOTS: usize = 8;

#[derive(Debug)]
pub struct Outbox {
    frames: VecDeque<Bytes>,
    capacity: usize,
    held: Vec<Held>,
    /// Highest cursor of a user frame dropped during a catch-up because `held` was full: the
    /// catch-up must read the store at least up to it.
    dropped: Cursor,
    catching_up: bool,
    /// Cursor of the last user event queued (or known to the client).
    last: Cursor,
    state: State,
    /// Something was queued since the last heartbeat tick.
    active: bool,
    /// The response body, waiting for a frame.
    reader: Option<Waker>,
    /// A catch-up, waiting for room.
    writer: Option<Waker>,
}

impl Outbox {
    /// A new session's outbox: `first` (the retry hint) queued, catching up until the session
    /// has read its starting point from the store.
    pub fn new(capacity: usize, first: Bytes) -> Self {
        let mut frames = VecDeque::new();
        frames.push_back(first);
        Outbox {
            frames,
            capacity,
            held: Vec::new(),
            dropped: Cursor::ZERO,
            catching_up: true,
            last: Cursor::ZERO,
            state: State::Open,
            active: true,
            reader: None,
            writer: None,
        }
    }

    pub fn last(&self) -> Cursor {
        self.last
    }

    pub fn is_closed(&self) -> bool {
        self.state != State::Open
    }

    pub fn is_catching_up(&self) -> bool {
        self.catching_up
    }

    pub fn queued(&self) -> usize {
        self.frames.len()
    }

    /// Free slots in the queue.
    pub fn room(&self) -> usize {
        self.capacity.saturating_sub(self.frames.len())
    }

    fn enqueue(&mut self, frame: Bytes) -> Offer {
        if self.frames.len() >= self.capacity {
            return Offer::Full;
        }
        self.frames.push_back(frame);
        self.active = true;
        if let Some(w) = self.reader.take() {
            w.wake();
        }
        Offer::Queued
    }

    /// Keeps a frame until the catch-up ends. When too many are held, a user frame is dropped
    /// instead: it is in the store, and the catch-up reads on until it has passed it. A frame
    /// without cursor cannot be read back, so for it a full hold means closing.
    fn hold(&mut self, held: Held) -> Offer {
        if self.held.len() >= self.capacity {
            return match held {
                Held::User(cursor, _) => {
                    self.dropped = self.dropped.max(cursor);
                    Offer::Held
                }
                Held::Other(_) => Offer::Full,
            };
        }
        self.held.push(held);
        Offer::Held
    }

    /// A live user event with its cursor.
    pub fn offer_user(&mut self, cursor: Cursor, frame: Bytes) -> Offer {
        if self.is_closed() {
            return Offer::Closed;
        }
        if self.catching_up {
            return self.hold(Held::User(cursor, frame));
        }
        if cursor <= self.last {
            return Offer::Skipped;
        }
        if cursor > self.last.next() {
            self.catching_up = true;
            return match self.hold(Held::User(cursor, frame)) {
                Offer::Held => Offer::NeedsCatchUp,
                other => other,
            };
        }
        let offer = self.enqueue(frame);
        if offer == Offer::Queued {
            self.last = cursor;
        }
        offer
    }

    /// A frame without a cursor (broadcast, unread summary): kept in arrival order.
    pub fn offer(&mut self, frame: Bytes) -> Offer {
        if self.is_closed() {
            return Offer::Closed;
        }
        if self.catching_up {
            return self.hold(Held::Other(frame));
        }
        self.enqueue(frame)
    }

    /// A heartbeat tick, two per heartbeat interval. The comment is queued only on a stream
    /// that has had nothing queued since the previous tick and has nothing waiting: a quiet
    /// stream gets one every interval and is never silent for longer, and a stream that
    /// carries events gets none.
    pub fn heartbeat_tick(&mut self, frame: &Bytes) {
        if std::mem::take(&mut self.active) || self.is_closed() || !self.frames.is_empty() {
            return;
        }
        self.enqueue(frame.clone());
    }

    /// During a catch-up: a frame the session writes ahead of everything held (the unread
    /// summary on connect).
    pub fn push_direct(&mut self, frame: Bytes) -> Offer {
        if self.is_closed() {
            return Offer::Closed;
        }
        self.enqueue(frame)
    }

    /// Starts a catch-up on request (the Redis bridge resubscribed: live frames may have been
    /// lost): frames are held from now on until the session's store read releases them.
    pub fn begin_catch_up(&mut self) {
        if !self.is_closed() {
            self.catching_up = true;
        }
    }

    /// During a catch-up: where the client stands, before any replay.
    pub fn start_from(&mut self, cursor: Cursor) {
        self.last = cursor;
    }

    /// During a catch-up: an event read from the store. Older cursors are skipped.
    pub fn push_replayed(&mut self, cursor: Cursor, frame: Bytes) -> Offer {
        if self.is_closed() {
            return Offer::Closed;
        }
        if cursor <= self.last {
            return Offer::Skipped;
        }
        let offer = self.enqueue(frame);
        if offer == Offer::Queued {
            self.last = cursor;
        }
        offer
    }

    /// After a catch-up read that reached the end of the store: releases held frames in order.
    /// Stops at a held user event that is still ahead of `last + 1`, which means it was committed
    /// after the read, so another read will find what lies between; the same when a dropped
    /// frame is still ahead.
    pub fn release_held(&mut self) -> Release {
        let mut held = std::mem::take(&mut self.held);
        // Live frames from several workers can arrive out of order: release user frames by
        // cursor; a frame without cursor stays behind the user frame it followed.
        let mut key = 0;
        held.sort_by_cached_key(|h| {
            if let Held::User(cursor, _) = h {
                key = cursor.0;
            }
            key
        });
        let mut rest = held.into_iter();
        while let Some(item) = rest.next() {
            let offer = match item {
                Held::Other(frame) => self.enqueue(frame),
                Held::User(cursor, _) if cursor <= self.last => Offer::Skipped,
                Held::User(cursor, frame) if cursor == self.last.next() => {
                    let offer = self.enqueue(frame);
                    if offer == Offer::Queued {
                        self.last = cursor;
                    }
                    offer
                }
                Held::User(cursor, frame) => {
                    self.held.push(Held::User(cursor, frame));
                    self.held.extend(rest);
                    return Release::ReadAgain;
                }
            };
            if offer == Offer::Full {
                return Release::Full;
            }
        }
        if self.dropped > self.last {
            return Release::ReadAgain;
        }
        self.catching_up = false;
        Release::Live
    }

    /// Closes at once and frees the queue: the client resumes with its last received id.
    pub fn close(&mut self) {
        self.state = State::Closed;
        self.frames = VecDeque::new();
        self.held = Vec::new();
        self.wake_all();
    }

    /// Ends the stream once the queued frames are written.
    pub fn drain_and_close(&mut self) {
        if self.state == State::Open {
            self.state = State::Draining;
            self.held = Vec::new();
            self.wake_all();
        }
    }

    fn wake_all(&mut self) {
        if let Some(w) = self.reader.take() {
            w.wake();
        }
        if let Some(w) = self.writer.take() {
            w.wake();
        }
    }

    /// The response body asks for the next frame; `None` ends the stream.
    pub fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        if let Some(frame) = self.frames.pop_front() {
            if self.frames.is_empty() && self.frames.capacity() > KEEP_SLOTS {
                self.frames = VecDeque::new();
            }
            if self.frames.len() <= self.capacity / 2
                && let Some(w) = self.writer.take()
            {
                w.wake();
            }
            return Poll::Ready(Some(frame));
        }
        if self.state != State::Open {
            return Poll::Ready(None);
        }
        self.reader = Some(cx.waker().clone());
        Poll::Pending
    }

    /// A catch-up asks for room: ready when at most half the queue is used, or when closed.
    pub fn poll_room(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.is_closed() || self.frames.len() <= self.capacity / 2 {
            return Poll::Ready(());
        }
        self.writer = Some(cx.waker().clone());
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use std::task::Waker;

    use super::*;

    fn frame(s: &str) -> Bytes {
        Bytes::from(s.to_owned())
    }

    fn drain(outbox: &mut Outbox) -> Vec<String> {
        let mut cx = Context::from_waker(Waker::noop());
        let mut out = Vec::new();
        while let Poll::Ready(Some(f)) = outbox.poll_frame(&mut cx) {
            out.push(String::from_utf8(f.to_vec()).unwrap());
        }
        out
    }

    fn live(capacity: usize, last: i64) -> Outbox {
        let mut o = Outbox::new(capacity, frame("retry"));
        o.start_from(Cursor(last));
        assert_eq!(o.release_held(), Release::Live);
        drain(&mut o);
        o
    }

    #[test]
    fn live_events_in_order_are_queued_and_duplicates_skipped() {
        let mut o = live(8, 0);
        assert_eq!(o.offer_user(Cursor(1), frame("1")), Offer::Queued);
        assert_eq!(o.offer_user(Cursor(2), frame("2")), Offer::Queued);
        assert_eq!(o.offer_user(Cursor(2), frame("2 again")), Offer::Skipped);
        assert_eq!(o.offer_user(Cursor(1), frame("1 again")), Offer::Skipped);
        assert_eq!(drain(&mut o), ["1", "2"]);
    }

    #[test]
    fn a_requested_catch_up_holds_live_frames_until_the_store_read_fills_what_redis_lost() {
        let mut o = live(8, 3);
        // The bridge resubscribed: 4 and 5 were lost on the way, 6 arrives live meanwhile.
        o.begin_catch_up();
        assert_eq!(o.offer_user(Cursor(6), frame("6")), Offer::Held);
        assert_eq!(o.offer(frame("b")), Offer::Held);
        for c in [4, 5, 6] {
            assert_eq!(
                o.push_replayed(Cursor(c), frame(&c.to_string())),
                Offer::Queued
            );
        }
        assert_eq!(o.release_held(), Release::Live);
        assert_eq!(drain(&mut o), ["4", "5", "6", "b"]);
        assert_eq!(o.offer_user(Cursor(7), frame("7")), Offer::Queued);
        o.close();
        o.begin_catch_up();
        assert_eq!(o.offer_user(Cursor(8), frame("8")), Offer::Closed);
    }

    #[test]
    fn a_gap_holds_frames_until_the_store_fills_it() {
        let mut o = live(8, 1);
        assert_eq!(o.offer_user(Cursor(3), frame("3")), Offer::NeedsCatchUp);
        assert_eq!(o.offer_user(Cursor(2), frame("2 live")), Offer::Held);
        assert!(drain(&mut o).is_empty());
        // The catch-up read returns 2 and 3 from the store.
        assert_eq!(o.push_replayed(Cursor(2), frame("2")), Offer::Queued);
        assert_eq!(o.push_replayed(Cursor(3), frame("3")), Offer::Queued);
        assert_eq!(o.release_held(), Release::Live);
        assert_eq!(drain(&mut o), ["2", "3"]);
        assert_eq!(o.offer_user(Cursor(4), frame("4")), Offer::Queued);
    }

    #[test]
    fn frames_that_crossed_in_flight_are_released_in_order_without_a_read() {
        let mut o = live(8, 1);
        assert_eq!(o.offer_user(Cursor(3), frame("3")), Offer::NeedsCatchUp);
        assert_eq!(o.offer(frame("unread")), Offer::Held);
        assert_eq!(o.offer_user(Cursor(2), frame("2")), Offer::Held);
        assert_eq!(o.release_held(), Release::Live);
        assert_eq!(drain(&mut o), ["2", "3", "unread"]);
    }

    #[test]
    fn a_held_event_beyond_the_read_asks_for_another_read() {
        let mut o = Outbox::new(8, frame("retry"));
        o.start_from(Cursor(0));
        assert_eq!(o.offer_user(Cursor(3), frame("3")), Offer::Held);
        o.push_replayed(Cursor(1), frame("1"));
        assert_eq!(o.release_held(), Release::ReadAgain);
        assert!(o.is_catching_up());
        o.push_replayed(Cursor(2), frame("2"));
        o.push_replayed(Cursor(3), frame("3 stored"));
        assert_eq!(o.release_held(), Release::Live);
        assert_eq!(drain(&mut o), ["retry", "1", "2", "3 stored"]);
    }

    #[test]
    fn frames_without_cursor_keep_their_place_after_a_catch_up() {
        let mut o = Outbox::new(8, frame("retry"));
        assert_eq!(o.push_direct(frame("unread")), Offer::Queued);
        assert_eq!(o.offer(frame("broadcast")), Offer::Held);
        o.start_from(Cursor(5));
        o.push_replayed(Cursor(6), frame("6"));
        assert_eq!(o.release_held(), Release::Live);
        assert_eq!(drain(&mut o), ["retry", "unread", "6", "broadcast"]);
    }

    #[test]
    fn a_full_queue_reports_full_and_close_frees_it() {
        let mut o = live(4, 0);
        for i in 1..=4 {
            assert_eq!(o.offer_user(Cursor(i), frame("x")), Offer::Queued);
        }
        assert_eq!(o.offer_user(Cursor(5), frame("x")), Offer::Full);
        assert_eq!(o.offer(frame("b")), Offer::Full);
        o.close();
        assert_eq!(o.queued(), 0);
        assert_eq!(o.offer_user(Cursor(5), frame("x")), Offer::Closed);
        let mut cx = Context::from_waker(Waker::noop());
        assert_eq!(o.poll_frame(&mut cx), Poll::Ready(None));
    }

    #[test]
    fn held_frames_are_bounded_and_user_frames_beyond_are_read_back() {
        let mut o = Outbox::new(4, frame("retry"));
        o.start_from(Cursor(0));
        for i in 1..=4 {
            assert_eq!(o.offer_user(Cursor(i), frame(&i.to_string())), Offer::Held);
        }
        assert_eq!(
            o.offer_user(Cursor(5), frame("5")),
            Offer::Held,
            "dropped, not closed"
        );
        assert_eq!(
            o.offer(frame("broadcast")),
            Offer::Full,
            "cannot be read back"
        );
        let mut cx = Context::from_waker(Waker::noop());
        let _ = o.poll_frame(&mut cx);
        // The store read so far ends at 2: the held 3 and 4 are released, 5 must be read.
        o.push_replayed(Cursor(1), frame("1"));
        o.push_replayed(Cursor(2), frame("2"));
        assert_eq!(o.release_held(), Release::ReadAgain);
        assert_eq!(o.last(), Cursor(4));
        assert_eq!(drain(&mut o), ["1", "2", "3", "4"]);
        assert_eq!(o.push_replayed(Cursor(5), frame("5")), Offer::Queued);
        assert_eq!(o.release_held(), Release::Live);
        assert_eq!(drain(&mut o), ["5"]);
    }

    #[test]
    fn draining_writes_what_is_queued_then_ends() {
        let mut o = live(8, 0);
        o.offer_user(Cursor(1), frame("1"));
        o.drain_and_close();
        assert_eq!(o.offer_user(Cursor(2), frame("2")), Offer::Closed);
        assert_eq!(drain(&mut o), ["1"]);
        let mut cx = Context::from_waker(Waker::noop());
        assert_eq!(o.poll_frame(&mut cx), Poll::Ready(None));
    }

    #[test]
    fn a_queue_drained_after_a_burst_gives_its_memory_back() {
        let mut o = live(256, 0);
        for i in 1..=100 {
            assert_eq!(o.offer_user(Cursor(i), frame("x")), Offer::Queued);
        }
        assert!(o.frames.capacity() >= 100);
        assert_eq!(drain(&mut o).len(), 100);
        assert!(o.frames.capacity() <= KEEP_SLOTS);
        assert_eq!(o.offer_user(Cursor(101), frame("101")), Offer::Queued);
        assert_eq!(drain(&mut o), ["101"]);
    }

    /// Ticks until the next heartbeat, draining after each tick.
    fn ticks_to_heartbeat(o: &mut Outbox, hb: &Bytes, limit: usize) -> Option<usize> {
        (1..=limit).find(|_| {
            o.heartbeat_tick(hb);
            !drain(o).is_empty()
        })
    }

    #[test]
    fn a_quiet_stream_gets_a_heartbeat_every_other_tick() {
        let mut o = live(4, 0);
        let hb = frame(": hb");
        // The stream just queued its retry hint: the first tick only notes it.
        assert_eq!(ticks_to_heartbeat(&mut o, &hb, 4), Some(2));
        for _ in 0..3 {
            assert_eq!(ticks_to_heartbeat(&mut o, &hb, 4), Some(2));
        }
    }

    #[test]
    fn a_stream_that_carries_events_gets_no_heartbeat() {
        let mut o = live(4, 0);
        let hb = frame(": hb");
        for i in 0..10 {
            assert_eq!(o.offer(frame(&format!("b{i}"))), Offer::Queued);
            assert_eq!(drain(&mut o), vec![format!("b{i}")]);
            o.heartbeat_tick(&hb);
            assert!(drain(&mut o).is_empty(), "tick {i} sent a heartbeat");
        }
        // Quiet from here: the last frame came before the previous tick, so this one sends.
        assert_eq!(ticks_to_heartbeat(&mut o, &hb, 4), Some(1));
    }

    #[test]
    fn a_heartbeat_never_queues_behind_waiting_frames() {
        let mut o = live(4, 0);
        let hb = frame(": hb");
        o.offer(frame("b"));
        for _ in 0..4 {
            o.heartbeat_tick(&hb);
        }
        assert_eq!(drain(&mut o), vec!["b"]);
        let mut closed = live(4, 0);
        closed.close();
        for _ in 0..4 {
            closed.heartbeat_tick(&hb);
        }
        assert_eq!(closed.queued(), 0);
    }

    #[test]
    fn room_opens_when_the_reader_has_taken_half() {
        let mut o = live(4, 0);
        for i in 1..=4 {
            o.offer_user(Cursor(i), frame("x"));
        }
        let mut cx = Context::from_waker(Waker::noop());
        assert_eq!(o.poll_room(&mut cx), Poll::Pending);
        let _ = o.poll_frame(&mut cx);
        let _ = o.poll_frame(&mut cx);
        assert_eq!(o.poll_room(&mut cx), Poll::Ready(()));
    }

    /// A model of one user's stream: the store commits cursors in order, live deliveries arrive
    /// in any order (several workers), store reads and their results are separate steps (reads are
    /// async), the client reads at its own pace and reconnects with its last id whenever it likes
    /// or its queue overflows. Whatever the interleaving, the client sees every cursor exactly
    /// once, in order.
    mod model {
        use proptest::prelude::*;

        use super::*;

        #[derive(Debug, Clone)]
        enum Op {
            Commit,
            Deliver(usize),
            Read,
            Apply,
            Drain(usize),
            Reconnect,
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                4 => Just(Op::Commit),
                4 => any::<usize>().prop_map(Op::Deliver),
                2 => Just(Op::Read),
                2 => Just(Op::Apply),
                3 => (1usize..6).prop_map(Op::Drain),
                1 => Just(Op::Reconnect),
            ]
        }

        struct Sim {
            capacity: usize,
            page: usize,
            committed: i64,
            in_flight: Vec<i64>,
            outbox: Outbox,
            started: bool,
            resume: i64,
            catch_up: bool,
            snapshot: Option<(Vec<i64>, bool)>,
            received: Vec<i64>,
        }

        impl Sim {
            fn new(capacity: usize, page: usize) -> Self {
                Sim {
                    capacity,
                    page,
                    committed: 0,
                    in_flight: Vec::new(),
                    outbox: Outbox::new(capacity, frame("retry")),
                    started: false,
                    resume: 0,
                    catch_up: true,
                    snapshot: None,
                    received: Vec::new(),
                }
            }

            fn reconnect(&mut self) {
                self.outbox = Outbox::new(self.capacity, frame("retry"));
                self.started = false;
                self.resume = self.received.last().copied().unwrap_or(0);
                self.catch_up = true;
                self.snapshot = None;
            }

            fn step(&mut self, op: Op) {
                match op {
                    Op::Commit => {
                        self.committed += 1;
                        self.in_flight.push(self.committed);
                    }
                    Op::Deliver(i) if !self.in_flight.is_empty() => {
                        let cursor = self.in_flight.remove(i % self.in_flight.len());
                        match self
                            .outbox
                            .offer_user(Cursor(cursor), frame(&cursor.to_string()))
                        {
                            Offer::NeedsCatchUp => self.catch_up = true,
                            Offer::Full => self.reconnect(),
                            _ => {}
                        }
                    }
                    Op::Deliver(_) => {}
                    Op::Read if self.catch_up && self.snapshot.is_none() => {
                        if !self.started {
                            self.outbox
                                .start_from(Cursor(self.resume.min(self.committed)));
                            self.started = true;
                        }
                        let room = self.outbox.room().min(self.page);
                        let from = self.outbox.last().0 + 1;
                        let read: Vec<i64> = (from..=self.committed).take(room).collect();
                        let complete = read.len() < room;
                        self.snapshot = Some((read, complete));
                    }
                    Op::Read => {}
                    Op::Apply => {
                        let Some((read, complete)) = self.snapshot.take() else {
                            return;
                        };
                        for cursor in read {
                            let f = frame(&cursor.to_string());
                            if self.outbox.push_replayed(Cursor(cursor), f) == Offer::Full {
                                return self.reconnect();
                            }
                        }
                        if complete {
                            match self.outbox.release_held() {
                                Release::Live => self.catch_up = false,
                                Release::ReadAgain => {}
                                Release::Full => self.reconnect(),
                            }
                        }
                    }
                    Op::Drain(n) => {
                        let mut cx = Context::from_waker(Waker::noop());
                        for _ in 0..n {
                            match self.outbox.poll_frame(&mut cx) {
                                Poll::Ready(Some(f)) => {
                                    if let Ok(c) = std::str::from_utf8(&f).unwrap().parse() {
                                        self.received.push(c);
                                    }
                                }
                                _ => break,
                            }
                        }
                    }
                    Op::Reconnect => self.reconnect(),
                }
            }

            /// Lets everything in flight land and the client read to the end.
            fn settle(&mut self) {
                while !self.in_flight.is_empty() {
                    self.step(Op::Deliver(0));
                }
                for _ in 0..10_000 {
                    if !self.catch_up && self.outbox.queued() == 0 {
                        return;
                    }
                    self.step(Op::Read);
                    self.step(Op::Apply);
                    self.step(Op::Drain(self.capacity));
                }
                panic!("the stream did not settle");
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]
            #[test]
            fn every_cursor_arrives_once_in_order_across_races_and_reconnects(
                capacity in 4usize..12,
                page in 1usize..6,
                ops in proptest::collection::vec(op(), 0..200),
            ) {
                let mut sim = Sim::new(capacity, page);
                for op in ops {
                    sim.step(op);
                }
                sim.settle();
                let expected: Vec<i64> = (1..=sim.committed).collect();
                prop_assert_eq!(&sim.received, &expected);
            }
        }
    }
}
