-- The fencing number of the matchmaker lease and the last command the leader applied: every
-- matchmaking transaction in cluster mode locks, checks and moves this one row.
CREATE TABLE matchmaker_fence (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    token BIGINT NOT NULL,
    last_command TEXT
);
INSERT INTO matchmaker_fence (id, token, last_command) VALUES (1, 0, NULL);
