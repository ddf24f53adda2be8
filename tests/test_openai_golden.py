"""Golden tests of the OpenAI wire package on JSON files, one case a file, laid out as the Anthropic ones:

- `requests/`: a Chat Completions request in; out, the `ChatRequest` that `to_chat` makes of it.
- `bad_requests/`: a request (or a raw `body`) in; out, the status, the `param` and the message (`message`
  exact, or `message_contains`) of the `RequestError` that `parse` raises.
- `streams/`: generation events in, with `include_usage`; out, the SSE lines the stream sends and the
  `chat.completion` assembled for an answer sent whole (none when the generation fails: that answer is an
  error status). Random ids read as numbered placeholders (`chatcmpl-<1>`, `call_<1>`), `created` as 0.
- `same_as_anthropic/`: one conversation written for each API; both make the same `ChatRequest`, and so the
  same prompt, which is what lets a conversation move between the APIs and keep its prefix cache.

A chat request is compared as `dataclasses.asdict` makes it, tuples as lists, with each part also naming
its class (`"part": "Text"`): a `Text` and a `Reasoning` would otherwise read the same. Events are written
`{"event": "<class in daemon.chat.events>", <its fields>}`, a `usage` as the fields of `Usage`.
"""

from __future__ import annotations

import copy
import json
import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from daemon.anthropic import requests as anthropic_requests
from daemon.anthropic import translate as anthropic_translate
from daemon.chat.errors import RequestError
from daemon.openai.requests import parse
from daemon.openai.stream import CompletionStream, assemble
from daemon.openai.translate import to_chat
from tests.golden_cases import generation_event, load, plain

GOLDEN = Path(__file__).parent / "golden" / "openai"
KINDS = ("requests", "bad_requests", "streams", "same_as_anthropic")
RANDOM_ID = re.compile(r"\b(chatcmpl-|call_)[0-9a-f]{24}\b")
CREATED = re.compile(r'"created": ?\d+')


def cases(kind: str) -> list[Path]:
    return sorted((GOLDEN / kind).glob("*.json"))


def normalise(text: str) -> str:
    """`text` with `created` as 0 and each random id as a placeholder numbered in order of first appearance,
    the same id by the same placeholder."""
    placeholders: dict[str, str] = {}
    numbered: Counter[str] = Counter()

    def placeholder(match: re.Match[str]) -> str:
        if match[0] not in placeholders:
            numbered[match[1]] += 1
            placeholders[match[0]] = f"{match[1]}<{numbered[match[1]]}>"
        return placeholders[match[0]]

    return CREATED.sub(lambda match: match[0].rstrip("0123456789") + "0", RANDOM_ID.sub(placeholder, text))


def sse_lines(case: dict[str, Any]) -> list[str]:
    """What the streamed answer sends, each event through `CompletionStream.sse`, as its lines."""
    stream = CompletionStream("m", include_usage=case["include_usage"])
    text = b"".join(stream.sse(generation_event(written)) for written in case["events"]).decode()
    return normalise(text).split("\n")[:-1]


def completion_of(case: dict[str, Any]) -> dict[str, Any]:
    """The answer sent whole: the same events' chunks, assembled, as the route makes it."""
    stream = CompletionStream("m", include_usage=True)
    chunks = [chunk for written in case["events"] for chunk in stream.chunks(generation_event(written))]
    return json.loads(normalise(json.dumps(assemble(chunks))))


def check_request(case: dict[str, Any]) -> None:
    assert plain(to_chat(parse(json.dumps(case["request"]).encode()))) == case["chat"]


def check_bad_request(case: dict[str, Any]) -> None:
    body = case["body"] if "body" in case else json.dumps(case["request"])
    with pytest.raises(RequestError) as raised:
        parse(body.encode())
    assert (raised.value.status, raised.value.param) == (case["status"], case["param"])
    if "message" in case:
        assert raised.value.message == case["message"]
    else:
        assert case["message_contains"] in raised.value.message


def check_stream(case: dict[str, Any]) -> None:
    assert sse_lines(case) == case["sse"]
    fails = case["events"][-1]["event"] == "Failed"
    assert fails != ("completion" in case), "a completion is expected exactly when the stream does not fail"
    if not fails:
        assert completion_of(case) == case["completion"]


def test_every_golden_file_is_a_case_of_a_known_kind() -> None:
    for kind in KINDS:
        assert cases(kind), f"no cases in {GOLDEN / kind}"
    stray = set(GOLDEN.rglob("*")) - {GOLDEN / kind for kind in KINDS} - {p for k in KINDS for p in cases(k)}
    assert not stray, f"files no test reads: {sorted(map(str, stray))}"


@pytest.mark.parametrize("path", cases("requests"), ids=lambda path: path.stem)
def test_request(path: Path) -> None:
    check_request(load(path, {"about", "request", "chat"}))


@pytest.mark.parametrize("path", cases("bad_requests"), ids=lambda path: path.stem)
def test_bad_request(path: Path) -> None:
    case = load(
        path, {"about", "status", "param"}, frozenset({"request", "body", "message", "message_contains"})
    )
    assert ("request" in case) != ("body" in case), f"{path.name}: give one of request and body"
    assert ("message" in case) != ("message_contains" in case), f"{path.name}: give one of the messages"
    check_bad_request(case)


@pytest.mark.parametrize("path", cases("streams"), ids=lambda path: path.stem)
def test_stream(path: Path) -> None:
    check_stream(load(path, {"about", "include_usage", "events", "sse"}, frozenset({"completion"})))


@pytest.mark.parametrize("path", cases("same_as_anthropic"), ids=lambda path: path.stem)
def test_same_chat_request_as_anthropic(path: Path) -> None:
    case = load(path, {"about", "openai", "anthropic"})
    openai_chat = to_chat(parse(json.dumps(case["openai"]).encode()))
    anthropic_body = json.dumps(case["anthropic"]).encode()
    body = anthropic_requests.parse(anthropic_requests.MessagesRequest, anthropic_body)
    assert openai_chat == anthropic_translate.to_chat(body)


def _wrong_chat(case: dict[str, Any]) -> None:
    case["chat"]["messages"][0]["parts"][0]["part"] = "Reasoning"


def _wrong_param(case: dict[str, Any]) -> None:
    case["param"] = "messages"


def _wrong_line(case: dict[str, Any]) -> None:
    case["sse"][0] = case["sse"][0].replace('"role":"assistant"', '"role":"user"')


def _wrong_finish(case: dict[str, Any]) -> None:
    case["completion"]["choices"][0]["finish_reason"] = "length"


@pytest.mark.parametrize(
    ("kind", "name", "check", "spoil"),
    [
        ("requests", "plain", check_request, _wrong_chat),
        ("bad_requests", "seed", check_bad_request, _wrong_param),
        ("streams", "text", check_stream, _wrong_line),
        ("streams", "tool_calls", check_stream, _wrong_finish),
    ],
)
def test_a_wrong_expectation_fails(
    kind: str, name: str, check: Callable[[dict[str, Any]], None], spoil: Callable[[dict[str, Any]], None]
) -> None:
    case = json.loads((GOLDEN / kind / f"{name}.json").read_text())
    check(case)
    spoilt = copy.deepcopy(case)
    spoil(spoilt)
    assert spoilt != case
    with pytest.raises(AssertionError):
        check(spoilt)
