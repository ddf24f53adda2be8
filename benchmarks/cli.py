"""The suite's command line: `python -m benchmarks [--quick] ...`; `mlxd bench` calls `main` with its
arguments."""

from __future__ import annotations

import argparse
import importlib
import sys
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from benchmarks.client import BenchError, Endpoint
from benchmarks.models import DTYPES, SHAPES, default_shape, ensure_model
from benchmarks.plan import PLANS, Plan


def parser(prog: str) -> argparse.ArgumentParser:
    cli = argparse.ArgumentParser(
        prog=prog,
        description="Measure mlxd against the raw MLX engine and peer servers on the same model and prompts: "
        "single-stream latency and decode, concurrency, a Claude Code-shaped session, prefill, the memory "
        "bandwidth bound and memory. Writes results.json, results.md and PNG plots.",
    )
    size = cli.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="reduced sizes: a few minutes on a laptop CPU")
    size.add_argument("--smoke", action="store_true", help="tiny model, one repeat: checks the suite runs")
    cli.add_argument("--model", type=Path, help="a local mlx-lm model folder instead of a generated one")
    cli.add_argument(
        "--shape",
        choices=sorted(SHAPES),
        help="the generated model's shape [default: qwen3-0.6b on a GPU, qwen3-mini on MLX's CPU backend]",
    )
    cli.add_argument("--dtype", choices=DTYPES, help="[default: 4bit on a GPU, bf16 on MLX's CPU backend]")
    cli.add_argument("--prefix-tokens", type=int, help="the session's system + tools size [default: 12000]")
    cli.add_argument("--mlx-lm-server", action="store_true", help="also measure mlx-lm's own server")
    cli.add_argument(
        "--peer", action="append", default=[], metavar="URL", help="also measure this Anthropic-API server"
    )
    cli.add_argument("--peer-model", help="the model id to ask peers for [default: the first they list]")
    cli.add_argument("--peer-token", help="the token peers require (sent as x-api-key and Bearer)")
    cli.add_argument("--out", type=Path, help="results folder [default: benchmarks/results/<timestamp>]")
    cli.add_argument(
        "--models-dir",
        type=Path,
        help="where generated models are cached [default: <mlxd data dir>/bench-models]",
    )
    cli.add_argument("--soak", action="store_true", help="run the soak instead (--soak --help: its options)")
    cli.add_argument(
        "--constrained",
        action="store_true",
        help="run the constrained-decoding benchmark instead (--constrained --help: its options)",
    )
    cli.add_argument(
        "--speculative",
        action="store_true",
        help="run the speculative-decoding benchmark instead (--speculative --help: its options)",
    )
    cli.add_argument(
        "--cache-tiers",
        action="store_true",
        help="time to first token from a cold, RAM and disk prefix (--cache-tiers --help: its options)",
    )
    cli.add_argument(
        "--vision",
        action="store_true",
        help="time to first token with a screenshot, cold and cached (--vision --help: its options)",
    )
    cli.add_argument(
        "--one-stream",
        action="store_true",
        help="mlxd against raw mlx-lm, interleaved, at 1 and 4 streams (--one-stream --help: its options)",
    )
    cli.add_argument(
        "--group",
        action="store_true",
        help="one process against a group of them, and the bytes they exchange (--group --help: its options)",
    )
    return cli


