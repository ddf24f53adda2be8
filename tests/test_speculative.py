"""Speculative decoding (prompt lookup) inside the continuous batch, and a lone sequence's own step.

The engine-level tests drive mlxd's `Generator` on real tiny models and compare it with mlx-lm's own
`BatchGenerator`: greedy output token for token, alone and in a batch, with stops, limits and logits
processors; sampled output by its distribution. The end-to-end tests drive the real server."""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import httpx
import mlx.core as mx
import mlx_lm
import pytest
from mlx_lm.generate import BatchGenerator
from mlx_lm.models import gemma3_text
from mlx_lm.models.cache import make_prompt_cache

from daemon.engine.constraints import Ban, ThinkingBudget
from daemon.engine.decode_batch import Generator
from daemon.engine.demo_model import ModelShape, build_model
from daemon.engine.draft import Draft, DraftProposer, NotPlainAttention, check_cache
from daemon.engine.lookup import PromptLookup
from daemon.engine.prompt_cache import PromptCache
from daemon.engine.sampling import SamplingParams
from daemon.engine.speculation import Speculation, verify
from daemon.engine.step_cost import PLAIN_SAMPLES, StepCost
from tests.conftest import COPY, run_server, server_env
from tests.models import endless_model

GREEDY = SamplingParams(temperature=0.0)


class FreeSteps(StepCost):
    """Steps that cost the same at any width, as a Mac's GPU nearly has them: every proposal is verified, so
    that these tests exercise verification whatever this machine's measured costs would choose."""

    def best_width(self, rows: int, gains) -> int:
        return max(len(row) for row in gains)


# Prompts that repeat themselves, so that lookup has something to propose, and a random model's greedy
# output, which falls into loops, too.
PATTERN = [5, 9, 200, 31, 77, 13, 99, 5, 9, 200, 31, 42]
PROMPTS = [PATTERN * 3, PATTERN[:7] * 2 + [3, 4], list(range(50, 90)) + PATTERN]
DRAFT_SHAPE = ModelShape(hidden_size=32, intermediate_size=64, num_attention_heads=2, num_key_value_heads=1)


@pytest.fixture(scope="module")
def random_model(tiny_model: Path):
    model, _ = mlx_lm.load(str(tiny_model))
    return model


