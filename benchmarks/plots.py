"""The PNG plots of a run, one per workload, each labelled with the machine and versions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from matplotlib.figure import Figure  # the object API: no pyplot state, no display backend

from benchmarks.machine import label


def draw(results: dict[str, Any], out: Path) -> list[Path]:
    footer = f"{results['meta']['mode']} run · {label(results['meta']['machine'])}"
    drawn = []
    for name, plot in (
        ("single_stream", _single),
        ("concurrency", _concurrency),
        ("session", _session),
        ("prefill", _prefill),
        ("memory", _memory),
    ):
        figure = plot(results)
        figure.text(0.01, 0.01, footer, fontsize=6, color="gray", wrap=True)
        figure.tight_layout(rect=(0, 0.05, 1, 1))
        path = out / f"{name}.png"
        figure.savefig(path, dpi=120)
        drawn.append(path)
    return drawn


def _bars(axis: Any, section: dict[str, Any], key: str, title: str) -> None:
    names = [name for name, figures in section.items() if figures[key]["median"] is not None]
    medians = [section[name][key]["median"] for name in names]
    low = [m - section[name][key]["min"] for name, m in zip(names, medians, strict=True)]
    high = [section[name][key]["max"] - m for name, m in zip(names, medians, strict=True)]
    axis.bar(names, medians, yerr=[low, high], capsize=4, color="tab:blue")
    axis.set_title(title)
    axis.tick_params(axis="x", labelrotation=15)


def _single(results: dict[str, Any]) -> Figure:
    figure = Figure(figsize=(9, 4))
    left, right = figure.subplots(1, 2)
    section = results["single_stream"]
    _bars(left, section, "ttft_s", "Time to first token (s, lower is better)")
    _bars(right, section, "decode_tps", "Decode tokens/s (higher is better)")
    figure.suptitle("Single stream: median, whiskers min-max")
    return figure


def _lines(axis: Any, section: dict[str, dict[str, Any]], key: str, style: str = "o-") -> None:
    """One line per target over a doubling x (streams, prompt tokens), ticked at the measured points."""
    axis.set_xscale("log", base=2)
    for target, by_x in section.items():
        xs = [int(x) for x in by_x]
        medians = [by_x[x][key]["median"] for x in by_x]
        axis.plot(xs, medians, style, label=target)
        axis.set_xticks(xs, [str(x) for x in xs])
        axis.minorticks_off()


def _concurrency(results: dict[str, Any]) -> Figure:
    figure = Figure(figsize=(9, 4))
    left, right = figure.subplots(1, 2)
    section = results["concurrency"]
    _lines(left, section, "aggregate_tps")
    left.set_title("Aggregate tokens/s")
    _lines(right, section, "per_stream_tps")
    right.set_title("Per-stream decode tokens/s")
    for axis in (left, right):
        axis.set_xlabel("concurrent streams")
        axis.legend()
    figure.suptitle("Concurrency: medians over repeats")
    return figure


def _session(results: dict[str, Any]) -> Figure:
    figure = Figure(figsize=(7, 4))
    axis = figure.subplots()
    for target, figures in results["session"].items():
        turns = figures["turns"]
        axis.plot([t["turn"] for t in turns], [t["ttft_s"]["median"] for t in turns], "o-", label=target)
    axis.set_xlabel("turn")
    axis.set_ylabel("time to first token (s)")
    axis.set_xticks(range(1, results["meta"]["plan"]["session_turns"] + 1))
    axis.legend()
    prefix = results["meta"]["plan"]["session_prefix_tokens"]
    axis.set_title(f"Claude Code-shaped session: ~{prefix:,}-token prefix, new cch each turn")
    return figure


def _prefill(results: dict[str, Any]) -> Figure:
    figure = Figure(figsize=(7, 4))
    axis = figure.subplots()
    _lines(axis, results["prefill"], "prefill_tps")
    axis.set_xlabel("prompt tokens")
    axis.set_ylabel("prefill tokens/s")
    axis.legend()
    axis.set_title("Prefill: prompt tokens per second until the first token")
    return figure


def _memory(results: dict[str, Any]) -> Figure:
    figure = Figure(figsize=(7, 4))
    axis = figure.subplots()
    memory = results["memory"]
    keys = ("idle_bytes", "peak_bytes", "end_bytes")
    width = 0.8 / len(keys)
    for index, key in enumerate(keys):
        xs = [position + index * width for position in range(len(memory))]
        axis.bar(xs, [figures[key] / 2**20 for figures in memory.values()], width, label=key.split("_")[0])
    axis.set_xticks([position + width for position in range(len(memory))], list(memory))
    axis.set_ylabel("resident memory (MiB)")
    axis.legend()
    axis.set_title("Server memory: idle with the model loaded, peak during the runs, end")
    return figure
