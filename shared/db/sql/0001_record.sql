-- The record: what must outlive Redis. Redis keeps the hot state (balances and holds the Lua
-- scripts mutate, key cache, buckets, queues); these tables are the history and the metadata a
-- wiped Redis is rebuilt from (`apiinone admin restore`). No foreign keys: accounts made before the
-- record existed get their rows when the recovery first sees them, and history outlives what it names.

CREATE TABLE accounts (
    id              text PRIMARY KEY,
    name            text NOT NULL,
    created         bigint NOT NULL,              -- unix seconds
    rpm             integer NOT NULL DEFAULT 0,   -- defaults for the account's new keys
    tpm             integer NOT NULL DEFAULT 0,
    max_concurrent  integer NOT NULL DEFAULT 0
);

CREATE TABLE api_keys (
    id                        text PRIMARY KEY,
    account_id                text NOT NULL,
    key_hash                  text NOT NULL UNIQUE,  -- SHA-256 of the key; the key itself is never stored
    name                      text NOT NULL,
    prefix                    text NOT NULL,
    created                   bigint NOT NULL,
    expires_at                bigint NOT NULL DEFAULT 0,
    rpm                       integer NOT NULL DEFAULT 0,
    tpm                       integer NOT NULL DEFAULT 0,
    max_concurrent            integer NOT NULL DEFAULT 0,
    credit_limit_micro        bigint NOT NULL DEFAULT 0,
    daily_credit_limit_micro  bigint NOT NULL DEFAULT 0,
    revoked_at                bigint                  -- unix seconds; NULL while the key works
);
CREATE INDEX api_keys_account ON api_keys (account_id);

CREATE TABLE users (
    id             text PRIMARY KEY,
    email          text NOT NULL UNIQUE,
    password_hash  text NOT NULL,
    role           text NOT NULL,
    account_id     text NOT NULL,
    created        bigint NOT NULL
);

-- Every credit (top-up, initial credits, adjustment, later payments and codes): recorded here
-- before Redis applies it, once per (account, reference) as credit.lua applies it once per reference.
CREATE TABLE orders (
    id            text PRIMARY KEY,
    seq           bigint GENERATED ALWAYS AS IDENTITY,  -- recording order: the page cursor
    account_id    text NOT NULL,
    reference     text NOT NULL,
    kind          text NOT NULL,              -- the ledger reason: topup, initial, adjust, ...
    amount_micro  bigint NOT NULL,
    listed        boolean NOT NULL,           -- shown by /billing/orders (top-ups and initial credits)
    body          jsonb NOT NULL,             -- the order object as the API shows it
    created       bigint NOT NULL,
    UNIQUE (account_id, reference)
);
CREATE INDEX orders_listed_newest ON orders (account_id, seq DESC) WHERE listed;

-- Every balance change. Its identity is its meaning, (account, reason, reference): an entry Redis
-- lost and wrote again under a new stream id is still one row. sid_* is the Redis stream id it was
-- archived from (the page cursor); NULL for a credit recorded here and not archived yet.
CREATE TABLE ledger (
    account_id     text NOT NULL,
    reason         text NOT NULL,
    reference      text NOT NULL,
    amount_micro   bigint NOT NULL,
    balance_micro  bigint,                  -- the balance right after it, as Redis computed it
    sid_ms         bigint,
    sid_seq        bigint,
    recorded_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account_id, reason, reference)
);
CREATE INDEX ledger_newest ON ledger (account_id, sid_ms DESC, sid_seq DESC) WHERE sid_ms IS NOT NULL;

-- One row per settled (or expired) request; a late settlement after an expiry is a second row.
CREATE TABLE usage (
    account_id     text NOT NULL,
    request_id     text NOT NULL,
    status         text NOT NULL,
    sid_ms         bigint NOT NULL,
    sid_seq        bigint NOT NULL,
    key_id         text NOT NULL,
    model          text NOT NULL,
    charged_micro  bigint NOT NULL,
    fields         jsonb NOT NULL,           -- the row as settle.lua wrote it (the API's shape)
    PRIMARY KEY (account_id, request_id, status)
);
-- The pages /billing/usage and the dashboard read: newest first, optionally by key, model, status.
CREATE INDEX usage_newest ON usage (account_id, sid_ms DESC, sid_seq DESC);
CREATE INDEX usage_by_key ON usage (account_id, key_id, sid_ms DESC, sid_seq DESC);
CREATE INDEX usage_by_model ON usage (account_id, model, sid_ms DESC, sid_seq DESC);
CREATE INDEX usage_by_status ON usage (account_id, status, sid_ms DESC, sid_seq DESC);
-- The operators' "recent failures" across accounts.
CREATE INDEX usage_failures ON usage (sid_ms) WHERE status IN ('failed', 'expired');

