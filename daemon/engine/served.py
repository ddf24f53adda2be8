"""One configured model: its settings (`ModelSpec`), its tokenizer and facts once prepared (read once, on
first need, and kept: they are small, and let prompts be rendered and counted without the weights), and the
engine that runs it while it is loaded."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from daemon.chat.request import ChatRequest
from daemon.engine.model import PreparedModel, prepare_model
from daemon.engine.ondemand import OnDemandEngine
from daemon.engine.prompt import Prompt, render
from daemon.engine.reuse import Part, request_parts
from daemon.store.files import local_path, read_json, stated_context_length, vision_type


class ModelLoadError(Exception):
    """A model that could not be loaded, with a message naming it, its source and the cause."""


@dataclass(frozen=True)
class ModelSpec:
    """A model as configured: its name, where it comes from, and how to serve it."""

    name: str
    source: str
    aliases: tuple[str, ...] = ()
    context_length: int | None = None
    sampling: Mapping[str, Any] = field(default_factory=dict)
    pinned: bool = False
    ttl: float | None = None  # None: the registry's default
    constrained: bool = True  # calls and JSON answers held to their grammars
    speculative: str = "prompt-lookup"  # how it proposes tokens to verify: "prompt-lookup", "draft" or "off"
    draft_model: str | None = None  # for "draft": the draft model's source
    num_draft_tokens: int = 8  # the longest proposal
    kv: tuple[int, int] = (0, 64)  # its KV cache's (bits, group size); 0 bits: the model's own precision
    vision: bool = True  # a vision tower mlx-vlm runs sees the images; False leaves it unloaded


class ServedModel:
    """One configured model: its settings, its tokenizer once prepared, and its engine, which runs while
    the model is loaded."""

    def __init__(
        self,
        spec: ModelSpec,
        engine: OnDemandEngine,
        prepare_pool: ThreadPoolExecutor,
    ):
        self.spec = spec
        self.engine = engine
        self._prepare_pool = prepare_pool
        self._lock = threading.Lock()
        self._preparing: Future[PreparedModel] | None = None
        self._prepared: PreparedModel | None = None
        self._context_length = spec.context_length

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def loaded(self) -> PreparedModel:
        """The tokenizer and facts; there once `prepare()` has completed."""
        if self._prepared is None:
            raise RuntimeError(f"model {self.name} is not prepared yet")
        return self._prepared

    def prepare(self) -> Future[PreparedModel]:
        """Read the tokenizer and config, once (concurrent callers share one read; a failed read is tried
        again by the next caller)."""
        with self._lock:
            failed = self._preparing is not None and self._preparing.done() and self._preparing.exception()
            if self._preparing is None or failed:
                self._preparing = self._prepare_pool.submit(self._prepare)
            return self._preparing

    def _prepare(self) -> PreparedModel:
        spec = self.spec
        try:
            prepared = prepare_model(
                spec.name,
                spec.source,
                context_length=spec.context_length,
                sampling=dict(spec.sampling),
                constrained=spec.constrained,
                speculative=spec.speculative,
                num_draft_tokens=spec.num_draft_tokens,
                kv=spec.kv,
                vision=spec.vision,
            )
        except Exception as error:  # whatever the files or the network did: reported, never fatal
            raise ModelLoadError(f"model {spec.name} cannot be loaded from {spec.source}: {error}") from error
        self._prepared = prepared
        self._context_length = prepared.context_length
        return prepared

    @property
    def preparing(self) -> bool:
        """Its tokenizer and config are being read (or downloaded)."""
        return self._preparing is not None and not self._preparing.done()

    def context_length(self) -> int | None:
        """The context length, when known without loading: configured, prepared, or in the config of a
        model already on this machine."""
        if self._context_length is None and (path := local_path(self.spec.source)) is not None:
            self._context_length = stated_context_length(path)
        return self._context_length

    def takes_images(self) -> bool:
        """Its images reach a vision tower (as its config says, before it is prepared)."""
        if self._prepared is not None:
            return self._prepared.vision is not None
        path = local_path(self.spec.source)
        return bool(self.spec.vision and path and vision_type(read_json(path / "config.json")))

    def render(self, request: ChatRequest) -> Prompt:
        """The prompt; a vision model's with its images' own tokens in place (their count included)."""
        loaded, vision = self.loaded, self.loaded.vision
        prompt = render(loaded.tokenizer, request, loaded.grammars, vision.placeholder if vision else None)
        return vision.expand(prompt) if vision else prompt

    def parts(self, request: ChatRequest) -> list[Part]:
        return request_parts(request)
