"""Changes to the live catalog, as the admin API and the operator dashboard make them.

Every change is a new whole document: the current one, changed (a model's prices or routes, the
aliases) or replaced, then validated and stored as the next version (shared/catalog_store.py) and
written to the operator audit log with what it changed before and after. A change made against a
version that is no longer current is refused (``VersionConflict``) when the caller named that
version; a convenience change (one model, the aliases) that names none is re-applied to the newer
version instead, since it touches only its own part. A change that leaves the document as it was (a
form saved untouched, the same document PUT again) is no change: no new version, no swap, no audit.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable

from shared.catalog import Catalog, CatalogInvalid, validate_catalog
from shared.catalog_store import CatalogStore, VersionConflict
from shared.operator_audit import Action, Actor, OperatorAudit

SECTIONS = ("providers", "nodes", "models", "aliases")
CONVENIENCE_TRIES = 3


class CatalogEmpty(Exception):
    """The live store holds no catalog yet (its processes have not seeded it)."""


@dataclass(frozen=True)
class CatalogChange:
    catalog: Catalog  # the version current after it
    document: dict  # that version's document
    changed: bool  # False: the document was already so; no version was made, nothing audited


def set_model_fields(model_id: str, fields: dict) -> Callable[[dict], dict]:
    """A change setting some of a model's fields (``pricing``, ``routes``, ``base_cost_credits``, ...)."""
    def change(document: dict) -> dict:
        model = document.get("models", {}).get(model_id)
        if model is None:
            raise CatalogInvalid(f"there is no model {model_id!r}")
        if "routes" in fields:
            model.pop("nodes", None)  # routes replace the older `nodes = [...]` form
        if "pricing" in fields:
            for flat in ("input_price_credits_per_1m", "output_price_credits_per_1m"):
                model.pop(flat, None)
        model.update(fields)
        return document
    return change


def set_aliases(changes: dict[str, str | None]) -> Callable[[dict], dict]:
    """A change of the aliases, as a JSON merge patch: ``{alias: model id}`` sets one, ``{alias: null}`` drops it."""
    def change(document: dict) -> dict:
        aliases = dict(document.get("aliases") or {})
        for alias, target in changes.items():
            if target is None:
                aliases.pop(alias, None)
            else:
                aliases[alias] = target
        if aliases or "aliases" in document:  # removing none from a catalog without any adds no empty table
            document["aliases"] = aliases
        return document
    return change


def replace_with(document: dict) -> Callable[[dict], dict]:
    return lambda _current: copy.deepcopy(document)


def diff(old: dict, new: dict) -> tuple[dict, dict]:
    """What changed, entry by entry (``models.gemini``, ``aliases.gemini-latest``): (before, after); an entry
    absent on one side is null there."""
    before, after = {}, {}
    for section in SECTIONS:
        a, b = old.get(section) or {}, new.get(section) or {}
        for name in sorted(set(a) | set(b)):
            if a.get(name) != b.get(name):
                before[f"{section}.{name}"] = a.get(name)
                after[f"{section}.{name}"] = b.get(name)
    return before, after


async def change_catalog(store: CatalogStore, audit: OperatorAudit, actor: Actor, change: Callable[[dict], dict],
                         expected: int | None, note: str) -> CatalogChange:
    """Apply ``change`` to the current version and store the result as the next one; audit it.

    ``expected``: the version the caller saw (If-Match); a different current version is a ``VersionConflict``.
    None: apply to whatever is current, again on a race (``CONVENIENCE_TRIES`` times). A change that leaves
    the document as it is stores nothing: the answer is the current version, ``changed`` False.
    """
    for attempt in range(CONVENIENCE_TRIES):
        current = await store.current()
        if current is None:
            raise CatalogEmpty()
        if expected is not None and current.version != expected:
            raise VersionConflict(current.version)
        document = change(copy.deepcopy(current.document))
        if document == current.document:
            return CatalogChange(validate_catalog(document, current.version), document, changed=False)
        try:
            catalog = await store.put(document, current.version, actor.name, note)
        except VersionConflict:
            if expected is not None or attempt == CONVENIENCE_TRIES - 1:
                raise
            continue
        before, after = diff(current.document, document)
        await audit.record(actor, Action.CATALOG_UPDATE, "catalog", {"version": current.version, **before},
                           {"version": catalog.version, "note": note, **after})
        return CatalogChange(catalog, document, changed=True)
    raise AssertionError("unreachable")
