-- Belay on PostgreSQL: the final shape of the SQLite schema in one step. Times are milliseconds
-- since the epoch, ids are text, `data` is the JSON text as written. Ids and keys compare
-- byte-wise (COLLATE "C"), as SQLite does: leaderboard ties and lock order follow user ids the
-- same way on every backend, whatever the server's locale.

-- The last cursor handed out per user, and how many of their notifications are unread. Locked
-- by every transaction that writes to the user's stream: cursors are gapless in commit order.
CREATE TABLE user_cursors (
    user_id     TEXT COLLATE "C" PRIMARY KEY,
    last_cursor BIGINT NOT NULL,
    unread      BIGINT NOT NULL DEFAULT 0
);

CREATE TABLE notifications (
    id           TEXT COLLATE "C" PRIMARY KEY,
    user_id      TEXT COLLATE "C" NOT NULL,
    cursor       BIGINT NOT NULL,
    kind         TEXT NOT NULL,
    data         TEXT NOT NULL,
    -- Set while unread for kinds that collapse (post_liked per post); cleared on read.
    collapse_key TEXT COLLATE "C",
    created_at   BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL,
    read_at      BIGINT
);

CREATE UNIQUE INDEX notifications_user_cursor ON notifications (user_id, cursor);
-- Only notifications that can still collapse (an unread like) have a collapse key.
CREATE UNIQUE INDEX notifications_user_collapse ON notifications (user_id, collapse_key)
    WHERE collapse_key IS NOT NULL;

-- A retried notify with the same key returns the notification it created the first time.
CREATE TABLE idempotency_keys (
    user_id         TEXT COLLATE "C" NOT NULL,
    key             TEXT COLLATE "C" NOT NULL,
    notification_id TEXT COLLATE "C" NOT NULL,
    created_at      BIGINT NOT NULL,
    PRIMARY KEY (user_id, key)
);

-- Climbers who signed in at least once: only they can be challenged.
CREATE TABLE climbers (
    user_id    TEXT COLLATE "C" PRIMARY KEY,
    first_seen BIGINT NOT NULL
);

-- A match as the engine sees it (JSON in `data`); status and players as columns for look-ups.
CREATE TABLE matches (
    id         TEXT COLLATE "C" PRIMARY KEY,
    status     TEXT NOT NULL,
    discipline TEXT NOT NULL,
    player_a   TEXT COLLATE "C" NOT NULL,
    player_b   TEXT COLLATE "C" NOT NULL,
    data       TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX matches_live ON matches (status) WHERE status IN ('ready_check', 'confirmed');
CREATE INDEX matches_player_a ON matches (player_a, created_at);
CREATE INDEX matches_player_b ON matches (player_b, created_at);

CREATE TABLE challenges (
    id         TEXT COLLATE "C" PRIMARY KEY,
    status     TEXT NOT NULL,
    from_user  TEXT COLLATE "C" NOT NULL,
    to_user    TEXT COLLATE "C" NOT NULL,
    data       TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX challenges_pending ON challenges (status) WHERE status = 'pending';

-- Glicko-2 ratings per discipline; a row exists once a climber has a settled match.
CREATE TABLE ratings (
    user_id    TEXT COLLATE "C" NOT NULL,
    discipline TEXT NOT NULL,
    rating     DOUBLE PRECISION NOT NULL,
    deviation  DOUBLE PRECISION NOT NULL,
    volatility DOUBLE PRECISION NOT NULL,
    matches    BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (user_id, discipline)
);
CREATE INDEX ratings_board ON ratings (discipline, rating DESC, user_id);

-- Logged ascents: `difficulty` orders grades across scales (boulder, lead); speed has time_ms.
-- `seq` is the insertion order, the last tie-break of a climber's hardest ascent.
CREATE TABLE ascents (
    id         TEXT COLLATE "C" PRIMARY KEY,
    seq        BIGINT GENERATED ALWAYS AS IDENTITY,
    user_id    TEXT COLLATE "C" NOT NULL,
    route_id   TEXT COLLATE "C" NOT NULL,
    discipline TEXT NOT NULL,
    grade      TEXT,
    difficulty BIGINT,
    time_ms    BIGINT,
    created_at BIGINT NOT NULL
);
CREATE INDEX ascents_user_route ON ascents (user_id, route_id);
CREATE INDEX ascents_user_best ON ascents (user_id, discipline, difficulty);

-- Climbers waiting in the open queues: a restart keeps their place and their queue time.
CREATE TABLE queue_tickets (
    user_id    TEXT COLLATE "C" PRIMARY KEY,
    discipline TEXT NOT NULL,
    scope      TEXT,
    rating     DOUBLE PRECISION NOT NULL,
    queued_at  BIGINT NOT NULL
);
