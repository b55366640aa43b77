-- pixelrelay schema 3: opens without a foreign key to their message.
--
-- Every row a commit of opens copied in ran the key's check (a lookup and a share lock of the
-- message row), about half of what an open cost the database. Writers hold the writers' lock
-- and read each message's statistics row before they write its opens, and retention deletes
-- messages and their opens under the same lock, so no open can outlive its message.

ALTER TABLE opens DROP CONSTRAINT opens_message_fkey;
