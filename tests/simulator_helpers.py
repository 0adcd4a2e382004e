"""Helpers for tests that need the Gemini simulator: run it as a subprocess, check JSON values.

    with run_simulator() as base_url:   # "http://127.0.0.1:PORT"
        ...
"""

from __future__ import annotations

import contextlib
import math
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterator

from tests.gateway_helpers import stop

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def run_simulator(timeout: float = 10.0) -> Iterator[str]:
    """Start `python -m worker.simulator` on a free port; yield its base URL; stop it by PID."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "worker.simulator", "--host", "127.0.0.1", "--port", str(port)],
        cwd=REPO,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"simulator exited: {proc.stderr.read().decode()}")
            try:
                with urllib.request.urlopen(f"{base}/v1beta/models?key=probe", timeout=1) as r:
                    r.read()
                break
            except (urllib.error.URLError, ConnectionError, OSError):
                if time.monotonic() > deadline:
                    raise RuntimeError("simulator did not start") from None
                time.sleep(0.05)
        yield base
    finally:
        stop(proc, 5)  # SIGTERM, then SIGKILL
        if proc.stderr is not None:
            proc.stderr.close()


def schema_errors(value: Any, schema: Any, root: Any = None, path: str = "$") -> list[str]:
    """Errors of `value` against a JSON Schema subset (what the simulator claims to honour)."""
    root = schema if root is None else root
    if schema is True or schema is None:
        return []
    if schema is False:
        return [f"{path}: schema is false"]
    if "$ref" in schema:
        node: Any = root
        for key in schema["$ref"].lstrip("#/").split("/"):
            if key:
                node = node[key]
        return schema_errors(value, node, root, path)
    errs: list[str] = []
    for sub in schema.get("allOf", []):
        errs += schema_errors(value, sub, root, path)
    for key in ("anyOf", "oneOf"):
        if key in schema:
            if all(schema_errors(value, s, root, path) for s in schema[key]):
                errs.append(f"{path}: matches no {key} branch")
    if "const" in schema and value != schema["const"]:
        errs.append(f"{path}: {value!r} != const")
    if "enum" in schema and value not in schema["enum"]:
        errs.append(f"{path}: {value!r} not in enum")
    typ = schema.get("type")
    if typ is not None:
        types = typ if isinstance(typ, list) else [typ]
        types = [t.lower() for t in types]
        if schema.get("nullable"):
            types.append("null")
        if not any(_is_type(value, t) for t in types):
            return errs + [f"{path}: {value!r} is not {types}"]
    if isinstance(value, dict):
        for name in schema.get("required", []):
            if name not in value:
                errs.append(f"{path}: missing {name}")
        props = schema.get("properties", {})
        for name, sub in value.items():
            if name in props:
                errs += schema_errors(sub, props[name], root, f"{path}.{name}")
            elif schema.get("additionalProperties") is False:
                errs.append(f"{path}: extra property {name}")
    if isinstance(value, list):
        if len(value) < schema.get("minItems", 0):
            errs.append(f"{path}: fewer than minItems")
        if len(value) > schema.get("maxItems", math.inf):
            errs.append(f"{path}: more than maxItems")
        for i, item in enumerate(value):
            errs += schema_errors(item, schema.get("items", True), root, f"{path}[{i}]")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value < schema.get("minimum", -math.inf) or value > schema.get("maximum", math.inf):
            errs.append(f"{path}: {value} out of [minimum, maximum]")
        if "exclusiveMinimum" in schema and value <= schema["exclusiveMinimum"]:
            errs.append(f"{path}: {value} <= exclusiveMinimum")
        if "exclusiveMaximum" in schema and value >= schema["exclusiveMaximum"]:
            errs.append(f"{path}: {value} >= exclusiveMaximum")
    if isinstance(value, str):
        if not schema.get("minLength", 0) <= len(value) <= schema.get("maxLength", math.inf):
            errs.append(f"{path}: length {len(value)} out of bounds")
    return errs


def _is_type(value: Any, t: str) -> bool:
    if t == "null":
        return value is None
    if t == "boolean":
        return isinstance(value, bool)
    if t == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if t == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if t == "string":
        return isinstance(value, str)
    if t == "array":
        return isinstance(value, list)
    if t == "object":
        return isinstance(value, dict)
    return False
