"""What one verification pass costs: the model's forward pass over k+1 tokens against one token, at the
edit prompt's length, in this process. Decoding one token at a time pays the second figure per token; a
step that verifies k proposals pays the first once, so the ratio and the acceptance bound the speedup. On a
Mac's GPU, where decoding is bound by reading the weights, the ratio is near 1; MLX's CPU backend here is
bound by arithmetic and pays for every token."""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

from tests.trained import prompt_ids

REPEATS = 30


def cost_ratio(path: Path, example: Any, k: int) -> dict[str, float]:
    import mlx.core as mx
    import mlx_lm
    from mlx_lm.models.cache import make_prompt_cache, trim_prompt_cache

    model, tokenizer = mlx_lm.load(str(path))
    prompt = prompt_ids(tokenizer, example)
    cache = make_prompt_cache(model)
    mx.eval(model(mx.array([prompt]), cache=cache))

    def seconds(width: int) -> float:
        tokens = mx.array([prompt[-width:]])
        times = []
        for _ in range(REPEATS):
            started = time.perf_counter()
            mx.eval(model(tokens, cache=cache))
            times.append(time.perf_counter() - started)
            trim_prompt_cache(cache, width)
        return statistics.median(times)

    one, verify = seconds(1), seconds(k + 1)
    return {"k": k, "one_token_ms": one * 1e3, "verify_ms": verify * 1e3, "ratio": verify / one}
