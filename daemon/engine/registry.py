"""The models this daemon serves, by name, each with the engine thread that runs it."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from daemon.engine.model import LoadedModel, load_model
from daemon.engine.prompt import Prompt, render
from daemon.engine.prompt_cache import Persistence, PromptCache
from daemon.engine.reuse import Part, request_parts
from daemon.engine.runner import Engine, EngineLimits
from daemon.protocol.requests import CountTokensRequest

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineOptions:
    limits: EngineLimits = field(default_factory=EngineLimits)
    prompt_cache_bytes: int = 0
    saved_cache_dir: Path | None = None
    saved_cache_bytes: int = 0
    strip_billing_header: bool = True


@dataclass
class ServedModel:
    loaded: LoadedModel
    engine: Engine
    strip_billing_header: bool = True
    loaded_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def name(self) -> str:
        return self.loaded.name

    def render(self, request: CountTokensRequest) -> Prompt:
        return render(self.loaded.tokenizer, request, strip_billing_header=self.strip_billing_header)

    def parts(self, request: CountTokensRequest) -> list[Part]:
        return request_parts(request, strip_billing_header=self.strip_billing_header)


class ModelRegistry:
    def __init__(self, models: list[ServedModel]):
        self._models = {served.name: served for served in models}

    @classmethod
    def load(
        cls, name: str, source: str, *, context_length: int | None, options: EngineOptions
    ) -> ModelRegistry:
        log.info("loading model %s from %s", name, source)
        loaded = load_model(name, source, context_length)
        persistence = None
        if options.saved_cache_dir is not None and options.saved_cache_bytes > 0:
            persistence = Persistence(options.saved_cache_dir / loaded.fingerprint, options.saved_cache_bytes)
        cache = PromptCache(loaded.fingerprint, options.prompt_cache_bytes, persistence)
        engine = Engine(loaded, cache, options.limits)
        log.info("model %s ready: context %d tokens", name, loaded.context_length)
        return cls([ServedModel(loaded, engine, options.strip_billing_header)])

    def get(self, name: str) -> ServedModel | None:
        return self._models.get(name)

    def __iter__(self) -> Iterator[ServedModel]:
        return iter(self._models.values())

    def close(self) -> None:
        for served in self._models.values():
            served.engine.close()
