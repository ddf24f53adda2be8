"""One run of the suite: the raw engine first, then each server in turn on the same prompts, then the
physical bound; returns everything `report` writes."""

from __future__ import annotations

import secrets
import sys
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tqdm import tqdm

from benchmarks import servers
from benchmarks.client import Endpoint
from benchmarks.machine import RssMonitor, describe, memory_bandwidth
from benchmarks.plan import Plan
from benchmarks.raw import RawEngine, measure_raw, raw_steps
from benchmarks.stats import summary
from benchmarks.workloads import Workset, measure

SECTIONS = ("single_stream", "concurrency", "session", "prefill")


@dataclass
class Options:
    plan: Plan
    model: Path
    model_label: dict[str, Any]  # shape, dtype and what they are, or the user's path
    out: Path
    command: str
    mlx_lm_server: bool = False
    peers: list[Endpoint] = field(default_factory=list)


def run(options: Options) -> dict[str, Any]:
    started = datetime.now(UTC)
    results: dict[str, Any] = {
        "meta": _meta(options, started),
        **{section: {} for section in SECTIONS},
        "memory": {},
    }
    bandwidth = memory_bandwidth()
    engine = RawEngine(options.model)
    results["meta"]["model"] = options.model_label | {
        "path": str(options.model),
        "parameters": engine.parameters,
        "weight_bytes": engine.weight_bytes,
    }
    _measure_all(results, options, engine)
    results["physical_bound"] = physical_bound(bandwidth, engine.weight_bytes, results["single_stream"])
    results["meta"]["seconds"] = round((datetime.now(UTC) - started).total_seconds(), 1)
    return results


def _meta(options: Options, started: datetime) -> dict[str, Any]:
    return {
        "started": started.isoformat(timespec="seconds"),
        "mode": options.plan.name,
        "reduced": options.plan.reduced,
        "command": options.command,
        "machine": describe(),
        "plan": asdict(options.plan),
    }


def _measure_all(results: dict[str, Any], options: Options, engine: RawEngine) -> None:
    """The raw engine, then mlxd, then the peers, one at a time so that none competes for the machine."""
    plan = options.plan
    work = Workset.make(engine.builder, plan, secrets.token_hex(3))
    peers = int(options.mlx_lm_server) + len(options.peers)
    total = raw_steps(work) + work.http_steps(plan, plan.session_repeats)
    total += peers * work.http_steps(plan, plan.peer_session_repeats)
    home = options.out / "servers"
    with tqdm(total=total, desc="raw engine", unit="run", file=sys.stderr, dynamic_ncols=True) as progress:
        _record(results, "raw", measure_raw(engine, work, plan, progress))
        engine.close()
        progress.set_description("mlxd")
        # Against engines that decode one token per step: a random model's output loops, which prompt
        # lookup would copy. `--speculative` measures speculation on output that copies its prompt.
        with servers.mlxd(options.model, "bench", plan, home, {"MLXD_SPECULATIVE": "off"}) as server:
            _measure_server(results, server, work, plan, plan.session_repeats, progress)
        if options.mlx_lm_server:
            progress.set_description("mlx_lm.server")
            with servers.mlx_lm_server(options.model, plan, home) as server:
                _measure_server(results, server, work, plan, plan.peer_session_repeats, progress)
        for peer in options.peers:
            progress.set_description(peer.name)
            _record(results, peer.name, measure(peer, work, plan, plan.peer_session_repeats, progress))


def _measure_server(
    results: dict[str, Any],
    server: servers.ServerProcess,
    work: Workset,
    plan: Plan,
    session_repeats: int,
    progress: tqdm,
) -> None:
    """The HTTP workloads, with the process's memory: idle (model loaded, nothing asked yet), peak over
    the runs, and at the end (prompt caches filled)."""
    with RssMonitor(server.process.pid) as rss:
        idle = rss.now()
        _record(
            results, server.endpoint.name, measure(server.endpoint, work, plan, session_repeats, progress)
        )
        results["memory"][server.endpoint.name] = {
            "idle_bytes": idle,
            "peak_bytes": rss.peak,
            "end_bytes": rss.now(),
            "samples": summary(rss.samples),
        }


def _record(results: dict[str, Any], target: str, measured: dict[str, Any]) -> None:
    for section, figures in measured.items():
        results[section][target] = figures


def physical_bound(bandwidth: dict[str, Any], weight_bytes: int, single: dict[str, Any]) -> dict[str, Any]:
    """A dense model reads every weight once per decoded token, so bandwidth / weight bytes is the most
    tokens per second one stream can decode; each target's single-stream decode rate as a share of it."""
    bound = bandwidth["gb_per_s"] * 1e9 / weight_bytes
    decode = {target: figures["decode_tps"]["median"] for target, figures in single.items()}
    return {
        "bandwidth": bandwidth,
        "weight_bytes": weight_bytes,
        "bound_tps": bound,
        "decode_tps": decode,
        "fraction_of_bound": {target: tps / bound if tps else None for target, tps in decode.items()},
    }
