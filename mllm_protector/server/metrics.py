"""Prometheus metrics of one proxy app (own registry, so several apps can live in one process)."""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class Metrics:
    """Counters and histograms the proxy updates; `render()` is the /metrics body."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("mllm_protector_requests", "HTTP requests by endpoint and status code.",
                                ["endpoint", "status"], registry=r)
        self.verdicts = Counter("mllm_protector_verdicts", "Guard decisions by action (pass, detoxified, refused, "
                                "flagged, unchecked) and mode (chat, stream, guard).", ["action", "mode"], registry=r)
        self.detector_seconds = Histogram("mllm_protector_detector_seconds", "Wall time of one detector batch.",
                                          buckets=LATENCY_BUCKETS, registry=r)
        self.detector_batch = Histogram("mllm_protector_detector_batch_size", "Checks scored together in one batch.",
                                        buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=r)
        self.detox_seconds = Histogram("mllm_protector_detox_seconds", "Time to detoxify one flagged answer (queueing included).",
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.guard_seconds = Histogram("mllm_protector_guard_seconds", "Latency the guard added to one request "
                                       "(detector + detoxifier, excluding upstream time).", ["mode"],
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.upstream_seconds = Histogram("mllm_protector_upstream_seconds", "Upstream time until the full answer.",
                                          ["mode"], buckets=LATENCY_BUCKETS, registry=r)
        self.upstream_errors = Counter("mllm_protector_upstream_errors", "Upstream failures by kind "
                                       "(unreachable, timeout, status, protocol).", ["kind"], registry=r)
        self.guard_failures = Counter("mllm_protector_guard_failures", "Detector/detoxifier errors and timeouts, and answers over the detector budget.",
                                      ["stage", "kind"], registry=r)
        self.stream_windows = Counter("mllm_protector_stream_windows", "Streaming hold-back windows checked, by result.",
                                      ["result"], registry=r)
        self.in_flight = Gauge("mllm_protector_in_flight_requests", "Requests being handled now.", registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
