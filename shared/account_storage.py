"""What each account stores (files and their bytes), for the operators: their pages and ``/metrics``.

File metadata lives in Redis today (``shared/batch_store.py``: a zset of an account's file ids, a
hash per file with its ``bytes``). This reads them for many accounts at once, two pipelined round
trips whatever the count, and changes nothing (``BatchStore.stored`` is the admission check, and it
forgets the files retention already deleted). The caps shown beside are the settings
``APIINONE_ACCOUNT_MAX_FILES`` and ``APIINONE_ACCOUNT_MAX_STORED_BYTES``.

``/metrics`` has one series per account that stores at least one file (an account with nothing
stored has no series): ``apiinone_account_stored_files`` and ``apiinone_account_stored_bytes``
labelled by ``account``, and the caps, unlabelled.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from redis.asyncio import Redis

from shared import keys


@dataclass(frozen=True)
class Stored:
    files: int = 0
    bytes: int = 0


async def stored_by_account(redis: Redis, account_ids: list[str]) -> dict[str, Stored]:
    """Each account's files and bytes now (files retention already removed are not counted)."""
    async with redis.pipeline(transaction=False) as pipe:
        for account_id in account_ids:
            pipe.zrange(keys.account_files(account_id), 0, -1)
        file_lists = await pipe.execute()
    async with redis.pipeline(transaction=False) as pipe:
        for file_ids in file_lists:
            for fid in file_ids:
                pipe.hget(keys.file_key(fid.decode()), "bytes")
        sizes = iter(await pipe.execute())
    out = {}
    for account_id, file_ids in zip(account_ids, file_lists):
        found = [int(size) for size in (next(sizes) for _ in file_ids) if size is not None]
        out[account_id] = Stored(len(found), sum(found))
    return out


async def all_accounts_stored(redis: Redis) -> dict[str, Stored]:
    ids = sorted(m.decode() for m in await redis.smembers(keys.ACCOUNTS))
    return await stored_by_account(redis, ids)


class _StorageSnapshot:
    """A Prometheus collector over what was read just before the scrape."""

    def __init__(self, stored: dict[str, Stored], max_files: int, max_bytes: int) -> None:
        self.stored, self.max_files, self.max_bytes = stored, max_files, max_bytes

    def collect(self):
        files = GaugeMetricFamily("apiinone_account_stored_files", "Files an account stores now", labels=["account"])
        size = GaugeMetricFamily("apiinone_account_stored_bytes", "Bytes of the files an account stores now",
                                 labels=["account"])
        for account_id, s in sorted(self.stored.items()):
            if s.files:
                files.add_metric([account_id], s.files)
                size.add_metric([account_id], s.bytes)
        yield files
        yield size
        yield GaugeMetricFamily("apiinone_account_max_files", "Files one account may store (the cap)",
                                value=self.max_files)
        yield GaugeMetricFamily("apiinone_account_max_stored_bytes", "Bytes one account may store (the cap)",
                                value=self.max_bytes)


def storage_metrics(stored: dict[str, Stored], max_files: int, max_bytes: int) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_StorageSnapshot(stored, max_files, max_bytes))
    return generate_latest(registry)
