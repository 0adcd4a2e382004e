"""Every Redis key and channel name, in one place.

Money keys carry the account's hash tag ``{acct:ID}`` so that every key one Lua
script touches lives in one Redis Cluster slot.
"""

PREFIX = "aio:"


class AccountKeys:
    """The keys of one account; all share the hash tag ``{acct:<id>}``."""

    __slots__ = ("account_id", "account", "holds", "deadlines", "ledger", "usage", "orders", "order_refs", "keys",
                 "released", "released_at", "responses", "response_bytes")

    def __init__(self, account_id: str) -> None:
        self.account_id = account_id
        tag = f"{PREFIX}{{acct:{account_id}}}:"
        # hash: id, name, balance, held, created_at; "synced" (the Redis run id the recovery checked it under)
        # and "archive_pending" (it is in the archive index) for the record
        self.account = tag + "account"
        self.holds = tag + "holds"  # hash: request id -> "amount:key_id:estimated tokens"
        self.deadlines = tag + "hold_deadlines"  # zset: request id -> deadline ms (later once its settlement is queued)
        # Holds the reconciler released, kept a week so a settlement that was only late still charges.
        self.released = tag + "released_holds"  # hash: request id -> "amount:key_id:"
        self.released_at = tag + "released_at"  # zset: request id -> release ms (to forget them)
        # Both streams hold only what the archiver has not moved to Postgres yet (it trims them after).
        self.ledger = tag + "ledger"  # stream: every balance change
        self.usage = tag + "usage"  # stream: one row per settled request
        self.orders = tag + "orders"  # stream: top-up orders
        self.order_refs = tag + "order_refs"  # hash: top-up reference -> order id
        self.keys = tag + "keys"  # set of key ids
        # Stored Responses (shared/response_store.py): their ids by time, and their sizes against the cap.
        self.responses = tag + "responses"  # zset: response id -> stored ms
        self.response_bytes = tag + "response_bytes"  # hash: response id -> bytes, and "total"

    def response(self, response_id: str) -> str:
        """string with TTL: one stored response (its object and its conversation, JSON)."""
        return f"{PREFIX}{{acct:{self.account_id}}}:response:{response_id}"

    @property
    def response_prefix(self) -> str:
        """What ``response`` puts before an id (response_put.lua drops expired ones by it)."""
        return self.response("")

    def key_state(self, key_id: str) -> str:
        """hash: one key's rate-limit buckets, requests in flight, open holds (``held``), spend (total and per
        day), and the credit limits it was last admitted under."""
        return f"{PREFIX}{{acct:{self.account_id}}}:key:{key_id}"

    @property
    def limit_state(self) -> str:
        """hash: the account's own requests/min and tokens/min buckets, which every key of it draws on."""
        return f"{PREFIX}{{acct:{self.account_id}}}:limits"

    def money(self, key_id: str) -> list[str]:
        """KEYS for settle.lua and expire.lua, in the order they expect."""
        return [self.account, self.holds, self.deadlines, self.ledger, self.usage, self.key_state(key_id),
                self.released, self.released_at, self.limit_state, ARCHIVE_INDEX]

    def credit(self) -> list[str]:
        """KEYS for credit.lua."""
        return [self.account, self.ledger, self.orders, self.order_refs, ARCHIVE_INDEX]


ACCOUNTS = PREFIX + "accounts"  # set of account ids
# hash: "<from model>|<to model>|<outcome>" -> requests moved to a fallback, across every gateway
# (shared/fallback_counts.py; the operator's nodes page). At most models x models x 3 fields.
FALLBACKS_TAKEN = PREFIX + "fallbacks_taken"

# --- the record (worker/archiver/) --------------------------------------------------------
# stream: an entry {a: account id} when an account gets ledger/usage entries to archive (once until the
# archiver takes it: the account hash's "archive_pending"). Its own slot: the one key of the money scripts
# outside the account's (settle.lua says why).
ARCHIVE_INDEX = PREFIX + "{archive}:dirty"
ARCHIVE_GROUP = "archiver"  # the archivers' consumer group on ARCHIVE_INDEX
# stream: stored Responses to archive ({op: put|delete, a: account id, id: response id, rec: record}), written
# by response_put.lua / response_delete.lua when the record is on, trimmed as the archiver commits them
# (worker/archiver/responses.py). Its own slot, as ARCHIVE_INDEX.
RESPONSE_ARCHIVE = PREFIX + "{archive}:responses"
RESPONSE_ARCHIVE_GROUP = "response-archiver"
# string: the Redis run id whose every account the recovery has checked against Postgres
# (worker/archiver/recovery.py); accounts carry their own stamp in the hash field "synced".
RECOVERED_RUN = PREFIX + "record:recovered_run"


