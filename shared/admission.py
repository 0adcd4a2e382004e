"""Admission: what a request must pass before it holds credits, and the refusals' wording.

Every front end (the gateway's chat handler and the Responses and Messages translations, the batch
worker's lines) admits through these functions, so a request is refused for the same reasons, in
the same words, wherever it comes from. They read the chat body as JSON (``body``: a validated
``ChatCompletionRequest`` dumped, or what a front end translated its own validated request into),
the form the job carries, so no front end validates a request twice.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson

from shared.catalog import Model
from shared.contracts import ErrorCode, ReserveStatus
from shared.credits import KeyLimits, Reservation
from shared.errors import ApiError, bad_request, insufficient_quota, rate_limited, unavailable
from shared.money import micro_to_credits
from shared.pricing import PPM, worst_case_micro

OUTPUT_ESTIMATE = 1024  # tokens/min admission assumes this many output tokens unless max_tokens says otherwise
IMAGE_PART_CHARS = 1032  # an image counts as this many characters in the prompt estimate
IMAGE_TOKEN_BOUND = 1120  # Gemini 3 at high media resolution; the most one image can cost
MESSAGE_TOKEN_BOUND = 8  # a message's role and separators


def estimate_prompt_tokens(body: dict) -> int:
    """About how many tokens the prompt is: its messages' text characters (an image counts
    IMAGE_PART_CHARS) over 4. Also the worker's prompt estimate when an upstream says no usage."""
    chars = 0
    for m in body["messages"]:
        content = m.get("content")
        if isinstance(content, str):
            chars += len(content)
        elif content:
            chars += sum(len(p["text"]) if p["type"] == "text" else IMAGE_PART_CHARS for p in content)
    return chars // 4


def check_request(body: dict, model: Model, max_messages: int) -> int:
    """Refuse what the model cannot take; returns the prompt's estimated tokens."""
    messages = body["messages"]
    if len(messages) > max_messages:
        raise bad_request(f"Too many messages: at most {max_messages} per request.", param="messages",
                          code="too_many_messages")
    if body.get("n") not in (None, 1):
        raise bad_request("Only n=1 is supported.", param="n", code="unsupported_value")
    if "image" not in model.input_types:
        for i, m in enumerate(messages):
            content = m.get("content")
            if m["role"] == "user" and isinstance(content, list) and any(p["type"] == "image_url" for p in content):
                raise bad_request(f"Model '{model.id}' does not accept image input.",
                                  param=f"messages[{i}].content", code="unsupported_content")
    for param in ("max_completion_tokens", "max_tokens"):
        value = body.get(param)
        if value is not None and value > model.max_output_tokens:
            raise bad_request(f"{param} is too large: {value}. This model supports at most "
                              f"{model.max_output_tokens} completion tokens.", param=param, code="invalid_value")
    estimate = estimate_prompt_tokens(body)
    if estimate > model.context_window:
        raise bad_request(
            f"This model's maximum context length is {model.context_window} tokens; your messages come to about "
            f"{estimate} tokens.", param="messages", code=ErrorCode.CONTEXT_LENGTH_EXCEEDED)
    return estimate


def max_output_tokens(body: dict) -> int | None:
    return body.get("max_completion_tokens") or body.get("max_tokens")


def estimated_tokens(body: dict, prompt_estimate: int) -> int:
    """What the key's tokens/min bucket is charged at admission (corrected at settlement)."""
    return prompt_estimate + (max_output_tokens(body) or OUTPUT_ESTIMATE)


def text_token_bound(text: str) -> int:
    """At most one token per 2 ASCII characters (English runs ~4) and one per other character."""
    ascii_chars = len(text.encode("ascii", "ignore"))
    return (ascii_chars + 1) // 2 + (len(text) - ascii_chars)


def prompt_token_bound(body: dict) -> int:
    """A generous upper bound of the prompt's tokens, from what the request carries (no tokenizer):
    every message's text, tool calls, tools and response schema, and the most an image costs."""
    total = 0
    for m in body["messages"]:
        total += MESSAGE_TOKEN_BOUND
        content = m.get("content")
        if isinstance(content, str):
            total += text_token_bound(content)
        elif content:
            total += sum(text_token_bound(p["text"]) if p["type"] == "text" else IMAGE_TOKEN_BOUND for p in content)
        for call in m.get("tool_calls") or ():
            function = call["function"]
            total += text_token_bound(function["name"]) + text_token_bound(function["arguments"]) + MESSAGE_TOKEN_BOUND
    for extra in (body.get("tools"), body.get("response_format")):
        if extra:
            total += text_token_bound(orjson.dumps(extra).decode())
    return total


