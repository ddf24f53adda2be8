"""The soak's traffic: the mix of kinds of request, and the client that draws from it, sends each and
judges how it ended."""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass
from typing import Any

import httpx

from benchmarks.client import Endpoint, _events
from benchmarks.prompts import filler
from benchmarks.soak.options import Options

# How often each kind of request is drawn. `cancel` closes a stream mid-way; `abandon` hangs up on a
# non-streamed request before its answer; the last three are bad requests whose errors are provoked.
MIX = {
    "stream-short": 5,
    "stream-long": 2,
    "plain-short": 2,
    "plain-long": 1,
    "cancel": 3,
    "abandon": 1,
    "tools-any": 2,
    "tools-auto": 1,
    "bad-json": 1,
    "unknown-model": 1,
    "wrong-type": 1,
}
# What each bad request must be answered with: anything else is a failure.
EXPECTED_ERRORS = {
    "bad-json": (400, "invalid_request_error"),
    "unknown-model": (404, "not_found_error"),
    "wrong-type": (400, "invalid_request_error"),
}
WRONG_TYPES = (
    ("max_tokens", "sixteen"),
    ("messages", "hello"),
    ("temperature", [0.5]),
    ("system", 42),
    ("tools", {"name": "get_weather"}),
)
TOOLS = [
    {
        "name": "get_weather",
        "description": "The weather forecast for a city.",
        "input_schema": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "The city's name."},
                "days": {"type": "integer", "minimum": 1, "maximum": 14},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city"],
        },
    }
]


@dataclass
class Answer:
    """How one request ended, as its client saw it."""

    result: str  # a stop reason, "cancelled", "abandoned", an error's status and type, or what went wrong
    failure: bool
    ttft_s: float | None = None  # streams only: from sending to the first content_block_delta


@dataclass
class Outcome:
    kind: str  # one of MIX
    result: str  # as in Answer
    failure: bool
    seconds: float
    ttft_s: float | None


class _Overdue(Exception):
    """A stream that kept the connection alive (pings) past the request timeout."""


