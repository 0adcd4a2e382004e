"""GET /api/v1/models and /api/v1/models/{id}: OpenAI's list and object shapes plus catalog data.

An alias (the catalog's ``[aliases]``) is listed as a model object of its own, so that an OpenAI SDK's
``models.list()`` shows every id a request may name and ``models.retrieve(alias)`` answers: its
``id`` is the alias, ``alias_for`` names the model it serves (and bills) as, and the rest is that
model's data. Each entry lists in ``aliases`` the other names of its model (never its own id).
"""

from __future__ import annotations

from aiohttp import web

from gateway.state import GATEWAY
from shared.catalog import Catalog, Model
from shared.errors import not_found


def model_object(catalog: Catalog, model: Model, requested: str) -> dict:
    out = model.public()
    # The other names that serve as this model: an alias's own entry does not list itself.
    out["aliases"] = sorted(a for a, target in catalog.aliases.items() if target == model.id and a != requested)
    if requested != model.id:
        out.update(id=requested, alias_for=model.id)
    return out


async def list_models(request: web.Request) -> web.Response:
    catalog = request.app[GATEWAY].catalog
    data = [model_object(catalog, m, m.id) for m in catalog.models.values()]
    data += [model_object(catalog, catalog.models[target], alias) for alias, target in sorted(catalog.aliases.items())]
    return web.json_response({"object": "list", "data": data})


async def get_model(request: web.Request) -> web.Response:
    catalog = request.app[GATEWAY].catalog
    model_id = request.match_info["model_id"]
    model = catalog.resolve(model_id)
    if model is None:
        raise not_found(f"The model '{model_id}' does not exist.", code="model_not_found", param="model")
    return web.json_response(model_object(catalog, model, model_id))
