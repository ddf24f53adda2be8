"""Speculative decoding (prompt lookup) inside the continuous batch, and a lone sequence's own step.

The engine-level tests drive mlxd's `Generator` on real tiny models and compare it with mlx-lm's own
`BatchGenerator`: greedy output token for token, alone and in a batch, with stops, limits and logits
processors; sampled output by its distribution. The end-to-end tests drive the real server."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import mlx.core as mx
import mlx_lm
import pytest
from mlx_lm.generate import BatchGenerator

from daemon.engine.constraints import Ban
from daemon.engine.decode_batch import Generator
from daemon.engine.lookup import PromptLookup
from daemon.engine.sampling import SamplingParams
from daemon.engine.speculation import Speculation, verify
from tests.conftest import COPY, run_server, server_env

GREEDY = SamplingParams(temperature=0.0)
# Prompts that repeat themselves, so that lookup has something to propose, and a random model's greedy
# output, which falls into loops, too.
PATTERN = [5, 9, 200, 31, 77, 13, 99, 5, 9, 200, 31, 42]
PROMPTS = [PATTERN * 3, PATTERN[:7] * 2 + [3, 4], list(range(50, 90)) + PATTERN]


@pytest.fixture(scope="module")
def random_model(tiny_model: Path):
    model, _ = mlx_lm.load(str(tiny_model))
    return model


def generate(
    model,
    prompts: list[list[int]],
    max_tokens: list[int],
    *,
    speculate: bool,
    engine: type = Generator,
    sampling: SamplingParams = GREEDY,
    stop: list[int] | None = None,
    processors=None,
) -> tuple[list[list[int]], list[Speculation]]:
    """Every sequence's output tokens, run together to their ends, and their speculation counts."""
    generator = engine(
        model,
        stop_tokens=[[token] for token in stop or []],
        completion_batch_size=8,
        prefill_batch_size=8,
        sampler=sampling.sampler(),
    )
    uids = generator.insert(
        prompts, max_tokens, logits_processors=[processors() if processors else [] for _ in prompts]
    )
    speculations = []
    if speculate:
        for uid, prompt in zip(uids, prompts, strict=True):
            speculations.append(Speculation(PromptLookup(prompt), sampling, most=8))
            generator.speculate(uid, speculations[-1])
    output: dict[int, list[int]] = {uid: [] for uid in uids}
    ended = set()
    while len(ended) < len(uids):
        for response in generator.next_generated():
            output[response.uid].append(response.token)
            if response.finish_reason is not None:
                ended.add(response.uid)
                # What the prompt cache will store: the tokens and the KV state agree.
                assert len(response.all_tokens) == response.prompt_cache[0].offset
    generator.close()
    return [output[uid] for uid in uids], speculations


@pytest.mark.parametrize("together", [False, True], ids=["alone", "batch"])
def test_greedy_output_is_the_same_with_speculation_and_without(random_model, together: bool) -> None:
    prompts, limits = (PROMPTS, [60, 25, 80]) if together else (PROMPTS[:1], [60])
    reference, _ = generate(random_model, prompts, limits, speculate=False, engine=BatchGenerator)
    plain, _ = generate(random_model, prompts, limits, speculate=False)
    speculated, counts = generate(random_model, prompts, limits, speculate=True)
    assert plain == reference
    assert speculated == reference
    assert sum(c.accepted for c in counts) > 0  # the comparison is of real speculation


def test_stops_and_limits_inside_accepted_runs_end_where_they_would(random_model) -> None:
    reference, _ = generate(random_model, PROMPTS, [80, 80, 80], speculate=False)
    stop = reference[0][20]  # a token the first sequence reaches inside its loop
    for limit in range(3, 40, 3):
        limits = [limit, limit + 1, limit + 2]
        plain, _ = generate(random_model, PROMPTS, limits, speculate=False, stop=[stop])
        speculated, counts = generate(random_model, PROMPTS, limits, speculate=True, stop=[stop])
        assert speculated == plain, limit
        assert all(len(out) <= n for out, n in zip(speculated, limits, strict=True))
    assert plain[0][-1] == stop and sum(c.accepted for c in counts) > 0


def test_logits_processors_see_each_proposal_and_refused_ones_are_taken_back(random_model) -> None:
    reference, _ = generate(random_model, PROMPTS, [60, 60, 60], speculate=False)
    banned = (reference[0][10], reference[1][5])  # tokens lookup proposes, as the output repeats them

    def processors() -> list:
        return [Ban(banned)]

    plain, _ = generate(random_model, PROMPTS, [60, 60, 60], speculate=False, processors=processors)
    speculated, counts = generate(random_model, PROMPTS, [60, 60, 60], speculate=True, processors=processors)
    assert speculated == plain
    assert not set(banned) & {token for out in speculated for token in out}
    assert sum(c.proposed for c in counts) > sum(c.accepted for c in counts) > 0


