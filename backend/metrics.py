"""Prometheus metrics of one backend app (its own registry, so several apps can live in one process)."""

from __future__ import annotations

import threading
import time

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Metrics:
    """The backend's counters, latencies and model-version gauge.

    Example:
        >>> m = Metrics()
        >>> m.set_model_version("20250101-120000-3fa2c1")
        >>> b"shoeseg_backend_model_info" in m.render()
        True
    """

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "shoeseg_backend_requests", "HTTP requests answered", ["method", "route", "status"], registry=r
        )
        self.latency = Histogram(
            "shoeseg_backend_request_latency_seconds", "HTTP request latency", ["method", "route"],
            buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.errors = Counter(
            "shoeseg_backend_errors", "Errors by kind (image, config, queue, internal)", ["kind"], registry=r
        )
        self.tasks = Counter("shoeseg_backend_tasks", "Tasks predicted", ["outcome"], registry=r)
        self.regions = Counter("shoeseg_backend_regions", "Result regions returned", ["type"], registry=r)
        self.cache = Counter("shoeseg_backend_result_cache", "Prediction cache lookups", ["outcome"], registry=r)
        self.inference = Histogram(
            "shoeseg_backend_inference_seconds", "Model forward time per batch", buckets=_LATENCY_BUCKETS, registry=r
        )
        self.model_info = Gauge(
            "shoeseg_backend_model_info", "1 for the model version being served", ["version"], registry=r
        )
        self.model_loads = Counter("shoeseg_backend_model_loads", "Model versions loaded", ["outcome"], registry=r)
        self.started = Gauge("shoeseg_backend_start_time_seconds", "Process start (unix time)", registry=r)
        self.started.set(time.time())
        self._version: str | None = None
        self._lock = threading.Lock()

    def set_model_version(self, version: str) -> None:
        with self._lock:
            if self._version == version:
                return
            if self._version is not None:
                self.model_info.remove(self._version)
            self.model_info.labels(version=version).set(1)
            self._version = version

    def render(self) -> bytes:
        return generate_latest(self.registry)
