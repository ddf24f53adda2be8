"""Fuzzing of OpenAI's face, `POST /v1/chat/completions`: valid Chat Completions requests, the same mutated,
garbled or replaced with nonsense, and the check its responses must pass (OpenAI's error envelope, a
`chat.completion` or a chunk stream that ends with `data: [DONE]`)."""

from __future__ import annotations

import json

from hypothesis import strategies as st

from daemon.openai.errors import error_type
from tests.fuzz_strategies import (
    JSON_TYPES,
    ROUTE_CHECKS,
    TOO_LONG_OR_OK,
    Case,
    Outcome,
    Target,
    auths,
    encode,
    expected_statuses,
    extra_headers,
    garbled,
    loopback_hosts,
    mutated,
    nonsense_bodies,
    schemas,
    texts,
    tool_names,
    wire_headers,
)

ROUTE = "POST /v1/chat/completions"

contents = texts | st.lists(st.builds(lambda t: {"type": "text", "text": t}, texts), min_size=1, max_size=2)


@st.composite
def valid_chat_requests(draw: st.DrawFn, model: str) -> dict:
    """A Chat Completions request the server must answer (or find too long, or a schema it cannot hold)."""
    messages: list[dict] = []
    if draw(st.booleans()):
        messages.append({"role": draw(st.sampled_from(["system", "developer"])), "content": draw(contents)})
    for _ in range(draw(st.integers(1, 4))):
        messages.append(
            {"role": draw(st.sampled_from(["user", "user", "assistant"])), "content": draw(texts)}
        )
    request: dict = {"model": model, "messages": messages, "max_tokens": draw(st.integers(1, 8))}
    names = draw(st.lists(tool_names, max_size=3, unique=True))
    if names:
        request["tools"] = [
            {
                "type": "function",
                "function": {"name": name, "description": draw(texts), "parameters": draw(schemas)},
            }
            for name in names
        ]
        choice = draw(st.sampled_from(["none", "auto", "required", "named"]))
        request["tool_choice"] = (
            {"type": "function", "function": {"name": names[0]}} if choice == "named" else choice
        )
        request["parallel_tool_calls"] = draw(st.booleans())
    if draw(st.booleans()):
        request["stream"] = True
        if draw(st.booleans()):
            request["stream_options"] = {"include_usage": draw(st.booleans())}
    optional = {
        "temperature": st.floats(0, 2),
        "top_p": st.floats(0, 1),
        "stop": texts | st.lists(texts, max_size=3),
        "response_format": st.sampled_from([{"type": "text"}, {"type": "json_object"}]),
        "user": texts,
    }
    for name, values in optional.items():
        if draw(st.booleans()):
            request[name] = draw(values)
    return request


def chat_bodies(model: str) -> st.SearchStrategy[tuple[bytes, bool]]:
    """(body, whether the request is valid)."""
    valid = valid_chat_requests(model)
    as_sent = st.builds(lambda r, a: encode(r, ascii_only=a), valid, st.booleans())
    changed = valid.flatmap(mutated).flatmap(
        lambda r: st.builds(lambda a: encode(r, ascii_only=a), st.booleans())
    )
    return st.one_of(
        st.tuples(as_sent, st.just(True)),
        st.tuples(as_sent, st.just(True)),
        st.tuples(changed, st.just(False)),
        st.tuples(as_sent.flatmap(garbled), st.just(False)),
        st.tuples(nonsense_bodies, st.just(False)),
    )


@st.composite
def chat_cases(draw: st.DrawFn, target: Target) -> Case:
    body, valid = draw(chat_bodies(target.model))
    auth = draw(auths(target.token))
    host = draw(st.sampled_from(loopback_hosts(target.port)))
    headers = wire_headers(host, auth, draw(st.sampled_from(JSON_TYPES)), draw(extra_headers))
    route = ROUTE + (" (stream)" if b'"stream": true' in body else "")
    return Case(route, "POST", "/v1/chat/completions", headers, body, expected_statuses(auth, valid))


# What the HTTP layer refuses before any route is known (an oversized or malformed head) carries Anthropic's
# envelope, whatever the path.
BEFORE_ROUTING = ("request head exceeds", "malformed HTTP request")


def _error_problems(case: Case, outcome: Outcome) -> list[str]:
    try:
        body = json.loads(outcome.body)
        error = body["error"]
        message = error["message"]
    except (ValueError, KeyError, TypeError):
        return [f"not OpenAI's error envelope: {outcome.body[:200]!r}"]
    if body.get("type") == "error" and str(message).startswith(BEFORE_ROUTING):
        return []
    found = []
    if set(error) != {"message", "type", "param", "code"}:
        found.append(f"error fields {sorted(error)}")
    if error.get("type") != error_type(outcome.status or 0):
        found.append(f"wrong error type for {outcome.status}: {error.get('type')}")
    if not isinstance(message, str) or not message:
        found.append("empty error message")
    refused = outcome.status == 400 and case.expect == TOO_LONG_OR_OK
    if refused and not _may_refuse(case, str(message)):
        found.append(f"a valid request was refused: {message}")
    return found


def _may_refuse(case: Case, message: str) -> bool:
    """A valid request's refusals: too long, a schema the grammar cannot hold, and a JSON answer asked to
    continue an assistant turn that no JSON can begin with."""
    if message.startswith("prompt is too long") or "cannot be enforced" in message:
        return True
    request = json.loads(case.body)
    continued = request["messages"][-1]["role"] == "assistant"
    json_answer = request.get("response_format", {}).get("type") == "json_object"
    return continued and json_answer and "does not fit the output schema" in message


def _answer_problems(case: Case, outcome: Outcome) -> list[str]:
    if outcome.headers.get("content-type", "").startswith("text/event-stream"):
        return _stream_problems(outcome.body)
    try:
        body = json.loads(outcome.body)
    except ValueError:
        return [f"a 200 that is not JSON: {outcome.body[:200]!r}"]
    ok = body.get("object") == "chat.completion" and isinstance(body.get("choices"), list)
    return [] if ok else [f"unexpected 200 body: {outcome.body[:200]!r}"]


def _stream_problems(data: bytes) -> list[str]:
    """Whole `data:` lines (and `:` comments), each chunk JSON, ending with exactly one `data: [DONE]`."""
    try:
        frames = [frame for frame in data.decode().split("\n\n") if frame]
    except UnicodeDecodeError:
        return ["stream is not UTF-8"]
    payloads = [frame.removeprefix("data: ") for frame in frames if not frame.startswith(":")]
    if not payloads or payloads[-1] != "[DONE]" or payloads.count("[DONE]") != 1:
        return [f"stream does not end with one data: [DONE]: {payloads[-2:]}"]
    for frame, payload in zip(frames, payloads[:-1], strict=False):
        if not frame.startswith(("data: ", ":")):
            return [f"malformed SSE frame: {frame[:200]!r}"]
        try:
            chunk = json.loads(payload)
        except ValueError:
            return [f"chunk is not JSON: {payload[:200]!r}"]
        if chunk.get("object") != "chat.completion.chunk" and "error" not in chunk:
            return [f"not a chunk: {payload[:200]!r}"]
    return []


ROUTE_CHECKS["/v1/chat/"] = (_error_problems, _answer_problems)
