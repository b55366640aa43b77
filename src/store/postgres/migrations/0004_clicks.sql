-- pixelrelay schema 4: clicks on tracked links.
--
-- A click is an event like an open, in the same table and id sequence (the follow stream
-- and webhooks take both in order); `kind` tells them apart (0 open, 1 click) and a partial
-- index lists clicks without reading opens. A message's click statistics (counts, the links
-- clicked, first person click) are one JSON value, written only by commits with clicks.
-- Both columns have constant defaults: adding them rewrites nothing.

ALTER TABLE opens ADD COLUMN kind smallint NOT NULL DEFAULT 0;
CREATE INDEX opens_clicks ON opens (id) WHERE kind = 1;
ALTER TABLE messages ADD COLUMN clicks jsonb;
