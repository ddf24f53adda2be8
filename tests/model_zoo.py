"""Tiny models of different sizes for the model registry's tests (built once, cached under tests/.models),
and config files that serve them."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx

from daemon.engine.demo_model import ModelShape, build_model
from daemon.store.files import weight_bytes
from tests.conftest import MODELS, RunningServer

ZOO = MODELS / "zoo-v1"
SHAPES = {
    "alpha": (ModelShape(), 1),
    "beta": (ModelShape(hidden_size=96), 2),
    "gamma": (ModelShape(), 3),
    "big": (ModelShape(hidden_size=256, intermediate_size=768), 4),
}


def zoo() -> dict[str, Path]:
    """The tiny models by name, plus `broken`: alpha's tokenizer and config without any weights."""
    paths = {}
    for name, (shape, seed) in SHAPES.items():
        paths[name] = ZOO / name
        if not (paths[name] / "config.json").exists():
            build_model(paths[name], shape, seed)
    broken = paths["broken"] = ZOO / "broken"
    if not broken.exists():
        shutil.copytree(paths["alpha"], broken, ignore=shutil.ignore_patterns("*.safetensors"))
    return paths


def size(path: Path) -> int:
    return weight_bytes(path)


def config_toml(
    settings: dict[str, Any], models: list[dict[str, Any]], rules: Sequence[dict[str, Any]] = ()
) -> str:
    """A config file: top-level settings, then [[models]] and [[model_rules]] tables (JSON literals are
    TOML literals for the strings, numbers and string lists used here; booleans are spelled alike too)."""
    lines = [f"{key} = {json.dumps(value)}" for key, value in settings.items()]
    for table, entries in (("models", models), ("model_rules", rules)):
        for entry in entries:
            lines += ["", f"[[{table}]]", *(f"{key} = {json.dumps(value)}" for key, value in entry.items())]
    return "\n".join(lines) + "\n"


def ps(server: RunningServer) -> dict[str, dict]:
    """The daemon's models by name, as `GET /v1/admin/ps` reports them."""
    with server.http() as http:
        return {model["name"]: model for model in http.get("/v1/admin/ps").json()["models"]}


def wait_for(check: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.1)


def ask(server: RunningServer, model: str, **overrides: Any) -> httpx.Response:
    body = {"model": model, "max_tokens": 4, "messages": [{"role": "user", "content": "Hello"}], **overrides}
    with server.http() as http:
        return http.post("/v1/messages", json=body)


def served_by(server: RunningServer, response: httpx.Response) -> str:
    """Which model answered: the `model=` of the request's log line (the response echoes the name asked)."""
    request_id = response.headers["request-id"]
    wait_for(lambda: request_id in server.log(), "the request is logged")
    line = next(line for line in server.log().splitlines() if request_id in line)
    return line.split(" model=", 1)[1].split()[0]
