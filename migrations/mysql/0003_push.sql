-- Push for climbers with no live stream: their devices, their preferences, and the pushes
-- waiting to be sent (written in the transaction of their event).

CREATE TABLE push_devices (
    id         CHAR(36) CHARACTER SET ascii COLLATE ascii_bin NOT NULL PRIMARY KEY,
    user_id    VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    platform   VARCHAR(16) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    -- The FCM registration token, or the Web Push endpoint.
    token      TEXT CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    -- SHA-256 of platform and token: one row per device, whoever registered it last.
    token_hash CHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    p256dh     VARCHAR(128) CHARACTER SET ascii COLLATE ascii_bin NULL,
    auth       VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NULL,
    created_at BIGINT NOT NULL,
    last_seen  BIGINT NOT NULL,
    UNIQUE KEY push_devices_token (token_hash),
    KEY push_devices_user (user_id, last_seen),
    KEY push_devices_last_seen (last_seen)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;

-- One push of one notification to one device; taken by moving `due_at` past a lease, with
-- FOR UPDATE SKIP LOCKED so that nodes taking at once take different jobs.
CREATE TABLE push_jobs (
    id              BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    device_id       CHAR(36) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    user_id         VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    notification_id CHAR(36) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    due_at          BIGINT NOT NULL,
    attempts        INT NOT NULL DEFAULT 0,
    created_at      BIGINT NOT NULL,
    UNIQUE KEY push_jobs_device_notification (device_id, notification_id),
    KEY push_jobs_due (due_at),
    CONSTRAINT push_jobs_device FOREIGN KEY (device_id) REFERENCES push_devices (id)
        ON DELETE CASCADE
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;

CREATE TABLE user_preferences (
    user_id    VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL PRIMARY KEY,
    body       TEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci NOT NULL,
    updated_at BIGINT NOT NULL
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;
