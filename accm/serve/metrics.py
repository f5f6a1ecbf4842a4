"""Prometheus metrics of one server (its own registry, so several apps never share counters)."""

from __future__ import annotations


class Metrics:
    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        r = self.registry = CollectorRegistry()
        self.requests = Counter("accm_requests", "chat-completion requests by model and HTTP status",
                                ["model", "code"], registry=r)
        self.queue_depth = Gauge("accm_queue_depth", "requests waiting for a batch", ["model"], registry=r)
        self.batch_size = Histogram("accm_batch_size", "requests per Pipeline batch", ["model"], registry=r,
                                    buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32))
        self.ttft = Histogram("accm_ttft_seconds", "time from queueing to the first answer token", ["model"],
                              registry=r, buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
        self.token_latency = Histogram("accm_token_latency_seconds", "time between answer tokens", ["model"],
                                       registry=r, buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1))
        self.generated = Counter("accm_generated_tokens", "answer tokens generated", ["model"], registry=r)
        self.tokens_per_second = Gauge("accm_tokens_per_second", "decode throughput of the last batch",
                                       ["model"], registry=r)

    def exposition(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST
