"""The live catalog on real processes: two gateways, a worker per node, changes under load.

Its own stack (a change here must not reach other tests' stacks): model `gemini` on node62, and
node63 (also the simulator) that a route change moves it to. Each change goes through the admin
API; the tests check what every process serves, what each request was billed, and the audit log.
"""

from __future__ import annotations

import asyncio
import re
import time
from contextlib import contextmanager
from typing import Iterator

import httpx
import orjson
import pytest
from openai import AsyncOpenAI

from shared.catalog import parse_catalog
from shared.pricing import PPM, PriceSheet, TokenCounts, price
from tests.conftest import Admin
from tests.pool_helpers import own_stack, wait_until

URL = "/api/v1/chat/completions"

CATALOG = """
[providers.google]
adapter = "gemini"
base_url_env = "GEMINI_BASE_URL"
api_key_env = "GEMINI_API_KEY"

[nodes.node62]
provider = "google"

[nodes.node63]
provider = "google"

[models.gemini]
provider = "google"
nodes = ["node62"]
upstream_model = "gemini-3-flash-preview"
thinking = "level"
base_cost_credits = 5
context_window = 131072
max_output_tokens = 8192

[models.gemini.pricing]
input = "50"
cached_input = "5"
output = "300"
"""


@pytest.fixture(scope="module")
def live():
    with own_stack("apiinone-catalog-", CATALOG, gateways=2) as st:
        yield st


@pytest.fixture(scope="module")
def admin(live) -> Admin:
    return Admin(live.base_url, live.settings.admin_token)


def gateways(live) -> list[str]:
    return [f"http://127.0.0.1:{p}" for p in live.gateway_ports]


def current_version(admin: Admin) -> int:
    return admin.http.get("/admin/catalog").json()["version"]


def chat(directive: str, model: str = "gemini") -> dict:
    return {"model": model, "messages": [{"role": "user", "content": f"hi [[sim {directive}]]"}]}


def charge_at(sheet: PriceSheet, row: dict) -> int:
    return price(sheet, PPM, TokenCounts(row["prompt_tokens"], row["completion_tokens"], row["cached_tokens"])).total_micro


async def usage(http: httpx.AsyncClient, key: str, count: int) -> list[dict]:
    """Every usage row, page by page (a quiet box runs more than a page of requests in the window)."""
    async def enough():
        rows: list[dict] = []
        params: dict = {"limit": 100}
        while True:
            page = (await http.get("/billing/usage", params=params, headers={"Authorization": f"Bearer {key}"})).json()
            rows += page["data"]
            if not page["has_more"]:
                return rows if len(rows) >= count else None
            params["after"] = page["data"][-1]["id"]
    return await wait_until(enough, 10)


async def test_price_and_route_change_under_load_bills_each_request_at_its_version(live, admin):
    _, key = admin.account_with_key(1000)
    before = admin.http.get("/admin/catalog").json()
    v1 = before["version"]
    results: list[int] = []
    stop = asyncio.Event()

    async def client(base: str) -> None:
        async with httpx.AsyncClient(base_url=base, timeout=30) as http:
            while not stop.is_set():
                r = await http.post(URL, json=chat("output_tokens=40 delay_ms=25"),
                                    headers={"Authorization": f"Bearer {key}"})
                results.append(r.status_code)

    load = [asyncio.create_task(client(base)) for base in gateways(live) for _ in range(4)]
    await asyncio.sleep(1.0)
    async with httpx.AsyncClient(base_url=live.base_url, timeout=10,
                                 headers={"Authorization": f"Bearer {live.settings.admin_token}"}) as http:
        r = await http.patch("/admin/catalog/models/gemini", headers={"If-Match": f'"{v1}"'}, json={
            "pricing": {"input": "100", "cached_input": "10", "output": "900"}, "routes": [{"node": "node63"}],
            "note": "price up, move to node63"})
        assert r.status_code == 200, r.text
        v2 = r.json()["version"]
    assert v2 == v1 + 1
    await asyncio.sleep(1.5)
    stop.set()
    await asyncio.gather(*load)

    assert results and set(results) == {200}, results  # no request failed across the change
    async with httpx.AsyncClient(base_url=live.base_url, timeout=10) as http:
        rows = await usage(http, key, len(results))
    assert len(rows) == len(results)
    by_version = {v: [r for r in rows if r["catalog_version"] == v] for v in (v1, v2)}
    assert by_version[v1] and by_version[v2] and len(by_version[v1]) + len(by_version[v2]) == len(rows)
    old = PriceSheet.from_wire({"input": 50_000_000, "cached_input": 5_000_000, "output": 300_000_000})
    new = PriceSheet.from_wire({"input": 100_000_000, "cached_input": 10_000_000, "output": 900_000_000})
    for row in by_version[v1]:  # admitted before the change: its route and its prices, whenever it settled
        assert (row["node"], row["charged_micro"], row["price_version"]) == ("node62", charge_at(old, row), old.version)
    for row in by_version[v2]:
        assert (row["node"], row["charged_micro"], row["price_version"]) == ("node63", charge_at(new, row), new.version)
    assert admin.audit()["ok"]


