"""The daemon as a process: signals end it cleanly, unsafe binds are refused, and help is complete."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import httpx
import pytest

from daemon.engine.demo_model import ModelShape, build_model
from tests.conftest import MLXD, RunningServer, run_server, server_env


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_ends_the_server_cleanly(tiny_model: Path, tmp_path: Path, signum: int) -> None:
    with run_server(tmp_path, "--model", str(tiny_model)) as server:
        assert httpx.get(f"{server.url}/health").status_code == 200
        server.process.send_signal(signum)
        assert server.process.wait(timeout=60) == 0, server.log()
        assert "mlxd stopped" in server.log()


def test_listening_beyond_loopback_without_a_token_is_refused(tmp_path: Path) -> None:
    result = subprocess.run(
        [str(MLXD), "serve", "--host", "0.0.0.0", "--port", "0"],
        capture_output=True,
        text=True,
        env=server_env(tmp_path),
        timeout=60,
    )
    assert result.returncode != 0
    assert "refusing to listen on 0.0.0.0 without a token" in result.stderr


def test_demo_model_is_served_when_none_is_configured(tmp_path: Path) -> None:
    with run_server(tmp_path) as server:
        reply = server.client().messages.create(
            model="demo", max_tokens=5, messages=[{"role": "user", "content": "hi"}]
        )
        assert reply.usage.output_tokens == 5
        assert "DEMO model" in server.log() and "mlxd serve --model" in server.log()
        assert (tmp_path / "data" / "models").is_dir()


@pytest.mark.parametrize("command", [[], ["serve"]])
def test_help_is_complete(command: list[str]) -> None:
    result = subprocess.run([str(MLXD), *command, "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    if command == ["serve"]:
        for option in ("--host", "--port", "--model", "--token", "--token-file", "--config", "--log-level"):
            assert option in result.stdout
        assert "MLXD_" in result.stdout
    else:
        assert "serve" in result.stdout


def sigterm_mid_stream(server: RunningServer, request: dict) -> list[str]:
    """SIGTERM once the stream has begun: the rest of the stream, and the server's exit status checked."""
    with server.http() as http, http.stream("POST", "/v1/messages", json=request) as response:
        lines = response.iter_lines()
        next(line for line in lines if line == "event: message_start")
        server.process.send_signal(signal.SIGTERM)
        rest = list(lines)
    assert server.process.wait(timeout=60) == 0, server.log()
    return rest


def test_stream_past_the_shutdown_grace_ends_with_an_error_event(tiny_model: Path, tmp_path: Path) -> None:
    env = server_env(tmp_path, MLXD_SHUTDOWN_GRACE="0.5")
    with run_server(tmp_path, "--model", str(tiny_model), "--model-name", "tiny", env=env) as server:
        request = {
            "model": "tiny",
            "max_tokens": 30000,
            "stream": True,
            "messages": [{"role": "user", "content": "hi"}],
        }
        rest = sigterm_mid_stream(server, request)
    assert "event: error" in rest
    error = json.loads(rest[rest.index("event: error") + 1].removeprefix("data: "))
    assert error["error"]["type"] == "overloaded_error"
    assert "message_stop" not in "".join(rest)


def test_stream_within_the_shutdown_grace_finishes(tiny_model: Path, tmp_path: Path) -> None:
    env = server_env(tmp_path, MLXD_SHUTDOWN_GRACE="120")
    request = {
        "model": "tiny",
        "max_tokens": 300,
        "temperature": 0,
        "stream": True,
        "messages": [{"role": "user", "content": "hi"}],
    }
    with run_server(tmp_path, "--model", str(tiny_model), "--model-name", "tiny", env=env) as server:
        rest = sigterm_mid_stream(server, request)
    assert "event: message_stop" in rest and "event: error" not in rest
    delta = json.loads(rest[rest.index("event: message_delta") + 1].removeprefix("data: "))
    assert delta["usage"]["output_tokens"] == 300


def test_model_generation_config_supplies_sampling_defaults(tmp_path: Path) -> None:
    # top_k 1 makes sampling at the default temperature of 1 pick the argmax: only if the server applies
    # the model's recommendation does an unspecified request equal the greedy answer.
    model = build_model(tmp_path / "model", ModelShape(generation_config={"top_k": 1}), seed=3)
    with run_server(tmp_path, "--model", str(model), "--model-name", "m") as server:
        client = server.client()
        ask = {"model": "m", "max_tokens": 24, "messages": [{"role": "user", "content": "Hello there"}]}
        greedy = client.messages.create(**ask, extra_body={"temperature": 0}).content[0].text
        assert [client.messages.create(**ask).content[0].text for _ in range(3)] == [greedy] * 3


def test_a_local_folder_is_served_by_its_folder_name_and_every_id_is_retrievable(
    tiny_model: Path, tmp_path: Path
) -> None:
    with run_server(tmp_path, "--model", str(tiny_model)) as server, server.http() as http:
        listing = http.get("/v1/models").json()
        assert listing["first_id"] == tiny_model.name
        assert [entry["id"] for entry in listing["data"][:2]] == [tiny_model.name, str(tiny_model)]
        client = server.client()
        for entry in listing["data"]:  # the folder name, the path (an alias) and Claude's tier ids
            raw = http.get(f"/v1/models/{entry['id']}")  # the path's own slashes, one after `models/`
            assert raw.status_code == 200 and raw.json() == entry
            assert client.models.retrieve(entry["id"]).id == entry["id"]  # the SDK sends %2F for each slash
        reply = client.messages.create(
            model=str(tiny_model), max_tokens=2, messages=[{"role": "user", "content": "hi"}]
        )
        assert reply.model == str(tiny_model) and reply.usage.output_tokens == 2


def test_a_missing_model_folder_is_refused_at_start(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such" / "folder"
    config = tmp_path / "config.toml"
    config.write_text(f'[[models]]\nname = "gone"\nsource = "{missing}"\n')
    for args, message in (
        (["--model", str(missing)], f"no folder {missing} "),
        (["--config", str(config)], f"model gone: no folder {missing} "),
    ):
        result = subprocess.run(
            [str(MLXD), "serve", "--port", "0", *args],
            capture_output=True,
            text=True,
            env=server_env(tmp_path),
            timeout=120,
        )
        assert result.returncode == 1 and message in result.stderr and "Traceback" not in result.stderr
