"""Prometheus metrics at /metrics: request counts and latency per route template, jobs by state (read from the
database at scrape time, so every API replica reports the same truth)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from core.db.states import JobState

Scope = dict[str, Any]
ASGIApp = Callable[..., Any]


class JobStateCollector(Collector):
    def __init__(self, count_by_state: Callable[[], dict[str, int]]):
        self._count_by_state = count_by_state

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("realign_jobs", "Jobs by state", labels=["state"])
        try:
            counts = self._count_by_state()
        except Exception:  # the database being down must not break /metrics
            counts = {}
        for state in JobState:
            family.add_metric([state.value], counts.get(state.value, 0))
        yield family


class ServiceMetrics:
    """One registry per app (tests build many apps in one process)."""

    def __init__(self, count_by_state: Callable[[], dict[str, int]]):
        self.registry = CollectorRegistry()
        self.requests = Counter("realign_http_requests", "HTTP requests", ["method", "route", "status"],
                                registry=self.registry)
        self.latency = Histogram("realign_http_request_duration_seconds", "HTTP request latency",
                                 ["method", "route"], registry=self.registry,
                                 buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
        self.jobs_submitted = Counter("realign_jobs_submitted", "Jobs created by POST /v1/realign",
                                      registry=self.registry)
        self.files_uploaded = Counter("realign_files_uploaded", "Files accepted by POST /v1/files",
                                      registry=self.registry)
        self.enqueue_failures = Counter("realign_enqueue_failures", "Jobs whose enqueue call failed",
                                        registry=self.registry)
        self.registry.register(JobStateCollector(count_by_state))


class MetricsMiddleware:
    """Pure ASGI middleware (streams pass through untouched); labels by route template, not raw path."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), 500

        async def send_wrapper(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            self.metrics.requests.labels(scope["method"], route, str(status)).inc()
            self.metrics.latency.labels(scope["method"], route).observe(time.perf_counter() - start)
