"""Writes a run's results: `results.json` (everything), `results.md` (the table) and the PNG plots."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks import plots
from benchmarks.machine import describe, label
from benchmarks.stats import Summary, ratio

RATIOS_AGAINST = ("raw", "mlx_lm.server")


def write(results: dict[str, Any], out: Path) -> list[Path]:
    return [*write_run(out, "results", results, markdown(results)), *plots.draw(results, out)]


def write_run(out: Path, stem: str, results: dict[str, Any], text: str) -> list[Path]:
    """A run's `<stem>.json` (everything) and `<stem>.md` (its tables) in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(results, indent=2))
    (out / f"{stem}.md").write_text(text)
    return [out / f"{stem}.json", out / f"{stem}.md"]


def run_meta(prog: str, argv: list[str], started: datetime, **facts: Any) -> dict[str, Any]:
    """A run's `meta`: when it started, its command line, the machine, `facts` of its own, and its length."""
    return {
        "started": started.isoformat(timespec="seconds"),
        "command": " ".join([prog, *argv]),
        "machine": describe(),
        **facts,
        "seconds": round((datetime.now(UTC) - started).total_seconds(), 1),
    }


def targets(results: dict[str, Any]) -> list[str]:
    """Every target measured, in a fixed order: raw engine, mlxd, then peers as they ran."""
    return sorted(results["single_stream"], key=lambda name: {"raw": 0, "mlxd": 1}.get(name, 2))


def markdown(results: dict[str, Any]) -> str:
    meta = results["meta"]
    model = meta["model"]
    names = targets(results)
    against = [name for name in RATIOS_AGAINST if name in names]
    header = ["Workload", "Metric", *names, *(f"mlxd / {name}" for name in against)]
    rows = [row for section in _ROWS for row in section(results)]
    lines = [
        f"# mlxd benchmark: {meta['mode']} run, {meta['started']}",
        "",
        f"- Machine: {label(meta['machine'])}",
        f"- Model: {model.get('shape', model['path'])} {model.get('dtype', '')} "
        f"({model.get('about', 'as given')}): {model['parameters'] / 1e6:.1f} M parameters, "
        f"{fmt(model['weight_bytes'] / 2**20)} MiB of weights",
        f"- Command: `{meta['command']}` ({meta.get('seconds', 0) / 60:.1f} minutes)",
        "- Each cell: median (min-max) over the repeats; a ratio is of medians. "
        "A cell without a range is one measurement. "
        "Times are seconds, lower is better; rates are tokens per second, higher is better.",
    ]
    if meta["reduced"]:
        lines.append(f"- **Reduced sizes ({meta['mode']} run)**: not comparable with a full run.")
    lines += ["", _table(header, [_cells(row, names, against) for row in rows]), "", _bound(results)]
    return "\n".join(lines) + "\n"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


# A row: (workload, metric, {target: Summary}).
Row = tuple[str, str, dict[str, Summary]]


def _cells(row: Row, names: list[str], against: list[str]) -> list[str]:
    workload, metric, figures = row
    values = [fmt_summary(figures.get(name)) for name in names]
    ratios = [fmt(ratio(figures.get("mlxd"), figures.get(name)), "x") for name in against]
    return [workload, metric, *values, *ratios]


def fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return "—"
    return f"{value:.3g}{unit}" if abs(value) < 1000 else f"{value:,.0f}{unit}"


def fmt_summary(figure: Summary | None) -> str:
    if not figure or figure["median"] is None:
        return "—"
    if figure["n"] == 1 or figure["min"] == figure["max"]:
        return fmt(figure["median"])
    return f"{fmt(figure['median'])} ({fmt(figure['min'])}-{fmt(figure['max'])})"


def _pick(section: dict[str, Any], *keys: str) -> dict[str, Summary]:
    """Each target's figure at the path `keys`, for the targets that have one."""
    picked = {}
    for target, figures in section.items():
        value = figures
        for key in keys:
            value = value.get(key) if value else None
        if value:
            picked[target] = value
    return picked


def _single(results: dict[str, Any]) -> list[Row]:
    section = results["single_stream"]
    plan = results["meta"]["plan"]
    name = f"Single stream ({plan['single_prompt_tokens']} → {plan['single_max_tokens']} tokens)"
    return [
        (name, "time to first token (s)", _pick(section, "ttft_s")),
        (name, "decode tok/s", _pick(section, "decode_tps")),
    ]


def _concurrency(results: dict[str, Any]) -> list[Row]:
    section = results["concurrency"]
    rows = []
    for level in results["meta"]["plan"]["concurrency"]:
        name = f"Concurrency {level}"
        rows.append((name, "aggregate tok/s", _pick(section, str(level), "aggregate_tps")))
        rows.append((name, "per-stream decode tok/s", _pick(section, str(level), "per_stream_tps")))
    return rows


def _session(results: dict[str, Any]) -> list[Row]:
    section = results["session"]
    plan = results["meta"]["plan"]
    name = f"Claude Code session (~{plan['session_prefix_tokens']:,}-token prefix)"
    rows = []
    for index in range(plan["session_turns"]):
        turn = {target: figures["turns"][index] for target, figures in section.items()}
        size = fmt((turn.get("mlxd") or next(iter(turn.values())))["prompt_tokens"]["median"])
        rows.append(
            (name, f"turn {index + 1} time to first token (s), {size} prompt tokens", _pick(turn, "ttft_s"))
        )
        rows.append((name, f"turn {index + 1} tokens read from cache", _pick(turn, "cached_tokens")))
    last = {target: figures["turns"][-1] for target, figures in section.items()}
    rows.append((name, f"turn {plan['session_turns']} / turn 1 TTFT", _pick(last, "ttft_over_turn1")))
    return rows


def _prefill(results: dict[str, Any]) -> list[Row]:
    section = results["prefill"]
    return [
        (f"Prefill {size:,} tokens", "prefill tok/s", _pick(section, str(size), "prefill_tps"))
        for size in results["meta"]["plan"]["prefill_sizes"]
    ]


def _memory(results: dict[str, Any]) -> list[Row]:
    rows = []
    for key, what in (("idle_bytes", "idle, model loaded"), ("peak_bytes", "peak"), ("end_bytes", "end")):
        figures = {
            target: {"median": memory[key] / 2**20, "min": None, "max": None, "n": 1}
            for target, memory in results["memory"].items()
        }
        rows.append(("Memory", f"RSS {what} (MiB)", figures))
    return rows


_ROWS = (_single, _concurrency, _session, _prefill, _memory)


def _bound(results: dict[str, Any]) -> str:
    bound = results["physical_bound"]
    bandwidth = bound["bandwidth"]
    shares = ", ".join(
        f"{target} {fmt(tps)} tok/s = {fmt(100 * share)}%"
        for target, tps in bound["decode_tps"].items()
        if (share := bound["fraction_of_bound"][target]) is not None
    )
    return (
        f"Physical bound: memory bandwidth {bandwidth['gb_per_s']} GB/s (best copy of a "
        f"{bandwidth['buffer_mib']} MiB buffer, bytes read + written: numpy on the CPU "
        f"{bandwidth['numpy_copy_gb_per_s']} GB/s, MLX on its device {bandwidth['mlx_copy_gb_per_s']} GB/s) "
        f"/ {fmt(bound['weight_bytes'] / 2**20)} MiB of weights read per decoded token = "
        f"{fmt(bound['bound_tps'])} tok/s at most for one stream. Single-stream decode as a share of it: "
        f"{shares}."
    )
