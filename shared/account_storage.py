"""What each account stores (files and their bytes), for the operators: their pages and ``/metrics``.

File metadata is the record's (``shared/db/files_record.py``); ``account_storage`` there is kept by
a trigger on every file row written or deleted, so this reads counters, never recounts. The caps
shown beside are the settings ``APIINONE_ACCOUNT_MAX_FILES`` and ``APIINONE_ACCOUNT_MAX_STORED_BYTES``.

``/metrics`` has one series per account that stores at least one file (an account with nothing
stored has no series): ``apiinone_account_stored_files`` and ``apiinone_account_stored_bytes``
labelled by ``account``; the totals ``apiinone_blob_store_files`` / ``apiinone_blob_store_bytes``
(what the blob store holds for the files recorded); ``apiinone_usage_partitions`` and
``apiinone_usage_partition_bytes`` by ``partition`` (the record's monthly usage partitions); and
the caps, unlabelled. A scrape costs two small queries: the counters' rows and the partitions'
sizes from the catalog.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily

from shared.db import files_record
from shared.db.database import Database
from shared.db.files_record import Stored

__all__ = ["SERIES", "Stored", "storage_metrics", "stored_by_account"]

# Every gauge ``storage_metrics`` writes, with its labels (deploy/'s Grafana dashboard is checked against it).
SERIES: dict[str, tuple[str, ...]] = {
    "apiinone_account_stored_files": ("account",), "apiinone_account_stored_bytes": ("account",),
    "apiinone_blob_store_files": (), "apiinone_blob_store_bytes": (), "apiinone_usage_partitions": (),
    "apiinone_usage_partition_bytes": ("partition",), "apiinone_account_max_files": (),
    "apiinone_account_max_stored_bytes": (),
}


async def stored_by_account(db: Database | None, account_ids: list[str]) -> dict[str, Stored]:
    """Each account's files and bytes now (zeros without a record)."""
    if db is None:
        return {account_id: Stored() for account_id in account_ids}
    return await files_record.stored_by_account(db, account_ids)


async def _partition_sizes(db: Database) -> dict[str, int]:
    rows = await db.fetch("""SELECT c.relname, pg_total_relation_size(c.oid) AS size
                               FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
                               JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = 'usage'""")
    return {r["relname"]: int(r["size"]) for r in rows}


class _StorageSnapshot:
    """A Prometheus collector over what was read for the scrape."""

    def __init__(self, stored: dict[str, Stored], partitions: dict[str, int], max_files: int, max_bytes: int) -> None:
        self.stored, self.partitions = stored, partitions
        self.max_files, self.max_bytes = max_files, max_bytes

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
        yield GaugeMetricFamily("apiinone_blob_store_files", "Files the blob store holds (every account)",
                                value=sum(s.files for s in self.stored.values()))
        yield GaugeMetricFamily("apiinone_blob_store_bytes", "Bytes the blob store holds for files (every account)",
                                value=sum(s.bytes for s in self.stored.values()))
        yield GaugeMetricFamily("apiinone_usage_partitions", "Monthly partitions of the record's usage rows",
                                value=len(self.partitions))
        part = GaugeMetricFamily("apiinone_usage_partition_bytes", "Bytes of one usage partition (with its indexes)",
                                 labels=["partition"])
        for name, bytes_ in sorted(self.partitions.items()):
            part.add_metric([name], bytes_)
        yield part
        yield GaugeMetricFamily("apiinone_account_max_files", "Files one account may store (the cap)",
                                value=self.max_files)
        yield GaugeMetricFamily("apiinone_account_max_stored_bytes", "Bytes one account may store (the cap)",
                                value=self.max_bytes)


async def storage_metrics(db: Database | None, max_files: int, max_bytes: int) -> bytes:
    """The storage series of ``/metrics`` (nothing without a record)."""
    if db is None:
        return b""
    stored = await files_record.stored_by_account(db)
    partitions = await _partition_sizes(db)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_StorageSnapshot(stored, partitions, max_files, max_bytes))
    return generate_latest(registry)
