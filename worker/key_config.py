"""Where a node's upstream keys come from: settings or a secrets file, never the catalog.

In order, the first that names keys for the node wins:

1. ``APIINONE_NODE_KEYS_<NODE>`` (the node id upper-cased, other characters than letters and
   digits as ``_``): keys separated by commas, each optionally followed by space-separated
   options, e.g. ``AIza...x1,AIza...y2 weight=3 rpm=60 tpm=200000``.
2. The secrets file named by ``APIINONE_KEYS_FILE`` (``.toml`` or ``.json``)::

       [[nodes.node62.keys]]
       key = "AIza..."        # or key_env = "NAME_OF_A_VARIABLE_HOLDING_IT"
       weight = 2             # optional, default 1
       rpm = 60               # optional: the key's own requests per minute
       tpm = 200000           # optional: the key's own tokens per minute

3. The provider's ``api_key_env`` (``GEMINI_API_KEY`` for Google): a pool of one key.

Keys are told apart by their last 4 characters (the only part ever shown), so two keys of one
node must differ there.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from shared.key_state import LABEL_CHARS, KeySpec, key_label

OPTIONS = ("weight", "rpm", "tpm")


@dataclass(frozen=True)
class PoolKey:
    secret: str = field(repr=False)  # never logged: only ``spec.label`` leaves the worker
    spec: KeySpec

    @property
    def label(self) -> str:
        return self.spec.label


class KeyConfigError(ValueError):
    """A key list that cannot be used; the message names where it came from, never a key."""


def env_name(node: str) -> str:
    return "APIINONE_NODE_KEYS_" + re.sub(r"[^A-Za-z0-9]", "_", node).upper()


def _pool_key(secret: str, options: dict, where: str) -> PoolKey:
    secret = secret.strip()
    if not secret or any(c.isspace() for c in secret):
        raise KeyConfigError(f"{where}: an empty key, or one with spaces")
    unknown = set(options) - set(OPTIONS)
    if unknown:
        raise KeyConfigError(f"{where}: unknown key options {sorted(unknown)} (known: {', '.join(OPTIONS)})")
    try:
        return PoolKey(secret, KeySpec(label=key_label(secret), **options))
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise KeyConfigError(f"{where} (key ...{key_label(secret)}): {problems}") from None


def parse_env_keys(text: str, where: str) -> list[PoolKey]:
    """``key[ opt=N ...],key...`` -> keys."""
    pool = []
    for entry in (e.strip() for e in text.split(",")):
        if not entry:
            continue
        secret, *opts = entry.split()
        options = {}
        for opt in opts:
            name, eq, value = opt.partition("=")
            if not eq or not value.isdigit():
                raise KeyConfigError(f"{where}: option {name!r} of key ...{key_label(secret)} wants name=integer")
            options[name] = int(value)
        pool.append(_pool_key(secret, options, where))
    return pool


def parse_file_keys(path: Path, node: str) -> list[PoolKey]:
    """The node's keys in a TOML or JSON secrets file ([] when it names none for the node)."""
    try:
        text = path.read_text()
        data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (OSError, ValueError) as exc:
        raise KeyConfigError(f"{path}: cannot read the keys file ({exc.__class__.__name__})") from None
    entries = (((data.get("nodes") or {}).get(node)) or {}).get("keys") or []
    pool = []
    for i, entry in enumerate(entries):
        where = f"{path}: nodes.{node}.keys[{i}]"
        if isinstance(entry, str):
            entry = {"key": entry}
        if not isinstance(entry, dict):
            raise KeyConfigError(f"{where}: a key string or a table")
        options = {k: v for k, v in entry.items() if k not in ("key", "key_env")}
        secret = entry.get("key") or os.environ.get(str(entry.get("key_env", "")), "")
        if not isinstance(secret, str) or not secret:
            raise KeyConfigError(f"{where}: no key (key, or key_env naming a set variable)")
        pool.append(_pool_key(secret, options, where))
    return pool


def load_node_keys(node: str, keys_file: Path | None, fallback: str) -> list[PoolKey]:
    """The node's pool (see the module doc); ``fallback``: the provider's one key ("" if none)."""
    name = env_name(node)
    pool = parse_env_keys(os.environ.get(name, ""), name)
    if not pool and keys_file is not None:
        pool = parse_file_keys(keys_file, node)
    if not pool and fallback:
        pool = [_pool_key(fallback, {}, "the provider's api_key_env")]
    labels = [k.label for k in pool]
    twins = sorted({label for label in labels if labels.count(label) > 1})
    if twins:
        raise KeyConfigError(f"node {node}: keys must differ in their last {LABEL_CHARS} characters "
                             f"(they name a key everywhere); several end in {', '.join(twins)}")
    return pool
