"""The engine's own speed through mlxd, measured interleaved: raw mlx-lm (`stream_generate` for one stream,
`BatchGenerator` for several) in this process, then the same work through mlxd over HTTP, then raw again,
`--repeats` times; each ratio is taken against the mean of the raw runs on either side of it, so this
machine's drift between runs falls on both. Two shapes in one run: qwen3-mini (the suite's model on MLX's
CPU backend) and tiny (a step so short that per-token overhead shows, as a small model's does on a Mac's
GPU). `python -m benchmarks.one_stream`, or `mlxd bench --one-stream`; `--smoke` checks it runs. Writes
one_stream.json and one_stream.md.

Decode rates are (tokens - 1) / (last token - first token), on the client's clock for HTTP; speculation
is off in mlxd (a random model repeats itself, which prompt lookup would exploit) and both sides decode
greedily to `max_tokens` on the same prompts.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

from benchmarks import servers
from benchmarks.client import BenchError, StreamResult
from benchmarks.machine import label
from benchmarks.models import SHAPES, ensure_model
from benchmarks.plan import PLANS
from benchmarks.prompts import Conversation
from benchmarks.raw import RawEngine
from benchmarks.report import run_meta, write_run
from benchmarks.workloads import concurrently
from daemon.config.settings import data_dir

TARGET = 0.97  # the bar for one stream
STREAMS = 4  # the batched check: throughput here should match BatchGenerator's


def parser(prog: str) -> argparse.ArgumentParser:
    cli = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    cli.add_argument("--smoke", action="store_true", help="the tiny shape, short answers, one repeat")
    cli.add_argument("--repeats", type=int, default=5, help="raw/HTTP/raw rounds per shape [5]")
    cli.add_argument("--max-tokens", type=int, default=256, help="tokens per answer [256]")
    cli.add_argument("--out", type=Path, help="results folder [benchmarks/results/one-stream-<timestamp>]")
    cli.add_argument("--models-dir", type=Path, help="where generated models are cached")
    return cli


def main(argv: list[str] | None = None, prog: str = "python -m benchmarks.one_stream") -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parser(prog).parse_args(argv)
    shapes = ["tiny"] if args.smoke else ["qwen3-mini", "tiny"]
    repeats, max_tokens = (1, 16) if args.smoke else (args.repeats, args.max_tokens)
    out = args.out or Path("benchmarks/results") / datetime.now().strftime("one-stream-%Y%m%d-%H%M%S")
    started = datetime.now(UTC)
    try:
        rows = [
            measure(
                ensure_model(SHAPES[name], "bf16", args.models_dir or data_dir() / "bench-models"),
                name,
                repeats,
                max_tokens,
                out / name,
            )
            for name in shapes
        ]
    except BenchError as error:
        print(f"{prog}: {error}", file=sys.stderr)
        return 1
    results = {
        "meta": run_meta(prog, argv, started, max_tokens=max_tokens),
        "rows": rows,
    }
    written = write_run(out, "one_stream", results, markdown(results))
    print((out / "one_stream.md").read_text())
    print("wrote " + ", ".join(str(path) for path in written))
    return 0


def measure(model: Path, shape: str, repeats: int, max_tokens: int, home: Path) -> dict[str, Any]:
    """`repeats` rounds of raw, HTTP, raw, at one stream and at `STREAMS`: the rates and their ratios."""
    raw = RawEngine(model)
    talks = [conversation(seed) for seed in range(STREAMS)]
    prompts = [raw.builder.tokens(talk) for talk in talks]
    step = PLANS["full"].prefill_step_size
    settings = {"MLXD_SPECULATIVE": "off"}
    rounds: dict[str, list[dict[str, float]]] = {"one": [], "batch": []}
    try:
        with (
            servers.mlxd(model, "m", PLANS["full"], home, settings) as server,
            server.endpoint.client() as client,
        ):
            endpoint = server.endpoint

            def raw_one() -> float:
                return _decode_rate(raw.one(prompts[0], max_tokens, step))

            def http_one() -> float:
                return _decode_rate(endpoint.stream(client, talks[0], max_tokens))

            def raw_batch() -> float:
                return _throughput(raw.batch(prompts, max_tokens, PLANS["full"]))

            def http_batch() -> float:
                ask = partial(endpoint.stream, max_tokens=max_tokens)
                return _throughput(concurrently([(endpoint, partial(ask, conversation=t)) for t in talks]))

            for warm in (raw_one, http_one, raw_batch, http_batch):
                warm()
            for _ in range(repeats):
                for kind, (raw_run, http_run) in {
                    "one": (raw_one, http_one),
                    "batch": (raw_batch, http_batch),
                }.items():
                    before, through, after = raw_run(), http_run(), raw_run()
                    mean = (before + after) / 2
                    rounds[kind].append({"raw": mean, "mlxd": through, "ratio": through / mean})
    finally:
        raw.close()
    return {"shape": shape, "about": SHAPES[shape].about, **{k: _summary(v) for k, v in rounds.items()}}


def conversation(seed: int) -> Conversation:
    return Conversation([{"role": "user", "content": f"Story {seed}: write a long story about a cat."}], [])


def _decode_rate(result: StreamResult) -> float:
    if result.output_tokens < 2 or result.done <= result.first_token:
        raise BenchError(f"a stream gave {result.output_tokens} tokens: too few to time its decode")
    return (result.output_tokens - 1) / (result.done - result.first_token)


def _throughput(results: list[StreamResult]) -> float:
    """Tokens out of every stream over the wall time from the first request sent to the last token."""
    start = min(result.sent for result in results)
    return sum(result.output_tokens for result in results) / (max(result.done for result in results) - start)


def _summary(rounds: list[dict[str, float]]) -> dict[str, Any]:
    ratios = [r["ratio"] for r in rounds]
    return {
        "raw_tps": statistics.median(r["raw"] for r in rounds),
        "mlxd_tps": statistics.median(r["mlxd"] for r in rounds),
        "ratio": statistics.median(ratios),
        "ratios": ratios,
    }


def markdown(results: dict[str, Any]) -> str:
    meta = results["meta"]
    lines = [
        f"# mlxd against raw mlx-lm, interleaved ({meta['max_tokens']} tokens per answer)",
        f"on {label(meta['machine'])}",
        "",
        f"| shape | streams | raw tok/s | mlxd tok/s | mlxd / raw (median) | each round | target {TARGET}x |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in results["rows"]:
        for kind, streams in (("one", 1), ("batch", STREAMS)):
            figure = row[kind]
            each = ", ".join(f"{ratio:.2f}" for ratio in figure["ratios"])
            met = "-" if kind == "batch" else "met" if figure["ratio"] >= TARGET else "not met"
            lines.append(
                f"| {row['shape']} | {streams} | {figure['raw_tps']:.0f} | {figure['mlxd_tps']:.0f} "
                f"| {figure['ratio']:.3f}x | {each} | {met} |"
            )
    lines += [
        "",
        "One stream: decode rate. Raw is mlx-lm's stream_generate in the benchmark's process; mlxd is one "
        "streamed Messages API request on 127.0.0.1, timed by the client.",
        f"{STREAMS} streams: tokens out of all streams over the wall time, against mlx-lm's BatchGenerator "
        "given the same prompts at once.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
