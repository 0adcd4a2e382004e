"""The `apiinone` command: one entry point, one subcommand per role.

    apiinone run                         everything, supervised (what `make run` calls)
    apiinone gateway                     HTTP ingress
    apiinone worker --node NAME          a worker pool for one backend node
    apiinone billing-worker              settlement and hold reconciliation
    apiinone batch-worker                OpenAI batches: validation, feeding, output files, callbacks
    apiinone archiver                    ledger and usage to Postgres; recovery after a Redis restart
    apiinone migrate                     apply the database migrations (every role also does at start)
    apiinone simulator [--port N]        the Gemini-protocol simulator
    apiinone admin ...                   accounts, keys, top-ups, nodes, upstream-keys, audit, restore, recover
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import sys


def _raise_file_limit() -> None:
    """Thousands of concurrent streams need thousands of sockets: lift the soft limit to the hard one."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# The cyclic collector's youngest generation is collected every 700 new container objects by default:
# several times per request here, each run promoting the in-flight requests' objects a generation up,
# where the next collections walk them again. At 10,000, a collection runs every few requests and most of
# a request's objects are gone (freed by reference counting) before one does. Alternating runs against
# the tree before it on a noisy two-core box: 1.20x and 1.12x the requests per second in two scenarios,
# 0.93x and 0.98x in the other two (tests/bench/findings.md).
GC_THRESHOLDS = (10_000, 10, 10)


def _tune_gc() -> None:
    """Every long-running role: what the imports built is never garbage (``gc.freeze`` keeps the collector
    from walking it again at each full collection), and the young generation is collected less often."""
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def _run_async(coro) -> None:
    _raise_file_limit()
    _tune_gc()
    try:
        import uvloop

        uvloop.run(coro)
    except ImportError:
        asyncio.run(coro)


def _settings():
    from shared.settings import get_settings

    return get_settings()


def _logging(role: str) -> None:
    from shared.logging import configure_logging

    s = _settings()
    configure_logging(s.log_format, s.log_level, role)


def _serve_metrics(args) -> None:
    from shared.metrics import serve_metrics

    s = _settings()
    serve_metrics(args.metrics_port if args.metrics_port is not None else s.metrics_port, s.metrics_host)


def cmd_run(args) -> None:
    from apiinone.launcher import PortTaken, run

    _logging("supervisor")  # its own lines: children exiting, restarts, crash loops
    try:
        run(_settings())
    except PortTaken as exc:
        sys.exit(f"apiinone run: {exc}")


def cmd_gateway(args) -> None:
    from gateway.app import AdminTokenRefused, check_admin_token, serve

    _logging("gateway")
    try:
        check_admin_token(_settings().admin_token)
    except AdminTokenRefused as exc:
        sys.exit(f"apiinone gateway: {exc}")
    _run_async(serve())


def cmd_worker(args) -> None:
    from worker.node_worker import serve

    _logging("worker")
    _serve_metrics(args)
    _run_async(serve(args.node, args.concurrency or _settings().worker_concurrency))


def cmd_billing(args) -> None:
    from worker.billing import serve

    _logging("billing")
    _serve_metrics(args)
    _run_async(serve())


def cmd_batch(args) -> None:
    from worker.batch import serve

    _logging("batch")
    _serve_metrics(args)
    _run_async(serve())


def cmd_archiver(args) -> None:
    from apiinone.supervisor import run_as_background
    from worker.archiver import serve

    run_as_background()  # the record's rounds do not preempt the request path (apiinone/supervisor.py)
    _logging("archiver")
    _serve_metrics(args)
    _run_async(serve())


def cmd_migrate(args) -> None:
    from apiinone.launcher import apply_migrations

    url = _settings().database_url
    if not url:
        sys.exit("DATABASE_URL is not set")
    asyncio.run(apply_migrations(url))
    print("migrations applied")


def cmd_simulator(args) -> None:
    from worker.simulator.app import serve

    _raise_file_limit()
    serve(args.host, args.port or _settings().simulator_port)


