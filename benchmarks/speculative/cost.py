"""What speculation's passes cost, in this process, at the edit prompt's length. Verification: the model's
forward pass over k+1 tokens against one token. Decoding one token at a time pays the second figure per
token; a step that verifies k proposals pays the first once, so the ratio and the acceptance bound the
speedup. On a Mac's GPU, where decoding is bound by reading the weights, the ratio is near 1; MLX's CPU
backend here is bound by arithmetic and pays for every token.

A draft: its pass for one token against the model's (k proposals cost k of them), and its pass for one token
in each of `ROWS` sequences at once against one sequence's (the draft drafts for every sequence in one pass):
on a Mac a 0.6B draft for a 30B model costs a few percent of its step, and four rows about what one does."""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

from tests.trained import prompt_ids

REPEATS = 30
ROWS = 4


def cost_ratio(path: Path, draft: Path, example: Any, k: int) -> dict[str, float]:
    model_one, verify = _seconds(path, example, passes=((1, 1), (k + 1, 1)))
    draft_one, draft_rows = _seconds(draft, example, passes=((1, 1), (1, ROWS)))
    return {
        "k": k,
        "one_token_ms": model_one * 1e3,
        "verify_ms": verify * 1e3,
        "ratio": verify / model_one,
        "draft_ms": draft_one * 1e3,
        "draft_share": draft_one / model_one,
        "rows": ROWS,
        "draft_rows_ms": draft_rows * 1e3,
        "draft_rows_ratio": draft_rows / draft_one,
    }


def _seconds(path: Path, example: Any, passes: tuple[tuple[int, int], ...]) -> list[float]:
    """The median seconds of each pass, (width, copies): `width` tokens fed to each of `copies` copies of
    the prompt."""
    import mlx.core as mx
    import mlx_lm
    from mlx_lm.models.cache import make_prompt_cache, trim_prompt_cache

    model, tokenizer = mlx_lm.load(str(path))
    prompt = prompt_ids(tokenizer, example)
    measured = []
    for width, copies in passes:
        cache = make_prompt_cache(model)
        mx.eval(model(mx.array([prompt] * copies), cache=cache))
        tokens = mx.array([prompt[-width:]] * copies)
        times = []
        for _ in range(REPEATS):
            started = time.perf_counter()
            mx.eval(model(tokens, cache=cache))
            times.append(time.perf_counter() - started)
            trim_prompt_cache(cache, width)
        measured.append(statistics.median(times))
    return measured
