"""Key pools without a network: the pick policy, Google's error details, where keys come from, the
simulator's fault settings; then the shared state's scripts and a worker's view on a real Valkey."""

from __future__ import annotations

import asyncio
import json
from collections import Counter

import orjson
import pytest
from redis.asyncio import Redis

from shared import keys
from shared.key_state import KeySpec, KeyState, enable_key, parse_states, pool_status
from shared.scripts import Scripts
from shared.settings import Settings
from worker.gemini_errors import map_error, parse_google_error
from worker.key_config import KeyConfigError, load_node_keys, parse_env_keys, parse_file_keys
from worker.key_pick import KeyUse, WeightedRotation, pick, pick_for_count, seconds_until_usable
from worker.key_pool import KeyPool
from worker.provider import ProviderError
from worker.simulator.errors import consumer_suspended, invalid_key, key_rate_limited, service_disabled
from worker.simulator.key_faults import KeyFaults, parse_key_faults

NOW = 1_800_000_000_000


def specs(*weights: int) -> list[KeySpec]:
    return [KeySpec(label=f"k{i}", weight=w) for i, w in enumerate(weights)]


# --- the pick policy ----------------------------------------------------------------------------
def test_weights_are_respected_and_spread_evenly():
    pool, rotation = specs(3, 1), WeightedRotation()
    picks = [pick(pool, {}, {}, NOW, rotation).label for _ in range(8)]
    assert Counter(picks) == {"k0": 6, "k1": 2}
    assert picks[:4].count("k1") == 1  # one in every four, not two in a row at the end


def test_keys_cooling_down_disabled_or_tried_are_skipped():
    pool = specs(1, 1, 1, 1)
    states = {"k0": KeyState(cool_until_ms=NOW + 5000), "k1": KeyState(disabled="API_KEY_INVALID"),
              "k3": KeyState(cool_until_ms=NOW - 1)}  # its cooldown is over
    rotation = WeightedRotation()
    assert {pick(pool, states, {}, NOW, rotation, exclude=["k2"]).label for _ in range(4)} == {"k3"}
    assert pick(pool, states, {}, NOW, rotation, exclude=["k0", "k2", "k3"]) is None


def test_when_every_key_left_is_cooling_down_the_first_to_recover_is_asked():
    """A 429's cooldown steers traffic to other keys; with none left it must not refuse every tenant."""
    pool = specs(1, 1, 1, 1)
    states = {"k0": KeyState(cool_until_ms=NOW + 9000), "k1": KeyState(cool_until_ms=NOW + 4000),
              "k2": KeyState(disabled="API_KEY_INVALID"), "k3": KeyState(cool_until_ms=NOW + 1000, probing=True)}
    rotation = WeightedRotation()
    assert pick(pool, states, {}, NOW, rotation).label == "k1"  # not the disabled one, not the one being checked
    assert pick(pool, states, {}, NOW, rotation, exclude=["k1"]).label == "k0"  # never a key the request tried
    assert pick(pool, states, {}, NOW, rotation, exclude=["k0", "k1"]) is None
    assert pick(specs(1), {"k0": KeyState(cool_until_ms=NOW + 60_000)}, {}, NOW, rotation).label == "k0"


def test_least_recently_rate_limited_first():
    pool = specs(1, 1, 1)
    states = {"k0": KeyState(limited_at_ms=NOW - 5_000), "k1": KeyState(limited_at_ms=NOW - 20_000),
              "k2": KeyState(limited_at_ms=NOW - 10_000)}
    rotation = WeightedRotation()
    assert [pick(pool, states, {}, NOW, rotation).label for _ in range(3)] == ["k1"] * 3
    # a 429 long ago (or never) ranks like never: those keys share the traffic by weight
    states["k2"] = KeyState(limited_at_ms=NOW - 3_600_000)
    assert {pick(pool, states, {}, NOW, rotation).label for _ in range(4)} == {"k2"}
    states["k1"] = KeyState()
    assert {pick(pool, states, {}, NOW, rotation).label for _ in range(4)} == {"k1", "k2"}


