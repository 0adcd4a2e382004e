"""Issue 18 (1): the blob store's contract, the same for the local directory and S3 (moto's server on
loopback); the file reader's lines and offsets; the spool that moves batch output out of Redis once."""

from __future__ import annotations

import asyncio
import hashlib
import os

import fakeredis
import pytest

from shared.blob_s3 import PART_BYTES, S3BlobStore
from shared.blob_store import BlobMissing, BlobTooLarge, LocalBlobStore, blob_store
from shared.db.database import Database, DatabaseUnavailable
from shared.file_store import FileStore, split_lines
from shared.keys import BatchKeys
from shared.scripts import Scripts
from shared.settings import Settings
from tests.s3_server import CREDENTIALS, REGION, new_bucket, s3_client, s3_server
from worker.batch.spool import SPOOL_LINES, Spool


@pytest.fixture(scope="module")
def s3_endpoint():
    with s3_server() as endpoint:
        yield endpoint


@pytest.fixture(params=["local", "s3"])
async def blobs(request, tmp_path):
    if request.param == "local":
        store = LocalBlobStore(tmp_path / "blobs")
    else:
        endpoint = request.getfixturevalue("s3_endpoint")
        store = S3BlobStore(new_bucket(endpoint), prefix="t", endpoint_url=endpoint, region_name=REGION,
                            **CREDENTIALS)
    yield store
    await store.close()


async def chunks(data: bytes, size: int = 64 * 1024):
    for i in range(0, len(data), size):
        yield data[i:i + size]


async def read_all(store, key: str, offset: int = 0) -> bytes:
    return b"".join([c async for c in store.read(key, offset)])


async def test_put_read_range_replace_delete(blobs):
    small, large = b"hello\nworld\n", os.urandom(PART_BYTES * 2 + 12345)  # S3: one PutObject; a multipart upload
    assert await blobs.put("files/a", chunks(small)) == len(small)
    assert await blobs.put("files/b", chunks(large)) == len(large)
    assert await read_all(blobs, "files/a") == small
    assert hashlib.sha256(await read_all(blobs, "files/b")).digest() == hashlib.sha256(large).digest()
    assert await read_all(blobs, "files/b", 1_000_000) == large[1_000_000:]
    assert await read_all(blobs, "files/a", len(small)) == b""
    assert await blobs.put("files/a", chunks(b"again")) == 5  # replaced whole
    assert await read_all(blobs, "files/a") == b"again"
    await blobs.delete("files/a", "files/b", "files/never")
    for key in ("files/a", "files/b"):
        with pytest.raises(BlobMissing):
            await read_all(blobs, key)


async def test_everything_under_a_folder_is_listed_and_deleted_and_nothing_beside_it(blobs):
    for key in ("batches/b1/output/000000-aa", "batches/b1/errors/000001-bb", "batches/b1x/output/000000-cc",
                "batches/b2/output/000000-dd", "files/b1"):
        await blobs.put(key, chunks(key.encode()))
    assert await blobs.keys_under("batches/b1") == ["batches/b1/errors/000001-bb", "batches/b1/output/000000-aa"]
    assert await blobs.keys_under("batches/none") == []
    assert await blobs.delete_under("batches/b1") == 2
    assert await blobs.delete_under("batches/b1") == 0 and await blobs.delete_under("batches/none") == 0
    for key in ("batches/b1/output/000000-aa", "batches/b1/errors/000001-bb"):
        with pytest.raises(BlobMissing):
            await read_all(blobs, key)
    for key in ("batches/b1x/output/000000-cc", "batches/b2/output/000000-dd", "files/b1"):
        assert await read_all(blobs, key) == key.encode()


async def test_a_put_past_its_limit_or_failing_midway_stores_nothing(blobs):
    with pytest.raises(BlobTooLarge):
        await blobs.put("files/big", chunks(b"x" * (PART_BYTES + 10)), limit=PART_BYTES + 9)

    async def breaks():
        yield b"y" * (PART_BYTES + 1)
        raise ConnectionResetError("client went away")

    with pytest.raises(ConnectionResetError):
        await blobs.put("files/cut", breaks())
    for key in ("files/big", "files/cut"):
        with pytest.raises(BlobMissing):
            await read_all(blobs, key)
    if isinstance(blobs, LocalBlobStore):
        assert not list((blobs.root / ".partial").iterdir())  # no temporary file left behind
    else:  # the multipart upload was aborted
        assert not s3_client(blobs.client_args["endpoint_url"]).list_multipart_uploads(
            Bucket=blobs.bucket).get("Uploads")


async def test_what_a_killed_upload_left_is_cleared_once_old(blobs):
    """A process killed mid-``put`` leaves a temporary file (local) or an open multipart upload (S3)."""
    if isinstance(blobs, LocalBlobStore):
        blobs.partial.mkdir(parents=True)
        left = blobs.partial / "dead.part"
        left.write_bytes(b"half")
        os.utime(left, (1, 1))
        (blobs.partial / "live.part").write_bytes(b"going on")
        assert await blobs.clear_abandoned(3600) == 1
        assert [p.name for p in blobs.partial.iterdir()] == ["live.part"]
    else:  # moto dates every upload in 2010: only the abort itself is checked here
        s3 = s3_client(blobs.client_args["endpoint_url"])
        s3.create_multipart_upload(Bucket=blobs.bucket, Key="t/files/dead")
        assert await blobs.clear_abandoned(3600) == 1
        assert not s3.list_multipart_uploads(Bucket=blobs.bucket).get("Uploads")


