-- Low-balance alerts (shared/low_balance.py): an account's threshold on its balance (not on what is
-- available: that dips with every open hold) and whether the next crossing alerts. The archiver walks
-- the ledger in stream order as it archives it (worker/archiver/archive.py): an armed alert whose
-- balance falls below the threshold by a debit is queued in alert_outbox (a mail, and a signed webhook
-- when the account gave a URL) and disarmed, in the same transaction as the entries; a credit that
-- lifts the balance to the threshold or above re-arms it.
-- seen_sid_* is the last ledger entry walked, so entries read twice (a crash before the trim) alert once.

CREATE TABLE balance_alerts (
    account_id       text PRIMARY KEY,
    threshold_micro  bigint NOT NULL CHECK (threshold_micro > 0),
    armed            boolean NOT NULL DEFAULT true,
    seen_sid_ms      bigint NOT NULL DEFAULT 0,
    seen_sid_seq     bigint NOT NULL DEFAULT 0,
    webhook_url      text,                      -- also POST a signed event here (NULL: mail only)
    alerted_at       bigint,                    -- unix seconds of the last alert
    updated          bigint NOT NULL
);

-- Alerts the archiver sends off the request path (worker/archiver/outbox.py): made here transactionally,
-- sent at least once (an attempt leases the row; a failed one is tried again later with backoff).
CREATE TABLE alert_outbox (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind        text NOT NULL,                  -- low_balance
    channel     text NOT NULL,                  -- mail (every user of the account) or webhook (facts.url)
    account_id  text NOT NULL,
    facts       jsonb NOT NULL,                 -- what the message says (balance, threshold, ...)
    created     bigint NOT NULL,
    attempts    integer NOT NULL DEFAULT 0,
    next_at     bigint NOT NULL,                -- unix seconds: due (or leased until)
    sent_at     bigint,
    last_error  text
);
CREATE INDEX alert_outbox_due ON alert_outbox (next_at) WHERE sent_at IS NULL;
