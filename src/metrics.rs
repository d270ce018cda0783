//! Process counters, exposed at `GET /metrics` in the Prometheus text format. Hot paths add
//! once per event or per fan-out, never once per frame.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct Metrics {
    pub sessions_open: AtomicI64,
    /// HTTP connections open on this node (SSE streams included).
    pub connections_open: AtomicI64,
    pub connections_refused_per_ip: AtomicU64,
    pub connections_refused_process: AtomicU64,
    pub sessions_opened: AtomicU64,
    pub sessions_rejected: AtomicU64,
    pub sessions_closed_slow: AtomicU64,
    pub catch_ups: AtomicU64,
    /// Catch-ups whose store reads failed and were tried again after a pause.
    pub catch_up_retries: AtomicU64,
    /// Sessions closed because their catch-up failed every retry.
    pub sessions_closed_catch_up: AtomicU64,
    pub gaps: AtomicU64,
    /// Requests answered 503 because they had no answer within `server.request_timeout_secs`.
    pub requests_timed_out: AtomicU64,
    pub events_created: AtomicU64,
    pub events_collapsed: AtomicU64,
    pub events_duplicate: AtomicU64,
    pub broadcasts: AtomicU64,
    pub frames_queued: AtomicU64,
    pub matches_made: AtomicU64,
    pub queue_tickets: AtomicI64,
    pub matches_live: AtomicI64,
    pub challenges_pending: AtomicI64,
    /// Read notifications deleted by retention for their age.
    pub retention_deleted_by_age: AtomicU64,
    /// Read notifications deleted by retention beyond a user's newest `max_per_user`.
    pub retention_deleted_beyond_limit: AtomicU64,
    pub idempotency_keys_expired: AtomicU64,
    /// The database's size in bytes (sampled by a background task).
    pub database_size_bytes: AtomicI64,
    /// Memory SQLite holds in this process (0 on a database server).
    pub sqlite_memory_bytes: AtomicI64,
    /// Cluster mode: 1 while this node holds the matchmaker lease.
    pub lease_holder: AtomicI64,
    pub lease_changes: AtomicU64,
    pub commands_applied: AtomicU64,
    /// Age of the last stream command when the leader took it, in milliseconds.
    pub command_stream_lag_ms: AtomicI64,
    pub cluster: ClusterMetrics,
    pub push: PushMetrics,
}

/// Push providers, as metric labels.
pub const PUSH_PROVIDERS: [&str; 2] = ["fcm", "webpush"];
/// What a send came to, as metric labels (`push::Outcome::label`).
pub const PUSH_OUTCOMES: [&str; 6] = [
    "sent",
    "retried",
    "device_removed",
    "failed",
    "config_fault",
    "expired",
];
/// Why a push job was dropped without a send, as metric labels.
pub const PUSH_SKIPS: [&str; 6] = [
    "online",
    "muted",
    "quiet_hours",
    "read",
    "gone",
    "no_provider",
];

/// The push path: sends by provider and outcome, jobs dropped without a send, devices.
#[derive(Debug, Default)]
pub struct PushMetrics {
    sends: [[AtomicU64; PUSH_OUTCOMES.len()]; PUSH_PROVIDERS.len()],
    skips: [AtomicU64; PUSH_SKIPS.len()],
    pub devices_pruned: AtomicU64,
    /// Push jobs waiting in the store, due or not (sampled).
    pub jobs_waiting: AtomicI64,
}

