"""`apiinone admin restore` ends a batch a Redis loss cut off mid-run (worker/archiver/lost_batches.py): failed with
``batch_state_lost``, its files composed from the parts the blob store holds (each line once, even when a crash
wrote a part twice), its counts and charge from the record's usage rows; a batch Redis still runs is left alone."""

from __future__ import annotations

import time

import orjson

from shared.blob_store import LocalBlobStore
from shared.db import batches_record
from shared.db.usage_partitions import maintain
from shared.file_store import FileStore
from shared.keys import BatchKeys
from shared.settings import Settings
from tests.test_blob_store import chunks, read_all
from worker.archiver.restore import Restorer
from worker.archiver.rows import insert_usage, usage_row

ACCOUNT = "acct_" + "b" * 16


def batch_object(batch_id: str, status: str = "in_progress") -> dict:
    return {"id": batch_id, "object": "batch", "endpoint": "/v1/chat/completions", "errors": None,
            "input_file_id": "file-" + "0" * 24, "completion_window": "24h", "status": status,
            "output_file_id": None, "error_file_id": None, "created_at": int(time.time()) - 60,
            "request_counts": {"total": 5, "completed": 0, "failed": 0}, "metadata": {"project": "x"}}


def line(custom_id: str) -> bytes:
    return orjson.dumps({"id": "batch_req_" + custom_id, "custom_id": custom_id, "response": {"status_code": 200}})


async def test_a_batch_cut_off_by_a_redis_loss_ends_with_the_lines_that_ran(stores, tmp_path):
    redis, db = stores
    await maintain(db, 0)
    files = FileStore(db, LocalBlobStore(tmp_path / "blobs"), Settings(data_dir=tmp_path))
    lost, running, new = "batch_" + "1" * 24, "batch_" + "2" * 24, "batch_" + "4" * 24
    for batch_id in (lost, running):
        await batches_record.insert(db, batch_object(batch_id), ACCOUNT)
    # recorded a moment before its Redis hash is written: not judged yet
    await batches_record.insert(db, {**batch_object(new), "created_at": int(time.time())}, ACCOUNT)
    await redis.hset(BatchKeys(running).batch, "id", running)  # its batch worker still has this one
    # Two committed parts, and the first one again under another token (a crash between write and commit).
    parts = {"output/000000-aaaa": [b"r0", b"r1"], "output/000000-zzzz": [b"r0", b"r1"],
             "output/000001-bbbb": [b"r2"], "errors/000000-cccc": [b"r3"]}
    for name, ids in parts.items():
        await files.blobs.put(f"batches/{lost}/{name}", chunks(b"".join(line(i.decode()) + b"\n" for i in ids)))
    now_ms = int(time.time() * 1000)
    rows = [usage_row(ACCOUNT, f"{now_ms + i}-0".encode(), {
        b"request_id": f"{lost}-{i}".encode(), b"status": b"succeeded" if i < 3 else b"failed",
        b"key_id": b"key_x", b"model": b"gemini", b"charged_micro": b"1000" if i < 3 else b"0",
        b"batch_id": lost.encode()}) for i in range(4)]
    async with db.transaction() as conn:
        await insert_usage(conn, rows)

    report = await Restorer(redis, db, files).restore_all()
    assert report["batches_ended_as_lost"] == 1
    ended = await batches_record.get(db, ACCOUNT, lost)
    assert ended["status"] == "failed" and ended["failed_at"] and ended["metadata"] == {"project": "x"}
    assert ended["errors"]["data"][0]["code"] == "batch_state_lost"
    assert ended["request_counts"] == {"total": 5, "completed": 3, "failed": 1}
    assert ended["credits_charged_micro"] == 3000
    output = await files.get_file(ACCOUNT, ended["output_file_id"])
    body = await read_all(files.blobs, output["blob_key"])
    assert [orjson.loads(x)["custom_id"] for x in body.splitlines()] == ["r0", "r1", "r2"]  # each line once
    errors = await files.get_file(ACCOUNT, ended["error_file_id"])
    assert [orjson.loads(x)["custom_id"] for x in (await read_all(files.blobs, errors["blob_key"])).splitlines()] \
        == ["r3"]
    assert await files.blobs.keys_under(f"batches/{lost}") == []  # the parts spent
    assert (await batches_record.get(db, ACCOUNT, running))["status"] == "in_progress"
    assert (await batches_record.get(db, ACCOUNT, new))["status"] == "in_progress"
    assert (await Restorer(redis, db, files).restore_all())["batches_ended_as_lost"] == 0  # once


async def test_the_restore_command_ends_them_with_the_blob_store_its_settings_name(stores, tmp_path, valkey_port):
    """`apiinone admin restore` as an operator types it: the blob store is the one APIINONE_DATA_DIR names."""
    import json
    import os
    import subprocess

    from apiinone.launcher import apiinone_command

    _redis, db = stores
    await maintain(db, 0)
    lost = "batch_" + "3" * 24
    await batches_record.insert(db, batch_object(lost), ACCOUNT)
    store = LocalBlobStore(tmp_path / "blobs")  # blob_store(Settings(data_dir=tmp_path)): the default place
    await store.put(f"batches/{lost}/output/000000-aaaa", chunks(line("r0") + b"\n"))
    env = {**os.environ, "REDIS_URL": f"redis://127.0.0.1:{valkey_port}/0", "DATABASE_URL": db.url,
           "APIINONE_DATA_DIR": str(tmp_path)}
    done = subprocess.run(apiinone_command() + ["admin", "restore"], env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["batches_ended_as_lost"] == 1
    ended = await batches_record.get(db, ACCOUNT, lost)
    assert ended["status"] == "failed" and ended["output_file_id"]
    assert await store.keys_under(f"batches/{lost}") == []
