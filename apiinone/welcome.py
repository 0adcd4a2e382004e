"""What `apiinone run` does once the stack is up: a demo account and a first operator on an empty
store, and the banner that tells the user how to call it.

Everything the banner prints works when pasted on a machine with only what `make run` installed:
the Python snippet names this very interpreter (the venv's, which has ``openai``), not whatever
``python3`` the shell finds first.
"""

from __future__ import annotations

import importlib.util
import json
import secrets
import shlex
import sys
import urllib.request
from pathlib import Path


def admin_call(base_url: str, admin_token: str, method: str, path: str, body: dict | None = None) -> dict:
    """One admin API call, with nothing but the standard library (the launcher runs before any client)."""
    req = urllib.request.Request(base_url + path, method=method,
                                 data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Authorization": f"Bearer {admin_token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def ensure_demo_account(base_url: str, admin_token: str, data_dir: Path) -> str | None:
    """On an empty store, create a demo account (100 credits) and key; remember the key locally."""
    def call(method: str, path: str, body: dict | None = None) -> dict:
        return admin_call(base_url, admin_token, method, path, body)

    key_file = data_dir / "demo-key"
    if not call("GET", "/admin/accounts")["data"]:
        account = call("POST", "/admin/accounts", {"name": "demo", "credits": 100})
        key = call("POST", f"/admin/accounts/{account['id']}/keys", {"name": "demo"})
        key_file.write_text(key["key"] + "\n")
        key_file.chmod(0o600)
    return key_file.read_text().strip() if key_file.exists() else None


def ensure_operator(base_url: str, admin_token: str, data_dir: Path) -> tuple[str, str] | None:
    """With no dashboard user yet, create a first operator (on the demo account); remember the login locally."""
    def call(method: str, path: str, body: dict | None = None) -> dict:
        return admin_call(base_url, admin_token, method, path, body)

    login_file = data_dir / "operator-login"
    if not call("GET", "/admin/users")["data"]:
        accounts = call("GET", "/admin/accounts")["data"]
        home = next((a for a in accounts if a["name"] == "demo"), accounts[0] if accounts else None)
        home = home or call("POST", "/admin/accounts", {"name": "operators", "credits": 0})
        email, password = "admin@apiinone.local", secrets.token_urlsafe(12)
        call("POST", "/admin/users", {"email": email, "password": password, "account_id": home["id"],
                                      "role": "operator"})
        login_file.write_text(f"{email}\n{password}\n")
        login_file.chmod(0o600)
    if login_file.exists():
        email, password = login_file.read_text().split()[:2]
        return email, password
    return None


def python_snippet(base_url: str, key: str) -> str:
    """The openai SDK call, run by this interpreter: `make run`'s venv has the SDK (the dev extra)."""
    python = shlex.quote(sys.executable)
    install = "" if importlib.util.find_spec("openai") else f"  {python} -m pip install openai\n"
    return f"""{install}  {python} -c '
from openai import OpenAI
client = OpenAI(base_url="{base_url}/api/v1", api_key="{key}")
r = client.chat.completions.create(model="gemini", messages=[{{"role": "user", "content": "Hello!"}}])
print(r.choices[0].message.content)'"""


def self_service_line(signup_enabled: bool, payments_enabled: bool) -> str:
    """What customers can do on their own, and the setting that turns each on."""
    signup = "on" if signup_enabled else "off (APIINONE_SIGNUP_ENABLED=true)"
    payments = "Stripe Checkout" if payments_enabled else "off (STRIPE_SECRET_KEY)"
    return f"\n  Customer sign-up:             {signup}\n  Customer payments:            {payments}"


def banner(base_url: str, admin_token: str, demo_key: str | None, operator: tuple[str, str] | None = None,
           mail_folder: Path | None = None, self_service: str = "") -> str:
    key = demo_key or "<your aio_ key>"
    mail = f"\n  Mail (no SMTP configured):    {mail_folder}/*.eml" if mail_folder else ""
    login = f"{operator[0]} / {operator[1]}" if operator else "(a user you created; `apiinone admin users create`)"
    return f"""
apiinone is running.

  Base URL (OpenAI-compatible): {base_url}/api/v1
  Admin token:                  {admin_token}
  Demo API key (100 credits):   {key}
  Dashboard:                    {base_url}/dashboard
  Dashboard operator login:     {login}{mail}{self_service}

Try it:

  curl {base_url}/api/v1/chat/completions \\
    -H "Authorization: Bearer {key}" \\
    -H "Content-Type: application/json" \\
    --data-raw '{{"model": "gemini", "messages": [{{"role": "user", "content": "Explain quantum computing in simple terms."}}], "stream": false, "include_thoughts": true}}'

{python_snippet(base_url, key)}

  Balance: curl -H "Authorization: Bearer {key}" {base_url}/billing/credits
  Nodes:   curl -H "Authorization: Bearer {admin_token}" {base_url}/admin/nodes

A child that crashes is restarted on its own (see "supervisors" in /admin/nodes).
Ctrl-C stops everything.
"""