def test_keys_at_their_own_limits_are_skipped():
    pool = [KeySpec(label="rpm1", rpm=10), KeySpec(label="tpm1", tpm=1000), KeySpec(label="free")]
    uses = {"rpm1": KeyUse(requests=10), "tpm1": KeyUse(tokens=1000), "free": KeyUse(requests=10**6)}
    rotation = WeightedRotation()
    assert {pick(pool, {}, uses, NOW, rotation).label for _ in range(3)} == {"free"}
    uses["rpm1"] = KeyUse(requests=9.5)
    assert "rpm1" in {pick(pool, {}, uses, NOW, rotation).label for _ in range(3)}


def test_how_soon_a_key_is_back():
    pool = specs(1, 1)
    states = {"k0": KeyState(cool_until_ms=NOW + 4_000), "k1": KeyState(cool_until_ms=NOW + 9_000)}
    assert seconds_until_usable(pool, states, {}, NOW) == 4.0
    states["k0"].disabled = "CONSUMER_SUSPENDED"
    assert seconds_until_usable(pool, states, {}, NOW) == 9.0
    states["k1"].disabled = "SERVICE_DISABLED"
    assert seconds_until_usable(pool, states, {}, NOW) is None


# --- Google's error details (the simulator's bodies are Google's) ---------------------------------
def test_rate_limit_details():
    g = parse_google_error(429, key_rate_limited("gemini-3-flash-preview", 4.2).body())
    assert g.google_status == "RESOURCE_EXHAUSTED" and g.retry_delay == 5.0 and g.key_verdict is None
    err = map_error(429, key_rate_limited("m", None).body(), {})
    assert err.key_limited and err.retry_delay is None and err.status == 429
    assert map_error(429, b"{}", {"Retry-After": "7"}).retry_delay == 7.0
    body = {"error": {"code": 429, "status": "RESOURCE_EXHAUSTED", "message": "m", "details": [
        {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "36.429760048s"}]}}
    assert parse_google_error(429, orjson.dumps(body)).retry_delay == pytest.approx(36.429760048)


@pytest.mark.parametrize("error, status, verdict", [
    (invalid_key(), 400, "API_KEY_INVALID"),
    (consumer_suspended("AIzaXYZ"), 403, "CONSUMER_SUSPENDED"),
    (service_disabled(), 403, "SERVICE_DISABLED"),
])
def test_verdicts_about_the_key(error, status, verdict):
    err = map_error(status, error.body(), {})
    assert err.key_verdict == verdict and not err.key_limited and err.status == 502


@pytest.mark.parametrize("body", [
    b"<html>502</html>", b'{"error": "text"}', b'{"error": {"details": "x"}}',
    b'{"error": {"code": 400, "message": "Request contains an invalid argument.", "status": "INVALID_ARGUMENT"}}',
    b'{"error": {"code": 403, "status": "PERMISSION_DENIED", "details": [{"@type": '
    b'"type.googleapis.com/google.rpc.ErrorInfo", "reason": "ACCESS_TOKEN_SCOPE_INSUFFICIENT"}]}}',
])
def test_no_verdict_without_googles_reason(body):
    assert map_error(400, body, {}).key_verdict is None


# --- where keys come from --------------------------------------------------------------------------
def test_keys_from_the_environment(monkeypatch, tmp_path):
    pool = parse_env_keys("AIzaAAAA1111, AIzaBBBB2222 weight=3 rpm=60 tpm=100000", "X")
    assert [(k.label, k.spec.weight, k.spec.rpm, k.spec.tpm) for k in pool] == [
        ("1111", 1, 0, 0), ("2222", 3, 60, 100000)]
    assert "AIza" not in repr(pool)  # a key never shows up in a log line by accident
    monkeypatch.setenv("APIINONE_NODE_KEYS_NODE_62", "AIzaCCCC3333")
    assert [k.label for k in load_node_keys("node-62", None, "fallback-key")] == ["3333"]
    assert [k.secret for k in load_node_keys("node63", None, "fallback-key")] == ["fallback-key"]
    with pytest.raises(KeyConfigError, match="weight"):
        parse_env_keys("AIzaAAAA1111 weight=0", "X")
    with pytest.raises(KeyConfigError, match="unknown"):
        parse_env_keys("AIzaAAAA1111 burst=3", "X")
    monkeypatch.setenv("APIINONE_NODE_KEYS_NODE62", "one-1111,two-1111")
    with pytest.raises(KeyConfigError, match="last 4") as exc:
        load_node_keys("node62", None, "")
    assert "one-" not in str(exc.value)


