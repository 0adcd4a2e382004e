"""The live catalog's store and follower against a real Valkey and Postgres: seeding, the record, conflicts,
a wiped Redis, and refusals of documents that cannot be served."""

from __future__ import annotations

import copy

import pytest

from shared.catalog import BUNDLED_CATALOG, CatalogInvalid, load_catalog, load_document, validate_catalog
from shared.catalog_edits import change_catalog, replace_with, set_aliases, set_model_fields
from shared.catalog_store import CatalogStore, StoredCatalog, VersionConflict
from shared.live_catalog import LiveCatalog
from shared.operator_audit import Actor, OperatorAudit
from shared.scripts import Scripts

FILE = load_document(BUNDLED_CATALOG)


def with_output_price(document: dict, output: str) -> dict:
    changed = copy.deepcopy(document)
    changed["models"]["gemini"]["pricing"]["output"] = output
    return changed


async def test_seeding_recording_and_compare_and_set(stores):
    redis, db = stores
    store = CatalogStore(redis, Scripts(redis), db)
    await store.seed(StoredCatalog(1, FILE))
    assert (await store.current()).version == 1
    assert [v["version"] for v in await store.history(None, 10)] == [1]  # the seed is recorded
    await store.put(with_output_price(FILE, "400"), 1, "admin token", "price up")
    with pytest.raises(VersionConflict) as conflict:
        await store.put(with_output_price(FILE, "500"), 1, "admin token", "too late")
    assert conflict.value.current == 2
    assert (await store.recorded(2)).document["models"]["gemini"]["pricing"]["output"] == "400"
    assert [(v["version"], v["note"]) for v in await store.history(None, 10)] == [(2, "price up"), (1, "recorded from "
                                                                                                      "the live store")]


@pytest.mark.parametrize("breakage, named", [
    (lambda d: d["models"]["gemini"].update(nodes=["nowhere"]), "nowhere"),
    (lambda d: d["models"]["gemini"].pop("upstream_model"), "upstream_model"),
    (lambda d: d.update(aliases={"gemini": "gemini"}), "also a model id"),
    (lambda d: d["models"]["gemini"]["pricing"].update(output="lots"), "gemini"),
    (lambda d: d["providers"]["google"].update(adapter="carrier-pigeon"), "adapter"),
])
async def test_a_document_that_cannot_be_served_is_refused_and_nothing_is_stored(stores, breakage, named):
    redis, db = stores
    store = CatalogStore(redis, Scripts(redis), db)
    await store.seed(StoredCatalog(1, FILE))
    broken = copy.deepcopy(FILE)
    breakage(broken)
    with pytest.raises(CatalogInvalid, match=named):
        await store.put(broken, 1, "admin token")
    assert (await store.current()).version == 1 and len(await store.history(None, 10)) == 1


async def test_a_change_that_leaves_the_document_as_it_is_stores_and_audits_nothing(stores):
    redis, db = stores
    store, audit, actor = CatalogStore(redis, Scripts(redis), db), OperatorAudit(db), Actor("admin token")
    await store.seed(StoredCatalog(1, FILE))
    assert "aliases" not in FILE  # removing an alias that never was adds no empty table either
    same_prices = set_model_fields("gemini", {"pricing": copy.deepcopy(FILE["models"]["gemini"]["pricing"])})
    for change, expected in ((replace_with(FILE), 1), (same_prices, None), (set_aliases({"never-was": None}), 1)):
        outcome = await change_catalog(store, audit, actor, change, expected, "again")
        assert (outcome.changed, outcome.catalog.version, outcome.document) == (False, 1, FILE)
    assert (await store.current()).version == 1 and len(await store.history(None, 10)) == 1
    assert await db.fetchval("SELECT count(*) FROM operator_audit") == 0
    changed = await change_catalog(store, audit, actor, set_aliases({"latest": "gemini"}), 1, "an alias")
    assert (changed.changed, changed.catalog.version, changed.catalog.aliases) == (True, 2, {"latest": "gemini"})
    assert await db.fetchval("SELECT count(*) FROM operator_audit") == 1


