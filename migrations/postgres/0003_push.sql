-- Push for climbers with no live stream: their devices, their preferences, and the pushes
-- waiting to be sent (written in the transaction of their event).

CREATE TABLE push_devices (
    id         TEXT COLLATE "C" PRIMARY KEY,
    user_id    TEXT COLLATE "C" NOT NULL,
    platform   TEXT NOT NULL,
    -- The FCM registration token, or the Web Push endpoint.
    token      TEXT NOT NULL,
    -- SHA-256 of platform and token: one row per device, whoever registered it last.
    token_hash TEXT COLLATE "C" NOT NULL UNIQUE,
    p256dh     TEXT,
    auth       TEXT,
    created_at BIGINT NOT NULL,
    last_seen  BIGINT NOT NULL
);
CREATE INDEX push_devices_user ON push_devices (user_id, last_seen);
CREATE INDEX push_devices_last_seen ON push_devices (last_seen);

-- One push of one notification to one device; taken by moving `due_at` past a lease, with
-- FOR UPDATE SKIP LOCKED so that nodes taking at once take different jobs.
CREATE TABLE push_jobs (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    device_id       TEXT COLLATE "C" NOT NULL REFERENCES push_devices (id) ON DELETE CASCADE,
    user_id         TEXT COLLATE "C" NOT NULL,
    notification_id TEXT COLLATE "C" NOT NULL,
    due_at          BIGINT NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    created_at      BIGINT NOT NULL,
    UNIQUE (device_id, notification_id)
);
CREATE INDEX push_jobs_due ON push_jobs (due_at);

CREATE TABLE user_preferences (
    user_id    TEXT COLLATE "C" PRIMARY KEY,
    body       TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);
