-- Conveyor SQLite schema, version 2: how many messages each queue holds in
-- each state, kept by every transition (as depth is), so that a queue's
-- statistics cost the same at any depth instead of a count over its rows.
-- depth (messages in states 0, 1, 2 and 4) is now their sum.
ALTER TABLE queues ADD COLUMN ready INTEGER NOT NULL DEFAULT 0;
ALTER TABLE queues ADD COLUMN scheduled INTEGER NOT NULL DEFAULT 0;
ALTER TABLE queues ADD COLUMN leased INTEGER NOT NULL DEFAULT 0;
ALTER TABLE queues ADD COLUMN dead INTEGER NOT NULL DEFAULT 0;
ALTER TABLE queues ADD COLUMN blocked INTEGER NOT NULL DEFAULT 0;
UPDATE queues SET
    ready = (SELECT count(*) FROM messages WHERE queue = queues.name AND state = 0),
    scheduled = (SELECT count(*) FROM messages WHERE queue = queues.name AND state = 1),
    leased = (SELECT count(*) FROM messages WHERE queue = queues.name AND state = 2),
    dead = (SELECT count(*) FROM messages WHERE queue = queues.name AND state = 3),
    blocked = (SELECT count(*) FROM messages WHERE queue = queues.name AND state = 4);
ALTER TABLE queues DROP COLUMN depth;
