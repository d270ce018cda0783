-- Only notifications that can still collapse (an unread like) have a collapse key: index those
-- alone, so that every other notification is one b-tree insert cheaper.
DROP INDEX notifications_user_collapse;
CREATE UNIQUE INDEX notifications_user_collapse ON notifications (user_id, collapse_key)
    WHERE collapse_key IS NOT NULL;
