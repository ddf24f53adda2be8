"""Clients that misbehave, on raw sockets: oversized or malformed heads, refused bodies on kept-alive
connections, stalled uploads, idle crowds, disconnects at every stage, streams never read, and more requests
than the daemon admits. After each, the daemon still serves and frees every sequence."""

from __future__ import annotations

import contextlib
import inspect
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import hypercorn.protocol
import psutil
import pytest
from hypercorn.protocol.h11 import H11Protocol

from daemon.server import EnvelopeH11Protocol
from tests.conftest import RunningServer, run_server, server_env

TOKEN = "hostile-token-3c9e"
MODEL = "tiny"
CONTEXT = 200_000  # room for a stream that cannot end by itself before the test gives up on it
KEEP_ALIVE = 2.0
BODY_TIMEOUT = 2.0
SETTLED = 60.0  # how long the daemon may take to close or free what a client left behind


@pytest.fixture(scope="module")
def server(tiny_model: Path, tmp_path_factory) -> Iterator[RunningServer]:
    """The daemon with short keep-alive and body timeouts, and a context long enough that a stream cannot end
    by itself within a test."""
    home = tmp_path_factory.mktemp("hostile")
    env = server_env(
        home,
        MLXD_KEEP_ALIVE_TIMEOUT=str(KEEP_ALIVE),
        MLXD_BODY_TIMEOUT=str(BODY_TIMEOUT),
        MLXD_PING_INTERVAL="0.5",
        MLXD_STREAM_BUFFER_EVENTS="256",
    )
    args = ("--model", str(tiny_model), "--model-name", MODEL, "--context-length", str(CONTEXT))
    with run_server(home, *args, token=TOKEN, env=env) as running:
        yield running


@pytest.fixture
def port(server: RunningServer) -> Iterator[int]:
    yield int(server.url.rsplit(":", 1)[1])
    # Whatever a test did, the daemon serves afterwards and holds no sequence.
    assert settled(server), server.log()[-3000:]
    with server.http() as http:
        reply = http.post("/v1/messages", json=message(max_tokens=2))
    assert reply.status_code == 200 and reply.json()["usage"]["output_tokens"] == 2


def message(**overrides) -> dict:
    return {"model": MODEL, "max_tokens": 8, "messages": [{"role": "user", "content": "Hello"}], **overrides}


def active_sequences(server: RunningServer) -> int:
    return httpx.get(f"{server.url}/health", timeout=30).json()["models"][0]["active_sequences"]


def settled(server: RunningServer) -> bool:
    """Eventually (within SETTLED seconds) no sequence is active."""
    deadline = time.monotonic() + SETTLED
    while active_sequences(server) and time.monotonic() < deadline:
        time.sleep(0.1)
    return active_sequences(server) == 0


def connect(port: int, **options: int) -> socket.socket:
    sock = socket.socket()
    for option, value in options.items():
        sock.setsockopt(socket.SOL_SOCKET, getattr(socket, option), value)
    sock.settimeout(SETTLED)
    sock.connect(("127.0.0.1", port))
    return sock


