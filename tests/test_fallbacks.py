"""Model fallbacks, end to end: a model whose every node fails is served by its fallback, at its price.

Its own stack. Model `primary` runs on node64 (the simulator) and node63 (a dead address); the
prompt's `[[sim error=429 error_model=gemini-2.5-flash]]` makes the simulator answer 429 for
primary's upstream model only, so both nodes fail and `backup` (node62, another upstream model,
twice primary's prices) answers the very same prompt. `tight` falls back first to `pricey`, which
no test account can cover, then to `backup`; `lonely` has only `pricey`. `small` has a context window
of 1000 tokens. Each test checks what the client saw, what was billed, and the money audit.
"""

from __future__ import annotations

import json
import signal
import tomllib

import httpx
import pytest

from apiinone.launcher import free_port
from shared.catalog import parse_catalog
from shared.pricing import PPM, TokenCounts, price
from tests.conftest import Admin, wait_settled
from tests.pool_helpers import own_stack, read_sse, wait_until

URL = "/api/v1/chat/completions"
OUT_OF_CAPACITY = "[[sim error=429 error_model=gemini-2.5-flash output_tokens=12]]"

CATALOG = """
[providers.google]
adapter = "gemini"
base_url_env = "GEMINI_BASE_URL"
api_key_env = "GEMINI_API_KEY"

[providers.google-broken]
adapter = "gemini"
base_url_env = "BROKEN_GEMINI_BASE_URL"
api_key_env = "GEMINI_API_KEY"

[nodes.node62]
provider = "google"

[nodes.node63]
provider = "google-broken"

[nodes.node64]
provider = "google"

[models.primary]
provider = "google"
nodes = ["node64", "node63"]
fallbacks = ["backup"]
upstream_model = "gemini-2.5-flash"
thinking = "budget"
base_cost_credits = 1
pricing = { input = "50", output = "300" }
context_window = 131072
max_output_tokens = 4096

[models.backup]
provider = "google"
nodes = ["node62"]
upstream_model = "gemini-3-flash-preview"
thinking = "level"
base_cost_credits = 1
pricing = { input = "100", output = "600" }
context_window = 131072
max_output_tokens = 4096

[models.pricey]
provider = "google"
nodes = ["node62"]
upstream_model = "gemini-3-flash-preview"
base_cost_credits = 500
pricing = { input = "100", output = "600" }
context_window = 131072

[models.tight]
provider = "google"
nodes = ["node63"]
fallbacks = ["pricey", "backup"]
upstream_model = "gemini-2.5-flash"
base_cost_credits = 1
pricing = { input = "50", output = "300" }
context_window = 131072
max_output_tokens = 4096

[models.lonely]
provider = "google"
nodes = ["node63"]
fallbacks = ["pricey"]
upstream_model = "gemini-2.5-flash"
base_cost_credits = 1
pricing = { input = "50", output = "300" }
context_window = 131072

[models.small]
provider = "google"
nodes = ["node62"]
fallbacks = ["backup"]
upstream_model = "gemini-2.5-flash"
base_cost_credits = 1
pricing = { input = "50", output = "300" }
context_window = 1000
"""
MODELS = parse_catalog(tomllib.loads(CATALOG)).models


@pytest.fixture(scope="module")
def fb_stack():
    env = {
        "BROKEN_GEMINI_BASE_URL": f"http://127.0.0.1:{free_port()}",  # nothing listens there
        "APIINONE_UPSTREAM_RETRIES": "0",
    }
    with own_stack("apiinone-fallback-", CATALOG, env) as st:
        yield st


@pytest.fixture(scope="module")
def fb_admin(fb_stack) -> Admin:
    return Admin(fb_stack.base_url, fb_stack.settings.admin_token)


def chat(model: str, text: str = f"Tell me a story {OUT_OF_CAPACITY}", stream: bool = False) -> dict:
    return {"model": model, "stream": stream, "stream_options": {"include_usage": True} if stream else None,
            "messages": [{"role": "user", "content": text}]}


def priced(row: dict) -> int:
    """What the usage row's tokens cost at its model's prices (the one pricing function)."""
    counts = TokenCounts(row["prompt_tokens"], row["completion_tokens"], row["cached_tokens"] or 0)
    return price(MODELS[row["model"]].prices, PPM, counts).total_micro


def assert_books_balance(admin: Admin, account: dict, initial_micro: int, rows: list[dict]) -> None:
    now = admin.get_account(account["id"])
    assert now["held_micro"] == 0
    assert now["balance_micro"] == initial_micro - sum(r["charged_micro"] for r in rows)
    audit = admin.audit()
    assert audit["ok"], json.dumps([r for r in audit["data"] if not r["ok"]])


