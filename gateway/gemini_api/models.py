"""Gemini's model list and model object (``GET /api/v1beta/models[/{model}]``, and the same under ``/api/v1``).

google-genai with only a base URL set calls ``/v1/models`` and ``/v1/models/{model}``: the paths of
OpenAI's model list and object. The two are told apart by what only Google's clients send
(``speaks_gemini``): an ``x-goog-api-key`` or ``x-goog-api-client`` header, or a ``key``,
``pageSize`` or ``pageToken`` query parameter. Such a request gets Gemini's shape (and Google's
errors); any other (the openai SDKs: Bearer, no such parameter) gets OpenAI's. Under ``/api/v1beta``
it is always Gemini's.

The entries are built once per catalog object (a Catalog is frozen: a new one is a new object).
"""

from __future__ import annotations

from aiohttp import web

from gateway.exchange import json_response
from gateway.inputs import QueryParam, int_param
from gateway.state import GATEWAY, Gateway
from shared.catalog import Catalog, Model
from shared.errors import ApiError, bad_request, not_found

GOOGLE_HEADERS = ("x-goog-api-key", "x-goog-api-client")
GOOGLE_QUERY = ("key", "pageSize", "pageToken")
DEFAULT_PAGE, MAX_PAGE = 50, 1000  # Google's ListModels: 50 by default, at most 1000
GENERATION_METHODS = ["generateContent", "streamGenerateContent", "countTokens"]
KEY_PARAM = QueryParam("key", {"type": "string"}, "The API key (instead of x-goog-api-key or Bearer).")
QUERY = (KEY_PARAM,
         QueryParam("pageSize", {"type": "integer", "minimum": 1, "maximum": MAX_PAGE, "default": DEFAULT_PAGE},
                    "How many models, at most."),
         QueryParam("pageToken", {"type": "string"}, "The nextPageToken of the previous page."))


def speaks_gemini(request: web.Request) -> bool:
    """Whether a request to a path both APIs share (``/api/v1/models...``) comes from a Gemini client."""
    headers, query = request.headers, request.query
    return any(h in headers for h in GOOGLE_HEADERS) or any(q in query for q in GOOGLE_QUERY)


def served_natively(catalog: Catalog, model: Model) -> bool:
    """Models whose provider speaks Gemini's API (an OpenAI-compatible upstream has no native form)."""
    return catalog.providers[model.provider].adapter == "gemini"


def missing_model(name: str, method: str = "generateContent") -> ApiError:
    return not_found(f"models/{name} is not found for API version v1beta, or is not supported for {method}. "
                     "Call ListModels to see the list of available models and their supported methods.",
                     code="model_not_found", param="model")


def model_entry(model: Model) -> dict:
    return {"name": f"models/{model.id}", "baseModelId": model.id, "version": model.upstream_model,
            "displayName": model.display_name, "description": f"{model.display_name}, served by apiinone",
            "inputTokenLimit": model.context_window, "outputTokenLimit": model.max_output_tokens,
            "supportedGenerationMethods": GENERATION_METHODS, "thinking": model.thinking != "none"}


_built: tuple[Catalog, list[dict], dict[str, dict]] | None = None  # (for this catalog, entries, by model id)


def native_entries(catalog: Catalog) -> tuple[list[dict], dict[str, dict]]:
    """The natively served models' entries in catalog order, and by id: built once per catalog."""
    global _built
    if _built is None or _built[0] is not catalog:
        native = [m for m in catalog.models.values() if served_natively(catalog, m)]
        entries = [model_entry(m) for m in native]
        _built = (catalog, entries, {m.id: e for m, e in zip(native, entries)})
    return _built[1], _built[2]


def page(entries: list[dict], size: int | None, token: str | None) -> dict:
    """One page of ``entries``: ``pageToken`` is where the page starts (the previous page's ``nextPageToken``)."""
    size = DEFAULT_PAGE if size is None else size
    if not 1 <= size <= MAX_PAGE:
        raise bad_request(f"pageSize must be between 1 and {MAX_PAGE}.", param="pageSize")
    start = 0
    if token:
        if not token.isdigit() or int(token) > len(entries):
            raise bad_request("Invalid pageToken: pass the nextPageToken of the previous page.", param="pageToken")
        start = int(token)
    out: dict = {"models": entries[start:start + size]}
    if start + size < len(entries):
        out["nextPageToken"] = str(start + size)
    return out


async def list_models(request: web.Request) -> web.Response:
    gw: Gateway = request.app[GATEWAY]
    entries, _ = native_entries(gw.catalog)
    return json_response(page(entries, int_param(request, "pageSize", None), request.query.get("pageToken")))


async def get_model(request: web.Request) -> web.Response:
    gw: Gateway = request.app[GATEWAY]
    name = request.match_info.get("model") or request.match_info["model_id"]
    entry = native_entries(gw.catalog)[1].get(name)
    if entry is None:
        raise missing_model(name, "get")
    return json_response(entry)
