"""A model's files on this machine: where its folder is (a local folder, or a snapshot in the Hugging Face
cache), which files mlx-lm reads, and the facts read from them without loading anything."""

from __future__ import annotations

import fnmatch
import hashlib
import json
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# Where a model's config may state its context length, most specific first.
_CONTEXT_KEYS = ("max_position_embeddings", "max_sequence_length", "max_seq_len", "n_positions", "seq_length")
FALLBACK_CONTEXT = 4096
WEIGHT_FILES = "model*.safetensors"  # what mlx-lm loads weights from


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
    config = read_json(path / "config.json")
    return context_length_of(config) if config else None


def stated_kv_bytes_per_token(path: Path, bits: int = 0, group_size: int = 64) -> int | None:
    """`kv_bytes_per_token` of a model folder's config, without loading anything; None if unreadable."""
    config = read_json(path / "config.json")
    return kv_bytes_per_token(config, bits, group_size) if config else None


def attention_shape(config: dict[str, Any]) -> tuple[int, int, int] | None:
    """(layers, KV heads, head size) as a config states them (a vision model's in its `text_config`);
    KV heads default to the attention heads, the head size to the hidden size over them. None when the
    config does not say."""
    text = config.get("text_config") or config
    heads = text.get("num_attention_heads")
    kv_heads = text.get("num_key_value_heads") or heads
    head_dim = text.get("head_dim") or (text.get("hidden_size") or 0) // (heads or 1)
    layers = text.get("num_hidden_layers")
    shape = (layers, kv_heads, head_dim)
    return shape if all(isinstance(value, int) and value > 0 for value in shape) else None  # type: ignore[return-value]


def kv_bytes_per_token(config: dict[str, Any], bits: int = 0, group_size: int = 64) -> int | None:
    """Bytes of KV state one token takes in a plain attention cache: keys and values of every layer's KV
    heads, at the model's activation dtype (2 bytes, 4 for a float32 model), or quantized to `bits` with a
    scale and a bias of that dtype per `group_size` values; an upper bound for models with sliding-window
    layers. None when the config does not state the attention's shape."""
    if (shape := attention_shape(config)) is None:
        return None
    layers, kv_heads, head_dim = shape
    text = config.get("text_config") or config
    width = 4 if (text.get("torch_dtype") or config.get("torch_dtype")) == "float32" else 2
    per_head = head_dim * bits // 8 + head_dim // group_size * 2 * width if bits else head_dim * width
    return 2 * layers * kv_heads * per_head


def context_length_of(config: dict[str, Any]) -> int:
    for section in (config, config.get("text_config") or {}):
        for key in _CONTEXT_KEYS:
            if isinstance(section.get(key), int):
                return section[key]
    log.warning("the model's config states no context length; assuming %d tokens", FALLBACK_CONTEXT)
    return FALLBACK_CONTEXT


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as error:
        log.warning("ignoring %s: %s", path, error)
        return {}


def weight_bytes(path: Path) -> int:
    """The size of a model folder's weight files (through the Hugging Face cache's links)."""
    return sum(file.stat().st_size for file in path.glob(WEIGHT_FILES))


def estimate_weight_bytes(source: str) -> int | None:
    """A model's weight size before it is loaded: from its files when they are here, else from the file
    listing the Hugging Face cache keeps of a repo whose weights are not downloaded yet; None if unknown."""
    path = local_path(source)
    if path is not None:
        return weight_bytes(path)
    try:
        from huggingface_hub import get_cached_repo_tree

        listing = get_cached_repo_tree(source)
    except Exception:  # best effort: no listing cached, or a hub library without one; the load will tell
        return None
    return sum(f.size for f in listing if fnmatch.fnmatch(f.path, WEIGHT_FILES)) or None


def vision_type(config: dict[str, Any]) -> str | None:
    """The mlx-vlm model type that runs this model's vision tower, when it has one mlx-vlm supports."""
    if "vision_config" not in config:
        return None
    from mlx_vlm.utils import get_model_and_args

    try:
        get_model_and_args(dict(config))
    except (ImportError, KeyError, ValueError):
        return None
    return str(config.get("model_type"))
