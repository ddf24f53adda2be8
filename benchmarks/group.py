"""One model over a group of processes, measured: prefill and decode through one mlxd process against
`mlxd serve --ranks N` (tensor parallel, the ring backend on loopback), in the same run on the same model;
and the bytes the group exchanges per decoded token, measured on the loopback interface (Linux) and computed
from the model's shape. From those bytes, what a link between two Macs adds per token is computed (stated as
computed: no second Mac is measured here). `python -m benchmarks.group`, or `mlxd bench --group`; `--smoke`
checks it runs. Writes group.json and group.md.

On one machine every rank shares its cores and memory bandwidth with the others, so a group is slower than
one process here: the figures are the cost of the collectives and the lockstep, not a speedup. A group is for
a model that fits no single Mac.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks import servers
from benchmarks.client import BenchError, Endpoint, StreamResult
from benchmarks.machine import label
from benchmarks.models import SHAPES, ensure_model
from benchmarks.plan import PLANS
from benchmarks.prompts import Conversation
from benchmarks.report import fmt, run_meta, write_run
from daemon.config.settings import data_dir

PROMPT_WORDS = 600  # the prefill measurement's prompt
DECODE_TOKENS = 96
LOOPBACK = "/proc/net/dev"
# Two Macs linked by Thunderbolt 5, for the computed figure: its data rate, and the time one small
# collective takes end to end over MLX's two backends for it (JACCL over RDMA; the ring over TCP on the
# Thunderbolt bridge). These are assumptions, stated as such in the report.
LINK_BYTES_PER_S = 80e9 / 8
LATENCY_S = {"jaccl (RDMA)": 10e-6, "ring (TCP)": 100e-6}
# A model people split over two Macs, for the computed figure: Qwen3-Coder-480B-A35B's 62 layers of 6144.
LARGE = {"name": "Qwen3-Coder-480B-A35B", "layers": 62, "hidden": 6144, "bytes": 2}


def parser(prog: str) -> argparse.ArgumentParser:
    cli = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    cli.add_argument("--smoke", action="store_true", help="the tiny shape, one repeat: checks it runs")
    cli.add_argument("--ranks", type=int, default=2, help="processes in the group [2]")
    cli.add_argument("--repeats", type=int, default=3, help="of each measurement [3]")
    cli.add_argument("--out", type=Path, help="results folder [benchmarks/results/group-<timestamp>]")
    cli.add_argument("--models-dir", type=Path, help="where generated models are cached")
    # A probe's process: `--probe HIDDEN` times all-sums, `--probe-decode MODEL` mlx-lm's own decode.
    cli.add_argument("--probe", type=int, help=argparse.SUPPRESS)
    cli.add_argument("--probe-decode", type=Path, help=argparse.SUPPRESS)
    return cli


def main(argv: list[str] | None = None, prog: str = "python -m benchmarks.group") -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parser(prog).parse_args(argv)
    if args.probe is not None:
        return _probe(args.probe)
    if args.probe_decode is not None:
        return _probe_decode(args.probe_decode)
    shape = SHAPES["tiny" if args.smoke else "qwen3-split"]
    repeats = 1 if args.smoke else args.repeats
    out = args.out or Path("benchmarks/results") / datetime.now().strftime("group-%Y%m%d-%H%M%S")
    model = ensure_model(shape, "bf16", args.models_dir or data_dir() / "bench-models")
    started = datetime.now(UTC)
    try:
        rows = [measure(model, ranks, repeats, out / f"ranks-{ranks}") for ranks in (1, args.ranks)]
        collective = collective_seconds(args.ranks, shape.config["hidden_size"])
        raw = {ranks: raw_decode_tps(model, ranks) for ranks in (1, args.ranks)}
    except BenchError as error:
        print(f"{prog}: {error}", file=sys.stderr)
        return 1
    config = shape.config
    results = {
        "meta": run_meta(prog, argv, started, model=f"{shape.name} bf16 ({shape.about})"),
        "rows": rows,
        "collective_s": collective,
        "raw_decode_tps": raw,
        "computed": computed(config["num_hidden_layers"], config["hidden_size"], 2, args.ranks),
        "large": computed(LARGE["layers"], LARGE["hidden"], LARGE["bytes"], 2),
    }
    written = write_run(out, "group", results, markdown(results))
    print((out / "group.md").read_text())
    print("wrote " + ", ".join(str(path) for path in written))
    return 0


def measure(model: Path, ranks: int, repeats: int, home: Path) -> dict[str, Any]:
    """Prefill and decode rates through one server (`ranks` processes), medians of `repeats`, and the bytes
    the loopback carried per decoded token: (a long answer's bytes - a one-token answer's) / the difference
    in tokens, which leaves out the request and its HTTP framing."""
    settings = {"MLXD_RANKS": str(ranks)} if ranks > 1 else {}
    settings["MLXD_PROMPT_CACHE_BYTES"] = "0"  # every prefill computed
    settings["MLXD_SPECULATIVE"] = "off"  # a random model repeats itself: prompt lookup would flatter both
    with (
        servers.mlxd(model, "m", PLANS["full"], home, settings) as server,
        server.endpoint.client() as client,
    ):
        endpoint = server.endpoint
        _ask(endpoint, client, conversation(-1, 8), 4)  # loaded and warm
        prefill = [_ask(endpoint, client, conversation(seed, PROMPT_WORDS), 1) for seed in range(repeats)]
        decode = [
            _ask(endpoint, client, conversation(100 + seed, 8), DECODE_TOKENS) for seed in range(repeats)
        ]
        per_token = []
        for seed in range(repeats):
            short, sent_short = _counted(endpoint, client, conversation(200 + seed, 8), 1)
            long, sent_long = _counted(endpoint, client, conversation(200 + seed, 8), DECODE_TOKENS)
            if sent_short is not None and sent_long is not None and long.output_tokens > short.output_tokens:
                per_token.append((sent_long - sent_short) / (long.output_tokens - short.output_tokens))
    return {
        "ranks": ranks,
        "prompt_tokens": prefill[0].prompt_tokens,
        "prefill_tps": statistics.median(r.prefill_tps for r in prefill),
        "decode_tps": statistics.median(r.decode_tps or 0.0 for r in decode),
        "loopback_bytes_per_token": statistics.median(per_token) if per_token else None,
    }


def collective_seconds(ranks: int, hidden: int) -> float:
    """What one all-sum of a token's activations (`hidden` bf16 values) takes here between `ranks`
    processes (the ring backend on loopback), the median of many: what a group adds per collective."""
    return _probed(ranks, ["--probe", str(hidden)])


def raw_decode_tps(model: Path, ranks: int) -> float:
    """mlx-lm's own `stream_generate` on the model (sharded with `model.shard` over `ranks` processes, as
    `mlx_lm.generate` runs under `mlx.launch`): the engine's rate without mlxd's batch or lockstep."""
    return _probed(ranks, ["--probe-decode", str(model)])


def _probed(ranks: int, probe: list[str]) -> float:
    from daemon.cli.launch import mlx_launch, ring_on_loopback

    command = [sys.executable, "-m", "benchmarks.group", *probe]
    if ranks > 1:
        command = [mlx_launch(), *ring_on_loopback(ranks), "--python", sys.executable, "--", *command[1:]]
    run = subprocess.run(command, capture_output=True, text=True, timeout=600)
    for line in run.stdout.splitlines():
        if line.startswith("probe "):
            return float(line.split()[1])
    raise BenchError(f"the probe {probe[0]} printed no figure: {run.stdout[-500:]} {run.stderr[-500:]}")


def _probe_decode(model: Path) -> int:
    import mlx.core as mx
    from mlx_lm import load, stream_generate

    group = mx.distributed.init()
    loaded, tokenizer = load(str(model), lazy=True)
    if group.size() > 1:
        loaded.shard(group)
    mx.eval(loaded.parameters())
    prompt = tokenizer.encode(conversation(0, 8).messages[0]["content"])
    list(stream_generate(loaded, tokenizer, prompt, max_tokens=8))  # warm
    *_, last = stream_generate(loaded, tokenizer, prompt, max_tokens=DECODE_TOKENS)
    if group.rank() == 0:
        print(f"probe {last.generation_tps}")
    return 0


def _probe(hidden: int) -> int:
    """One rank of `collective_seconds`' group."""
    import mlx.core as mx

    group = mx.distributed.init(strict=True)
    value = mx.ones((1, 1, hidden), dtype=mx.bfloat16)
    times = []
    for _ in range(300):
        started = time.perf_counter()
        mx.eval(mx.distributed.all_sum(value, group=group))
        times.append(time.perf_counter() - started)
    if group.rank() == 0:
        print(f"probe {statistics.median(times[50:])}")
    return 0


