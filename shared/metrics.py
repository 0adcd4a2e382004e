"""Prometheus metrics, one definition per name, shared by every process.

The gateway serves them at ``GET /metrics``; workers and the billing worker on
their own ``--metrics-port``. Labels stay low-cardinality: no request or key ids.
"""

from __future__ import annotations

from functools import lru_cache

from prometheus_client import Counter, Gauge, Histogram, start_http_server


@lru_cache(maxsize=4096)
def labelled(metric, *values: str):
    """``metric.labels(*values)``, looked up once: the hot path updates a few metrics per request,
    and each ``labels()`` call takes a lock and builds its key again. Label values are
    low-cardinality, so the cache stays small."""
    return metric.labels(*values)


LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)

# gateway
HTTP_REQUESTS = Counter("apiinone_http_requests_total", "HTTP requests answered by the gateway",
                        ["route", "status"])
HTTP_DURATION = Histogram("apiinone_http_request_duration_seconds", "Gateway request duration, first byte to last",
                          ["route"], buckets=LATENCY_BUCKETS)
GATEWAY_INFLIGHT = Gauge("apiinone_gateway_inflight_requests", "Chat requests this gateway is relaying")
RESERVATIONS = Counter("apiinone_reservations_total", "Credit reservations by result", ["result"])
FAILOVERS = Counter("apiinone_failovers_total", "Attempts retried on another node or worker", ["reason"])
# outcome: served (the fallback answered), failed (it could not either), skipped (its hold was refused:
# the account or the key could not cover it)
FALLBACKS = Counter("apiinone_fallbacks_total", "Requests moved to a fallback model (catalog fallbacks)",
                    ["from_model", "to_model", "outcome"])

# node workers
JOBS = Counter("apiinone_jobs_total", "Chat jobs by outcome", ["node", "model", "status"])
TTFT = Histogram("apiinone_time_to_first_token_seconds", "Job start to first token", ["node", "model"],
                 buckets=LATENCY_BUCKETS)
JOB_DURATION = Histogram("apiinone_job_duration_seconds", "Job start to end", ["node", "model"],
                         buckets=LATENCY_BUCKETS)
QUEUE_WAIT = Histogram("apiinone_queue_wait_seconds", "Enqueue to job start", ["node"], buckets=LATENCY_BUCKETS)
WORKER_INFLIGHT = Gauge("apiinone_worker_inflight_jobs", "Jobs running in this worker", ["node"])
TOKENS = Counter("apiinone_tokens_total", "Tokens processed", ["node", "model", "kind"])
UPSTREAM_ERRORS = Counter("apiinone_upstream_errors_total", "Upstream failures by mapped code", ["node", "code"])

# billing worker
CREDITS_CHARGED = Counter("apiinone_credits_charged_micro_total", "Micro-credits charged", ["model"])
SETTLEMENTS = Counter("apiinone_settlements_total",
                      "Settlements by result: applied, late (after reconciliation released the hold), replay",
                      ["result"])
LATE_SHORTFALL = Counter("apiinone_late_settlement_shortfall_micro_total",
                         "Micro-credits late settlements could not charge (the released hold or the free "
                         "balance was smaller than the charge)")
SETTLE_FAILURES = Counter("apiinone_settle_failures_total", "Settlements that raised")
RECONCILED_HOLDS = Counter("apiinone_reconciled_holds_total", "Expired holds released by reconciliation")


def serve_metrics(port: int, host: str = "127.0.0.1") -> None:
    """Expose /metrics for a worker process (port 0: off)."""
    if port:
        start_http_server(port, addr=host)

# the archiver (Redis -> Postgres) and the recovery
ARCHIVED = Counter("apiinone_archived_entries_total",
                   "Ledger and usage entries (and stored responses' puts and deletes) committed to Postgres", ["kind"])
ARCHIVE_LAG = Histogram("apiinone_archiver_lag_seconds", "An entry's time in Redis before its commit to Postgres",
                        buckets=LATENCY_BUCKETS)
ARCHIVE_DATABASE_UP = Gauge("apiinone_archiver_database_up",
                            "1 while the archiver reaches Postgres; 0: Redis keeps the entries until it is back")
ARCHIVE_BACKLOG = Gauge("apiinone_archiver_backlog_accounts", "Accounts with entries waiting to be archived")
RECOVERED = Counter("apiinone_recovered_entries_total",
                    "Ledger rows Postgres had and a restarted Redis had lost, re-applied by the recovery", ["kind"])
