"""Issue 18 (1) and issue 16 (files and batches in the record), on the running product.

Uploads stream into the blob store with the gateway's memory flat and Redis untouched; the batch
worker reads them back streaming; output files are in the blob store, not Redis; files and batches
are listed from Postgres by cursor; retention deletes rows and bytes; the same batch runs with the
S3 backend against a local S3 server (moto). Also the billing API's CSV export of usage.
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import io
import threading
import time
from pathlib import Path

import httpx
import orjson
import pytest
from redis.asyncio import Redis

from shared.blob_store import LocalBlobStore
from shared.db.database import Database
from shared.file_store import FileStore
from tests.conftest import Admin, audited_stack, wait_settled
from tests.s3_server import new_bucket, s3_client, s3_server, stack_env
from tests.test_batches import URL, output_lines, request_line, sdk, submit, wait_batch

MB = 1024 * 1024
LINE_BYTES = 8 * 1024
RSS_GROWTH_LIMIT = 12 * MB  # "a few MB": one chunk (or one S3 part) at a time, plus the allocator's slack


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


class PeakRss:
    """The highest RSS of a process while the block runs, sampled from /proc every 10 ms."""

    def __init__(self, pid: int) -> None:
        self.pid, self.before, self.peak = pid, rss(pid), 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss(self.pid))
            time.sleep(0.01)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def growth(self) -> int:
        return self.peak - self.before


def big_input(path: Path, size: int) -> tuple[int, str]:
    """A batch input of about ``size`` bytes whose LAST line repeats the first custom_id: validating it
    means reading all of it. Returns (line count, sha256)."""
    pad = "x" * (LINE_BYTES - 150)
    digest, n = hashlib.sha256(), 0
    with path.open("wb") as f:
        while f.tell() < size - LINE_BYTES:  # within one file's limit when size is that limit
            line = orjson.dumps(request_line(n, content=pad)) + b"\n"
            f.write(line)
            digest.update(line)
            n += 1
        line = orjson.dumps(request_line(0)) + b"\n"
        f.write(line)
        digest.update(line)
    return n + 1, digest.hexdigest()


def blob_path(stack, file_id: str) -> Path:
    return stack.settings.data_dir.resolve() / "blobs" / "files" / file_id


async def used_memory(stack) -> int:
    async with Redis(port=stack.settings.embedded_redis_port) as r:
        return (await r.info("memory"))["used_memory"]


async def flat_memory_upload(stack, funded, tmp_path, size: int) -> None:
    _, key = funded
    path = tmp_path / "big.jsonl"
    lines, digest = big_input(path, size)
    auth = {"Authorization": f"Bearer {key}"}
    redis_before = await used_memory(stack)
    gateway = stack.pid_of("gateway:0")
    async with httpx.AsyncClient(base_url=stack.base_url, headers=auth, timeout=300) as http:
        with PeakRss(gateway) as upload, path.open("rb") as f:
            r = await http.post("/api/v1/files", data={"purpose": "batch"}, files={"file": ("big.jsonl", f)})
        assert r.status_code == 200, r.text
        created = r.json()
        assert created["bytes"] == path.stat().st_size
        assert blob_path(stack, created["id"]).stat().st_size == created["bytes"]  # the bytes are in the store
        assert await used_memory(stack) - redis_before < 4 * MB  # ...and not in Redis
        print(f"\n{size // MB} MB upload: gateway RSS +{upload.growth / MB:.1f} MB")
        assert upload.growth < RSS_GROWTH_LIMIT

        got = hashlib.sha256()
        with PeakRss(gateway) as download:
            async with http.stream("GET", f"/api/v1/files/{created['id']}/content") as resp:
                assert resp.headers["content-length"] == str(created["bytes"])
                async for chunk in resp.aiter_bytes():
                    got.update(chunk)
        assert got.hexdigest() == digest
        assert download.growth < RSS_GROWTH_LIMIT

        with PeakRss(stack.pid_of("batch")) as worker:  # the batch worker reads it all, streaming
            r = await http.post("/api/v1/batches", json={"input_file_id": created["id"], "endpoint": URL,
                                                         "completion_window": "24h"})
            batch = await wait_batch(sdk(stack, key), r.json()["id"], timeout=120)
        assert batch.status == "failed"
        assert [(e.code, e.line) for e in batch.errors.data] == [("duplicate_custom_id", lines)]
        print(f"batch worker RSS +{worker.growth / MB:.1f} MB validating {lines} lines")
        assert worker.growth < RSS_GROWTH_LIMIT * 2  # plus a 16-byte digest per custom_id

        assert (await http.delete(f"/api/v1/files/{created['id']}")).json()["deleted"] is True
        assert not blob_path(stack, created["id"]).exists()


async def test_a_50_mb_upload_streams_through_with_flat_memory(stack, funded, tmp_path):
    await flat_memory_upload(stack, funded, tmp_path, 50 * MB)


@pytest.mark.slow
async def test_a_200_mb_upload_streams_through_with_flat_memory(stack, funded, tmp_path):
    await flat_memory_upload(stack, funded, tmp_path, 200 * MB)


class PeakRedisMemory:
    """The highest ``used_memory`` of the stack's Redis while the block runs (sampled every 20 ms)."""

    def __init__(self, stack) -> None:
        self.port = stack.settings.embedded_redis_port
        self.before = self.peak = 0
        self._task = None

    async def _sample(self) -> None:
        async with Redis(port=self.port) as r:
            while True:
                self.peak = max(self.peak, (await r.info("memory"))["used_memory"])
                await asyncio.sleep(0.02)

    async def __aenter__(self) -> PeakRedisMemory:
        async with Redis(port=self.port) as r:
            self.before = (await r.info("memory"))["used_memory"]
        self._task = asyncio.create_task(self._sample())
        return self

    async def __aexit__(self, *exc) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


