"""The catalog: models, providers, nodes and aliases; one immutable ``Catalog`` per version.

``parse_catalog`` is the one reader of a catalog document (the TOML file, or a version stored live:
shared/catalog_store.py); ``validate_catalog`` wraps it for documents an operator sends, so every
mistake is one ``CatalogInvalid`` naming where it is.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from pathlib import Path

from shared import ids
from shared.money import credits_to_micro, micro_to_credits
from shared.pricing import LongContextTier, PriceSheet, Rates

BUNDLED_CATALOG = Path(__file__).with_name("catalog.toml")


@dataclass(frozen=True)
class Provider:
    id: str
    adapter: str  # "gemini" | "openai"
    display_name: str
    base_url_env: str
    api_key_env: str
    base_url: str | None = None  # used when base_url_env is unset
    # OpenAI-compatible upstreams that send the usage so far on every chunk when asked (vLLM's
    # stream_options.continuous_usage_stats): a stream whose client left then stops at once.
    continuous_usage_stats: bool = False


@dataclass(frozen=True)
class Node:
    id: str
    provider: str


@dataclass(frozen=True)
class Route:
    """A node a model is served on: lower priority first; equal priorities share traffic by weight."""

    node: str
    priority: int = 0
    weight: int = 1


@dataclass(frozen=True)
class Model:
    id: str
    display_name: str
    provider: str
    routes: tuple[Route, ...]
    upstream_model: str
    thinking: str  # "level" (Gemini 3) | "budget" (Gemini 2.5) | "none"
    endpoint: str
    base_cost_micro: int
    prices: PriceSheet  # every price dimension (shared/pricing.py prices with it)
    context_window: int
    max_output_tokens: int
    input_types: tuple[str, ...]
    output_types: tuple[str, ...]
    capabilities: tuple[str, ...]
    # Models that serve a request this one cannot (every node out of capacity, or the prompt too long),
    # tried in order before any output was sent; the charge is at the model that served it.
    fallbacks: tuple[str, ...] = ()
    created: int = 1_764_000_000
    extra: dict = field(default_factory=dict)

    @property
    def nodes(self) -> tuple[str, ...]:
        return tuple(r.node for r in self.routes)

    @cached_property
    def price_version(self) -> str:
        """Its price sheet's digest (computed once per catalog version, not per request)."""
        return self.prices.version

    @cached_property
    def prices_wire(self) -> dict:
        """Its price sheet as a job carries it to the worker and billing (shared/pricing.py ``to_wire``)."""
        return self.prices.to_wire()

    def public(self) -> dict:
        """The OpenAI model object plus the catalog data the product page shows."""
        return {
            "id": self.id,
            "object": "model",
            "created": self.created,
            "owned_by": self.provider,
            "display_name": self.display_name,
            "endpoint": self.endpoint,
            "base_cost_credits": micro_to_credits(self.base_cost_micro),
            "pricing": self.prices.public(),
            "context_window": self.context_window,
            "max_output_tokens": self.max_output_tokens,
            "input_types": list(self.input_types),
            "output_types": list(self.output_types),
            "capabilities": list(self.capabilities),
            "nodes": list(self.nodes),
            "fallbacks": list(self.fallbacks),
            "billing": "successful requests",
        }


@dataclass(frozen=True)
class Catalog:
    models: dict[str, Model]
    providers: dict[str, Provider]
    nodes: dict[str, Node]
    aliases: dict[str, str] = field(default_factory=dict)  # public id -> model id
    version: int = 0  # the live store's version (0: the file, not stored)

    def provider_of_node(self, node: str) -> Provider:
        return self.providers[self.nodes[node].provider]

    def resolve(self, model_id: str) -> Model | None:
        """The model a request names: a model id, or an alias of one."""
        model = self.models.get(model_id)
        if model is None and model_id in self.aliases:
            model = self.models.get(self.aliases[model_id])
        return model

    def model_id(self, name: str) -> str:
        """The id of the model a request names (an alias: its target's; an unknown name: itself)."""
        return self.aliases.get(name, name)


class CatalogInvalid(ValueError):
    """A catalog document that cannot be served; the message says where it is wrong."""


def _routes(model_id: str, m: dict) -> tuple[Route, ...]:
    """``nodes = ["a", "b"]`` (priority by order) or ``routes = [{node, priority, weight}, ...]``."""
    if "routes" in m:
        routes = [Route(r["node"], int(r.get("priority", 0)), int(r.get("weight", 1))) for r in m["routes"]]
    else:
        routes = [Route(node, priority) for priority, node in enumerate(m["nodes"])]
    if not routes or any(r.weight < 1 for r in routes):
        raise ValueError(f"model {model_id!r} needs at least one route, each with weight >= 1")
    return tuple(sorted(routes, key=lambda r: r.priority))


