"""Medians with their spread: every figure in a report is one of these."""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from typing import Any

Summary = dict[str, Any]  # {"median", "min", "max", "n"}; None values when nothing was measured


def summary(values: Iterable[float | None]) -> Summary:
    measured = [value for value in values if value is not None]
    if not measured:
        return {"median": None, "min": None, "max": None, "n": 0}
    return {
        "median": statistics.median(measured),
        "min": min(measured),
        "max": max(measured),
        "n": len(measured),
    }


def ratio(numerator: Summary | None, denominator: Summary | None) -> float | None:
    """The ratio of two medians, None where either is missing."""
    if not numerator or not denominator or not numerator["median"] or not denominator["median"]:
        return None
    return numerator["median"] / denominator["median"]
