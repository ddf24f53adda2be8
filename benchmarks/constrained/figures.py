"""The run's figures from what was sent and what mlxd logged of it: decode rates per arm and level with
their ratio, the grammar's compile and mask times, and the cost ratio that explains the result."""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict
from itertools import groupby
from typing import Any

from benchmarks.constrained.workload import ARMS, Sent
from benchmarks.serverlog import Served
from benchmarks.stats import summary

TARGET = 0.9  # the issue's: constrained decode at least 0.9x unconstrained

Lookup = Callable[[Sent], Served]


def figures(sent: list[Sent], served: dict[str, Served]) -> dict[str, Any]:
    def of(item: Sent) -> Served:
        return served[item.result.request_id or ""]

    first = {(item.label, item.arm): of(item) for item in sent if item.label != "decode"}
    decoded = [item for item in sent if item.label == "decode"]
    levels = {
        str(streams): _level([item for item in decoded if item.streams == streams], of)
        for streams in sorted({item.streams for item in decoded})
    }
    return {
        "prompt_tokens": {arm: first["prime", arm].prompt_tokens for arm in ARMS},
        "compile_ms": {label: first[label, "constrained"].compile_ms for label in ("cold", "kept")},
        "levels": levels,
        "cost": {streams: _cost(level) for streams, level in levels.items()},
        "requests": [
            {"label": item.label, "arm": item.arm, "streams": item.streams, "repeat": item.repeat}
            | {"request_id": item.result.request_id, "client_seconds": item.result.done - item.result.sent}
            | asdict(of(item))
            for item in sent
        ],
    }


def _level(items: list[Sent], of: Lookup) -> dict[str, Any]:
    """Each arm's figures at one level, and constrained over unconstrained: each repeat's ratio (its two
    batches ran back to back, so the ratio cancels what drifts slower than a batch)."""
    arms, rates = {}, {}
    for arm in ARMS:
        batches = [
            list(batch) for _, batch in groupby((i for i in items if i.arm == arm), key=lambda i: i.repeat)
        ]
        mine = [item for batch in batches for item in batch]
        rates[arm] = {
            "decode_tps": [statistics.median(of(item).decode_tps for item in batch) for batch in batches],
            "aggregate_tps": [_aggregate(batch, of) for batch in batches],
        }
        arms[arm] = {
            "decode_tps": summary(of(item).decode_tps for item in mine),
            "aggregate_tps": summary(rates[arm]["aggregate_tps"]),
            "output_tokens": summary(of(item).output_tokens for item in mine),
            "cached_tokens": summary(of(item).cached_tokens for item in mine),
            "mask_us": summary(of(item).mask_us for item in mine),
            # Every stream's mask, one after another in each step: the sum of the batch's per-token means.
            "mask_us_per_step": summary(_masks(batch, of) for batch in batches),
            "stops": dict(Counter(of(item).stop for item in mine)),
        }
    held, free = rates["constrained"], rates["unconstrained"]
    paired = {key: [h / f for h, f in zip(held[key], free[key], strict=True) if f] for key in held}
    return arms | {"ratio": {key: summary(values) for key, values in paired.items()}}


def _aggregate(batch: list[Sent], of: Lookup) -> float:
    """Every stream's output tokens over the batch's wall time, first send to last end."""
    wall = max(item.result.done for item in batch) - min(item.result.sent for item in batch)
    return sum(of(item).output_tokens for item in batch) / wall


def _masks(batch: list[Sent], of: Lookup) -> float | None:
    masks = [mask for item in batch if (mask := of(item).mask_us) is not None]
    return sum(masks) if len(masks) == len(batch) else None


def _cost(level: dict[str, Any]) -> dict[str, float | None]:
    """The masks against the decode step, which decodes a token of every stream: `extra_ms`, how much longer
    a constrained step took (from the ratio); `masks_ms`, what the masks take, one after another. Were none
    of them hidden behind the step, constrained decode would run at step / (step + masks), which stays at
    `TARGET` or above while the step lasts at least masks x TARGET / (1 - TARGET)."""
    free = level["unconstrained"]["decode_tps"]["median"]
    held = level["ratio"]["decode_tps"]["median"]
    masks = level["constrained"]["mask_us_per_step"]["median"]
    if not free or not held or masks is None:
        return dict.fromkeys(("step_ms", "extra_ms", "masks_ms", "share", "unhidden_ratio", "least_step_ms"))
    step_ms, masks_ms = 1000 / free, masks / 1000
    return {
        "step_ms": step_ms,
        "extra_ms": step_ms * (1 / held - 1),
        "masks_ms": masks_ms,
        "share": masks_ms / step_ms,
        "unhidden_ratio": step_ms / (step_ms + masks_ms),
        "least_step_ms": masks_ms * TARGET / (1 - TARGET),
    }
