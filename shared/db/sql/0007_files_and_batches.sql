-- Files and batches in the record. A file's bytes live in the blob store (shared/blob_store.py:
-- a directory or S3); this is its metadata. A batch's hot state (status, counters, the cursor of
-- its next line) lives in Redis while it runs; this row is its record: written when it is created
-- and again, whole, when it ends. Listing reads these tables, newest first, by cursor.

CREATE TABLE files (
    id          text PRIMARY KEY,
    seq         bigint GENERATED ALWAYS AS IDENTITY,  -- recording order: the page cursor
    account_id  text NOT NULL,
    purpose     text NOT NULL,                        -- batch (uploads), batch_output (results)
    filename    text NOT NULL,
    bytes       bigint NOT NULL,
    blob_key    text NOT NULL,                        -- where the bytes are in the blob store
    batch_id    text,                                 -- the batch a result file belongs to
    created_at  bigint NOT NULL,                      -- unix seconds
    expires_at  bigint NOT NULL                       -- retention deletes the row and its blob after this
);
CREATE INDEX files_newest ON files (account_id, seq DESC);
CREATE INDEX files_by_purpose ON files (account_id, purpose, seq DESC);
CREATE INDEX files_expiring ON files (expires_at);

-- What each account stores, kept by a trigger in the same transaction as every file row written or
-- deleted: the upload cap and /metrics read one row, never a recount.
CREATE TABLE account_storage (
    account_id  text PRIMARY KEY,
    files       bigint NOT NULL DEFAULT 0,
    bytes       bigint NOT NULL DEFAULT 0
);

CREATE FUNCTION account_storage_count() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO account_storage AS s (account_id, files, bytes) VALUES (NEW.account_id, 1, NEW.bytes)
        ON CONFLICT (account_id) DO UPDATE SET files = s.files + 1, bytes = s.bytes + NEW.bytes;
        RETURN NEW;
    END IF;
    UPDATE account_storage SET files = files - 1, bytes = bytes - OLD.bytes WHERE account_id = OLD.account_id;
    RETURN OLD;
END $$;

CREATE TRIGGER files_counted AFTER INSERT OR DELETE ON files
    FOR EACH ROW EXECUTE FUNCTION account_storage_count();

CREATE TABLE batches (
    id            text PRIMARY KEY,
    seq           bigint GENERATED ALWAYS AS IDENTITY,  -- recording order: the page cursor
    account_id    text NOT NULL,
    status        text NOT NULL,
    body          jsonb NOT NULL,     -- the batch object as the API showed it when recorded
    created_at    bigint NOT NULL,
    retain_until  bigint              -- set when the batch ends: the record is deleted after this
);
CREATE INDEX batches_newest ON batches (account_id, seq DESC);
CREATE INDEX batches_recent ON batches (seq DESC);  -- the operators' page: every account's newest
CREATE INDEX batches_expiring ON batches (retain_until) WHERE retain_until IS NOT NULL;
