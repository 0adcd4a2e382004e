"""The simulator's model catalog and per-family rules."""

from __future__ import annotations

import re
from typing import Any

# (name, display name, input limit, output limit)
_LISTED = (
    ("gemini-2.5-flash", "Gemini 2.5 Flash", 1_048_576, 65_536),
    ("gemini-2.5-flash-lite", "Gemini 2.5 Flash-Lite", 1_048_576, 65_536),
    ("gemini-2.5-pro", "Gemini 2.5 Pro", 1_048_576, 65_536),
    ("gemini-3-flash-preview", "Gemini 3 Flash Preview", 1_048_576, 65_536),
    ("gemini-3-pro-preview", "Gemini 3 Pro Preview", 1_048_576, 65_536),
)
_VERSION = re.compile(r"^gemini-(\d+(?:\.\d+)?)")
MAX_OUTPUT_TOKENS = 65_536
METHODS = ["generateContent", "countTokens", "createCachedContent", "batchGenerateContent"]


def is_gemini(name: str) -> bool:
    """Any model name starting with "gemini-" is served."""
    return name.startswith("gemini-") and len(name) > len("gemini-")


def version(name: str) -> float:
    m = _VERSION.match(name)
    # Aliases without a number (gemini-flash-latest, ...) point at the newest family.
    return float(m.group(1)) if m else 3.0


def is_gen3(name: str) -> bool:
    """Gemini 3 and later: thinkingLevel, enforced function-call thought signatures."""
    return version(name) >= 3


def is_pro(name: str) -> bool:
    return "-pro" in name


def thinking_budget_max(name: str) -> int:
    return 32_768 if is_pro(name) else 24_576


def entry(name: str) -> dict[str, Any]:
    for n, display, inp, out in _LISTED:
        if n == name:
            break
    else:
        display, inp, out = name, 1_048_576, MAX_OUTPUT_TOKENS
    return {
        "name": f"models/{name}",
        "version": "001",
        "displayName": display,
        "description": f"Simulated {display}",
        "inputTokenLimit": inp,
        "outputTokenLimit": out,
        "supportedGenerationMethods": METHODS,
        "temperature": 1,
        "topP": 0.95,
        "topK": 64,
        "maxTemperature": 2,
        "thinking": True,
    }


def listing() -> dict[str, Any]:
    return {"models": [entry(n) for n, *_ in _LISTED]}
