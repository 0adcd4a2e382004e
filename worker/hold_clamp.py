"""A job's output clamped to what its hold covers, for both body kinds (OpenAI chat, native Gemini).

The hold (written into the job by enqueue.lua) is the request's worst case unless the account's
available credits covered less. Then the answer may use only what the hold pays for, and thinking
is cut first: it is spent before the answer, so a bare clamp buys an empty answer billed as
thinking.
"""

from __future__ import annotations

from shared.catalog import Model
from shared.pricing import PPM, affordable_output_tokens
from worker.gemini_request import thinking_config

EFFORTS = ("none", "minimal", "low", "medium", "high")
ROOM_TO_THINK = 4096  # below this many affordable output tokens, a clamped request thinks as little as it can
LEVELS = ("MINIMAL", "LOW", "MEDIUM", "HIGH")


def job_multiplier(job: dict) -> int:
    """The account's price multiplier the request was admitted with (x1 for a job from before multipliers)."""
    return int(job.get("price_multiplier_ppm") or PPM)


def _allowed(job: dict, model: Model) -> int | None:
    """The most output tokens the job's hold pays for (None: no hold was written, nothing to clamp)."""
    hold = job.get("hold_micro", -1)
    if hold is None or hold < 0:
        return None
    # The one pricing function solved for the output, with the prices and multiplier the hold was planned with.
    return affordable_output_tokens(model.prices, job_multiplier(job), hold, job.get("prompt_bound_tokens", 0),
                                    model.max_output_tokens)


def clamp_to_hold(job: dict, model: Model) -> dict:
    """The OpenAI chat body, its output clamped to what its hold covers."""
    body = job["body"]
    allowed = _allowed(job, model)
    requested = body.get("max_completion_tokens") or body.get("max_tokens") or model.max_output_tokens
    if allowed is None or allowed >= requested:
        return body
    clamped = {k: v for k, v in body.items() if k != "max_tokens"}
    clamped["max_completion_tokens"] = max(1, allowed)
    target = "low" if allowed >= ROOM_TO_THINK else "none"
    asked = body.get("reasoning_effort") or "high"
    clamped["reasoning_effort"] = min(asked, target, key=EFFORTS.index)
    return clamped


def _lower_thinking(asked: dict, target: dict) -> dict:
    """``asked`` (the client's thinkingConfig) lowered to ``target`` where it asks for more; never raised."""
    out = dict(asked)
    if "thinkingLevel" in target:
        level = str(asked.get("thinkingLevel", "HIGH")).upper()
        ceiling = target["thinkingLevel"]
        out.pop("thinkingBudget", None)
        out["thinkingLevel"] = min(level, ceiling, key=lambda v: LEVELS.index(v) if v in LEVELS else len(LEVELS))
    elif "thinkingBudget" in target:
        budget = asked.get("thinkingBudget")
        out.pop("thinkingLevel", None)
        out["thinkingBudget"] = target["thinkingBudget"] if not isinstance(budget, int) or budget < 0 \
            else min(budget, target["thinkingBudget"])
    return out


def clamp_native(job: dict, model: Model) -> dict:
    """A native Gemini request, ``generationConfig.maxOutputTokens`` (and thinking) clamped to the hold."""
    request = job["body"]
    allowed = _allowed(job, model)
    config = request.get("generationConfig") or {}
    requested = config.get("maxOutputTokens") or model.max_output_tokens
    if allowed is None or allowed >= requested:
        return request
    config = {**config, "maxOutputTokens": max(1, allowed)}
    asked = config.get("thinkingConfig") or {}
    target = thinking_config({"reasoning_effort": "low" if allowed >= ROOM_TO_THINK else "none",
                              "include_thoughts": bool(asked.get("includeThoughts", False))}, model)
    if target is not None:
        config["thinkingConfig"] = _lower_thinking(asked, target)
    return {**request, "generationConfig": config}
