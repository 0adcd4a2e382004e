-- Usage rows partitioned by month of their time (sid_ms, unix ms: the Redis stream id they came from),
-- so retention drops whole months (DROP TABLE, no row-by-row DELETE, no bloat) and a month's reads
-- touch one partition. usage_default catches a row no monthly partition covers yet (a clock far
-- off, a maintenance loop that has not run); usage_ensure_partition moves such rows into the
-- month's partition when it creates it. The ledger and orders are not partitioned: never dropped.
--
-- A unique key on a partitioned table must hold the partition key, so the primary key gains sid_ms;
-- the row's identity (account, request id, status) is still enforced by the archiver's insert
-- (``worker/archiver/rows.py``: NOT EXISTS over every partition, through usage_identity).

ALTER TABLE usage RENAME TO usage_unpartitioned;
ALTER INDEX usage_pkey RENAME TO usage_unpartitioned_pkey;
DROP INDEX usage_newest, usage_by_key, usage_by_model, usage_by_status, usage_failures;

CREATE TABLE usage (
    account_id     text NOT NULL,
    request_id     text NOT NULL,
    status         text NOT NULL,
    sid_ms         bigint NOT NULL,
    sid_seq        bigint NOT NULL,
    key_id         text NOT NULL,
    model          text NOT NULL,
    charged_micro  bigint NOT NULL,
    fields         jsonb NOT NULL,
    PRIMARY KEY (account_id, request_id, status, sid_ms)
) PARTITION BY RANGE (sid_ms);
CREATE TABLE usage_default PARTITION OF usage DEFAULT;

CREATE INDEX usage_newest ON usage (account_id, sid_ms DESC, sid_seq DESC);
CREATE INDEX usage_by_key ON usage (account_id, key_id, sid_ms DESC, sid_seq DESC);
CREATE INDEX usage_by_model ON usage (account_id, model, sid_ms DESC, sid_seq DESC);
CREATE INDEX usage_by_status ON usage (account_id, status, sid_ms DESC, sid_seq DESC);
CREATE INDEX usage_failures ON usage (sid_ms) WHERE status IN ('failed', 'expired');

-- The month starting at first_day (UTC) as partition usage_YYYYMM; rows the default partition holds
-- for that month move into it. Returns false when it exists already. Callers hold the maintenance
-- lock (``shared/db/usage_partitions.py``).
CREATE FUNCTION usage_ensure_partition(first_day date) RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    month date := date_trunc('month', first_day)::date;
    part text := 'usage_' || to_char(month, 'YYYYMM');
    lo bigint := (extract(epoch FROM month::timestamp) * 1000)::bigint;
    hi bigint := (extract(epoch FROM (month + interval '1 month')::timestamp) * 1000)::bigint;
BEGIN
    IF to_regclass(part) IS NOT NULL THEN
        RETURN false;
    END IF;
    EXECUTE format('CREATE TABLE %I (LIKE usage INCLUDING DEFAULTS)', part);
    EXECUTE format('WITH moved AS (DELETE FROM usage_default WHERE sid_ms >= %s AND sid_ms < %s RETURNING *) '
                   'INSERT INTO %I SELECT * FROM moved', lo, hi, part);
    EXECUTE format('ALTER TABLE usage ATTACH PARTITION %I FOR VALUES FROM (%s) TO (%s)', part, lo, hi);
    RETURN true;
END $$;

-- The months the existing rows fall in, this month and the next; then the rows move over (a row
-- outside years 1970..2999 stays in the default partition).
SELECT usage_ensure_partition(m::date) FROM (
    SELECT DISTINCT date_trunc('month', to_timestamp(sid_ms / 1000.0) AT TIME ZONE 'UTC') AS m
      FROM usage_unpartitioned WHERE sid_ms BETWEEN 0 AND 32503680000000
    UNION SELECT date_trunc('month', now() AT TIME ZONE 'UTC')
    UNION SELECT date_trunc('month', now() AT TIME ZONE 'UTC') + interval '1 month') AS months
 ORDER BY m;
INSERT INTO usage SELECT * FROM usage_unpartitioned;
DROP TABLE usage_unpartitioned;
