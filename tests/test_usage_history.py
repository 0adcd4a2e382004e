"""Issue 18 (2, 3) against real Valkey and real Postgres, in process: usage partitioned by month, retention
dropping whole months while the ledger stays whole, migration 0002 converting a filled table, and the export's
merge of Redis' tail with Postgres (each row once, newest first)."""

from __future__ import annotations

import re
import secrets
import uuid
from datetime import date, datetime, timezone


from apiinone import postgres
from shared import keys
from shared.audit import audit_account
from shared.db import migrations
from shared.db.database import Database
from shared.db.usage_partitions import maintain, month_ms, month_start, partition_name, partitions
from shared.db.history_reads import usage_page_query, usage_rows
from shared.history import UsageFilter
from shared.keys import AccountKeys
from shared.usage_export import usage_export
from tests import pg_session
from tests.test_record import M, drain, parts, spend
from worker.archiver.archive import Archiver
from worker.archiver.rows import insert_usage, usage_row

TODAY = datetime.now(timezone.utc).date()
PER_MONTH = 20


def rows_of_month(account_id: str, first_day: date, n: int, prefix: str = "h") -> list[tuple]:
    """``n`` usage rows in ``first_day``'s month as the archiver makes them from stream entries."""
    start = month_ms(first_day) + 3_600_000
    return [usage_row(account_id, f"{start + i * 60_000}-0".encode(),
                      {b"request_id": f"{prefix}{first_day:%Y%m}-{i}".encode(), b"status": b"succeeded",
                       b"key_id": b"key_x", b"model": b"gemini", b"charged_micro": b"1000", b"prompt_tokens": b"3"})
            for i in range(n)]


async def fill_months(db: Database, account_id: str, months: int) -> None:
    """Usage over ``months`` months up to this one, written through the archiver's insert path as time goes:
    the maintenance runs in each month (retention off), then that month's rows are inserted."""
    for back in range(months - 1, -1, -1):
        first = month_start(TODAY, back)
        await maintain(db, 0, today=first)
        async with db.transaction() as conn:
            await insert_usage(conn, rows_of_month(account_id, first, PER_MONTH))


async def count(db: Database, account_id: str) -> int:
    return await db.fetchval("SELECT count(*) FROM usage WHERE account_id = $1", account_id)


async def test_retention_drops_the_oldest_months_and_the_ledger_stays_whole(stores):
    redis, db = stores
    credits, accounts = parts(redis, db)
    acct = await accounts.create_account("a", 100 * M)
    key = await accounts.create_key(acct["id"], "k")
    await spend(credits, acct["id"], key["id"], 5)
    await drain(Archiver(redis, db))
    await fill_months(db, acct["id"], 15)
    assert await count(db, acct["id"]) == 15 * PER_MONTH + 5
    assert await db.fetchval("SELECT count(*) FROM usage_default") == 0  # every row found its month
    ledger_before = await db.fetchval("SELECT sum(amount_micro) FROM ledger WHERE account_id = $1", acct["id"])

    done = await maintain(db, 13)  # the default: this month and the 13 before it are kept
    assert done.dropped == [partition_name(month_start(TODAY, 14))]
    assert await count(db, acct["id"]) == 14 * PER_MONTH + 5
    names = await partitions(db)
    assert names[0] == partition_name(month_start(TODAY, 13)) and len(names) == 14 + 2  # and 2 made ahead

    done = await maintain(db, 6)
    assert done.dropped == [partition_name(month_start(TODAY, back)) for back in range(13, 6, -1)]
    assert await count(db, acct["id"]) == 7 * PER_MONTH + 5
    assert (await maintain(db, 6)).dropped == []  # nothing more to drop until the month turns

    assert await db.fetchval("SELECT sum(amount_micro) FROM ledger WHERE account_id = $1", acct["id"]) == ledger_before
    assert await db.fetchval("SELECT count(*) FROM orders WHERE account_id = $1", acct["id"]) == 1
    report = await audit_account(redis, db, acct["id"])
    assert report["ok"] and report["balance_micro"] == 100 * M - 5_000, report


