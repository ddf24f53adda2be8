"""What the soak reads of the server itself: its RSS and /metrics gauges sampled while the traffic runs, its
own count of answers, and, after the traffic, the drain back to no sequence running or queued."""

from __future__ import annotations

import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import httpx
import psutil
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.soak.options import Options
from benchmarks.soak.traffic import Outcome

MIB = 2**20
GAUGES = ("mlxd_active_sequences", "mlxd_queue_depth", "mlxd_prompt_cache_bytes")


@dataclass
class Sample:
    t: float  # seconds since the traffic began
    rss: int | None
    gauges: dict[str, float]


def sampling(
    http: httpx.Client,
    process: psutil.Process | None,
    begun: float,
    options: Options,
    samples: list[Sample],
    outcomes: list[Outcome],
    done: threading.Event,
) -> None:
    """A sample every `sample_every_s` while the traffic runs, and a progress line every minute."""
    last_line = begun
    while not done.wait(options.sample_every_s):
        sample = take(http, process, time.monotonic() - begun)
        samples.append(sample)
        if time.monotonic() - last_line >= 60:
            last_line = time.monotonic()
            rss = f"{sample.rss / MIB:.0f} MiB" if sample.rss else "?"
            failures = sum(o.failure for o in outcomes)
            active, queued = (sample.gauges.get(name) for name in GAUGES[:2])
            print(
                f"[{sample.t:6.0f}s] {len(outcomes)} requests, {failures} failures, rss {rss}, "
                f"active {active}, queued {queued}",
                file=sys.stderr,
            )


def take(http: httpx.Client, process: psutil.Process | None, t: float) -> Sample:
    """One sample: the server's RSS and its gauges, `t` seconds into the traffic."""
    return Sample(t, _rss(process), _gauges(http))


def counted(http: httpx.Client) -> Counter[str]:
    """The server's own count of its Messages answers by status, and of tool calls it could not parse:
    to set beside what the clients saw."""
    counts: Counter[str] = Counter()
    for sample in (sample for family in _metrics(http) for sample in family.samples):
        if sample.name == "mlxd_requests_total" and sample.labels["route"] == "/v1/messages":
            counts[f"/v1/messages {sample.labels['status']}"] += int(sample.value)
        elif sample.name == "mlxd_tool_call_parse_failures_total":
            counts["tool calls not parsed"] += int(sample.value)
    return counts


def drain(http: httpx.Client, timeout: float) -> dict[str, Any]:
    """Once every client is done, the server must come back to no sequence running and none queued. A
    cancelled sequence is freed at the engine's next step, hence a short wait rather than one look."""
    started = time.monotonic()
    while True:
        try:
            health = http.get("/health").json()
        except httpx.HTTPError as error:
            return {"ok": False, "error": f"/health: {error!r}"}
        active = sum(model["active_sequences"] for model in health["models"])
        queued = _gauges(http).get("mlxd_queue_depth")
        if (active == 0 and queued == 0) or time.monotonic() - started > timeout:
            break
        time.sleep(0.25)
    return {
        "active_sequences": active,
        "queue_depth": queued,
        "waited_s": round(time.monotonic() - started, 2),
        "ok": active == 0 and queued == 0,
    }


def _gauges(http: httpx.Client) -> dict[str, float]:
    return {f.name: sum(s.value for s in f.samples) for f in _metrics(http) if f.name in GAUGES}


def _rss(process: psutil.Process | None) -> int | None:
    try:
        return process.memory_info().rss if process else None
    except psutil.Error:
        return None  # the server is gone: the leak check after the traffic says so


def _metrics(http: httpx.Client) -> list[Any]:
    try:
        return list(text_string_to_metric_families(http.get("/metrics", timeout=30).text))
    except httpx.HTTPError:
        return []  # a scrape that failed leaves a gap in the samples; the leak check reads /health too
