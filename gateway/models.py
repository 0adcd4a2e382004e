"""GET /api/v1/models and /api/v1/models/{id}: OpenAI's list and object shapes plus catalog data."""

from __future__ import annotations

from aiohttp import web

from gateway.state import GATEWAY
from shared.errors import not_found


async def list_models(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    return web.json_response({"object": "list", "data": [m.public() for m in gw.catalog.models.values()]})


async def get_model(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    model = gw.catalog.models.get(request.match_info["model_id"])
    if model is None:
        raise not_found(f"The model '{request.match_info['model_id']}' does not exist.", code="model_not_found",
                        param="model")
    return web.json_response(model.public())
