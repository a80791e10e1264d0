"""Prometheus text metrics (no client library): request counts and latency per route.

Routes are labelled by their template (``/api/images/{image_id}``), unknown paths as
``unmatched``, so the number of series stays bounded whatever clients send.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def _esc(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(**kv: object) -> str:
    return "{" + ",".join(f'{k}="{_esc(str(v))}"' for k, v in kv.items()) + "}"


class Metrics:
    """Thread-safe counters and histograms rendered in the Prometheus text format 0.0.4."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._count: dict[tuple[str, str, int], int] = defaultdict(int)
        self._hist: dict[tuple[str, str], list[float]] = {}
        self._sum: dict[tuple[str, str], float] = defaultdict(float)
        self._n: dict[tuple[str, str], int] = defaultdict(int)
        self.started = time.time()

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        with self._lock:
            self._count[(method, route, status)] += 1
            key = (method, route)
            buckets = self._hist.setdefault(key, [0.0] * len(BUCKETS))
            for i, b in enumerate(BUCKETS):
                if seconds <= b:
                    buckets[i] += 1
            self._sum[key] += seconds
            self._n[key] += 1

    def render(self, gauges: Iterable[tuple[str, str, dict[str, object], float]] = ()) -> str:
        """The exposition text; ``gauges`` are (name, help, labels, value)."""
        out = ["# HELP cbir_http_requests_total HTTP requests by method, route and status.",
               "# TYPE cbir_http_requests_total counter"]
        with self._lock:
            for (m, r, s), n in sorted(self._count.items()):
                out.append(f"cbir_http_requests_total{_labels(method=m, route=r, status=s)} {n}")
            out += ["# HELP cbir_http_request_duration_seconds HTTP request latency by route.",
                    "# TYPE cbir_http_request_duration_seconds histogram"]
            for (m, r), buckets in sorted(self._hist.items()):
                for b, c in zip(BUCKETS, buckets, strict=True):
                    out.append("cbir_http_request_duration_seconds_bucket"
                               f"{_labels(method=m, route=r, le=b)} {c:g}")
                out.append("cbir_http_request_duration_seconds_bucket"
                           f"{_labels(method=m, route=r, le='+Inf')} {self._n[(m, r)]}")
                out.append(f"cbir_http_request_duration_seconds_sum{_labels(method=m, route=r)} "
                           f"{self._sum[(m, r)]:.6f}")
                out.append(f"cbir_http_request_duration_seconds_count{_labels(method=m, route=r)} "
                           f"{self._n[(m, r)]}")
        seen: set[str] = set()
        for name, help_, labels, value in gauges:
            if name not in seen:
                out += [f"# HELP {name} {help_}", f"# TYPE {name} gauge"]
                seen.add(name)
            out.append(f"{name}{_labels(**labels) if labels else ''} {value:g}")
        out.append("# HELP cbir_process_start_time_seconds Start time of the server (Unix time).")
        out.append("# TYPE cbir_process_start_time_seconds gauge")
        out.append(f"cbir_process_start_time_seconds {self.started:.3f}")
        return "\n".join(out) + "\n"


class MetricsMiddleware:
    """Pure ASGI middleware: time every HTTP request and record it under its route template."""

    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            self.metrics.observe(scope.get("method", "GET"), template, status,
                                 time.perf_counter() - t0)


GaugeFn = Callable[[], Iterable[tuple[str, str, dict[str, object], float]]]
