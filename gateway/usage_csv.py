"""An account's usage rows as a streamed CSV file: the dashboard's export and ``GET /billing/usage/export``.

Rows come from ``shared/usage_export.py`` (the Redis tail, then Postgres through a server-side
cursor), newest first, a batch at a time: the response is written as they arrive, so memory stays
flat for any range. A text cell that a spreadsheet would run as a formula is prefixed with ``'``.
Postgres failing mid-export ends the response short (never a silently partial file that looks whole:
the chunked body is cut, which every client reports as an error).
"""

from __future__ import annotations

import csv
import io
from contextlib import aclosing
from datetime import datetime, timezone

from aiohttp import web

from gateway.state import GATEWAY
from shared.history import RowFilter
from shared.money import micro_to_decimal
from shared.pricing import PPM, multiplier_text
from shared.usage_export import usage_export

CSV_FIELDS = ("time_utc", "request_id", "key_id", "key_name", "model", "requested_model", "node", "status",
              "error_code", "finish_reason", "stream", "prompt_tokens", "completion_tokens", "reasoning_tokens",
              "cached_tokens",
              "credits_charged", "latency_ms", "ttft_ms", "queue_ms", "price_tier", "price_multiplier",
              "input_credits", "cached_input_credits", "output_credits")


def _cell(value: str) -> str:
    """A text cell a spreadsheet will not run as a formula."""
    return "'" + value if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value


def write_rows(out, rows: list[dict], names: dict[str, str]) -> None:
    for row in rows:
        ms = int(row["id"].split("-")[0])
        out.writerow([
            datetime.fromtimestamp(ms / 1000, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")[:-4] + "Z",
            row.get("request_id", ""), row.get("key_id", ""), _cell(names.get(row.get("key_id", ""), "")),
            row.get("model", ""), row.get("requested_model") or row.get("model", ""), row.get("node", ""),
            row.get("status", ""), row.get("error_code", ""),
            row.get("finish_reason", ""), row.get("stream", ""), row.get("prompt_tokens", ""),
            row.get("completion_tokens", ""), row.get("reasoning_tokens", ""), row.get("cached_tokens", ""),
            str(micro_to_decimal(row.get("charged_micro") or 0)), row.get("latency_ms", ""),
            row.get("ttft_ms", ""), row.get("queue_ms", ""), row.get("price_tier", ""),
            multiplier_text(int(row.get("price_multiplier_ppm") or PPM)),
            *(str(micro_to_decimal(row.get(f) or 0)) for f in ("input_micro", "cached_input_micro", "output_micro"))])


async def stream_usage_csv(request: web.Request, account_id: str, f: RowFilter) -> web.StreamResponse:
    gw = request.config_dict[GATEWAY]  # the dashboard is a sub-application: its app is not the gateway's
    names = {k["id"]: k["name"] for k in await gw.accounts.list_keys(account_id)}
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    resp = web.StreamResponse(headers={
        "Content-Type": "text/csv; charset=utf-8", "Cache-Control": "no-store", "X-Content-Type-Options": "nosniff",
        "Content-Disposition": f'attachment; filename="usage-{account_id}-{stamp}.csv"'})
    await resp.prepare(request)
    buf = io.StringIO()
    out = csv.writer(buf)
    out.writerow(CSV_FIELDS)
    async with aclosing(usage_export(gw.redis, gw.db, account_id, f)) as batches:
        async for rows in batches:
            write_rows(out, rows, names)
            await resp.write(buf.getvalue().encode())
            buf.seek(0)
            buf.truncate()
    await resp.write(buf.getvalue().encode())
    await resp.write_eof()
    return resp
