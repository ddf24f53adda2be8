"""Real faults around the requests: corrupt model folders, a prompt cache that cannot be saved (no folder, a
full disk), signals during a model load and during a long prefill, and `kill -9` then a restart. Each ends
with a clear error for the request it touches, and the daemon keeps serving or exits cleanly and starts
again on what it left behind."""

from __future__ import annotations

import json
import shutil
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from tests.claude_code_request import claude_code_request
from tests.conftest import MLXD, RunningServer, run_server, server_env
from tests.fake_hub import serve_hub

TINY = ("--model-name", "tiny")


def ask(server: RunningServer, model: str = "tiny", **extra) -> httpx.Response:
    body = {"model": model, "max_tokens": 4, "messages": [{"role": "user", "content": "Hi"}], **extra}
    with server.http() as http:
        return http.post("/v1/messages", json=body)


def sse_events(lines: Iterator[str]) -> Iterator[tuple[str, dict]]:
    name = None
    for line in lines:
        if line.startswith("event: "):
            name = line.removeprefix("event: ")
        elif line.startswith("data: "):
            yield name, json.loads(line.removeprefix("data: "))


def corrupt_copies(tiny_model: Path, root: Path) -> dict[str, Path]:
    truncated, garbled = root / "truncated", root / "garbled"
    for folder in (truncated, garbled):
        shutil.copytree(tiny_model, folder)
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # an interrupted download
    (garbled / "config.json").write_text('{"model_type": "qwen3", ')
    return {"truncated": truncated, "garbled": garbled}


def test_corrupt_model_folders_are_clear_errors_and_the_others_keep_serving(
    tiny_model: Path, tmp_path: Path
) -> None:
    broken = corrupt_copies(tiny_model, tmp_path / "models")
    config = tmp_path / "config.toml"
    tables = [("tiny", tiny_model), *broken.items()]
    config.write_text("".join(f'[[models]]\nname = "{name}"\nsource = "{path}"\n\n' for name, path in tables))
    with run_server(tmp_path, "--config", str(config)) as server:
        for name, cause in (("truncated", "corrupt file"), ("garbled", "cannot be loaded")):
            response = ask(server, name)
            assert response.status_code == 500, response.text
            assert response.headers["x-should-retry"] == "false"
            error = response.json()["error"]
            assert error["type"] == "api_error" and f"model {name}" in error["message"]
            assert cause in error["message"]
            assert ask(server, "tiny").status_code == 200
        assert ask(server, "truncated").status_code == 500  # tried again, and still refused
        assert httpx.get(f"{server.url}/health").json()["status"] == "ok"


def long_prompt_request() -> dict:
    """Long enough (about 3k tokens) for its prefix to fill several disk blocks."""
    return {**claude_code_request("tiny", max_tokens=4, scale=0.1), "stream": False, "temperature": 0}


def blocks_in(folder: Path) -> list[Path]:
    """The prompt cache's disk blocks, the last written last."""
    return sorted(folder.rglob("*.kvblock"), key=lambda path: path.stat().st_mtime_ns)