def test_keys_from_a_secrets_file(monkeypatch, tmp_path):
    monkeypatch.setenv("SECRET_ONE", "AIzaFROMENV9999")
    toml = tmp_path / "keys.toml"
    toml.write_text('[[nodes.node62.keys]]\nkey = "AIzaFILE0001"\nweight = 2\n'
                    '[[nodes.node62.keys]]\nkey_env = "SECRET_ONE"\ntpm = 5000\n')
    assert [(k.label, k.spec.weight, k.spec.tpm) for k in parse_file_keys(toml, "node62")] == [
        ("0001", 2, 0), ("9999", 1, 5000)]
    js = tmp_path / "keys.json"
    js.write_text(json.dumps({"nodes": {"node62": {"keys": ["AIzaJSON0002", {"key": "AIzaJSON0003", "rpm": 5}]}}}))
    assert [(k.label, k.spec.rpm) for k in load_node_keys("node62", js, "fallback")] == [("0002", 0), ("0003", 5)]
    assert [k.secret for k in load_node_keys("node63", js, "fallback")] == ["fallback"]


# --- the simulator's fault setting ----------------------------------------------------------------
def test_simulator_fault_setting():
    faults = parse_key_faults("key-a=429:5s, key-b=invalid,key-c=suspended,key-d=disabled,key-e=429")
    assert faults["key-a"].kind == "429" and faults["key-a"].duration_s == 5.0
    assert faults["key-e"].duration_s is None
    for bad in ("key-a=430", "key-a", "key-b=invalid:5s", "=429"):
        with pytest.raises(ValueError):
            parse_key_faults(bad)


def test_a_timed_429_ends(monkeypatch):
    clock = iter([100.0, 102.0, 105.5])
    monkeypatch.setattr("worker.simulator.key_faults.time.monotonic", lambda: next(clock))
    faults = KeyFaults(parse_key_faults("k=429:5s"))
    faults.check("k", "m", generation=False)  # countTokens is not generation quota
    for _ in range(2):
        with pytest.raises(Exception) as exc:
            faults.check("k", "m", generation=True)
        assert exc.value.code == 429
    assert orjson.loads(exc.value.body())["error"]["details"][-1]["retryDelay"] == "3s"
    faults.check("k", "m", generation=True)  # 5.5 s after first use: served


def test_a_count_429_is_countTokens_own():
    faults = KeyFaults(parse_key_faults("k=count429"))
    faults.check("k", "m", generation=True)  # generation's quota is untouched
    with pytest.raises(Exception) as exc:
        faults.check("k", "m", generation=False, counting=True)
    assert exc.value.code == 429
    assert parse_key_faults("k=count429:5s")["k"].duration_s == 5.0


def test_a_count_is_held_back_only_by_what_condemns_the_key():
    """countTokens has its own quota: generation's cooldowns and the keys' own limits do not hold a count."""
    pool = [KeySpec(label="k0"), KeySpec(label="k1"), KeySpec(label="k2"), KeySpec(label="k3", rpm=1)]
    states = {"k0": KeyState(cool_until_ms=NOW + 60_000), "k1": KeyState(disabled="API_KEY_INVALID"),
              "k2": KeyState(cool_until_ms=NOW + 9000, probing=True)}
    rotation = WeightedRotation()
    assert {pick_for_count(pool, states, rotation).label for _ in range(4)} == {"k0", "k3"}
    assert pick_for_count(pool, states, rotation, exclude=["k0", "k3"]) is None


# --- the shared state, on a real Valkey ------------------------------------------------------------
def settings(**kw) -> Settings:
    return Settings(key_backoff_base_s=1.0, key_backoff_max_s=8.0, **kw)


