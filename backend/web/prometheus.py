"""Prometheus metrics on a registry owned by the app (not prometheus_client's global one), so two apps in
one process (tests) do not collide."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 60, 80, 120)


class _LiveGauges(Collector):
    """Queue depth and live workers, read at scrape time (skipped when they cannot be read)."""

    def __init__(self, queue_depth: Callable[[], int | None], workers: Callable[[], int]) -> None:
        self._queue_depth = queue_depth
        self._workers = workers

    def collect(self) -> Iterator[GaugeMetricFamily]:
        depth = self._queue_depth()
        if depth is not None:
            yield GaugeMetricFamily("tagclip_queue_depth", "Jobs waiting for a worker", value=depth)
        yield GaugeMetricFamily("tagclip_workers", "Engines able to run jobs now", value=self._workers())


class Metrics:
    def __init__(self, queue_depth: Callable[[], int | None], workers: Callable[[], int]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "tagclip_http_requests",
            "HTTP requests by endpoint, method and status",
            ["endpoint", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "tagclip_http_request_duration_seconds",
            "HTTP request latency by endpoint",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.tasks = Counter(
            "tagclip_tasks",
            "Tasks answered by /predict, by outcome (ok, empty, failed, unfinished)",
            ["outcome"],
            registry=self.registry,
        )
        self.failures = Counter(
            "tagclip_task_failures", "Per-task failures by reason", ["reason"], registry=self.registry
        )
        self.registry.register(_LiveGauges(queue_depth, workers))

    def render(self) -> bytes:
        return generate_latest(self.registry)
