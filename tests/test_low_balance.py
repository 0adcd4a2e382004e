"""Low-balance alerts (shared/low_balance.py): the walk over ledger entries, and the archiver's part of it in
Postgres: one alert per crossing however often (and however concurrently) the same entries are archived,
re-armed by a credit back above the threshold."""

from __future__ import annotations

import asyncio

from shared.low_balance import AlertState, BalanceAlerts, note_crossings, walk

M = 1_000_000


def row(amount: int, balance: int, ms: int, account: str = "acct_a", reason: str = "charge") -> tuple:
    return (account, reason, f"req_{ms}", amount, balance, ms, 0)


def test_a_walk_alerts_once_per_crossing_and_a_credit_above_rearms():
    state = AlertState("acct_a", 10 * M, True, (0, 0))
    rows = [row(-2 * M, 11 * M, 1), row(-2 * M, 9 * M, 2), row(-1 * M, 8 * M, 3),  # crosses at 2, not again at 3
            row(1 * M, 9 * M, 4, reason="topup"),  # a credit that stays below: still disarmed
            row(0, 9 * M, 5, reason="hold_expired"), row(-1 * M, 8 * M, 6),
            row(5 * M, 13 * M, 7, reason="topup"), row(-4 * M, 9 * M, 8)]  # re-armed at 7, crosses at 8
    alerts = walk(state, rows)
    assert [a["reference"] for a in alerts] == ["req_2", "req_8"]
    assert alerts[0]["balance_micro"] == 9 * M and alerts[0]["threshold_micro"] == 10 * M
    assert walk(state, rows) == [] and state.seen == (8, 0) and not state.armed  # the same entries again


async def test_the_archivers_walk_in_postgres_alerts_once_under_replays(stores):
    _redis, db = stores
    from shared.db.migrations import migrate
    await migrate(db)
    await BalanceAlerts(db).set("acct_a", 10 * M, webhook_url="https://hooks.example.com/low")
    await BalanceAlerts(db).set("acct_b", 1 * M)
    batch = [row(-2 * M, 9 * M, 1), row(-1 * M, 8 * M, 2), row(-1 * M, 5 * M, 1, account="acct_b"),
             row(-1 * M, 3 * M, 1, account="acct_c")]  # b stays above its threshold; c has none

    async def archive() -> int:
        async with db.transaction() as conn:
            return await note_crossings(conn, batch)

    assert sum(await asyncio.gather(*(archive() for _ in range(4)))) == 1  # read four times, at once
    assert await archive() == 0
    rows = await db.fetch("SELECT channel, facts FROM alert_outbox WHERE account_id = 'acct_a' ORDER BY channel")
    assert [r["channel"] for r in rows] == ["mail", "webhook"]  # one mail and one event, for the one crossing
    assert await db.fetchval("SELECT count(*) FROM alert_outbox") == 2
    assert rows[0]["facts"]["balance_micro"] == 9 * M and rows[1]["facts"]["url"] == "https://hooks.example.com/low"
    assert (await BalanceAlerts(db).get("acct_a"))["armed"] is False
    await BalanceAlerts(db).set("acct_a", 7 * M)  # a new threshold is armed: the next debit below it mails (only)
    async with db.transaction() as conn:
        assert await note_crossings(conn, [row(-1 * M, 6 * M, 3)]) == 1
    await BalanceAlerts(db).set("acct_a", None)
    assert await BalanceAlerts(db).get("acct_a") is None
