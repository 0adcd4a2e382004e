"""A local fake of the Stripe endpoints the product calls, and events signed as Stripe signs them.

Runs on a free loopback port in a thread of its own (the stack's gateway calls it as STRIPE_API_BASE).
Its checkout sessions' URLs are its own hosted checkout page (``/pay/<session id>``): "Pay" completes
the session, sends the browser to the session's success URL and delivers ``checkout.session.completed``,
signed with ``webhook_secret``, to ``webhook_url`` (at once, or when ``release()`` is called while
``hold_webhooks`` is set, as a real provider's webhook may land after the customer is back); "Cancel"
sends the browser to the cancel URL.

On its own, for trying payments on ``make run`` (it prints the settings to start the stack with):

    .venv/bin/python -m tests.stripe_fake --port 8098 --webhook-url http://127.0.0.1:8080/billing/webhooks/stripe
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import threading
import time
import uuid
from urllib.parse import parse_qsl

import orjson
from aiohttp import ClientSession, web


def sign(payload: bytes, secret: str, timestamp: int | None = None) -> str:
    """The Stripe-Signature header: t=<unix s>,v1=<HMAC-SHA256 of "<t>.<payload>" with the secret>."""
    t = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{t}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def event(etype: str, obj: dict) -> bytes:
    return orjson.dumps({"id": "evt_" + uuid.uuid4().hex[:24], "object": "event", "type": etype,
                         "api_version": "2025-01-01", "created": int(time.time()), "data": {"object": obj}})


class FakeStripe:
    def __init__(self, port: int = 0) -> None:
        self.port = port
        self.sessions: dict[str, dict] = {}
        self.url = ""
        self.webhook_url = ""
        self.webhook_secret = ""
        self.hold_webhooks = False
        self._held: list[bytes] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None

    async def _create_session(self, request: web.Request) -> web.Response:
        form = dict(parse_qsl(await request.text()))
        if not request.headers.get("Authorization", "").startswith("Bearer sk_"):
            return web.json_response({"error": {"type": "invalid_request_error", "message": "no key"}}, status=401)
        sid = "cs_test_" + uuid.uuid4().hex
        session = {"id": sid, "object": "checkout.session", "url": f"{self.url}/pay/{sid}",
                   "success_url": form.get("success_url"), "cancel_url": form.get("cancel_url"),
                   "amount_total": int(form["line_items[0][price_data][unit_amount]"]),
                   "currency": form["line_items[0][price_data][currency]"], "payment_status": "unpaid",
                   "status": "open", "client_reference_id": form.get("client_reference_id"), "payment_intent": None,
                   "metadata": {"order_id": form.get("metadata[order_id]")}}
        self.sessions[sid] = session
        return web.json_response(session)

    async def _checkout_page(self, request: web.Request) -> web.Response:
        session = self.sessions.get(request.match_info["sid"])
        if session is None:
            return web.Response(status=404, text="no such checkout session")
        sid = session["id"]
        return web.Response(content_type="text/html", text=(
            f"<!doctype html><title>Fake checkout</title><h1>Pay {session['amount_total'] / 100:.2f} "
            f"{session['currency'].upper()}</h1><form method=post action='/pay/{sid}/pay'><button>Pay</button></form>"
            f"<form method=post action='/pay/{sid}/cancel'><button>Cancel</button></form>"))

    async def _pay(self, request: web.Request) -> web.Response:
        session = self.sessions[request.match_info["sid"]]
        session.update(status="complete", payment_status="paid", payment_intent="pi_" + uuid.uuid4().hex[:24])
        body = event("checkout.session.completed", {k: v for k, v in session.items() if k != "url"})
        if self.hold_webhooks:
            self._held.append(body)
        else:
            await self._deliver(body)
        raise web.HTTPSeeOther(session["success_url"])

    async def _cancel(self, request: web.Request) -> web.Response:
        raise web.HTTPSeeOther(self.sessions[request.match_info["sid"]]["cancel_url"])

    async def _deliver(self, body: bytes) -> None:
        async with ClientSession() as http:
            async with http.post(self.webhook_url, data=body, headers={
                    "Stripe-Signature": sign(body, self.webhook_secret), "Content-Type": "application/json"}) as r:
                assert r.status == 200, await r.text()

    def release(self) -> None:
        """Deliver the held webhooks now."""
        held, self._held = self._held, []
        for body in held:
            asyncio.run_coroutine_threadsafe(self._deliver(body), self._loop).result(10)

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/checkout/sessions", self._create_session)
        app.router.add_get("/pay/{sid}", self._checkout_page)
        app.router.add_post("/pay/{sid}/pay", self._pay)
        app.router.add_post("/pay/{sid}/cancel", self._cancel)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        self.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"

    def start(self) -> FakeStripe:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


def main() -> None:
    """Run the fake alone until Ctrl-C, delivering signed webhooks to a running gateway."""
    ap = argparse.ArgumentParser(prog="python -m tests.stripe_fake", description=main.__doc__)
    ap.add_argument("--port", type=int, default=8098)
    ap.add_argument("--webhook-url", default="http://127.0.0.1:8080/billing/webhooks/stripe")
    ap.add_argument("--webhook-secret", default="whsec_fake_" + uuid.uuid4().hex)
    args = ap.parse_args()
    fake = FakeStripe(args.port)
    fake.webhook_url, fake.webhook_secret = args.webhook_url, args.webhook_secret
    fake.start()
    print(f"fake Stripe on {fake.url}; start the stack with:\n"
          f"  STRIPE_SECRET_KEY=sk_test_fake STRIPE_WEBHOOK_SECRET={fake.webhook_secret} "
          f"STRIPE_API_BASE={fake.url} make run", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        fake.stop()


if __name__ == "__main__":
    main()
