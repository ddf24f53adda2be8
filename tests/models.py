"""Tiny random models for tests, beyond what `daemon.engine.demo_model` builds."""

from __future__ import annotations

import json
from pathlib import Path

from transformers import PreTrainedTokenizerFast

from daemon.engine.demo_model import ModelShape, build_model

STOP = "<|stop|>"


def endless_model(path: Path, shape: ModelShape | None = None, seed: int = 0) -> Path:
    """A random model that can never end a turn by itself: its end-of-sequence token lies past the last
    logit the model outputs. Only `max_tokens`, a stop sequence, a cancel or a shutdown ends its output,
    which is what tests of those need. Models of any shape or seed share one vocabulary."""
    build_model(path, shape or ModelShape(), seed=seed)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(str(path))
    tokenizer.add_special_tokens({"eos_token": STOP})
    tokenizer.save_pretrained(str(path))
    eos = tokenizer.convert_tokens_to_ids(STOP)
    config_path = path / "config.json"
    config = json.loads(config_path.read_text())
    assert eos >= config["vocab_size"], "the end token must be one the model cannot output"
    config_path.write_text(json.dumps({**config, "eos_token_id": eos}, indent=2))
    return path
