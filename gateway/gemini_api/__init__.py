"""Gemini's native API (``/api/v1beta/models/{model}:generateContent|streamGenerateContent|countTokens``,
the same under ``/api/v1/models/...``, ``GET /api/v1beta/models``).

Unlike Responses and Messages, it is not translated into a chat body: Gemini -> OpenAI chat -> Gemini
would lose what Gemini clients rely on (thought signatures on any part, parts as sent, running
``usageMetadata``). Its job is the native request itself, checked against an allowlist
(``wire.py``), with the catalog's upstream model substituted and ``maxOutputTokens`` clamped to the
hold by the worker (worker/hold_clamp.py); Gemini's own events come back as they are
(``handlers.py``). Admission, holds, settlement, limits, failover and logs are the shared ones.
"""