impl PushMetrics {
    /// Counts one send; labels outside the lists are ignored.
    pub fn sent(&self, provider: &str, outcome: &str) {
        let p = PUSH_PROVIDERS.iter().position(|x| *x == provider);
        let o = PUSH_OUTCOMES.iter().position(|x| *x == outcome);
        if let (Some(p), Some(o)) = (p, o) {
            self.sends[p][o].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts one job dropped without a send.
    pub fn skipped(&self, reason: &str) {
        if let Some(i) = PUSH_SKIPS.iter().position(|x| *x == reason) {
            self.skips[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    fn render(&self, out: &mut String) {
        let name = "belay_push_sends_total";
        let _ = writeln!(
            out,
            "# HELP {name} Push sends by provider and outcome\n# TYPE {name} counter"
        );
        for (p, provider) in PUSH_PROVIDERS.iter().enumerate() {
            for (o, outcome) in PUSH_OUTCOMES.iter().enumerate() {
                let value = self.sends[p][o].load(Ordering::Relaxed);
                let _ = writeln!(
                    out,
                    "{name}{{provider=\"{provider}\",outcome=\"{outcome}\"}} {value}"
                );
            }
        }
        let name = "belay_push_skipped_total";
        let _ = writeln!(
            out,
            "# HELP {name} Push jobs dropped without a send, by reason\n# TYPE {name} counter"
        );
        for (i, reason) in PUSH_SKIPS.iter().enumerate() {
            let value = self.skips[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}{{reason=\"{reason}\"}} {value}");
        }
        write_series(
            out,
            "counter",
            [(
                "belay_push_devices_pruned_total",
                "Devices forgotten after push.device_max_idle_days without a registration",
                self.devices_pruned.load(Ordering::Relaxed),
            )],
        );
        write_series(
            out,
            "gauge",
            [(
                "belay_push_jobs_waiting",
                "Push jobs waiting in the store, due or not",
                self.jobs_waiting.load(Ordering::Relaxed),
            )],
        );
    }
}

/// The Redis bridge and presence (cluster mode); zero on a single node.
#[derive(Debug, Default)]
pub struct ClusterMetrics {
    /// 1 while the bridge is connected and subscribed.
    pub bridge_up: AtomicI64,
    pub bridge_reconnects: AtomicU64,
    pub bridge_messages_in: AtomicU64,
    pub bridge_messages_out: AtomicU64,
    /// Publishes carrying them: several messages for one node go in one.
    pub bridge_publishes: AtomicU64,
    /// Sessions told to catch up from the store after a resubscribe or a resync request.
    pub bridge_catch_ups: AtomicU64,
    /// Users this node has presence entries for.
    pub presence_entries: AtomicI64,
    /// Rounds of presence release writes that failed and were tried again.
    pub presence_release_retries: AtomicU64,
    pub sessions_refused_cluster: AtomicU64,
}

impl ClusterMetrics {
    fn render(&self, out: &mut String) {
        let gauges: [(&str, &str, &AtomicI64); 2] = [
            (
                "belay_bridge_up",
                "1 while the Redis bridge is connected and subscribed",
                &self.bridge_up,
            ),
            (
                "belay_presence_entries",
                "Users this node has presence entries for in Redis",
                &self.presence_entries,
            ),
        ];
        let counters: [(&str, &str, &AtomicU64); 7] = [
            (
                "belay_bridge_reconnects_total",
                "Redis bridge connections lost (or dropped after a missing probe)",
                &self.bridge_reconnects,
            ),
            (
                "belay_bridge_messages_in_total",
                "Messages from other nodes handed to this node's hubs",
                &self.bridge_messages_in,
            ),
            (
                "belay_bridge_messages_out_total",
                "Messages published to other nodes",
                &self.bridge_messages_out,
            ),
            (
                "belay_bridge_publishes_total",
                "Publishes carrying those messages (several for one node go in one)",
                &self.bridge_publishes,
            ),
            (
                "belay_bridge_catch_ups_total",
                "Sessions told to catch up from the store after a resubscribe",
                &self.bridge_catch_ups,
            ),
            (
                "belay_presence_release_retries_total",
                "Rounds of presence release writes that failed and were tried again",
                &self.presence_release_retries,
            ),
            (
                "belay_sessions_refused_cluster_total",
                "SSE sessions refused by the per-user cap counted across the cluster",
                &self.sessions_refused_cluster,
            ),
        ];
        write_series(
            out,
            "gauge",
            gauges.map(|(n, h, v)| (n, h, v.load(Ordering::Relaxed))),
        );
        write_series(
            out,
            "counter",
            counters.map(|(n, h, v)| (n, h, v.load(Ordering::Relaxed))),
        );
    }
}

impl Metrics {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn render(&self) -> String {
        let counters: [(&str, &str, &AtomicU64); 17] = [
            (
                "belay_sessions_opened_total",
                "SSE sessions opened",
                &self.sessions_opened,
            ),
            (
                "belay_sessions_rejected_total",
                "SSE sessions refused by the per-user cap",
                &self.sessions_rejected,
            ),
            (
                "belay_sessions_closed_slow_total",
                "SSE sessions closed because their queue was full",
                &self.sessions_closed_slow,
            ),
            (
                "belay_catch_ups_total",
                "Catch-ups from the store: on connect, or after a gap the live frames did not fill",
                &self.catch_ups,
            ),
            (
                "belay_catch_up_retries_total",
                "Catch-ups whose store reads failed and were tried again after a pause",
                &self.catch_up_retries,
            ),
            (
                "belay_sessions_closed_catch_up_total",
                "SSE sessions closed because their catch-up failed every retry",
                &self.sessions_closed_catch_up,
            ),
            (
                "belay_gaps_total",
                "Out-of-order live frames that made a session wait for the missing one",
                &self.gaps,
            ),
            (
                "belay_requests_timed_out_total",
                "Requests answered 503 for having no answer within server.request_timeout_secs",
                &self.requests_timed_out,
            ),
            (
                "belay_events_created_total",
                "Notifications created",
                &self.events_created,
            ),
            (
                "belay_events_collapsed_total",
                "Notifications folded into an unread one",
                &self.events_collapsed,
            ),
            (
                "belay_events_duplicate_total",
                "Notify items answered from an idempotency key",
                &self.events_duplicate,
            ),
            (
                "belay_broadcasts_total",
                "Broadcasts sent",
                &self.broadcasts,
            ),
            (
                "belay_frames_queued_total",
                "Frames queued to sessions",
                &self.frames_queued,
            ),
            (
                "belay_matches_made_total",
                "Matches made (queue pairings and accepted challenges)",
                &self.matches_made,
            ),
            (
                "belay_idempotency_keys_expired_total",
                "Idempotency keys forgotten after limits.idempotency_ttl_secs",
                &self.idempotency_keys_expired,
            ),
            (
                "belay_matchmaker_lease_changes_total",
                "Times this node took or lost the matchmaker lease",
                &self.lease_changes,
            ),
            (
                "belay_matchmaker_commands_applied_total",
                "Stream commands this node applied as the matchmaker leader",
                &self.commands_applied,
            ),
        ];
        let mut out = String::new();
        let gauges: [(&str, &str, &AtomicI64); 9] = [
            (
                "belay_connections_open",
                "HTTP connections open on this node, streams included",
                &self.connections_open,
            ),
            (
                "belay_sessions_open",
                "SSE sessions open on this node",
                &self.sessions_open,
            ),
            (
                "belay_queue_tickets",
                "Climbers waiting in the open queues",
                &self.queue_tickets,
            ),
            (
                "belay_matches_live",
                "Matches in the ready check or awaiting results",
                &self.matches_live,
            ),
            (
                "belay_challenges_pending",
                "Direct challenges awaiting an answer",
                &self.challenges_pending,
            ),
            (
                "belay_matchmaker_lease_holder",
                "1 while this node holds the matchmaker lease (cluster mode)",
                &self.lease_holder,
            ),
            (
                "belay_matchmaker_command_lag_ms",
                "Age of the last stream command when the leader took it, in milliseconds",
                &self.command_stream_lag_ms,
            ),
            (
                "belay_database_size_bytes",
                "Space the database takes, in bytes, as its server counts it (sampled)",
                &self.database_size_bytes,
            ),
            (
                "belay_sqlite_memory_bytes",
                "Memory SQLite holds in this process: page caches, statements (0 on a database \
                 server; sampled with the database size)",
                &self.sqlite_memory_bytes,
            ),
        ];
        write_series(
            &mut out,
            "gauge",
            gauges.map(|(n, h, v)| (n, h, v.load(Ordering::Relaxed))),
        );
        write_series(
            &mut out,
            "counter",
            counters.map(|(n, h, v)| (n, h, v.load(Ordering::Relaxed))),
        );
        write_labelled(
            &mut out,
            ("belay_retention_deleted_total", "rule"),
            "Read notifications deleted by retention, by rule",
            [
                ("age", &self.retention_deleted_by_age),
                ("limit", &self.retention_deleted_beyond_limit),
            ],
        );
        write_labelled(
            &mut out,
            ("belay_connections_refused_total", "cap"),
            "Connections closed on accept, by the cap they were over",
            [
                ("per_ip", &self.connections_refused_per_ip),
                ("process", &self.connections_refused_process),
            ],
        );
        self.cluster.render(&mut out);
        self.push.render(&mut out);
        out
    }
}

/// Writes one counter with a label, one series per value of the label.
fn write_labelled<'a>(
    out: &mut String,
    (name, label): (&str, &str),
    help: &str,
    series: impl IntoIterator<Item = (&'a str, &'a AtomicU64)>,
) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
    for (value_label, counter) in series {
        let value = counter.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}{{{label}=\"{value_label}\"}} {value}");
    }
}

/// Writes each series in the Prometheus text format, with its help and type lines.
fn write_series<'a, V: std::fmt::Display>(
    out: &mut String,
    kind: &str,
    series: impl IntoIterator<Item = (&'a str, &'a str, V)>,
) {
    for (name, help, value) in series {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        let _ = writeln!(out, "{name} {value}");
    }
}
