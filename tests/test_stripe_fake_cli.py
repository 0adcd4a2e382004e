"""The local Stripe fake runs on its own (``python -m tests.stripe_fake``), so a ``make run`` user can point
STRIPE_API_BASE at it and try payments end to end, as the README says."""

import subprocess
import sys

import httpx

from apiinone.launcher import free_port


def test_the_fake_starts_alone_on_a_given_port_and_prints_the_settings():
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tests.stripe_fake", "--port", str(port),
                             "--webhook-url", "http://127.0.0.1:1/billing/webhooks/stripe", "--webhook-secret", "whsec_x"],
                            stdout=subprocess.PIPE, text=True)
    try:
        banner = proc.stdout.readline() + proc.stdout.readline()
        assert f"http://127.0.0.1:{port}" in banner
        assert f"STRIPE_WEBHOOK_SECRET=whsec_x STRIPE_API_BASE=http://127.0.0.1:{port}" in banner
        r = httpx.post(f"http://127.0.0.1:{port}/v1/checkout/sessions", headers={"Authorization": "Bearer sk_test_x"},
                       data={"line_items[0][price_data][unit_amount]": "1000",
                             "line_items[0][price_data][currency]": "usd", "success_url": "http://x/ok"})
        assert r.status_code == 200 and r.json()["url"] == f"http://127.0.0.1:{port}/pay/{r.json()['id']}"
    finally:
        proc.terminate()
        proc.wait(10)
