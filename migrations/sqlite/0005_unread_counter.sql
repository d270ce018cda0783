-- Each user's unread count lives beside their head cursor, moved by the same writes that add or
-- read notifications. The partial index that counted unread rows goes: every new notification
-- was one more b-tree insert, on a page of its own per user.
ALTER TABLE user_cursors ADD COLUMN unread INTEGER NOT NULL DEFAULT 0;
UPDATE user_cursors SET unread = (
    SELECT COUNT(*) FROM notifications n
    WHERE n.user_id = user_cursors.user_id AND n.read_at IS NULL
);
DROP INDEX notifications_user_unread;