def main(argv: list[str] | None = None, prog: str = "python -m benchmarks") -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--soak" in argv:  # a run of its own, with options of its own
        from benchmarks import soak

        return soak.main([arg for arg in argv if arg != "--soak"], prog=f"{prog} --soak")
    if "--cache-tiers" in argv:
        from benchmarks import cache_tiers

        return cache_tiers.main([arg for arg in argv if arg != "--cache-tiers"], prog=f"{prog} --cache-tiers")
    if "--vision" in argv:
        from benchmarks import vision

        return vision.main([arg for arg in argv if arg != "--vision"], prog=f"{prog} --vision")
    if "--one-stream" in argv:
        from benchmarks import one_stream

        return one_stream.main([arg for arg in argv if arg != "--one-stream"], prog=f"{prog} --one-stream")
    if "--group" in argv:
        from benchmarks import group

        return group.main([arg for arg in argv if arg != "--group"], prog=f"{prog} --group")
    for flag in ("--constrained", "--speculative"):
        if flag in argv:
            return _checkout_benchmark(flag, [arg for arg in argv if arg != flag], prog)
    args = parser(prog).parse_args(argv)
    plan = _plan(args)
    out = args.out or Path("benchmarks/results") / datetime.now().strftime("%Y%m%d-%H%M%S")
    try:  # here, so that --help answers without loading matplotlib
        from benchmarks import report, suite
    except ModuleNotFoundError as error:
        print(f"{prog}: {error}: install the suite's extra, pip install -e '.[bench]'", file=sys.stderr)
        return 2

    try:
        model, model_label = resolve_model(args)
        options = suite.Options(
            plan=plan,
            model=model,
            model_label=model_label,
            out=out,
            command=" ".join([prog, *_redacted(argv)]),
            mlx_lm_server=args.mlx_lm_server,
            peers=[_peer(url, args) for url in args.peer],
        )
        written = report.write(suite.run(options), out)
    except BenchError as error:
        print(f"{prog}: {error}", file=sys.stderr)
        return 1
    print((out / "results.md").read_text())
    print("wrote " + ", ".join(str(path) for path in written))
    return 0


def _plan(args: argparse.Namespace) -> Plan:
    plan = PLANS["smoke" if args.smoke else "quick" if args.quick else "full"]
    return replace(plan, session_prefix_tokens=args.prefix_tokens) if args.prefix_tokens else plan


def resolve_model(args: argparse.Namespace) -> tuple[Path, dict[str, Any]]:
    """The model that `--model`, `--smoke`, `--shape` and `--dtype` name (generated on first use), with its
    label."""
    if args.model:
        if not args.model.is_dir():
            raise BenchError(f"--model {args.model} is not a folder; give a local mlx-lm model folder")
        return args.model, {"shape": args.model.name, "about": "given with --model"}
    shape, dtype = ("tiny", "bf16") if args.smoke else default_shape()
    if args.shape and args.shape != shape and shape == "qwen3-mini":
        print(
            f"note: {args.shape} on MLX's CPU backend runs for hours; see models.default_shape",
            file=sys.stderr,
        )
    shape, dtype = args.shape or shape, args.dtype or dtype
    print(f"model: {shape} {dtype} ({SHAPES[shape].about})", file=sys.stderr)
    path = ensure_model(SHAPES[shape], dtype, args.models_dir or _data_dir() / "bench-models")
    return path, {"shape": shape, "dtype": dtype, "about": SHAPES[shape].about}


def _data_dir() -> Path:
    from daemon.config.settings import data_dir

    return data_dir()


def _peer(url: str, args: argparse.Namespace) -> Endpoint:
    url = url.rstrip("/")
    name = f"peer {urlsplit(url).netloc}"
    model = args.peer_model or _first_model(url, args.peer_token)
    return Endpoint(name, url, model, token=args.peer_token)


def _first_model(url: str, token: str | None) -> str:
    headers = {"x-api-key": token, "authorization": f"Bearer {token}"} if token else {}
    try:
        response = httpx.get(f"{url}/v1/models", headers=headers, timeout=30)
        response.raise_for_status()
        return response.json()["data"][0]["id"]
    except (httpx.HTTPError, KeyError, IndexError, ValueError) as error:
        raise BenchError(f"cannot list the models of peer {url} ({error}); pass --peer-model") from error


def _redacted(argv: list[str]) -> list[str]:
    """The arguments as recorded in the results, without the peer token."""
    hidden = ["***" if index and argv[index - 1] == "--peer-token" else arg for index, arg in enumerate(argv)]
    return ["--peer-token=***" if arg.startswith("--peer-token=") else arg for arg in hidden]


def _checkout_benchmark(flag: str, argv: list[str], prog: str) -> int:
    """A benchmark that runs on the tests' parts (Claude Code's captured request, the trainer)."""
    name = flag.removeprefix("--")
    try:
        cli = importlib.import_module(f"benchmarks.{name}.cli")
    except ModuleNotFoundError as error:
        print(
            f"{prog}: {error}: {flag} needs the suite's extra and a checkout of mlxd (tests/)",
            file=sys.stderr,
        )
        return 2
    return cli.main(argv, prog=f"{prog} {flag}")
