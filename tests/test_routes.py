"""One route table (gateway/routes.py): what the gateway serves is exactly what /openapi.json documents."""

from __future__ import annotations

import httpx
import pytest
from aiohttp import web

from gateway.app import create_app
from gateway.routes import ROUTES, Route, document
from shared.settings import Settings


def served_operations(app: web.Application) -> set[tuple[str, str]]:
    """(METHOD, path) of every route on the app's router, outside the dashboard's sub-application."""
    out = set()
    for resource in app.router.resources():
        path = resource.canonical
        if path.startswith("/dashboard"):
            continue  # the browser UI: HTML pages and static files, not API routes
        for route in resource:
            out.add((route.method, path))
    get_paths = {p for m, p in out if m == "GET"}
    # aiohttp answers HEAD wherever it answers GET; HEAD alone would be a route of its own.
    return {(m, p) for m, p in out if not (m == "HEAD" and p in get_paths)}


def documented_operations(doc: dict) -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, ops in doc["paths"].items() for method in ops}


def test_every_served_route_is_documented_and_every_documented_route_is_served():
    app = create_app(Settings(redis_url="redis://127.0.0.1:1/0", admin_token="adm_routes_test_token"))  # never connects
    served, documented = served_operations(app), documented_operations(document())
    assert served - documented == set(), "served but not in /openapi.json"
    assert documented - served == set(), "in /openapi.json but not served"
    assert ("POST", "/admin/users") in served and ("GET", "/metrics") in served


def test_the_live_gateway_serves_the_same_document(stack):
    served = httpx.get(stack.base_url + "/openapi.json").json()
    assert served == document()
    for path, ops in served["paths"].items():
        for method, op in ops.items():
            assert op["summary"] and op["responses"], (method, path)


def test_declared_security_is_enforced(stack, funded):
    """A route that says apiKey refuses the admin token and no token; adminToken refuses API keys."""
    _, key = funded
    for route in ROUTES:
        if route.security is None or route.params:
            continue
        path = route.path
        for token in (None, "aio_wrong"):
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            r = httpx.request(route.method, stack.base_url + path, headers=headers, timeout=30)
            assert r.status_code == 401, (route.method, path, token, r.status_code)
        if route.security == "adminToken":
            r = httpx.request(route.method, stack.base_url + path, headers={"Authorization": f"Bearer {key}"},
                              timeout=30)
            assert r.status_code == 401, (route.method, path, "api key on an admin route")


def test_a_path_parameter_must_be_declared():
    async def handler(request):
        return web.Response()

    with pytest.raises(ValueError):
        Route("GET", "/x/{thing_id}", handler, "undeclared parameter")