async def test_cooldown_script_uses_retry_delay_else_backoff(valkey_port):
    redis = Redis(port=valkey_port)
    await redis.flushall()
    scripts, state = Scripts(redis), keys.key_pool_state("n1")
    args = lambda delay: ["k0", NOW, delay, 1000, 8000, keys.key_pool_channel("n1")]  # noqa: E731
    assert await scripts.key_cooldown(keys=[state], args=args(5000)) == [NOW + 5000, 1]
    assert await scripts.key_cooldown(keys=[state], args=args(-1)) == [NOW + 5000, 1]  # same spell
    later = NOW + 6000
    assert await scripts.key_cooldown(keys=[state], args=["k0", later, -1, 1000, 8000, "c"]) == [later + 2000, 2]
    much_later = later + 60_000
    assert await scripts.key_cooldown(keys=[state], args=["k0", much_later, -1, 1000, 8000, "c"]) == [
        much_later + 1000, 1]  # well clear of its last spell: strikes start again
    st = parse_states(await redis.hgetall(state))["k0"]
    assert st.rate_limited == 4 and st.limited_at_ms == much_later
    await redis.aclose()


async def test_a_verdict_disables_only_when_the_probe_confirms_it(valkey_port):
    redis = Redis(port=valkey_port)
    await redis.flushall()
    verdict = ProviderError(502, "bad", "upstream_auth_error")
    verdict.key_verdict = "API_KEY_INVALID"
    probes: list[str] = []

    async def probe(key):
        probes.append(key.label)
        return verdict if key.label == "bad1" else None

    pool = KeyPool("n1", parse_env_keys("key-bad1,key-ok22", "X"), redis, settings(), "w1")
    pool.probe = probe
    await pool._register()
    for label in ("bad1", "ok22"):
        assert await pool.failed(pool.keys[label], verdict)  # the request moves to another key
        assert await pool.failed(pool.keys[label], verdict)  # a second report probes nothing more
    await asyncio.gather(*pool._tasks)
    assert sorted(probes) == ["bad1", "ok22"]
    rows = {r["key"]: r for r in (await pool_status(redis, ["n1"]))["n1"]}
    assert rows["bad1"]["state"] == "disabled" and rows["bad1"]["disabled_reason"] == "API_KEY_INVALID"
    assert rows["ok22"]["state"] == "active"  # the probe worked: the tenant's request alone condemns nothing
    await pool.refresh()
    assert pool.pick(["ok22"]) is None
    assert await enable_key(redis, pool.scripts, "n1", "bad1") is True
    assert await enable_key(redis, pool.scripts, "n1", "zzzz") is None
    await pool.refresh()
    assert pool.pick(["ok22"]).label == "bad1"
    await redis.aclose()


async def test_a_count_429_cools_nothing_and_counts_spend_no_own_limit(valkey_port):
    redis = Redis(port=valkey_port)
    await redis.flushall()
    pool = KeyPool("n1", parse_env_keys("key-aaaa rpm=1,key-bbbb rpm=1", "X"), redis, settings(), "w1")
    limited = map_error(429, key_rate_limited("m", 30).body(), {})
    assert [pool.pick(counting=True).label for _ in range(4)] == ["aaaa", "bbbb"] * 2
    assert await pool.failed(pool.keys["aaaa"], limited, counting=True)  # the count tries the other key
    await pool.refresh()
    assert await redis.hgetall(keys.key_pool_state("n1")) == {}  # nothing cooled, no request counted
    assert {pool.pick().label for _ in range(2)} == {"aaaa", "bbbb"}  # generation keeps both keys
    assert pool.unavailable(limited, counting=True) is limited  # every key's count quota spent: Google's 429
    await redis.aclose()


async def test_health_probes_re_enable_a_key_that_works_again(valkey_port):
    redis = Redis(port=valkey_port)
    await redis.flushall()
    pool = KeyPool("n1", parse_env_keys("key-aaaa", "X"), redis, settings(), "w1")
    works = asyncio.Event()

    async def probe(key):
        return None if works.is_set() else ProviderError(502, "still bad", "upstream_auth_error")

    pool.probe = probe
    await pool._register()
    await pool.scripts.key_disable(keys=[keys.key_pool_state("n1"), keys.key_probe_lock("n1", "aaaa")],
                                   args=["aaaa", NOW, "CONSUMER_SUSPENDED", keys.key_pool_channel("n1")])
    await pool.refresh()
    task = asyncio.create_task(pool.health_probes(0.05))
    await asyncio.sleep(0.2)
    await pool.refresh()
    assert pool.pick() is None  # its probes fail: still disabled
    works.set()
    await asyncio.sleep(0.2)
    task.cancel()
    await pool.refresh()
    assert pool.pick().label == "aaaa"
    await redis.aclose()