def computed(layers: int, hidden: int, width: int, ranks: int) -> dict[str, Any]:
    """What tensor parallelism exchanges per decoded token: mlx-lm's shard sums two activations a layer (the
    attention's output and the MLP's), each `hidden` values of `width` bytes; a ring all-sum over `ranks`
    sends 2 (ranks - 1) / ranks of it from each rank. And what that costs a token over Thunderbolt 5."""
    collectives = 2 * layers
    per_rank = collectives * hidden * width * 2 * (ranks - 1) / ranks
    return {
        "collectives_per_token": collectives,
        "bytes_per_token_per_rank": per_rank,
        "bytes_per_token_all_ranks": per_rank * ranks,
        "thunderbolt_ms_per_token": {
            name: 1000 * (collectives * latency + per_rank / LINK_BYTES_PER_S)
            for name, latency in LATENCY_S.items()
        },
    }


def conversation(seed: int, words: int) -> Conversation:
    text = " ".join(f"word{(seed * 7919 + i) % 5000}" for i in range(words))
    return Conversation([{"role": "user", "content": f"Session {seed}. {text}"}], [])


def _ask(endpoint: Endpoint, client: Any, conversation: Conversation, max_tokens: int) -> StreamResult:
    return endpoint.stream(client, conversation, max_tokens=max_tokens)


