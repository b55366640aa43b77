-- pixelrelay schema 1: the store shared by several nodes.
--
-- Ids are made by the writer: a message's is its random 128-bit id (the token carries it); an
-- open's and a webhook event's are `max(previous + 1, at_ms << 20)` like the sled store's.
-- Writers take one advisory lock for their transaction, so ids are handed out and committed
-- in the same order on every node, and a follower's cursor never passes a row that commits
-- later with a smaller id.

CREATE TABLE messages (
    id              bytea PRIMARY KEY CHECK (length(id) = 16),
    queue_id        text NOT NULL,
    at_ms           bigint NOT NULL,
    sender          text NOT NULL,
    recipients      text[] NOT NULL,
    message_id      text,
    subject         text,
    size            bigint NOT NULL,
    tracked         boolean NOT NULL,
    skip_reason     text,
    -- The upstream's final reply (Delivery as JSON); NULL until it came.
    delivery        jsonb,
    -- When the message was handed upstream: the reply's time once known, else at_ms.
    sent_at_ms      bigint NOT NULL,
    -- Open statistics, updated in each commit of opens.
    opens           bigint NOT NULL DEFAULT 0,
    human_opens     bigint NOT NULL DEFAULT 0,
    first_open_ms   bigint,
    last_open_ms    bigint,
    first_human_ms  bigint
) WITH (fillfactor = 70);   -- room on each page for the statistics' updates (HOT: no index write)
CREATE INDEX messages_newest ON messages (at_ms DESC, id DESC);

CREATE TABLE opens (
    id          bigint PRIMARY KEY,
    message     bytea NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    -- The event as the API, webhooks and the open log show it (JSON text, as written).
    event       text NOT NULL
);
CREATE INDEX opens_of_message ON opens (message, id);

-- What writers share: 'counters' (the lifetime totals), 'last_open', 'last_event'.
CREATE TABLE state (
    name        text PRIMARY KEY,
    value       jsonb NOT NULL
);

-- How far each node's journal is indexed, committed with what it indexed.
CREATE TABLE journal_marks (
    node        text PRIMARY KEY,
    generation  bigint NOT NULL,
    "offset"    bigint NOT NULL
);

-- Webhook deliveries: one row per event and endpoint (8 bytes, big-endian: sorts as the
-- unsigned id does), and the dead letters that ran out of time.
CREATE TABLE outbox (
    endpoint    bytea NOT NULL,
    seq         bigint NOT NULL,
    kind        text NOT NULL,
    created_ms  bigint NOT NULL,
    attempts    integer NOT NULL,
    next_ms     bigint NOT NULL,
    last_error  text,
    body        text NOT NULL,
    -- The node delivering it now, and until when (another node takes it after that).
    lease_node  text,
    lease_until_ms bigint,
    PRIMARY KEY (endpoint, seq)
);

CREATE TABLE dead_letters (LIKE outbox INCLUDING ALL);