async def test_a_new_version_reaches_both_gateways_and_every_worker_within_a_second(live, admin):
    version = current_version(admin)
    started = time.monotonic()
    assert admin.http.patch("/admin/catalog/aliases", json={"gemini-latest": "gemini"}).status_code == 400
    r = admin.http.patch("/admin/catalog/aliases", json={"gemini-latest": "gemini"}, headers={"If-Match": str(version)})
    assert r.status_code == 200, r.text
    assert r.json()["version"] == version + 1

    async with httpx.AsyncClient(timeout=5, headers={"Authorization": f"Bearer {live.settings.admin_token}"}) as http:
        async def everyone_serves_it():
            serving = [(await http.get(base + "/admin/catalog")).json()["serving"] for base in gateways(live)]
            nodes = (await http.get(live.base_url + "/admin/nodes")).json()["data"]
            serving += [w["catalog_version"] for n in nodes for w in n["workers"]]
            return len(serving) == 4 and set(serving) == {version + 1}
        await wait_until(everyone_serves_it, 5, interval=0.02)
    assert time.monotonic() - started < 1.0
    for base in gateways(live):
        assert f"apiinone_catalog_version {float(version + 1)}" in httpx.get(base + "/metrics").text


async def test_an_alias_is_served_listed_and_billed_as_its_model(live, admin):
    admin.http.patch("/admin/catalog/aliases", json={"gemini-latest": "gemini"},
                     headers={"If-Match": str(current_version(admin))})
    _, key = admin.account_with_key(100)
    sdk = AsyncOpenAI(base_url=gateways(live)[1] + "/api/v1", api_key=key, max_retries=0)
    completion = await sdk.chat.completions.create(model="gemini-latest",
                                                   messages=[{"role": "user", "content": "hi [[sim output_tokens=5]]"}])
    assert completion.model == "gemini"  # the model actually used
    listed = {m.id: m for m in (await sdk.models.list()).data}
    assert listed["gemini-latest"].model_extra["alias_for"] == "gemini"
    assert "gemini-latest" in listed["gemini"].model_extra["aliases"]
    assert (await sdk.models.retrieve("gemini-latest")).model_extra["alias_for"] == "gemini"
    async with httpx.AsyncClient(base_url=live.base_url, timeout=10) as http:
        (row,) = await usage(http, key, 1)
    sheet = parse_catalog(admin.http.get("/admin/catalog").json()["document"]).models["gemini"].prices
    # LiteLLM's model vs model_group: the model that served and billed it, and the name the client sent
    assert (row["model"], row["requested_model"], row["status"]) == ("gemini", "gemini-latest", "succeeded")
    assert row["charged_micro"] == charge_at(sheet, row) > 0