def test_a_cache_folder_that_cannot_exist_leaves_the_cache_in_ram(tiny_model: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    env = server_env(tmp_path, MLXD_PROMPT_CACHE_DIR=str(blocker / "cache"))
    with run_server(tmp_path, "--model", str(tiny_model), *TINY, env=env) as server, server.http() as http:
        answers = [http.post("/v1/messages", json=long_prompt_request()) for _ in range(2)]
        assert "the prompt cache stays in RAM only: cannot use" in server.log()
    assert [answer.status_code for answer in answers] == [200, 200]
    assert answers[1].json()["usage"]["cache_read_input_tokens"] > 0


# Starts mlxd with writes capped at a file size, as a full disk would stop them (EFBIG, not a signal).
_FULL_DISK = (
    "import os, resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
    "limit = int(os.environ['FSIZE_LIMIT']); resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)); "
    "os.execv(sys.argv[1], sys.argv[1:])"
)


def test_a_full_disk_leaves_the_cache_in_ram_with_a_warning(tiny_model: Path, tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    env = server_env(tmp_path, MLXD_PROMPT_CACHE_DIR=str(cache_dir), FSIZE_LIMIT="50000")  # below one block
    launcher = (sys.executable, "-c", _FULL_DISK, str(MLXD))
    with (
        run_server(tmp_path, "--model", str(tiny_model), *TINY, env=env, launcher=launcher) as server,
        server.http() as http,
    ):
        answers = [http.post("/v1/messages", json=long_prompt_request()) for _ in range(2)]
        deadline = time.monotonic() + 30
        while "stays in RAM only from now" not in server.log() and time.monotonic() < deadline:
            time.sleep(0.05)
        answers.append(http.post("/v1/messages", json=long_prompt_request()))
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=60) == 0, server.log()
        assert "the prompt cache stays in RAM only from now: writing" in server.log()
    assert [answer.status_code for answer in answers] == [200, 200, 200]
    assert all(answer.json()["usage"]["cache_read_input_tokens"] > 0 for answer in answers[1:])
    assert not blocks_in(cache_dir) and not list(cache_dir.rglob("*.tmp"))  # no torn file left behind


def test_kill_9_mid_stream_then_a_restart_skips_a_torn_block(tiny_model: Path, tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    env = server_env(tmp_path, MLXD_PROMPT_CACHE_DIR=str(cache_dir))
    endless = {
        "model": "tiny",
        "max_tokens": 30000,
        "stream": True,
        "messages": [{"role": "user", "content": "x"}],
    }
    with run_server(tmp_path, "--model", str(tiny_model), *TINY, env=env) as server, server.http() as http:
        first = http.post("/v1/messages", json=long_prompt_request()).json()
        deadline = time.monotonic() + 30
        while len(blocks_in(cache_dir)) < 10 and time.monotonic() < deadline:
            time.sleep(0.05)
        with http.stream("POST", "/v1/messages", json=endless) as response:
            events = sse_events(response.iter_lines())
            next(event for event in events if event[0] == "content_block_delta")
            server.process.kill()
            assert server.process.wait(timeout=60) == -signal.SIGKILL
    # What a crash mid-write could leave if a rename were not atomic: a torn file under a final name.
    last = blocks_in(cache_dir)[-1]
    last.write_bytes(last.read_bytes()[:1000])
    with run_server(tmp_path, "--model", str(tiny_model), *TINY, env=env) as server, server.http() as http:
        again = http.post("/v1/messages", json=long_prompt_request()).json()
        assert "skipping prompt cache block" in server.log() and last.name in server.log()
    assert again["content"] == first["content"]  # the torn block was computed again, not loaded
    assert again["usage"]["cache_read_input_tokens"] > 0


def test_sigterm_during_a_long_prefill_ends_it_with_a_retryable_error(
    tiny_model: Path, tmp_path: Path
) -> None:
    env = server_env(
        tmp_path, MLXD_SHUTDOWN_GRACE="0.5", MLXD_PREFILL_STEP_SIZE="8", MLXD_PING_INTERVAL="0.05"
    )
    request = {
        "model": "tiny",
        "max_tokens": 4,
        "stream": True,
        "messages": [{"role": "user", "content": "a b c d " * 3000}],
    }
    with run_server(tmp_path, "--model", str(tiny_model), *TINY, env=env) as server:
        with server.http() as http, http.stream("POST", "/v1/messages", json=request) as response:
            events = sse_events(response.iter_lines())
            assert next(events)[0] == "message_start"
            assert next(events)[0] == "ping"  # the prompt is being processed
            server.process.send_signal(signal.SIGTERM)
            rest = list(events)
        assert server.process.wait(timeout=60) == 0, server.log()
    names = [name for name, _ in rest if name != "ping"]
    assert names == ["error"], names  # nothing was generated: the prefill was cut
    assert rest[-1][1]["error"]["type"] == "overloaded_error"


def test_sigterm_during_a_model_download_ends_the_waiting_request_and_exits(
    tiny_model: Path, tmp_path: Path
) -> None:
    with serve_hub({"test-org/remote": tiny_model}) as hub:
        config = tmp_path / "config.toml"
        config.write_text('[[models]]\nname = "remote"\nsource = "test-org/remote"\n')
        env = {
            **server_env(
                tmp_path,
                HF_ENDPOINT=hub.url,
                HF_HOME=str(tmp_path / "hf"),
                MLXD_PING_INTERVAL="0.05",
                MLXD_SHUTDOWN_GRACE="0.5",
            ),
            "HF_HUB_OFFLINE": "0",  # this hub is on 127.0.0.1
            "HF_HUB_DOWNLOAD_TIMEOUT": "300",  # the download stays held until the test ends
        }
        hub.hold("model.safetensors")
        request = {
            "model": "remote",
            "max_tokens": 4,
            "stream": True,
            "messages": [{"role": "user", "content": "Hi"}],
        }
        with run_server(tmp_path, "--config", str(config), env=env) as server:
            with server.http() as http, http.stream("POST", "/v1/messages", json=request) as response:
                events = sse_events(response.iter_lines())
                assert [next(events)[0] for _ in range(2)] == ["message_start", "ping"]
                server.process.send_signal(signal.SIGTERM)
                rest = [event for event in events if event[0] != "ping"]
            assert [name for name, _ in rest] == ["error"]
            assert rest[0][1]["error"]["type"] == "overloaded_error"
            assert server.process.wait(timeout=60) == 0, server.log()
