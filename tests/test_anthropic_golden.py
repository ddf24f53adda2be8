"""Golden tests of the Anthropic wire package on JSON files, one case a file, as table tests over test data:

- `requests/`: a Messages (or count_tokens) request in; out, the `ChatRequest` that `to_chat` makes of it and
  whether `cache_requested` holds.
- `bad_requests/`: a request in; out, the status and message (`message` exact, or `message_contains`) of the
  `RequestError` that `parse` raises.
- `streams/`: generation events in, with the `MessageStream` options; out, the SSE text the stream sends
  and the Message assembled for a non-streamed answer (none when the generation fails: that answer is an
  error status). Random ids (`msg_…`, `toolu_…`) read as numbered placeholders (`msg_<1>`) in both.

A chat request is compared in the form of `dataclasses.asdict`, tuples as lists, with each part also naming
its class (`"part": "Text"`): a `Text` and a `Reasoning` would otherwise read the same.

Events are written `{"event": "<class in daemon.chat.events>", <its fields>}`, a `usage` as the fields of
`Usage`; `{"event": "message_start", "usage": …}` is the route's own `message_start`, sent from the prompt's
length when the engine is slow to admit the prompt.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from daemon.anthropic.requests import CountTokensRequest, MessagesRequest, parse
from daemon.anthropic.stream import Event, MessageStream, assemble, encode_sse
from daemon.anthropic.translate import cache_requested, to_chat
from daemon.chat.errors import RequestError
from daemon.chat.events import (
    Usage,
)
from tests.golden_cases import generation_event, load, plain

GOLDEN = Path(__file__).parent / "golden" / "anthropic"
KINDS = ("requests", "bad_requests", "streams")

ENDPOINTS: dict[str, type[CountTokensRequest]] = {
    "messages": MessagesRequest,
    "count_tokens": CountTokensRequest,
}
ROUTE_START = "message_start"
RANDOM_ID = re.compile(r"\b(msg|toolu)_[0-9a-f]{24}\b")


def files(kind: str) -> list[Path]:
    return sorted((GOLDEN / kind).glob("*.json"))


def cases(kind: str) -> list[Any]:
    """One test parameter per case file, named by the file."""
    return [pytest.param(path, id=path.stem) for path in files(kind)]


def body_bytes(case: dict[str, Any]) -> bytes:
    """The body as sent: `body`, text sent as it is (JSON that is not valid), or `request` serialized."""
    return case["body"].encode() if "body" in case else json.dumps(case["request"]).encode()


def sse_text(case: dict[str, Any]) -> str:
    """What the streamed answer sends: each event through `MessageStream.sse`."""
    stream = MessageStream(**case["stream"])
    chunks = [
        encode_sse(stream.message_start(Usage(**written["usage"])))
        if written["event"] == ROUTE_START
        else stream.sse(generation_event(written))
        for written in case["events"]
    ]
    return b"".join(chunks).decode()


def assembled(case: dict[str, Any]) -> Event:
    """The non-streamed answer: the same events' stream events, assembled."""
    stream = MessageStream(**case["stream"])
    frames: list[Event] = []
    for written in case["events"]:
        if written["event"] == ROUTE_START:
            frames.append(stream.message_start(Usage(**written["usage"])))
        else:
            frames += stream.events(generation_event(written))
    return assemble(frames)


def normalise(text: str) -> str:
    """`text` with each random id replaced by a placeholder numbered in order of first appearance, the
    same id by the same placeholder."""
    placeholders: dict[str, str] = {}
    numbered: Counter[str] = Counter()

    def placeholder(match: re.Match[str]) -> str:
        if match[0] not in placeholders:
            numbered[match[1]] += 1
            placeholders[match[0]] = f"{match[1]}_<{numbered[match[1]]}>"
        return placeholders[match[0]]

    return RANDOM_ID.sub(placeholder, text)


def test_every_golden_file_is_a_case_of_a_known_kind() -> None:
    for kind in KINDS:
        assert files(kind), f"no cases in {GOLDEN / kind}"
    stray = set(GOLDEN.rglob("*")) - {GOLDEN / kind for kind in KINDS} - {p for k in KINDS for p in files(k)}
    assert not stray, f"files no test reads: {sorted(map(str, stray))}"


@pytest.mark.parametrize("path", cases("requests"))
def test_request(path: Path) -> None:
    case = load(
        path, {"about", "endpoint", "request", "chat", "cache_requested"}, optional={"strip_billing_header"}
    )
    body = parse(ENDPOINTS[case["endpoint"]], body_bytes(case))
    chat = to_chat(body, strip_billing_header=case.get("strip_billing_header", True))
    assert plain(chat) == case["chat"]
    assert cache_requested(body) is case["cache_requested"]


@pytest.mark.parametrize("path", cases("bad_requests"))
def test_bad_request(path: Path) -> None:
    case = load(
        path, {"about", "endpoint", "status"}, optional={"request", "body", "message", "message_contains"}
    )
    assert ("request" in case) != ("body" in case), f"{path.name}: give one of request and body"
    assert ("message" in case) != ("message_contains" in case), (
        f"{path.name}: give one of message and message_contains"
    )
    with pytest.raises(RequestError) as raised:
        parse(ENDPOINTS[case["endpoint"]], body_bytes(case))
    assert raised.value.status == case["status"]
    if "message" in case:
        assert raised.value.message == case["message"]
    else:
        assert case["message_contains"] in raised.value.message


@pytest.mark.parametrize("path", cases("streams"))
def test_stream(path: Path) -> None:
    case = load(path, {"about", "stream", "events", "sse"}, optional={"message"})
    assert normalise(sse_text(case)) == "".join(f"{line}\n" for line in case["sse"])
    fails = case["events"][-1]["event"] == "Failed"
    assert fails != ("message" in case), (
        f"{path.name}: a Message is expected exactly when the stream does not fail"
    )
    if not fails:
        assert json.loads(normalise(json.dumps(assembled(case)))) == case["message"]
