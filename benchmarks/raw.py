"""The raw engine in this process, no HTTP: mlx-lm's `stream_generate` for one stream and its
`BatchGenerator` for many, with the same prompts, limits and greedy sampling the servers get. Their
figures are what the servers' ratios are taken against."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from benchmarks.client import StreamResult
from benchmarks.plan import Plan
from benchmarks.prompts import PromptBuilder
from benchmarks.workloads import Progress, Workset, batch_summary, prefill_summary, stream_summary


class RawEngine:
    def __init__(self, path: Path):
        from mlx.utils import tree_flatten
        from mlx_lm import load
        from mlx_lm.utils import get_total_parameters

        self.model, self.tokenizer = load(str(path))
        self.weight_bytes = sum(v.nbytes for _, v in tree_flatten(self.model.parameters()))
        self.parameters = get_total_parameters(self.model)
        self.builder = PromptBuilder(self.tokenizer)

    def close(self) -> None:
        """Give the model's memory back before the servers load their own copies."""
        import mlx.core as mx

        del self.model
        mx.clear_cache()

    def one(self, tokens: list[int], max_tokens: int, prefill_step_size: int) -> StreamResult:
        from mlx_lm import stream_generate
        from mlx_lm.sample_utils import make_sampler

        sent = time.perf_counter()
        first = None
        generated = 0
        for response in stream_generate(
            self.model,
            self.tokenizer,
            tokens,
            max_tokens=max_tokens,
            sampler=make_sampler(temp=0.0),
            prefill_step_size=prefill_step_size,
        ):
            first = first or time.perf_counter()
            generated = response.generation_tokens
        done = time.perf_counter()
        return StreamResult(sent, first or done, done, generated, len(tokens), 0)

    def batch(self, prompts: list[list[int]], max_tokens: int, plan: Plan) -> list[StreamResult]:
        """All prompts inserted at once, as concurrent clients would arrive, run to their ends."""
        from mlx_lm.generate import BatchGenerator

        generator = BatchGenerator(
            self.model,
            stop_tokens=[[token] for token in self.tokenizer.eos_token_ids],
            completion_batch_size=plan.max_sequences,
            prefill_batch_size=plan.max_sequences,
            prefill_step_size=plan.prefill_step_size,
        )
        sent = time.perf_counter()
        uids = generator.insert(prompts, [max_tokens] * len(prompts))
        first: dict[int, float] = {}
        done: dict[int, float] = {}
        counts = dict.fromkeys(uids, 0)
        try:
            while len(done) < len(uids):
                for response in generator.next_generated():
                    now = time.perf_counter()
                    first.setdefault(response.uid, now)
                    counts[response.uid] += 1
                    if response.finish_reason is not None:
                        done[response.uid] = now
        finally:
            generator.close()
        return [
            StreamResult(sent, first[uid], done[uid], counts[uid], len(tokens), 0)
            for uid, tokens in zip(uids, prompts, strict=True)
        ]


def raw_steps(work: Workset) -> int:
    """How many measurements the raw engine takes, for the progress bar."""
    return (
        1
        + len(work.single)
        + sum(len(runs) for runs in work.concurrency.values())
        + sum(len(runs) for runs in work.prefill.values())
    )


def measure_raw(engine: RawEngine, work: Workset, plan: Plan, progress: Progress) -> dict[str, Any]:
    """The raw engine's single stream, concurrency and prefill figures, after one warm-up generation."""
    tokens = engine.builder.tokens
    step = plan.prefill_step_size
    engine.one(tokens(work.warmup), 4, step)
    progress.update()
    single = []
    for conversation in work.single:
        single.append(engine.one(tokens(conversation), plan.single_max_tokens, step))
        progress.update()
    levels = {}
    for level, runs in work.concurrency.items():
        batches = []
        for prompts in runs:
            batches.append(engine.batch([tokens(c) for c in prompts], plan.concurrency_max_tokens, plan))
            progress.update()
        levels[str(level)] = batch_summary(batches)
    sizes = {}
    for size, prompts in work.prefill.items():
        results = []
        for conversation in prompts:
            results.append(engine.one(tokens(conversation), 1, step))
            progress.update()
        sizes[str(size)] = prefill_summary(results)
    return {"single_stream": stream_summary(single), "concurrency": levels, "prefill": sizes}
