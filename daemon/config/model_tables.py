"""The model tables of the settings: `[[models]]` (a model served by name, with its sampling, lifetime and
speculation) and `[[model_rules]]`, and the rules a model's name and source follow."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from daemon.chat.request import SAMPLING_FIELDS

# A Hugging Face repo id, `name` or `owner/name`, as huggingface_hub's `validate_repo_id` accepts one.
_REPO_ID = re.compile(r"(\b[\w\-.]{1,96}\b/)?\b[\w\-.]{1,96}\b", re.ASCII)
# What `GET /v1/models/{id}` can name: the path `/v1/models//x` names `/x`, but none names `//x` or `/`.
_RETRIEVABLE_ID = re.compile(r"/?[^/]")


class SettingsError(Exception):
    """A setting that cannot be used, with a message that says which and why."""


Speculative = Literal["prompt-lookup", "draft", "off"]
MAX_DRAFT_TOKENS = 64


def _one_of(*allowed: int) -> AfterValidator:
    """An integer that must be one of `allowed` (numbers from the environment arrive as text, which an
    integer field converts and a `Literal` would refuse)."""

    def check(value: int) -> int:
        if value not in allowed:
            raise ValueError(f"must be one of {', '.join(map(str, allowed))}")
        return value

    return AfterValidator(check)


KVBits = Annotated[int, _one_of(0, 4, 8)]  # bits of a quantized KV cache; 0: the model's own precision
KVGroupSize = Annotated[int, _one_of(32, 64, 128)]  # values sharing one scale and bias, along a head


@dataclass(frozen=True)
class Speculation:
    """A model's speculative decoding, resolved (`Settings.speculation_of`)."""

    mode: Speculative
    draft_model: str | None
    num_draft_tokens: int


class ModelConfig(BaseModel):
    """One `[[models]]` table: a model served by name, loaded on demand."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    source: str = Field(min_length=1)  # a local model folder or a Hugging Face repo id (see `is_repo_id`)
    aliases: tuple[str, ...] = ()
    context_length: int | None = Field(None, gt=0)
    temperature: float | None = Field(None, ge=0)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=0)
    min_p: float | None = Field(None, ge=0, le=1)
    pinned: bool = False  # loaded at start-up and never unloaded for idleness or room
    ttl: float | None = Field(None, ge=0)  # seconds idle before unloading; None: `model_ttl`; 0: never
    speculative: Speculative | None = None  # None: the top-level `speculative`
    draft_model: str | None = Field(None, min_length=1)  # for "draft": its folder or repo id; None: top-level
    num_draft_tokens: int | None = Field(None, ge=1, le=MAX_DRAFT_TOKENS)  # None: the top-level one
    kv_bits: KVBits | None = None  # None: the top-level `kv_bits`
    kv_group_size: KVGroupSize | None = None  # None: the top-level one
    vision: bool = True  # a vision tower mlx-vlm runs sees the images; false: they are notes, tower unloaded

    @property
    def sampling(self) -> dict[str, Any]:
        """The default sampling this config sets, over the model's own generation_config.json."""
        values = {name: getattr(self, name) for name in SAMPLING_FIELDS}
        return {name: value for name, value in values.items() if value is not None}

    @field_validator("name", mode="after")
    @classmethod
    def _retrievable_name(cls, name: str) -> str:
        return retrievable_id(name)

    @field_validator("aliases", mode="after")
    @classmethod
    def _retrievable_aliases(cls, aliases: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(retrievable_id(alias) for alias in aliases)

    @classmethod
    def from_source(cls, source: str, name: str | None) -> ModelConfig:
        """A model given by its source alone (`--model`): served as `name`, else a repo id as itself and a
        local folder as its folder name, with the source as given for an alias."""
        if name is not None or is_repo_id(source):
            return cls(name=name or source, source=source)
        folder = folder_name(source)
        return cls(name=folder, source=source, aliases=(source,) if source != folder else ())

    def check_source(self) -> None:
        """Refuse a source that can only be a local folder (it is no repo id) when there is no folder."""
        if is_repo_id(self.source):
            return
        path = Path(self.source).expanduser()
        if path.exists() and not path.is_dir():
            raise SettingsError(f"model {self.name}: {self.source} is a file, not a model folder")
        if not path.exists():
            raise SettingsError(
                f"model {self.name}: no folder {self.source} (a Hugging Face repo id is owner/name; any "
                "other source must be a local model folder)"
            )


class ModelRule(BaseModel):
    """One `[[model_rules]]` table: requested names matching `pattern` (fnmatch, any case) go to `model`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    pattern: str = Field(min_length=1)
    model: str = Field(min_length=1)


def names_and_aliases(models: list[ModelConfig]) -> set[str]:
    return {name for m in models for name in (m.name, *m.aliases)}


def check_unique(models: list[ModelConfig]) -> None:
    seen: dict[str, str] = {}
    for m in models:
        for name in (m.name, *m.aliases):
            if name in seen:
                raise ValueError(f"models: {name!r} names both {seen[name]!r} and {m.name!r}")
            seen[name] = m.name


def is_repo_id(source: str) -> bool:
    """A source that may be a Hugging Face repo id (`name` or `owner/name`, as the hub's rules allow); any
    other source can only be a local folder. A repo id may also name a local folder, which wins."""
    return bool(_REPO_ID.fullmatch(source)) and not (
        "--" in source or ".." in source or source.endswith(".git")
    )


def folder_name(source: str) -> str:
    """The name of the folder a local source names, `..` and `~` resolved (the source itself for `/`)."""
    return Path(os.path.abspath(Path(source).expanduser())).name or source


def retrievable_id(name: str) -> str:
    """A model name or alias, refused when no `GET /v1/models/{id}` path could name it."""
    if not _RETRIEVABLE_ID.match(name):
        raise ValueError(f"{name!r} cannot be a model id: no /v1/models/{{id}} path can name it")
    return name
