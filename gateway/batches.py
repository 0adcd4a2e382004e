"""OpenAI's Batches API: /api/v1/batches (the account's API key).

The gateway only records a batch (status ``validating``) and wakes the batch
worker (``worker/batch/``), which validates, runs and finalizes it. A batch
may carry ``metadata.callback_url``: on a terminal status the batch worker
POSTs a signed event there (``worker/batch/callbacks.py``); the signing secret
is ``GET /api/v1/webhook_secret``. The URL must be public ``https``
(``shared/callback_targets.py``): refused here when its scheme or IP-literal
host breaks the rule, and its host name is checked again when the worker
connects.
"""

from __future__ import annotations

import orjson
from aiohttp import web

from gateway.account_caps import require_batch_room
from gateway.auth import request_key
from gateway.files import file_store, store
from gateway.inputs import Paging, read_body
from gateway.state import GATEWAY
from shared import ids
from shared.batch_store import TERMINAL, BatchStatus
from shared.callback_targets import url_refusal
from shared.credits import AccountNotFound
from shared.errors import ApiError, bad_request, not_found
from shared.protocol import BatchCreateRequest
from shared.webhook_secrets import previous_secret_expires_at, rotate, webhook_secret

# A cursor is a batch id: anything else could name no batch (and a NUL would reach Postgres: the fuzz run's 500).
PAGING = Paging(20, 100, "The id of the last batch of the previous page.", ids.BATCH.matches, ids.BATCH.pattern)


def _json(obj: dict, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(obj), status=status, content_type="application/json")


async def create(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    key = request_key(request)
    body = await read_body(request, BatchCreateRequest)
    callback_url = (body.metadata or {}).get("callback_url")
    if callback_url is not None:
        refusal = url_refusal(callback_url, gw.settings.callback_allow_private)
        if refusal is not None:
            raise bad_request(f"metadata.callback_url {refusal}.", param="metadata.callback_url", code="invalid_value")
    s = store(request)
    await require_batch_room(request, s, key)
    record = await file_store(request).get_file(key.account_id, body.input_file_id)
    if record is None:
        raise not_found(f"No such File object: {body.input_file_id}", param="input_file_id")
    if record["purpose"] != "batch":
        raise bad_request(f"File {record['id']} has purpose {record['purpose']!r}; a batch needs purpose 'batch'.",
                          param="input_file_id", code="invalid_value")
    # The batch runs under its key's current record (limits, revocation), read as its lines are admitted.
    batch = await s.create_batch(key.account_id, key.id, record["id"], body.endpoint, body.completion_window,
                                 body.metadata, gw.settings.batch_window_s)
    return _json(batch)


async def _owned(request: web.Request) -> dict:
    key = request_key(request)
    batch_id = request.match_info["batch_id"]
    batch = await store(request).get_batch(batch_id, key.account_id)
    if batch is None:
        raise not_found(f"No such Batch object: {batch_id}", param="batch_id")
    return batch


async def retrieve(request: web.Request) -> web.Response:
    return _json(await _owned(request))


async def cancel(request: web.Request) -> web.Response:
    batch = await _owned(request)
    if batch["status"] in (BatchStatus.CANCELLING, BatchStatus.CANCELLED):
        return _json(batch)
    if batch["status"] in TERMINAL or batch["status"] == "finalizing":
        raise ApiError(409, f"Cannot cancel a batch with status '{batch['status']}'.", "invalid_request_error",
                       "batch_not_cancellable")
    result = await store(request).request_cancel(batch["id"])
    batch = await store(request).get_batch(batch["id"])
    if result != "ok" and batch["status"] not in (BatchStatus.CANCELLING, BatchStatus.CANCELLED):
        raise ApiError(409, f"Cannot cancel a batch with status '{batch['status']}'.", "invalid_request_error",
                       "batch_not_cancellable")
    return _json(batch)


async def list_batches(request: web.Request) -> web.Response:
    key = request_key(request)
    limit, after = PAGING.read(request)
    data, more = await store(request).list_batches(key.account_id, after, limit)
    return _json({"object": "list", "data": data, "has_more": more,
                  "first_id": data[0]["id"] if data else None, "last_id": data[-1]["id"] if data else None})


SIGNING_SCHEME = ("HMAC-SHA256 over '{webhook-id}.{webhook-timestamp}.{body}' with the base64-decoded part after "
                  "'whsec_'; header webhook-signature: 'v1,<base64 signature>', one per secret, space-separated "
                  "(two while a rotated-out secret still signs)")


def _secret_object(account_id: str, secret: str, previous_expires_at: int | None) -> web.Response:
    return _json({"object": "webhook_secret", "account_id": account_id, "secret": secret,
                  "previous_secret_expires_at": previous_expires_at, "scheme": SIGNING_SCHEME})


async def get_webhook_secret(request: web.Request) -> web.Response:
    """The secret that signs this account's batch completion callbacks (standard-webhooks scheme)."""
    gw = request.app[GATEWAY]
    account_id = request_key(request).account_id
    return _secret_object(account_id, await webhook_secret(gw.redis, account_id),
                          await previous_secret_expires_at(gw.redis, account_id))


async def rotate_webhook_secret(request: web.Request) -> web.Response:
    """A new signing secret; the old one keeps signing (a second signature) for APIINONE_WEBHOOK_SECRET_OVERLAP_S."""
    gw = request.app[GATEWAY]
    account_id = request_key(request).account_id
    try:
        secret, previous_ends = await rotate(gw.credits.scripts, account_id, gw.settings.webhook_secret_overlap_s)
    except AccountNotFound:
        raise not_found("The account of this API key no longer exists.") from None
    return _secret_object(account_id, secret, previous_ends)