async def test_every_front_end_records_the_alias_the_client_named(live, admin):
    admin.http.patch("/admin/catalog/aliases", json={"gemini-latest": "gemini"},
                     headers={"If-Match": str(current_version(admin))})
    _, key = admin.account_with_key(100)
    prompt = "hi [[sim output_tokens=5]]"
    calls = {
        "responses": ("/api/v1/responses", {"model": "gemini-latest", "input": prompt}),
        "messages": ("/api/v1/messages", {"model": "gemini-latest", "max_tokens": 50,
                                          "messages": [{"role": "user", "content": prompt}]}),
        "gemini": ("/api/v1beta/models/gemini-latest:generateContent", {"contents": [{"parts": [{"text": prompt}]}]}),
        "chat": (URL, chat("output_tokens=5", "gemini")),  # the model's own id: no other name to record
    }
    async with httpx.AsyncClient(base_url=live.base_url, timeout=30,
                                 headers={"Authorization": f"Bearer {key}", "anthropic-version": "2023-06-01"}) as http:
        for path, body in calls.values():
            r = await http.post(path, json=body)
            assert r.status_code == 200, (path, r.text)
        rows = await usage(http, key, len(calls))
    assert sorted((r["api"], r["model"], r["requested_model"]) for r in rows) == [
        ("chat", "gemini", "gemini"), ("gemini", "gemini", "gemini-latest"),
        ("messages", "gemini", "gemini-latest"), ("responses", "gemini", "gemini-latest")]


async def test_a_batch_line_records_the_alias_it_named(live, admin):
    admin.http.patch("/admin/catalog/aliases", json={"gemini-latest": "gemini"},
                     headers={"If-Match": str(current_version(admin))})
    _, key = admin.account_with_key(100)
    sdk = AsyncOpenAI(base_url=live.base_url + "/api/v1", api_key=key, max_retries=0)
    line = {"custom_id": "one", "method": "POST", "url": "/v1/chat/completions",
            "body": chat("output_tokens=5", "gemini-latest")}
    f = await sdk.files.create(file=("in.jsonl", orjson.dumps(line) + b"\n"), purpose="batch")
    batch = await sdk.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")

    async def done():
        b = await sdk.batches.retrieve(batch.id)
        return b if b.status in ("completed", "failed", "cancelled", "expired") else None
    assert (await wait_until(done, 30)).status == "completed"
    async with httpx.AsyncClient(base_url=live.base_url, timeout=10) as http:
        (row,) = await usage(http, key, 1)
    assert (row["batch_id"], row["model"], row["requested_model"]) == (batch.id, "gemini", "gemini-latest")


async def test_an_aliass_entry_never_names_itself_among_the_aliases(live, admin):
    admin.http.patch("/admin/catalog/aliases", json={"gemini-latest": "gemini", "flash-latest": "gemini"},
                     headers={"If-Match": str(current_version(admin))})
    async with httpx.AsyncClient(base_url=live.base_url, timeout=10) as http:
        _, key = admin.account_with_key(1)
        auth = {"Authorization": f"Bearer {key}"}
        listed = {m["id"]: m for m in (await http.get("/api/v1/models", headers=auth)).json()["data"]}
        retrieved = (await http.get("/api/v1/models/gemini-latest", headers=auth)).json()
    assert listed["gemini"]["aliases"] == ["flash-latest", "gemini-latest"]
    assert listed["gemini-latest"]["aliases"] == ["flash-latest"] == retrieved["aliases"]
    assert listed["flash-latest"]["aliases"] == ["gemini-latest"]
    admin.http.patch("/admin/catalog/aliases", json={"flash-latest": None},
                     headers={"If-Match": str(current_version(admin))})


@pytest.mark.parametrize("change, named", [
    ({"routes": [{"node": "node99"}]}, "node99"),
    ({"pricing": {"input": "1", "cached_input": "5", "output": "1"}}, "cached input"),
    ({"pricing": {"output": "1"}}, "input"),
])
def test_invalid_changes_are_refused_and_nothing_is_stored(live, admin, change, named):
    version = current_version(admin)
    r = admin.http.patch("/admin/catalog/models/gemini", json=change, headers={"If-Match": str(version)})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "invalid_catalog" and named in r.json()["error"]["message"]
    assert r.json()["error"]["param"] == next(iter(change))  # the field the request sent, not "document"
    assert current_version(admin) == version