async def test_an_upload_the_record_cannot_take_leaves_no_bytes(tmp_path, free_db_url):
    """Postgres down: the upload streamed into the store is deleted again, and the caller gets the database's
    error (a 503 naming it, at the gateway)."""
    db = Database(free_db_url)
    store = FileStore(db, LocalBlobStore(tmp_path), Settings(data_dir=tmp_path))
    with pytest.raises(DatabaseUnavailable):
        await store.create_file("acct_1", "in.jsonl", "batch", chunks(b'{"a": 1}\n' * 1000))
    assert not list((tmp_path / "files").iterdir())
    await db.close()


async def test_files_an_older_version_kept_in_redis_move_to_the_store_once(stores, tmp_path):
    """An upgrade: uploads and result files that were Redis hashes and lists become blobs and rows, their Redis
    keys go, and the lines of a batch fed before offsets were kept are still read from its cursor."""
    from shared.db.migrations import migrate
    from shared.file_store_upgrade import move_redis_files

    redis, db = stores
    await migrate(db)
    files = FileStore(db, LocalBlobStore(tmp_path), Settings(data_dir=tmp_path))
    upload, result = "file-" + "a" * 24, "file-" + "b" * 24
    await redis.hset(f"aio:file:{upload}", mapping={
        "id": upload, "account_id": "acct_1", "purpose": "batch", "filename": "in.jsonl", "bytes": 12,
        "created_at": 100, "expires_at": 2**40, "lines_key": f"aio:file:{upload}:lines", "lines": 3})
    await redis.rpush(f"aio:file:{upload}:lines", b"one", b"two", b"three")
    await redis.zadd("aio:files:acct_1", {upload: 1, result: 2})
    output = "aio:{batch:batch_" + "c" * 24 + "}:output"
    await redis.hset(f"aio:file:{result}", mapping={
        "id": result, "account_id": "acct_1", "purpose": "batch_output", "filename": "o.jsonl", "bytes": 3,
        "created_at": 200, "expires_at": 2**40, "lines_key": output, "batch_id": "batch_" + "c" * 24})
    await redis.rpush(output, b"out")

    assert await move_redis_files(redis, files) == 2
    assert await move_redis_files(redis, files) == 0
    record = await files.get_file("acct_1", upload)
    assert (record["bytes"], record["created_at"], record["filename"]) == (14, 100, "in.jsonl")
    assert b"".join([c async for c in files.content(record)]) == b"one\ntwo\nthree\n"
    assert [line async for _, _, line in files.lines_from_cursor(record, 1, None)] == [b"two", b"three"]
    listed, _ = await files.list_files("acct_1", None, 10, None)
    assert {f["id"] for f in listed} == {upload, result}
    assert not await redis.exists(f"aio:file:{upload}", f"aio:file:{upload}:lines", f"aio:file:{result}",
                                  "aio:files:acct_1")
    assert await redis.exists(output)  # its batch's list: kept until the batch's own retention


def test_keys_are_plain_relative_paths(tmp_path):
    store = LocalBlobStore(tmp_path)
    for bad in ("../x", "/etc/passwd", "files/../../x", "a//b", ""):
        with pytest.raises(ValueError):
            store.path(bad)
    assert store.path("batches/batch_1/output/000001-ab12") == tmp_path / "batches/batch_1/output/000001-ab12"


def test_the_local_store_lives_under_the_data_dir_unless_told(tmp_path):
    assert blob_store(Settings(data_dir=tmp_path)).root == tmp_path.resolve() / "blobs"
    assert blob_store(Settings(data_dir=tmp_path, blob_dir=tmp_path / "b")).root == tmp_path / "b"


async def test_lines_carry_the_offset_where_the_next_line_starts():
    data = b'{"a":1}\r\n\n{"b":2}\n{"c":3}'
    for size in (1, 3, 64):  # lines split across chunks anywhere
        lines = [item async for item in split_lines(chunks(data, size), 0, 0)]
        assert [(i, line) for i, _, line in lines] == [(0, b'{"a":1}'), (1, b""), (2, b'{"b":2}'), (3, b'{"c":3}')]
        _, end, _ = lines[1]
        assert data[end:].startswith(b'{"b":2}')
        resumed = [item async for item in split_lines(chunks(data[end:], size), 2, end)]
        assert resumed == lines[2:]
    assert [line async for _, _, line in split_lines(chunks(b"a\nb\n  \n"), 0, 0)] == [b"a", b"b", b"  "]
    assert [line async for _, _, line in split_lines(chunks(b"a\n   "), 0, 0)] == [b"a"]


async def test_output_lines_leave_redis_in_parts_each_line_in_exactly_one(tmp_path):
    """Two writers on one batch (a lapsed lease) drain concurrently while lines arrive: every line is in
    exactly one named part, in order, and Redis keeps none of them."""
    redis = fakeredis.FakeAsyncRedis()
    scripts = Scripts(redis)
    store = LocalBlobStore(tmp_path)
    b = BatchKeys("batch_" + "0" * 24)
    spools = [Spool(redis, scripts, store, b) for _ in range(2)]
    total = SPOOL_LINES * 3 + 17

    async def produce():
        for i in range(total):
            await redis.rpush(b.output, b"line-%d" % i)
            if i % 50 == 0:
                await asyncio.sleep(0)

    async def drain_often(spool):
        for _ in range(40):
            await spool.drain("output")
            await asyncio.sleep(0)

    await asyncio.gather(produce(), drain_often(spools[0]), drain_often(spools[1]))
    await spools[0].drain("output")
    parts = await spools[0].parts("output")
    body = b"".join([await read_all(store, p) for p in parts])
    assert body.splitlines() == [b"line-%d" % i for i in range(total)]
    assert await redis.llen(b.output) == 0
    named = {p.split("/", 3)[3] for p in parts}
    on_disk = {p.name for p in (tmp_path / "batches" / b.id / "output").iterdir()}
    assert on_disk == named  # a losing writer's part was deleted
