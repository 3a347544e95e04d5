-- Named queries of the SQLite store. Table layout: migrations/0001_initial.sql.
-- States: 0 ready, 1 scheduled, 2 leased, 3 dead, 4 blocked behind its group.

-- name: insert_message
INSERT INTO messages (seq, queue, state, priority, available_at, expires_at, body, headers,
                      dedup_key, grp, bucket, max_attempts, enqueued_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?);

-- name: dedup_get
SELECT seq FROM dedup WHERE queue = ? AND key = ? AND expires_at > ?;

-- name: dedup_put
INSERT OR REPLACE INTO dedup (queue, key, seq, expires_at) VALUES (?, ?, ?, ?);

-- name: group_has_head
SELECT 1 FROM messages WHERE queue = ? AND grp = ? AND state IN (0, 1, 2) LIMIT 1;

-- name: queue_depth
-- Messages that count against max_length: all but dead letters.
SELECT ready + scheduled + leased + blocked FROM queues WHERE name = ?;

-- name: bump_counters
-- Changes of the per-state counts (in state order), then of the totals.
UPDATE queues SET ready = ready + ?1, scheduled = scheduled + ?2, leased = leased + ?3,
    dead = dead + ?4, blocked = blocked + ?5,
    enqueued_total = enqueued_total + ?6, delivered_total = delivered_total + ?7,
    acked_total = acked_total + ?8, nacked_total = nacked_total + ?9,
    dead_total = dead_total + ?10, expired_total = expired_total + ?11,
    lease_expired_total = lease_expired_total + ?12
WHERE name = ?13;

-- name: session_exists
SELECT 1 FROM sessions WHERE id = ?;

-- name: promote_due
UPDATE messages SET state = 0 WHERE queue = ? AND state = 1 AND available_at <= ?;

-- name: has_ready_grouped
SELECT 1 FROM messages WHERE queue = ? AND state = 0 AND grp IS NOT NULL LIMIT 1;

-- name: claimable_buckets
-- The session's buckets that no other session still holds a lease in.
SELECT b.value FROM json_each(?) AS b
WHERE NOT EXISTS (
    SELECT 1 FROM bucket_owners AS o
    WHERE o.queue = ? AND o.bucket = b.value AND o.session <> ?
      AND EXISTS (SELECT 1 FROM messages AS l
                  WHERE l.state = 2 AND l.holder = o.session AND l.queue = ?
                    AND l.bucket = o.bucket));

