"""The run's figures from what was sent and what mlxd logged of it (decode rates per arm with each repeat's
ratio, acceptance), and `speculative.json` and `speculative.md`, which holds the tables and the cost ratio in
words."""

from __future__ import annotations

from itertools import groupby
from pathlib import Path
from typing import Any

from benchmarks.machine import label
from benchmarks.report import fmt, fmt_summary, write_run
from benchmarks.serverlog import Served
from benchmarks.speculative.workload import ARMS, Sent
from benchmarks.stats import summary

TARGETS = {"edit": 1.5, "free": 0.97}  # the issue's: decode with prompt lookup over decode without it


def figures(sent: list[Sent], served: dict[str, Served]) -> dict[str, Any]:
    """Per shape, workload and level: each arm's decode tok/s, the lookup arm's acceptance, and the
    ratio of each repeat's two batches (run back to back, so the ratio cancels what drifts slower)."""

    def of(item: Sent) -> Served:
        return served[item.result.request_id or ""]

    def key(item: Sent) -> tuple:
        return item.shape, item.workload, item.streams

    cells: dict[str, Any] = {}
    for (shape, workload, streams), group in groupby(sorted(sent, key=key), key=key):
        items = list(group)
        rates = {arm: _per_repeat(items, arm, of) for arm in ARMS}
        cell: dict[str, Any] = {"off": {"decode_tps": summary(rates["off"])}}
        for arm in ARMS[1:]:
            mine = [of(item) for item in items if item.arm == arm]
            proposed, accepted = sum(s.proposed for s in mine), sum(s.accepted for s in mine)
            ratios = [on / off for on, off in zip(rates[arm], rates["off"], strict=True) if off]
            cell[arm] = {
                "decode_tps": summary(rates[arm]),
                "ratio": summary(ratios),
                "output_tokens": summary(s.output_tokens for s in mine),
                "proposed": proposed,
                "accepted": accepted,
                "acceptance": accepted / proposed if proposed else None,
                "accepted_share": accepted / sum(s.output_tokens for s in mine) if mine else None,
                # Each step outputs one token of its own and the proposals it accepted.
                "tokens_per_step": _per_step(mine),
            }
        cells.setdefault(shape, {}).setdefault(workload, {})[str(streams)] = cell
    return cells


def _per_step(served: list[Served]) -> float | None:
    output = sum(s.output_tokens for s in served)
    steps = output - sum(s.accepted for s in served)
    return output / steps if steps else None


def _per_repeat(items: list[Sent], arm: str, of) -> list[float]:
    """Each repeat's batch: the mean of its streams' decode rates."""
    mine = sorted((item for item in items if item.arm == arm), key=lambda item: item.repeat)
    batches = [list(batch) for _, batch in groupby(mine, key=lambda item: item.repeat)]
    return [sum(of(item).decode_tps for item in batch) / len(batch) for batch in batches]


def write(results: dict[str, Any], out: Path) -> list[Path]:
    return write_run(out, "speculative", results, markdown(results))


def markdown(results: dict[str, Any]) -> str:
    meta = results["meta"]
    lines = [
        f"# mlxd speculative decoding: {meta['mode']} run, {meta['started']}",
        "",
        f"- Machine: {label(meta['machine'])}",
        f"- Command: `{meta['command']}` ({meta['seconds'] / 60:.1f} minutes)",
        "- Models: Qwen3-shaped, trained until greedy decoding says both answers exactly (benchmarks/"
        "speculative/workload.py): the edit turn's answer copies a function from a file in its prompt; the "
        "free answer copies nothing. Both arms decode the same tokens.",
        "- Arms: an mlxd with MLXD_SPECULATIVE=off, one with prompt-lookup and one with a draft model (the "
        f"next shape down: {_drafts(meta['drafts'])}), up to {meta['num_draft_tokens']} proposed tokens, "
        f"taking turns, {meta['plan']['repeats']} batches each.",
        "- Decode tok/s: mlxd's own figure per request ((output tokens - 1) / decode seconds, from its log "
        "line), the mean over a batch's streams; each cell the median (min-max) over the batches; the ratio "
        "the median (min-max) of each repeat's two batches' ratio. Acceptance: accepted / proposed tokens.",
        "",
        "| Model | Workload | Streams | Proposer | off tok/s | speculating tok/s | ratio | target "
        "| acceptance | output from proposals | tokens per step |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for shape, workloads in results["cells"].items():
        for workload, levels in workloads.items():
            for streams, cell in levels.items():
                for arm in ARMS[1:]:
                    mine, off = cell[arm], cell["off"]["decode_tps"]
                    lines.append(
                        f"| {shape} | {workload} | {streams} | {arm} | {fmt_summary(off)} | "
                        f"{fmt_summary(mine['decode_tps'])} | {fmt_summary(mine['ratio'])} | "
                        f"{TARGETS[workload]}x | {_share(mine['acceptance'])} | "
                        f"{_share(mine['accepted_share'])} | {fmt(mine['tokens_per_step'])} |"
                    )
    lines += [
        "",
        "| Model | parameters | one token (ms) | k+1 tokens (ms) | cost ratio | draft's token (ms) | "
        "draft / model | draft, rows at once |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for shape, cost in results["cost"].items():
        lines.append(
            f"| {shape} | {fmt(results['parameters'][shape])} | {fmt(cost['one_token_ms'])} | "
            f"{fmt(cost['verify_ms'])} (k = {cost['k']}) | {fmt(cost['ratio'])}x | "
            f"{fmt(cost['draft_ms'])} | {fmt(cost['draft_share'])}x | "
            f"{fmt(cost['draft_rows_ratio'])}x ({cost['rows']} rows) |"
        )
    lines += [
        "",
        "The cost ratio is one forward pass over k+1 tokens against one token, at the edit prompt's "
        "length, in one process. A step that verifies k proposals and accepts a of them outputs a+1 tokens "
        "for about the ratio's cost, so with prompt lookup a run decodes at about tokens per step / cost "
        "ratio of its speed without it. On a Mac's GPU, where a decoding step of a 1-30B model is bound by "
        "reading its weights, verifying k+1 tokens costs little more than one (a ratio near 1), so the "
        "tokens per step above are close to what a Mac gains; this machine's CPU backend pays for every "
        "token's arithmetic, and its ratios are higher (the table), so it gains less. A draft's k proposals "
        "cost k of its passes, each the draft / model share of a step (on a Mac a 0.6B draft for a 30B "
        "model: a few percent); the sequences that draft in a step draft in one pass, which costs the "
        "rows-at-once ratio of one sequence's.",
    ]
    return "\n".join(lines) + "\n"


def _drafts(drafts: dict[str, str]) -> str:
    return ", ".join(f"{draft} for {model}" for model, draft in drafts.items())


def _share(value: float | None) -> str:
    return "—" if value is None else f"{value:.0%}"
