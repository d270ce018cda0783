-- Belay on MariaDB / MySQL 8: the final schema of the SQLite migrations, in one file (DDL is not
-- transactional here, so there are no intermediate steps to half-apply).
-- Ids and keys are ASCII compared byte for byte (ascii_bin), as SQLite and PostgreSQL compare
-- them: `ana` and `Ana` are two users. Times are Unix milliseconds; `data` is JSON text verbatim.
-- `cursor` and `key` are reserved words: always quoted.

-- The last cursor handed out per user and how many of their notifications are unread. A group
-- locks these rows first (in user-id order): they serialise two nodes writing for one user.
CREATE TABLE user_cursors (
    user_id     VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL PRIMARY KEY,
    last_cursor BIGINT NOT NULL,
    unread      BIGINT NOT NULL DEFAULT 0
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;

-- Clustered by (user, cursor): a replay or a page is one walk down contiguous rows.
CREATE TABLE notifications (
    user_id      VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    `cursor`     BIGINT NOT NULL,
    id           CHAR(36) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    kind         VARCHAR(32) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    data         LONGTEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci NOT NULL,
    -- Set while unread for kinds that collapse (post_liked per post); cleared on read. NULLs
    -- never collide in a UNIQUE index, so only open collapse keys are unique.
    collapse_key VARCHAR(80) CHARACTER SET ascii COLLATE ascii_bin NULL,
    created_at   BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL,
    read_at      BIGINT NULL,
    PRIMARY KEY (user_id, `cursor`),
    UNIQUE KEY notifications_id (id),
    UNIQUE KEY notifications_user_collapse (user_id, collapse_key),
    -- LIMIT takes no expression here, so a walk for unread rows cannot stop at the user's unread
    -- count as SQLite's does: this index makes it read the unread rows alone.
    KEY notifications_user_unread (user_id, read_at, `cursor`)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;

-- A retried notify with the same key returns the notification it created the first time.
CREATE TABLE idempotency_keys (
    user_id         VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    `key`           VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    notification_id CHAR(36) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    created_at      BIGINT NOT NULL,
    PRIMARY KEY (user_id, `key`)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;

-- Climbers who signed in at least once: only they can be challenged.
CREATE TABLE climbers (
    user_id    VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL PRIMARY KEY,
    first_seen BIGINT NOT NULL
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;

-- A match as the engine sees it (JSON in `data`); status and players as columns for look-ups.
CREATE TABLE matches (
    id         CHAR(36) CHARACTER SET ascii COLLATE ascii_bin NOT NULL PRIMARY KEY,
    status     VARCHAR(16) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    discipline VARCHAR(16) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    player_a   VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    player_b   VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    data       LONGTEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    -- No partial indexes here: live matches are found by status.
    KEY matches_status (status, created_at),
    KEY matches_player_a (player_a, created_at),
    KEY matches_player_b (player_b, created_at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;

CREATE TABLE challenges (
    id         CHAR(36) CHARACTER SET ascii COLLATE ascii_bin NOT NULL PRIMARY KEY,
    status     VARCHAR(16) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    from_user  VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    to_user    VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    data       LONGTEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci NOT NULL,
    created_at BIGINT NOT NULL,
    KEY challenges_status (status, created_at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;

-- Glicko-2 ratings per discipline; a row exists once a climber has a settled match.
CREATE TABLE ratings (
    user_id    VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    discipline VARCHAR(16) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    rating     DOUBLE NOT NULL,
    deviation  DOUBLE NOT NULL,
    volatility DOUBLE NOT NULL,
    matches    BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (user_id, discipline),
    KEY ratings_board (discipline, rating DESC, user_id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;

-- Logged ascents: `difficulty` orders grades across scales (boulder, lead); speed has time_ms.
-- `seq` is the insertion order, the last tie-break of a climber's hardest ascent.
CREATE TABLE ascents (
    seq        BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    id         CHAR(36) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    user_id    VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    route_id   VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    discipline VARCHAR(16) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    grade      VARCHAR(32) CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci NULL,
    difficulty BIGINT NULL,
    time_ms    BIGINT NULL,
    created_at BIGINT NOT NULL,
    UNIQUE KEY ascents_id (id),
    KEY ascents_user_route (user_id, route_id),
    KEY ascents_user_best (user_id, discipline, difficulty)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;

-- Climbers waiting in the open queues: a restart keeps their place and their queue time.
CREATE TABLE queue_tickets (
    user_id    VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL PRIMARY KEY,
    discipline VARCHAR(16) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    scope      VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NULL,
    rating     DOUBLE NOT NULL,
    queued_at  BIGINT NOT NULL
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;
