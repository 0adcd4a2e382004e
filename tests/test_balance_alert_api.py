"""GET/POST /billing/alert (gateway/balance_alert.py): the low-balance alert set over the API with the account's
key, as the dashboard's Credits page sets it; bad input is a 400 naming its param and changes nothing."""

from __future__ import annotations

import time

import httpx


def call(stack, key: str, method: str, json=None) -> httpx.Response:
    return httpx.request(method, stack.base_url + "/billing/alert", json=json, timeout=10,
                         headers={"Authorization": f"Bearer {key}"})


def test_an_alert_set_over_the_api_fires_once_on_the_next_charge_below_it(stack, funded):
    _account, key = funded
    assert call(stack, key, "GET").json() == {"object": "billing.alert", "enabled": False, "threshold": None,
                                              "threshold_micro": None, "webhook_url": None, "armed": False,
                                              "alerted_at": None}
    r = call(stack, key, "POST", {"threshold": 150, "webhook_url": "https://hooks.example.com/low"})
    assert r.status_code == 200, r.text
    alert = r.json()
    assert alert["enabled"] and alert["armed"] and alert["threshold"] == 150
    assert alert["threshold_micro"] == 150_000_000 and alert["webhook_url"] == "https://hooks.example.com/low"

    # 100 credits is below 150 already: the next charge alerts, once (shared/low_balance.py)
    chat = httpx.post(stack.base_url + "/api/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                      json={"model": "gemini", "messages": [{"role": "user", "content": "hi"}]}, timeout=30)
    assert chat.status_code == 200, chat.text
    deadline = time.monotonic() + 15
    while (alert := call(stack, key, "GET").json())["armed"] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not alert["armed"] and alert["alerted_at"], alert

    off = call(stack, key, "POST", {"threshold": None})
    assert off.status_code == 200 and not off.json()["enabled"]
    assert not call(stack, key, "GET").json()["enabled"]


def test_bad_settings_are_refused_naming_their_param_and_change_nothing(stack, funded):
    _account, key = funded
    assert call(stack, key, "POST", {"threshold": 5}).status_code == 200
    for body, param in (({"threshold": -1}, "threshold"), ({"threshold": "ten"}, "threshold"),
                        ({"threshold": 10**12}, "threshold"), ({}, "threshold"),
                        ({"threshold": 5, "webhook_url": "ftp://hooks.example.com/x"}, "webhook_url"),
                        ({"threshold": 5, "webhook_url": "https://" + "a" * 2100 + ".com"}, "webhook_url")):
        r = call(stack, key, "POST", body)
        assert r.status_code == 400, (body, r.text)
        assert r.json()["error"]["param"] == param, (body, r.json())
    alert = call(stack, key, "GET").json()
    assert alert["threshold"] == 5 and alert["webhook_url"] is None  # unchanged
    assert httpx.get(stack.base_url + "/billing/alert", timeout=10).status_code == 401
