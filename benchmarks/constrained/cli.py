"""The benchmark's command line: `python -m benchmarks.constrained [--smoke] ...`; `python -m benchmarks
--constrained` (and so `mlxd bench --constrained`) hands its arguments to `main`."""

from __future__ import annotations

import argparse
import json
import sys
from contextlib import ExitStack
from dataclasses import asdict, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tqdm import tqdm

from benchmarks import serverlog, servers
from benchmarks.cli import resolve_model
from benchmarks.client import BenchError
from benchmarks.constrained import report
from benchmarks.constrained.figures import figures
from benchmarks.constrained.workload import ARMS, PLANS, SETTINGS, Plan, body, run
from benchmarks.machine import describe
from benchmarks.models import DTYPES, SHAPES
from benchmarks.plan import PLANS as SUITE_PLANS


def parser(prog: str) -> argparse.ArgumentParser:
    cli = argparse.ArgumentParser(
        prog=prog,
        description="Measure what grammar-constrained decoding costs: a forced tool call with Claude Code's "
        "tools on an mlxd that holds it to its grammar against the same request on one that does not "
        "(MLXD_CONSTRAINED_DECODING=false), taking turns at 1 and 4 streams, with the grammar's compile and "
        "per-token mask times. Writes constrained.json and constrained.md.",
    )
    cli.add_argument("--smoke", action="store_true", help="tiny model and sizes: checks the benchmark runs")
    cli.add_argument("--model", type=Path, help="a local mlx-lm model folder instead of a generated one")
    cli.add_argument("--shape", choices=sorted(SHAPES), help="the generated model's shape [as mlxd bench's]")
    cli.add_argument("--dtype", choices=DTYPES, help="[as mlxd bench's]")
    cli.add_argument("--repeats", type=int, help="batches of each arm per level [full: 6]")
    cli.add_argument("--max-tokens", type=int, help="output tokens per request [full: 96]")
    cli.add_argument(
        "--scale", type=float, help="of the captured request's text, 1 is Claude Code's size [full: 1]"
    )
    cli.add_argument("--out", type=Path, help="results folder [benchmarks/results/constrained-<timestamp>]")
    cli.add_argument("--models-dir", type=Path, help="where generated models are cached")
    return cli


def main(argv: list[str] | None = None, prog: str = "python -m benchmarks.constrained") -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parser(prog).parse_args(argv)
    plan = PLANS["smoke" if args.smoke else "full"]
    plan = replace(
        plan,
        repeats=args.repeats or plan.repeats,
        max_tokens=args.max_tokens or plan.max_tokens,
        scale=args.scale or plan.scale,
    )
    out = args.out or Path("benchmarks/results") / datetime.now().strftime("constrained-%Y%m%d-%H%M%S")
    started = datetime.now(UTC)
    try:
        model, model_label = resolve_model(args)
        results = measure(model, plan, out)
    except BenchError as error:
        print(f"{prog}: {error}", file=sys.stderr)
        return 1
    meta = {
        "started": started.isoformat(timespec="seconds"),
        "mode": plan.name,
        "command": " ".join([prog, *argv]),
        "machine": describe(),
        "model": model_label | {"path": str(model), "vocab_size": _vocab_size(model)},
        "tools": len(body("", plan, 1)["tools"]),
        "servers": SETTINGS,
        "plan": asdict(plan),
        "seconds": round((datetime.now(UTC) - started).total_seconds(), 1),
    }
    results = {"meta": meta} | results
    written = report.write(results, out)
    print((out / "constrained.md").read_text())
    print("wrote " + ", ".join(str(path) for path in written))
    return 0


def measure(model: Path, plan: Plan, out: Path) -> dict[str, Any]:
    """Both servers up for the whole run, each read for its own figures from its log at the end."""
    server_plan = replace(SUITE_PLANS["full"], concurrency=plan.streams)  # for MLXD_MAX_SEQUENCES
    with ExitStack() as stack:
        started = {
            arm: stack.enter_context(servers.mlxd(model, "bench", server_plan, out / arm, SETTINGS[arm]))
            for arm in ARMS
        }
        bar = stack.enter_context(
            tqdm(total=plan.steps, desc="constrained", unit="run", file=sys.stderr, dynamic_ncols=True)
        )
        sent = run({arm: server.endpoint for arm, server in started.items()}, plan, bar)
        served = {}
        for arm, server in started.items():
            ids = (item.result.request_id or "" for item in sent if item.arm == arm)
            served |= serverlog.read(server.log_path, ids)
    return figures(sent, served)


def _vocab_size(model: Path) -> int:
    return json.loads((model / "config.json").read_text())["vocab_size"]