@pytest.fixture(scope="module")
def drafts(random_model, tmp_path_factory) -> dict[str, Draft]:
    """Drafts for the random model: itself (its proposals are its own greedy choices) and a smaller random
    model of the same vocabulary (its proposals are mostly wrong)."""
    other, _ = mlx_lm.load(
        str(endless_model(tmp_path_factory.mktemp("draft") / "draft", DRAFT_SHAPE, seed=5))
    )
    return {
        name: Draft(model, PromptCache(name, 2**26), 512)
        for name, model in (("self", random_model), ("other", other))
    }


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
    draft: Draft | None = None,
    kv: tuple[int, int] = (0, 64),
) -> tuple[list[list[int]], list[Speculation]]:
    """Every sequence's output tokens, run together to their ends, and their speculation counts; proposals
    from prompt lookup, or from `draft`; `kv`: the Generator's KV cache setting."""
    options = {"cost": FreeSteps(), "kv": kv} if engine is Generator else {}
    generator = engine(
        model,
        **options,
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
            proposer = DraftProposer(draft, prompt, sampling) if draft else PromptLookup(prompt)
            speculations.append(Speculation(proposer, sampling, most=8, trusted=True))  # verify at once
            generator.speculate(uid, speculations[-1])
    output: dict[int, list[int]] = {uid: [] for uid in uids}
    ended = set()
    while len(ended) < len(uids):
        for response in generator.next_generated():
            output[response.uid].append(response.token)
            if response.finish_reason is not None:
                ended.add(response.uid)
                if speculate:  # as the runner does: what the draft computed serves the next turn
                    speculations[uids.index(response.uid)].proposer.finish()
                # What the prompt cache will store: the tokens and the KV state agree.
                assert len(response.all_tokens) == response.prompt_cache[0].offset
    generator.close()
    return [output[uid] for uid in uids], speculations


def test_lookup_is_ready_exactly_when_its_last_two_tokens_occurred_before() -> None:
    generator = random.Random(3)
    for _ in range(300):
        tokens = [generator.randrange(5) for _ in range(generator.randrange(1, 30))]
        lookup = PromptLookup(tokens[: len(tokens) // 2])
        for token in tokens[len(tokens) // 2 :]:
            lookup.took([token])
        earlier = [tuple(tokens[i : i + 2]) for i in range(len(tokens) - 2)]
        assert lookup.ready() == (len(tokens) > 1 and tuple(tokens[-2:]) in earlier), tokens


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


@pytest.mark.parametrize("name", ["self", "other"])
def test_greedy_output_is_the_same_with_a_draft_model(random_model, drafts, name: str) -> None:
    """In a batch, with a stop token and limits that end sequences inside accepted runs; the draft catches
    up on each prompt, proposes, and is trimmed back to what was accepted."""
    reference, _ = generate(random_model, PROMPTS, [80, 80, 80], speculate=False)
    stop = reference[0][20]
    for limits in ([60, 25, 80], [7, 13, 30]):
        plain, _ = generate(random_model, PROMPTS, limits, speculate=False, stop=[stop])
        drafted, counts = generate(
            random_model, PROMPTS, limits, speculate=True, stop=[stop], draft=drafts[name]
        )
        assert drafted == plain, limits
        assert sum(c.proposed for c in counts) > 0
    if name == "self":  # its own greedy choices: accepted but where batched arithmetic breaks a near tie
        assert sum(c.accepted for c in counts) > 0.5 * sum(c.proposed for c in counts)


class Passes:
    """A draft model that notes how many sequences each of its passes ran (the model itself runs them)."""

    def __init__(self, model):
        self.model, self.rows = model, []

    def __call__(self, inputs: mx.array, cache) -> mx.array:
        self.rows.append(inputs.shape[0])
        return self.model(inputs, cache=cache)

    def __getattr__(self, name: str):
        return getattr(self.model, name)


@pytest.mark.parametrize("name", ["self", "other"])
def test_a_draft_drafts_for_every_sequence_in_one_pass(random_model, drafts, name: str) -> None:
    """Three sequences draft as rows of one batch: they join it once caught up on their prompts (a chunk of
    16 tokens per step, alone), leave it when they fall behind (the other model's drafts fail, and pause)
    and when they end, and each stores its own draft KV state."""
    reference, _ = generate(random_model, PROMPTS, [60, 25, 80], speculate=False)
    passes = Passes(drafts[name].model)
    draft = Draft(passes, PromptCache(f"rows-{name}", 2**26), 16)
    drafted, counts = generate(random_model, PROMPTS, [60, 25, 80], speculate=True, draft=draft)
    assert drafted == reference
    assert sum(c.proposed for c in counts) > 0
    assert max(passes.rows) == 3  # a pass drafted for all three
    if name == "self":  # its own greedy choices: a row whose draft state drifted would propose others
        assert sum(c.accepted for c in counts) >= 0.95 * sum(c.proposed for c in counts)
    assert draft.rows.members == [] and draft.cache.entries == 3


def greedy_continuation(model, tokens: list[int], length: int) -> list[int]:
    """The model's own greedy continuation of `tokens`, computed from nothing."""
    cache = make_prompt_cache(model)
    logits = model(mx.array([tokens]), cache=cache)[:, -1, :]
    continuation = []
    for _ in range(length):
        token = mx.argmax(logits, axis=-1)
        continuation.append(token.item())
        logits = model(token[:, None], cache=cache)[:, -1, :]
    return continuation


def test_drafts_in_rows_are_what_the_draft_says_from_nothing(drafts) -> None:
    """Rows asked or not, of different lengths, accepting different amounts, falling behind (and catching up
    alone, 4 tokens a step) and leaving: each proposal is the draft model's greedy continuation of its
    sequence, as if its KV state were computed afresh."""
    model = drafts["other"].model
    draft = Draft(model, PromptCache("rows", 2**26), 4)
    rng = random.Random(5)
    proposers = [DraftProposer(draft, prompt, GREEDY) for prompt in PROMPTS]
    newest = [rng.randrange(900) for _ in proposers]
    checked = most_rows = 0
    for turn in range(60):
        if turn == 35:
            proposers[1].leave()  # cancelled: it drafts no more
        live = [i for i in range(3) if turn < 35 or i != 1]
        ready = [i for i in live if proposers[i].ready()]  # as the engine asks every row, every step
        wants = {i: rng.randint(1, 6) for i in ready if rng.random() < (0.9 if turn % 10 < 6 else 0.1)}
        asks = {proposers[i]: (newest[i], limit) for i, limit in wants.items()}
        drafted = draft.rows.propose(asks) if asks else {}
        most_rows = max(most_rows, len(draft.rows.members))
        for i in live:
            proposer = proposers[i]
            if proposer not in drafted:
                proposer.took([newest[i]])
            else:
                proposal, _ = drafted[proposer]
                assert proposal == greedy_continuation(model, [*proposer.history, newest[i]], len(proposal))
                checked += 1
                accepted = rng.randint(0, len(proposal))
                if rng.random() < 0.9:  # else, as for a proposal the constraints cut: never settled
                    proposer.settle(len(proposal), accepted)
                else:
                    accepted = 0
                proposer.took([newest[i], *proposal[:accepted]])
            newest[i] = rng.randrange(900)
    assert checked > 40 and most_rows == 3
    for proposer in proposers:
        proposer.finish()
    assert draft.rows.members == [] and draft.cache.entries == 3


def test_a_cancelled_sequence_leaves_the_draft_and_the_others_stay_exact(random_model, drafts) -> None:
    reference, _ = generate(random_model, PROMPTS, [60, 60, 60], speculate=False)
    draft = Draft(drafts["self"].model, PromptCache("cancel", 2**26), 512)
    generator = Generator(random_model, cost=FreeSteps(), completion_batch_size=8, prefill_batch_size=8)
    uids = generator.insert(PROMPTS, [60, 60, 60])
    for uid, prompt in zip(uids, PROMPTS, strict=True):
        generator.speculate(uid, Speculation(DraftProposer(draft, prompt, GREEDY), GREEDY, 8, trusted=True))
    output: dict[int, list[int]] = {uid: [] for uid in uids}
    while len(output[uids[0]]) < 20:
        for response in generator.next_generated():
            output[response.uid].append(response.token)
    assert len(draft.rows.members) == 3
    generator.remove([uids[1]])
    assert len(draft.rows.members) == 2
    ended = 0
    while ended < 2:
        for response in generator.next_generated():
            output[response.uid].append(response.token)
            ended += response.finish_reason is not None
    generator.close()
    assert [output[uids[0]], output[uids[2]]] == [reference[0], reference[2]]
    assert output[uids[1]] == reference[1][: len(output[uids[1]])]
    assert draft.rows.members == []


def test_a_draft_keeps_its_kv_state_for_the_next_turn(random_model, drafts) -> None:
    draft = Draft(random_model, PromptCache("turns", 2**26), 512)
    first, _ = generate(random_model, PROMPTS[:1], [20], speculate=True, draft=draft)
    assert draft.cache.entries == 1
    turn = PROMPTS[0] + first[0] + [3, 4, 5]
    reference, _ = generate(random_model, [turn], [20], speculate=False)
    proposer = DraftProposer(draft, turn, GREEDY)
    assert proposer.cached > len(PROMPTS[0])  # the last turn's prompt and output, read, not recomputed
    again, _ = generate(random_model, [turn], [20], speculate=True, draft=draft)
    assert again == reference


class BanFrom:
    """A stateful processor: bans `token` from its `after`-th call on, and can be taken back."""

    def __init__(self, token: int, after: int):
        self.token, self.after, self.calls = token, after, 0

    def __call__(self, context: mx.array, logits: mx.array) -> mx.array:
        self.calls += 1
        return Ban((self.token,))(context, logits) if self.calls > self.after else logits

    def snapshot(self) -> int:
        return self.calls

    def restore(self, calls: int) -> None:
        self.calls = calls


def test_logits_processors_see_each_proposal_and_refused_ones_are_taken_back(random_model) -> None:
    """The random model loops on one token; once that token is banned, lookup still proposes it (the loop
    is in the history), the ban refuses it, and the processor's count is taken back to the accepted tokens."""
    reference, _ = generate(random_model, PROMPTS, [60, 60, 60], speculate=False)
    looped = reference[0][-1]

    def processors() -> list:
        return [BanFrom(looped, after=20)]

    plain, _ = generate(random_model, PROMPTS, [60, 60, 60], speculate=False, processors=processors)
    speculated, counts = generate(random_model, PROMPTS, [60, 60, 60], speculate=True, processors=processors)
    assert speculated == plain
    assert looped in plain[0][:20] and looped not in plain[0][21:]
    assert sum(c.proposed for c in counts) > sum(c.accepted for c in counts) > 0


def test_a_thinking_budget_closes_the_reasoning_where_it_would_without_speculation(
    random_model, drafts
) -> None:
    """The budget counts proposed tokens as it verifies them and is taken back to the accepted ones (another
    model's drafts are mostly refused), so its forced end marker comes at the same token."""
    reference, _ = generate(random_model, PROMPTS, [40, 40, 40], speculate=False)
    unused = [token for token in range(1, 900) if token not in {t for out in reference for t in out}]
    start, end = (unused[0],), (unused[1],)  # markers the model does not write by itself

    def processors() -> list:
        return [ThinkingBudget(10, start, end, thinking=True)]

    plain, _ = generate(random_model, PROMPTS, [40, 40, 40], speculate=False, processors=processors)
    speculated, counts = generate(
        random_model, PROMPTS, [40, 40, 40], speculate=True, processors=processors, draft=drafts["other"]
    )
    assert speculated == plain
    assert all(out[10] == end[0] for out in plain)  # the budget of 10 was spent: the end marker was forced
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


def test_a_drafted_token_is_accepted_by_the_ratio_of_the_two_distributions() -> None:
    """A draft's token x ~ q, accepted with probability min(1, p(x) / q(x)), else drawn from max(0, p - q):
    the token taken follows p."""
    mx.random.seed(8)
    p = mx.array([0.5, 0.25, 0.15, 0.1])
    q = mx.array([0.1, 0.2, 0.3, 0.4])
    draws = 20_000
    proposal = mx.random.categorical(mx.log(q), shape=(draws,)).tolist()
    logprobs = mx.broadcast_to(mx.log(p), (draws + 1, 4))
    drawn = mx.broadcast_to(q, (draws, 4))
    accepted, candidates = verify(logprobs, proposal, SamplingParams(temperature=1.0), drawn)
    taken = mx.where(accepted, mx.array(proposal), candidates[:-1])
    for token in range(4):
        count, expected = int((taken == token).sum()), draws * p[token].item()
        assert abs(count - expected) < 5 * (expected * (1 - p[token].item())) ** 0.5, token


def test_a_sequence_learns_its_acceptance_from_guesses_on_steps_that_verify_nothing() -> None:
    """Each step that verifies nothing, lookup guesses the next outputs; outputs that follow the copied text
    raise the sequence's expected acceptance, and outputs that leave it right after a guess lower it, with
    nothing verified."""
    text = list(range(100, 140))
    copying = Speculation(PromptLookup(text + text[:3]), GREEDY, most=8)
    straying = Speculation(PromptLookup(text), GREEDY, most=8)
    strays = [token for i in range(10) for token in (*text[:3], 900 + i)]  # three tokens copied, then not
    for step, stray in zip(range(3, 30), strays, strict=False):
        for speculation, token in ((copying, text[step]), (straying, stray)):
            speculation.wanted(room=100)
            speculation.shadow()  # as the batch has it guess on every step that verifies nothing for it
            speculation.took([token])
    assert copying.rate > 0.9 and straying.rate < 0.3
    assert copying.wanted(room=100) > 0  # a guess came true: its proposals are now worth verifying
    assert copying.proposed == straying.proposed == 0  # guesses are no proposals


@pytest.mark.parametrize(("per_token", "widest"), [(1.0, False), (0.01, True)])
def test_a_step_is_as_wide_as_the_measured_costs_pay_for(per_token: float, widest: bool) -> None:
    """Steps cost 0.1 s plus `per_token` a token: where a token costs ten times the step's fixed part (a
    compute-bound backend), proposals a row would probably accept do not pay; where it costs a tenth (a
    GPU bound by reading weights), they do, as far as the chance that all before a token were accepted
    makes it worth its cost (here 4 of 8)."""
    cost = StepCost()
    for tokens in (1, 9, 5):
        cost.observe(tokens, 0.1 + per_token * tokens, pipelined=False)
    speculation = Speculation(PromptLookup([]), GREEDY, most=8, rate=0.7)
    gains = [[speculation.expected(m) for m in range(9)]]
    # Plain steps are measured first: an odd one among them (a pause) does not decide.
    for seconds in [10 * (0.1 + per_token)] + [0.1 + per_token] * (PLAIN_SAMPLES - 1):
        assert cost.best_width(1, gains) == 1
        cost.observe(1, seconds, pipelined=True)
    choices = [cost.best_width(1, gains) for _ in range(12)]
    assert choices == ([5] * 12 if widest else [1] * 12)


@pytest.mark.parametrize("proposer", ["lookup", "draft"])
def test_sampled_output_keeps_its_distribution_with_speculation(random_model, drafts, proposer: str) -> None:
    sampling = SamplingParams(temperature=1.0, top_k=3)
    prompt = PATTERN * 3
    draft = drafts["self"] if proposer == "draft" else None  # its draws are accepted by the ratio rule
    samples = {}
    for speculate in (False, True):
        mx.random.seed(11)
        outputs, counts = [], []
        for _ in range(8):
            out, spec = generate(
                random_model, [prompt] * 8, [6] * 8, speculate=speculate, sampling=sampling, draft=draft
            )
            outputs += out
            counts += spec
        samples[speculate] = outputs
        if speculate:
            assert sum(c.accepted for c in counts) > 0
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
        rate = counts["accepted"] / counts["proposed"]
        assert f"spec=accepted:{int(counts['accepted'])}/{int(counts['proposed'])}({rate:.0%})" in log


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


def ask_with_draft(tmp_path: Path, trained: Path, draft: Path) -> tuple[httpx.Response, str, str]:
    """The copy request to the trained model drafting with `draft`; the answer, /metrics and /health."""
    table = f'name = "trained"\nsource = "{trained}"\nspeculative = "draft"\ndraft_model = "{draft}"\n'
    config = tmp_path / "config.toml"
    config.write_text(f"[[models]]\n{table}")
    server = run_server(tmp_path, "--config", str(config), env=server_env(tmp_path))
    with server as running, running.http() as http:
        response = http.post("/v1/messages", json=trained_copy_request())
        return response, http.get("/metrics").text, http.get("/health").json()["status"]


def test_a_draft_model_proposes_over_http_and_the_answer_is_exact(trained: Path, tmp_path: Path) -> None:
    draft = build_model(tmp_path / "draft", DRAFT_SHAPE, seed=5)  # the trained model's vocabulary
    response, metrics, _ = ask_with_draft(tmp_path, trained, draft)
    assert response.status_code == 200, response.text
    assert response.json()["content"][0]["text"] == COPY.response
    assert speculative_counts(metrics)["proposed"] > 0


def test_a_draft_model_of_another_vocabulary_is_refused_at_load(trained: Path, tmp_path: Path) -> None:
    draft = build_model(tmp_path / "other", replace(DRAFT_SHAPE, vocab_size=512))
    response, _, health = ask_with_draft(tmp_path, trained, draft)
    assert response.status_code == 500, response.text
    message = response.json()["error"]["message"]
    assert "model trained cannot draft with it" in message and "has another vocabulary" in message
    assert health == "ok"


def test_a_draft_whose_cache_is_not_plain_attention_is_refused() -> None:
    """A sliding-window model's cache rotates: its refused drafts could not be trimmed off."""
    args = gemma3_text.ModelArgs(
        model_type="gemma3_text", hidden_size=32, num_hidden_layers=2, intermediate_size=64, head_dim=16,
        vocab_size=64, query_pre_attn_scalar=16, sliding_window=8, sliding_window_pattern=2,
    )  # fmt: skip
    with pytest.raises(NotPlainAttention, match="draft model windowed caches KVCache, RotatingKVCache"):
        check_cache(gemma3_text.Model(args), "windowed")
    check_cache(gemma3_text.Model(replace(args, sliding_window_pattern=1)), "global")  # attention alone
