"""Turn a validated request + directives into a chunk plan, and render GenerateContentResponses.

Order of a response: thinking chunks (thought parts, at most 8 tokens each; hidden unless
`includeThoughts`, but always counted in `thoughtsTokenCount`), then the answer (text/JSON
chunks of at most 8 tokens, or one chunk per whole functionCall). `maxOutputTokens` caps thinking
+ answer together (thinking is spent first), as Gemini does. On a Gemini 3 text answer a final
chunk `{"text": "", "thoughtSignature": ...}` closes the stream (the signature sits on the last
part of the merged non-streaming answer).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any, Iterator

from . import generate as g
from .directives import Directives
from .request import GenRequest
from .schema import generate_value

DEFAULT_ANSWER_TOKENS = 30
DEFAULT_THINKING_TOKENS = 16
CHUNK_TOKENS = 8
_LEVEL_FACTOR = {"HIGH": 1.0, "MEDIUM": 0.75, "LOW": 0.5, "MINIMAL": 0.25}


@dataclass(slots=True)
class Chunk:
    parts: list[dict[str, Any]] | None  # None: generated but not shown (hidden thinking)
    thoughts: int = 0
    answer: int = 0


@dataclass(slots=True)
class Plan:
    model: str
    text_tokens: int
    media_tokens: int
    chunks: list[Chunk] = field(default_factory=list)
    finish: str = "STOP"
    cached_tokens: int = 0  # of the prompt, reported as served from the cache (directive cached_tokens)

    @property
    def prompt_tokens(self) -> int:
        return self.text_tokens + self.media_tokens

    def usage(self, thoughts: int, answer: int) -> dict[str, Any]:
        u: dict[str, Any] = {"promptTokenCount": self.prompt_tokens}
        if self.cached_tokens:  # part of promptTokenCount, as Gemini reports it
            u["cachedContentTokenCount"] = self.cached_tokens
            u["cacheTokensDetails"] = [{"modality": "TEXT", "tokenCount": self.cached_tokens}]
        if answer:
            u["candidatesTokenCount"] = answer
        u["totalTokenCount"] = self.prompt_tokens + thoughts + answer
        details = [{"modality": "TEXT", "tokenCount": self.text_tokens}]
        if self.media_tokens:
            details.append({"modality": "IMAGE", "tokenCount": self.media_tokens})
        u["promptTokensDetails"] = details
        if thoughts:
            u["thoughtsTokenCount"] = thoughts
        return u

    def events(self, response_id: str) -> Iterator[dict[str, Any] | None]:
        """One item per planned chunk: the event to send, or None for a hidden chunk."""
        thoughts = answer = 0
        last = len(self.chunks) - 1
        for i, chunk in enumerate(self.chunks):
            thoughts += chunk.thoughts
            answer += chunk.answer
            if chunk.parts is None:
                yield None
                continue
            content: dict[str, Any] = {"role": "model"}
            if chunk.parts:
                content = {"parts": chunk.parts, "role": "model"}
            cand: dict[str, Any] = {"content": content}
            if i == last:
                cand["finishReason"] = self.finish
            cand["index"] = 0
            yield {"candidates": [cand], "usageMetadata": self.usage(thoughts, answer),
                   "modelVersion": self.model, "responseId": response_id}

    def full(self, response_id: str) -> dict[str, Any]:
        """The merged non-streaming GenerateContentResponse."""
        thought_text: list[str] = []
        answer_text: list[str] = []
        calls: list[dict[str, Any]] = []
        signature = None
        thoughts = answer = 0
        for chunk in self.chunks:
            thoughts += chunk.thoughts
            answer += chunk.answer
            for p in chunk.parts or ():
                if "functionCall" in p:
                    calls.append(p)
                elif p.get("thought"):
                    thought_text.append(p["text"])
                else:
                    answer_text.append(p["text"])
                    signature = p.get("thoughtSignature", signature)
        parts: list[dict[str, Any]] = []
        if thought_text:
            parts.append({"text": "".join(thought_text), "thought": True})
        text = "".join(answer_text)
        if text or signature:
            part: dict[str, Any] = {"text": text}
            if signature:
                part["thoughtSignature"] = signature
            parts.append(part)
        parts.extend(calls)
        content: dict[str, Any] = {"parts": parts, "role": "model"} if parts else {"role": "model"}
        return {
            "candidates": [{"content": content, "finishReason": self.finish, "index": 0}],
            "usageMetadata": self.usage(thoughts, answer),
            "modelVersion": self.model,
            "responseId": response_id,
        }


def thinking_tokens(gen: GenRequest, d: Directives) -> int:
    """Thinking length: the directive if given, else 16 scaled by level, capped by budget."""
    budget = gen.config.thinking_budget
    if budget == 0 and not gen.gen3:
        return 0  # Gemini 2.5 Flash(-Lite): budget 0 turns thinking off
    if d.thinking_tokens is not None:
        return d.thinking_tokens
    if budget == 0:
        level = "MINIMAL"  # Gemini 3 cannot turn thinking off; budget 0 thinks minimally
    else:
        level = gen.config.thinking_level or "HIGH"
    n = math.ceil(DEFAULT_THINKING_TOKENS * _LEVEL_FACTOR[level])
    if budget is not None and budget > 0:
        n = min(n, budget)
    return n


def _calls_wanted(gen: GenRequest, d: Directives) -> int:
    """How many function calls to answer with. Mode ANY always calls (at least one), also on the turn
    right after a functionResponse, as Gemini does; AUTO calls only when a user's text asks."""
    if not gen.tools.functions or gen.tools.fc_mode == "NONE":
        return 0
    if gen.tools.fc_mode == "ANY":
        return max(1, 1 if d.tool_calls is None else d.tool_calls)
    if gen.answer_function_response:
        return 0
    last = gen.contents[-1]
    if last["role"] != "user" or not any("text" in p for p in last["parts"]):
        return 0
    return 1 if d.tool_calls is None else d.tool_calls


