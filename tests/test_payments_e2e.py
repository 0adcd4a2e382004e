"""Stripe Checkout top-ups against a stack of their own and a local fake of Stripe, with events signed by a
test secret exactly as Stripe signs them: bad signatures, stale timestamps, replays (again and concurrently),
duplicates, out-of-order events, amount mismatches, partial refunds, disputes. The stack's ledger audit is
checked when it stops (tests/conftest.py ``audited_stack``)."""

from __future__ import annotations

import asyncio
import time
import uuid

import httpx
import pytest

from tests.conftest import Admin, audited_stack
from tests.stripe_fake import FakeStripe, event, sign

SECRET = "whsec_test_" + uuid.uuid4().hex
M = 1_000_000


@pytest.fixture(scope="module")
def fake():
    stripe = FakeStripe().start()
    yield stripe
    stripe.stop()


@pytest.fixture(scope="module")
def pay(fake):
    env = {"STRIPE_SECRET_KEY": "sk_test_fake", "STRIPE_WEBHOOK_SECRET": SECRET, "STRIPE_API_BASE": fake.url,
           "APIINONE_PAYMENT_PACKAGES": "starter=1000:1000:usd,pro=5500:5000:usd"}
    with audited_stack(env) as st:
        yield st, Admin(st.base_url, st.settings.admin_token)


def customer(pay) -> httpx.Client:
    st, admin = pay
    _, key = admin.account_with_key(0)
    return httpx.Client(base_url=st.base_url, headers={"Authorization": f"Bearer {key}"}, timeout=30)


def checkout(http: httpx.Client, package: str = "pro") -> dict:
    r = http.post("/billing/checkout", json={"package": package})
    assert r.status_code == 201, r.text
    return r.json()


def post_event(pay, etype: str, obj: dict, secret: str = SECRET, timestamp: int | None = None,
               header: str | None = None) -> httpx.Response:
    body = event(etype, obj)
    sig = header if header is not None else sign(body, secret, timestamp)
    return httpx.post(pay[0].base_url + "/billing/webhooks/stripe", content=body, timeout=30,
                      headers={"Stripe-Signature": sig, "Content-Type": "application/json"})


def session(order: dict, pi: str, paid: bool = True, **changes) -> dict:
    return {"id": order["session_id"], "object": "checkout.session", "amount_total": order["amount"],
            "currency": order["currency"], "payment_status": "paid" if paid else "unpaid", "payment_intent": pi,
            **changes}


def balance(http: httpx.Client) -> int:
    return http.get("/billing/credits").json()["balance_micro"]


def status(http: httpx.Client, order: dict) -> str:
    return next(p for p in http.get("/billing/payments").json()["data"] if p["id"] == order["id"])["status"]


