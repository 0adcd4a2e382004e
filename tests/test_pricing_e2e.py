"""Every price dimension through the real path: README "Credits", the charge's worked example.

Requests go through the gateway, a node worker, the simulator (its `prompt_tokens`, `cached_tokens`,
`output_tokens` and `thinking_tokens` directives make it report the example's token counts) and the
billing worker. Each is charged exactly the example's amount, to the micro-credit, shows it in
`credits_charged` and in its usage row's breakdown, and is never charged more than its hold.

The long-context rows need a model that has a tier (Gemini 3 Flash, the bundled `gemini`, has none):
their own stack serves `gemini-pro`, priced like Gemini 3 Pro.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import httpx
import pytest

from apiinone.launcher import Stack
from tests.conftest import Admin, make_settings, wait_settled

URL = "/api/v1/chat/completions"

PRO_CATALOG = """
[providers.google]
adapter = "gemini"
base_url_env = "GEMINI_BASE_URL"
api_key_env = "GEMINI_API_KEY"

[nodes.node62]
provider = "google"

[models.gemini-pro]
provider = "google"
nodes = ["node62"]
upstream_model = "gemini-3-pro-preview"
thinking = "level"
base_cost_credits = 5
context_window = 1048576
max_output_tokens = 65536

[models.gemini-pro.pricing]
input = "200"
cached_input = "20"
output = "1200"
long_context = { above_prompt_tokens = 200000, input = "400", cached_input = "40", output = "1800" }
"""


def sim(model: str, directives: str, text: str = "Explain quantum computing in simple terms.") -> dict:
    return {"model": model, "stream": False,
            "messages": [{"role": "user", "content": f"{text} [[sim {directives}]]"}]}


async def charged(http: httpx.AsyncClient, key: str, body: dict, count: int) -> tuple[dict, dict]:
    """(the response's usage, the request's usage row) once it settled."""
    r = await http.post(URL, json=body, headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 200, r.text
    usage = r.json()["usage"]
    rows = await wait_settled(http, key, count)
    row = next(row for row in rows if row["request_id"] == r.json()["id"])
    return usage, row


def assert_breakdown(usage: dict, row: dict, tier: str, multiplier_ppm: int, parts: tuple[int, int, int]) -> None:
    total = sum(parts)
    assert usage["charged_micro"] == total and usage["credits_charged"] == total / 1_000_000
    assert row["status"] == "succeeded" and row["charged_micro"] == total, row
    assert row["charged_micro"] <= row["hold_micro"], "never charged more than its hold"
    assert (row["input_micro"], row["cached_input_micro"], row["output_micro"]) == parts, row
    assert (row["price_tier"], row["price_multiplier_ppm"]) == (tier, multiplier_ppm), row
    assert row["input_tokens"] == row["prompt_tokens"] - row["cached_tokens"]


async def test_cached_tokens_thinking_and_multipliers_as_the_worked_example(stack, admin):
    account, key = admin.account_with_key(100)
    async with httpx.AsyncClient(base_url=stack.base_url, timeout=30) as http:
        # 11 prompt, 600 completion: 550 + 180,000.
        usage, row = await charged(http, key, sim("gemini", "prompt_tokens=11 output_tokens=600 thinking_tokens=0"), 1)
        assert (row["prompt_tokens"], row["completion_tokens"], row["cached_tokens"]) == (11, 600, 0)
        assert_breakdown(usage, row, "standard", 1_000_000, (550, 0, 180_000))

        # 1,000 prompt of which 400 cached, 500 completion of which 200 thinking (billed as output).
        example = "prompt_tokens=1000 cached_tokens=400 output_tokens=300 thinking_tokens=200"
        usage, row = await charged(http, key, sim("gemini", example), 2)
        assert (row["prompt_tokens"], row["cached_tokens"], row["completion_tokens"], row["reasoning_tokens"]) == (
            1000, 400, 500, 200)
        assert usage["prompt_tokens_details"]["cached_tokens"] == 400
        assert_breakdown(usage, row, "standard", 1_000_000, (30_000, 2_000, 150_000))

        # The same request on an account at x1.25: every dimension times 1.25.
        r = admin.http.patch(f"/admin/accounts/{account['id']}", json={"price_multiplier": "1.25"})
        assert r.status_code == 200 and r.json()["price_multiplier"] == "1.25", r.text
        usage, row = await charged(http, key, sim("gemini", example), 3)
        assert_breakdown(usage, row, "standard", 1_250_000, (37_500, 2_500, 187_500))

        # x0.85, odd counts: one upward rounding of the exact sum; the cached dimension takes the micro-credit.
        r = admin.http.patch(f"/admin/accounts/{account['id']}", json={"price_multiplier": 0.85})
        assert r.status_code == 200 and r.json()["price_multiplier_ppm"] == 850_000, r.text
        usage, row = await charged(http, key, sim("gemini", "prompt_tokens=333 cached_tokens=101 output_tokens=77 "
                                                           "thinking_tokens=0"), 4)
        assert_breakdown(usage, row, "standard", 850_000, (9_860, 430, 19_635))

    spent = 180_550 + 182_000 + 227_500 + 29_925
    assert admin.get_account(account["id"])["balance_micro"] == 100_000_000 - spent


async def test_a_multiplier_scales_the_hold_too(stack, admin):
    """The hold is planned with the same function and multiplier as the charge: x2 holds and charges twice."""
    account, key = admin.account_with_key(100)
    text = "hi [[sim output_tokens=8 thinking_tokens=0]]"
    body = {"model": "gemini", "max_tokens": 20_000, "stream": False, "messages": [{"role": "user", "content": text}]}
    bound = 8 + (len(text) + 1) // 2  # README: the prompt bound
    async with httpx.AsyncClient(base_url=stack.base_url, timeout=30) as http:
        _, plain = await charged(http, key, body, 1)
        admin.http.patch(f"/admin/accounts/{account['id']}", json={"price_multiplier": 2})
        _, doubled = await charged(http, key, body, 2)
    assert plain["hold_micro"] == bound * 50 + 20_000 * 300
    assert doubled["hold_micro"] == 2 * plain["hold_micro"]
    assert doubled["charged_micro"] == 2 * plain["charged_micro"] > 0


def test_the_multiplier_is_validated(stack, admin):
    account = admin.account(1)
    for bad in ("abc", 0, -1, "1.0000001", True, 1001):
        r = admin.http.patch(f"/admin/accounts/{account['id']}", json={"price_multiplier": bad})
        assert r.status_code == 400 and r.json()["error"]["param"] == "price_multiplier", (bad, r.text)
    assert admin.get_account(account["id"])["price_multiplier"] == "1"
    assert admin.http.patch("/admin/accounts/acct_nope", json={"price_multiplier": 1}).status_code == 404


def test_models_api_shows_every_price_dimension(stack, funded):
    r = httpx.get(stack.base_url + "/api/v1/models/gemini", headers={"Authorization": f"Bearer {funded[1]}"})
    pricing = r.json()["pricing"]
    assert (pricing["input"], pricing["cached_input"], pricing["output"]) == (50, 5, 300)
    assert "long_context" not in pricing  # Gemini 3 Flash has one price for every prompt length


@pytest.fixture(scope="module")
def pro_stack():
    with tempfile.TemporaryDirectory(prefix="apiinone-pricing-") as tmp:
        catalog = Path(tmp) / "catalog.toml"
        catalog.write_text(PRO_CATALOG)
        st = Stack(make_settings(Path(tmp) / "data"), quiet=True, env={"APIINONE_CATALOG": str(catalog)})
        try:
            st.start()
            yield st
        finally:
            st.stop()


async def test_the_long_context_tier_prices_the_whole_request(pro_stack):
    admin = Admin(pro_stack.base_url, pro_stack.settings.admin_token)
    _, key = admin.account_with_key(500)
    # A prompt whose bound is over 200,000 tokens: its hold is planned at the long-context tier.
    long_prompt = "x" * 400_100
    async with httpx.AsyncClient(base_url=pro_stack.base_url, timeout=60) as http:
        models = (await http.get("/api/v1/models/gemini-pro", headers={"Authorization": f"Bearer {key}"})).json()
        assert models["pricing"]["long_context"] == {"above_prompt_tokens": 200_000, "input": 400, "cached_input": 40,
                                                     "output": 1800}
        # Exactly 200,000 prompt tokens is not MORE than the threshold: the standard tier.
        usage, row = await charged(http, key, sim("gemini-pro", "prompt_tokens=200000 cached_tokens=50000 "
                                                                "output_tokens=800 thinking_tokens=200", long_prompt), 1)
        assert_breakdown(usage, row, "standard", 1_000_000, (30_000_000, 1_000_000, 1_200_000))
        usage, row = await charged(http, key, sim("gemini-pro", "prompt_tokens=250000 cached_tokens=50000 "
                                                                "output_tokens=800 thinking_tokens=200", long_prompt), 2)
        assert row["reasoning_tokens"] == 200
        assert_breakdown(usage, row, "long_context", 1_000_000, (80_000_000, 2_000_000, 1_800_000))
    assert admin.audit()["ok"]
