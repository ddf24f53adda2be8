"""The models this daemon serves, by name, each with the engine thread that runs it."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

from daemon.engine.model import LoadedModel, load_model
from daemon.engine.prompt import Prompt, render
from daemon.engine.runner import Engine
from daemon.protocol.requests import CountTokensRequest

log = logging.getLogger(__name__)


@dataclass
class ServedModel:
    loaded: LoadedModel
    engine: Engine
    loaded_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def name(self) -> str:
        return self.loaded.name

    def render(self, request: CountTokensRequest) -> Prompt:
        return render(self.loaded.tokenizer, request)


class ModelRegistry:
    def __init__(self, models: list[ServedModel]):
        self._models = {served.name: served for served in models}

    @classmethod
    def load(
        cls,
        name: str,
        source: str,
        *,
        context_length: int | None,
        max_sequences: int,
        prefill_step_size: int,
    ) -> ModelRegistry:
        log.info("loading model %s from %s", name, source)
        loaded = load_model(name, source, context_length)
        engine = Engine(loaded, max_sequences=max_sequences, prefill_step_size=prefill_step_size)
        log.info("model %s ready: context %d tokens", name, loaded.context_length)
        return cls([ServedModel(loaded, engine)])

    def get(self, name: str) -> ServedModel | None:
        return self._models.get(name)

    def __iter__(self) -> Iterator[ServedModel]:
        return iter(self._models.values())

    def close(self) -> None:
        for served in self._models.values():
            served.engine.close()
