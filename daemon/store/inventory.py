"""Models on this machine, as data for the CLI to show: the configured ones and the MLX models in the Hugging
Face cache (`mlxd models list`), downloading one (`mlxd models pull`), deleting one (`mlxd models rm`), and
describing one from its files (`mlxd models info`)."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from daemon.config.model_tables import is_repo_id
from daemon.config.settings import Settings, data_dir
from daemon.engine.demo_model import ensure_demo_model
from daemon.store.files import (
    WEIGHT_FILES,
    context_length_of,
    download_patterns,
    kv_bytes_per_token,
    local_path,
    vision_type,
    weight_bytes,
)


class ModelStoreError(Exception):
    """A model that cannot be found, fetched or deleted, with what to do about it."""


@dataclass(frozen=True)
class ConfiguredModel:
    """A model the settings serve, and how much of it is on this machine."""

    name: str
    role: str  # "main", "small" (Claude Code's background tier) or ""
    weight_bytes: int | None  # None: not on this machine (a repo not downloaded yet)
    aliases: tuple[str, ...]
    source: str


@dataclass(frozen=True)
class CachedModel:
    repo_id: str
    size_bytes: int  # on disk, every revision
    last_modified: datetime
    path: Path


@dataclass(frozen=True)
class ModelFacts:
    """What `mlxd models info` tells of a model, read from its files without loading its weights."""

    source: str
    path: Path
    architecture: str
    quantization: str
    context_length: int
    weight_bytes: int
    kv_bytes_per_token: tuple[int, int, int] | None  # full precision, 8-bit, 4-bit; None: not in the config
    vision_tower: bool  # its config has one
    tool_parser: str | None  # the format mlx-lm parses tool calls in; None: no tool calling
    thinking: tuple[str, str] | None  # the tokens around reasoning; None: no thinking
    chat_template: bool
    vision: str | None = None  # the mlx-vlm model type that runs its vision tower; None: none mlx-vlm runs


def source_of(model: str | None, settings: Settings) -> str:
    """Where the model a name means comes from: a configured model's source when `model` is one of its names
    or aliases (None: the main model), the demo model's folder (built on first use) when it is the name the
    demo model is served as, else `model` itself."""
    served = settings.served_models()
    if model is None and served:
        return served[0].source
    if model is None or (not served and model == settings.served_name):
        return str(ensure_demo_model(data_dir()))
    for configured in served:
        if model == configured.name or model in configured.aliases:
            return configured.source
    return model


def configured_models(settings: Settings) -> list[ConfiguredModel]:
    """The models the settings serve, main first, with the size of their weights on this machine."""
    small = settings.small_model
    found = []
    for index, model in enumerate(settings.served_models()):
        path = local_path(model.source)
        role = "main" if index == 0 else "small" if small in (model.name, *model.aliases) else ""
        size = weight_bytes(path) if path else None
        found.append(ConfiguredModel(model.name, role, size, model.aliases, model.source))
    return found


def cache_dir() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def cached_models() -> list[CachedModel]:
    """Model repos in the Hugging Face cache that mlx-lm can load (a config and safetensors weights)."""
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    try:
        info = scan_cache_dir()
    except CacheNotFound:
        return []
    found = []
    for repo in info.repos:
        names = {file.file_name for revision in repo.revisions for file in revision.files}
        if repo.repo_type == "model" and "config.json" in names and fnmatch.filter(names, WEIGHT_FILES):
            modified = datetime.fromtimestamp(repo.last_modified, UTC)
            found.append(CachedModel(repo.repo_id, repo.size_on_disk, modified, repo.repo_path))
    return sorted(found, key=lambda model: model.repo_id.lower())


def pull(repo_id: str, revision: str | None = None) -> Path:
    """Download the files mlx-lm uses from a repo into the Hugging Face cache, with progress bars on
    standard error; files already there are kept, so an interrupted pull resumes where it stopped."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    again = "run the same command again to resume: files already downloaded are kept"
    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=download_patterns()))
    except GatedRepoError:
        raise ModelStoreError(
            f"{repo_id} is gated: accept its terms at {constants.ENDPOINT}/{repo_id}, then log in "
            "(`hf auth login`) or set HF_TOKEN"
        ) from None
    except RepositoryNotFoundError:
        raise ModelStoreError(
            f"{constants.ENDPOINT} has no model {repo_id} (or it is private: log in or set HF_TOKEN)"
        ) from None
    except RevisionNotFoundError:
        raise ModelStoreError(f"{repo_id} has no revision {revision!r}") from None
    except LocalEntryNotFoundError as error:  # the hub is out of reach and the cache lacks the files
        if constants.is_offline_mode():
            raise ModelStoreError(
                f"offline (HF_HUB_OFFLINE is set) and {repo_id} is not in the cache ({cache_dir()}); "
                "unset HF_HUB_OFFLINE to download it"
            ) from None
        cause = error.__cause__ or error
        raise ModelStoreError(
            f"cannot reach {constants.ENDPOINT} to download {repo_id} ({type(cause).__name__}: {cause}); "
            f"check the network (or HF_ENDPOINT), then {again}"
        ) from None
    except Exception as error:  # a transfer that broke: the hub's HTTP client names it by its own classes
        raise ModelStoreError(f"the download of {repo_id} stopped ({error!r}); {again}") from None


