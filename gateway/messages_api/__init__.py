"""Anthropic's Messages API (``POST /api/v1/messages``, ``/count_tokens``): a translation at the edge.

``wire.py`` validates the request, ``translate.py`` turns it into the OpenAI chat body every job runs
(held, clamped, billed and failed over like chat), ``render.py`` words the worker's chunks as
Anthropic's events or one message, ``handlers.py`` serves the routes. Errors leave in Anthropic's
shape (the routes' dialect, gateway/dialects.py); keys come as ``x-api-key`` or Bearer.
"""