async def test_a_row_no_month_covers_waits_in_the_default_and_moves_when_its_month_is_made(stores):
    _redis, db = stores
    later = month_start(TODAY, -6)  # beyond the months made ahead
    async with db.transaction() as conn:
        await insert_usage(conn, rows_of_month("acct_z", later, 3))
    assert await db.fetchval("SELECT count(*) FROM usage_default") == 3
    done = await maintain(db, 13, today=later)
    assert partition_name(later) in done.created
    assert await db.fetchval("SELECT count(*) FROM usage_default") == 0
    where = await db.fetch("SELECT DISTINCT tableoid::regclass::text AS part FROM usage WHERE account_id = 'acct_z'")
    assert [r["part"] for r in where] == [partition_name(later)]


async def test_a_row_is_one_row_by_its_identity_across_months(stores):
    _redis, db = stores
    await fill_months(db, "acct_y", 2)
    rewritten = rows_of_month("acct_y", month_start(TODAY, 1), 1)[0]  # the same request, a newer stream id
    moved = (*rewritten[:3], month_ms(TODAY) + 5, 0, *rewritten[5:])
    async with db.transaction() as conn:
        await insert_usage(conn, [moved, moved])
    assert await count(db, "acct_y") == 2 * PER_MONTH


async def test_migration_0002_moves_a_filled_usage_table_into_months(monkeypatch):
    name = "t_" + uuid.uuid4().hex[:16]
    pg_session.new_database_url()  # the session's server is up
    postgres.create_database(pg_session.SESSION.port, name)
    db = Database(postgres.url(pg_session.SESSION.port, name))
    try:
        first = [m for m in migrations.available() if m.version == 1]
        monkeypatch.setattr(migrations, "available", lambda: first)
        await migrations.migrate(db)
        old = month_start(TODAY, 20)
        async with db.transaction() as conn:  # the pre-0002 insert: one identity, no partitions
            await conn.executemany(
                """INSERT INTO usage (account_id, request_id, status, sid_ms, sid_seq, key_id, model, charged_micro,
                   fields) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9::jsonb)""",
                rows_of_month("acct_m", old, 4) + rows_of_month("acct_m", TODAY, 3))
        monkeypatch.undo()
        assert (await migrations.migrate(db))[0] == "0002_usage_partitions"  # the later ones follow it
        rows = await db.fetch("SELECT tableoid::regclass::text AS part, count(*) AS n FROM usage GROUP BY 1 ORDER BY 1")
        assert [(r["part"], r["n"]) for r in rows] == [(partition_name(old), 4), (partition_name(TODAY), 3)]
        assert partition_name(month_start(TODAY, -1)) in await partitions(db)
    finally:
        await db.close()


async def test_the_export_lists_the_tail_and_the_record_once_each_newest_first(stores):
    redis, db = stores
    credits, accounts = parts(redis, db)
    acct = await accounts.create_account("a", 100 * M)
    key = await accounts.create_key(acct["id"], "k")
    archiver = Archiver(redis, db)
    await spend(credits, acct["id"], key["id"], 30, prefix="old")
    await drain(archiver)  # archived and trimmed
    await spend(credits, acct["id"], key["id"], 10, prefix="both")
    await archiver.ensure_group()
    notes = await redis.xreadgroup(keys.ARCHIVE_GROUP, archiver.consumer, {keys.ARCHIVE_INDEX: ">"}, count=100)
    await archiver.commit(await archiver.read(notes[0][1]))  # committed, not trimmed: in both stores
    assert await redis.xlen(AccountKeys(acct["id"]).usage) == 10
    await spend(credits, acct["id"], key["id"], 5, prefix="new")
    got = [row async for rows in usage_export(redis, db, acct["id"], UsageFilter(), batch=7) for row in rows]
    ids = [tuple(map(int, r["id"].split("-"))) for r in got]
    assert ids == sorted(set(ids), reverse=True) and len(ids) == 45
    assert [r["request_id"] for r in got[:5]] == [f"new{i}" for i in range(4, -1, -1)]
    first_ms = got[9]["id"].split("-")[0]  # a time range: rows from this millisecond on
    since = [r["id"] async for rows in usage_export(redis, db, acct["id"], UsageFilter(min_id=first_ms)) for r in rows]
    assert since == [r["id"] for r in got if int(r["id"].split("-")[0]) >= int(first_ms)]


