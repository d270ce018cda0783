-- Push for climbers with no live stream: their devices, their preferences, and the pushes
-- waiting to be sent (written in the transaction of their event).

CREATE TABLE push_devices (
    id         TEXT PRIMARY KEY NOT NULL,
    user_id    TEXT NOT NULL,
    platform   TEXT NOT NULL,
    -- The FCM registration token, or the Web Push endpoint.
    token      TEXT NOT NULL,
    -- SHA-256 of platform and token: one row per device, whoever registered it last.
    token_hash TEXT NOT NULL,
    p256dh     TEXT,
    auth       TEXT,
    created_at INTEGER NOT NULL,
    last_seen  INTEGER NOT NULL
);
CREATE UNIQUE INDEX push_devices_token ON push_devices (token_hash);
CREATE INDEX push_devices_user ON push_devices (user_id, last_seen);
CREATE INDEX push_devices_last_seen ON push_devices (last_seen);

-- One push of one notification to one device; taken by moving `due_at` past a lease.
CREATE TABLE push_jobs (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    device_id       TEXT NOT NULL REFERENCES push_devices (id) ON DELETE CASCADE,
    user_id         TEXT NOT NULL,
    notification_id TEXT NOT NULL,
    due_at          INTEGER NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    created_at      INTEGER NOT NULL
);
CREATE UNIQUE INDEX push_jobs_device_notification ON push_jobs (device_id, notification_id);
CREATE INDEX push_jobs_due ON push_jobs (due_at);

CREATE TABLE user_preferences (
    user_id    TEXT PRIMARY KEY NOT NULL,
    body       TEXT NOT NULL,
    updated_at INTEGER NOT NULL
) WITHOUT ROWID;