async def _current_catalog(redis):
    """The live catalog's current version (None: the store is empty or off)."""
    from shared.catalog import parse_catalog
    from shared.catalog_store import CatalogStore
    from shared.scripts import Scripts

    stored = await CatalogStore(redis, Scripts(redis)).current()
    return parse_catalog(stored.document, stored.version) if stored else None


async def _audit(db, action: str, target: str, after: dict) -> None:
    """An operator action made from this command line, in the operator audit log (who: the shell's user)."""
    import getpass
    import socket

    from shared.operator_audit import Action, Actor, OperatorAudit

    if db is not None:  # without the record there is no log to write (and stdout is the command's answer)
        actor = Actor(f"cli {getpass.getuser()}@{socket.gethostname()}")
        await OperatorAudit(db).record(actor, Action(action), target, None, after)


async def _admin(args) -> object:
    from decimal import Decimal

    from shared.accounts import Accounts
    from shared.catalog import get_catalog
    from shared.credits import Credits
    from shared.db.credits_record import CreditRecord
    from shared.db.database import Database
    from shared.db.directory import Directory
    from shared.money import credits_to_micro
    from shared.nodes import node_status
    from shared.redis_client import make_redis

    settings = _settings()
    if not settings.redis_url:
        sys.exit("REDIS_URL is not set (with `make run`'s embedded Valkey: redis://127.0.0.1:6390/0)")
    redis = make_redis(settings.redis_url)
    db = Database(settings.database_url, pool_size=2) if settings.database_url else None
    directory = Directory(db) if db else None
    accounts = Accounts(redis, Credits(redis, record=CreditRecord(db) if db else None), directory,
                        max_keys=settings.max_keys_per_account)
    try:
        if args.noun in ("restore", "recover", "audit"):
            return await _record_command(args.noun, redis, db, settings)
        what = (args.noun, getattr(args, "verb", None))
        if what == ("accounts", "create"):
            account = await accounts.create_account(args.name, credits_to_micro(Decimal(args.credits)))
            await _audit(db, "account.create", account["id"], account)
            return account
        if what == ("accounts", "show"):
            return await accounts.get_account(args.account_id)
        if what == ("accounts", "list"):
            return await accounts.list_accounts()
        if what == ("keys", "create"):
            key = await accounts.create_key(
                args.account_id, args.name, rpm=args.rpm, tpm=args.tpm, max_concurrent=args.max_concurrent,
                credit_limit_micro=credits_to_micro(Decimal(args.credit_limit)) if args.credit_limit else None,
                daily_credit_limit_micro=(credits_to_micro(Decimal(args.daily_credit_limit))
                                          if args.daily_credit_limit else None))
            await _audit(db, "key.create", key["id"], {f: v for f, v in key.items() if f != "key"})
            return key
        if what == ("keys", "list"):
            return await accounts.list_keys(args.account_id)
        if what == ("keys", "revoke"):
            deleted = await accounts.revoke_key(args.key_id)
            if deleted:
                await _audit(db, "key.revoke", args.key_id, {"id": args.key_id, "revoked": True})
            return {"id": args.key_id, "deleted": deleted}
        if args.noun == "topup":
            order, created = await accounts.credits.credit(args.account_id, credits_to_micro(Decimal(args.credits)),
                                                           args.reference)
            if created:
                await _audit(db, "credits.topup", args.account_id, {"order": order})
            return {**order, "created_now": created}
        if args.noun == "users":  # dashboard users (shared/users.py)
            from shared.users import UserError, Users

            users = Users(redis, directory)
            if args.verb == "list":
                return [u.public() for u in await users.list_users(args.account)]
            try:
                role = "operator" if args.operator else "user"
                return (await users.create(args.email, args.password, args.account, role)).public()
            except UserError as exc:
                sys.exit(f"error: {exc}")
        if args.noun == "nodes":
            return await node_status(redis, await _current_catalog(redis) or get_catalog(), settings.worker_lease_s)
        if what == ("upstream-keys", "enable"):  # README "Key pools"
            return await _enable_upstream_key(args, redis, db)
        raise SystemExit("unknown admin command; see `apiinone admin --help`")
    finally:
        await redis.aclose()
        if db is not None:
            await db.close()