async def test_a_drop_a_long_read_holds_off_is_postponed_not_queued_behind_it(stores):
    """An export's open cursor holds the table: the drop gives up after a moment (reads and inserts never
    queue behind it) and goes through on the next round."""
    _redis, db = stores
    await fill_months(db, "acct_l", 3)
    async with db.dedicated() as reader, reader.transaction(readonly=True):
        await reader.fetchval("SELECT count(*) FROM usage WHERE account_id = 'acct_l'")
        done = await maintain(db, 1)
        assert done.dropped == [] and done.postponed == [partition_name(month_start(TODAY, 2))]
        assert await count(db, "acct_l") == 3 * PER_MONTH  # not blocked by the postponed drop
    assert (await maintain(db, 1)).dropped == [partition_name(month_start(TODAY, 2))]


async def test_the_identity_probe_walks_the_primary_key_on_a_partition_never_analyzed(stores):
    """The archiver's insert checks each row's identity over every partition (rows.py). On a young
    partition (no statistics yet: a fresh install, each new month) the planner once chose the by-status
    index for it and read every row of the account per row inserted: quadratic, Postgres at 60% of a core
    at bench load. The probe must find its row through the primary key whatever the statistics say."""
    _redis, db = stores
    await maintain(db, 0, today=TODAY)
    start = month_ms(TODAY.replace(day=1))
    detail = {f"field_{i}".encode(): b"x" * 20 for i in range(20)}  # a real row's breakdown, ~600 bytes
    history = [usage_row("acct_big", f"{start + i}-0".encode(),
                         {b"request_id": f"chatcmpl-{secrets.token_hex(12)}".encode(), b"status": b"succeeded",
                          b"key_id": b"key_x", b"model": b"gemini", b"charged_micro": b"1000", **detail})
               for i in range(9000)]
    for at in range(0, len(history), 150):  # as the archiver writes: one round's rows at a time
        async with db.transaction() as conn:
            await insert_usage(conn, history[at:at + 150])
    probe = [usage_row("acct_big", f"{month_ms(TODAY) + 7_200_000 + i}-0".encode(),
                       {b"request_id": f"new-{i}".encode(), b"status": b"succeeded", b"key_id": b"key_x",
                        b"model": b"gemini", b"charged_micro": b"1"}) for i in range(200)]
    from worker.archiver.rows import USAGE_INSERT, _columns
    async with db.transaction() as conn:
        plan = "\n".join(r[0] for r in await conn.fetch("EXPLAIN (ANALYZE, BUFFERS) " + USAGE_INSERT, *_columns(probe, 9)))
    probed = [line for line in plan.splitlines() if f"usage_{TODAY:%Y%m}" in line and "Scan" in line]
    assert probed and all("_pkey" in line for line in probed), plan
    assert "Rows Removed by Filter" not in plan, plan


async def test_a_page_by_status_reads_only_its_rows(stores):
    """Pages by status keep an index that fits (succeeded, or any other status: partial indexes, 0010):
    the record's connections plan every statement with its values (a generic plan, which a long-lived
    connection settles on, proves no partial index's predicate and read every row of the status). An
    empty status reads next to nothing, not the account's whole history."""
    _redis, db = stores
    await maintain(db, 0, today=TODAY)
    start = month_ms(TODAY.replace(day=1))
    rows = [usage_row(account, f"{start + i}-{n}".encode(),
                      {b"request_id": f"r{i}".encode(), b"status": b"failed" if i % 10 == 0 else b"succeeded",
                       b"key_id": b"key_x", b"model": b"gemini", b"charged_micro": b"0"})
            for n, account in enumerate(("acct_s", "acct_t")) for i in range(4000)]
    async with db.transaction() as conn:
        await insert_usage(conn, rows)
        await conn.execute("ANALYZE usage")
        assert await conn.fetchval("SHOW plan_cache_mode") == "force_custom_plan"
    for status, expected in (("succeeded", 20), ("failed", 20), ("expired", 0), ("nonsense", 0)):
        sql, args = usage_page_query("acct_s", UsageFilter(status=status), None, 20)
        for _ in range(7):  # past the five runs after which a cached statement may go generic
            page = await usage_rows(db, "acct_s", UsageFilter(status=status), None, 20)
        assert len(page) == expected and {r["status"] for r in page} <= {status}
        plan = "\n".join(r[0] for r in await db.fetch("EXPLAIN (ANALYZE, BUFFERS) " + sql, *args))
        hits = re.findall(r"^\s*Buffers: shared hit=(\d+)", plan.split("Planning")[0], re.M)
        assert int((hits or ["0"])[0]) < 40, plan  # a few pages, not the 400 failed rows' or 4,000 rows'
