"""Every credit amount (admin JSON, dashboard forms, the CLI) is parsed by shared/money.py's credits_to_micro."""

from __future__ import annotations

from decimal import Decimal

import pytest

from shared.money import credits_to_micro, micro_to_credits, micro_to_decimal


@pytest.mark.parametrize("amount, micro", [
    ("25", 25_000_000), ("2.5", 2_500_000), (" 3 ", 3_000_000), ("1e2", 100_000_000), ("-10", -10_000_000),
    (2.5, 2_500_000), (0.1, 100_000), (5, 5_000_000), (Decimal("0.000001"), 1),
])
def test_amounts_convert_exactly(amount, micro):
    assert credits_to_micro(amount) == micro


@pytest.mark.parametrize("amount", ["", "abc", "1,5", "inf", "-Infinity", "NaN", "0.0000001", 1e-7])
def test_what_is_not_whole_micro_credits_is_a_value_error(amount):
    with pytest.raises(ValueError):  # never InvalidOperation or OverflowError (a 500 where a 400 belongs)
        credits_to_micro(amount)


def test_display_conversions():
    assert micro_to_credits(2_500_000) == 2.5
    assert str(micro_to_decimal(123_456_789_123_456)) == "123456789.123456"  # exact, past float precision