def remove(repo_id: str) -> int:
    """Delete every revision of a repo from the Hugging Face cache; returns the bytes freed."""
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    missing = ModelStoreError(
        f"{repo_id} is not in the Hugging Face cache ({cache_dir()}); see `mlxd models list`"
    )
    try:
        info = scan_cache_dir()
    except CacheNotFound:
        raise missing from None
    repo = next((r for r in info.repos if r.repo_id == repo_id and r.repo_type == "model"), None)
    if repo is None:
        raise missing
    strategy = info.delete_revisions(*(revision.commit_hash for revision in repo.revisions))
    strategy.execute()
    return strategy.expected_freed_size


def describe(source: str) -> ModelFacts:
    """A model's facts from its config and tokenizer (the weights stay on disk)."""
    from mlx_lm.utils import load_config, load_tokenizer

    path = local_path(source)
    if path is None and not is_repo_id(source):
        raise ModelStoreError(f"no folder {source} (nor a configured model of that name)")
    if path is None:
        raise ModelStoreError(
            f"{source} is neither a folder nor a model in the Hugging Face cache; download it with "
            f"`mlxd models pull {source}`"
        )
    try:
        config = load_config(path)
        tokenizer = load_tokenizer(path, eos_token_ids=config.get("eos_token_id"))
    except (OSError, ValueError) as error:
        raise ModelStoreError(f"cannot read the model at {path}: {error}") from None
    parser = tokenizer.tool_parser
    return ModelFacts(
        source=source,
        path=path,
        architecture=", ".join([config.get("model_type", "unknown"), *(config.get("architectures") or [])]),
        quantization=_quantization(config),
        context_length=context_length_of(config),
        weight_bytes=weight_bytes(path),
        kv_bytes_per_token=_kv_sizes(config),
        vision=vision_type(config),
        vision_tower="vision_config" in config,
        tool_parser=parser.__module__.rsplit(".", 1)[-1] if tokenizer.has_tool_calling and parser else None,
        thinking=(tokenizer.think_start, tokenizer.think_end) if tokenizer.has_thinking else None,
        chat_template=bool(tokenizer.has_chat_template),
    )


def _kv_sizes(config: dict) -> tuple[int, int, int] | None:
    sizes = [kv_bytes_per_token(config, bits) for bits in (0, 8, 4)]
    return None if None in sizes else tuple(sizes)  # type: ignore[return-value]


def _quantization(config: dict) -> str:
    quantization = config.get("quantization") or config.get("quantization_config")
    if not quantization:
        return f"none ({config.get('torch_dtype') or config.get('dtype') or 'unknown dtype'})"
    bits, group = quantization.get("bits"), quantization.get("group_size")
    mode = quantization.get("mode") or quantization.get("quant_method")
    described = ", ".join(
        part
        for part in (f"{bits}-bit" if bits else "", f"group size {group}" if group else "", mode or "")
        if part
    )
    return described or str(quantization)
