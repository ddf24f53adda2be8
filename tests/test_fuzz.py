"""Seeded, bounded fuzzing of every route over the wire: whatever is sent, a documented status with the error
envelope, never a 500 or a hang, and the server serving on. `benchmarks/fuzz.py` is the long run."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests.conftest import RunningServer, run_server
from tests.fuzz_openai import chat_cases
from tests.fuzz_strategies import (
    CASE_TIMEOUT,
    Case,
    Target,
    admin_cases,
    contract_cases,
    messages_cases,
    models_cases,
    problems,
    send,
)

MODEL = "tiny"
TOKEN = "fuzz-token"
# A small context clamps any max_tokens, so that no generation here runs long on a CPU.
CONTEXT = 512


def fuzz(examples: int):
    # No shrinking: against a live server it can take minutes, and the failing case is printed whole.
    return settings(
        max_examples=examples,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],
        report_multiple_bugs=False,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    )


@pytest.fixture(scope="module")
def server(tiny_model: Path, tmp_path_factory) -> Iterator[RunningServer]:
    home = tmp_path_factory.mktemp("fuzz")
    args = ("--model", str(tiny_model), "--model-name", MODEL, "--context-length", str(CONTEXT))
    with run_server(home, *args, token=TOKEN) as running:
        yield running


@pytest.fixture(scope="module")
def target(server: RunningServer) -> Target:
    return Target(MODEL, TOKEN, int(server.url.rsplit(":", 1)[1]))


@pytest.fixture(scope="module")
def client(server: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=CASE_TIMEOUT) as http:
        yield http


def check(client: httpx.Client, case: Case) -> None:
    outcome = send(client, case)
    found = problems(case, outcome)
    assert not found, f"{case.method} {case.path} {found}\nheaders {case.headers}\nbody {case.body!r:.2000}"


# (route family, its cases, how many): about half a minute in all on two cores.
FUZZED = [
    ("messages", messages_cases, 300),
    ("count_tokens", partial(messages_cases, count_tokens=True), 200),
    ("models", models_cases, 200),
    ("admin", admin_cases, 150),
    ("content_type_and_host", contract_cases, 100),  # the request hooks' contract: 400 and 403
    ("chat_completions", chat_cases, 200),
]


@pytest.mark.parametrize(("cases", "examples"), [f[1:] for f in FUZZED], ids=[f[0] for f in FUZZED])
def test_every_answer_is_documented(
    client: httpx.Client, target: Target, cases: Callable[[Target], st.SearchStrategy[Case]], examples: int
) -> None:
    @fuzz(examples)
    @given(st.data())
    def run(data: st.DataObject) -> None:
        check(client, data.draw(cases(target)))

    run()


def test_still_serving_afterwards(server: RunningServer, client: httpx.Client) -> None:
    assert httpx.get(f"{server.url}/health").json()["status"] == "ok"
    request = {"model": MODEL, "max_tokens": 3, "messages": [{"role": "user", "content": "Hello"}]}
    answer = client.post("/v1/messages", json=request, headers={"x-api-key": TOKEN})
    assert answer.status_code == 200 and answer.json()["usage"]["output_tokens"] == 3
