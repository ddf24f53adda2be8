"""The soak's command line: its options, then a run against the target they name, soak.json and the
summary; `python -m benchmarks --soak` hands its arguments to `main` too."""

from __future__ import annotations

import argparse
import sys
from datetime import datetime
from pathlib import Path

from benchmarks.client import BenchError
from benchmarks.models import DTYPES, SHAPES
from benchmarks.soak import report
from benchmarks.soak.options import Options
from benchmarks.soak.runner import run
from benchmarks.soak.targets import target_for


def parser(prog: str) -> argparse.ArgumentParser:
    cli = argparse.ArgumentParser(
        prog=prog,
        description="Soak mlxd: concurrent clients mixing short and long, streamed and non-streamed, "
        "cancelled, tool and bad requests for a fixed time; then check for failures, leaked sequences and "
        "memory growth. Writes soak.json; exits 1 if any check fails.",
    )
    defaults = Options()
    cli.add_argument(
        "--duration", type=_seconds, default="30m", help="how long the traffic runs: 90s, 30m, 1h [30m]"
    )
    cli.add_argument("--clients", type=int, default=defaults.clients, help="concurrent clients [8]")
    cli.add_argument(
        "--max-tokens", type=int, default=defaults.max_tokens, help="per generation, at most [64]"
    )
    cli.add_argument(
        "--long-words", type=int, default=defaults.long_words, help="a long prompt's words [300]"
    )
    cli.add_argument("--sample-every", type=float, default=defaults.sample_every_s, help="seconds [5]")
    cli.add_argument("--warmup", type=float, default=defaults.warmup_fraction, help="of the time [0.2]")
    cli.add_argument("--rss-tolerance", type=float, default=defaults.rss_tolerance, help="[0.10]")
    cli.add_argument("--max-slope", type=float, default=defaults.max_slope_mib_per_min, help="MiB/min [1.0]")
    cli.add_argument("--request-timeout", type=float, default=defaults.request_timeout_s, help="s [120]")
    cli.add_argument("--seed", type=int, default=defaults.seed)
    cli.add_argument("--out", type=Path, help="results folder [default: benchmarks/results/soak-<timestamp>]")
    started = cli.add_argument_group("the server the soak starts")
    started.add_argument("--model", type=Path, help="a local mlx-lm model folder instead of a generated one")
    started.add_argument(
        "--shape", choices=sorted(SHAPES), help="the generated model [default: as mlxd bench's]"
    )
    started.add_argument("--dtype", choices=DTYPES)
    started.add_argument("--models-dir", type=Path, help="where generated models are cached")
    started.add_argument(
        "--max-sequences", type=int, default=4, help="the server's; below --clients, so requests queue [4]"
    )
    running = cli.add_argument_group("a server already running (on this machine)")
    running.add_argument("--url", help="its loopback URL, e.g. http://127.0.0.1:8484")
    running.add_argument("--token", help="its token")
    running.add_argument("--model-name", help="the model to ask for [default: the first it lists]")
    running.add_argument("--pid", type=int, help="its process, for memory [default: the port's listener]")
    return cli


def main(argv: list[str] | None = None, prog: str = "python -m benchmarks.soak") -> int:
    args = parser(prog).parse_args(argv)
    options = Options(
        clients=args.clients,
        duration_s=args.duration,
        max_tokens=args.max_tokens,
        long_words=args.long_words,
        request_timeout_s=args.request_timeout,
        sample_every_s=args.sample_every,
        warmup_fraction=args.warmup,
        rss_tolerance=args.rss_tolerance,
        max_slope_mib_per_min=args.max_slope,
        seed=args.seed,
    )
    out = args.out or Path("benchmarks/results") / datetime.now().strftime("soak-%Y%m%d-%H%M%S")
    try:
        with target_for(args, out) as target:
            results = run(target, options)
    except BenchError as error:
        print(f"{prog}: {error}", file=sys.stderr)
        return 1
    written = report.write(results, out)
    print(report.render(results))
    print(f"wrote {written}")
    return 0 if results["verdict"]["ok"] else 1


def _seconds(duration: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600}
    try:
        if duration[-1:] in units:
            return float(duration[:-1]) * units[duration[-1]]
        return float(duration)
    except ValueError:
        raise argparse.ArgumentTypeError("give seconds, or a number with s, m or h: 90s, 30m, 1h") from None
