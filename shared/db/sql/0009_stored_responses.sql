-- Stored OpenAI Responses (POST /api/v1/responses with store; shared/response_store.py): the record's
-- copy, so a response outlives Redis' TTL and the per-account byte cap within its retention
-- (APIINONE_RESPONSES_RETENTION_DAYS). The archiver writes them from Redis' response archive stream
-- (worker/archiver/responses.py); GET /api/v1/responses/{id} and previous_response_id read them
-- when Redis no longer has them. The record is the JSON the client got plus its conversation, as
-- bytes (JSON escapes what jsonb could not hold, e.g. a NUL in the text).

CREATE TABLE stored_responses (
    account_id  text NOT NULL,
    response_id text NOT NULL,
    record      bytea NOT NULL,                 -- {"response": ..., "messages": [...]} (JSON)
    created_ms  bigint NOT NULL,                -- when Redis stored it (its archive entry's id)
    expires_ms  bigint NOT NULL,                -- created_ms + the retention; removed after
    PRIMARY KEY (account_id, response_id)
);
CREATE INDEX stored_responses_expiry ON stored_responses (expires_ms);