def test_put_needs_the_current_version_and_a_valid_document(live, admin):
    current = admin.http.get("/admin/catalog").json()
    document, version = current["document"], current["version"]
    assert admin.http.put("/admin/catalog", json={"document": document}).status_code == 400  # no If-Match
    stale = admin.http.put("/admin/catalog", json={"document": document}, headers={"If-Match": str(version - 1)})
    assert stale.status_code == 412 and stale.json()["error"]["code"] == "catalog_version_conflict"
    broken = {**document, "aliases": {"typo": "gemnii"}}
    r = admin.http.put("/admin/catalog", json={"document": broken}, headers={"If-Match": str(version)})
    assert r.status_code == 400 and "gemnii" in r.json()["error"]["message"]
    assert current_version(admin) == version
    same = admin.http.put("/admin/catalog", json={"document": document, "note": "same again"},
                          headers={"If-Match": f'"{version}"'})
    assert same.status_code == 200 and same.json()["version"] == version  # unchanged: a no-op, no new version
    assert same.headers["ETag"] == f'"{version}"' and same.json()["document"] == document
    renamed = {**document, "models": {**document["models"], "gemini": {**document["models"]["gemini"],
                                                                          "display_name": "Gemini (renamed)"}}}
    ok = admin.http.put("/admin/catalog", json={"document": renamed, "note": "renamed"},
                        headers={"If-Match": f'"{version}"'})
    assert ok.status_code == 200 and ok.json()["version"] == version + 1
    versions = admin.http.get("/admin/catalog/versions", params={"limit": 2}).json()
    assert [v["version"] for v in versions["data"]] == [version + 1, version] and versions["has_more"]
    assert admin.http.get(f"/admin/catalog/versions/{version}").json()["document"] == document


def latest_catalog_audit(admin: Admin) -> dict:
    return admin.http.get("/admin/audit-log", params={"action": "catalog.update", "limit": 1}).json()["data"][0]


def test_an_unchanged_change_is_a_no_op_answered_with_the_current_version(live, admin):
    current = admin.http.get("/admin/catalog").json()
    version, gemini, audited = current["version"], current["document"]["models"]["gemini"], latest_catalog_audit(admin)
    headers = {"If-Match": str(version)}
    same_fields = {f: gemini[f] for f in ("pricing", "base_cost_credits") if f in gemini}
    r = admin.http.patch("/admin/catalog/models/gemini", json=same_fields, headers=headers)
    assert r.status_code == 200 and r.json()["version"] == version, r.text
    r = admin.http.patch("/admin/catalog/aliases", json=dict(current["aliases"]), headers=headers)
    assert r.status_code == 200 and r.json()["version"] == version, r.text
    r = admin.http.patch("/admin/catalog/aliases", json={"never-was": None}, headers=headers)
    assert r.status_code == 200 and r.json()["version"] == version, r.text
    assert admin.http.get("/admin/catalog/versions", params={"limit": 1}).json()["data"][0]["version"] == version
    assert latest_catalog_audit(admin) == audited  # nothing said it changed
    stale = admin.http.patch("/admin/catalog/models/gemini", json=same_fields, headers={"If-Match": str(version - 1)})
    assert stale.status_code == 412  # still made against a version it never saw


def test_the_audit_log_records_operator_actions_with_before_and_after(live, admin):
    account = admin.account(5)
    admin.http.post(f"/admin/accounts/{account['id']}/topups", json={"credits": 7, "reference": "audit-1"})
    key = admin.key(account["id"])
    assert admin.http.delete(f"/admin/keys/{key['id']}").status_code == 200

    entries = admin.http.get("/admin/audit-log", params={"target": account["id"]}).json()["data"]
    assert [e["action"] for e in entries] == ["credits.topup", "account.create"]
    topup = entries[0]
    assert topup["before"]["balance_micro"] == 5_000_000 and topup["after"]["balance_micro"] == 12_000_000
    assert topup["actor"] == "admin token" and topup["client"] == "127.0.0.1"
    (revoke,) = admin.http.get("/admin/audit-log", params={"target": key["id"], "action": "key.revoke"}).json()["data"]
    assert revoke["before"]["id"] == key["id"] and "key" not in (revoke["before"] | revoke["after"])

    changes = admin.http.get("/admin/audit-log", params={"action": "catalog.update", "limit": 50}).json()["data"]
    price_change = next(e for e in changes if "price up" in (e["after"].get("note") or ""))
    assert price_change["before"]["models.gemini"]["pricing"]["output"] == "300"
    assert price_change["after"]["models.gemini"]["pricing"]["output"] == "900"
    assert price_change["after"]["models.gemini"]["routes"] == [{"node": "node63"}]
    page = admin.http.get("/admin/audit-log", params={"limit": 1}).json()
    older = admin.http.get("/admin/audit-log", params={"limit": 1, "after": page["data"][0]["id"]}).json()
    assert page["has_more"] and int(older["data"][0]["id"]) < int(page["data"][0]["id"])
    assert admin.http.get("/admin/audit-log", params={"action": "nope"}).status_code == 400


