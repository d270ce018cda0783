-- The fencing number of the matchmaker lease and the last command the leader applied: every
-- matchmaking transaction in cluster mode locks, checks and moves this one row.
CREATE TABLE matchmaker_fence (
    id INT NOT NULL PRIMARY KEY,
    token BIGINT NOT NULL,
    last_command VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NULL
) ENGINE = InnoDB;
INSERT INTO matchmaker_fence (id, token, last_command) VALUES (1, 0, NULL);
