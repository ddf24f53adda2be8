"""Writes the run: `constrained.json` (everything, each request included) and `constrained.md` (the tables,
the target's verdict and the cost ratio in words)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.constrained.figures import TARGET
from benchmarks.machine import label
from benchmarks.report import fmt, fmt_summary, write_run


def write(results: dict[str, Any], out: Path) -> list[Path]:
    return write_run(out, "constrained", results, markdown(results))


def markdown(results: dict[str, Any]) -> str:
    meta, plan, model = results["meta"], results["meta"]["plan"], results["meta"]["model"]
    levels = results["levels"]
    lines = [
        f"# mlxd constrained decoding: {meta['mode']} run, {meta['started']}",
        "",
        f"- Machine: {label(meta['machine'])}",
        f"- Model: {' '.join(filter(None, (model['shape'], model.get('dtype'))))} ({model['about']}), "
        f"vocabulary {model['vocab_size']:,}",
        f"- Command: `{meta['command']}` ({meta['seconds'] / 60:.1f} minutes)",
        f"- Request: Claude Code's captured one (tests/claude_code_request.py, text scale {plan['scale']}) "
        f"with `tool_choice: any`: {meta['tools']} tools, a forced call, greedy, no reasoning, up to "
        f"{plan['max_tokens']} output tokens; {_prompts(results['prompt_tokens'])} prompt tokens, read from "
        "the prompt cache after the first request.",
        "- Constrained: an mlxd that holds the call to the grammar of every tool. Unconstrained: an mlxd "
        "with MLXD_CONSTRAINED_DECODING=false, which ends the prompt with the call's opening and decodes "
        "it free. Both hold the call back until it is whole, so they differ in the grammar alone. "
        f"{plan['repeats']} batches of each per level, taking turns.",
        "- Decode tok/s per stream: mlxd's own figure for each request, (output tokens - 1) / decode "
        "seconds, from its log line; aggregate: every stream's output tokens over the batch's wall time, as "
        "the client saw it. Each cell: median (min-max); a ratio: the median (min-max) over the repeats of "
        "each repeat's two batches' ratio.",
        "",
        _table(
            ["Streams", "Metric", "unconstrained", "constrained", "constrained / unconstrained"],
            [row for streams, level in levels.items() for row in _level_rows(streams, level)],
        ),
        "",
        _table(["Grammar", "ms or µs"], _grammar_rows(results)),
        "",
        _verdict(levels),
        "",
        _cost(results),
    ]
    if note := _calls(levels, plan["max_tokens"]):
        lines += ["", note]
    return "\n".join(lines) + "\n"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def _level_rows(streams: str, level: dict[str, Any]) -> list[list[str]]:
    free, held, ratios = level["unconstrained"], level["constrained"], level["ratio"]
    return [
        [
            streams,
            "decode tok/s per stream",
            *_pair(free, held, "decode_tps"),
            _ratio(ratios["decode_tps"]),
        ],
        [streams, "aggregate tok/s", *_pair(free, held, "aggregate_tps"), _ratio(ratios["aggregate_tps"])],
        [streams, "output tokens per request", *_pair(free, held, "output_tokens"), ""],
    ]


def _pair(free: dict[str, Any], held: dict[str, Any], key: str) -> list[str]:
    return [fmt_summary(free[key]), fmt_summary(held[key])]


def _grammar_rows(results: dict[str, Any]) -> list[list[str]]:
    compiled = results["compile_ms"]
    rows = [
        ["compile, first request (ms)", fmt(compiled["cold"])],
        ["compile, second request (ms; 0: kept)", fmt(compiled["kept"])],
    ]
    for streams, level in results["levels"].items():
        masks = level["constrained"]
        rows.append([f"mask per token at {_streams(streams)} (µs)", fmt_summary(masks["mask_us"])])
        if streams != "1":
            rows.append(
                [f"masks per step at {_streams(streams)} (µs)", fmt_summary(masks["mask_us_per_step"])]
            )
    return rows


def _verdict(levels: dict[str, Any]) -> str:
    ratios = {streams: level["ratio"]["decode_tps"]["median"] for streams, level in levels.items()}
    shown = ", ".join(f"{fmt(value, 'x')} at {_streams(streams)}" for streams, value in ratios.items())
    met = "met" if all(value is not None and value >= TARGET for value in ratios.values()) else "NOT met"
    return f"Target: constrained decode at least {TARGET}x unconstrained: {met} ({shown})."


def _cost(results: dict[str, Any]) -> str:
    parts = []
    for streams, cost in results["cost"].items():
        if cost["step_ms"] is not None:
            parts.append(
                f"at {_streams(streams)} a step takes {fmt(cost['step_ms'])} ms unconstrained and "
                f"{fmt(cost['extra_ms'])} ms more constrained, where its {_masks(streams)} "
                f"{fmt(cost['masks_ms'])} ms ({fmt(100 * cost['share'])}% of the step): unhidden, the masks "
                f"would cost {fmt(cost['unhidden_ratio'], 'x')}, and {TARGET}x at a step under "
                f"{fmt(cost['least_step_ms'])} ms"
            )
    if not parts:
        return "Cost: no mask times were measured."
    return (
        "Cost, per decode step (a step decodes a token of every stream): "
        + "; ".join(parts)
        + ". The masks are computed on the CPU while the model's step runs, so they cost decode speed only "
        "where they outlast it; what a constrained step takes beyond the masks is the rest of the grammar's "
        "path (the logits processor, reading the last token, applying the mask). A GPU decodes a step of a "
        "small model in a few milliseconds, far faster than MLX's CPU backend here: there the masks stay "
        "within the target down to the step times above, while the rest of the path counts in full."
    )


def _calls(levels: dict[str, Any], max_tokens: int) -> str:
    """What the forced calls were like: ended by the grammar, or cut at max_tokens."""
    stops: dict[str, int] = {}
    for level in levels.values():
        for stop, count in level["constrained"]["stops"].items():
            stops[stop] = stops.get(stop, 0) + count
    if set(stops) == {"max_tokens"}:
        return (
            f"Every forced call was cut at max_tokens ({max_tokens}): decode is measured inside the calls' "
            "arguments."
        )
    shown = ", ".join(f"{stop} {count}" for stop, count in sorted(stops.items()))
    return (
        f"Forced calls ended before max_tokens ({max_tokens}): {shown}; decode is measured over what the "
        "model wrote (the output tokens row)."
    )


def _streams(streams: str) -> str:
    return "1 stream" if streams == "1" else f"{streams} streams"


def _masks(streams: str) -> str:
    return "mask takes" if streams == "1" else f"{streams} masks take"


def _prompts(tokens: dict[str, int]) -> str:
    return " and ".join(f"{count:,} ({arm})" for arm, count in tokens.items())


def _ratio(figure: dict[str, Any]) -> str:
    if figure["median"] is None:
        return "—"
    shown = fmt(figure["median"], "x")
    if figure["n"] > 1 and figure["min"] != figure["max"]:
        shown += f" ({fmt(figure['min'])}-{fmt(figure['max'])})"
    return shown
