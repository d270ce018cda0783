//! The bridge's link to Redis as a pure state machine: which channels it wants and holds, the
//! probe in flight, and what it owes after a reconnect. No I/O and no clock of its own: the
//! bridge feeds it what happened (with the time) and carries out the [`Action`]s it returns.
//!
//! The rule it keeps: **after every (re)connect, once every wanted channel is held again and
//! not before, every local session catches up from its cursor — exactly once per connect — and
//! only then are messages that waited published.** A session that caught up earlier than the
//! resubscribe could miss an event published in between; one that catches up after it cannot,
//! because everything published later reaches it live. A probe that does not come back within
//! its timeout counts as a lost connection (a subscription can be dead while the socket looks
//! fine). Messages to publish while down wait in a bounded buffer; when it overflows, the oldest
//! are dropped and the bridge asks every node to catch its sessions up once it is back.

use std::collections::{BTreeSet, VecDeque};
use std::time::{Duration, Instant};

/// What the bridge must do, in this order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action<T> {
    Subscribe(String),
    /// Every local session re-reads the store from its cursor.
    CatchUpAll,
    Publish(T),
    /// Tell every node to catch all its sessions up: messages were dropped while down.
    AnnounceResync,
    SendProbe(u64),
    /// Drop the connections and connect again.
    Reconnect,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Probe {
    seq: u64,
    sent_at: Instant,
}

#[derive(Debug)]
pub struct Link<T> {
    wanted: BTreeSet<String>,
    held: BTreeSet<String>,
    connected: bool,
    /// Set on every connect, cleared when the catch-up is issued.
    catch_up_owed: bool,
    probe: Option<Probe>,
    next_probe_at: Option<Instant>,
    next_seq: u64,
    probe_every: Duration,
    probe_timeout: Duration,
    waiting: VecDeque<T>,
    capacity: usize,
    overflowed: bool,
}

impl<T> Link<T> {
    pub fn new(
        wanted: impl IntoIterator<Item = String>,
        probe_every: Duration,
        probe_timeout: Duration,
        capacity: usize,
    ) -> Self {
        Link {
            wanted: wanted.into_iter().collect(),
            held: BTreeSet::new(),
            connected: false,
            catch_up_owed: false,
            probe: None,
            next_probe_at: None,
            next_seq: 1,
            probe_every,
            probe_timeout,
            waiting: VecDeque::new(),
            capacity: capacity.max(1),
            overflowed: false,
        }
    }

    /// Connected and every wanted channel held: messages flow both ways.
    pub fn is_up(&self) -> bool {
        self.connected && self.held.is_superset(&self.wanted)
    }

    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Fresh connections are open: subscribe to every wanted channel.
    pub fn connected(&mut self) -> Vec<Action<T>> {
        self.connected = true;
        self.held.clear();
        self.catch_up_owed = true;
        self.probe = None;
        self.wanted.iter().cloned().map(Action::Subscribe).collect()
    }

    /// The server confirmed a subscription. The last one completes the connect.
    pub fn subscribed(&mut self, channel: &str, now: Instant) -> Vec<Action<T>> {
        if !self.connected || !self.wanted.contains(channel) {
            return Vec::new();
        }
        self.held.insert(channel.to_owned());
        if !self.is_up() || !self.catch_up_owed {
            return Vec::new();
        }
        self.catch_up_owed = false;
        self.next_probe_at = Some(now);
        let mut actions = vec![Action::CatchUpAll];
        if std::mem::take(&mut self.overflowed) {
            actions.push(Action::AnnounceResync);
        }
        actions.extend(self.waiting.drain(..).map(Action::Publish));
        actions
    }

    /// The connections are gone (or were dropped on purpose).
    pub fn disconnected(&mut self) {
        self.connected = false;
        self.held.clear();
        self.probe = None;
        self.next_probe_at = None;
    }