async def test_a_wiped_redis_is_seeded_with_the_newest_version_not_the_file(stores):
    redis, db = stores
    scripts = Scripts(redis)
    live = LiveCatalog(load_catalog(BUNDLED_CATALOG), CatalogStore(redis, scripts), None)  # a worker: no record
    live._document = FILE
    await live.refresh()
    await CatalogStore(redis, scripts, db).put(with_output_price(FILE, "400"), 1, "admin token")
    await live.refresh()
    assert live.current.version == 2 and live.at(1) is not None
    await redis.flushall()  # Redis lost everything: the worker puts back what it serves, not the file
    await live.refresh()
    assert live.current.version == 2 and (await CatalogStore(redis, scripts).current()).version == 2
    await redis.flushall()  # and a gateway with the record restores the newest recorded version
    gateway_side = LiveCatalog(load_catalog(BUNDLED_CATALOG), CatalogStore(redis, scripts, db), None)
    gateway_side._document = FILE
    await gateway_side.refresh()
    assert gateway_side.current.version == 2
    assert gateway_side.current.models["gemini"].prices.standard.output_micro == 400_000_000


@pytest.mark.parametrize("fields", [
    {"pricing": {"input": "1e400", "output": "1"}}, {"pricing": {"input": "NaN", "output": "1"}},
    {"pricing": {"input": None, "output": "1"}}, {"pricing": {"input": "1", "output": "1", "long_context": 5}},
    {"pricing": []}, {"routes": [1]}, {"routes": [{"node": "node62", "weight": 10**100}]}, {"routes": None},
    {"routes": [{"node": ["node62"]}]}, {"base_cost_credits": "1e400"}, {"base_cost_credits": -5},
    {"context_window": "x"}, {"max_output_tokens": 10**30}, {"capabilities": "abc"}, {"thinking": 5},
])
def test_out_of_bounds_and_mistyped_fields_are_invalid_never_a_crash(fields):
    document = copy.deepcopy(FILE)
    set_model_fields("gemini", fields)(document)
    with pytest.raises(CatalogInvalid):
        validate_catalog(document, 2)


async def test_a_fixed_deployment_serves_the_file_and_refuses_changes(valkey_port):
    """APIINONE_CATALOG_LIVE=false: the file is the catalog (nothing stored in Redis), changes are a 409."""
    from aiohttp.test_utils import TestClient, TestServer
    from redis.asyncio import Redis

    from gateway.app import create_app
    from shared import keys
    from shared.settings import Settings

    redis = Redis(port=valkey_port)
    await redis.flushall()
    token = "adm_fixed_catalog_test_token"
    app = create_app(Settings(redis_url=f"redis://127.0.0.1:{valkey_port}/0", admin_token=token, database_url=None,
                              catalog_live=False))
    auth = {"Authorization": f"Bearer {token}"}
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        current = await (await client.get("/admin/catalog", headers=auth)).json()
        assert (current["version"], current["live"]) == (0, False) and "gemini" in current["document"]["models"]
        r = await client.patch("/admin/catalog/aliases", json={"latest": "gemini"}, headers={**auth, "If-Match": "0"})
        assert r.status == 409 and (await r.json())["error"]["code"] == "catalog_fixed"
    assert not await redis.exists(keys.CATALOG)
    await redis.aclose()


async def test_a_worker_runs_a_job_with_the_version_and_prices_it_was_admitted_under():
    """The job's own version when the worker holds it, the job's price sheet always; a job from a newer version
    than the worker's makes it read that version first (once, not per request)."""
    import fakeredis

    from shared.coalesce import Coalescer
    from worker.chat_job import JobRuntime, job_model, start_job

    v1 = validate_catalog(FILE, 1)
    v2_document = with_output_price(FILE, "900")
    v2_document["models"]["gemini"]["upstream_model"] = "gemini-next"
    v2 = validate_catalog(v2_document, 2)
    held = {1: v1}
    followed = []

    async def follow():
        followed.append(True)
        held[2] = rt.catalog = v2

    rt = JobRuntime(v1, None, "w", None, None, None, catalog_at=held.get, follow_catalog=follow)
    old_job = {"model": "gemini", "catalog_version": 1, "price_version": v1.models["gemini"].price_version,
               "prices": v1.models["gemini"].prices_wire}
    assert job_model(rt, old_job) is v1.models["gemini"]
    rt.catalog = v2  # the worker moved on; a job admitted under version 1 still runs as version 1
    assert job_model(rt, old_job).upstream_model == "gemini-3-flash-preview"
    held.clear()  # a version this worker never held: the current model, at the job's prices
    model = job_model(rt, old_job)
    assert model.upstream_model == "gemini-next" and model.prices == v1.models["gemini"].prices
    rt.catalog = v1
    rt.coalescer = Coalescer(fakeredis.FakeAsyncRedis())
    new_job = {"id": "chatcmpl-x", "model": "gemini", "catalog_version": 2, "reply_to": "r", "enqueued_ms": 0}
    model, publisher, _, _ = await start_job(rt, new_job, [])
    publisher.send(b"")
    assert followed == [True] and model.upstream_model == "gemini-next"
