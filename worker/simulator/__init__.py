"""Gemini-protocol simulator: Gemini's native REST API (v1beta), deterministic and strict.

Entry points: `worker.simulator.app.create_app()`, `worker.simulator.app.serve(host, port)`,
`python -m worker.simulator --host 127.0.0.1 --port N`. Behaviour is steered by `[[sim ...]]`
directives in the last user message (see `worker.simulator.directives`).

Modules: app (routes, server), directives, request/config/proto/schema (validation), plan
(chunking, usage, response bodies), generate (text, JSON, tokens, signatures), catalog, errors.
"""
