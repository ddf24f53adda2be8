"""Loading one model in two steps through mlx-lm's own loaders (mlx-vlm's for a model with a vision tower
mlx-vlm runs): first its tokenizer (and image processor) and the facts the server needs (context length,
recommended sampling), which is enough to render and check prompts; then its weights, which are what take
memory and time."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from daemon.engine.grammar import GrammarCompiler
from daemon.engine.vision import Vision
from daemon.store.files import (
    attention_shape,
    context_length_of,
    fingerprint,
    read_json,
    resolve_path,
    vision_type,
)

if TYPE_CHECKING:
    from daemon.engine.group import Group


@dataclass
class PreparedModel:
    """A model ready to load: its folder, tokenizer and config, without its weights."""

    name: str
    path: Path
    tokenizer: Any
    config: dict[str, Any]
    context_length: int
    sampling_defaults: dict[str, Any] = field(default_factory=dict)
    grammars: GrammarCompiler | None = None  # compiles the grammars that constrain its output
    speculative: str = "off"  # how its sequences propose tokens to verify: "prompt-lookup" or "off"
    num_draft_tokens: int = 8  # the longest proposal
    kv: tuple[int, int] = (0, 64)  # its KV cache's (bits, group size); 0 bits: the model's own precision
    vision: Vision | None = None  # how it sees images; None: a text model (or its vision tower left off)
    token_bytes: int = 0  # the most UTF-8 bytes one token of its vocabulary can spell (0: not known)


@dataclass(kw_only=True)
class LoadedModel(PreparedModel):
    """A prepared model with its weights in memory: what an engine runs."""

    model: Any
    fingerprint: str
    draft: Any = None  # the `Draft` that proposes its tokens, for `speculative = "draft"`


def prepare_model(
    name: str,
    source: str,
    *,
    context_length: int | None = None,
    sampling: dict[str, Any] | None = None,
    constrained: bool = True,
    speculative: str = "off",
    num_draft_tokens: int = 8,
    kv: tuple[int, int] = (0, 64),
    vision: bool = True,
) -> PreparedModel:
    """Read the tokenizer and config, as `mlx_lm.load` would; `sampling` overrides the model's own
    recommendations (generation_config.json); `constrained`: its output may be held to grammars;
    `speculative` and `num_draft_tokens`: how its decoding speculates; `kv`: its KV cache's bits (0: the
    model's own precision) and group size, which must divide its head size; `vision`: a vision tower mlx-vlm
    runs sees the images (else they are notes, as for a text model)."""
    from mlx_lm.utils import load_config, load_tokenizer

    from daemon.engine.sampling import model_defaults

    path = resolve_path(source, weights=False)
    config = load_config(path)
    _check_kv(config, *kv)
    tokenizer = load_tokenizer(path, eos_token_ids=config.get("eos_token_id"))
    return PreparedModel(
        name=name,
        path=path,
        tokenizer=tokenizer,
        config=config,
        context_length=context_length or context_length_of(config),
        sampling_defaults={**model_defaults(read_json(path / "generation_config.json")), **(sampling or {})},
        grammars=GrammarCompiler(tokenizer, _vocab_size(config) or len(tokenizer._tokenizer))
        if constrained
        else None,
        speculative=speculative,
        num_draft_tokens=num_draft_tokens,
        kv=kv,
        vision=Vision(path, tokenizer) if vision and vision_type(config) else None,
        token_bytes=_longest_token_bytes(tokenizer),
    )


def least_tokens(prepared: PreparedModel, texts: list[str]) -> int:
    """A lower bound on the tokens `texts` take, without tokenizing them: their bytes as the tokenizer
    normalizes them (NFC may compose characters into fewer bytes), over the most bytes one token spells;
    0 where that is not known."""
    if not prepared.token_bytes:
        return 0
    backend = getattr(getattr(prepared.tokenizer, "_tokenizer", None), "backend_tokenizer", None)
    normalizer = backend.normalizer if backend is not None else None
    normalize = normalizer.normalize_str if normalizer is not None else str
    return -(-sum(len(normalize(text).encode()) for text in texts) // prepared.token_bytes)


def _longest_token_bytes(tokenizer: Any) -> int:
    """An upper bound on the bytes of text one token stands for: its vocabulary's longest entry in UTF-8.
    A byte-level BPE entry spells each byte as one character of one or two bytes, and a SentencePiece entry
    spells its text with `▁` (three bytes) for a space, so neither spells less than it stands for."""
    return max((len(entry.encode()) for entry in tokenizer.get_vocab()), default=0)


def _check_kv(config: dict[str, Any], bits: int, group_size: int) -> None:
    """Refuse a KV quantization the model's heads cannot take."""
    if bits and (shape := attention_shape(config)) is not None and shape[2] % group_size:
        raise ValueError(f"kv_group_size {group_size} does not divide the model's head size {shape[2]}")


def load_weights(prepared: PreparedModel, path: Path, group: Group | None = None) -> LoadedModel:
    """The prepared model with its weights, read from `path`: what `resolve_path` gives for its source; on a
    group, this rank's shard of them (read lazily, so that only the shard is read)."""
    if group is not None:
        import mlx.core as mx
        from mlx_lm.utils import load_model as load_mlx_model

        model, _ = load_mlx_model(path, lazy=True)
        group.split(model)
        mx.eval(model.parameters())
    elif prepared.vision is not None:
        from mlx_vlm.utils import load_model as load_vision_model

        from daemon.engine.vision_model import VisionLanguage

        model = VisionLanguage(load_vision_model(path))
    else:
        from mlx_lm.utils import load_model as load_mlx_model

        model, _ = load_mlx_model(path)
    facts = {f.name: getattr(prepared, f.name) for f in fields(PreparedModel)}
    return LoadedModel(**{**facts, "path": path}, model=model, fingerprint=fingerprint(path))


def _vocab_size(config: dict[str, Any]) -> int | None:
    """The width of the model's logits, as its config states it."""
    for section in (config, config.get("text_config") or {}):
        if isinstance(section.get("vocab_size"), int):
            return section["vocab_size"]
    return None
