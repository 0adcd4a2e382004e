"""The one pricing function: a request's worst-case hold and its charge, from the same inputs.

Inputs: the model's price sheet (one catalog version), the account's price multiplier, and
token counts. A request's hold is ``price()`` of its worst case (its prompt bound, uncached, in
the tier that bound falls in, and every output token it may ask for); its charge is ``price()``
of what the provider reported. Every caller (admission, the worker's clamp and
``credits_charged``, the billing worker) prices through here, so a charge never exceeds its
hold unless the provider reports more than the request could have used.

Dimensions, each priced in micro-credits per 1M tokens:
  input         prompt tokens not served from a cache
  cached_input  prompt tokens served from the provider's cache (implicit caching)
  output        completion tokens, thinking included
A long-context tier (a prompt of more than ``above_prompt_tokens``) prices the whole request,
every dimension, at its own rates, as Google prices its models that have one.

The multiplier is an integer in parts per million (1,000,000 = x1): exact, never a float.

Rounding, the one rule: a request costs
``ceil(sum over dimensions of tokens x price x multiplier_ppm / 10^12)`` micro-credits (one
rounding, upwards, per request). Its breakdown gives each dimension its exact cost rounded
down, and the request's rounding adds the missing micro-credits (at most one each) to the
dimensions with the largest fractions (ties: output, then input, then cached input), so the
dimensions always add up to the total.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation

from shared.money import micro_to_credits

PPM = 1_000_000  # the multiplier's unit: 1,000,000 parts per million = x1
TOKENS_PER_PRICE_UNIT = 1_000_000  # prices are per 1M tokens
_DENOMINATOR = TOKENS_PER_PRICE_UNIT * PPM
MAX_MULTIPLIER_PPM = 1000 * PPM  # x1000: a typo must not make one request cost a fortune

STANDARD = "standard"
LONG_CONTEXT = "long_context"
DIMENSIONS = ("input", "cached_input", "output")
_TIE_ORDER = (1, 2, 0)  # input, cached input, output: output wins a tie, then input


@dataclass(frozen=True, slots=True)
class Rates:
    """One tier's prices, micro-credits per 1M tokens."""

    input_micro: int
    cached_input_micro: int
    output_micro: int

    def public(self) -> dict:
        """Credits per 1M tokens, as the models API and the dashboard show them."""
        return {"input": micro_to_credits(self.input_micro), "cached_input": micro_to_credits(self.cached_input_micro),
                "output": micro_to_credits(self.output_micro)}


@dataclass(frozen=True, slots=True)
class LongContextTier:
    above_prompt_tokens: int  # a prompt of MORE than this many tokens (cached included) ...
    rates: Rates  # ... prices the whole request at these


@dataclass(frozen=True, slots=True)
class PriceSheet:
    """A model's prices in one catalog version."""

    standard: Rates
    long_context: LongContextTier | None = None
    # A short digest of these prices: which catalog version priced a request. Computed once here,
    # not per request (every hold and charge names it).
    version: str = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        tiers = [self.standard] + ([self.long_context.rates] if self.long_context else [])
        for r in tiers:
            if min(r.input_micro, r.cached_input_micro, r.output_micro) < 0:
                raise ValueError("prices cannot be negative")
            if r.cached_input_micro > r.input_micro:  # the hold assumes no cache hit: the worst case
                raise ValueError("the cached input price cannot exceed the input price")
        if self.long_context:
            lc, s = self.long_context.rates, self.standard
            if (lc.input_micro < s.input_micro or lc.cached_input_micro < s.cached_input_micro
                    or lc.output_micro < s.output_micro):
                raise ValueError("the long-context tier cannot be cheaper than the standard tier")
            if self.long_context.above_prompt_tokens < 1:
                raise ValueError("the long-context tier needs a threshold of at least 1 prompt token")
        object.__setattr__(self, "version", self._digest())

    def tier(self, prompt_tokens: int) -> tuple[str, Rates]:
        lc = self.long_context
        if lc is not None and prompt_tokens > lc.above_prompt_tokens:
            return LONG_CONTEXT, lc.rates
        return STANDARD, self.standard

    def _digest(self) -> str:
        parts = [self.standard] + ([self.long_context.rates] if self.long_context else [])
        text = ";".join(f"{r.input_micro}/{r.cached_input_micro}/{r.output_micro}" for r in parts)
        if self.long_context:
            text += f";>{self.long_context.above_prompt_tokens}"
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def public(self) -> dict:
        out = {"unit": "credits per 1M tokens", **self.standard.public(), "thinking": "billed as output",
               "version": self.version}
        if self.long_context:
            out["long_context"] = {"above_prompt_tokens": self.long_context.above_prompt_tokens,
                                   **self.long_context.rates.public()}
        return out


