//! `Notifier`: the one way events enter the engine. User-targeted events are written to the
//! store first and published only after the commit; broadcasts and read-state updates are
//! published directly. Frames are encoded here, once per event. In cluster mode each one is also
//! handed to the Redis bridge for the other nodes. Part of "Delivery order" (docs/ARCHITECTURE.md).

use std::sync::Arc;

use chrono::Utc;

use crate::actors::{Delivery, HubSet, Target};
use crate::cluster::BridgeHandle;
use crate::cluster::message::Kind;
use crate::domain::{Broadcast, Cursor, Event, UnreadSummary, UserId};
use crate::metrics::Metrics;
use crate::sse::frame;
use crate::store::{AppendOutcome, Appended, Applied, Change, NewEvent, Store};

#[derive(Clone)]
pub struct Notifier {
    store: Arc<dyn Store>,
    hubs: Arc<HubSet>,
    metrics: Arc<Metrics>,
    /// The other nodes, in cluster mode.
    bridge: Option<BridgeHandle>,
}

impl Notifier {
    pub fn new(store: Arc<dyn Store>, hubs: Arc<HubSet>, metrics: Arc<Metrics>) -> Self {
        Notifier {
            store,
            hubs,
            metrics,
            bridge: None,
        }
    }

    /// Also publishes every event to the other nodes through the Redis bridge.
    pub fn with_bridge(mut self, bridge: Option<BridgeHandle>) -> Self {
        self.bridge = bridge;
        self
    }

    /// Stores a batch (all or nothing), then publishes what changed a user's stream. Publishing
    /// runs in the store's commit hook, so frames leave in commit order.
    pub async fn notify(&self, batch: Vec<NewEvent>) -> anyhow::Result<Vec<Appended>> {
        let (hubs, metrics, bridge) =
            (self.hubs.clone(), self.metrics.clone(), self.bridge.clone());
        let publish = Box::new(move |appended: &[Appended]| {
            publish(&hubs, &metrics, bridge.as_ref(), appended)
        });
        self.store.append_then(batch, publish).await
    }

    pub fn store(&self) -> Arc<dyn Store> {
        self.store.clone()
    }

    /// Commits matchmaking works (state changes and the events they cause) in one transaction,
    /// then publishes the events, in order.
    pub async fn apply(
        &self,
        works: Vec<(Vec<Change>, Vec<NewEvent>)>,
    ) -> anyhow::Result<Vec<Applied>> {
        let (hubs, metrics, bridge) =
            (self.hubs.clone(), self.metrics.clone(), self.bridge.clone());
        let publish = Box::new(move |appended: &[Appended]| {
            publish(&hubs, &metrics, bridge.as_ref(), appended)
        });
        self.store.apply_many(works, publish).await
    }

    /// Sends an event to every connected user. Not stored: it has no cursor.
    pub fn broadcast(&self, event: Event) -> anyhow::Result<()> {
        let bytes = frame::broadcast(&Broadcast {
            event,
            sent_at: Utc::now(),
        })?;
        Metrics::add(&self.metrics.broadcasts, 1);
        if let Some(bridge) = &self.bridge {
            bridge.send(Kind::Broadcast, bytes.clone());
        }
        self.hubs.publish(Delivery {
            target: Target::All,
            frame: bytes,
        });
        Ok(())
    }

    /// Tells a user's open sessions their new unread count (after a read elsewhere), with the
    /// head cursor it was taken at: the count covers exactly the unread events up to it.
    pub fn unread_changed(&self, user: &UserId, count: u64, cursor: Cursor) -> anyhow::Result<()> {
        let bytes = frame::unread(&UnreadSummary {
            count,
            cursor: Some(cursor),
            latest: None,
        })?;
        if let Some(bridge) = &self.bridge {
            bridge.send(Kind::Unread { user: user.clone() }, bytes.clone());
        }
        self.hubs.publish(Delivery {
            target: Target::User {
                user: user.clone(),
                cursor: None,
            },
            frame: bytes,
        });
        Ok(())
    }
}

fn publish(hubs: &HubSet, metrics: &Metrics, bridge: Option<&BridgeHandle>, appended: &[Appended]) {
    for item in appended {
        let counter = match item.outcome {
            AppendOutcome::Created => &metrics.events_created,
            AppendOutcome::Collapsed => &metrics.events_collapsed,
            AppendOutcome::Duplicate => &metrics.events_duplicate,
        };
        Metrics::add(counter, 1);
        if !item.outcome.is_new() {
            continue;
        }
        // Stored already: a failed encode must not fail the request; sessions that miss the
        // frame see the gap at the next event, and resumes read the store.
        match frame::user_event(&item.notification) {
            Ok(bytes) => {
                // Handed over without waiting: this runs on the store's commit path.
                if let Some(bridge) = bridge {
                    bridge.send(
                        Kind::Event {
                            user: item.user.clone(),
                            cursor: item.notification.cursor,
                            id: item.notification.id,
                        },
                        bytes.clone(),
                    );
                }
                hubs.publish(Delivery {
                    target: Target::User {
                        user: item.user.clone(),
                        cursor: Some(item.notification.cursor),
                    },
                    frame: bytes,
                })
            }
            Err(error) => tracing::error!(error = ?error, "encoding a stored event"),
        }
    }
}
