-- Climbers waiting in the open queues: a restart keeps their place and their queue time.
CREATE TABLE queue_tickets (
    user_id    TEXT PRIMARY KEY NOT NULL,
    discipline TEXT NOT NULL,
    scope      TEXT,
    rating     REAL NOT NULL,
    queued_at  INTEGER NOT NULL
) WITHOUT ROWID;