async def test_a_model_out_of_capacity_on_every_node_is_served_by_its_fallback(fb_stack, fb_admin):
    account, key = fb_admin.account_with_key(100)
    h = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=fb_stack.base_url, timeout=30) as http:
        plain = await http.post(URL, json=chat("primary", "Tell me a story"), headers=h)
        assert plain.status_code == 200 and plain.json()["model"] == "primary"  # no fallback when it can serve

        answer = await http.post(URL, json=chat("primary"), headers=h)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["model"] == "backup" and body["choices"][0]["message"]["content"]

        async with http.stream("POST", URL, json=chat("primary", stream=True), headers=h) as r:
            assert r.status_code == 200
            events, end = await read_sse(r)
        assert end == "done"
        chunks = [json.loads(e) for e in events[:-1]]
        assert {c["model"] for c in chunks} == {"backup"} and chunks[-1]["usage"]["credits_charged"] > 0

        rows = await wait_settled(http, key, 7)  # 3 served, and 2 failed attempts for each fallback
        metrics = (await http.get("/metrics")).text

    served = [r for r in rows if r["status"] == "succeeded"]
    by_id = {r["request_id"]: r for r in served}
    assert by_id[plain.json()["id"]]["model"] == by_id[plain.json()["id"]]["requested_model"] == "primary"
    fell_back = [by_id[body["id"]], by_id[chunks[0]["id"]]]
    assert [(r["model"], r["requested_model"], r["node"]) for r in fell_back] == [("backup", "primary", "node62")] * 2
    for row in served:
        assert row["charged_micro"] == priced(row) > 0  # each at the prices of the model that served it
    assert body["usage"]["credits_charged"] * 1_000_000 == pytest.approx(by_id[body["id"]]["charged_micro"])
    failed = [r for r in rows if r["status"] == "failed"]
    assert sorted(r["node"] for r in failed) == ["node63", "node63", "node64", "node64"]
    assert all(r["model"] == "primary" and r["charged_micro"] == 0 for r in failed)
    assert {r["error_code"] for r in failed if r["node"] == "node64"} == {"upstream_rate_limited"}
    assert 'apiinone_fallbacks_total{from_model="primary",outcome="served",to_model="backup"} 2.0' in metrics
    shared_counts = fb_admin.http.get("/admin/nodes").json()["fallbacks"]  # every gateway's, for the nodes page
    assert {"model": "primary", "fallback": "backup", "served": 2, "failed": 0, "skipped": 0} in shared_counts
    assert_books_balance(fb_admin, account, 100_000_000, rows)


async def test_a_stream_that_failed_after_its_first_byte_does_not_fall_back(fb_stack, fb_admin):
    account, key = fb_admin.account_with_key(100)
    h = {"Authorization": f"Bearer {key}"}
    broken = "Tell me a story [[sim output_tokens=60 fail_after=2]]"  # node64 sends two chunks, then breaks
    # The tests before made node64's one upstream key answer 429 (RetryInfo 3 s): it cools down first
    # (key pools, worker/key_pool), or primary could not start on node64 and would rightly fall back.
    await wait_until(lambda: all(k["state"] == "active" for n in fb_admin.http.get("/admin/nodes").json()["data"]
                                 if n["id"] == "node64" for k in n["keys"]), 10)
    async with httpx.AsyncClient(base_url=fb_stack.base_url, timeout=30) as http:
        async with http.stream("POST", URL, json=chat("primary", broken, stream=True), headers=h) as r:
            events, end = await read_sse(r)
        rows = await wait_settled(http, key, 1)
    assert end == "error" and json.loads(events[0])["model"] == "primary"
    assert [(r["model"], r["status"], r["charged_micro"]) for r in rows] == [("primary", "failed", 0)]
    assert_books_balance(fb_admin, account, 100_000_000, rows)


async def test_a_fallback_the_account_cannot_cover_is_skipped(fb_stack, fb_admin):
    account, key = fb_admin.account_with_key(60)  # `pricey` holds at least 500 credits
    h = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=fb_stack.base_url, timeout=30) as http:
        served = await http.post(URL, json=chat("tight", "Hello"), headers=h)
        assert served.status_code == 200 and served.json()["model"] == "backup"

        alone = await http.post(URL, json=chat("lonely", "Hello"), headers=h)
        assert alone.status_code == 502, alone.text  # the first model's own error: nothing else to try
        assert alone.json()["error"]["code"] == "upstream_unreachable"

        rows = await wait_settled(http, key, 3)
        metrics = (await http.get("/metrics")).text
    assert sorted((r["model"], r["status"]) for r in rows) == [
        ("backup", "succeeded"), ("lonely", "failed"), ("tight", "failed")]
    assert [r["requested_model"] for r in rows if r["status"] == "succeeded"] == ["tight"]
    assert all(r["charged_micro"] == 0 for r in rows if r["status"] == "failed")
    assert 'apiinone_fallbacks_total{from_model="tight",outcome="skipped",to_model="pricey"} 1.0' in metrics
    assert 'apiinone_fallbacks_total{from_model="lonely",outcome="skipped",to_model="pricey"} 1.0' in metrics
    assert_books_balance(fb_admin, account, 60_000_000, rows)


