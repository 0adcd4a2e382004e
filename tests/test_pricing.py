"""The one pricing function (shared/pricing.py) and the catalog's price dimensions, without a stack."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.catalog import BUNDLED_CATALOG, load_catalog, parse_catalog
from shared.pricing import (PPM, LongContextTier, PriceSheet, Rates, TokenCounts, affordable_output_tokens,
                            multiplier_text, parse_multiplier, price, worst_case_micro)
from worker.simulator.directives import parse_directives

M = 1_000_000
FLASH = PriceSheet(Rates(50 * M, 5 * M, 300 * M))
PRO = PriceSheet(Rates(200 * M, 20 * M, 1200 * M), LongContextTier(200_000, Rates(400 * M, 40 * M, 1800 * M)))


@pytest.mark.parametrize("sheet, multiplier, tokens, tier, parts", [
    (FLASH, PPM, TokenCounts(11, 600), "standard", (550, 0, 180_000)),
    (FLASH, PPM, TokenCounts(1000, 500, 400), "standard", (30_000, 2_000, 150_000)),
    (FLASH, 1_250_000, TokenCounts(1000, 500, 400), "standard", (37_500, 2_500, 187_500)),
    (FLASH, 850_000, TokenCounts(333, 77, 101), "standard", (9_860, 430, 19_635)),
    (PRO, PPM, TokenCounts(200_000, 1000, 50_000), "standard", (30_000_000, 1_000_000, 1_200_000)),
    (PRO, PPM, TokenCounts(250_000, 1000, 50_000), "long_context", (80_000_000, 2_000_000, 1_800_000)),
])
def test_the_readme_worked_example(sheet, multiplier, tokens, tier, parts):
    charge = price(sheet, multiplier, tokens)
    assert (charge.tier, (charge.input_micro, charge.cached_input_micro, charge.output_micro)) == (tier, parts)
    assert charge.total_micro == sum(parts)


def test_one_rounding_per_request_and_the_parts_add_up():
    # Three dimensions of 0.333333 micro-credits each: one micro-credit in all (one rounding).
    sheet = PriceSheet(Rates(1, 1, 1))
    charge = price(sheet, PPM, TokenCounts(666_666, 333_333, 333_333))  # a tie: the output takes it
    assert charge.total_micro == 1 and (charge.input_micro, charge.cached_input_micro, charge.output_micro) == (0, 0, 1)
    assert price(sheet, PPM, TokenCounts(0, 0)).total_micro == 0


def test_cached_tokens_are_part_of_the_prompt():
    assert price(FLASH, PPM, TokenCounts(10, 0, 50)).cached_tokens == 10  # never more than the prompt
    assert price(FLASH, PPM, TokenCounts(10, 0, 50)).input_tokens == 0


def test_the_clamp_solves_the_same_function():
    for sheet, multiplier, bound in ((FLASH, 850_000, 1234), (PRO, 3_333_333, 250_000), (PRO, 1, 10)):
        for hold in (5 * M, 123_456_789, 10**10):
            allowed = affordable_output_tokens(sheet, multiplier, hold, bound, 65_536)
            assert worst_case_micro(sheet, multiplier, bound, allowed) <= hold or allowed == 0
            assert allowed == 65_536 or worst_case_micro(sheet, multiplier, bound, allowed + 1) > hold


@given(sheet=st.sampled_from([FLASH, PRO, PriceSheet(Rates(1, 1, 1)), PriceSheet(Rates(7, 3, 11))]),
       multiplier=st.integers(1, 1000 * PPM), bound=st.integers(-5, 10**7), output=st.integers(-5, 10**7))
def test_the_worst_case_is_the_price_of_the_worst_case(sheet, multiplier, bound, output):
    """The admission's shortcut (no breakdown) is the pricing function's total, to the micro-credit."""
    assert worst_case_micro(sheet, multiplier, bound, output) == price(
        sheet, multiplier, TokenCounts(bound, output)).total_micro


def test_a_sheet_names_its_version_once():
    assert FLASH.version == PriceSheet(Rates(50 * M, 5 * M, 300 * M)).version != PRO.version
    assert len(FLASH.version) == 12 and FLASH == PriceSheet(Rates(50 * M, 5 * M, 300 * M))


def test_multipliers_are_exact():
    assert parse_multiplier("1.25") == 1_250_000 and parse_multiplier(0.85) == 850_000 and parse_multiplier(2) == 2 * M
    assert multiplier_text(1_250_000) == "1.25" and multiplier_text(PPM) == "1" and multiplier_text(1) == "0.000001"
    for bad in ("abc", "0", "-1", "1.0000001", "inf", "NaN", True, "1001"):
        with pytest.raises(ValueError):
            parse_multiplier(bad)


def test_the_bundled_catalog_has_googles_flash_prices():
    prices = load_catalog(BUNDLED_CATALOG).models["gemini"].prices
    assert prices == PriceSheet(Rates(50 * M, 5 * M, 300 * M))  # $0.50, $0.05 cached, $3.00 per 1M; no tier


def _catalog(model_extra: dict) -> dict:
    return {"providers": {"g": {"adapter": "gemini"}}, "nodes": {"n": {"provider": "g"}},
            "models": {"m": {"provider": "g", "nodes": ["n"], "upstream_model": "gemini-x", "base_cost_credits": 1,
                             "context_window": 1000, **model_extra}}}


def test_catalog_price_tables():
    legacy = parse_catalog(_catalog({"input_price_credits_per_1m": "50", "output_price_credits_per_1m": "300"}))
    assert legacy.models["m"].prices == PriceSheet(Rates(50 * M, 50 * M, 300 * M))  # no cache discount assumed
    tiered = parse_catalog(_catalog({"pricing": {"input": "200", "cached_input": "20", "output": "1200", "long_context": {
        "above_prompt_tokens": 200_000, "input": "400", "cached_input": "40", "output": "1800"}}}))
    assert tiered.models["m"].prices == PRO
    for bad in ({"input": "5", "cached_input": "6", "output": "1"},  # cached above input: the hold would not cover it
                {"input": "5", "output": "1", "long_context": {"above_prompt_tokens": 10, "input": "4", "output": "1"}},
                {"input": "5"}):
        with pytest.raises(ValueError):
            parse_catalog(_catalog({"pricing": bad}))


def test_simulator_directives_for_prompt_size_and_cache():
    d = parse_directives(["hi [[sim prompt_tokens=250000 cached_tokens=50000]]"])
    assert (d.prompt_tokens, d.cached_tokens) == (250_000, 50_000)
    assert parse_directives(["[[sim prompt_tokens=-1 cached_tokens=x]]"]).prompt_tokens is None
