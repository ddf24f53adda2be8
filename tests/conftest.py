"""Shared fixtures: tiny models built on the spot, and the real `mlxd serve` run as a subprocess."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import anthropic
import httpx
import pytest

from tests.models import endless_model
from tests.trained import Example, trained_model
from tests.vision_model import vision_model

MODELS = Path(__file__).parent / ".models"
MLXD = Path(sys.executable).parent / "mlxd"

# What the trained model says; tests assert these texts come back exactly through the whole pipeline.
HELLO = Example(
    messages=({"role": "user", "content": "Say hello."},),
    response="Hello! I am a tiny model that was trained to say exactly this.",
)
COUNT = Example(
    messages=(
        {"role": "system", "content": "You count."},
        {"role": "user", "content": "Count to five."},
    ),
    response="one, two, three, four, five",
)
STORY = Example(
    messages=({"role": "user", "content": "Tell me a short story about a lighthouse keeper."},),
    response=(
        "The keeper climbed the stairs each night to light the lamp. One winter a ship lost its way in the "
        "storm, saw the beam, and turned for home. In the morning the captain left a letter of thanks."
    ),
)
# An answer that copies a span of its prompt, as an Edit call repeats the file it read: prompt lookup's case.
COPIED = "the lamp burned all night and the ship came home."
COPY = Example(messages=({"role": "user", "content": f"Repeat after me: {COPIED}"},), response=COPIED)
TRAINED_EXAMPLES = (HELLO, COUNT, STORY, COPY)


@pytest.fixture(scope="session")
def tiny_model() -> Path:
    """A tiny random model that never ends a turn by itself (see `tests.models.endless_model`)."""
    path = MODELS / "tiny-endless-v1"
    if not (path / "config.json").exists():
        endless_model(path)
    return path


@pytest.fixture(scope="session")
def trained() -> Path:
    return trained_model(TRAINED_EXAMPLES, cache_dir=MODELS)


@pytest.fixture(scope="session")
def vision() -> Path:
    """A tiny vision model trained to name the colour of the image it is shown (see `tests.vision_model`)."""
    return vision_model(MODELS)


@dataclass
class RunningServer:
    url: str
    process: subprocess.Popen
    log_path: Path
    token: str | None

    def client(self, **kwargs) -> anthropic.Anthropic:
        kwargs.setdefault("api_key", self.token or "unused")
        return anthropic.Anthropic(base_url=self.url, max_retries=0, timeout=120, **kwargs)

    def http(self) -> httpx.Client:
        headers = {"x-api-key": self.token} if self.token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=120)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_env(home: Path, **extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("MLXD_")}
    env.update(
        MLXD_CONFIG_DIR=str(home / "config"),
        MLXD_DATA_DIR=str(home / "data"),
        HF_HUB_OFFLINE="1",
        **extra,
    )
    return env


@contextmanager
def run_server(
    home: Path,
    *args: str,
    token: str | None = None,
    env: dict | None = None,
    launcher: Sequence[str] = (str(MLXD),),
) -> Iterator[RunningServer]:
    """`mlxd serve` (or `launcher serve`) on a free loopback port, until the block ends; fails with its log
    if it dies."""
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log_path = home / f"server-{port}.log"
    command = [*launcher, "serve", "--port", str(port), *args]
    if token:
        command += ["--token", token]
    with log_path.open("w") as log_file:
        process = subprocess.Popen(
            command, stdout=log_file, stderr=subprocess.STDOUT, env=env or server_env(home)
        )
    server = RunningServer(f"http://127.0.0.1:{port}", process, log_path, token)
    try:
        wait_until_healthy(server)
        yield server
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def wait_until_healthy(server: RunningServer, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"mlxd exited with {server.process.returncode}:\n{server.log()}")
        try:
            if httpx.get(f"{server.url}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"mlxd did not become healthy in {timeout}s:\n{server.log()}")
