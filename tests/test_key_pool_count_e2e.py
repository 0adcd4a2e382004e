"""A hostile tenant's free count calls must not take upstream keys away from generation (real processes).

Google's ``countTokens`` has its own quota, separate from ``generateContent``'s. On node62, ``…dddd``
answers 429 to countTokens for a minute (the simulator's ``count429`` fault) and generates normally;
``…eeee`` works. Both keys have their own small requests per minute. Any tenant may send count calls,
which are free: a burst of them must neither cool ``…dddd`` down for generation (Google's 429 there
says nothing about generation's quota) nor spend either key's own requests per minute (they model
generation's quota); afterwards another tenant's generation is served on both keys as before.
"""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import Admin
from tests.pool_helpers import key_rows, own_stack, wait_until

SECRETS = {"dddd": "key-count-dddd", "eeee": "key-fine-eeee"}
DDDD_RPM, EEEE_RPM = 3, 3
COUNT_URL = "/api/v1beta/models/gemini:countTokens"
CHAT_URL = "/api/v1/chat/completions"


@pytest.fixture(scope="module")
def counted():
    env = {
        "APIINONE_NODE_KEYS_NODE62": f"{SECRETS['dddd']} rpm={DDDD_RPM},{SECRETS['eeee']} rpm={EEEE_RPM}",
        "APIINONE_SIMULATOR_KEY_FAULTS": f"{SECRETS['dddd']}=count429:60s",
    }
    with own_stack("apiinone-keycount-", env=env, workers_per_node=1, gateways=1) as st:
        yield st


async def test_count_429s_leave_generation_its_keys(counted):
    admin = Admin(counted.base_url, counted.settings.admin_token)
    _, attacker = admin.account_with_key(1000)
    _, victim = admin.account_with_key(1000)
    async with httpx.AsyncClient(base_url=counted.base_url, timeout=30) as http:
        # The attack: more free count calls than both keys' own requests per minute together.
        for _ in range(DDDD_RPM + EEEE_RPM + 2):
            r = await http.post(COUNT_URL, headers={"Authorization": f"Bearer {attacker}"},
                                json={"contents": [{"role": "user", "parts": [{"text": "count me"}]}]})
            assert r.status_code == 200 and r.json()["totalTokens"] > 0, r.text  # …dddd's 429: counted on …eeee

        rows = key_rows(admin)
        assert rows["dddd"]["state"] == "active", rows["dddd"]  # not cooled down for generation
        assert rows["dddd"]["rate_limited"] == 0, rows["dddd"]  # generation was never rate limited

        # Another tenant's generation: both keys' own minutes are whole, so every request is served at once.
        for _ in range(DDDD_RPM + EEEE_RPM):
            r = await http.post(CHAT_URL, headers={"Authorization": f"Bearer {victim}"}, json={
                "model": "gemini", "messages": [{"role": "user", "content": "hi [[sim output_tokens=8]]"}]})
            assert r.status_code == 200, r.text
    rows = await wait_until(lambda: (r := key_rows(admin))["dddd"]["requests"] + r["eeee"]["requests"]
                            >= DDDD_RPM + EEEE_RPM and r, 5)
    assert rows["dddd"]["requests"] == DDDD_RPM and rows["eeee"]["requests"] == EEEE_RPM, rows
    assert rows["dddd"]["state"] == "active" and rows["dddd"]["rate_limited"] == 0
