"""Admission: what a request must pass before it holds credits, and the refusals' wording.

Every front end (the gateway's chat handler, the batch worker's lines) admits
through these functions, so a request is refused for the same reasons, in the
same words, wherever it comes from.
"""

from __future__ import annotations

from shared.catalog import Model
from shared.contracts import ReserveStatus
from shared.credits import KeyLimits, Reservation
from shared.errors import ApiError, bad_request, insufficient_quota, rate_limited
from shared.money import micro_to_credits
from shared.protocol import ChatCompletionRequest

OUTPUT_ESTIMATE = 1024  # tokens/min admission assumes this many output tokens unless max_tokens says otherwise
IMAGE_PART_CHARS = 1032  # an image counts as this many characters in the prompt estimate


def estimate_prompt_tokens(req: ChatCompletionRequest) -> int:
    chars = 0
    for m in req.messages:
        content = m.content
        if isinstance(content, str):
            chars += len(content)
        elif content:
            chars += sum(len(p.text) if p.type == "text" else IMAGE_PART_CHARS for p in content)
    return chars // 4


def check_request(req: ChatCompletionRequest, model: Model, max_messages: int) -> int:
    """Refuse what the model cannot take; returns the prompt's estimated tokens."""
    if len(req.messages) > max_messages:
        raise bad_request(f"Too many messages: at most {max_messages} per request.", param="messages",
                          code="too_many_messages")
    if req.n not in (None, 1):
        raise bad_request("Only n=1 is supported.", param="n", code="unsupported_value")
    if "image" not in model.input_types:
        for i, m in enumerate(req.messages):
            if m.role == "user" and isinstance(m.content, list) and any(p.type == "image_url" for p in m.content):
                raise bad_request(f"Model '{model.id}' does not accept image input.",
                                  param=f"messages[{i}].content", code="unsupported_content")
    estimate = estimate_prompt_tokens(req)
    if estimate > model.context_window:
        raise bad_request(
            f"This model's maximum context length is {model.context_window} tokens; your messages come to about "
            f"{estimate} tokens.", param="messages", code="context_length_exceeded")
    return estimate


def estimated_tokens(req: ChatCompletionRequest, prompt_estimate: int) -> int:
    """What the key's tokens/min bucket is charged at admission (corrected at settlement)."""
    return prompt_estimate + (req.max_completion_tokens or req.max_tokens or OUTPUT_ESTIMATE)


def refusal(r: Reservation, model: Model, limits: KeyLimits, estimated: int) -> ApiError:
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
    if r.status == ReserveStatus.KEY_BUDGET:
        return insufficient_quota("This API key's credit limit leaves no room for this request (its spend and "
                                  "its requests in flight count against it); the account's other keys are not "
                                  "affected.")
    if r.status == ReserveStatus.NO_ACCOUNT:
        return insufficient_quota("The account of this API key no longer exists.")
    return insufficient_quota(
        f"Insufficient credits: a request to '{model.id}' holds {micro_to_credits(model.base_cost_micro):g} "
        f"credits and the account has {micro_to_credits(r.balance_micro - r.held_micro):g} available. "
        "Top up to continue.")
