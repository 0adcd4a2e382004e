-- Redemption codes (shared/redemption.py): batches an operator generates, each code stored as the
-- SHA-256 of its normalized text (the code itself is shown once, never stored), and every use.
-- Redis holds the hot copy redeem.lua claims uses from; these rows are what a wiped Redis is
-- rebuilt from (`apiinone admin restore`), and a use is recorded here in the same transaction as
-- its order and ledger row (shared/db/credits_record.py).

CREATE TABLE redemption_batches (
    id            text PRIMARY KEY,
    count         integer NOT NULL,
    credits_micro bigint NOT NULL,              -- what each use credits
    uses          integer NOT NULL,             -- uses per code
    expires_at    bigint NOT NULL DEFAULT 0,    -- unix seconds; 0: never
    created       bigint NOT NULL,
    disabled_at   bigint                        -- unix seconds; NULL while its codes work
);

CREATE TABLE redemption_codes (
    code_hash  text PRIMARY KEY,               -- SHA-256 (hex) of the normalized code
    batch_id   text NOT NULL,
    used       integer NOT NULL DEFAULT 0      -- uses recorded (= redemptions rows of the code)
);
CREATE INDEX redemption_codes_batch ON redemption_codes (batch_id);

CREATE TABLE redemptions (
    code_hash   text NOT NULL,
    use_number  integer NOT NULL,              -- 1..uses, as redeem.lua claimed it
    account_id  text NOT NULL,
    order_id    text NOT NULL,
    created     bigint NOT NULL,
    PRIMARY KEY (code_hash, use_number)
);
