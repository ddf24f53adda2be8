"""The soak's report: the memory-trend rule, latency percentiles, the checks and their verdict, written as
soak.json and rendered as the summary printed after a run."""

from __future__ import annotations

import json
import statistics
from collections import Counter
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Any

from benchmarks.soak.options import Options
from benchmarks.soak.targets import Target
from benchmarks.soak.traffic import EXPECTED_ERRORS, MIX, Outcome
from benchmarks.soak.watch import MIB, Sample

SLOPE_WINDOW_MIN = 5


def memory_trend(samples: list[Sample], warm_from: float, options: Options) -> dict[str, Any]:
    """The rule: after warm-up (the first `warmup_fraction` of the time, while MLX's allocator fills its
    cache and the prompt cache its entries) RSS must not grow: the end RSS at most the first sample after
    warm-up x (1 + tolerance), and, where the samples after warm-up span `SLOPE_WINDOW_MIN` minutes or
    more, their least-squares slope at most `max_slope_mib_per_min`. Over a shorter span one step of the
    allocator's cache reads as tens of MiB/min, so there the slope is reported but not checked."""
    measured = [s for s in samples if s.rss is not None]
    after = [s for s in measured if s.t >= warm_from]
    if len(after) < 3:
        return {
            "ok": None,
            "why": "no memory figures (no server process to read)" if not measured else "too short",
        }
    warm, end = after[0].rss, after[-1].rss
    fit = statistics.linear_regression([s.t / 60 for s in after], [s.rss / MIB for s in after])
    growth = end / warm - 1
    slope_checked = after[-1].t - after[0].t >= SLOPE_WINDOW_MIN * 60
    return {
        "start_bytes": measured[0].rss,
        "warmup_bytes": warm,
        "warmup_at_s": round(after[0].t, 1),
        "end_bytes": end,
        "peak_bytes": max(s.rss for s in measured),
        "growth_after_warmup": round(growth, 4),
        "slope_mib_per_min": round(fit.slope, 3),
        "slope_checked": slope_checked,
        "rule": f"end <= warm-up x (1 + {options.rss_tolerance}), and over {SLOPE_WINDOW_MIN} min or more "
        f"after warm-up a least-squares slope <= {options.max_slope_mib_per_min} MiB/min",
        "ok": growth <= options.rss_tolerance
        and (not slope_checked or fit.slope <= options.max_slope_mib_per_min),
    }


def percentiles(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"p50": None, "p99": None, "max": None, "n": 0}
    # `quantiles` wants two values at least; a single one is its own every percentile.
    cuts = statistics.quantiles(values, n=100, method="inclusive") if len(values) > 1 else values * 99
    return {
        "p50": round(cuts[49], 4),
        "p99": round(cuts[98], 4),
        "max": round(max(values), 4),
        "n": len(values),
    }


def build(
    target: Target,
    options: Options,
    outcomes: list[Outcome],
    samples: list[Sample],
    leaks: dict[str, Any],
    hung: int,
) -> dict[str, Any]:
    """The report of a run, as soak.json holds it: what was sent and how it ended, and the checks."""
    failures = Counter(f"{o.kind}: {o.result}" for o in outcomes if o.failure)
    provoked = Counter(
        f"{o.kind}: {o.result}"
        for o in outcomes
        if not o.failure and (o.kind in EXPECTED_ERRORS or o.result == "abandoned")
    )
    memory = memory_trend(samples, options.duration_s * options.warmup_fraction, options)
    checks = {
        "no unprovoked errors": not failures,
        "every client finished": hung == 0,
        "no sequence left active or queued": leaks["ok"],
        "no memory growth after warm-up": memory["ok"] is not False,
    }
    return {
        "meta": {
            "started": datetime.now().isoformat(timespec="seconds"),
            "target": target.about,
            "options": asdict(options),
            "mix": MIX,
        },
        "requests": {
            "total": len(outcomes),
            "by_kind": dict(Counter(o.kind for o in outcomes).most_common()),
            "results_by_kind": {
                kind: dict(Counter(o.result for o in outcomes if o.kind == kind).most_common())
                for kind in MIX
            },
            "clients_still_running": hung,
        },
        "provoked": dict(provoked.most_common()),
        "failures": dict(failures.most_common()),
        "ttft_s": percentiles([o.ttft_s for o in outcomes if o.ttft_s is not None]),
        "latency_s": {kind: percentiles([o.seconds for o in outcomes if o.kind == kind]) for kind in MIX},
        "memory": memory,
        "leaks": leaks,
        "samples": [asdict(sample) for sample in samples],
        "verdict": {"ok": all(checks.values()), "checks": checks},
    }


def write(report: dict[str, Any], out: Path) -> Path:
    """`out`/soak.json, the folder made if need be."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "soak.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    return path


def render(report: dict[str, Any]) -> str:
    """The human-readable summary of a report."""
    requests, memory, ttft, leaks = report["requests"], report["memory"], report["ttft_s"], report["leaks"]
    lines = [f"soak: {requests['total']} requests from {report['meta']['options']['clients']} clients"]
    lines += [f"  {kind:<14} {n:>7}" for kind, n in requests["by_kind"].items()]
    lines.append("provoked (expected) errors:")
    lines += _counts(report["provoked"])
    lines.append("failures:")
    lines += _counts(report["failures"])
    lines.append(
        f"time to first token (to the first content_block_delta), n={ttft['n']}: "
        f"p50 {ttft['p50']} s, p99 {ttft['p99']} s"
    )
    if memory.get("ok") is None:
        lines.append(f"memory: not checked ({memory['why']})")
    else:
        lines.append(
            f"server RSS: start {memory['start_bytes'] / MIB:.0f} MiB, after warm-up "
            f"{memory['warmup_bytes'] / MIB:.0f} MiB, end {memory['end_bytes'] / MIB:.0f} MiB "
            f"({memory['growth_after_warmup']:+.1%}), slope {memory['slope_mib_per_min']} MiB/min"
            + ("" if memory["slope_checked"] else " (too short a span to check)")
        )
    if "error" in leaks:
        lines.append(f"after the traffic: the server did not answer ({leaks['error']})")
    else:
        lines.append(
            f"after the traffic: active sequences {leaks['active_sequences']}, "
            f"queue depth {leaks['queue_depth']} (waited {leaks['waited_s']} s)"
        )
    counted = ", ".join(f"{label} {n}" for label, n in sorted(leaks.get("server_counted", {}).items()))
    lines.append(f"the server counted: {counted or 'nothing'}")
    lines += [f"  [{'ok' if ok else 'FAILED'}] {check}" for check, ok in report["verdict"]["checks"].items()]
    return "\n".join(lines)


def _counts(labelled: dict[str, int]) -> list[str]:
    return [f"  {label:<50} {n:>7}" for label, n in labelled.items()] or ["  none"]