async def test_a_prompt_too_long_for_the_model_goes_to_a_fallback_that_takes_it(fb_stack, fb_admin):
    account, key = fb_admin.account_with_key(100)
    h = {"Authorization": f"Bearer {key}"}
    long_prompt = "Summarise this. " + "lorem ipsum dolor sit amet " * 200  # ~1400 tokens: more than `small` takes
    async with httpx.AsyncClient(base_url=fb_stack.base_url, timeout=30) as http:
        r = await http.post(URL, json=chat("small", long_prompt), headers=h)
        assert r.status_code == 200, r.text
        assert r.json()["model"] == "backup"
        rows = await wait_settled(http, key, 1)
    assert (rows[0]["model"], rows[0]["requested_model"], rows[0]["charged_micro"]) == ("backup", "small", priced(rows[0]))
    assert_books_balance(fb_admin, account, 100_000_000, rows)


async def test_the_other_wire_apis_fall_back_alike(fb_stack, fb_admin):
    account, key = fb_admin.account_with_key(100)
    h = {"Authorization": f"Bearer {key}"}
    prompt = f"Hello {OUT_OF_CAPACITY}"
    async with httpx.AsyncClient(base_url=fb_stack.base_url, timeout=30) as http:
        message = await http.post("/api/v1/messages", headers={**h, "anthropic-version": "2023-06-01"},
                                  json={"model": "primary", "max_tokens": 256,
                                        "messages": [{"role": "user", "content": prompt}]})
        response = await http.post("/api/v1/responses", headers=h, json={"model": "primary", "input": prompt})
        assert (message.status_code, response.status_code) == (200, 200), (message.text, response.text)
        assert (message.json()["model"], response.json()["model"]) == ("backup", "backup")
        rows = await wait_settled(http, key, 6)
    served = [r for r in rows if r["status"] == "succeeded"]
    assert sorted((r["api"], r["model"], r["requested_model"]) for r in served) == [
        ("messages", "backup", "primary"), ("responses", "backup", "primary")]
    assert all(r["charged_micro"] == priced(r) for r in served)
    assert_books_balance(fb_admin, account, 100_000_000, rows)


def test_the_model_list_shows_fallbacks(fb_stack, fb_admin):
    _, key = fb_admin.account_with_key(1)
    models = httpx.get(fb_stack.base_url + "/api/v1/models", headers={"Authorization": f"Bearer {key}"}).json()
    fallbacks = {m["id"]: m["fallbacks"] for m in models["data"]}
    assert fallbacks["primary"] == ["backup"] and fallbacks["tight"] == ["pricey", "backup"]
    assert fallbacks["backup"] == []


async def test_a_model_whose_workers_are_all_down_is_served_by_its_fallback(fb_stack, fb_admin):
    """Last in this module: it stops node63's and node64's workers."""
    account, key = fb_admin.account_with_key(100)
    for name in ("worker:node63:0", "worker:node64:0"):
        worker = fb_stack.procs[name]
        worker.send_signal(signal.SIGTERM)  # a graceful stop takes its heartbeat away at once
        worker.wait(30)

    def primary_nodes_down() -> bool:  # /readyz also brings the gateway's routing view up to date
        nodes = httpx.get(fb_stack.base_url + "/readyz").json()["nodes"]
        return nodes["node63"] == nodes["node64"] == 0 and nodes["node62"] > 0

    await wait_until(primary_nodes_down, 10)
    h = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=fb_stack.base_url, timeout=30) as http:
        answer = await http.post(URL, json=chat("primary", "Hello"), headers=h)
        assert answer.status_code == 200 and answer.json()["model"] == "backup", answer.text
        async with http.stream("POST", URL, json=chat("primary", "Hello", stream=True), headers=h) as r:
            events, end = await read_sse(r)
        assert end == "done" and json.loads(events[0])["model"] == "backup"
        rows = await wait_settled(http, key, 2)
    assert [(r["model"], r["requested_model"], r["status"]) for r in rows] == [("backup", "primary", "succeeded")] * 2
    assert all(r["charged_micro"] == priced(r) for r in rows)
    assert_books_balance(fb_admin, account, 100_000_000, rows)