def test_an_operator_edits_prices_routes_and_aliases_on_the_dashboard(live, admin):
    email = f"op-{time.time_ns()}@example.com"
    password = "correct horse battery"
    assert admin.http.post("/admin/users", json={"email": email, "password": password, "role": "operator",
                                                 "account_id": admin.account(1)["id"]}).status_code == 201
    base = live.base_url
    with httpx.Client(base_url=base, follow_redirects=False, timeout=10) as c:
        login = c.get("/dashboard/login").text
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', login).group(1)
        assert c.post("/dashboard/login", data={"email": email, "password": password,
                                                "csrf_token": csrf}).status_code == 303
        page = c.get("/dashboard/admin/catalog")
        assert page.status_code == 200 and "Versions" in page.text
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
        version = int(re.search(r'name="version" value="(\d+)"', page.text).group(1))
        form = {"csrf_token": csrf, "version": str(version), "input": "60", "cached_input": "6", "output": "360",
                "base_cost_credits": "5"}
        bad = c.post("/dashboard/admin/catalog/models/gemini", data={**form, "routes": "node99 0 1"})
        assert bad.status_code == 400 and "node99" in bad.text
        ok = c.post("/dashboard/admin/catalog/models/gemini", data={**form, "routes": "node62 0 1\nnode63 1"})
        assert ok.status_code == 303
        stale = c.post("/dashboard/admin/catalog/aliases", data={"csrf_token": csrf, "version": str(version),
                                                                 "aliases": "flash = gemini"})
        assert stale.status_code == 409  # drawn from the version before the price change: not overwritten
        assert c.post("/dashboard/admin/catalog/aliases", data={"csrf_token": csrf, "version": str(version + 1),
                                                                "aliases": "flash = gemini"}).status_code == 303
        assert "<code>flash</code>" in c.get("/dashboard/models").text  # users see the alias on their Models page
        assert c.post("/dashboard/keys", data={"csrf_token": csrf, "name": "by an operator"}).status_code == 201
        codes = c.post("/dashboard/admin/codes", data={"csrf_token": csrf, "count": "1", "credits": "2"})
        assert codes.status_code == 200 and codes.text.startswith("code,")
        log_page = c.get("/dashboard/admin/audit-log", params={"action": "catalog.update"})
        assert log_page.status_code == 200 and email in log_page.text
    current = admin.http.get("/admin/catalog").json()
    gemini = current["document"]["models"]["gemini"]
    assert current["version"] == version + 2 and current["aliases"] == {"flash": "gemini"}
    assert gemini["pricing"] == {"input": "60", "cached_input": "6", "output": "360"}
    assert gemini["routes"] == [{"node": "node62", "priority": 0, "weight": 1}, {"node": "node63", "priority": 1,
                                                                                   "weight": 1}]
    (codes_entry,) = admin.http.get("/admin/audit-log", params={"action": "redemption_codes.create", "limit": 1}
                                    ).json()["data"]
    assert codes_entry["actor"] == email and "codes" not in codes_entry["after"]
    (key_entry,) = admin.http.get("/admin/audit-log", params={"action": "key.create", "limit": 1}).json()["data"]
    assert key_entry["actor"] == email and key_entry["after"]["name"] == "by an operator" and "key" not in key_entry["after"]
    (entry, _) = admin.http.get("/admin/audit-log", params={"action": "catalog.update", "limit": 2}).json()["data"]
    assert entry["actor"] == email and entry["before"]["aliases.flash"] is None
    assert entry["after"]["aliases.flash"] == "gemini" and entry["after"].get("aliases.gemini-latest") is None


