"""The servers under test, each started as a subprocess on a free loopback port with folders of its own,
and stopped (SIGTERM, then SIGKILL) when its block ends."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from benchmarks.client import BenchError, Endpoint
from benchmarks.plan import Plan

HOST = "127.0.0.1"
START_TIMEOUT = 600  # loading a large model from a cold disk takes minutes


@dataclass
class ServerProcess:
    endpoint: Endpoint
    process: subprocess.Popen
    log_path: Path


def mlxd_command() -> list[str]:
    """The `mlxd` script beside this interpreter (the same virtualenv), else the one on PATH."""
    beside = Path(sys.executable).parent / "mlxd"
    found = str(beside) if beside.exists() else shutil.which("mlxd")
    if found is None:
        raise BenchError("cannot find the `mlxd` command: install the package (make serve, pip install -e .)")
    return [found]


@contextmanager
def mlxd(
    model: Path, name: str, plan: Plan, home: Path, settings: dict[str, str] | None = None
) -> Iterator[ServerProcess]:
    """`settings`: more MLXD_ variables for this server."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("MLXD_")}
    env |= {
        "MLXD_DATA_DIR": str(home / "data"),
        "MLXD_CONFIG_DIR": str(home / "config"),
        "MLXD_MAX_SEQUENCES": str(plan.max_sequences),
        "MLXD_PREFILL_STEP_SIZE": str(plan.prefill_step_size),
        "HF_HUB_OFFLINE": "1",
    } | (settings or {})
    port = free_port()
    command = [*mlxd_command(), "serve", "--host", HOST, "--port", str(port)]
    command += ["--model", str(model), "--model-name", name]
    endpoint = Endpoint("mlxd", f"http://{HOST}:{port}", name)
    with _launch(endpoint, command, env, home / "mlxd.log") as server:
        yield server


@contextmanager
def mlx_lm_server(model: Path, plan: Plan, home: Path) -> Iterator[ServerProcess]:
    """mlx-lm's own server with the same batch limits and prefill step, greedy and without thinking."""
    port = free_port()
    command = [sys.executable, "-m", "mlx_lm", "server", "--model", str(model), "--host", HOST]
    command += ["--port", str(port), "--prefill-step-size", str(plan.prefill_step_size)]
    command += ["--decode-concurrency", str(plan.max_sequences)]
    command += ["--prompt-concurrency", str(plan.max_sequences), "--temp", "0"]
    command += ["--chat-template-args", json.dumps({"enable_thinking": False})]
    env = os.environ | {"HF_HUB_OFFLINE": "1"}
    endpoint = Endpoint("mlx_lm.server", f"http://{HOST}:{port}", "default_model", kind="openai")
    with _launch(endpoint, command, env, home / "mlx_lm_server.log") as server:
        yield server


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


@contextmanager
def _launch(
    endpoint: Endpoint, command: list[str], env: dict[str, str], log_path: Path
) -> Iterator[ServerProcess]:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("w") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, env=env)
    server = ServerProcess(endpoint, process, log_path)
    try:
        _wait_until_healthy(server)
        yield server
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _wait_until_healthy(server: ServerProcess) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise BenchError(
                f"{server.endpoint.name} exited with {server.process.returncode}: {_tail(server)}"
            )
        try:
            if httpx.get(f"{server.endpoint.url}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise BenchError(f"{server.endpoint.name} was not healthy after {START_TIMEOUT}s: {_tail(server)}")


def _tail(server: ServerProcess) -> str:
    lines = server.log_path.read_text(errors="replace").splitlines()
    return "\n".join(lines[-20:]) + f"\n(full log: {server.log_path})"
