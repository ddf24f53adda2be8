"""Faults inside the engine end the request they belong to, and only it: every accepted request still ends
with exactly one outcome, the rest of the batch goes on, and the engine's counts return to zero.

No input can make mlxd's own sampler, constraints or decoders raise, so these faults are injected in-process
by `tests/fault_shim.py` (the real server, engine and model, with one stage of one request made to raise);
the last tests use real inputs that used to break the batch.
"""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path

import httpx
import pytest

from tests.conftest import RunningServer, run_server, server_env

MODEL = "tiny"
SHIM = Path(__file__).parent / "fault_shim.py"
BYSTANDER_TOKENS = 60


@pytest.fixture(scope="module")
def server(tiny_model: Path, tmp_path_factory) -> Iterator[RunningServer]:
    home = tmp_path_factory.mktemp("faults")
    (home / "config").mkdir()
    (home / "config" / "config.toml").write_text(f'[[model_rules]]\npattern = "fault-*"\nmodel = "{MODEL}"\n')
    env = server_env(home, MLXD_PING_INTERVAL="0.05")
    args = ("--model", str(tiny_model), "--model-name", MODEL, "--context-length", "2048")
    with run_server(home, *args, env=env, launcher=(sys.executable, str(SHIM))) as s:
        yield s


@pytest.fixture
def http(server: RunningServer) -> Iterator[httpx.Client]:
    with server.http() as client:
        yield client
    # Whatever failed, nothing is left running or queued.
    (model,) = httpx.get(f"{server.url}/health").json()["models"]
    assert model["active_sequences"] == 0


def body(**overrides) -> dict:
    return {"model": MODEL, "max_tokens": 8, "messages": [{"role": "user", "content": "Hello"}], **overrides}


def frames_of(lines: Iterator[str]) -> Iterator[tuple[str, dict]]:
    name = None
    for line in lines:
        if line.startswith("event: "):
            name = line[len("event: ") :]
        elif line.startswith("data: "):
            yield name, json.loads(line[len("data: ") :])


def stream(http: httpx.Client, request: dict) -> list[tuple[str, dict]]:
    with http.stream("POST", "/v1/messages", json={**request, "stream": True}) as response:
        assert response.status_code == 200
        return [frame for frame in frames_of(response.iter_lines()) if frame[0] != "ping"]


def bystander(server: RunningServer) -> Future[list[tuple[str, dict]]]:
    """A sampled stream that is generating when this returns; its frames once it ends."""
    generating = threading.Event()
    done: Future[list[tuple[str, dict]]] = Future()
    request = body(max_tokens=BYSTANDER_TOKENS, temperature=1.0, stream=True)

    def run() -> None:
        try:
            with server.http() as client, client.stream("POST", "/v1/messages", json=request) as response:
                frames = []
                for frame in frames_of(response.iter_lines()):
                    frames.append(frame)
                    if frame[0] == "content_block_delta":
                        generating.set()
                done.set_result(frames)
        except BaseException as error:
            done.set_exception(error)
        finally:
            generating.set()

    threading.Thread(target=run, daemon=True).start()
    assert generating.wait(120)
    return done


def assert_finished_whole(frames: list[tuple[str, dict]]) -> None:
    names = [name for name, _ in frames]
    assert names[-1] == "message_stop", names
    (delta,) = [data for name, data in frames if name == "message_delta"]
    assert delta["delta"]["stop_reason"] == "max_tokens"
    assert delta["usage"]["output_tokens"] == BYSTANDER_TOKENS


def assert_stream_failed(frames: list[tuple[str, dict]]) -> None:
    assert frames[0][0] == "message_start"
    name, data = frames[-1]
    assert name == "error", frames
    assert data["error"]["type"] == "api_error"
    assert "message_stop" not in [name for name, _ in frames]


STAGES = ["admit", "sample", "prefill", "decode", "read"]


@pytest.mark.parametrize("stage", STAGES)
def test_a_fault_in_one_stream_ends_it_alone(server: RunningServer, http: httpx.Client, stage: str) -> None:
    other = bystander(server)
    frames = stream(http, body(max_tokens=20, stop_sequences=[f"FAULT:{stage}"]))
    assert_stream_failed(frames)
    assert_finished_whole(other.result(timeout=120))
    assert "InjectedFault" in server.log()


@pytest.mark.parametrize("stage", STAGES)
def test_a_fault_in_one_request_is_a_500_for_it_alone(
    server: RunningServer, http: httpx.Client, stage: str
) -> None:
    other = bystander(server)
    response = http.post("/v1/messages", json=body(max_tokens=20, stop_sequences=[f"FAULT:{stage}"]))
    assert response.status_code == 500
    error = response.json()
    assert error["type"] == "error" and error["error"]["type"] == "api_error"
    assert error["request_id"] == response.headers["request-id"]
    assert_finished_whole(other.result(timeout=120))


def test_a_fault_while_encoding_the_stream_ends_it_with_an_error_event(
    server: RunningServer, http: httpx.Client
) -> None:
    other = bystander(server)
    assert_stream_failed(stream(http, body(model="fault-encode")))
    response = http.post("/v1/messages", json=body(model="fault-encode"))
    assert response.status_code == 500 and response.json()["error"]["type"] == "api_error"
    assert_finished_whole(other.result(timeout=120))


def test_a_fault_of_the_whole_batch_ends_its_sequences_and_the_engine_recovers(
    server: RunningServer, http: httpx.Client
) -> None:
    other = bystander(server)
    assert_stream_failed(stream(http, body(stop_sequences=["FAULT:batch"])))
    assert_stream_failed(other.result(timeout=120))
    # The generator was rebuilt and MLX's random state is usable: sampled requests work again.
    for _ in range(2):
        response = http.post("/v1/messages", json=body(temperature=1.0))
        assert response.status_code == 200 and response.json()["stop_reason"] == "max_tokens"


def test_top_k_beyond_the_vocabulary_filters_nothing(server: RunningServer, http: httpx.Client) -> None:
    other = bystander(server)
    response = http.post("/v1/messages", json=body(temperature=1.0, top_k=5000))
    assert response.status_code == 200 and response.json()["usage"]["output_tokens"] == 8
    assert_finished_whole(other.result(timeout=120))
    assert http.post("/v1/messages", json=body(temperature=1.0)).status_code == 200


@pytest.mark.parametrize("streamed", [False, True])
def test_a_stop_sequence_on_the_last_allowed_token(http: httpx.Client, streamed: bool) -> None:
    first = http.post("/v1/messages", json=body(max_tokens=1, temperature=0)).json()
    text = first["content"][0]["text"] if first["content"] else ""
    assert text.strip(), first  # the tiny model's first greedy token for this prompt is visible text
    request = body(max_tokens=1, temperature=0, stop_sequences=[text.strip()])
    if streamed:
        frames = stream(http, request)
        (delta,) = [data for name, data in frames if name == "message_delta"]
        assert frames[-1][0] == "message_stop"
        message = {**delta["delta"], "usage": delta["usage"]}
    else:
        response = http.post("/v1/messages", json=request)
        assert response.status_code == 200
        message = response.json()
    assert message["stop_reason"] == "stop_sequence"
    assert message["stop_sequence"] == text.strip()
    assert message["usage"]["output_tokens"] == 1