def test_a_checkout_is_a_pending_order_with_the_session(pay, fake):
    http = customer(pay)
    assert [p["id"] for p in http.get("/billing/packages").json()["data"]] == ["starter", "pro"]
    order = checkout(http)
    assert order["status"] == "pending" and order["amount"] == 5000 and order["currency"] == "usd"
    assert order["url"] == f"{fake.url}/pay/{order['session_id']}" and order["session_id"] in fake.sessions
    assert fake.sessions[order["session_id"]]["amount_total"] == 5000
    assert status(http, order) == "pending" and balance(http) == 0
    bad = http.post("/billing/checkout", json={"package": "gold"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "package"


async def test_a_payment_credits_once_however_often_it_is_delivered(pay):
    http = customer(pay)
    order = checkout(http)
    for _ in range(3):
        assert post_event(pay, "checkout.session.completed", session(order, "pi_a" + order["id"])).status_code == 200
    async with httpx.AsyncClient() as ahttp:
        body = event("checkout.session.completed", session(order, "pi_a" + order["id"]))
        replies = await asyncio.gather(*(ahttp.post(
            pay[0].base_url + "/billing/webhooks/stripe", content=body,
            headers={"Stripe-Signature": sign(body, SECRET)}) for _ in range(10)))
    assert {r.status_code for r in replies} == {200}
    assert balance(http) == 5500 * M and status(http, order) == "paid"
    orders = http.get("/billing/orders").json()["data"]
    assert [o["kind"] for o in orders] == ["topup"] and orders[0]["amount_micro"] == 5500 * M


def test_an_event_without_a_valid_signature_is_400_and_changes_nothing(pay):
    http = customer(pay)
    order = checkout(http)
    paid = session(order, "pi_b" + order["id"])
    for kwargs in ({"secret": "whsec_wrong"}, {"timestamp": int(time.time()) - 3600}, {"header": ""},
                   {"header": "t=1,v1=deadbeef"}, {"timestamp": int(time.time()) + 3600}):
        r = post_event(pay, "checkout.session.completed", paid, **kwargs)
        assert r.status_code == 400, (kwargs, r.text)
    body = event("checkout.session.completed", paid)
    tampered = httpx.post(pay[0].base_url + "/billing/webhooks/stripe", content=body.replace(b"5000", b"5001"),
                          headers={"Stripe-Signature": sign(body, SECRET)})
    assert tampered.status_code == 400
    assert balance(http) == 0 and status(http, order) == "pending"


def test_amount_or_currency_mismatch_credits_nothing(pay):
    http = customer(pay)
    order = checkout(http)
    assert post_event(pay, "checkout.session.completed",
                      session(order, "pi_c", amount_total=100)).json()["results"] == ["mismatch"]
    assert post_event(pay, "checkout.session.completed",
                      session(order, "pi_c", currency="eur")).json()["results"] == ["mismatch"]
    assert balance(http) == 0 and status(http, order) == "pending"


def test_statuses_only_move_forward(pay):
    http = customer(pay)
    order = checkout(http, "starter")
    pi = "pi_d" + order["id"]
    assert post_event(pay, "checkout.session.completed", session(order, pi, paid=False)).status_code == 200
    assert balance(http) == 0 and status(http, order) == "pending"  # an async payment method: not paid yet
    assert post_event(pay, "checkout.session.async_payment_succeeded", session(order, pi)).status_code == 200
    assert balance(http) == 1000 * M and status(http, order) == "paid"
    assert post_event(pay, "checkout.session.expired", session(order, pi, paid=False)).status_code == 200
    assert post_event(pay, "checkout.session.async_payment_failed", session(order, pi, paid=False)).status_code == 200
    assert status(http, order) == "paid" and balance(http) == 1000 * M
    lapsed = checkout(http, "starter")
    assert post_event(pay, "checkout.session.expired", session(lapsed, None, paid=False)).status_code == 200
    assert status(http, lapsed) == "expired"


def test_partial_refunds_take_back_in_proportion_and_out_of_order_events_wait(pay):
    http = customer(pay)
    order = checkout(http)  # 5500 credits for 5000 cents
    pi = "pi_e" + order["id"]
    early = post_event(pay, "refund.created", {"id": "re_early" + pi, "object": "refund", "amount": 500,
                                               "currency": "usd", "payment_intent": pi, "status": "succeeded"})
    assert early.status_code == 409  # before its payment: Stripe delivers it again later
    assert post_event(pay, "checkout.session.completed", session(order, pi)).status_code == 200
    first = {"id": "re_1" + pi, "object": "refund", "amount": 1000, "currency": "usd", "status": "succeeded"}
    for _ in range(3):
        r = post_event(pay, "refund.created", {**first, "payment_intent": pi})
        assert r.status_code == 200, r.text
    assert balance(http) == 4400 * M and status(http, order) == "paid"  # 1000/5000 of 5500 taken back
    second = {"id": "re_2" + pi, "object": "refund", "amount": 4000, "currency": "usd", "status": "succeeded"}
    charge = {"id": "ch_" + pi, "object": "charge", "payment_intent": pi, "amount": 5000, "amount_refunded": 5000,
              "refunds": {"object": "list", "data": [second, first]}}
    for _ in range(3):
        assert post_event(pay, "charge.refunded", charge).status_code == 200
    assert balance(http) == 0 and status(http, order) == "refunded"
    ledger = http.get("/billing/ledger").json()["data"]
    assert sorted(e["reason"] for e in ledger) == ["refund", "refund", "topup"]


def test_a_dispute_takes_credits_back_below_zero_and_a_won_one_returns_them(pay):
    st, admin = pay
    http = customer(pay)
    order = checkout(http, "starter")
    pi = "pi_f" + order["id"]
    dispute = {"id": "dp_" + pi, "object": "dispute", "amount": 1000, "currency": "usd", "payment_intent": pi}
    assert post_event(pay, "charge.dispute.closed", {**dispute, "status": "won"}).status_code == 409
    assert post_event(pay, "checkout.session.completed", session(order, pi)).status_code == 200
    key = http.headers["Authorization"].split()[1]
    chat = httpx.post(st.base_url + "/api/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                      json={"model": "gemini", "messages": [{"role": "user", "content": "hi"}]}, timeout=30)
    assert chat.status_code == 200
    for _ in range(3):
        assert post_event(pay, "charge.dispute.created", {**dispute, "status": "needs_response"}).status_code == 200
    assert balance(http) < 0  # the request's charge stays; the disputed credits are taken back
    refused = httpx.post(st.base_url + "/api/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                         json={"model": "gemini", "messages": [{"role": "user", "content": "hi"}]}, timeout=30)
    assert refused.status_code == 402
    for _ in range(3):
        assert post_event(pay, "charge.dispute.closed", {**dispute, "status": "won"}).status_code == 200
    assert 0 < balance(http) < 1000 * M
    assert admin.audit()["ok"]
