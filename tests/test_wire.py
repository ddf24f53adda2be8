"""The wire, checked with raw HTTP: SSE framing, every error case, Claude Code's requests, disconnects,
models, health and probes. The server runs a tiny random-weight model, without a token."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.claude_code_request import CLAUDE_CODE_HEADERS, claude_code_request
from tests.conftest import RunningServer, run_server, server_env
from tests.images import PNG

MODEL = "tiny"
CONTEXT = 30000


@pytest.fixture(scope="module")
def server(tiny_model: Path, tmp_path_factory) -> Iterator[RunningServer]:
    home = tmp_path_factory.mktemp("wire")
    env = server_env(home, MLXD_PING_INTERVAL="0.05")
    args = ("--model", str(tiny_model), "--model-name", MODEL, "--context-length", str(CONTEXT))
    with run_server(home, *args, env=env) as running:
        yield running


@pytest.fixture
def http(server: RunningServer) -> Iterator[httpx.Client]:
    with server.http() as client:
        yield client
    # Whatever a test sent, the server must still be serving afterwards.
    assert httpx.get(f"{server.url}/health").json()["status"] == "ok"


def body(**overrides) -> dict:
    return {"model": MODEL, "max_tokens": 8, "messages": [{"role": "user", "content": "Hello"}], **overrides}


def sse_frames(response: httpx.Response) -> list[tuple[str, dict]]:
    """(event name, data) per frame, checking the framing on the way: `event:` and `data:`, blank line."""
    frames = []
    for raw in response.text.split("\n\n"):
        if not raw:
            continue
        lines = raw.split("\n")
        assert len(lines) == 2 and lines[0].startswith("event: ") and lines[1].startswith("data: "), raw
        name, data = lines[0][len("event: ") :], json.loads(lines[1][len("data: ") :])
        assert data["type"] == name
        frames.append((name, data))
    return frames


def test_stream_events_come_in_anthropic_order(http: httpx.Client) -> None:
    response = http.post("/v1/messages?beta=true", json=body(stream=True, temperature=0))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["request-id"].startswith("req_")
    names = [name for name, _ in sse_frames(response) if name != "ping"]
    assert names[0] == "message_start"
    assert names[1] == "content_block_start"
    assert set(names[2:-3]) == {"content_block_delta"}
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    frames = dict((name, data) for name, data in sse_frames(response))
    start = frames["message_start"]["message"]
    assert start["content"] == [] and start["stop_reason"] is None and start["usage"]["input_tokens"] > 0
    assert frames["message_delta"]["delta"] == {"stop_reason": "max_tokens", "stop_sequence": None}
    assert frames["message_delta"]["usage"]["output_tokens"] == 8
    assert "[DONE]" not in response.text


def test_non_streaming_equals_the_assembled_stream(http: httpx.Client) -> None:
    streamed = sse_frames(http.post("/v1/messages", json=body(stream=True, temperature=0, max_tokens=20)))
    whole = http.post("/v1/messages", json=body(temperature=0, max_tokens=20)).json()
    text = "".join(d["delta"]["text"] for name, d in streamed if name == "content_block_delta")
    assert whole["content"] == [{"type": "text", "text": text}]
    assert whole["usage"]["output_tokens"] == dict(streamed)["message_delta"]["usage"]["output_tokens"] == 20


def test_claude_code_request_gets_a_streamed_answer(http: httpx.Client) -> None:
    request = claude_code_request(MODEL, max_tokens=16)
    assert 45_000 < len(json.dumps(request)) < 60_000
    response = http.post("/v1/messages?beta=true", json=request, headers=CLAUDE_CODE_HEADERS)
    assert response.status_code == 200, response.text
    frames = sse_frames(response)
    names = [name for name, _ in frames]
    assert names[0] == "message_start" and names[-1] == "message_stop"
    # A prompt of this size takes longer than the 50 ms ping interval to process, so pings come first.
    assert names.index("ping") < names.index("message_delta")
    assert dict(frames)["message_delta"]["delta"]["stop_reason"] == "max_tokens"
    counted = http.post("/v1/messages/count_tokens", json={**request, "max_tokens": None, "stream": None})
    # The request asks for caching, so the prompt is split as the API splits it; the parts add up to it.
    started = dict(frames)["message_start"]["message"]["usage"]
    split = ("input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")
    assert counted.json()["input_tokens"] == sum(started[field] for field in split)
    assert {field: started[field] for field in split} == {
        field: dict(frames)["message_delta"]["usage"][field] for field in split
    }


def test_every_history_block_type_is_accepted(http: httpx.Client) -> None:
    image = {
        "type": "image",
        "source": {
            "type": "base64",
            "media_type": "image/png",
            "data": PNG,
        },
    }
    messages = [
        {"role": "system", "content": "An early system note."},
        {
            "role": "user",
            "content": [{"type": "text", "text": "Look", "cache_control": {"type": "ephemeral"}}, image],
        },
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "hmm", "signature": ""},
                {"type": "redacted_thinking", "data": "opaque"},
                {"type": "tool_use", "id": "toolu_1", "name": "search", "input": {"q": "x"}},
                {"type": "tool_use", "id": "toolu_2", "name": "search", "input": {"q": "y"}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "found x"},
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_2",
                    "is_error": True,
                    "content": [
                        {"type": "text", "text": "failed"},
                        {"type": "tool_reference", "tool_name": "grep"},
                    ],
                },
            ],
        },
        {"role": "user", "content": "and now?"},
        {"role": "system", "content": "A system note last."},
    ]
    tools = [{"name": "search", "description": "Search.", "input_schema": {"type": "object"}}]
    response = http.post(
        "/v1/messages", json=body(messages=messages, tools=tools, tool_choice={"type": "auto"})
    )
    assert response.status_code == 200, response.text
    assert response.json()["type"] == "message"


def test_unknown_fields_and_beta_headers_are_ignored(http: httpx.Client) -> None:
    request = body(
        metadata={"user_id": "u"},
        context_management={"edits": []},
        output_config={"effort": "high"},
        thinking={"type": "disabled"},
        some_future_field={"x": 1},
        system=[{"type": "text", "text": "s", "cache_control": {"type": "ephemeral", "ttl": "1h"}}],
    )
    headers = {"anthropic-beta": "a-2025,b-2026", "anthropic-version": "2023-06-01"}
    assert http.post("/v1/messages", json=request, headers=headers).status_code == 200


BAD_REQUESTS = [
    ("model", {"max_tokens": 8, "messages": [{"role": "user", "content": "x"}]}),
    ("model", body(model=5)),
    ("max_tokens", {"model": MODEL, "messages": [{"role": "user", "content": "x"}]}),
    ("max_tokens", body(max_tokens="8")),
    ("max_tokens", body(max_tokens=-1)),
    ("max_tokens", body(max_tokens=1.5)),
    ("messages", body(messages=None)),
    ("messages", body(messages=[])),
    ("messages", body(messages="hi")),
    ("messages.0.role", body(messages=[{"role": "robot", "content": "x"}])),
    ("messages.0.content", body(messages=[{"role": "user", "content": 7}])),
    ("messages.0.content.0", body(messages=[{"role": "user", "content": [{"type": "video"}]}])),
    ("messages.0.content.0.text", body(messages=[{"role": "user", "content": [{"type": "text"}]}])),
    ("temperature", body(temperature=1.5)),
    ("temperature", body(temperature=-0.1)),
    ("top_p", body(top_p=2)),
    ("thinking.budget_tokens", body(max_tokens=2000, thinking={"type": "enabled", "budget_tokens": 10})),
    ("tools.0.input_schema", body(tools=[{"name": "x"}])),
]


@pytest.mark.parametrize(("field", "request_body"), BAD_REQUESTS, ids=[f for f, _ in BAD_REQUESTS])
@pytest.mark.parametrize("stream", [False, True])
def test_invalid_requests_name_the_field(
    http: httpx.Client, field: str, request_body: dict, stream: bool
) -> None:
    if stream:
        request_body = {**request_body, "stream": True}
    response = http.post("/v1/messages", json=request_body)
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/json"  # a plain error, not a stream
    error = response.json()
    assert error["type"] == "error"
    assert error["error"]["type"] == "invalid_request_error"
    assert error["error"]["message"].startswith(f"{field}:") or f"{field}:" in error["error"]["message"]
    assert error["request_id"] == response.headers["request-id"]


def test_invalid_json_is_a_400(http: httpx.Client) -> None:
    response = http.post("/v1/messages", content=b'{"model": ', headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert "not valid JSON" in response.json()["error"]["message"]


def test_prompt_too_long_is_a_400_naming_both_numbers(http: httpx.Client) -> None:
    long_text = "word " * 40_000
    response = http.post("/v1/messages", json=body(messages=[{"role": "user", "content": long_text}]))
    assert response.status_code == 400
    message = response.json()["error"]["message"]
    assert message.startswith("prompt is too long: ") and message.endswith(f"tokens > {CONTEXT} maximum")


def test_a_prompt_surely_too_long_is_refused_from_its_size(http: httpx.Client) -> None:
    """A text that needs more tokens than the context holds even if every token spelled the vocabulary's
    longest entry (24 bytes here) is refused before it is tokenized, in the same words."""
    long_text = "word " * 200_000  # 1,000,000 bytes: at least 41,667 tokens
    response = http.post("/v1/messages", json=body(messages=[{"role": "user", "content": long_text}]))
    assert response.status_code == 400
    message = response.json()["error"]["message"]
    assert message.startswith(f"prompt is too long: 41667 tokens > {CONTEXT} maximum (at least 41667")
    assert http.post("/v1/messages", json=body(max_tokens=2)).status_code == 200


def test_unknown_model_is_a_404(http: httpx.Client) -> None:
    response = http.post("/v1/messages", json=body(model="gpt-nope"))  # any claude-* name is the main model
    assert response.status_code == 404
    assert response.json()["error"] == {
        "type": "not_found_error",
        "message": f"model: gpt-nope (available: {MODEL}; and names matching *haiku*, claude-*)",
    }
    assert http.get("/v1/models/gpt-nope").status_code == 404


def test_unknown_path_and_wrong_method(http: httpx.Client) -> None:
    missing = http.get("/v1/nothing")
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found_error"
    assert missing.headers["request-id"].startswith("req_")
    wrong = http.put("/v1/messages", json=body())
    assert wrong.status_code == 405 and wrong.json()["error"]["type"] == "invalid_request_error"
    assert "POST" in wrong.headers["allow"]


def test_body_over_the_limit_is_a_413(http: httpx.Client) -> None:
    oversized = b'{"pad": "' + b"x" * (32 * 1024 * 1024) + b'"}'
    response = http.post("/v1/messages", content=oversized, headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert response.json()["error"]["type"] == "request_too_large"


def test_models_list_and_lookup(http: httpx.Client) -> None:
    listing = http.get("/v1/models", params={"limit": 1000}).json()
    ids = [MODEL, "claude-opus", "claude-sonnet", "claude-haiku"]  # Claude Code's tiers find the model
    assert [m["id"] for m in listing["data"]] == ids
    assert listing["has_more"] is False and listing["first_id"] == MODEL and listing["last_id"] == ids[-1]
    model = http.get(f"/v1/models/{MODEL}").json()
    assert model["type"] == "model" and model["display_name"] == MODEL and model["created_at"].endswith("Z")
    assert http.get("/v1/models", params={"after_id": ids[-1]}).json()["data"] == []
    assert http.get("/v1/models", params={"limit": 0}).status_code == 400


def test_health_and_probes_need_no_token(server: RunningServer) -> None:
    health = httpx.get(f"{server.url}/health").json()
    assert health["status"] == "ok" and health["models"][0]["id"] == MODEL and health["version"]
    assert httpx.head(f"{server.url}/").status_code == 200
    assert httpx.head(f"{server.url}/api/hello").status_code == 200


def started(response: httpx.Response) -> Iterator[str]:
    """Read a stream up to its message_start, from when its job is queued or running. The caller keeps the
    returned line iterator: an abandoned one is closed when collected, and closes the connection with it."""
    lines = response.iter_lines()
    next(line for line in lines if line == "event: message_start")
    return lines


def active_sequences(server: RunningServer) -> int:
    return httpx.get(f"{server.url}/health").json()["models"][0]["active_sequences"]


def test_client_disconnect_stops_generation(server: RunningServer, http: httpx.Client) -> None:
    # Greedy on this prompt, the tiny model never says end-of-turn: only the disconnect can stop it.
    with http.stream(
        "POST", "/v1/messages", json=body(stream=True, max_tokens=20000, temperature=0)
    ) as response:
        lines = started(response)
        assert active_sequences(server) == 1
    deadline = time.monotonic() + 60
    while active_sequences(server) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert active_sequences(server) == 0
    del lines
    after = http.post("/v1/messages", json=body(max_tokens=3))
    assert after.status_code == 200 and after.json()["usage"]["output_tokens"] == 3


def test_top_k_one_samples_the_greedy_answer(http: httpx.Client) -> None:
    greedy = http.post("/v1/messages", json=body(temperature=0, max_tokens=24)).json()["content"]
    for _ in range(3):
        sampled = http.post("/v1/messages", json=body(temperature=1, top_k=1, max_tokens=24)).json()[
            "content"
        ]
        assert sampled == greedy


def test_other_routes_answer_while_a_generation_runs(server: RunningServer, http: httpx.Client) -> None:
    with http.stream(
        "POST", "/v1/messages", json=body(stream=True, max_tokens=20000, temperature=0)
    ) as response:
        _lines = started(response)
        with server.http() as other:
            assert other.get("/v1/models").status_code == 200
            count = {"model": MODEL, "messages": [{"role": "user", "content": "x"}]}
            assert other.post("/v1/messages/count_tokens", json=count).status_code == 200
        assert active_sequences(server) == 1


def test_one_info_line_per_request_without_prompt_text(server: RunningServer, http: httpx.Client) -> None:
    secret = "zebra-quartz-unique-prompt"
    response = http.post(
        "/v1/messages", json=body(messages=[{"role": "user", "content": secret}], max_tokens=5)
    )
    request_id = response.headers["request-id"]
    deadline = time.monotonic() + 10
    while request_id not in server.log() and time.monotonic() < deadline:
        time.sleep(0.1)
    lines = [line for line in server.log().splitlines() if request_id in line]
    assert len(lines) == 1
    for field in (f"model={MODEL}", "prompt=", "cached=", "output=5", "ttft=", "tok/s=", "stop=max_tokens"):
        assert field in lines[0]
    assert secret not in server.log()