def _rates(table: dict) -> Rates:
    cached = table.get("cached_input", table["input"])
    return Rates(credits_to_micro(table["input"]), credits_to_micro(cached), credits_to_micro(table["output"]))


def _price_sheet(model_id: str, m: dict) -> PriceSheet:
    """``[models.X.pricing]`` (input, cached_input, output, optional long_context), credits per 1M tokens.

    The older flat keys ``input_price_credits_per_1m`` / ``output_price_credits_per_1m`` still
    load: cached input then costs what input does, and there is no long-context tier.
    """
    try:
        table = m.get("pricing")
        if table is None:
            return PriceSheet(Rates(credits_to_micro(m["input_price_credits_per_1m"]),
                                    credits_to_micro(m["input_price_credits_per_1m"]),
                                    credits_to_micro(m["output_price_credits_per_1m"])))
        long_context = None
        if "long_context" in table:
            lc = table["long_context"]
            # A tier that names no cached price bills cached tokens as input (no discount assumed).
            long_context = LongContextTier(int(lc["above_prompt_tokens"]), _rates(lc))
        return PriceSheet(_rates(table), long_context)
    except (KeyError, ValueError) as exc:
        raise ValueError(f"model {model_id!r}: bad prices ({exc})") from None


def _names(model_id: str, m: dict, field_name: str, default: list[str]) -> tuple[str, ...]:
    names = m.get(field_name, default)
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ValueError(f"model {model_id!r}: {field_name} must be a list of names")
    return tuple(names)


def _aliases(data: dict, models: dict[str, Model]) -> dict[str, str]:
    aliases = data.get("aliases", {})
    if not isinstance(aliases, dict):
        raise ValueError("aliases must be a table of public id = model id")
    for alias, target in aliases.items():
        if not ids.MODEL.matches(alias):
            raise ValueError(f"alias {alias!r}: use letters, digits and . _ : - (at most 128)")
        if alias in models:
            raise ValueError(f"alias {alias!r} is also a model id")
        if target not in models:
            raise ValueError(f"alias {alias!r} names unknown model {target!r}")
    return dict(aliases)


def _fallbacks(model_id: str, m: dict) -> tuple[str, ...]:
    value = m.get("fallbacks", [])
    if not isinstance(value, list) or not all(isinstance(f, str) for f in value):
        raise ValueError(f"model {model_id!r}: fallbacks is a list of model ids")
    if model_id in value or len(set(value)) != len(value):
        raise ValueError(f"model {model_id!r}: fallbacks name other models, each once")
    return tuple(value)


def _check_fallbacks(models: dict[str, Model]) -> None:
    """Every fallback is a model of the catalog (checked once all are read: they may come later)."""
    for model in models.values():
        for fallback in model.fallbacks:
            if fallback not in models:
                raise ValueError(f"model {model.id!r} falls back to unknown model {fallback!r}")


def parse_catalog(data: dict, version: int = 0) -> Catalog:
    providers = {
        pid: Provider(
            id=pid,
            adapter=p["adapter"],
            display_name=p.get("display_name", pid),
            base_url_env=p.get("base_url_env", ""),
            api_key_env=p.get("api_key_env", ""),
            base_url=p.get("base_url"),
            continuous_usage_stats=bool(p.get("continuous_usage_stats", False)),
        )
        for pid, p in data.get("providers", {}).items()
    }
    nodes = {nid: Node(id=nid, provider=n["provider"]) for nid, n in data.get("nodes", {}).items()}
    models = {}
    for mid, m in data.get("models", {}).items():
        if not ids.MODEL.matches(mid):  # the API's path parameter format: another id could never be asked for
            raise ValueError(f"model id {mid!r}: use letters, digits and . _ : - (at most 128)")
        routes = _routes(mid, m)
        for route in routes:
            if route.node not in nodes:
                raise ValueError(f"model {mid!r} routes to unknown node {route.node!r}")
        models[mid] = Model(
            id=mid,
            display_name=m.get("display_name", mid),
            provider=m["provider"],
            routes=routes,
            upstream_model=m["upstream_model"],
            thinking=m.get("thinking", "none"),
            endpoint=m.get("endpoint", "/api/v1/chat/completions"),
            base_cost_micro=credits_to_micro(m["base_cost_credits"]),
            prices=_price_sheet(mid, m),
            context_window=int(m["context_window"]),
            max_output_tokens=int(m.get("max_output_tokens", 8192)),
            input_types=_names(mid, m, "input_types", ["text"]),
            output_types=_names(mid, m, "output_types", ["text"]),
            capabilities=_names(mid, m, "capabilities", []),
            fallbacks=_fallbacks(mid, m),
        )
    _check_fallbacks(models)
    return Catalog(models=models, providers=providers, nodes=nodes, aliases=_aliases(data, models), version=version)


