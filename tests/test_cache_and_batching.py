"""Continuous batching and prefix reuse, on the real server: turn N reuses turn N-1, batched greedy output
equals solo output, a cancelled stream leaves the others alone, a full queue answers 529, the cache
survives a restart, and the metrics count what was served."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.claude_code_request import billing_line, claude_code_request
from tests.conftest import COUNT, HELLO, STORY, RunningServer, run_server, server_env

# A tenth of Claude Code's size (about 3k tokens): the shape matters here, and the CPU backend's attention
# makes full-size prompts take tens of seconds each.
SCALE = 0.1


def prompt_tokens(usage: dict) -> int:
    return usage["input_tokens"] + usage["cache_read_input_tokens"] + usage["cache_creation_input_tokens"]


def next_turn(request: dict, answer: dict, user_text: str) -> dict:
    """The request Claude Code sends next: a new billing line, the answer appended, and a new user turn."""
    system = [{"type": "text", "text": billing_line()}, *request["system"][1:]]
    text = "".join(block.get("text", "") for block in answer["content"]) or "ok"
    messages = [
        *request["messages"],
        {"role": "assistant", "content": [{"type": "text", "text": text}]},
        {"role": "user", "content": [{"type": "text", "text": user_text}]},
    ]
    return {**request, "system": system, "messages": messages, "stream": False}


def ask(http: httpx.Client, request: dict) -> dict:
    response = http.post("/v1/messages", json=request)
    assert response.status_code == 200, response.text
    return response.json()


@pytest.fixture(scope="module")
def tiny_server(tiny_model: Path, tmp_path_factory) -> Iterator[RunningServer]:
    home = tmp_path_factory.mktemp("cache")
    with run_server(home, "--model", str(tiny_model), "--model-name", "tiny") as server:
        yield server


def test_second_turn_reads_the_first_turn_from_the_cache(tiny_server: RunningServer) -> None:
    with tiny_server.http() as http:
        first_request = {
            **claude_code_request("tiny", max_tokens=8, scale=SCALE),
            "stream": False,
            "temperature": 0,
        }
        first = ask(http, first_request)
        second = ask(http, next_turn(first_request, first, "Now open README.md."))
    first_prompt = prompt_tokens(first["usage"])
    assert first["usage"]["cache_read_input_tokens"] < first_prompt // 2
    # The billing line's cch differed, yet the whole first prompt came from the cache.
    assert second["usage"]["cache_read_input_tokens"] >= first_prompt
    assert (
        second["usage"]["cache_creation_input_tokens"]
        == prompt_tokens(second["usage"]) - (second["usage"]["cache_read_input_tokens"])
    )


def test_keeping_the_billing_line_busts_the_cache_and_the_log_says_where(
    tiny_model: Path, tmp_path: Path
) -> None:
    env = server_env(tmp_path, MLXD_STRIP_BILLING_HEADER="false")
    with run_server(tmp_path, "--model", str(tiny_model), "--model-name", "tiny", env=env) as server:
        with server.http() as http:
            request = {
                **claude_code_request("tiny", max_tokens=4, scale=SCALE),
                "stream": False,
                "temperature": 0,
            }
            first = ask(http, request)
            second = ask(http, next_turn(request, first, "again"))
        assert second["usage"]["cache_read_input_tokens"] < prompt_tokens(first["usage"]) // 2
        assert "first differs from a recent request at system block 0" in server.log()


def test_concurrent_requests_sharing_a_prefix_reuse_it(tiny_server: RunningServer) -> None:
    base = {**claude_code_request("tiny", max_tokens=4, scale=SCALE), "stream": False, "temperature": 0}
    with tiny_server.http() as http:
        ask(http, base)  # the shared system prompt and tools are now cached
    results: list[dict] = []

    def subagent(i: int) -> None:
        request = {**base, "messages": [{"role": "user", "content": f"Subagent task number {i}."}]}
        with tiny_server.http() as http:
            results.append(ask(http, request))

    threads = [threading.Thread(target=subagent, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for result in results:
        assert result["usage"]["cache_read_input_tokens"] > prompt_tokens(result["usage"]) * 0.8


@pytest.fixture(scope="module")
def trained_server(trained: Path, tmp_path_factory) -> Iterator[RunningServer]:
    home = tmp_path_factory.mktemp("batch")
    with run_server(home, "--model", str(trained), "--model-name", "trained") as server:
        yield server


def trained_request(example, **extra) -> dict:
    system = [m["content"] for m in example.messages if m["role"] == "system"]
    request = {
        "model": "trained",
        "max_tokens": 200,
        "temperature": 0,
        "messages": [m for m in example.messages if m["role"] != "system"],
        **extra,
    }
    if system:
        request["system"] = system[0]
    return request


def run_together(server: RunningServer, requests: list[dict]) -> list[dict]:
    results: list[dict] = [{}] * len(requests)

    def one(i: int) -> None:
        with server.http() as http:
            results[i] = ask(http, requests[i])

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(requests))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def test_batched_greedy_output_equals_solo_output(trained_server: RunningServer) -> None:
    requests = [trained_request(e) for e in (STORY, HELLO, COUNT, STORY, HELLO)]
    requests.append({**trained_request(HELLO), "max_tokens": 5})
    with trained_server.http() as http:
        solo = [ask(http, r)["content"] for r in requests]
    together = [r["content"] for r in run_together(trained_server, requests)]
    assert together == solo
    assert solo[0][0]["text"] == STORY.response and solo[2][0]["text"] == COUNT.response


def test_cancelling_one_stream_leaves_the_others_unchanged(trained_server: RunningServer) -> None:
    untrained = {
        "model": "trained",
        "max_tokens": 3000,
        "temperature": 0,
        "stream": True,
        "messages": [{"role": "user", "content": "Write anything at all, at length."}],
    }
    others: list[dict] = []
    with trained_server.http() as http, http.stream("POST", "/v1/messages", json=untrained) as stream:
        lines = stream.iter_lines()
        next(line for line in lines if line.startswith("event: message_start"))
        worker = threading.Thread(
            target=lambda: others.extend(
                run_together(trained_server, [trained_request(STORY), trained_request(COUNT)])
            )
        )
        worker.start()
        time.sleep(0.5)  # let them join the batch; the assertion below holds wherever the cut lands
    # Leaving the block closed the connection mid-stream: the server cancels that sequence.
    worker.join()
    assert [o["content"][0]["text"] for o in others] == [STORY.response, COUNT.response]


def test_full_queue_is_refused_with_529(tiny_model: Path, tmp_path: Path) -> None:
    env = server_env(tmp_path, MLXD_MAX_SEQUENCES="1", MLXD_MAX_QUEUED="0")
    hold = {
        "model": "tiny",
        "max_tokens": 20000,
        "temperature": 0,  # greedy on this prompt the tiny model never stops by itself
        "stream": True,
        "messages": [{"role": "user", "content": "Hello"}],
    }
    args = ("--model", str(tiny_model), "--model-name", "tiny")
    with run_server(tmp_path, *args, env=env) as server, server.http() as http:
        with http.stream("POST", "/v1/messages", json=hold) as stream:
            lines = stream.iter_lines()
            next(line for line in lines if line == "event: message_start")
            refused = http.post("/v1/messages", json={**hold, "stream": False, "max_tokens": 4})
            assert refused.status_code == 529
            assert refused.json()["error"]["type"] == "overloaded_error"
            assert "limit 1 running + 0 queued" in refused.json()["error"]["message"]
        del lines
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            response = http.post("/v1/messages", json={**hold, "stream": False, "max_tokens": 4})
            if response.status_code != 529:
                break
            time.sleep(0.1)
        assert response.status_code == 200


def metric(text: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def test_the_cache_survives_a_restart_on_disk_and_metrics_count_it(tiny_model: Path, tmp_path: Path) -> None:
    env = server_env(tmp_path)
    args = ("--model", str(tiny_model), "--model-name", "tiny")
    request = {**claude_code_request("tiny", max_tokens=4, scale=SCALE), "stream": False, "temperature": 0}
    with run_server(tmp_path, *args, env=env) as first_server:
        with first_server.http() as http:
            first = ask(http, request)
        first_server.process.send_signal(signal.SIGTERM)
        assert first_server.process.wait(timeout=60) == 0  # after the writes still queued

    with run_server(tmp_path, *args, env=env) as second_server, second_server.http() as http:
        again = ask(
            http,
            {**request, "system": [{"type": "text", "text": billing_line()}, *request["system"][1:]]},
        )
        metrics = http.get("/metrics").text
    # Whole blocks of 256 tokens come back from disk; the rest of the prompt is computed.
    assert again["usage"]["cache_read_input_tokens"] >= prompt_tokens(first["usage"]) - 256
    assert metric(metrics, 'mlxd_prompt_cache_hits_total{model="tiny",tier="disk"}') == 1
    assert metric(metrics, 'mlxd_requests_total{route="/v1/messages",status="200"}') == 1
    assert (
        metric(metrics, 'mlxd_tokens_total{kind="cached",model="tiny"}')
        == again["usage"]["cache_read_input_tokens"]
    )