def build_plan(gen: GenRequest, d: Directives) -> Plan:
    seed = int.from_bytes(gen.digest, "big")
    cfg = gen.config
    text_tokens = gen.text_tokens
    if d.prompt_tokens is not None:  # report this prompt size: the text part grows or shrinks to it
        text_tokens = max(0, d.prompt_tokens - gen.media_tokens)
    plan = Plan(model=gen.model, text_tokens=text_tokens, media_tokens=gen.media_tokens)
    plan.cached_tokens = min(d.cached_tokens or 0, plan.prompt_tokens)
    limit = cfg.max_output_tokens
    capped = False

    n_think = thinking_tokens(gen, d)
    if limit is not None and n_think > limit:
        n_think, capped = limit, True
    remaining = None if limit is None else limit - n_think
    if cfg.include_thoughts:
        think = g.text_units(random.Random(seed ^ 2), n_think, g.THINKING_WORDS)
        for i in range(0, n_think, CHUNK_TOKENS):
            group = think[i:i + CHUNK_TOKENS]
            plan.chunks.append(Chunk([{"text": "".join(group), "thought": True}], len(group)))
    else:  # hidden thinking: only its length (and its chunks' delays) matter
        for i in range(0, n_think, CHUNK_TOKENS):
            plan.chunks.append(Chunk(None, min(CHUNK_TOKENS, n_think - i)))

    n_calls = _calls_wanted(gen, d)
    if n_calls:
        rng = random.Random(seed ^ 3)
        names = gen.tools.allowed_names or [name for name, _ in gen.tools.functions]
        schemas = dict(gen.tools.functions)
        for i in range(n_calls):
            name = names[i % len(names)]
            schema = schemas.get(name)
            args = generate_value(schema, rng) if schema is not None else {}
            if not isinstance(args, dict):
                args = {}
            cost = g.call_units(name, args)
            if remaining is not None:
                if cost > remaining:
                    capped = True
                    break
                remaining -= cost
            part: dict[str, Any] = {"functionCall": {"name": name, "args": args}}
            if i == 0 and (gen.gen3 or n_think > 0):
                part["thoughtSignature"] = g.sign_call(name, args)
            plan.chunks.append(Chunk([part], answer=cost))
    elif not capped:
        rng = random.Random(seed ^ 1)
        n = DEFAULT_ANSWER_TOKENS if d.output_tokens is None else d.output_tokens
        if cfg.schema is not None:
            units = g.schema_answer_units(rng, cfg.schema, cfg.mime == "text/x.enum")
        elif cfg.mime == "application/json":
            units = g.json_answer_units(rng, n)
        else:
            units = g.text_units(rng, n, g.ANSWER_WORDS)
        if remaining is not None and len(units) > remaining:
            units, capped = units[:remaining], True
        units, stopped = _apply_stop(units, cfg.stop_sequences)
        if stopped:
            capped = False
        for i in range(0, len(units), CHUNK_TOKENS):
            group = units[i:i + CHUNK_TOKENS]
            plan.chunks.append(Chunk([{"text": "".join(group)}], answer=len(group)))
        if gen.gen3 and units:
            sig = g.sign_text(gen.digest)
            plan.chunks.append(Chunk([{"text": "", "thoughtSignature": sig}]))
    if not plan.chunks or plan.chunks[-1].parts is None:
        plan.chunks.append(Chunk([]))
    plan.finish = d.finish or ("MAX_TOKENS" if capped else "STOP")
    return plan


def _apply_stop(units: list[str], stops: list[str]) -> tuple[list[str], bool]:
    """Cut the answer before the first stop sequence; a cut unit's kept prefix is one unit."""
    if not stops:
        return units, False
    text = "".join(units)
    hits = [pos for pos in (text.find(s) for s in stops if s) if pos >= 0]
    if not hits:
        return units, False
    cut = min(hits)
    out: list[str] = []
    pos = 0
    for u in units:
        if pos + len(u) <= cut:
            out.append(u)
            pos += len(u)
            continue
        if cut > pos:
            out.append(u[: cut - pos])
        break
    return out, True
