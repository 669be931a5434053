"""Prometheus metrics, all named `greenroom_…`, on one registry per app.

Counters and histograms are updated where things happen; gauges of current state (queue depth,
replica readiness, restarts) are read from the router and the runtime at scrape time.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from greenroom.runtime.base import RuntimeBackend
    from greenroom.serving.router import Router

LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "greenroom_embedding_requests",
            "Embedding requests by served name and HTTP status.",
            ["model", "status"],
            registry=self.registry,
        )
        self.request_duration = Histogram(
            "greenroom_embedding_request_duration_seconds",
            "Time to answer an embedding request, by served name.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.inputs = Counter(
            "greenroom_embedding_inputs",
            "Inputs (sentences or token sequences) embedded, by served name.",
            ["model"],
            registry=self.registry,
        )
        self.tokens = Counter(
            "greenroom_embedding_tokens",
            "Tokens fed to models, by served name.",
            ["model"],
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "greenroom_batch_size",
            "Inputs per batch sent to a replica, by served name.",
            ["model"],
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.batch_duration = Histogram(
            "greenroom_batch_duration_seconds",
            "Round trip of one batch to a replica, by served name.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.cache_hits = Counter(
            "greenroom_embedding_cache_hits",
            "Inputs answered from a revision's embedding cache, by served name.",
            ["model"],
            registry=self.registry,
        )
        self.cache_misses = Counter(
            "greenroom_embedding_cache_misses",
            "Inputs a revision's embedding cache did not hold (computed, then stored).",
            ["model"],
            registry=self.registry,
        )
        self._add_migration_metrics()

        self.rollout_step_duration = Histogram(
            "greenroom_rollout_step_duration_seconds",
            "Duration of each rollout step, by step and outcome.",
            ["step", "status"],
            buckets=(0.01, 0.05, 0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0),
            registry=self.registry,
        )
        self.rollouts = Counter(
            "greenroom_rollouts",
            "Finished rollouts by result (rolled_out, unchanged, failed).",
            ["result"],
            registry=self.registry,
        )
        self.tasks = Counter(
            "greenroom_tasks",
            "Tasks ended by a worker, by kind (deploy, delete) and final status.",
            ["kind", "status"],
            registry=self.registry,
        )
        self.lease_takeovers = Counter(
            "greenroom_lease_takeovers",
            "Tasks taken over by a worker after the lease of another one expired.",
            registry=self.registry,
        )

    def _add_migration_metrics(self) -> None:
        """Shadow traffic and adapters (docs/migrations.md), labelled by the plain served name:
        pinned names and revision ids never become labels, so label sets stay bounded."""
        self.shadow_requests = Counter(
            "greenroom_shadow_requests",
            "Live requests sampled for shadow traffic, by served name.",
            ["model"],
            registry=self.registry,
        )
        self.shadow_inputs = Counter(
            "greenroom_shadow_inputs",
            "Inputs of sampled requests meant for the staged revision (at most 32 a request).",
            ["model"],
            registry=self.registry,
        )
        self.shadow_dropped_inputs = Counter(
            "greenroom_shadow_dropped_inputs",
            "Shadow inputs dropped, not sent, because the staged revision's queue was not idle.",
            ["model"],
            registry=self.registry,
        )
        self.shadow_errors = Counter(
            "greenroom_shadow_errors",
            "Shadow calls to the staged revision that failed (the live answer never does).",
            ["model"],
            registry=self.registry,
        )
        self.shadow_latency = Histogram(
            "greenroom_shadow_latency_seconds",
            "Embedding time of shadowed requests: the live request's and the staged call's.",
            ["model", "side"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.shadow_neighbour_overlap = Gauge(
            "greenroom_shadow_neighbour_overlap_at_10",
            "Neighbour overlap@10 between the staged and the live space over the shadow window.",
            ["model"],
            registry=self.registry,
        )
        self.shadow_mean_cosine = Gauge(
            "greenroom_shadow_mean_cosine",
            "Mean paired cosine of staged and live vectors (only where the dimensions match).",
            ["model"],
            registry=self.registry,
        )
        self.adapter_inputs = Counter(
            "greenroom_adapter_inputs",
            "Inputs answered through an adapter (a served name in the adapted stage).",
            ["model"],
            registry=self.registry,
        )

    def forget_shadow_gauges(self, served_name: str) -> None:
        """A name whose shadow traffic ended: its gauges would otherwise show stale figures."""
        for gauge in (self.shadow_neighbour_overlap, self.shadow_mean_cosine):
            with contextlib.suppress(KeyError):
                gauge.remove(served_name)

    def watch(self, router: Router, runtime: RuntimeBackend) -> None:
        self.registry.register(_StateCollector(lambda: router, lambda: runtime))


class _StateCollector(Collector):
    def __init__(self, router: Callable[[], Router], runtime: Callable[[], RuntimeBackend]) -> None:
        self._router, self._runtime = router, runtime

    def collect(self) -> Iterator[Metric]:
        queue = GaugeMetricFamily(
            "greenroom_queue_depth",
            "Inputs waiting for a replica, by served name.",
            labels=["model"],
        )
        for name, route in self._router().live_routes().items():
            queue.add_metric([name], len(route.queue))
        yield queue
        cache = GaugeMetricFamily(
            "greenroom_embedding_cache_bytes",
            "Bytes held by each revision's embedding cache (entries and their overhead).",
            labels=["model", "revision"],
        )
        for (name, revision_id), size in self._router().cache_bytes().items():
            cache.add_metric([name, revision_id], size)
        yield cache
        ready = GaugeMetricFamily(
            "greenroom_replica_ready",
            "1 when a replica is ready, else 0.",
            labels=["revision", "replica", "state"],
        )
        restarts = CounterMetricFamily(
            "greenroom_replica_restarts",
            "Replica restarts after a crash or a failed health check.",
            labels=["revision", "replica"],
        )
        runtime = self._runtime()
        for revision_id in runtime.revisions():
            for replica in runtime.replicas(revision_id):
                labels = [revision_id, replica.replica_id]
                ready.add_metric([*labels, replica.state.value], int(replica.state.is_ready()))
                restarts.add_metric(labels, replica.restarts)
        yield ready
        yield restarts
