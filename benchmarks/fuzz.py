"""The long fuzz (`python -m benchmarks.fuzz --examples 10000`): tests/test_fuzz.py's cases and checks against
an mlxd it starts on the tiny test model; prints cases and statuses per route, exits 1 on any failure."""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

import httpx
from hypothesis import HealthCheck, Phase, given, seed, settings

from tests.conftest import MODELS, RunningServer, run_server
from tests.fuzz_openai import chat_cases
from tests.fuzz_strategies import CASE_TIMEOUT, Case, Target, all_cases, huge_prompt_case, problems, send
from tests.models import endless_model

MODEL = "tiny"
TOKEN = "fuzz-token"
SHOWN_FAILURES = 20
HUGE_PROMPT_EVERY = 500  # cases; each takes seconds to tokenize


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.fuzz", description=__doc__)
    parser.add_argument("--examples", type=int, default=10_000, help="cases to send (default 10000)")
    parser.add_argument("--seed", type=int, default=0, help="hypothesis seed (default 0)")
    parser.add_argument(
        "--context-length", type=int, default=512, help="the server's context: it caps every generation"
    )
    args = parser.parse_args(argv)
    model = MODELS / "tiny-endless-v1"
    if not (model / "config.json").exists():
        endless_model(model)
    with tempfile.TemporaryDirectory(prefix="mlxd-fuzz-") as home:
        server_args = (
            "--model",
            str(model),
            "--model-name",
            MODEL,
            "--context-length",
            str(args.context_length),
        )
        with run_server(Path(home), *server_args, token=TOKEN) as server:
            return _fuzz(server, args.examples, args.seed)


def _fuzz(server: RunningServer, examples: int, fuzz_seed: int) -> int:
    target = Target(MODEL, TOKEN, int(server.url.rsplit(":", 1)[1]))
    statuses: dict[str, Counter[int | str]] = defaultdict(Counter)
    seconds: dict[str, list[float]] = defaultdict(list)
    failures: list[tuple[Case, list[str]]] = []
    started = time.monotonic()
    with httpx.Client(base_url=server.url, timeout=CASE_TIMEOUT) as client:

        def check(case: Case) -> None:
            outcome = send(client, case)
            statuses[case.route][outcome.status or "no answer"] += 1
            seconds[case.route].append(outcome.seconds)
            if found := problems(case, outcome):
                failures.append((case, found))

        @seed(fuzz_seed)
        @settings(
            max_examples=examples,
            database=None,
            deadline=None,
            phases=[Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(all_cases(target) | chat_cases(target))
        def run(case: Case) -> None:
            check(case)
            if sum(map(len, seconds.values())) % HUGE_PROMPT_EVERY == 0:
                check(huge_prompt_case(target))

        run()
        healthy = _still_serving(server, client)
    wall = time.monotonic() - started
    _report(statuses, seconds, failures, wall, server)
    if not healthy:
        print("\nFAILED: the server no longer answers a normal request")
    return 1 if failures or not healthy else 0


def _still_serving(server: RunningServer, client: httpx.Client) -> bool:
    request = {"model": MODEL, "max_tokens": 3, "messages": [{"role": "user", "content": "Hello"}]}
    try:
        answer = client.post("/v1/messages", json=request, headers={"x-api-key": TOKEN})
        return answer.status_code == 200 and httpx.get(f"{server.url}/health").json()["status"] == "ok"
    except httpx.HTTPError:
        return False


def _report(
    statuses: dict[str, Counter[int | str]],
    seconds: dict[str, list[float]],
    failures: list[tuple[Case, list[str]]],
    wall: float,
    server: RunningServer,
) -> None:
    total = sum(sum(counts.values()) for counts in statuses.values())
    print(f"{total} cases in {wall:.0f}s ({total / wall:.1f}/s), {len(failures)} failures\n")
    print(f"{'route':<48} {'cases':>6} {'mean s':>7} {'max s':>7}  statuses")
    for route in sorted(statuses):
        counts = statuses[route]
        spent = seconds[route]
        shown = ", ".join(f"{status}: {n}" for status, n in sorted(counts.items(), key=str))
        mean = sum(spent) / len(spent)
        print(f"{route:<48} {sum(counts.values()):>6} {mean:>7.3f} {max(spent):>7.2f}  {shown}")
    overall: Counter[int | str] = sum(statuses.values(), Counter())
    print("\nall statuses: " + ", ".join(f"{s}: {n}" for s, n in sorted(overall.items(), key=str)))
    tracebacks = server.log().count("Traceback (most recent call last)")
    print(f"tracebacks in the server log: {tracebacks}")
    # One example of each distinct problem, with how often it came up.
    kinds = Counter(f"{case.route}: {found[0][:120]}" for case, found in failures)
    shown: set[str] = set()
    for case, found in failures:
        kind = f"{case.route}: {found[0][:120]}"
        if kind in shown or len(shown) == SHOWN_FAILURES:
            continue
        shown.add(kind)
        print(f"\nFAILURE x{kinds[kind]} {case.method} {case.path[:200]}: {'; '.join(found)}")
        print(f"  headers {[(k, v[:80]) for k, v in case.headers]}")
        print(f"  body {case.body[:600] if case.body else case.body!r}")
    if len(kinds) > SHOWN_FAILURES:
        print(f"\n... and {len(kinds) - SHOWN_FAILURES} more kinds of failure")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