@dataclass(frozen=True, slots=True)
class HoldPlan:
    """What a request may hold: its worst case, and the least it may run with.

    The hold itself is decided atomically by reserve.lua: the worst case, or less where the
    account's available credits (or the key's limits) leave less, never below the floor. The
    worker then clamps the request's output to what the hold covers
    (``shared.pricing.affordable_output_tokens``, with the same prices and multiplier).
    """

    prompt_bound_tokens: int
    max_output_tokens: int
    worst_micro: int  # prompt bound + every output token the request may ask for; never below the base cost
    floor_micro: int  # prompt bound + the minimum output; never below the base cost
    multiplier_ppm: int  # the account's price multiplier the plan was priced with (the job carries it)


def plan_hold(body: dict, model: Model, min_output_tokens: int, multiplier_ppm: int) -> HoldPlan:
    return plan_hold_for(prompt_token_bound(body), max_output_tokens(body), model, min_output_tokens, multiplier_ppm)


def plan_hold_for(prompt: int, max_output: int | None, model: Model, min_output_tokens: int,
                  multiplier_ppm: int) -> HoldPlan:
    """The hold of a request whose prompt is at most ``prompt`` tokens and whose output may reach
    ``max_output`` (None: the model's maximum); every front end's plan ends here. Priced by the one
    pricing function (shared/pricing.py) with the prompt at its bound, nothing cached, in the tier the
    bound falls in, at the account's multiplier (the job carries it to the worker and billing)."""
    max_output = min(max_output or model.max_output_tokens, model.max_output_tokens)
    worst = max(model.base_cost_micro, worst_case_micro(model.prices, multiplier_ppm, prompt, max_output))
    floor = max(model.base_cost_micro,
                worst_case_micro(model.prices, multiplier_ppm, prompt, min(min_output_tokens, max_output)))
    return HoldPlan(prompt, max_output, worst, floor, multiplier_ppm)


COUNT_HOLD_MICRO = 1  # a count is free; it holds one micro-credit only because every hold is positive


def count_hold(prompt_bound_tokens: int) -> HoldPlan:
    """The hold of a token count (Anthropic count_tokens, Gemini countTokens): admitted like any request (its
    key's requests per minute count it), settled at 0."""
    return HoldPlan(prompt_bound_tokens, 0, COUNT_HOLD_MICRO, COUNT_HOLD_MICRO, PPM)


def refusal(r: Reservation, model: Model, limits: KeyLimits, estimated: int, floor_micro: int) -> ApiError:
    """reserve.lua's refusal as the client sees it; the one place its status codes become errors."""
    retry = r.retry_after_ms / 1000
    if r.status == ReserveStatus.RPM_LIMITED:
        return rate_limited(f"Rate limit reached for requests per minute: limit {limits.rpm}. "
                            f"Please try again in {retry:.1f}s.", retry, "requests")
    if r.status == ReserveStatus.TPM_LIMITED:
        return rate_limited(f"Rate limit reached for tokens per minute: limit {limits.tpm}, requested about "
                            f"{min(estimated, limits.tpm)}. Please try again in {retry:.1f}s.", retry, "tokens")
    if r.status == ReserveStatus.TOO_MANY_INFLIGHT:
        return rate_limited(f"Too many concurrent requests for this key: limit {limits.max_concurrent}.",
                            retry, "requests")
    if r.status == ReserveStatus.ACCOUNT_RPM_LIMITED:
        return rate_limited("Rate limit reached for requests per minute for this account (all its keys together). "
                            f"Please try again in {retry:.1f}s.", retry, "requests")
    if r.status == ReserveStatus.ACCOUNT_TPM_LIMITED:
        return rate_limited(f"Rate limit reached for tokens per minute for this account (all its keys together), "
                            f"requested about {estimated}. Please try again in {retry:.1f}s.", retry, "tokens")
    if r.status == ReserveStatus.ACCOUNT_CONCURRENCY:
        return rate_limited("Too many concurrent requests for this account (all its keys together).", retry,
                            "requests")
    if r.status == ReserveStatus.KEY_BUDGET:
        return insufficient_quota("This API key's credit limit leaves no room for this request (its spend and "
                                  "its requests in flight count against it); the account's other keys are not "
                                  "affected.")
    if r.status == ReserveStatus.NO_ACCOUNT:
        return insufficient_quota("The account of this API key no longer exists.")
    if r.status == ReserveStatus.FENCED:
        return unavailable("The credit store restarted; this account's balance is being recovered from the "
                           "database. Please retry in a moment.", retry)
    return insufficient_quota(
        f"Insufficient credits: this request to '{model.id}' needs at least {micro_to_credits(floor_micro):g} "
        f"credits held (its prompt and a minimal answer, never less than the {micro_to_credits(model.base_cost_micro):g}"
        f"-credit base cost) and the account has {micro_to_credits(r.balance_micro - r.held_micro):g} available. "
        "Top up to continue.")