    /// A message to publish: now when up, else kept for later (bounded).
    pub fn outgoing(&mut self, message: T) -> Vec<Action<T>> {
        if self.is_up() {
            return vec![Action::Publish(message)];
        }
        if self.waiting.len() >= self.capacity {
            self.waiting.pop_front();
            self.overflowed = true;
        }
        self.waiting.push_back(message);
        Vec::new()
    }

    /// A publish failed: keep the message for after the reconnect this forces.
    pub fn publish_failed(&mut self, message: T) -> Vec<Action<T>> {
        self.disconnected();
        if self.waiting.len() >= self.capacity {
            self.overflowed = true;
        } else {
            self.waiting.push_front(message);
        }
        vec![Action::Reconnect]
    }

    /// Our probe came back: the subscription carries messages.
    pub fn probe_returned(&mut self, seq: u64) {
        if self.probe.is_some_and(|p| p.seq == seq) {
            self.probe = None;
        }
    }

    /// Time passes: send the next probe, or give up on a probe that did not come back.
    pub fn tick(&mut self, now: Instant) -> Vec<Action<T>> {
        if !self.is_up() {
            return Vec::new();
        }
        if let Some(probe) = self.probe {
            if now.saturating_duration_since(probe.sent_at) >= self.probe_timeout {
                self.disconnected();
                return vec![Action::Reconnect];
            }
            return Vec::new();
        }
        match self.next_probe_at {
            Some(at) if now >= at => {
                let seq = self.next_seq;
                self.next_seq += 1;
                self.probe = Some(Probe { seq, sent_at: now });
                self.next_probe_at = Some(now + self.probe_every);
                vec![Action::SendProbe(seq)]
            }
            _ => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const EVERY: Duration = Duration::from_millis(1000);
    const TIMEOUT: Duration = Duration::from_millis(3000);

    fn link(capacity: usize) -> Link<u32> {
        Link::new(
            ["own".to_owned(), "all".to_owned()],
            EVERY,
            TIMEOUT,
            capacity,
        )
    }

    #[test]
    fn sessions_catch_up_only_after_every_channel_is_held_again_then_waiting_messages_go() {
        let t = Instant::now();
        let mut l = link(10);
        assert!(l.outgoing(1).is_empty(), "down: kept");
        let subscribe = l.connected();
        assert_eq!(
            subscribe,
            [
                Action::Subscribe("all".into()),
                Action::Subscribe("own".into())
            ]
        );
        assert!(
            l.subscribed("all", t).is_empty(),
            "one channel is not enough"
        );
        assert!(l.outgoing(2).is_empty());
        assert_eq!(
            l.subscribed("own", t),
            [Action::CatchUpAll, Action::Publish(1), Action::Publish(2)]
        );
        assert_eq!(l.outgoing(3), [Action::Publish(3)]);
        assert!(
            l.subscribed("own", t).is_empty(),
            "one catch-up per connect"
        );
    }

    #[test]
    fn a_probe_that_does_not_come_back_forces_a_reconnect_and_another_catch_up() {
        let t = Instant::now();
        let mut l = link(10);
        l.connected();
        l.subscribed("all", t);
        l.subscribed("own", t);
        assert_eq!(l.tick(t), [Action::SendProbe(1)]);
        assert!(l.tick(t + Duration::from_millis(500)).is_empty());
        l.probe_returned(1);
        assert!(l.tick(t + Duration::from_millis(900)).is_empty(), "not due");
        assert_eq!(l.tick(t + EVERY), [Action::SendProbe(2)]);
        l.probe_returned(1);
        assert_eq!(l.tick(t + EVERY + TIMEOUT), [Action::Reconnect]);
        assert!(!l.is_up());
        l.connected();
        l.subscribed("all", t);
        assert_eq!(l.subscribed("own", t), [Action::CatchUpAll]);
    }

    #[test]
    fn an_overflowing_buffer_drops_the_oldest_and_asks_every_node_to_resync() {
        let t = Instant::now();
        let mut l = link(2);
        for m in 1..=3 {
            l.outgoing(m);
        }
        l.connected();
        l.subscribed("all", t);
        assert_eq!(
            l.subscribed("own", t),
            [
                Action::CatchUpAll,
                Action::AnnounceResync,
                Action::Publish(2),
                Action::Publish(3)
            ]
        );
    }

    #[derive(Debug, Clone)]
    enum Step {
        Connect,
        Confirm(bool),
        Drop,
        Send,
        PublishFails,
        ProbeBack,
        Wait(u64),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            1 => Just(Step::Connect),
            2 => any::<bool>().prop_map(Step::Confirm),
            1 => Just(Step::Drop),
            3 => Just(Step::Send),
            1 => Just(Step::PublishFails),
            2 => Just(Step::ProbeBack),
            1 => (0u64..2500).prop_map(Step::Wait),
        ]
    }

    proptest! {
        /// Against a model: a message is published at most once, in the order handed over,
        /// none is published while a channel is missing, every message is published unless it
        /// was dropped on overflow (and then a resync is announced), and each catch-up follows
        /// a completed resubscribe of its own connect.
        #[test]
        fn the_link_keeps_its_rule_for_any_sequence(steps in prop::collection::vec(step(), 1..80)) {
            let start = Instant::now();
            let mut now = start;
            let mut l = link(4);
            let mut next = 0u32;
            let mut published: Vec<u32> = Vec::new();
            let mut catch_ups = 0;
            let mut connects_completed = 0;
            let mut resync_announced = false;
            let mut last_probe = None;
            // The model: what the server holds.
            let mut connected = false;
            let mut held: BTreeSet<&str> = BTreeSet::new();
            let mut caught_up_this_connect = false;
            for s in steps {
                let actions = match s {
                    Step::Connect if !connected => {
                        connected = true;
                        held.clear();
                        caught_up_this_connect = false;
                        l.connected()
                    }
                    Step::Confirm(own) if connected => {
                        let ch = if own { "own" } else { "all" };
                        held.insert(ch);
                        l.subscribed(ch, now)
                    }
                    Step::Drop => {
                        connected = false;
                        l.disconnected();
                        Vec::new()
                    }
                    Step::Send => {
                        next += 1;
                        l.outgoing(next)
                    }
                    // A message handed over while up, whose publish then fails.
                    Step::PublishFails if l.is_up() => {
                        next += 1;
                        prop_assert_eq!(l.outgoing(next), vec![Action::Publish(next)]);
                        connected = false;
                        l.publish_failed(next)
                    }
                    Step::ProbeBack => {
                        if let Some(seq) = last_probe { l.probe_returned(seq); }
                        Vec::new()
                    }
                    Step::Wait(ms) => {
                        now += Duration::from_millis(ms);
                        l.tick(now)
                    }
                    _ => Vec::new(),
                };
                for a in actions {
                    match a {
                        Action::Publish(m) => {
                            prop_assert!(connected && held.len() == 2, "published while not subscribed");
                            prop_assert!(caught_up_this_connect, "published before the catch-up");
                            prop_assert!(published.last().is_none_or(|&p| p < m), "order: {published:?} then {m}");
                            published.push(m);
                        }
                        Action::CatchUpAll => {
                            prop_assert!(connected && held.len() == 2, "catch-up before the resubscribe");
                            prop_assert!(!caught_up_this_connect, "two catch-ups for one connect");
                            caught_up_this_connect = true;
                            catch_ups += 1;
                            connects_completed += 1;
                        }
                        Action::AnnounceResync => resync_announced = true,
                        Action::SendProbe(seq) => last_probe = Some(seq),
                        Action::Reconnect => {
                            connected = false;
                            prop_assert!(!l.is_up());
                        }
                        Action::Subscribe(_) => {}
                    }
                }
            }
            prop_assert_eq!(catch_ups, connects_completed);
            if !resync_announced && l.waiting() == 0 {
                let all: Vec<u32> = (1..=next).collect();
                prop_assert_eq!(published, all, "every message published when none was dropped");
            }
        }
    }
}
