"""The dashboard: keys, credits, usage, orders, models and a playground, in the browser, under /dashboard.

Server-rendered (aiohttp-jinja2) with a little plain JS; every asset is served
from ``/dashboard/static``, nothing from a CDN. Mounted on the gateway by
``setup(app)`` as a sub-application, so its cookie, its middleware (sign-in,
CSRF, HTML errors, security headers) and its pages stay apart from the API.
The session cookie is scoped to ``/dashboard``: the browser never sends it to
``/api/v1``, and the playground calls the API with an API key the user gives.
"""

from __future__ import annotations

from pathlib import Path

import aiohttp_jinja2
import jinja2
from aiohttp import web

from gateway.state import GATEWAY
from gateway.dashboard import alerts, codes, operator, selfserve, signin, topup, views
from gateway.dashboard.render import FILTERS, SESSIONS, THROTTLE, USERS, guard
from gateway.dashboard.session import IDLE_S, MAX_AGE_S, Sessions
from gateway.dashboard.throttle import LoginThrottle
from shared.mail import Mailer
from shared.self_service import SelfService
from shared.users import Users

HERE = Path(__file__).parent
DASHBOARD_APP = web.AppKey("dashboard_app", web.Application)


def setup(app: web.Application) -> web.Application:
    """Mount the dashboard on the gateway app (its admin API, /admin/users, is in gateway/routes.py)."""
    gw = app[GATEWAY]  # created by create_app before the dashboard is mounted
    settings = gw.settings
    sub = web.Application(middlewares=[guard])
    env = aiohttp_jinja2.setup(sub, loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True,
                               trim_blocks=True, lstrip_blocks=True)
    env.filters.update(FILTERS)
    sub[USERS] = Users(gw.redis, gw.directory)
    sub[SESSIONS] = Sessions(gw.redis, idle_s=getattr(settings, "dashboard_session_idle_s", None) or IDLE_S,
                             max_age_s=getattr(settings, "dashboard_session_max_age_s", None) or MAX_AGE_S)
    sub[THROTTLE] = LoginThrottle(gw.redis, gw.credits.scripts)
    selfserve.setup(sub, SelfService(gw.redis, sub[USERS], gw.accounts, settings), Mailer(settings))
    r = sub.router
    r.add_static("/static", HERE / "static", name="static", append_version=True)
    r.add_get("/login", signin.login_form, name="login")
    r.add_post("/login", signin.login)
    r.add_post("/logout", signin.logout, name="logout")
    r.add_get("", views.overview, name="overview")
    r.add_get("/", views.overview)
    r.add_get("/keys", views.keys_page, name="keys")
    r.add_post("/keys", views.create_key)
    r.add_post("/keys/{key_id}/revoke", views.revoke_key)
    r.add_get("/credits", views.credits_page, name="credits")
    topup.setup(sub)
    alerts.setup(sub)
    r.add_get("/usage", views.usage_view, name="usage")
    r.add_get("/usage.csv", views.usage_csv, name="usage_csv")
    r.add_get("/orders", views.orders_page, name="orders")
    r.add_get("/models", views.models_page, name="models")
    r.add_get("/playground", views.playground, name="playground")
    r.add_get("/account", views.account_page, name="account")
    r.add_post("/account/password", views.change_password)
    r.add_get("/admin/accounts", operator.accounts_page, name="admin_accounts")
    r.add_post("/admin/accounts", operator.create_account)
    r.add_get("/admin/accounts/{account_id}", operator.account_page, name="admin_account")
    r.add_post("/admin/accounts/{account_id}/topup", operator.topup)
    r.add_post("/admin/accounts/{account_id}/adjust", operator.adjust)
    r.add_post("/admin/accounts/{account_id}/price", operator.price_multiplier)
    r.add_post("/admin/accounts/{account_id}/users", operator.create_user)
    r.add_post("/admin/accounts/{account_id}/view", operator.view_as)
    r.add_get("/admin/nodes", operator.nodes_page, name="admin_nodes")
    r.add_post("/admin/nodes/{node}/keys/{key}/enable", operator.enable_upstream_key)
    r.add_get("/admin/batches", operator.batches_page, name="admin_batches")
    codes.setup(sub)
    r.add_route("*", "/{tail:.*}", views.not_found)
    app.add_subapp("/dashboard", sub)
    app[DASHBOARD_APP] = sub
    return sub