def head(method: str, path: str, body_length: int | None = None, token: str = TOKEN) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", f"x-api-key: {token}"]
    if body_length is not None:
        lines += ["Content-Type: application/json", f"Content-Length: {body_length}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def post(body: dict) -> bytes:
    data = json.dumps(body).encode()
    return head("POST", "/v1/messages", len(data)) + data


def read_to_close(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (or SETTLED seconds pass)."""
    received = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            received += chunk
    return received


def read_until(sock: socket.socket, marker: bytes) -> bytes:
    received = b""
    while marker not in received:
        chunk = sock.recv(65536)
        assert chunk, f"closed before {marker!r}: {received[-500:]!r}"
        received += chunk
    return received


def envelope_of(response: bytes) -> tuple[int, dict[str, str], dict]:
    """Status, headers and JSON body of one raw HTTP/1.1 response."""
    head_bytes, _, body = response.partition(b"\r\n\r\n")
    status_line, *header_lines = head_bytes.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in header_lines)
    return int(status_line.split()[1]), headers, json.loads(body)


@pytest.mark.parametrize(
    ("request_head", "status", "words"),
    [
        (b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: " + b"a" * 20_000, 431, "16384-byte limit"),
        (b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Bad: a\x00b\r\n\r\n", 400, "malformed HTTP request"),
        (b"GARBAGE\r\n\r\n", 400, "malformed HTTP request"),
    ],
    ids=["head-too-large", "nul-in-header", "bad-request-line"],
)
def test_errors_before_the_app_are_envelopes(port: int, request_head: bytes, status: int, words: str) -> None:
    with connect(port) as sock:
        # The oversized head is never finished: its first 20 KB are over the limit already.
        sock.sendall(request_head)
        got, headers, body = envelope_of(read_to_close(sock))
    assert got == status
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    assert words in body["error"]["message"]
    assert body["request_id"] == headers["request-id"] and headers["connection"] == "close"


def test_hypercorn_still_looks_up_the_protocol_the_daemon_replaces() -> None:
    # The envelope for Hypercorn's own refusals replaces `H11Protocol._send_error_response(status_code)` in
    # a subclass installed as `hypercorn.protocol.H11Protocol`; if Hypercorn renames either, say so here.
    assert list(inspect.signature(H11Protocol._send_error_response).parameters) == ["self", "status_code"]
    assert "H11Protocol(" in inspect.getsource(hypercorn.protocol.ProtocolWrapper.__init__)
    assert issubclass(EnvelopeH11Protocol, H11Protocol)


def test_a_refused_body_leaves_its_connection_usable(server: RunningServer, port: int) -> None:
    # One connection: each 401 (sent before the body is read) must leave it fit for the next request.
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    body = json.dumps(message(messages=[{"role": "user", "content": "x" * 500_000}]))
    with httpx.Client(base_url=server.url, limits=limits, timeout=SETTLED) as http:
        for _ in range(8):
            refused = http.post(
                "/v1/messages",
                content=body,
                headers={"x-api-key": "wrong", "content-type": "application/json"},
            )
            assert refused.status_code == 401 and "connection" not in refused.headers
            answered = http.get("/v1/models", headers={"x-api-key": TOKEN})
            assert answered.status_code == 200


def test_a_body_too_slow_for_a_refusal_closes_its_connection(port: int) -> None:
    with connect(port) as sock:
        sock.sendall(head("POST", "/v1/messages", 1000, token="wrong") + b"{")
        got, headers, _ = envelope_of(read_to_close(sock))
    assert got == 401 and headers["connection"] == "close"


def test_stalled_uploads_are_cut_and_lock_nobody_out(server: RunningServer, port: int) -> None:
    stalled = []
    try:
        for _ in range(200):
            stalled.append(connect(port))
            stalled[-1].sendall(head("POST", "/v1/messages", 1000) + b'{"model": "tiny", ')
        with server.http() as http:
            assert http.post("/v1/messages", json=message(max_tokens=2)).status_code == 200
        answers = [read_to_close(sock) for sock in stalled]
    finally:
        for sock in stalled:
            sock.close()
    for answer in answers:
        status, headers, body = envelope_of(answer)
        assert status == 408 and headers["connection"] == "close"
        assert body["error"]["type"] == "invalid_request_error"
        assert (
            body["error"]["message"]
            == f"request body did not arrive within {BODY_TIMEOUT:g}s (body_timeout): send it faster"
        )


def test_idle_connections_lock_nobody_out_and_are_closed(server: RunningServer, port: int) -> None:
    idle: list[socket.socket] = []
    try:
        for _ in range(20):  # kept alive after a request
            idle.append(connect(port))
            idle[-1].sendall(head("GET", "/health"))
            read_until(idle[-1], b'"status":"ok"')
        idle += [connect(port) for _ in range(280)]  # never a request
        with server.http() as http:
            assert http.post("/v1/messages", json=message(max_tokens=2)).status_code == 200
        rest = [read_to_close(sock) for sock in idle]  # the daemon closes each, sending nothing more
    finally:
        for sock in idle:
            sock.close()
    assert not [answer for answer in rest if b"HTTP/1.1" in answer]
    assert all(answer == b"" for answer in rest[20:])


def long_stream(**overrides) -> bytes:
    # Sampled, not greedy: greedy, this model writes bytes that never complete a character, so no text.
    return post(message(stream=True, max_tokens=CONTEXT - 1000, **overrides))


LONG_PROMPT = "lighthouse " * 8_000  # about 56k tokens of this tokenizer: seconds of prefill

# What to send, and what to read before hanging up (nothing: hang up at once).
DISCONNECTS = {
    "mid-headers": (head("POST", "/v1/messages", 100)[:40], None),
    "mid-body": (post(message())[:-10], None),
    "after-message_start": (long_stream(), b"event: message_start"),
    "mid-stream": (long_stream(), b"event: content_block_delta"),
    "during-prefill": (
        long_stream(messages=[{"role": "user", "content": LONG_PROMPT}]),
        b"event: message_start",
    ),
}


@pytest.mark.parametrize("stage", DISCONNECTS)
def test_a_disconnect_at_any_stage_frees_everything(port: int, stage: str) -> None:
    sent, read_first = DISCONNECTS[stage]
    with connect(port) as sock:
        sock.sendall(sent)
        if read_first is not None:
            read_until(sock, read_first)
    # The port fixture then checks that the daemon frees the sequence and answers the next request.


def test_a_stream_never_read_is_cut_and_its_sequence_freed(server: RunningServer, port: int) -> None:
    rss_before = psutil.Process(server.process.pid).memory_info().rss
    with connect(port, SO_RCVBUF=4096) as sock:
        sock.sendall(long_stream())
        read_until(sock, b"event: message_start")
        # Never read again; the socket stays open until the sequence is freed.
        assert settled(server), "the stream's sequence still runs while nobody reads it"
        growth = psutil.Process(server.process.pid).memory_info().rss - rss_before
    assert growth < 256 * 2**20


def test_requests_past_the_admission_limits_are_overloaded_at_once(tiny_model: Path, tmp_path: Path) -> None:
    env = server_env(tmp_path, MLXD_MAX_SEQUENCES="1", MLXD_MAX_QUEUED="1")
    with run_server(tmp_path, "--model", str(tiny_model), "--model-name", MODEL, env=env) as server:
        port = int(server.url.rsplit(":", 1)[1])
        streams = [connect(port) for _ in range(2)]  # one generating, one queued
        try:
            for sock in streams:
                sock.sendall(post(message(stream=True, max_tokens=30_000)))
                read_until(sock, b"event: message_start")
            refused = httpx.post(f"{server.url}/v1/messages", json=message(), timeout=SETTLED)
        finally:
            for sock in streams:
                sock.close()
        assert refused.status_code == 529
        assert refused.json()["error"]["type"] == "overloaded_error"
        assert settled(server)