@pytest.mark.slow
async def test_a_batch_with_large_output_keeps_it_out_of_redis(stack, admin):
    """Lines with long answers (~130 KB each): a 30 MB output file, while Redis and the batch worker hold
    about a second of it (SPOOL_BYTES) and the gateway serves it streaming."""
    _, key = admin.account_with_key(20_000)
    client = sdk(stack, key)
    lines = [request_line(i, content="[[sim output_tokens=20000 thinking_tokens=0]] go") for i in range(240)]
    async with PeakRedisMemory(stack) as redis_mem:
        with PeakRss(stack.pid_of("batch")) as worker:
            batch = await submit(client, lines)
            done = await wait_batch(client, batch.id, timeout=600)
    assert done.status == "completed" and done.request_counts.completed == len(lines)
    size = (await client.files.retrieve(done.output_file_id)).bytes
    print(f"\noutput {size / MB:.1f} MB: Redis +{(redis_mem.peak - redis_mem.before) / MB:.1f} MB at most, "
          f"batch worker RSS +{worker.growth / MB:.1f} MB")
    assert size > 24 * MB
    assert redis_mem.peak - redis_mem.before < 5 * MB
    assert worker.growth < RSS_GROWTH_LIMIT
    count = 0
    async with httpx.AsyncClient(base_url=stack.base_url, headers={"Authorization": f"Bearer {key}"}) as http:
        with PeakRss(stack.pid_of("gateway:0")) as gateway:
            async with http.stream("GET", f"/api/v1/files/{done.output_file_id}/content") as resp:
                async for _ in resp.aiter_lines():
                    count += 1
    assert count == len(lines) and gateway.growth < RSS_GROWTH_LIMIT


async def test_batch_output_is_in_the_blob_store_and_listed_from_the_record(stack, funded):
    account, key = funded
    client = sdk(stack, key)
    await client.files.create(file=("other.jsonl", orjson.dumps(request_line(1)) + b"\n"), purpose="batch")
    batch = await submit(client, [request_line(i) for i in range(6)])
    done = await wait_batch(client, batch.id)
    assert done.status == "completed"
    out = await output_lines(client, done.output_file_id)
    assert sorted(o["custom_id"] for o in out) == [f"req-{i}" for i in range(6)]
    assert blob_path(stack, done.output_file_id).exists()
    async with Redis(port=stack.settings.embedded_redis_port) as r:  # no output line or part left in Redis
        assert not await r.keys(f"aio:{{batch:{batch.id}}}:output*")
        assert not await r.keys(f"aio:{{batch:{batch.id}}}:errors*")
    parts = stack.settings.data_dir.resolve() / "blobs" / "batches" / batch.id / "output"
    assert not parts.exists() or not any(parts.iterdir())  # composed into the output file, then deleted

    # Listed from Postgres, newest first, paged by cursor; the output file is listed too.
    page1 = await client.files.list(limit=2)
    ids = [f.id for f in page1.data]
    assert ids[0] == done.output_file_id and page1.has_more
    page2 = await client.files.list(limit=2, after=ids[-1])
    assert len(page2.data) == 1 and not page2.has_more and page2.data[0].id not in ids
    assert [f.id for f in (await client.files.list(purpose="batch_output")).data][0] == done.output_file_id
    batches = (await client.batches.list(limit=1)).data
    assert [b.id for b in batches] == [batch.id] and batches[0].status == "completed"
    db = Database(stack.settings.database_url)
    try:
        row = await db.fetchrow("SELECT status, body FROM batches WHERE id = $1", batch.id)
        assert row["status"] == "completed" and row["body"]["output_file_id"] == done.output_file_id
    finally:
        await db.close()

    # The storage gauges come from the record's counters, kept as files are written.
    from prometheus_client.parser import text_string_to_metric_families

    samples = {(s.name, s.labels.get("account", "")): s.value for family in
               text_string_to_metric_families(httpx.get(stack.base_url + "/metrics").text) for s in family.samples}
    sizes = [f.bytes for f in (await client.files.list()).data]
    assert samples[("apiinone_account_stored_files", account["id"])] == len(sizes) == 3
    assert samples[("apiinone_account_stored_bytes", account["id"])] == sum(sizes)
    assert samples[("apiinone_blob_store_bytes", "")] >= sum(sizes)
    assert samples[("apiinone_usage_partitions", "")] >= 1


