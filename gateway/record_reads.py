"""An account's reads of the record (Postgres: usage and ledger pages, exports, its alert; the dashboard's
pages of them), a few at once per gateway.

A gateway shares ``APIINONE_DATABASE_POOL_SIZE`` connections among every account. Without a bound, one
account firing history reads (or holding exports open) queued every other account's pages behind its
own. Each account may run ``APIINONE_RECORD_READS_PER_ACCOUNT`` at once on a gateway; one more is a 429
with Retry-After, answered without touching Postgres. Counted in process: no Redis round trip, and the
chat path (which never reads the record) is not involved.
"""

from __future__ import annotations

import functools
from typing import Awaitable, Callable

from aiohttp import web

from gateway import state  # the module, not its names: state.py builds a RecordReadSlots
from gateway.auth import request_key
from shared.errors import rate_limited

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class RecordReadSlots:
    def __init__(self, per_account: int) -> None:
        self.per_account = per_account
        self._busy: dict[str, int] = {}

    def take(self, account_id: str) -> None:
        busy = self._busy.get(account_id, 0)
        if busy >= self.per_account:
            raise rate_limited(f"This account already has {busy} history reads running on this server; "
                               "retry when one has ended.", retry_after=1)
        self._busy[account_id] = busy + 1

    def give_back(self, account_id: str) -> None:
        busy = self._busy.pop(account_id) - 1
        if busy:
            self._busy[account_id] = busy


def bounded_by(account_of: Callable[[web.Request], str]) -> Callable[[Handler], Handler]:
    """A decorator: the handler runs in one of the record-read slots of the account ``account_of`` names."""

    def wrap(handler: Handler) -> Handler:
        @functools.wraps(handler)
        async def bounded(request: web.Request) -> web.StreamResponse:
            slots: RecordReadSlots = request.config_dict[state.GATEWAY].record_reads
            account_id = account_of(request)
            slots.take(account_id)
            try:
                return await handler(request)
            finally:
                slots.give_back(account_id)

        return bounded

    return wrap


record_read = bounded_by(lambda request: request_key(request).account_id)  # the API's routes (its key authenticated)
