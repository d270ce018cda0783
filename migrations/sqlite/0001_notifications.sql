-- Per-user event streams. Every user-targeted event is a row; its cursor is the SSE id.

-- The last cursor handed out per user. Bumped inside the transaction that writes the event, so
-- cursors are gapless and follow commit order even with concurrent writers.
CREATE TABLE user_cursors (
    user_id     TEXT PRIMARY KEY NOT NULL,
    last_cursor INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE notifications (
    id           TEXT PRIMARY KEY NOT NULL,
    user_id      TEXT NOT NULL,
    cursor       INTEGER NOT NULL,
    kind         TEXT NOT NULL,
    data         TEXT NOT NULL,
    -- Set while unread for kinds that collapse (post_liked per post); cleared on read.
    collapse_key TEXT,
    created_at   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL,
    read_at      INTEGER
);

CREATE UNIQUE INDEX notifications_user_cursor ON notifications (user_id, cursor);
CREATE UNIQUE INDEX notifications_user_collapse ON notifications (user_id, collapse_key);
CREATE INDEX notifications_user_unread ON notifications (user_id, cursor) WHERE read_at IS NULL;

-- A retried notify with the same key returns the notification it created the first time.
CREATE TABLE idempotency_keys (
    user_id         TEXT NOT NULL,
    key             TEXT NOT NULL,
    notification_id TEXT NOT NULL,
    created_at      INTEGER NOT NULL,
    PRIMARY KEY (user_id, key)
) WITHOUT ROWID;
