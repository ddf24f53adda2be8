"""Loading one model in two steps through mlx-lm's own loaders: first its tokenizer and the facts the server
needs (context length, recommended sampling), which is enough to render and check prompts; then its
weights, which are what take memory and time."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# Where a model's config may state its context length, most specific first.
_CONTEXT_KEYS = ("max_position_embeddings", "max_sequence_length", "max_seq_len", "n_positions", "seq_length")
FALLBACK_CONTEXT = 4096
WEIGHT_FILES = "model*.safetensors"  # what mlx-lm loads weights from


@dataclass
class PreparedModel:
    """A model ready to load: its folder, tokenizer and config, without its weights."""

    name: str
    path: Path
    tokenizer: Any
    config: dict[str, Any]
    context_length: int
    sampling_defaults: dict[str, Any] = field(default_factory=dict)


@dataclass(kw_only=True)
class LoadedModel(PreparedModel):
    """A prepared model with its weights in memory: what an engine runs."""

    model: Any
    fingerprint: str


def resolve_path(source: str, *, weights: bool = True) -> Path:
    """A local model folder as it is, or a Hugging Face repo id fetched into (or found in) its cache; with
    `weights=False` only the tokenizer and config files are fetched."""
    local = Path(source).expanduser()
    if local.exists():
        return local
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(source, allow_patterns=download_patterns(weights=weights)))


def local_path(source: str) -> Path | None:
    """A model's folder on this machine, without downloading: a local folder as it is, or a repo's complete
    snapshot in the Hugging Face cache; None when there is neither."""
    local = Path(source).expanduser()
    if local.exists():
        return local
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(source, local_files_only=True, allow_patterns=download_patterns()))
    except (OSError, ValueError):  # not cached, cached in part, or not a repo id at all
        return None


def download_patterns(*, weights: bool = True) -> list[str]:
    """The files of a repo that mlx-lm uses, without the weights when `weights` is False."""
    from mlx_lm.utils import DEFAULT_ALLOW_PATTERNS

    return [p for p in DEFAULT_ALLOW_PATTERNS if weights or not p.endswith(".safetensors")]


def prepare_model(
    name: str, source: str, *, context_length: int | None = None, sampling: dict[str, Any] | None = None
) -> PreparedModel:
    """Read the tokenizer and config, as `mlx_lm.load` would; `sampling` overrides the model's own
    recommendations (generation_config.json)."""
    from mlx_lm.utils import load_config, load_tokenizer

    from daemon.engine.sampling import model_defaults

    path = resolve_path(source, weights=False)
    config = load_config(path)
    tokenizer = load_tokenizer(path, eos_token_ids=config.get("eos_token_id"))
    return PreparedModel(
        name=name,
        path=path,
        tokenizer=tokenizer,
        config=config,
        context_length=context_length or context_length_of(config),
        sampling_defaults={**model_defaults(_read_json(path / "generation_config.json")), **(sampling or {})},
    )


def load_weights(prepared: PreparedModel, path: Path) -> LoadedModel:
    """The prepared model with its weights, read from `path`: what `resolve_path` gives for its source."""
    from mlx_lm.utils import load_model as load_mlx_model

    model, _ = load_mlx_model(path)
    facts = {f.name: getattr(prepared, f.name) for f in fields(PreparedModel)}
    return LoadedModel(**{**facts, "path": path}, model=model, fingerprint=fingerprint(path))


def fingerprint(path: Path) -> str:
    """Identifies a model's weights and tokenizer without reading the weights: what a saved KV cache must
    match to be reused."""
    digest = hashlib.sha256()
    for file in sorted(path.iterdir()):
        if file.suffix == ".safetensors" or file.name in ("config.json", "tokenizer.json"):
            stat = file.stat()
            digest.update(f"{file.name}:{stat.st_size}:{stat.st_mtime_ns};".encode())
    return digest.hexdigest()[:16]


def stated_context_length(path: Path) -> int | None:
    """The context length in a model folder's config, without loading anything; None if unreadable."""
    config = _read_json(path / "config.json")
    return context_length_of(config) if config else None


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