def api_key(key_hash: str) -> str:
    return f"{PREFIX}apikey:{key_hash}"  # hash: the key record


def api_key_id(key_id: str) -> str:
    return f"{PREFIX}keyid:{key_id}"  # string: key hash, for revocation by id


def node_queue(node: str) -> str:
    return f"{PREFIX}queue:{node}"  # arq queue (zset) of interactive jobs


def node_batch_queue(node: str) -> str:
    return f"{PREFIX}queue:{node}:batch"  # lower priority: popped only when interactive is empty


BILLING_QUEUE = PREFIX + "queue:billing"
# A claimed batch line's arq job key (``arq:job:<id>``) holds this and the id of the worker running it.
JOB_RUNNING_ON = b"running-on:"


def node_workers(node: str) -> str:
    return f"{PREFIX}workers:{node}"  # zset: worker id -> last heartbeat ms


def worker_info(worker_id: str) -> str:
    return f"{PREFIX}worker:{worker_id}"  # hash with TTL: the worker's heartbeat


def gateway_channel(gateway_id: str) -> str:
    return f"{PREFIX}gw:{gateway_id}"  # pub/sub: worker -> gateway replies


def node_cancel_channel(node: str) -> str:
    return f"{PREFIX}cancel:{node}"  # pub/sub: gateway -> node workers, request ids to cancel


REVOCATIONS = PREFIX + "revocations"  # pub/sub: revoked key hashes, to drop gateway caches


# --- dashboard users and sessions (shared/users.py, gateway/dashboard/) ---------------
USERS = PREFIX + "users"  # set of dashboard user ids


def user(user_id: str) -> str:
    return f"{PREFIX}user:{user_id}"  # hash: id, email, password_hash, role, account_id, created, last_login


def user_email(email: str) -> str:
    return f"{PREFIX}user_email:{email}"  # string: user id, by lower-cased email


def account_users(account_id: str) -> str:
    return f"{PREFIX}account_users:{account_id}"  # set of the account's user ids


def dashboard_session(token_hash: str) -> str:
    return f"{PREFIX}dsession:{token_hash}"  # hash with TTL: user_id, csrf, account_id, created, expires_at


def user_sessions(user_id: str) -> str:
    return f"{PREFIX}user_sessions:{user_id}"  # set of the user's session hashes (dropped on password change)


# Sign-in throttling (gateway/dashboard/throttle.py): one hash tag, so one script sees every scope of an attempt.
def login_throttle(scope: str) -> str:
    return f"{PREFIX}{{login}}:fails:{scope}"  # hash with TTL: fails, last (ms), per email or client address


def login_inflight(scope: str) -> str:
    return f"{PREFIX}{{login}}:inflight:{scope}"  # zset: attempt id -> start ms, passwords being verified


# --- self-service sign-up and password reset (shared/self_service.py, gateway/dashboard/selfserve.py) ------
def email_token(purpose: str, token_hash: str) -> str:
    # hash with TTL: a mailed link's token (stored as its SHA-256): what it is for (email, user id, ...)
    return f"{PREFIX}email_token:{purpose}:{token_hash}"


def email_token_subject(purpose: str, subject: str) -> str:
    return f"{PREFIX}email_token_of:{purpose}:{subject}"  # string with TTL: the subject's one live token hash


def signup_verifying(email: str) -> str:
    return f"{PREFIX}signup_verifying:{email}"  # string with short TTL: one verification of an email at a time


def mail_requests(scope: str, hour: int) -> str:
    return f"{PREFIX}mail_requests:{scope}:{hour}"  # counter with TTL: mail-sending forms per address or client


def signup_grants(client: str, day: int) -> str:
    return f"{PREFIX}signup_grants:{client}:{day}"  # counter with TTL: starting grants paid per client address


# --- `apiinone run`'s supervisor (apiinone/supervisor.py, shared/supervision.py) ------------
SUPERVISORS = PREFIX + "supervisors"  # zset: supervisor id (host:pid) -> last report ms


def supervisor_children(supervisor_id: str) -> str:
    return f"{PREFIX}supervisor:{supervisor_id}"  # hash with TTL: child name -> ChildReport JSON


# --- batches (shared/batch_store.py, worker/batch/); files are the record's and the blob store's ---
BATCHES_ACTIVE = PREFIX + "batches:active"  # zset: batch id -> created ms, every batch not yet terminal
BATCHES_WAKE = PREFIX + "batches:wake"  # list: pushed on create/cancel, so the batch worker looks at once
BATCH_CALLBACKS = PREFIX + "batches:callbacks"  # zset: batch id -> when its next callback attempt is due (ms)


