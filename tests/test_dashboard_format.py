"""The dashboard's money filters: what a customer reads beside every order and balance."""

from gateway.dashboard.render import credits, usd


def test_dollars_always_show_cents_and_keep_sub_cent_values():
    # 1 credit = $0.01; 10 credits once read "$0.1" and 1,000 credits "$10" on the orders page.
    assert [usd(m) for m in (0, 10_000_000, 1_000_000_000, 12_500_000, 1_022_324_250, 550_000_000_000)] == [
        "$0.00", "$0.10", "$10.00", "$0.125", "$10.2232", "$5,500.00"]
    assert usd(None) == "—"


def test_credits_are_exact_with_at_least_two_decimals():
    assert [credits(m) for m in (0, 10_000_000, 1_022_324_250, 1)] == ["0.00", "10.00", "1,022.32425", "0.000001"]