async def _enable_upstream_key(args, redis, db) -> dict:
    """A disabled upstream key back in its node's rotation on every worker; in the operator audit log."""
    from shared.key_state import enable_key
    from shared.scripts import Scripts

    was = await enable_key(redis, Scripts(redis), args.node, args.key)
    if was is None:
        sys.exit(f"error: node {args.node!r} has no upstream key ending in {args.key!r}")
    await _audit(db, "upstream_key.enable", f"{args.node}/{args.key}", {"state": "active", "was_disabled": was})
    return {"node": args.node, "key": args.key, "state": "active", "was_disabled": was}


async def _record_command(noun: str, redis, db, settings) -> object:
    """audit (Redis and Postgres agree), restore (a wiped Redis from Postgres), recover (the recovery pass)."""
    from shared.audit import audit

    if noun == "audit":
        rows = await audit(redis, db)
        bad = [r for r in rows if not r["ok"]]
        print(f"audited {len(rows)} accounts: {'clean' if not bad else f'{len(bad)} differ'}", file=sys.stderr)
        if bad:
            print(json.dumps(bad, indent=2))
            sys.exit(1)
        return rows
    if db is None:
        sys.exit("DATABASE_URL is not set: restore and recover read the record in Postgres")
    from worker.archiver.recovery import Recovery
    from worker.archiver.restore import Restorer

    if noun == "restore":
        from shared.blob_store import blob_store
        from shared.file_store import FileStore

        files = FileStore(db, blob_store(settings), settings)
        try:
            return await Restorer(redis, db, files, settings.batch_file_retention_s).restore_all()
        finally:
            await files.blobs.close()
    report = await Recovery(redis, db).check(force=True)
    return report.as_dict() if report else {}


def _credits_arg(text: str, *, allow_zero: bool) -> str:
    """argparse type: a decimal credit amount, positive (or zero when allowed), whole micro-credits."""
    from decimal import Decimal, InvalidOperation

    from shared.money import credits_to_micro

    try:
        micro = credits_to_micro(Decimal(text))
    except (InvalidOperation, ValueError):
        raise argparse.ArgumentTypeError(f"{text!r} is not an amount of credits (at most 6 decimals)") from None
    if micro < 0 or (micro == 0 and not allow_zero) or micro > 10**15:
        raise argparse.ArgumentTypeError(f"{text!r} is out of range")
    return text


