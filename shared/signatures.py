"""Gemini's thought signatures, carried in tool call ids: the one format, for every front end.

Gemini 3 rejects a follow-up turn whose functionCall lost its thoughtSignature. Clients of every
wire API echo tool call ids verbatim (OpenAI ``tool_calls[].id`` and Responses ``call_id``,
Anthropic ``tool_use.id``), so the id carries the signature: stateless, nothing stored
server-side, survives any number of turns. The worker writes and reads them
(worker/gemini_request.py); the Anthropic front end also shows the turn's signature on its
thinking block (gateway/messages_api/).
"""

from __future__ import annotations

import secrets

SIGNATURE_MARK = "_ts_"
# Google's documented value for function calls that have no signature of their own
# (histories from another model, or ids a client rewrote): accepted, never a 400.
SKIP_SIGNATURE = "skip_thought_signature_validator"


def _encode(signature: str) -> str:
    return signature.replace("+", "-").replace("/", "_").rstrip("=")


def tool_call_id(signature: str | None) -> str:
    base = "call_" + secrets.token_hex(8)
    return base + SIGNATURE_MARK + _encode(signature) if signature else base


def with_signature(call_id: str, signature: str) -> str:
    """``call_id`` carrying ``signature`` (unchanged if it carries one already)."""
    return call_id if SIGNATURE_MARK in call_id else call_id + SIGNATURE_MARK + _encode(signature)


def signature_from_id(call_id: str) -> str | None:
    _, mark, encoded = call_id.partition(SIGNATURE_MARK)
    if not mark or not encoded:
        return None
    padded = encoded + "=" * (-len(encoded) % 4)
    return padded.replace("-", "+").replace("_", "/")
