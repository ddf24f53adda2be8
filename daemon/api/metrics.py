"""`GET /metrics` in Prometheus text format: what was served, how fast, and what the engines hold now."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from quart import Blueprint, Response, current_app

from daemon.chat.events import Finished
from daemon.engine.registry import ModelRegistry

blueprint = Blueprint("metrics", __name__)

_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 40, 80, 160, 320)
_TOKEN_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1)


class Metrics:
    """The daemon's metrics, in a registry of its own (one per app, so apps never share counts)."""

    def __init__(self, models: ModelRegistry):
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "mlxd_requests",
            "Requests answered, by route and status.",
            ["route", "status"],
            registry=self.registry,
        )
        self.tokens = Counter(
            "mlxd_tokens",
            "Tokens by kind: prompt (all), cached (read from the prompt cache), output.",
            ["model", "kind"],
            registry=self.registry,
        )
        self.time_to_first_token = Histogram(
            "mlxd_time_to_first_token_seconds",
            "From admission to the first generated token.",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.time_per_output_token = Histogram(
            "mlxd_time_per_output_token_seconds",
            "Mean time between generated tokens of one request.",
            ["model"],
            buckets=_TOKEN_BUCKETS,
            registry=self.registry,
        )
        self.tool_parse_failures = Counter(
            "mlxd_tool_call_parse_failures",
            "Tool calls the model wrote that could not be parsed, returned as text instead.",
            ["model"],
            registry=self.registry,
        )
        self.constrained = Counter(
            "mlxd_constrained_requests",
            "Generations held to a grammar (tool calls, or an answer asked to fit a JSON schema).",
            ["model"],
            registry=self.registry,
        )
        self.grammar_compile = Histogram(
            "mlxd_grammar_compile_seconds",
            "Compiling a request's grammar (0 when a compiled one was kept).",
            ["model"],
            buckets=(0.0001, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5),
            registry=self.registry,
        )
        self.mask_time = Histogram(
            "mlxd_grammar_mask_seconds_per_token",
            "Mean time one constrained request spent computing each token's mask.",
            ["model"],
            buckets=(0.00001, 0.00005, 0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05),
            registry=self.registry,
        )
        self.speculative = Counter(
            "mlxd_speculative_tokens",
            "Speculative decoding: tokens proposed for verification, and accepted.",
            ["model", "kind"],
            registry=self.registry,
        )
        self.images_omitted = Counter(
            "mlxd_images_omitted",
            "Images a model that cannot see them was sent, each replaced by a note it reads.",
            ["model"],
            registry=self.registry,
        )
        self.registry.register(_EngineCollector(models))

    def grammar_compiled(self, model: str, seconds: float) -> None:
        self.constrained.labels(model).inc()
        self.grammar_compile.labels(model).observe(seconds)

    def generation(self, model: str, finished: Finished) -> None:
        usage = finished.usage
        self.tokens.labels(model, "prompt").inc(usage.prompt_tokens)
        self.tokens.labels(model, "cached").inc(usage.cached_tokens)
        self.tokens.labels(model, "output").inc(usage.output_tokens)
        if finished.constrained_tokens:
            self.mask_time.labels(model).observe(finished.mask_seconds / finished.constrained_tokens)
        if finished.time_to_first_token is not None and usage.output_tokens:
            self.time_to_first_token.labels(model).observe(finished.time_to_first_token)
        if usage.output_tokens > 1:
            self.time_per_output_token.labels(model).observe(
                finished.decode_seconds / (usage.output_tokens - 1)
            )
        if finished.tool_parse_failures:
            self.tool_parse_failures.labels(model).inc(finished.tool_parse_failures)
        if finished.proposed_tokens:
            self.speculative.labels(model, "proposed").inc(finished.proposed_tokens)
            self.speculative.labels(model, "accepted").inc(finished.accepted_tokens)


class _EngineCollector(Collector):
    """Gauges read from the engines at scrape time."""

    def __init__(self, models: ModelRegistry):
        self.models = models

    def collect(self) -> Iterator[GaugeMetricFamily]:
        gauges = {
            "mlxd_queue_depth": ("Requests waiting for a sequence slot.", lambda s: s.engine.queued),
            "mlxd_active_sequences": ("Sequences being generated.", lambda s: s.engine.active_sequences),
            "mlxd_prompt_cache_bytes": (
                "Bytes of KV state kept for prefix reuse.",
                lambda s: s.engine.cache.nbytes,
            ),
            "mlxd_prompt_cache_entries": ("Prefixes kept for reuse.", lambda s: s.engine.cache.entries),
            "mlxd_prompt_cache_disk_bytes": (
                "Bytes of KV state in the prompt cache's disk tier.",
                lambda s: s.engine.cache.disk_bytes,
            ),
        }
        for name, (help_text, read) in gauges.items():
            family = GaugeMetricFamily(name, help_text, labels=["model"])
            for served in self.models:
                family.add_metric([served.name], read(served))
            yield family
        yield from self._cache_counters()

    def _cache_counters(self) -> Iterator[CounterMetricFamily]:
        """Counts of the prompt cache since each model loaded: hits by tier, bytes to and from disk."""
        hits = CounterMetricFamily(
            "mlxd_prompt_cache_hits",
            "Requests that reused cached KV state, by tier.",
            labels=["model", "tier"],
        )
        moved = CounterMetricFamily(
            "mlxd_prompt_cache_disk_io_bytes",
            "Bytes of KV state written to and read from the disk tier.",
            labels=["model", "direction"],
        )
        for served in self.models:
            counts = served.engine.cache.counts()
            for tier in ("ram", "disk"):
                hits.add_metric([served.name, tier], counts[f"{tier}_hits"])
            for direction in ("written", "read"):
                moved.add_metric([served.name, direction], counts[f"disk_{direction}_bytes"])
        yield hits
        yield moved


@blueprint.route("/metrics", methods=["GET"])
async def metrics() -> Response:
    body = generate_latest(current_app.config["MLXD_METRICS"].registry)
    return Response(body, content_type=CONTENT_TYPE_LATEST)
