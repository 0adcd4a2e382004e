"""Issue 18 (3): the dashboard's CSV export of 1,000,000 usage rows streams from Postgres in constant memory.

The rows are made by one set-returning INSERT in SQL (generate_series) straight into the stack's record: the
archiver's insert path (``tests/test_usage_history.py`` uses it) would take minutes at this size on the test
box, and the export reads Postgres the same either way. The gateway's resident memory is sampled while the
export streams: it must stay within a bound far below what holding the rows (or the CSV, ~150 MB) would take.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx

from shared.db.database import Database
from tests.test_dashboard import PASSWORD, _login_form, make_user

ROWS = 1_000_000
RSS_BOUND = 64 * 1024 * 1024  # growth allowed while streaming; the CSV alone is ~150 MB


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


async def insert_rows(database_url: str, account_id: str, newest_ms: int) -> None:
    db = Database(database_url, pool_size=1)
    try:
        async with db.connection() as conn:
            await conn.execute(
                """INSERT INTO usage (account_id, request_id, status, sid_ms, sid_seq, key_id, model, charged_micro,
                                      fields)
                   SELECT $1, 'bulk-' || g, 'succeeded', $2::bigint - g * 500, 0, 'key_bulk', 'gemini', 1234,
                          jsonb_build_object('request_id', 'bulk-' || g, 'status', 'succeeded', 'key_id', 'key_bulk',
                                             'model', 'gemini', 'node', 'node62', 'charged_micro', '1234',
                                             'prompt_tokens', '3', 'completion_tokens', '5', 'latency_ms', '12')
                     FROM generate_series(1, $3::int) AS g""", account_id, newest_ms, ROWS, timeout=600)
    finally:
        await db.close()


class PeakRss(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak, self.done = pid, rss(pid), threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.05):
            self.peak = max(self.peak, rss(self.pid))


async def test_a_million_row_csv_export_streams_in_constant_memory(stack, admin):
    account = admin.account(1)
    await insert_rows(stack.settings.database_url, account["id"], int(time.time() * 1000) - 60_000)
    email = make_user(admin, account["id"])
    with httpx.Client(base_url=stack.base_url, timeout=600) as client:
        r = client.post("/dashboard/login", data={"email": email, "password": PASSWORD,
                                                  "csrf_token": _login_form(client, stack.base_url)})
        assert r.status_code == 303, r.text
        pid = stack.pid_of("gateway:0")
        before = rss(pid)
        sampler = PeakRss(pid)
        sampler.start()
        lines, first, last, tail = 0, b"", b"", b""
        with client.stream("GET", "/dashboard/usage.csv") as resp:
            assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/csv")
            for chunk in resp.iter_bytes():
                data = tail + chunk
                parts = data.split(b"\n")
                tail = parts.pop()
                if not first and len(parts) > 1:
                    first = parts[1]
                if parts:
                    last = parts[-1]
                lines += len(parts)
        sampler.done.set()
        sampler.join()
    assert lines == ROWS + 1  # the header and every row: no cap on the range
    assert b",bulk-1," in first and b",bulk-1000000," in last  # newest first
    print(f"gateway RSS before {before / 2**20:.1f} MiB, peak while streaming {sampler.peak / 2**20:.1f} MiB")
    assert sampler.peak - before < RSS_BOUND, (before, sampler.peak)