ADAPTERS = ("gemini", "openai")


def validate_catalog(data: object, version: int = 0) -> Catalog:
    """``parse_catalog`` for a document an operator sent: every mistake is a ``CatalogInvalid``."""
    if not isinstance(data, dict):
        raise CatalogInvalid("the catalog is a JSON object with providers, nodes, models and aliases")
    try:
        catalog = parse_catalog(data, version)
    except KeyError as exc:
        raise CatalogInvalid(f"a required field is missing: {exc}") from None
    except (TypeError, AttributeError, ValueError, ArithmeticError) as exc:
        raise CatalogInvalid(str(exc)) from None
    if not catalog.models:
        raise CatalogInvalid("the catalog needs at least one model")
    for provider in catalog.providers.values():
        if provider.adapter not in ADAPTERS:
            raise CatalogInvalid(f"provider {provider.id!r}: adapter must be one of {', '.join(ADAPTERS)}")
    for node in catalog.nodes.values():
        if node.provider not in catalog.providers:
            raise CatalogInvalid(f"node {node.id!r} names unknown provider {node.provider!r}")
    for model in catalog.models.values():
        _check_model(catalog, model)
    return catalog


MAX_PRICE_MICRO = 10**12  # a million credits per 1M tokens: far above any real price, far inside 64-bit holds
MAX_TOKENS = 100_000_000  # context window, output
MAX_ROUTE_NUMBER = 1000  # priority, weight
THINKING_KINDS = ("level", "budget", "none")
# "level", "level:low,high" (the levels a model takes), "budget", "budget:128-32768" (its range), "none"
# (how the worker reads them: worker/gemini_request.py thinking_config).
THINKING = re.compile(r"none|level(:(minimal|low|medium|high)(,(minimal|low|medium|high))*)?|budget(:\d{1,6}(-\d{1,6})?)?")


def _check_model(catalog: Catalog, model: Model) -> None:
    """Bounds the parser leaves open: every amount stays a sane integer in holds, Redis and the record."""
    where = f"model {model.id!r}"
    if model.provider not in catalog.providers:
        raise CatalogInvalid(f"{where} names unknown provider {model.provider!r}")
    sheet = model.prices
    rates = [sheet.standard] + ([sheet.long_context.rates] if sheet.long_context else [])
    if not 0 <= model.base_cost_micro <= MAX_PRICE_MICRO or any(
            max(r.input_micro, r.cached_input_micro, r.output_micro) > MAX_PRICE_MICRO for r in rates):
        raise CatalogInvalid(f"{where}: prices and base_cost_credits must be between 0 and 1000000 credits")
    if not (1 <= model.context_window <= MAX_TOKENS and 1 <= model.max_output_tokens <= MAX_TOKENS):
        raise CatalogInvalid(f"{where}: context_window and max_output_tokens must be between 1 and {MAX_TOKENS}")
    if any(not 0 <= n <= MAX_ROUTE_NUMBER for r in model.routes for n in (r.priority, r.weight)):
        raise CatalogInvalid(f"{where}: route priorities and weights must be between 0 and {MAX_ROUTE_NUMBER}")
    if not (isinstance(model.thinking, str) and THINKING.fullmatch(model.thinking)):
        raise CatalogInvalid(f"{where}: thinking must be one of {', '.join(THINKING_KINDS)}, optionally "
                             "narrowed (\"level:low,high\", \"budget:128-32768\")")


def catalog_path(path: Path | str | None = None) -> Path:
    return Path(path or os.environ.get("APIINONE_CATALOG") or BUNDLED_CATALOG)


def load_document(path: Path | str | None = None) -> dict:
    """The TOML file as a document (what seeds an empty live store)."""
    with catalog_path(path).open("rb") as fh:
        return tomllib.load(fh)


def load_catalog(path: Path | str | None = None) -> Catalog:
    return parse_catalog(load_document(path))


@lru_cache(maxsize=1)
def get_catalog() -> Catalog:
    return load_catalog()
