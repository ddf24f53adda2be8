"""Loading one model: weights and tokenizer through `mlx_lm.load`, plus what the server needs to know of
it (context length, recommended sampling)."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# Where a model's config may state its context length, most specific first.
_CONTEXT_KEYS = ("max_position_embeddings", "max_sequence_length", "max_seq_len", "n_positions", "seq_length")
FALLBACK_CONTEXT = 4096


@dataclass
class LoadedModel:
    name: str
    path: Path
    model: Any
    tokenizer: Any
    context_length: int
    fingerprint: str
    sampling_defaults: dict[str, Any] = field(default_factory=dict)


def resolve_path(source: str) -> Path:
    """A local model folder as it is, or a Hugging Face repo id fetched into (or found in) its cache."""
    local = Path(source).expanduser()
    if local.exists():
        return local
    from huggingface_hub import snapshot_download
    from mlx_lm.utils import DEFAULT_ALLOW_PATTERNS

    return Path(snapshot_download(source, allow_patterns=DEFAULT_ALLOW_PATTERNS))


def load_model(name: str, source: str, context_length: int | None = None) -> LoadedModel:
    import mlx_lm

    from daemon.engine.sampling import model_defaults

    path = resolve_path(source)
    model, tokenizer, config = mlx_lm.load(str(path), return_config=True)
    generation_config = _read_json(path / "generation_config.json")
    return LoadedModel(
        name=name,
        path=path,
        model=model,
        tokenizer=tokenizer,
        context_length=context_length or context_length_of(config),
        fingerprint=fingerprint(path),
        sampling_defaults=model_defaults(generation_config),
    )


def fingerprint(path: Path) -> str:
    """Identifies a model's weights and tokenizer without reading the weights: what a saved KV cache must
    match to be reused."""
    digest = hashlib.sha256()
    for file in sorted(path.iterdir()):
        if file.suffix == ".safetensors" or file.name in ("config.json", "tokenizer.json"):
            stat = file.stat()
            digest.update(f"{file.name}:{stat.st_size}:{stat.st_mtime_ns};".encode())
    return digest.hexdigest()[:16]


def context_length_of(config: dict[str, Any]) -> int:
    for section in (config, config.get("text_config") or {}):
        for key in _CONTEXT_KEYS:
            if isinstance(section.get(key), int):
                return section[key]
    log.warning("the model's config states no context length; assuming %d tokens", FALLBACK_CONTEXT)
    return FALLBACK_CONTEXT


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as error:
        log.warning("ignoring %s: %s", path, error)
        return {}