def test_the_acceptance_rule_leaves_the_sampling_distribution_as_it_is() -> None:
    """Each row of one call is an independent draw: the token taken there (the proposal when accepted, else
    the candidate) must follow p, whichever token was proposed."""
    mx.random.seed(7)
    p = mx.array([0.5, 0.25, 0.15, 0.1])
    draws = 20_000
    for proposed in (0, 3):
        logprobs = mx.broadcast_to(mx.log(p), (draws + 1, 4))
        accepted, candidates = verify(logprobs, [proposed] * draws, SamplingParams(temperature=1.0))
        taken = mx.where(accepted, proposed, candidates[:-1])
        counts = [int((taken == token).sum()) for token in range(4)]
        for token, count in enumerate(counts):
            expected = draws * p[token].item()
            sigma = (expected * (1 - p[token].item())) ** 0.5
            assert abs(count - expected) < 5 * sigma, (proposed, counts)


def test_sampled_output_has_the_same_distribution_with_speculation(random_model) -> None:
    sampling = SamplingParams(temperature=1.0, top_k=3)
    prompt = PATTERN * 3
    samples = {}
    for speculate in (False, True):
        mx.random.seed(11)
        outputs, counts = [], []
        for _ in range(8):
            out, spec = generate(random_model, [prompt] * 8, [6] * 8, speculate=speculate, sampling=sampling)
            outputs += out
            counts += spec
        samples[speculate] = outputs
        if speculate:
            assert sum(c.proposed for c in counts) > sum(c.accepted for c in counts) > 0
    for position in range(1, 6):
        plain = [out[position] for out in samples[False]]
        speculated = [out[position] for out in samples[True]]
        # Total variation distance between the two empirical distributions of 64 samples each: about 0.1-0.25
        # for one distribution sampled twice; a rule that accepted every proposal would push it far higher.
        tokens = set(plain) | set(speculated)
        distance = sum(abs(plain.count(t) - speculated.count(t)) for t in tokens) / (2 * len(plain))
        assert distance < 0.4, (position, sorted(plain), sorted(speculated))


def trained_copy_request() -> dict:
    return {"model": "trained", "max_tokens": 64, "temperature": 0, "messages": list(COPY.messages)}


def speculative_counts(metrics: str) -> dict[str, float]:
    counts = {}
    for line in metrics.splitlines():
        if line.startswith("mlxd_speculative_tokens_total{"):
            kind = line.split('kind="')[1].split('"')[0]
            counts[kind] = float(line.rsplit(" ", 1)[1])
    return counts


@pytest.mark.parametrize("mode", ["prompt-lookup", "off"])
def test_an_answer_that_copies_its_prompt_accepts_proposals(trained: Path, tmp_path: Path, mode: str) -> None:
    env = server_env(tmp_path, MLXD_SPECULATIVE=mode)
    with run_server(tmp_path, "--model", str(trained), "--model-name", "trained", env=env) as server:
        with server.http() as http:
            response = http.post("/v1/messages", json=trained_copy_request())
            assert response.status_code == 200, response.text
            assert response.json()["content"][0]["text"] == COPY.response
            counts = speculative_counts(http.get("/metrics").text)
        log = server.log()
    if mode == "off":
        assert counts == {} and "spec=" not in log
    else:
        assert counts["accepted"] > 0 and counts["proposed"] >= counts["accepted"]
        assert f"spec=accepted:{int(counts['accepted'])}/{int(counts['proposed'])}" in log


def test_greedy_answers_over_http_are_the_same_with_speculation_and_without(
    tiny_model: Path, tmp_path: Path
) -> None:
    """Concurrent streams of different lengths, with stop sequences and limits, on a server with
    speculation and one without."""
    requests = [
        {"max_tokens": 40, "messages": [{"role": "user", "content": "abc abc abc abc abc abc"}]},
        {"max_tokens": 17, "messages": [{"role": "user", "content": "one two one two one two one"}]},
        {
            "max_tokens": 60,
            "stop_sequences": ["q"],
            "messages": [{"role": "user", "content": "the cat sat on the mat; the cat sat on the"}],
        },
    ]
    answers = {}
    for mode in ("prompt-lookup", "off"):
        env = server_env(tmp_path / mode, MLXD_SPECULATIVE=mode)
        with run_server(
            tmp_path / mode, "--model", str(tiny_model), "--model-name", "tiny", env=env
        ) as server:
            answers[mode] = run_together(server.url, requests)
    assert answers["prompt-lookup"] == answers["off"]


def run_together(url: str, requests: list[dict]) -> list[tuple]:
    """Each request's content, stop reason and output tokens, the requests sent at once."""

    def ask(body: dict) -> tuple:
        answer = httpx.post(
            f"{url}/v1/messages", json={"model": "tiny", "temperature": 0, **body}, timeout=120
        )
        assert answer.status_code == 200, answer.text
        message = answer.json()
        return message["content"], message["stop_reason"], message["usage"]["output_tokens"]

    with ThreadPoolExecutor(len(requests)) as pool:
        return list(pool.map(ask, requests))
