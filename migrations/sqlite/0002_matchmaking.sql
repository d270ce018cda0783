-- Matchmaking: climbers seen, matches, challenges, ratings per discipline, ascents.

-- Climbers who signed in at least once: only they can be challenged.
CREATE TABLE climbers (
    user_id    TEXT PRIMARY KEY NOT NULL,
    first_seen INTEGER NOT NULL
) WITHOUT ROWID;

-- A match as the engine sees it (JSON in `data`); status and players as columns for look-ups.
CREATE TABLE matches (
    id         TEXT PRIMARY KEY NOT NULL,
    status     TEXT NOT NULL,
    discipline TEXT NOT NULL,
    player_a   TEXT NOT NULL,
    player_b   TEXT NOT NULL,
    data       TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE INDEX matches_live ON matches (status) WHERE status IN ('ready_check', 'confirmed');
CREATE INDEX matches_player_a ON matches (player_a, created_at);
CREATE INDEX matches_player_b ON matches (player_b, created_at);

CREATE TABLE challenges (
    id         TEXT PRIMARY KEY NOT NULL,
    status     TEXT NOT NULL,
    from_user  TEXT NOT NULL,
    to_user    TEXT NOT NULL,
    data       TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE INDEX challenges_pending ON challenges (status) WHERE status = 'pending';

-- Glicko-2 ratings per discipline; a row exists once a climber has a settled match.
CREATE TABLE ratings (
    user_id    TEXT NOT NULL,
    discipline TEXT NOT NULL,
    rating     REAL NOT NULL,
    deviation  REAL NOT NULL,
    volatility REAL NOT NULL,
    matches    INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (user_id, discipline)
) WITHOUT ROWID;
CREATE INDEX ratings_board ON ratings (discipline, rating DESC, user_id);

-- Logged ascents: `difficulty` orders grades across scales (boulder, lead); speed has time_ms.
CREATE TABLE ascents (
    id         TEXT PRIMARY KEY NOT NULL,
    user_id    TEXT NOT NULL,
    route_id   TEXT NOT NULL,
    discipline TEXT NOT NULL,
    grade      TEXT,
    difficulty INTEGER,
    time_ms    INTEGER,
    created_at INTEGER NOT NULL
);
CREATE INDEX ascents_user_route ON ascents (user_id, route_id);
CREATE INDEX ascents_user_best ON ascents (user_id, discipline, difficulty);