class Client:
    """One client's loop: a request of a randomly drawn kind at a time, until the stop time or its count."""

    def __init__(self, endpoint: Endpoint, options: Options, number: int, stop_at: float, out: list[Outcome]):
        self.endpoint = endpoint
        self.options = options
        self.number = number
        self.stop_at = stop_at
        self.out = out
        self.rng = random.Random(f"{options.seed}-{number}")

    def run(self) -> None:
        kinds, weights = list(MIX), list(MIX.values())
        with self.endpoint.client() as http:
            for n in range(self.options.max_requests):
                if time.monotonic() >= self.stop_at:
                    return
                kind = self.rng.choices(kinds, weights)[0]
                sent = time.perf_counter()
                answer = self.one(http, kind, n)
                self.out.append(
                    Outcome(kind, answer.result, answer.failure, time.perf_counter() - sent, answer.ttft_s)
                )

    def one(self, http: httpx.Client, kind: str, n: int) -> Answer:
        try:
            return self.send(http, kind, n)
        except httpx.TimeoutException:
            return Answer("abandoned", False) if kind == "abandon" else Answer("timeout", True)
        except _Overdue:
            return Answer("timeout (only pings)", True)
        except httpx.TransportError as error:
            return Answer(f"connection error ({type(error).__name__})", True)
        except Exception as error:  # a body unlike the API's (not JSON, a field missing): a failure too
            return Answer(f"client error ({type(error).__name__}: {error})"[:160], True)

    def send(self, http: httpx.Client, kind: str, n: int) -> Answer:
        match kind:
            case "stream-short" | "stream-long":
                return self.stream(http, self.generation(n, long=kind.endswith("long")))
            case "plain-short" | "plain-long":
                return self.plain(http, self.generation(n, long=kind.endswith("long")))
            case "cancel":
                return self.stream(http, self.generation(n), cancel_after=self.rng.randint(0, 8))
            case "abandon":
                # The longest generation there is, so that the hang-up mostly comes before the answer.
                body = self.generation(n, long=True) | {"max_tokens": self.options.max_tokens}
                return self.plain(http, body, hang_up=self.rng.uniform(0.02, 0.5))
            case "tools-any" | "tools-auto":
                return self.tools(http, n, {"type": kind.removeprefix("tools-")})
            case "bad-json":
                # No proper prefix of a JSON object is valid JSON.
                whole = json.dumps(self.generation(n)).encode()
                return self.bad(http, kind, whole[: self.rng.randrange(len(whole))])
            case "unknown-model":
                return self.bad(http, kind, json.dumps(self.generation(n) | {"model": f"soak-unknown-{n}"}))
            case "wrong-type":
                field, value = self.rng.choice(WRONG_TYPES)
                return self.bad(http, kind, json.dumps(self.generation(n) | {field: value}))
        raise LookupError(f"no such kind of request: {kind}")

    def generation(self, n: int, *, long: bool | None = None) -> dict[str, Any]:
        long = self.rng.random() < 0.3 if long is None else long
        prompt = filler(self.options.short_words, f"{self.options.seed}-{self.number}-{n}")
        if long:
            # Long prompts share their opening document, so prefix reuse runs under concurrency too.
            prompt = f"{filler(self.options.long_words, f'{self.options.seed}-document')}\n\n{prompt}"
        return {
            "model": self.endpoint.model,
            "max_tokens": self.rng.randint(1, self.options.max_tokens),
            "temperature": self.rng.choice((0.0, 0.7, 1.0)),
            "messages": [{"role": "user", "content": prompt}],
        }

    def stream(self, http: httpx.Client, body: dict[str, Any], cancel_after: int | None = None) -> Answer:
        """A streamed request, read to its `message_stop`, or closed after `cancel_after` deltas."""
        sent = time.perf_counter()
        first = stop_reason = None
        deltas = 0
        with http.stream("POST", "/v1/messages", json=body | {"stream": True}) as response:
            if response.status_code != 200:
                return Answer(_error_label(response.read(), response.status_code), True)
            for arrived, event in _events(response.iter_lines()):
                if arrived - sent > self.options.request_timeout_s:
                    raise _Overdue
                if cancel_after is not None and deltas >= cancel_after:
                    return Answer("cancelled", False, first)  # leaving the block closes the connection
                match event.get("type"):
                    case "content_block_delta":
                        first = first or arrived - sent
                        deltas += 1
                    case "message_delta":
                        stop_reason = event["delta"].get("stop_reason")
                    case "error":
                        return Answer(f"stream error {event['error'].get('type')}", True, first)
                    case "message_stop":
                        return Answer(f"stop {stop_reason}", stop_reason is None, first)
        return Answer("stream without message_stop", True, first)

    def plain(self, http: httpx.Client, body: dict[str, Any], hang_up: float | None = None) -> Answer:
        """A non-streamed request; with `hang_up`, the client gives up after that many seconds."""
        timeout = httpx.Timeout(
            self.options.request_timeout_s, read=hang_up or self.options.request_timeout_s
        )
        response = http.post("/v1/messages", json=body | {"stream": False}, timeout=timeout)
        if response.status_code != 200:
            return Answer(_error_label(response.content, response.status_code), True)
        message = response.json()
        if message.get("type") != "message" or not message.get("stop_reason"):
            return Answer("200 without a whole message", True)
        return Answer(f"stop {message['stop_reason']}", False)

    def tools(self, http: httpx.Client, n: int, choice: dict[str, str]) -> Answer:
        body = self.generation(n) | {"tools": TOOLS, "tool_choice": choice}
        body["messages"][0]["content"] += "\n\nWhat is the weather in Paris for the next three days?"
        return self.stream(http, body) if self.rng.random() < 0.5 else self.plain(http, body)

    def bad(self, http: httpx.Client, kind: str, content: bytes | str) -> Answer:
        """A bad request must get its expected status and Anthropic error type, and nothing else."""
        response = http.post("/v1/messages", content=content, headers={"content-type": "application/json"})
        label = _error_label(response.content, response.status_code)
        status, error_type = EXPECTED_ERRORS[kind]
        return Answer(label, label != f"{status} {error_type}")


def _error_label(content: bytes, status: int) -> str:
    """`<status> <error type>` from an Anthropic error envelope, or `<status> no envelope`."""
    try:
        body = json.loads(content)
        error_type = body["error"]["type"] if body.get("type") == "error" else "no envelope"
    except (ValueError, KeyError, TypeError, AttributeError):
        error_type = "no envelope"
    return f"{status} {error_type}"
