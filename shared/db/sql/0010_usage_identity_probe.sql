-- The archiver's identity probe (``worker/archiver/rows.py``: NOT EXISTS a row with this account,
-- request id and status, over every partition) must find its row through the primary key, whose
-- leading columns are exactly those. On a partition never analyzed (a fresh install; each new month
-- until autovacuum comes by) the planner priced the by-status index (account, status, ...) as cheap
-- as the primary key, took it, and read every row of the account for each row inserted: quadratic,
-- Postgres at 60% of a core at bench load with 8,000 rows. An index whose predicate a bare
-- "status = $n" cannot prove is out of the probe's reach, whatever the statistics say; the readers
-- (``shared/db/history_reads.py``) state the predicate. Two partial indexes hold what one did, and
-- a row still goes into exactly one of them.

DROP INDEX usage_by_status;
CREATE INDEX usage_succeeded ON usage (account_id, sid_ms DESC, sid_seq DESC) WHERE status = 'succeeded';
CREATE INDEX usage_by_status ON usage (account_id, status, sid_ms DESC, sid_seq DESC) WHERE status <> 'succeeded';