# Files as they were kept before the blob store (aio:file:<id> hash, aio:file:<id>:lines list, aio:files:<account>
# zset): read once by shared/file_store_upgrade.py, which moves them into the blob store and the record.
LEGACY_FILES_MATCH = PREFIX + "file:*"


def legacy_account_files(account_id: str) -> str:
    return f"{PREFIX}files:{account_id}"


def account_active_batches(account_id: str) -> str:
    return f"{PREFIX}batches_active:{account_id}"  # set: the account's batch ids not yet terminal (its cap)


class BatchKeys:
    """The keys of one batch; all share the hash tag ``{batch:<id>}`` (one Cluster slot per script)."""

    __slots__ = ("id", "batch", "inflight", "output", "errors", "output_parts", "errors_parts", "lease", "callback")

    def __init__(self, batch_id: str) -> None:
        tag = f"{PREFIX}{{batch:{batch_id}}}:"
        self.id = batch_id
        self.batch = tag + "batch"  # hash: the batch object, its counters and its feed cursor
        self.inflight = tag + "inflight"  # hash: line no -> "<attempt>:<worker id>", fed and not written out
        self.output = tag + "output"  # list: output lines not yet in the blob store, in completion order
        self.errors = tag + "errors"  # list: error file lines
        # Output and error lines leave Redis for the blob store a part at a time (worker/batch/spool.py):
        # list: the blob keys of the parts written so far, in order (output, errors)
        self.output_parts = tag + "output_parts"
        self.errors_parts = tag + "errors_parts"
        self.lease = tag + "lease"  # string with TTL: the batch worker running the batch
        self.callback = tag + "callback"  # list: completion callback delivery attempts (JSON)

    def result(self, request_id: str) -> str:
        """string: the final reply frame of one line's request, stored by the node worker before it bills."""
        return f"{PREFIX}{{batch:{self.id}}}:result:{request_id}"


def callback_budget(account_id: str, minute: int) -> str:
    """counter with TTL: an account's completion callback attempts in one clock minute (epoch minutes)."""
    return f"{PREFIX}callback_budget:{account_id}:{minute}"


# --- redemption codes (shared/redemption.py): one hash tag, so redeem.lua's keys share a slot ---
def redemption_code(code_hash: str) -> str:
    # hash: batch, credits_micro, uses, used, expires_at (unix s, 0 never), disabled ("1")
    return f"{PREFIX}{{redeem}}:code:{code_hash}"


# Uses redeem.lua claimed and the gateway has not yet recorded; the archiver's reconciler records (credits) the ones
# a dead gateway left behind (worker/archiver/redemption_reconcile.py).
REDEMPTION_CLAIMS = PREFIX + "{redeem}:claims"  # hash: "<code hash>:<use number>" -> "<account id>:<unix s>"


def redemption_returned(code_hash: str) -> str:
    return f"{PREFIX}{{redeem}}:returned:{code_hash}"  # list: use numbers handed back (their credit failed)


def redemption_batch(batch_id: str) -> str:
    return f"{PREFIX}{{redeem}}:batch:{batch_id}"  # set: the batch's code hashes (to disable them)


def redeem_failures(scope: str) -> str:
    return f"{PREFIX}{{redeem}}:fails:{scope}"  # string with TTL: unknown codes tried, per account or client address


# --- upstream key pools (shared/key_state.py, worker/key_pool.py): one hash tag per node, so the scripts'
# keys share a slot. Keys are named by their last 4 characters (their "label"), never in full.
def key_pool_state(node: str) -> str:
    # hash: "<label>:<field>" -> value; fields cool_until (ms), limited_at (ms), strikes, rate_limited (429s),
    # requests, disabled (Google's reason), disabled_at (ms), probing ("1" while a probe confirms a verdict)
    return f"{PREFIX}{{keypool:{node}}}:state"


def key_pool_specs(node: str) -> str:
    return f"{PREFIX}{{keypool:{node}}}:specs"  # hash: label -> KeySpec JSON (weight, own limits), from the workers


def key_pool_usage(node: str, minute: int) -> str:
    return f"{PREFIX}{{keypool:{node}}}:usage:{minute}"  # hash with TTL: "<label>:r" / "<label>:t" in one minute


def key_probe_lock(node: str, label: str) -> str:
    return f"{PREFIX}{{keypool:{node}}}:probe:{label}"  # string with TTL: the worker probing that key now


def key_pool_channel(node: str) -> str:
    return f"{PREFIX}keypool:{node}"  # pub/sub: labels whose state changed, so workers re-read at once


# The live catalog (shared/catalog_store.py): the current version's document and its number, one hash so
# that both change together; every change is announced on the channel (its payload: the new version).
CATALOG = PREFIX + "catalog"  # hash: version, document (JSON)
CATALOG_CHANNEL = PREFIX + "catalog:changed"  # pub/sub: a new catalog version is current
