"""OpenAI's Responses API (``POST /api/v1/responses``, stored responses): a translation at the edge.

``wire.py`` validates the request, ``translate.py`` turns it into the OpenAI chat body every job
runs (so it is held, clamped, billed and failed over like chat), ``render.py`` words the worker's
chunks as Responses events and objects, ``handlers.py`` serves the routes.
"""