@pytest.mark.parametrize("params, param", [
    ({"target": "x" * 40 + "\x00"}, "target"),  # the fuzz run's find: Postgres text cannot hold NUL (was a 500)
    ({"target": "x" * 201}, "target"),
    ({"after": "9" * 30}, "after"),  # more than a bigint
    ({"after": "٣"}, "after"),  # a digit to str.isdigit, not to the record
])
def test_the_audit_logs_filters_and_cursor_are_checked(live, admin, params, param):
    r = admin.http.get("/admin/audit-log", params=params)
    assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text


@contextmanager
def operator_client(live, admin) -> Iterator[httpx.Client]:
    """A signed-in operator's dashboard session (a fresh operator each time)."""
    email, password = f"op-{time.time_ns()}@example.com", "correct horse battery"
    assert admin.http.post("/admin/users", json={"email": email, "password": password, "role": "operator",
                                                 "account_id": admin.account(1)["id"]}).status_code == 201
    with httpx.Client(base_url=live.base_url, follow_redirects=False, timeout=10) as c:
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', c.get("/dashboard/login").text).group(1)
        assert c.post("/dashboard/login", data={"email": email, "password": password,
                                                "csrf_token": csrf}).status_code == 303
        yield c


def model_form(page: str, model_id: str) -> dict:
    """The model's form on the Catalog page, as a browser would submit it untouched."""
    form = re.search(rf'action="/dashboard/admin/catalog/models/{model_id}"(.*?)</form>', page, re.S).group(1)
    fields = dict(re.findall(r'<input[^>]*name="([^"]+)" value="([^"]*)"', form))
    fields["routes"] = re.search(r'<textarea[^>]*name="routes"[^>]*>(.*?)</textarea>', form, re.S).group(1)
    return fields


def test_the_dashboard_saves_what_it_loaded_and_an_untouched_form_changes_nothing(live, admin):
    current = admin.http.get("/admin/catalog").json()
    document = current["document"]
    gemini = {k: v for k, v in document["models"]["gemini"].items() if k != "routes"}
    gemini.update(nodes=["node62", "node63"], base_cost_credits=5)
    r = admin.http.put("/admin/catalog", json={"document": {**document, "aliases": {}, "models": {"gemini": gemini}}},
                       headers={"If-Match": str(current["version"])})
    assert r.status_code == 200, r.text
    version, audited = r.json()["version"], latest_catalog_audit(admin)
    with operator_client(live, admin) as c:
        page = c.get("/dashboard/admin/catalog").text
        untouched = model_form(page, "gemini")
        assert untouched["version"] == str(version) and untouched["base_cost_credits"] == "5"
        assert c.post("/dashboard/admin/catalog/models/gemini", data=untouched).status_code == 303
        aliases = re.search(r'<textarea[^>]*name="aliases"[^>]*>(.*?)</textarea>', page, re.S).group(1)
        assert c.post("/dashboard/admin/catalog/aliases", data={"csrf_token": untouched["csrf_token"],
                                                                "version": str(version), "aliases": aliases}
                      ).status_code == 303
        assert current_version(admin) == version and latest_catalog_audit(admin) == audited
        assert c.post("/dashboard/admin/catalog/models/gemini", data={**untouched, "base_cost_credits": "6"}
                      ).status_code == 303
    saved = admin.http.get("/admin/catalog").json()
    stored = saved["document"]["models"]["gemini"]
    assert saved["version"] == version + 1
    assert stored["base_cost_credits"] == 6 and stored["nodes"] == ["node62", "node63"] and "routes" not in stored
    assert stored["pricing"] == gemini["pricing"]  # strings as loaded
    assert saved["document"].get("aliases") == {}


@pytest.mark.parametrize("typed, loaded, saved", [
    ("5", 5, 5), ("5.0", 5, 5), ("6", 5, 6), ("2.5", 5, 2.5), ("0.5", 1.5, 0.5),  # numbers stay numbers
    ("50", "50", "50"), ("60", "50", "60"), ("7", None, "7"),  # text stays text (the file's prices)
    ("1e999999999", 5, "1e999999999"), ("abc", 5, "abc"),  # left for the parser to refuse, never expanded
])
def test_a_typed_amount_is_saved_in_the_type_the_document_held(typed, loaded, saved):
    from gateway.dashboard.catalog_pages import _amount

    value = _amount(typed, loaded)
    assert (value, type(value)) == (saved, type(saved))