-- name: claim_plain
-- Leases the first ready messages: at most ?6 of them, and of those only as
-- many as fit in ?8 bytes, each counted as its body, its headers and ?7 (the
-- store's MESSAGE_OVERHEAD); the first always goes, so that every message
-- leased is sent. The lengths come from the rows' headers: a large body is not read.
UPDATE messages
SET state = 2, holder = ?1, token = max(token + 1, ?2), attempts = attempts + 1,
    lease_deadline = ?3
WHERE seq IN (
    SELECT seq FROM (
        SELECT seq, row_number() OVER w AS n, sum(size) OVER w AS running
        FROM (SELECT seq, priority, available_at,
                     length(body) + coalesce(length(headers), 0) + ?7 AS size
              FROM messages
              WHERE queue = ?4 AND state = 0 AND grp IS NULL
                AND (expires_at IS NULL OR expires_at > ?5)
              ORDER BY priority DESC, available_at, seq LIMIT ?6)
        WINDOW w AS (ORDER BY priority DESC, available_at, seq ROWS UNBOUNDED PRECEDING))
    WHERE n = 1 OR running <= ?8)
RETURNING seq, body, headers, priority, grp, attempts, max_attempts, token, enqueued_at,
          available_at, bucket;

-- name: claim_grouped
-- The same, with group heads of the buckets ?9 (a JSON array).
UPDATE messages
SET state = 2, holder = ?1, token = max(token + 1, ?2), attempts = attempts + 1,
    lease_deadline = ?3
WHERE seq IN (
    SELECT seq FROM (
        SELECT seq, row_number() OVER w AS n, sum(size) OVER w AS running
        FROM (SELECT seq, priority, available_at,
                     length(body) + coalesce(length(headers), 0) + ?7 AS size
              FROM messages
              WHERE queue = ?4 AND state = 0
                AND (expires_at IS NULL OR expires_at > ?5)
                AND (grp IS NULL OR bucket IN (SELECT value FROM json_each(?9)))
              ORDER BY priority DESC, available_at, seq LIMIT ?6)
        WINDOW w AS (ORDER BY priority DESC, available_at, seq ROWS UNBOUNDED PRECEDING))
    WHERE n = 1 OR running <= ?8)
RETURNING seq, body, headers, priority, grp, attempts, max_attempts, token, enqueued_at,
          available_at, bucket;

-- name: own_bucket
INSERT OR REPLACE INTO bucket_owners (queue, bucket, session) VALUES (?, ?, ?);

-- name: next_scheduled
SELECT min(available_at) FROM messages WHERE queue = ? AND state = 1;

-- name: session_delivered
UPDATE sessions SET delivered_total = delivered_total + ?, last_seen = max(last_seen, ?)
WHERE id = ?;

-- name: session_acked
UPDATE sessions SET acked_total = acked_total + ? WHERE id = ?;

-- name: ack_delete
-- Every message of a JSON array of [seq, token] pairs whose token is honoured:
-- while the message is leased, or ready again after its lease lapsed but
-- before anyone else received it. One statement for a whole batch of acks.
DELETE FROM messages
WHERE seq IN (SELECT m.seq FROM json_each(?) AS a
              JOIN messages AS m ON m.seq = json_extract(a.value, '$[0]')
              WHERE m.token = json_extract(a.value, '$[1]')
                AND m.holder IS NOT NULL AND m.state IN (0, 2))
RETURNING seq, token, queue, grp, holder, state;

-- name: lease_get
SELECT queue, grp, attempts, max_attempts, state FROM messages
WHERE seq = ? AND token = ? AND holder IS NOT NULL AND state IN (0, 2);

-- name: retry
UPDATE messages
SET state = ?, available_at = ?, last_error = ?, holder = NULL, lease_deadline = NULL
WHERE seq = ?;

-- name: unclaim
-- A delivery that never reached its handler: ready at once, its attempt taken back.
UPDATE messages
SET state = 0, available_at = ?, attempts = attempts - 1, holder = NULL, lease_deadline = NULL
WHERE seq = ?;

-- name: extend
-- Only a live lease: one past its deadline is lost, released or not yet.
UPDATE messages SET lease_deadline = ?
WHERE seq = ? AND token = ? AND state = 2 AND holder IS NOT NULL AND lease_deadline >= ?;

-- name: kill
UPDATE messages
SET state = 3, holder = NULL, lease_deadline = NULL, dead_reason = ?,
    last_error = coalesce(?, last_error), dead_at = ?
WHERE seq = ?;

-- name: promote_group
UPDATE messages SET state = CASE WHEN available_at > ? THEN 1 ELSE 0 END
WHERE seq = (SELECT seq FROM messages
             WHERE queue = ? AND grp = ? AND state = 4 ORDER BY seq LIMIT 1)
RETURNING state;

-- name: result_put
INSERT OR REPLACE INTO results (seq, status, body, error, finished_at, expires_at)
VALUES (?, ?, ?, ?, ?, ?);

-- name: result_get
SELECT status, body, error, finished_at FROM results WHERE seq = ?;

-- name: result_delete
DELETE FROM results WHERE seq = ?;

-- name: release
UPDATE messages SET state = 0, lease_deadline = NULL WHERE seq = ?;

-- name: leases_of_session
SELECT seq, queue, grp, attempts, max_attempts FROM messages WHERE state = 2 AND holder = ?;

-- name: leases_all
SELECT seq, queue, grp, attempts, max_attempts FROM messages WHERE state = 2;

-- name: leases_expired
SELECT seq, queue, grp, attempts, max_attempts FROM messages
WHERE state = 2 AND lease_deadline < ? ORDER BY lease_deadline LIMIT ?;

-- name: ttl_expired
SELECT seq, queue, grp, state FROM messages
WHERE expires_at IS NOT NULL AND expires_at <= ? AND state IN (0, 1, 4)
ORDER BY expires_at LIMIT ?;

-- name: session_insert
INSERT INTO sessions (id, name, capacity, timeout, created_at, last_seen) VALUES (?, ?, ?, ?, ?, ?);

-- name: session_touch
UPDATE sessions SET last_seen = max(last_seen, ?) WHERE id = ?;

-- name: session_delete
DELETE FROM sessions WHERE id = ?;

-- name: sessions_expired
SELECT id FROM sessions WHERE last_seen + timeout < ?;

-- name: sessions_all
SELECT id, name, capacity, timeout, created_at, last_seen, delivered_total, acked_total
FROM sessions ORDER BY created_at, id;

-- name: sessions_clear
DELETE FROM sessions;

-- name: leases_by_holder
SELECT holder, count(*) FROM messages WHERE state = 2 GROUP BY holder;

-- name: consumer_insert
INSERT OR IGNORE INTO consumers (session, queue, last_claim) VALUES (?, ?, ?);

-- name: consumer_claimed
UPDATE consumers SET last_claim = max(last_claim, ?) WHERE queue = ? AND session = ?;

-- name: consumer_queues
SELECT queue FROM consumers WHERE session = ?;

-- name: consumers_all
SELECT session, queue FROM consumers;

-- name: consumers_of_queue
SELECT c.session, s.capacity FROM consumers AS c JOIN sessions AS s ON s.id = c.session
WHERE c.queue = ? AND c.last_claim >= ?;

-- name: consumers_drop_session
DELETE FROM consumers WHERE session = ?;

-- name: consumers_clear
DELETE FROM consumers;

-- name: owners_drop_session
DELETE FROM bucket_owners WHERE session = ?;

-- name: owners_clear
DELETE FROM bucket_owners;

-- name: dedup_sweep
DELETE FROM dedup WHERE expires_at <= ?;

-- name: idempotency_get
SELECT reply FROM idempotency WHERE key = ? AND expires_at > ?;

-- name: idempotency_put
INSERT OR REPLACE INTO idempotency (key, reply, expires_at) VALUES (?, ?, ?);

-- name: idempotency_sweep
DELETE FROM idempotency WHERE expires_at <= ?;

-- name: results_sweep
DELETE FROM results WHERE expires_at <= ?;

-- name: queue_insert
INSERT OR IGNORE INTO queues (name, config, created_at) VALUES (?, ?, ?);

-- name: queue_update
UPDATE queues SET config = ? WHERE name = ?;

-- name: groups_of_queue
SELECT DISTINCT grp FROM messages WHERE queue = ? AND grp IS NOT NULL;

-- name: rebucket_group
UPDATE messages SET bucket = ? WHERE queue = ? AND grp = ?;

-- name: owners_from_leases
-- After a change of bucket count: each bucket is owned by a session holding
-- a lease in it (grouped leases are at most one per group).
INSERT OR REPLACE INTO bucket_owners (queue, bucket, session)
SELECT queue, bucket, holder FROM messages
WHERE queue = ? AND state = 2 AND grp IS NOT NULL;

-- name: queues_all
SELECT name, config, created_at FROM queues ORDER BY name;

-- name: queue_delete
DELETE FROM queues WHERE name = ?;

-- name: messages_drop_queue
DELETE FROM messages WHERE queue = ?;

-- name: dedup_drop_queue
DELETE FROM dedup WHERE queue = ?;

-- name: consumers_drop_queue
DELETE FROM consumers WHERE queue = ?;

-- name: owners_drop_queue
DELETE FROM bucket_owners WHERE queue = ?;

-- name: bindings_drop_queue
DELETE FROM bindings WHERE queue = ?;

-- name: purge
DELETE FROM messages WHERE queue = ? AND state IN (0, 1, 4);

-- name: purged
UPDATE queues SET ready = 0, scheduled = 0, blocked = 0 WHERE name = ?;

-- name: dead_page
-- At most ?3 dead letters after seq ?2, and of those only as many as fit in
-- ?5 bytes, each counted as its body, headers, last error, reason and ?4
-- (the first always goes).
SELECT seq, body, headers, priority, grp, dedup_key, attempts, max_attempts, enqueued_at,
       available_at, expires_at, last_error, dead_reason, dead_at
FROM messages
WHERE seq IN (
    SELECT seq FROM (
        SELECT seq, row_number() OVER w AS n, sum(size) OVER w AS running
        FROM (SELECT seq, length(body) + coalesce(length(headers), 0)
                          + coalesce(length(CAST(last_error AS BLOB)), 0)
                          + coalesce(length(CAST(dead_reason AS BLOB)), 0) + ?4 AS size
              FROM messages WHERE queue = ?1 AND state = 3 AND seq > ?2 ORDER BY seq LIMIT ?3)
        WINDOW w AS (ORDER BY seq ROWS UNBOUNDED PRECEDING))
    WHERE n = 1 OR running <= ?5)
ORDER BY seq;

-- name: dead_all
SELECT seq, grp FROM messages WHERE queue = ? AND state = 3 ORDER BY seq;

-- name: dead_one
SELECT seq, grp FROM messages WHERE queue = ? AND state = 3 AND seq = ?;

-- name: redrive_one
UPDATE messages
SET state = ?, attempts = 0, available_at = ?, holder = NULL, dead_reason = NULL, dead_at = NULL
WHERE seq = ?;

-- name: binding_insert
INSERT OR IGNORE INTO bindings (pattern, queue) VALUES (?, ?);

-- name: binding_delete
DELETE FROM bindings WHERE pattern = ? AND queue = ?;

-- name: bindings_all
SELECT pattern, queue FROM bindings ORDER BY pattern, queue;

-- name: oldest_ready
-- When the longest-waiting ready message became ready: the least available_at
-- of each priority level's first entry in messages_ready, one index probe per
-- level present instead of a scan of every ready message.
WITH RECURSIVE levels (priority) AS (
    SELECT max(priority) FROM messages WHERE queue = ?1 AND state = 0
    UNION ALL
    SELECT (SELECT max(priority) FROM messages
            WHERE queue = ?1 AND state = 0 AND priority < levels.priority)
    FROM levels WHERE levels.priority IS NOT NULL
)
SELECT min((SELECT min(available_at) FROM messages
            WHERE queue = ?1 AND state = 0 AND priority = levels.priority))
FROM levels WHERE levels.priority IS NOT NULL;

-- name: count_consumers
SELECT count(*) FROM consumers WHERE queue = ?;

-- name: queue_counters
-- The counts of store/mapping.py's queue_stats: per state (in state order),
-- then the totals.
SELECT ready, scheduled, leased, dead, blocked, enqueued_total, delivered_total, acked_total,
       nacked_total, dead_total, expired_total, lease_expired_total
FROM queues WHERE name = ?;

-- name: epoch_get
SELECT value FROM meta WHERE key = 'epoch';

-- name: epoch_put
INSERT OR REPLACE INTO meta (key, value) VALUES ('epoch', ?);

-- name: max_seq
SELECT max(coalesce((SELECT max(seq) FROM messages), 0), coalesce((SELECT max(seq) FROM results), 0));
