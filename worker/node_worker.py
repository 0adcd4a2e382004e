"""NodeWorker: a worker process pinned to one backend node (`apiinone worker --node NAME`).

It holds that node's provider credentials, claims chat jobs from the node's
queues (interactive first, then batch), heartbeats so gateways and
`/admin/nodes` see it, and cancels jobs whose clients went away.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
import uuid

import structlog
from arq.connections import ArqRedis
from arq.constants import job_key_prefix
from arq.worker import func
from redis.exceptions import RedisError

from shared import keys
from shared.catalog import Catalog, get_catalog
from shared.contracts import COUNT_KINDS
from shared.coalesce import Coalescer
from shared.metrics import WORKER_INFLIGHT
from shared.queue import NodeQueue, deserialize
from shared.redis_client import make_redis
from shared.settings import Settings, get_settings
from worker.chat_job import CancelRegistry, JobRuntime, run_chat
from worker.count_job import run_count
from worker.claiming import BlockingPopWorker
from worker.gemini import GeminiAdapter
from worker.key_config import KeyConfigError, load_node_keys
from worker.key_pool import KeyPool, KeySource
from worker.openai_compat import OpenAICompatAdapter
from worker.provider import Adapter
from worker.settlement_sink import BillingQueueSink

log = structlog.get_logger()

HEARTBEAT_S = 1.0


def provider_key(catalog: Catalog, node: str, settings: Settings) -> str:
    """The node's one key from its provider's ``api_key_env`` (Google's falls back to GEMINI_API_KEY)."""
    provider = catalog.provider_of_node(node)
    api_key = os.environ.get(provider.api_key_env, "")
    return api_key or (settings.gemini_api_key or "" if provider.adapter == "gemini" else "")


def build_adapter(catalog: Catalog, node: str, settings: Settings, keys: KeySource | None = None) -> Adapter:
    """The node's adapter; ``keys``: its key pool (Gemini nodes; else the provider's one key)."""
    provider = catalog.provider_of_node(node)
    base_url = os.environ.get(provider.base_url_env) or provider.base_url
    api_key = os.environ.get(provider.api_key_env, "")
    if provider.adapter == "gemini":
        served = [m.upstream_model for m in catalog.models.values() if node in m.nodes]
        adapter = GeminiAdapter(base_url or settings.gemini_base_url, keys or provider_key(catalog, node, settings),
                                connect_timeout=settings.upstream_connect_timeout_s,
                                read_timeout=settings.upstream_idle_timeout_s,
                                **({"probe_model": served[0]} if served else {}))
        if isinstance(keys, KeyPool):
            keys.probe = adapter.probe
        return adapter
    if provider.adapter == "openai":
        return OpenAICompatAdapter(base_url or "", api_key, connect_timeout=settings.upstream_connect_timeout_s,
                                   read_timeout=settings.upstream_idle_timeout_s,
                                   continuous_usage=provider.continuous_usage_stats)
    raise ValueError(f"node {node!r}: unknown adapter {provider.adapter!r}")


async def chat(ctx: dict, job: dict) -> str:
    """The arq job function: one request on this worker's runtime (a count, or a generation of any API)."""
    worker: NodeWorker = ctx["worker"]
    run = run_count if job.get("kind") in COUNT_KINDS else run_chat
    return (await run(worker.runtime, job, ctx.get("claimed", ()))).status


class NodeWorker(BlockingPopWorker):
    def __init__(self, node: str, concurrency: int, settings: Settings | None = None,
                 catalog: Catalog | None = None) -> None:
        self.settings = settings or get_settings()
        self.catalog = catalog or get_catalog()
        if node not in self.catalog.nodes:
            raise SystemExit(f"unknown node {node!r}; the catalog has: {', '.join(self.catalog.nodes)}")
        self.node = node
        self.worker_id = f"{node}-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self._adapter: Adapter | None = None
        self.started_at = int(time.time())
        pool = make_redis(self.settings.redis_url, cls=ArqRedis)
        self.keys: KeyPool | None = None
        if self.catalog.provider_of_node(node).adapter == "gemini":
            try:
                pool_keys = load_node_keys(node, self.settings.keys_file,
                                           provider_key(self.catalog, node, self.settings))
            except KeyConfigError as exc:
                raise SystemExit(f"worker {node}: {exc}") from None
            self.keys = KeyPool(node, pool_keys, pool, self.settings, self.worker_id)
        super().__init__(
            # The job enforces request_timeout_s itself (a clean 504); arq's timeout is only a backstop.
            functions=[func(chat, name="chat", max_tries=1, timeout=self.settings.request_timeout_s + 30)],
            queue_name=keys.node_queue(node),
            redis_pool=pool,
            claim_queues=[keys.node_queue(node), keys.node_batch_queue(node)],
            redis_url=self.settings.redis_url,
            max_jobs=concurrency,
            keep_result=0,
            max_tries=1,
            retry_jobs=False,
            job_completion_wait=max(1, int(self.settings.worker_drain_s)),
            job_deserializer=deserialize,
            ctx={},
        )
        self.ctx["worker"] = self
        self.queue = NodeQueue(pool)
        self.coalescer = Coalescer(pool)  # every job's Redis commands share one pipeline at a time
        self.runtime = JobRuntime(self.catalog, self.settings, self.worker_id, self.adapter, self.coalescer,
                                  BillingQueueSink(pool), CancelRegistry())

    def claimed_commands(self, job_id: str, job: dict) -> list[tuple]:
        """A batch line's key says which worker runs it from its first write on: a batch worker that
        restarts meanwhile (and missed the STARTED frame) waits for that worker instead of running
        the line again (worker/batch/probe.py)."""
        if not job.get("batch_id"):
            return super().claimed_commands(job_id, job)
        ttl_ms = int((self.settings.request_timeout_s + 60) * 1000)
        return [("SET", job_key_prefix + job_id, keys.JOB_RUNNING_ON + self.worker_id.encode(), "PX", ttl_ms)]

    def adapter(self, node: str) -> Adapter:
        if self._adapter is None:
            self._adapter = build_adapter(self.catalog, node, self.settings, self.keys)
        return self._adapter

    async def background(self) -> list:
        tasks = [self._heartbeat(), self._listen_for_cancels()]
        if self.keys is not None:
            self.adapter(self.node)  # the pool's probes need the adapter's session
            tasks.append(self.keys.run())
            if self.settings.key_probe_interval_s > 0:
                tasks.append(self.keys.health_probes(self.settings.key_probe_interval_s))
        return tasks

    async def _heartbeat(self) -> None:
        info_key, lease_ms = keys.worker_info(self.worker_id), int(self.settings.worker_lease_s * 1000)
        while True:
            WORKER_INFLIGHT.labels(self.node).set(self.inflight())
            try:
                now_ms = int(time.time() * 1000)
                async with self.pool.pipeline(transaction=False) as pipe:
                    pipe.hset(info_key, mapping={
                        "id": self.worker_id, "node": self.node, "host": socket.gethostname(), "pid": os.getpid(),
                        "concurrency": self.max_jobs, "inflight": self.inflight(), "started": self.started_at,
                        "heartbeat_ms": now_ms, "draining": int(not self.allow_pick_jobs),
                    })
                    pipe.pexpire(info_key, lease_ms)
                    pipe.zadd(keys.node_workers(self.node), {self.worker_id: now_ms})
                    await pipe.execute()
            except RedisError as exc:
                log.warning("heartbeat failed", error=str(exc))
            await asyncio.sleep(HEARTBEAT_S)

    async def _listen_for_cancels(self) -> None:
        """Gateways publish the ids of requests whose clients disconnected; workers of the node, the labels
        of pool keys whose state they changed (one subscription for both)."""
        # Its own connection without a read timeout: an idle subscription is silent by design.
        listener = make_redis(self.settings.redis_url, max_connections=1, socket_timeout=None)
        key_channel = keys.key_pool_channel(self.node).encode()
        try:
            while True:
                pubsub = listener.pubsub(ignore_subscribe_messages=True)
                try:
                    await pubsub.subscribe(keys.node_cancel_channel(self.node), keys.key_pool_channel(self.node))
                    if self.keys is not None:
                        self.keys.notify()  # changes missed while unsubscribed
                    async for message in pubsub.listen():
                        if message["channel"] == key_channel:
                            if self.keys is not None:
                                self.keys.notify()
                            continue
                        request_id = message["data"].decode()
                        self.runtime.cancels.cancel(request_id, self.running_job(request_id))
                except RedisError as exc:
                    log.warning("cancel listener lost Redis, reconnecting", error=str(exc))
                    await asyncio.sleep(0.5)
                finally:
                    await pubsub.aclose()
        finally:
            await listener.aclose()

    async def deregister(self) -> None:
        try:
            await self.pool.zrem(keys.node_workers(self.node), self.worker_id)
            await self.pool.delete(keys.worker_info(self.worker_id))
        except RedisError:
            pass
        if self._adapter is not None:
            await self._adapter.close()


async def serve(node: str, concurrency: int) -> None:
    worker = NodeWorker(node, concurrency)
    log.info("worker starting", node=node, worker_id=worker.worker_id, concurrency=concurrency)
    try:
        await worker.async_run()
    except asyncio.CancelledError:
        pass
    finally:
        await worker.deregister()
        await worker.close()
