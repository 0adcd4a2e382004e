"""Every knob of every process, read once from the environment.

All names carry the ``APIINONE_`` prefix except the conventional ``REDIS_URL``,
``DATABASE_URL``, ``GEMINI_API_KEY`` and ``GEMINI_BASE_URL`` (see ARCHITECTURE "the contract").
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    # An empty variable means "unset" (compose and k8s templates often leave them empty).
    model_config = SettingsConfigDict(env_prefix="APIINONE_", extra="ignore", env_ignore_empty=True)

    # HTTP ingress
    host: str = "127.0.0.1"
    port: int = 8080
    admin_token: str | None = None
    # The address clients use (what `make run` prints; defaults to http://host:port). When it is https, the
    # dashboard's cookies are Secure and every answer carries HSTS, whatever the hops behind the TLS terminator say.
    public_base_url: str | None = None
    stream_default: bool = False  # True: an absent `stream` means SSE unless the client asks for JSON
    max_body_bytes: int = 10 * 1024 * 1024
    max_messages: int = 2048
    cors_origins: str = ""  # comma-separated origins allowed to call the API from a browser; "*" for any; "" off
    # Reverse proxies in front of the gateways (IPs or CIDRs, comma-separated): only a peer among them is believed
    # about the client's address (X-Forwarded-For) and scheme (X-Forwarded-Proto). Empty: the peer is the client.
    trusted_proxies: str = ""
    # Slow clients (gateway/connections.py): a request's head must be complete within header_timeout_s of its first
    # byte (of connecting, for a connection's first request); a connection idle between requests is closed after
    # keepalive_timeout_s, longer than the proxy's upstream keep-alive (nginx: 60 s) so that the proxy closes first.
    header_timeout_s: float = Field(default=10.0, gt=0)
    keepalive_timeout_s: float = Field(default=75.0, gt=0)
    max_keys_per_account: int = Field(default=100, ge=1)  # API keys one account may hold at once
    # Redemption codes (shared/redemption.py): unknown codes an account, or a client address, may try per window
    # before POST /billing/redeem answers 429 until the window ends.
    redeem_failures_per_account: int = Field(default=10, ge=1)
    redeem_failures_per_client: int = Field(default=30, ge=1)
    redeem_throttle_window_s: int = Field(default=900, ge=1)
    # A claimed use no gateway recorded this long after (it died) is recorded by the archiver's reconciler.
    redemption_reconcile_after_s: float = Field(default=60.0, gt=0)

    # Payments (shared/payments/): Stripe Checkout top-ups, on when STRIPE_SECRET_KEY is set. Packages the customer
    # may buy: "name=credits:amount:currency" comma-separated, amount in minor units (cents): "starter=1000:1000:usd".
    stripe_secret_key: str | None = Field(
        default=None, validation_alias=AliasChoices("STRIPE_SECRET_KEY", "APIINONE_STRIPE_SECRET_KEY"))
    stripe_webhook_secret: str | None = Field(
        default=None, validation_alias=AliasChoices("STRIPE_WEBHOOK_SECRET", "APIINONE_STRIPE_WEBHOOK_SECRET"))
    stripe_api_base: str | None = Field(
        default=None, validation_alias=AliasChoices("STRIPE_API_BASE", "APIINONE_STRIPE_API_BASE"))
    stripe_webhook_tolerance_s: int = Field(default=300, ge=1)  # how old a signed event's timestamp may be
    payment_packages: str = "starter=1000:1000:usd,pro=5500:5000:usd"
    payment_return_url: str | None = None  # where the checkout sends the customer back (default: the dashboard)

    # Mail (shared/mail.py): sign-up verification, password reset, low-balance alerts. Without smtp_host every
    # message is written to <data_dir>/mail/*.eml (and the log says where), so a `make run` user can open it.
    smtp_host: str | None = None
    smtp_port: int = Field(default=587, ge=1, le=65535)
    smtp_username: str | None = None
    smtp_password: str | None = None
    smtp_security: str = Field(default="starttls", pattern="^(starttls|tls|none)$")  # tls: implicit TLS (port 465)
    smtp_timeout_s: float = Field(default=10.0, gt=0)
    mail_from: str = "API in One <no-reply@localhost>"

    # Self-service sign-up (gateway/dashboard/selfserve.py), off by default: email and password, verified by a
    # mailed link; a starting grant of credits paid on verification, to at most signup_grants_per_ip_daily new
    # accounts per client address and day (more sign-ups from one address get accounts without the grant).
    signup_enabled: bool = False
    signup_grant_credits: int = Field(default=0, ge=0, le=10**9)
    signup_grants_per_ip_daily: int = Field(default=3, ge=0)
    # Mail-sending forms (sign-up, password reset): per address and per client address, per hour.
    mail_requests_per_address_hourly: int = Field(default=3, ge=1)
    mail_requests_per_client_hourly: int = Field(default=20, ge=1)
    signup_token_ttl_s: int = Field(default=24 * 3600, ge=60)
    reset_token_ttl_s: int = Field(default=3600, ge=60)

    # Redis. Unset REDIS_URL means `apiinone run` starts the embedded Valkey.
    redis_url: str | None = Field(default=None, validation_alias=AliasChoices("REDIS_URL", "APIINONE_REDIS_URL"))
    embedded_redis_port: int = 6390
    data_dir: Path = Path("var")

    # Postgres, the record. Unset DATABASE_URL means `apiinone run` starts the embedded Postgres.
    database_url: str | None = Field(default=None,
                                     validation_alias=AliasChoices("DATABASE_URL", "APIINONE_DATABASE_URL"))
    embedded_postgres_port: int = 6391
    database_pool_size: int = 4  # connections per process; the request path never uses them
    record_reads_per_account: int = Field(default=2, ge=1)  # history reads one account runs at once per gateway
    archive_batch: int = 2000  # ledger/usage entries the archiver moves to Postgres per transaction
    # Usage rows are kept this many whole months before the current one; older monthly partitions are
    # dropped by the archiver's maintenance (0: keep forever). The ledger and orders are never dropped.
    usage_retention_months: int = Field(default=13, ge=0)

    # Provider credentials: only workers read these.
    gemini_api_key: str | None = Field(
        default=None, validation_alias=AliasChoices("GEMINI_API_KEY", "APIINONE_GEMINI_API_KEY")
    )
    gemini_base_url: str = Field(
        default="https://generativelanguage.googleapis.com",
        validation_alias=AliasChoices("GEMINI_BASE_URL", "APIINONE_GEMINI_BASE_URL"),
    )
    simulator_port: int = 8090
    # Key pools (worker/key_config.py, README "Key pools"): a node's upstream keys come from
    # APIINONE_NODE_KEYS_<NODE> ("key1,key2 weight=2 rpm=60 tpm=100000"), from this secrets file (TOML or
    # JSON: APIINONE_KEYS_FILE), or else from its provider's api_key_env (a pool of one). Never from the catalog.
    keys_file: Path | None = None
    key_backoff_base_s: float = Field(default=1.0, gt=0)  # a 429 without RetryInfo: 1, 2, 4, ... s
    key_backoff_max_s: float = Field(default=60.0, gt=0)
    key_probe_interval_s: float = Field(default=0.0, ge=0)  # health probes of disabled keys (0: off)

    # Catalog: a TOML file; the bundled one describes model `gemini` on node `node62`. With catalog_live
    # (the default) the file only seeds an empty live store (Redis, recorded in Postgres), which the admin API
    # and the dashboard change and every process follows (shared/live_catalog.py); false: the file is the
    # catalog, fixed (edits are refused).
    catalog: Path | None = None
    catalog_live: bool = True
    catalog_check_s: float = Field(default=5.0, gt=0)  # the follower's safety net beside the change notices

    # Request lifecycle
    queue_timeout_s: float = 10.0  # how long a request may wait for a worker before 503
    request_timeout_s: float = 600.0  # hard ceiling for one request, upstream included
    # A request holds its worst case (prompt bound + max output); where the balance covers less, its
    # output is clamped to what it does cover (thinking cut first), but never below this: 402 instead.
    min_output_tokens: int = 256
    hold_grace_s: float = 120.0  # a hold past its deadline by this much is reconciled
    reconcile_interval_s: float = 30.0  # how often the billing worker looks for such holds
    worker_lease_s: float = 5.0  # a worker silent this long is dead; its streams are failed
    worker_drain_s: float = 30.0  # on SIGTERM a worker finishes in-flight streams this long, then fails the rest
    worker_concurrency: int = 1000
    max_queue_depth: int = 10_000  # per node; beyond it requests get 503 at once (bounded memory)
    breaker_threshold: int = 5  # consecutive upstream failures that open a node's circuit
    breaker_cooldown_s: float = 10.0
    upstream_connect_timeout_s: float = 5.0
    upstream_idle_timeout_s: float = 120.0  # an upstream stream silent this long is failed (and refunded)
    upstream_retries: int = 2  # retries before the first token on 429/5xx
    # A streaming client that leaves: upstreams whose usage comes only at the end are read on (nothing
    # relayed) this long for it; past it, or if it never comes, the delivered text is billed by estimate.
    drain_after_cancel_s: float = 10.0

    # Batches (OpenAI Files + Batches API; shared/batch_store.py, worker/batch/)
    batch_max_file_bytes: int = 200 * 1024 * 1024  # an upload past this is refused with 413
    batch_max_lines: int = 50_000  # requests per batch; more fails the batch in validation
    batch_max_line_bytes: int = 1024 * 1024  # one request line; longer fails the batch in validation
    batch_file_retention_s: float = 30 * 86400  # files and finished batches are deleted after this
    batch_window_s: float = 86400  # what completion_window "24h" means (tests shrink it)
    # Where file bytes live (shared/blob_store.py): "local" (a directory, default <data dir>/blobs) or "s3"
    # (any S3-compatible store, shared/blob_s3.py). File metadata is the record's (Postgres).
    blob_store: Literal["local", "s3"] = "local"
    blob_dir: Path | None = None
    s3_bucket: str | None = None
    s3_endpoint: str | None = None  # unset: AWS itself
    s3_region: str | None = None
    s3_access_key_id: str | None = None  # unset: botocore's own chain (AWS_* variables, instance role)
    s3_secret_access_key: str | None = Field(default=None, repr=False)
    s3_prefix: str = ""  # prepended to every blob key, to share a bucket
    file_retention_scan_s: float = 60.0  # how often the batch worker deletes files past their retention
    # Lines of one batch queued or running at once. Measured on 2 cores (20,000-line batches, 400
    # sequential interactive probes on one connection alone and 400 during): 1 kept interactive p99
    # below its alone value in 3 runs of 3 at ~420-460 lines/s; 2 ran ~630-660 lines/s but grew p99
    # by +11% to +27% in 2 runs of 3 (the bound is +20%).
    batch_inflight_per_batch: int = 1
    batch_inflight_total: int = 128  # lines of all batches, per batch worker process
    # Per-account caps on what an account keeps: files, their bytes, and batches not yet finished.
    account_max_files: int = 1000
    account_max_stored_bytes: int = 10 * 1024**3
    account_max_active_batches: int = 50
    # Stored Responses (POST /api/v1/responses with store): kept hot in Redis this long, within this many
    # bytes per account (the oldest are dropped first to make room).
    responses_ttl_s: float = 7 * 86400
    responses_max_bytes_per_account: int = 32 * 1024 * 1024
    # With a database, the record keeps every stored response this long (past Redis' TTL and cap): the
    # archiver writes it to Postgres off the request path; reads that miss Redis find it there.
    responses_retention_days: float = Field(default=30, gt=0)
    batch_callback_attempts: int = 6  # completion callback deliveries before giving up (backoff 1, 2, 4... s)
    batch_callback_timeout_s: float = 5.0
    # After POST /api/v1/webhook_secret/rotate the old secret still signs (a second signature) this long.
    webhook_secret_overlap_s: int = Field(default=86400, ge=0, le=7 * 86400)
    batch_callbacks_per_minute: int = 30  # callback attempts per account per clock minute; more wait (0: no limit)
    # Callbacks go only to public https addresses (shared/callback_targets.py); true lets them use http and
    # loopback/private addresses (the product's own tests). Never on a shared deployment: it is an SSRF hole.
    callback_allow_private: bool = False

    # Metrics: workers and the billing worker serve /metrics on this port (0: off). The gateway serves
    # /metrics on its HTTP port: keep that path off public ingress (deploy/ blocks it at the proxy).
    metrics_port: int = 0
    metrics_host: str = "127.0.0.1"

    # Logging
    log_format: str = "auto"  # auto | json | console
    log_level: str = "info"

    @field_validator("trusted_proxies")
    @classmethod
    def _addresses_or_cidrs(cls, value: str) -> str:
        for entry in (e.strip() for e in value.split(",")):
            if entry:
                ipaddress.ip_network(entry, strict=False)  # ValueError: not an address or CIDR
        return value

    @field_validator("public_base_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None:
            url = urlsplit(value)
            if url.scheme not in ("http", "https") or not url.hostname:
                raise ValueError("must be an http:// or https:// URL, like https://api.example.com")
        return value


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