def _counted(
    endpoint: Endpoint, client: Any, talk: Conversation, max_tokens: int
) -> tuple[StreamResult, int | None]:
    before = _loopback_bytes()
    result = _ask(endpoint, client, talk, max_tokens)
    after = _loopback_bytes()
    return result, after - before if before is not None and after is not None else None


def _loopback_bytes() -> int | None:
    """Bytes the loopback interface has sent (Linux's counters; None where there are none)."""
    try:
        lines = Path(LOOPBACK).read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        name, _, fields = line.partition(":")
        if name.strip() == "lo":
            return int(fields.split()[8])  # transmit bytes
    return None


def markdown(results: dict[str, Any]) -> str:
    meta, rows = results["meta"], results["rows"]
    one, group = rows
    lines = [
        f"# One model over {group['ranks']} processes (ring backend, loopback): {meta['model']}",
        f"on {label(meta['machine'])}",
        "",
        "| processes | prefill tok/s | decode tok/s | loopback bytes per decoded token |",
        "|---|---|---|---|",
    ]
    for row in rows:
        sent = row["loopback_bytes_per_token"]
        lines.append(
            f"| {row['ranks']} | {fmt(row['prefill_tps'])} | {fmt(row['decode_tps'])} "
            f"| {f'{sent:,.0f}' if sent is not None else '-'} |"
        )
    lines += [
        "",
        f"{group['ranks']} processes against 1: prefill {group['prefill_tps'] / one['prefill_tps']:.2f}x, "
        f"decode {group['decode_tps'] / one['decode_tps']:.2f}x (the collectives, on one machine).",
        f"One all-sum of a token's activations between them takes {results['collective_s'] * 1e6:,.0f} µs "
        "here (the ring backend on loopback, the processes sharing this machine's cores).",
        f"mlx-lm's own stream_generate, sharded the same way: {_raw_line(results['raw_decode_tps'])}.",
        "",
        _computed_line("this model", results["computed"], group["ranks"]),
        _computed_line(f"{LARGE['name']} (bf16 activations) over 2 Macs", results["large"], 2),
        "",
        "Computed, not measured: Thunderbolt 5 at 80 Gbit/s, one small collective taking "
        + ", ".join(f"{s * 1e6:.0f} µs over {name}" for name, s in LATENCY_S.items())
        + ".",
    ]
    return "\n".join(lines) + "\n"


def _raw_line(raw: dict[Any, float]) -> str:
    (one, alone), (ranks, grouped) = sorted((int(k), v) for k, v in raw.items())
    return f"{alone:.1f} tok/s in {one} process, {grouped:.1f} in {ranks} ({grouped / alone:.2f}x)"


def _computed_line(what: str, figures: dict[str, Any], ranks: int) -> str:
    links = ", ".join(f"{ms:.2f} ms over {name}" for name, ms in figures["thunderbolt_ms_per_token"].items())
    return (
        f"- {what}: {figures['collectives_per_token']} all-sums a token, "
        f"{figures['bytes_per_token_per_rank']:,.0f} bytes sent by each of {ranks} ranks; "
        f"over Thunderbolt that adds {links} to each token."
    )


if __name__ == "__main__":
    sys.exit(main())