def cmd_admin(args) -> None:
    from redis.exceptions import RedisError

    from shared.accounts import TooManyKeys
    from shared.credits import AccountFenced, AccountNotFound
    from shared.db.database import DatabaseUnavailable

    try:
        result = asyncio.run(_admin(args))
    except AccountNotFound as exc:
        sys.exit(f"error: no account {exc}")
    except TooManyKeys as exc:
        sys.exit(f"error: {exc}")
    except RedisError as exc:
        sys.exit(f"error: Redis at REDIS_URL is unavailable: {exc}")
    except DatabaseUnavailable as exc:
        sys.exit(f"error: the database at DATABASE_URL is unavailable: {exc}")
    except AccountFenced as exc:
        sys.exit(f"error: account {exc} waits for the recovery after a Redis restart; try again shortly")
    print(json.dumps(result, indent=2, default=str))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="apiinone", description="OpenAI-compatible LLM gateway with prepaid credits")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="start everything (embedded Valkey, simulator, gateway, workers, billing)"
                   ).set_defaults(func=cmd_run)
    sub.add_parser("gateway", help="HTTP ingress").set_defaults(func=cmd_gateway)
    w = sub.add_parser("worker", help="a worker pool pinned to one backend node")
    w.add_argument("--node", required=True)
    w.add_argument("--concurrency", type=int, default=None, help="concurrent jobs (default APIINONE_WORKER_CONCURRENCY)")
    w.add_argument("--metrics-port", type=int, default=None, help="serve /metrics here (default APIINONE_METRICS_PORT)")
    w.set_defaults(func=cmd_worker)
    b = sub.add_parser("billing-worker", help="settlement and hold reconciliation")
    b.add_argument("--metrics-port", type=int, default=None, help="serve /metrics here (default APIINONE_METRICS_PORT)")
    b.set_defaults(func=cmd_billing)
    bw = sub.add_parser("batch-worker", help="OpenAI batches: validation, feeding, output files, callbacks")
    bw.add_argument("--metrics-port", type=int, default=None, help="serve /metrics here (default APIINONE_METRICS_PORT)")
    bw.set_defaults(func=cmd_batch)
    ar = sub.add_parser("archiver", help="ledger and usage entries to Postgres; recovery after a Redis restart")
    ar.add_argument("--metrics-port", type=int, default=None, help="serve /metrics here (default APIINONE_METRICS_PORT)")
    ar.set_defaults(func=cmd_archiver)
    sub.add_parser("migrate", help="apply the database migrations (DATABASE_URL)").set_defaults(func=cmd_migrate)
    s = sub.add_parser("simulator", help="the Gemini-protocol simulator")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=None)
    s.set_defaults(func=cmd_simulator)

    a = sub.add_parser("admin", help="operator commands against REDIS_URL")
    a.set_defaults(func=cmd_admin)
    nouns = a.add_subparsers(dest="noun", required=True)
    acc = nouns.add_parser("accounts").add_subparsers(dest="verb", required=True)
    c = acc.add_parser("create")
    c.add_argument("--name", required=True)
    c.add_argument("--credits", default="0", type=lambda t: _credits_arg(t, allow_zero=True))
    acc.add_parser("show").add_argument("account_id")
    acc.add_parser("list")
    k = nouns.add_parser("keys").add_subparsers(dest="verb", required=True)
    kc = k.add_parser("create")
    kc.add_argument("account_id")
    kc.add_argument("--name", default="default")
    kc.add_argument("--rpm", type=int)
    kc.add_argument("--tpm", type=int)
    kc.add_argument("--max-concurrent", type=int)
    kc.add_argument("--credit-limit", help="credits this key may spend in total",
                    type=lambda t: _credits_arg(t, allow_zero=False))
    kc.add_argument("--daily-credit-limit", help="credits this key may spend per UTC day",
                    type=lambda t: _credits_arg(t, allow_zero=False))
    k.add_parser("list").add_argument("account_id")
    k.add_parser("revoke").add_argument("key_id")
    t = nouns.add_parser("topup")
    t.add_argument("account_id")
    t.add_argument("--credits", required=True, type=lambda t: _credits_arg(t, allow_zero=False))
    t.add_argument("--reference", required=True)
    u = nouns.add_parser("users", help="dashboard users").add_subparsers(dest="verb", required=True)
    uc = u.add_parser("create", help="a user who signs in to /dashboard with email and password")
    uc.add_argument("--email", required=True)
    uc.add_argument("--password", required=True, help="at least 8 characters")
    uc.add_argument("--account", required=True, help="the account the user belongs to")
    uc.add_argument("--operator", action="store_true", help="operator role: sees every account and the nodes")
    u.add_parser("list").add_argument("--account", default=None)
    nouns.add_parser("nodes")
    up = nouns.add_parser("upstream-keys", help="a node's upstream keys").add_subparsers(dest="verb", required=True)
    ue = up.add_parser("enable", help="put a disabled (or cooling down) upstream key back in its node's rotation")
    ue.add_argument("node")
    ue.add_argument("key", help="the key's last 4 characters")
    nouns.add_parser("audit", help="every account: Redis balance == Postgres ledger + unarchived, held == holds")
    nouns.add_parser("restore", help="rebuild accounts, keys, users and balances a wiped Redis lost, from Postgres")
    nouns.add_parser("recover", help="re-apply ledger rows Postgres has and Redis lost (what the archiver does "
                                     "by itself after a Redis restart)")
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    args.func(args)


if __name__ == "__main__":
    main()
