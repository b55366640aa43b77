-- pixelrelay schema 1: the store shared by several nodes.
--
-- Every id a node makes is unique without asking the others: messages by their random 128-bit
-- id (the token carries it), opens by a sequence whose order is the order of commit (writers
-- of opens hold the `opens` advisory lock for their transaction, so a follower's cursor never
-- passes a row that commits later with a smaller id).

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
    -- The upstream's final reply: accepted, reply, at_ms (NULL until it came).
    delivery        jsonb,
    -- Open statistics, updated with each commit of opens.
    opens           bigint NOT NULL DEFAULT 0,
    human_opens     bigint NOT NULL DEFAULT 0,
    first_open_ms   bigint,
    last_open_ms    bigint,
    first_human_ms  bigint
);
CREATE INDEX messages_newest ON messages (at_ms DESC, id DESC);

CREATE TABLE opens (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    message     bytea NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    at_ms       bigint NOT NULL,
    -- The event as the API, webhooks and the open log show it.
    event       jsonb NOT NULL
);
CREATE INDEX opens_of_message ON opens (message, id);

-- Lifetime totals (relayed, tracked, skipped by reason, opens by kind...): one row per name.
CREATE TABLE counters (
    name        text PRIMARY KEY,
    value       bigint NOT NULL
);

-- How far each node's journal is indexed, committed with what it indexed.
CREATE TABLE journal_marks (
    node        text PRIMARY KEY,
    segment     bigint NOT NULL,
    "offset"    bigint NOT NULL
);

-- Hits that arrived before their message's record: retried, never dropped silently.
CREATE TABLE pending_hits (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    node        text NOT NULL,
    message     bytea NOT NULL,
    hit         jsonb NOT NULL,
    first_ms    bigint NOT NULL,
    attempts    integer NOT NULL DEFAULT 0
);

-- Webhook deliveries: one row per event and endpoint, leased by one node at a time.
CREATE TABLE outbox (
    endpoint    bigint NOT NULL,
    seq         bigint GENERATED ALWAYS AS IDENTITY,
    due_ms      bigint NOT NULL,
    attempts    integer NOT NULL DEFAULT 0,
    last_error  text,
    lease_until_ms bigint,
    event       jsonb NOT NULL,
    PRIMARY KEY (endpoint, seq)
);
CREATE INDEX outbox_due ON outbox (endpoint, due_ms);

CREATE TABLE dead_letters (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    endpoint    bigint NOT NULL,
    attempts    integer NOT NULL,
    last_error  text,
    died_ms     bigint NOT NULL,
    event       jsonb NOT NULL
);