async def test_own_limits_count_every_worker_of_the_node_through_the_refresh(valkey_port):
    redis = Redis(port=valkey_port)
    await redis.flushall()
    one, two = (KeyPool("n1", parse_env_keys("key-aaaa rpm=4,key-bbbb", "X"), redis, settings(), w)
                for w in ("w1", "w2"))
    assert [one.pick(["bbbb"]).label for _ in range(2)] == ["aaaa", "aaaa"]
    assert [two.pick(["bbbb"]).label for _ in range(2)] == ["aaaa", "aaaa"]
    await one.refresh()
    assert one.pick(["bbbb"]).label == "aaaa"  # the other worker's use is not flushed yet: 3 of 4 seen
    await two.refresh()
    await one.refresh()
    assert one.pick(["bbbb"]) is None and two.pick(["bbbb"]) is None  # 5 of 4 a minute, node-wide: no more
    state = parse_states(await redis.hgetall(keys.key_pool_state("n1")))
    assert state["aaaa"].requests == 5
    await redis.aclose()


# --- the simulator's answers per key, read by the real adapter -----------------------------------
@pytest.fixture
async def faulty_simulator(monkeypatch):
    from aiohttp.test_utils import TestServer

    from worker.simulator.app import create_app

    monkeypatch.setenv("APIINONE_SIMULATOR_KEY_FAULTS", "AIzaLIMITED0001=429:30s,AIzaSUSPENDED002=suspended,"
                                                        "AIzaOFF0003=disabled,AIzaBAD0004=invalid")
    server = TestServer(create_app(), host="127.0.0.1")
    await server.start_server()
    yield str(server.make_url(""))
    await server.close()


async def test_the_simulator_answers_each_key_as_google_does(faulty_simulator):
    import httpx

    url = faulty_simulator + "/v1beta/models/gemini-3-flash-preview:generateContent"
    body = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}
    async with httpx.AsyncClient() as http:
        async def ask(key: str) -> tuple[int, dict]:
            r = await http.post(url, json=body, headers={"x-goog-api-key": key})
            return r.status_code, r.json().get("error", {})

        status, err = await ask("AIzaLIMITED0001")
        assert (status, err["status"]) == (429, "RESOURCE_EXHAUSTED")
        types = [d["@type"].rsplit(".", 1)[-1] for d in err["details"]]
        assert types == ["Help", "QuotaFailure", "RetryInfo"] and err["details"][-1]["retryDelay"] == "30s"
        assert err["details"][1]["violations"][0]["quotaDimensions"]["model"] == "gemini-3-flash-preview"
        status, err = await ask("AIzaSUSPENDED002")
        assert (status, err["status"], err["details"][0]["reason"]) == (403, "PERMISSION_DENIED", "CONSUMER_SUSPENDED")
        assert "AIzaSUSPENDED002" in err["message"]  # Google quotes the key: the adapter must not pass it on
        status, err = await ask("AIzaOFF0003")
        assert (status, err["details"][0]["reason"]) == (403, "SERVICE_DISABLED")
        status, err = await ask("AIzaBAD0004")
        assert (status, err["status"], err["message"]) == (400, "INVALID_ARGUMENT",
                                                          "API key not valid. Please pass a valid API key.")
        assert (await ask("AIzaFINE0005"))[0] == 200
        count = await http.post(url.replace("generateContent", "countTokens"), json=body,
                                headers={"x-goog-api-key": "AIzaLIMITED0001"})
        assert count.status_code == 200  # generation quota only


async def test_the_adapter_never_relays_the_key_google_quoted(faulty_simulator):
    from shared.catalog import get_catalog
    from worker.gemini import GeminiAdapter

    model = get_catalog().models["gemini"]
    adapter = GeminiAdapter(faulty_simulator, "AIzaSUSPENDED002")
    try:
        with pytest.raises(ProviderError) as exc:
            async for _ in adapter.stream({"messages": [{"role": "user", "content": "hi"}]}, model):
                pass
        assert exc.value.key_verdict == "CONSUMER_SUSPENDED" and exc.value.status == 502
        assert "AIzaSUSPENDED002" not in exc.value.message and "AIzaSUSPENDED002" not in str(exc.value)
        assert await adapter.probe(adapter.keys.key) is not None
    finally:
        await adapter.close()


