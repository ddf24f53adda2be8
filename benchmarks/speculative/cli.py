"""The benchmark's command line: `python -m benchmarks.speculative [--smoke] ...`; `python -m benchmarks
--speculative` (and so `mlxd bench --speculative`) hands its arguments to `main`."""

from __future__ import annotations

import argparse
import sys
from contextlib import ExitStack
from dataclasses import asdict, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tqdm import tqdm

from benchmarks import serverlog, servers
from benchmarks.client import BenchError
from benchmarks.machine import describe
from benchmarks.plan import PLANS as SUITE_PLANS
from benchmarks.speculative import report
from benchmarks.speculative.cost import cost_ratio
from benchmarks.speculative.workload import ARMS, DRAFTS, EDIT, PLANS, Plan, model_for, run, settings, steps
from daemon.config.settings import Settings, data_dir


def parser(prog: str) -> argparse.ArgumentParser:
    cli = argparse.ArgumentParser(
        prog=prog,
        description="Measure what speculative decoding gains: an edit turn (the answer copies a function "
        "from a file in the prompt) and free text, on an mlxd with MLXD_SPECULATIVE=off, one with "
        "prompt-lookup and one with a draft model, taking turns at 1 and 4 streams, on models trained to say "
        "those answers; with the acceptance rate and the cost of one verification pass. Writes "
        "speculative.json and speculative.md.",
    )
    cli.add_argument(
        "--smoke", action="store_true", help="the tiny model, one repeat: checks the benchmark runs"
    )
    cli.add_argument("--repeats", type=int, help="batches of each arm per level [full: 5]")
    cli.add_argument("--out", type=Path, help="results folder [benchmarks/results/speculative-<timestamp>]")
    cli.add_argument("--models-dir", type=Path, help="where the trained models are cached")
    return cli


def main(argv: list[str] | None = None, prog: str = "python -m benchmarks.speculative") -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parser(prog).parse_args(argv)
    plan = PLANS["smoke" if args.smoke else "full"]
    plan = replace(plan, repeats=args.repeats or plan.repeats)
    out = args.out or Path("benchmarks/results") / datetime.now().strftime("speculative-%Y%m%d-%H%M%S")
    models_dir = args.models_dir or data_dir() / "bench-models"
    started = datetime.now(UTC)
    try:
        results = measure(plan, models_dir, out)
    except BenchError as error:
        print(f"{prog}: {error}", file=sys.stderr)
        return 1
    meta = {
        "started": started.isoformat(timespec="seconds"),
        "mode": plan.name,
        "command": " ".join([prog, *argv]),
        "machine": describe(),
        "num_draft_tokens": Settings().num_draft_tokens,
        "drafts": DRAFTS,
        "plan": asdict(plan),
        "seconds": round((datetime.now(UTC) - started).total_seconds(), 1),
    }
    written = report.write({"meta": meta} | results, out)
    print((out / "speculative.md").read_text())
    print("wrote " + ", ".join(str(path) for path in written))
    return 0


def measure(plan: Plan, models_dir: Path, out: Path) -> dict[str, Any]:
    """Per shape: its model (trained on first use), the cost ratio in this process, then both servers."""
    server_plan = replace(SUITE_PLANS["full"], concurrency=plan.streams)  # for MLXD_MAX_SEQUENCES
    sent, served, cost, parameters = [], {}, {}, {}
    with tqdm(total=steps(plan), desc="speculative", unit="run", file=sys.stderr, dynamic_ncols=True) as bar:
        for shape in plan.shapes:
            model, draft = model_for(shape, models_dir), model_for(DRAFTS[shape], models_dir)
            cost[shape] = cost_ratio(model, draft, EDIT, Settings().num_draft_tokens)
            parameters[shape] = _parameters(model)
            with ExitStack() as stack:
                started = {
                    arm: stack.enter_context(
                        servers.mlxd(model, "bench", server_plan, out / shape / arm, settings(arm, draft))
                    )
                    for arm in ARMS
                }
                mine = run(shape, {arm: server.endpoint for arm, server in started.items()}, plan, bar)
                for arm, server in started.items():
                    ids = (item.result.request_id or "" for item in mine if item.arm == arm)
                    served |= serverlog.read(server.log_path, ids)
            sent += mine
    return {"cells": report.figures(sent, served), "cost": cost, "parameters": parameters}


def _parameters(model: Path) -> float:
    import mlx_lm
    from mlx_lm.utils import get_total_parameters

    loaded, _ = mlx_lm.load(str(model))
    return float(get_total_parameters(loaded))
