"""Stream entries as Postgres rows, and the archiver's insert path (one multi-row statement per table).

A ledger row's identity is (account, reason, reference) and a usage row's (account, request id,
status): an entry read twice (a crash between commit and trim) or written again by Redis under a
new stream id (after Redis lost it and it was re-applied) is still one row. The stream id is kept
as the page cursor; a row moves to a newer id, never back. Usage is partitioned by month of its
stream id (``sql/0002_usage_partitions.sql``), so its identity is checked across every partition
(NOT EXISTS; the primary key, which must hold the partition key, holds the stream id too), and a
batch keeps the first row of each identity.
"""

from __future__ import annotations

import orjson
from asyncpg import Connection

LEDGER_UPSERT = """
INSERT INTO ledger (account_id, reason, reference, amount_micro, balance_micro, sid_ms, sid_seq)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::bigint[], $6::bigint[], $7::bigint[])
ON CONFLICT (account_id, reason, reference) DO UPDATE
   SET amount_micro = EXCLUDED.amount_micro, balance_micro = EXCLUDED.balance_micro,
       sid_ms = EXCLUDED.sid_ms, sid_seq = EXCLUDED.sid_seq
 WHERE ledger.sid_ms IS NULL OR (ledger.sid_ms, ledger.sid_seq) < (EXCLUDED.sid_ms, EXCLUDED.sid_seq)
"""

USAGE_INSERT = """
INSERT INTO usage (account_id, request_id, status, sid_ms, sid_seq, key_id, model, charged_micro, fields)
SELECT a, r, s, ms, seq, k, m, c, f::jsonb
  FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::bigint[], $6::text[], $7::text[],
              $8::bigint[], $9::text[]) AS t(a, r, s, ms, seq, k, m, c, f)
 WHERE NOT EXISTS (SELECT 1 FROM usage u WHERE u.account_id = t.a AND u.request_id = t.r AND u.status = t.s)
ON CONFLICT (account_id, request_id, status, sid_ms) DO NOTHING
"""


def split_id(stream_id: bytes | str) -> tuple[int, int]:
    ms, _, seq = (stream_id.decode() if isinstance(stream_id, bytes) else stream_id).partition("-")
    return int(ms), int(seq or 0)


def next_id(stream_id: tuple[int, int]) -> str:
    """The smallest stream id after ``stream_id``: XTRIM MINID with it drops everything up to it."""
    return f"{stream_id[0]}-{stream_id[1] + 1}"


def _int(value: str) -> int:
    return int(value) if value.lstrip("-").isdigit() else 0


def ledger_row(account_id: str, stream_id: bytes, fields: dict[bytes, bytes]) -> tuple:
    f = {k.decode(): v.decode() for k, v in fields.items()}
    ms, seq = split_id(stream_id)
    return (account_id, f.get("reason", ""), f.get("ref", ""), _int(f.get("amount", "0")),
            _int(f.get("balance", "0")), ms, seq)


def usage_row(account_id: str, stream_id: bytes, fields: dict[bytes, bytes]) -> tuple:
    f = {k.decode(): v.decode() for k, v in fields.items()}
    ms, seq = split_id(stream_id)
    return (account_id, f.get("request_id", ""), f.get("status", ""), ms, seq, f.get("key_id", ""),
            f.get("model", ""), _int(f.get("charged_micro", "0")), orjson.dumps(f).decode())


def _columns(rows: list[tuple], width: int) -> list[list]:
    return [[r[i] for r in rows] for i in range(width)]


async def insert_ledger(conn: Connection, rows: list[tuple]) -> None:
    """Upsert ledger rows by identity; of two with one identity in a batch, the newer stream id wins."""
    newest: dict[tuple, tuple] = {}
    for row in rows:
        identity = row[:3]
        if identity not in newest or newest[identity][5:] < row[5:]:
            newest[identity] = row
    if newest:
        await conn.execute(LEDGER_UPSERT, *_columns(list(newest.values()), 7))


async def insert_usage(conn: Connection, rows: list[tuple]) -> None:
    first: dict[tuple, tuple] = {}
    for row in rows:
        first.setdefault(row[:3], row)
    if first:
        await conn.execute(USAGE_INSERT, *_columns(list(first.values()), 9))