@dataclass(frozen=True, slots=True)
class TokenCounts:
    prompt_tokens: int  # the whole prompt, cached tokens included
    completion_tokens: int  # thinking included
    cached_tokens: int = 0  # of the prompt, served from the cache


@dataclass(frozen=True, slots=True)
class Charge:
    """A priced request: the total and its breakdown per dimension."""

    tier: str
    multiplier_ppm: int
    version: str
    input_tokens: int  # uncached prompt tokens
    cached_tokens: int
    output_tokens: int
    input_micro: int
    cached_input_micro: int
    output_micro: int

    @property
    def total_micro(self) -> int:
        return self.input_micro + self.cached_input_micro + self.output_micro

    def usage_fields(self) -> dict[str, int | str]:
        """The breakdown as the usage row keeps it (shared/contracts.py USAGE_FIELDS)."""
        return {"price_tier": self.tier, "price_multiplier_ppm": self.multiplier_ppm, "price_version": self.version,
                "input_tokens": self.input_tokens, "input_micro": self.input_micro,
                "cached_input_micro": self.cached_input_micro, "output_micro": self.output_micro}


def _exact(rates: Rates, multiplier_ppm: int, uncached: int, cached: int, output: int) -> tuple[int, int, int]:
    """Each dimension's cost in units of 10^-12 micro-credits: exact integers."""
    return (uncached * rates.input_micro * multiplier_ppm, cached * rates.cached_input_micro * multiplier_ppm,
            output * rates.output_micro * multiplier_ppm)


def price(sheet: PriceSheet, multiplier_ppm: int, tokens: TokenCounts) -> Charge:
    """What ``tokens`` cost at ``sheet``'s prices times the multiplier: the hold's and the charge's function."""
    prompt = max(0, tokens.prompt_tokens)
    cached = min(max(0, tokens.cached_tokens), prompt)
    output = max(0, tokens.completion_tokens)
    tier, rates = sheet.tier(prompt)
    exact = _exact(rates, multiplier_ppm, prompt - cached, cached, output)
    parts = [e // _DENOMINATOR for e in exact]
    total = -(-sum(exact) // _DENOMINATOR)
    by_fraction = sorted(range(3), key=lambda i: (-(exact[i] % _DENOMINATOR), _TIE_ORDER[i]))
    for i in by_fraction[:total - sum(parts)]:
        parts[i] += 1
    return Charge(tier, multiplier_ppm, sheet.version, prompt - cached, cached, output, *parts)


def worst_case_micro(sheet: PriceSheet, multiplier_ppm: int, prompt_bound_tokens: int, output_tokens: int) -> int:
    """The most a request of at most this prompt and output can cost: no cache hit, the bound's tier.
    ``price(...).total_micro`` without the breakdown (this runs at every admission)."""
    prompt, output = max(0, prompt_bound_tokens), max(0, output_tokens)
    _, rates = sheet.tier(prompt)
    return -(-sum(_exact(rates, multiplier_ppm, prompt, 0, output)) // _DENOMINATOR)


def affordable_output_tokens(sheet: PriceSheet, multiplier_ppm: int, hold_micro: int, prompt_bound_tokens: int,
                             max_output_tokens: int) -> int:
    """The most output tokens o with ``worst_case_micro(bound, o) <= hold``, at most ``max_output_tokens``.

    ``price`` rounds the exact sum up once, so its total is within the hold exactly when the
    exact sum is within ``hold x 10^12``: the same arithmetic, solved for o.
    """
    _, rates = sheet.tier(prompt_bound_tokens)
    per_output = rates.output_micro * multiplier_ppm
    if per_output <= 0:
        return max_output_tokens
    room = hold_micro * _DENOMINATOR - sum(_exact(rates, multiplier_ppm, prompt_bound_tokens, 0, 0))
    return max(0, min(max_output_tokens, room // per_output))


def parse_multiplier(value: str | int | float | Decimal) -> int:
    """A multiplier as typed ("1.25", 0.8, 2) -> parts per million, exactly; ValueError otherwise."""
    if isinstance(value, bool):
        raise ValueError("a price multiplier is a number")
    try:
        ppm = Decimal(str(value).strip()) * PPM
    except InvalidOperation:
        raise ValueError(f"{value!r} is not a number") from None
    if not ppm.is_finite() or ppm != ppm.to_integral_value():
        raise ValueError(f"{value} has more than 6 decimal places")
    if not 0 < ppm <= MAX_MULTIPLIER_PPM:
        raise ValueError(f"a price multiplier must be above 0 and at most {MAX_MULTIPLIER_PPM // PPM}")
    return int(ppm)


def multiplier_text(ppm: int) -> str:
    """1_250_000 -> "1.25": exact, for display and JSON."""
    text = format(Decimal(ppm) / PPM, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text
