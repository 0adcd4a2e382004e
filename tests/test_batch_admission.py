"""Issue 15 item 6: batch lines are admitted exactly like interactive requests.

A batch used to keep running and billing after its key was revoked, and its lines skipped the
key's rpm, tpm and concurrency limits. Uploads and batches also went through on an empty (or
negative) balance, with no cap on what an account may keep.
"""

from __future__ import annotations

import asyncio

import httpx
import openai
import pytest

from tests.conftest import Admin, audited_stack
from tests.test_batches import batch_usage, jsonl, request_line, sdk, submit, wait_batch


async def test_revoking_the_key_cancels_its_running_batch(stack, admin):
    account, key = admin.account_with_key(1000)
    key_id = next(k for k in admin.http.get(f"/admin/accounts/{account['id']}/keys").json()["data"])["id"]
    client = sdk(stack, key)
    lines = [request_line(i, "slow [[sim output_tokens=16 delay_ms=40]]") for i in range(40)]
    batch = await submit(client, lines)
    await wait_batch(client, batch.id, until=("in_progress",))
    for _ in range(100):  # a few lines done, most still to run
        if (await client.batches.retrieve(batch.id)).request_counts.completed >= 2:
            break
        await asyncio.sleep(0.05)
    assert admin.http.delete(f"/admin/keys/{key_id}").status_code == 200

    reader = sdk(stack, admin.key(account["id"])["key"])  # the account's other key still reads the batch
    done = await wait_batch(reader, batch.id, timeout=30)
    assert done.status == "cancelled"
    assert done.errors.data[0].code == "api_key_revoked"
    assert done.request_counts.completed < 40
    await asyncio.sleep(1.0)
    rows = await batch_usage(stack, admin.key(account["id"])["key"], batch.id)
    succeeded = [r for r in rows if r["status"] == "succeeded"]
    assert len(succeeded) == done.request_counts.completed, "nothing ran or billed after the cancel"
    report = next(a for a in admin.audit()["data"] if a["account_id"] == account["id"])
    assert report["ok"], report


async def test_batch_lines_spend_the_keys_requests_per_minute(stack, admin):
    _, key = admin.account_with_key(1000, rpm=5)
    client = sdk(stack, key)
    batch = await submit(client, [request_line(i) for i in range(5)])
    done = await wait_batch(client, batch.id, timeout=30)
    assert done.status == "completed" and done.request_counts.completed == 5
    with pytest.raises(openai.RateLimitError):  # the batch used the minute's five requests
        await client.chat.completions.create(model="gemini", messages=[{"role": "user", "content": "hi"}])


@pytest.fixture(scope="module")
def capped():
    """A stack whose accounts may keep 2 files and 1 unfinished batch."""
    with audited_stack({"APIINONE_ACCOUNT_MAX_FILES": "2", "APIINONE_ACCOUNT_MAX_ACTIVE_BATCHES": "1"}) as st:
        yield st, Admin(st.base_url, st.settings.admin_token)


async def test_uploads_and_batches_need_a_positive_balance(capped):
    st, admin = capped
    _, key = admin.account_with_key(0)
    with pytest.raises(openai.APIStatusError) as info:
        await sdk(st, key).files.create(file=("in.jsonl", jsonl([request_line(0)])), purpose="batch")
    assert info.value.status_code == 402

    _, key = admin.account_with_key(5)  # all of it held by one running request: nothing available
    client = sdk(st, key)
    f = await client.files.create(file=("in.jsonl", jsonl([request_line(0)])), purpose="batch")
    running = asyncio.create_task(client.chat.completions.create(
        model="gemini", max_tokens=100, messages=[{"role": "user", "content": "[[sim delay_ms=300 output_tokens=24]]"}]))
    async with httpx.AsyncClient(base_url=st.base_url, headers={"Authorization": f"Bearer {key}"}) as http:
        for _ in range(100):
            if (await http.get("/billing/credits")).json()["available_micro"] <= 0:
                break
            await asyncio.sleep(0.02)
    for attempt in (client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"),
                    client.files.create(file=("in2.jsonl", jsonl([request_line(0)])), purpose="batch")):
        with pytest.raises(openai.APIStatusError) as info:
            await attempt
        assert info.value.status_code == 402 and info.value.body["code"] == "insufficient_quota"
    await running


async def test_an_account_keeps_at_most_its_files_and_unfinished_batches(capped):
    st, admin = capped
    _, key = admin.account_with_key(100)
    client = sdk(st, key)
    slow = [request_line(i, "slow [[sim delay_ms=100 output_tokens=24]]") for i in range(20)]
    files = [await client.files.create(file=(f"in{i}.jsonl", jsonl(slow)), purpose="batch") for i in range(2)]
    with pytest.raises(openai.BadRequestError) as info:
        await client.files.create(file=("in3.jsonl", jsonl(slow)), purpose="batch")
    assert info.value.body["code"] == "file_limit_exceeded"
    first = await client.batches.create(input_file_id=files[0].id, endpoint="/v1/chat/completions",
                                        completion_window="24h")
    with pytest.raises(openai.BadRequestError) as info:
        await client.batches.create(input_file_id=files[1].id, endpoint="/v1/chat/completions",
                                    completion_window="24h")
    assert info.value.body["code"] == "batch_limit_exceeded"
    await client.batches.cancel(first.id)
    await wait_batch(client, first.id, timeout=30)
    second = await client.batches.create(input_file_id=files[1].id, endpoint="/v1/chat/completions",
                                         completion_window="24h")  # the cap counts unfinished batches only
    await client.batches.cancel(second.id)
    await wait_batch(client, second.id, timeout=30)
