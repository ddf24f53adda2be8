"""What the soak sends its traffic to: an mlxd it starts on a generated or given model, or one already
running on this machine (`--url`), with the process whose memory it watches."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import psutil

from benchmarks import servers
from benchmarks.client import BenchError, Endpoint
from benchmarks.models import SHAPES, default_shape, ensure_model
from benchmarks.plan import PLANS
from daemon.config.settings import data_dir

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
MODEL_NAME = "soak"


@dataclass
class Target:
    endpoint: Endpoint
    pid: int | None
    about: dict[str, Any]


@contextmanager
def target_for(args: argparse.Namespace, out: Path) -> Iterator[Target]:
    """The server `--url` names, else an mlxd started for the block's length, its files under `out`."""
    if args.url:
        yield _running(args)
        return
    path, about = _model(args)
    # The plan's concurrency sets the server's MLXD_MAX_SEQUENCES; its other sizes play no part here.
    plan = replace(PLANS["smoke"], concurrency=(args.max_sequences,))
    with servers.mlxd(path, MODEL_NAME, plan, out / "server") as server:
        about |= {"max_sequences": args.max_sequences, "log": str(server.log_path)}
        yield Target(server.endpoint, server.process.pid, about)


def _running(args: argparse.Namespace) -> Target:
    url = args.url.rstrip("/")
    parts = urlsplit(url)
    if parts.hostname not in LOOPBACK:
        raise BenchError(f"--url {url}: the soak sends traffic only to this machine (127.0.0.1)")
    endpoint = Endpoint("mlxd", url, "", token=args.token)
    endpoint.model = args.model_name or _first_model(endpoint)
    pid = args.pid or _listener(parts.port or 80)
    return Target(endpoint, pid, {"url": url, "model": endpoint.model, "pid": pid})


def _first_model(endpoint: Endpoint) -> str:
    try:
        with endpoint.client() as http:
            return http.get("/v1/models").raise_for_status().json()["data"][0]["id"]
    except (httpx.HTTPError, KeyError, IndexError, ValueError) as error:
        raise BenchError(f"cannot list the models of {endpoint.url} ({error}); pass --model-name") from error


def _listener(port: int) -> int | None:
    """The process listening on the port, where the system lets us see it (else no memory figures)."""
    try:
        connections = psutil.net_connections(kind="tcp")
    except psutil.AccessDenied:
        return None
    return next(
        (c.pid for c in connections if c.status == psutil.CONN_LISTEN and c.laddr.port == port and c.pid),
        None,
    )


def _model(args: argparse.Namespace) -> tuple[Path, dict[str, Any]]:
    if args.model:
        if not args.model.is_dir():
            raise BenchError(f"--model {args.model} is not a folder; give a local mlx-lm model folder")
        return args.model, {"model": str(args.model)}
    shape, dtype = default_shape()
    shape, dtype = args.shape or shape, args.dtype or dtype
    path = ensure_model(SHAPES[shape], dtype, args.models_dir or data_dir() / "bench-models")
    return path, {"model": f"{shape} {dtype}", "about": SHAPES[shape].about}