# --- another key before output, never after -----------------------------------------------------
class RecordingKeys:
    """A KeySource that hands out keys in order and records what the adapter reports."""

    def __init__(self, *secrets: str) -> None:
        from worker.key_config import parse_env_keys as keys_of

        self.pool = keys_of(",".join(secrets), "test")
        self.failures: list[tuple[str, str]] = []
        self.picked: list[str] = []

    def pick(self, exclude=()):
        key = next((k for k in self.pool if k.label not in set(exclude)), None)
        self.picked.append(key.label if key else None)
        return key

    def unavailable(self, last_error):
        return last_error or ProviderError(429, "none left", "upstream_rate_limited")

    async def failed(self, key, error):
        self.failures.append((key.label, error.code))
        return error.key_limited or bool(error.key_verdict)

    def used(self, key, tokens):
        pass


@pytest.fixture
async def scripted_upstream():
    """Key ...0429 answers 429 at once; ...0cut streams a line then a 429 error event; others answer."""
    from aiohttp import web
    from aiohttp.test_utils import TestServer

    async def generate(request: web.Request) -> web.StreamResponse:
        key = request.headers["x-goog-api-key"]
        if key.endswith("0429"):
            return web.Response(status=429, body=key_rate_limited("m", 3).body(), content_type="application/json")
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        text = {"candidates": [{"content": {"role": "model", "parts": [{"text": "Hello"}]}}]}
        await resp.write(b"data: " + orjson.dumps(text) + b"\r\n\r\n")
        if key.endswith("0cut"):
            await resp.write(b"data: " + key_rate_limited("m", 3).body() + b"\r\n\r\n")
        else:
            end = {"candidates": [{"content": {"role": "model", "parts": [{"text": "!"}]}, "finishReason": "STOP"}],
                   "usageMetadata": {"promptTokenCount": 3, "candidatesTokenCount": 2}}
            await resp.write(b"data: " + orjson.dumps(end) + b"\r\n\r\n")
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_post("/v1beta/models/{name}", generate)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield str(server.make_url(""))
    await server.close()


async def test_a_429_before_output_moves_to_another_key_never_after(scripted_upstream):
    from shared.catalog import get_catalog
    from worker.gemini import GeminiAdapter

    model = get_catalog().models["gemini"]
    body = {"messages": [{"role": "user", "content": "hi"}]}
    keys_before = RecordingKeys("k-0429", "k-good")
    adapter = GeminiAdapter(scripted_upstream, keys_before)
    try:
        text = "".join([d.content async for d in adapter.stream(body, model)])
        assert text == "Hello!" and keys_before.failures == [("0429", "upstream_rate_limited")]
        assert keys_before.picked == ["0429", "good"]

        keys_after = RecordingKeys("k-0cut", "k-good")
        adapter.keys = keys_after
        seen = []
        with pytest.raises(ProviderError) as exc:
            async for delta in adapter.stream(body, model):
                seen.append(delta.content)
        assert seen == ["Hello"] and exc.value.status == 429  # output went out: the error ends the request
        assert keys_after.failures == [("0cut", "upstream_rate_limited")]  # the key cools down
        assert keys_after.picked == ["0cut"]  # and no other key was tried
    finally:
        await adapter.close()


async def test_a_generation_whose_context_check_meets_a_count_429_goes_ahead(monkeypatch):
    """check_context's exact count runs on the generation's key: its 429 is countTokens' quota, so the generation
    is sent (Google refuses an oversized prompt itself) instead of moving on and cooling the key."""
    from types import SimpleNamespace

    from worker.gemini import GeminiAdapter

    adapter = GeminiAdapter("http://127.0.0.1:9", "key-aaaa")
    limited = map_error(429, key_rate_limited("m", 30).body(), {})

    async def count_tokens(*args):
        raise limited

    monkeypatch.setattr(adapter, "count_tokens", count_tokens)
    model = SimpleNamespace(context_window=1)
    request = {"contents": [{"role": "user", "parts": [{"text": "a prompt over one token"}]}]}
    await adapter.check_context(request, model, adapter.keys.key)
    limited.key_limited = False  # any other failure of the count still ends the request
    with pytest.raises(ProviderError):
        await adapter.check_context(request, model, adapter.keys.key)
    await adapter.close()
