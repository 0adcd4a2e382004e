"""Money arithmetic: integers only.

1 credit = $0.01 = 1,000,000 micro-credits. Every balance, hold and charge in
code and in Redis is an integer number of micro-credits.

What a request costs, and its one rounding rule, is shared/pricing.py.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

MICRO_PER_CREDIT = 1_000_000


def credits_to_micro(credits: str | int | float | Decimal) -> int:
    """Exact conversion from a decimal credit amount (text, as typed, or a JSON number).

    Raises ValueError for anything that is not a finite number of whole micro-credits
    ("abc", "inf", "NaN", 0.0000001). A float goes through its shortest text form,
    so the JSON number 2.5 is exactly 2_500_000.
    """
    try:
        micro = Decimal(str(credits).strip()) * MICRO_PER_CREDIT
    except InvalidOperation:
        raise ValueError(f"{credits!r} is not a number of credits") from None
    if not micro.is_finite() or micro != micro.to_integral_value():
        raise ValueError(f"{credits} credits is not a whole number of micro-credits")
    return int(micro)


def micro_to_credits(micro: int) -> float:
    """For display only (JSON numbers); never feed the result back into money paths."""
    return micro / MICRO_PER_CREDIT


def micro_to_decimal(micro: int | str) -> Decimal:
    """Credits, exactly, for text (pages, CSV): no float rounding however large the amount."""
    return Decimal(int(micro)) / MICRO_PER_CREDIT