async def test_retention_deletes_the_row_and_the_bytes(stack, funded):
    _, key = funded
    client = sdk(stack, key)
    f = await client.files.create(file=("in.jsonl", orjson.dumps(request_line(1)) + b"\n"), purpose="batch")
    path = blob_path(stack, f.id)
    assert path.exists()
    db = Database(stack.settings.database_url)
    try:
        await db.execute("UPDATE files SET expires_at = 1 WHERE id = $1", f.id)
        async with httpx.AsyncClient(base_url=stack.base_url, headers={"Authorization": f"Bearer {key}"}) as http:
            assert (await http.get(f"/api/v1/files/{f.id}")).status_code == 404  # past retention: gone at once
        store = FileStore(db, LocalBlobStore(path.parent.parent), stack.settings)
        assert await store.sweep() >= 1
        assert not path.exists()
        assert await db.fetchval("SELECT count(*) FROM files WHERE id = $1", f.id) == 0
    finally:
        await db.close()


async def test_usage_export_streams_the_accounts_rows_as_csv(stack, funded, client):
    _, key = funded
    for i in range(3):
        await client.chat.completions.create(model="gemini", messages=[{"role": "user", "content": f"hi {i}"}])
    auth = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=stack.base_url, headers=auth) as http:
        rows = await wait_settled(http, key, 3)
        r = await http.get("/billing/usage/export", params={"since": int(time.time()) - 600})
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
        table = list(csv.DictReader(io.StringIO(r.text)))
        assert [t["request_id"] for t in table] == [row["request_id"] for row in rows]
        assert all(t["status"] == "succeeded" and t["model"] == "gemini" for t in table)
        r = await http.get("/billing/usage/export", params={"until": int(time.time()) - 3600})
        assert list(csv.DictReader(io.StringIO(r.text))) == []
        r = await http.get("/billing/usage/export", params={"since": 100, "until": 50})
        assert r.status_code == 400 and r.json()["error"]["param"] == "until"
        r = await http.get("/billing/usage/export", params={"since": "yes"})
        assert r.status_code == 400 and r.json()["error"]["param"] == "since"


async def test_the_same_batch_runs_with_the_s3_backend():
    """A stack whose blob store is a bucket on a local S3 server: upload, batch, output, delete."""
    with s3_server() as endpoint:
        bucket = new_bucket(endpoint)
        with audited_stack(stack_env(endpoint, bucket)) as st:
            _, key = Admin(st.base_url, st.settings.admin_token).account_with_key(100)
            client = sdk(st, key)
            batch = await submit(client, [request_line(i) for i in range(4)])
            done = await wait_batch(client, batch.id, timeout=60)
            assert done.status == "completed"
            out = await output_lines(client, done.output_file_id)
            assert sorted(o["custom_id"] for o in out) == [f"req-{i}" for i in range(4)]
            objects = {o["Key"] for o in s3_client(endpoint).list_objects_v2(Bucket=bucket).get("Contents", [])}
            assert {f"files/{batch.input_file_id}", f"files/{done.output_file_id}"} <= objects
            assert not any(k.startswith("batches/") for k in objects)  # the parts were composed and deleted
            assert not (st.settings.data_dir.resolve() / "blobs").exists()
            await client.files.delete(batch.input_file_id)
            objects = {o["Key"] for o in s3_client(endpoint).list_objects_v2(Bucket=bucket).get("Contents", [])}
            assert f"files/{batch.input_file_id}" not in objects
