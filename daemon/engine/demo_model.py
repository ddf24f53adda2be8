"""Builds small random-weight MLX models that `mlx_lm.load` reads unchanged.

The demo model is what `mlxd serve` runs when no model is configured; the tests and benchmarks build
their own models with the same code at other shapes.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from importlib.resources import files
from pathlib import Path

SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<think>",
    "</think>",
    "<tool_call>",
    "</tool_call>",
    "<tool_response>",
    "</tool_response>",
]

# What the tokenizer learns its merges from: the template's own words plus everyday English and code, so
# that prompts of Claude Code's kind tokenise into a realistic number of tokens.
_CORPUS = """
You are a helpful assistant. You are an interactive command line tool that helps users with software
engineering tasks. Use the instructions below and the tools available to you to assist the user.
The quick brown fox jumps over the lazy dog. Hello, world! How are you today? I am fine, thank you.
Read the file, then edit the function and run the tests again. The answer is forty two.
def main(argv: list[str]) -> int:
    for index, value in enumerate(values):
        if value is None:
            return 0
    print("done")
import json, os, sys; from pathlib import Path; class Parser(object): pass
{"type": "object", "properties": {"path": {"type": "string", "description": "The absolute path"},
"limit": {"type": "integer"}, "content": {"type": "array", "items": {"type": "string"}}},
"required": ["path"], "additionalProperties": false, "$schema": "https://json-schema.org/draft/2020-12/schema"}
# Tools  You may call one or more functions to assist with the user query.
function name arguments description parameters command timeout pattern glob file_path old_string
new_string replace_all offset todos status pending in_progress completed query url prompt
Bash Read Write Edit Glob Grep Task WebFetch WebSearch TodoWrite NotebookEdit
system user assistant tool response think the of and to in is that it for on with as was be at by this
"""


@dataclass(frozen=True)
class ModelShape:
    """The architecture numbers of a Qwen3-family model."""

    hidden_size: int = 64
    num_hidden_layers: int = 2
    intermediate_size: int = 128
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    head_dim: int = 16
    vocab_size: int = 1024
    max_position_embeddings: int = 32768
    generation_config: dict = field(default_factory=dict)
    chat_template: str | None = None  # a template of its own instead of mlxd's (for tests of others)

    def config(self, eos_token_id: int) -> dict:
        shape = asdict(self)
        shape.pop("generation_config")
        shape.pop("chat_template")
        return {
            "model_type": "qwen3",
            "architectures": ["Qwen3ForCausalLM"],
            **shape,
            "rms_norm_eps": 1e-6,
            "rope_theta": 1_000_000.0,
            "tie_word_embeddings": True,
            "torch_dtype": "float32",
            "eos_token_id": eos_token_id,
        }


DEMO_SHAPE = ModelShape(hidden_size=128, num_hidden_layers=4, intermediate_size=384, head_dim=32)


def chat_template() -> str:
    return files("daemon.engine").joinpath("chat_template.jinja").read_text()


def build_model(path: Path, shape: ModelShape = ModelShape(), seed: int = 0) -> Path:
    """Write a random-weight model folder at `path` (atomically: it appears complete or not at all)."""
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm.models import qwen3

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        eos_token_id, vocab_size = _write_tokenizer(
            staging, shape.vocab_size, shape.chat_template or chat_template()
        )
        # The trainer may learn fewer tokens than asked; the model outputs exactly as many as exist.
        config = {**shape.config(eos_token_id), "vocab_size": vocab_size}
        (staging / "config.json").write_text(json.dumps(config, indent=2))
        if shape.generation_config:
            (staging / "generation_config.json").write_text(json.dumps(shape.generation_config))
        mx.random.seed(seed)
        model = qwen3.Model(qwen3.ModelArgs.from_dict(config))
        mx.save_safetensors(str(staging / "model.safetensors"), dict(tree_flatten(model.parameters())))
        if path.exists():
            shutil.rmtree(path)
        staging.rename(path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path


def _write_tokenizer(
    folder: Path, vocab_size: int, template: str, extra_special: tuple[str, ...] = ()
) -> tuple[int, int]:
    """Train a byte-level BPE tokenizer on the corpus and save it, with `extra_special` tokens after the
    usual ones; returns the EOS token id and the number of tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[*SPECIAL_TOKENS, *extra_special],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator([_CORPUS, chat_template()] * 4, trainer=trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=[*SPECIAL_TOKENS[1:], *extra_special],
    )
    wrapped.chat_template = template
    wrapped.save_pretrained(str(folder))
    return tokenizer.token_to_id("<|im_end|>"), len(wrapped)


DEMO_VERSION = 2


def ensure_demo_model(data_dir: Path) -> Path:
    """The demo model's folder, built on first use and reused after."""
    path = data_dir / "models" / f"demo-v{DEMO_VERSION}"
    if not (path / "model.safetensors").exists():
        build_model(path, DEMO_SHAPE)
    return path
