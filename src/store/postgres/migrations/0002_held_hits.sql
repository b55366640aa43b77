-- pixelrelay schema 2: hits a node holds until their message's record is in the database.
--
-- A pixel node may index a hit before the node that relayed its message has indexed the
-- message's record. It holds the hit and tries again; the hold is written here in the same
-- transaction as the journal mark that passes the hit, so a node killed meanwhile finds it
-- again on start, and a hit recorded from the hold is deleted in the transaction that records
-- it (never recorded twice).

CREATE TABLE held_hits (
    node        text NOT NULL,
    -- Where the hit ends in that node's journal: its key.
    generation  bigint NOT NULL,
    "offset"    bigint NOT NULL,
    -- The hit as journaled.
    hit         bytea NOT NULL,
    PRIMARY KEY (node, generation, "offset")
);
