"""The models this daemon serves, by name: resolving requested names, loading a model when it is first asked
for, unloading it when it sits idle, and keeping the weights loaded at once, with the KV state they hold,
within the memory budget.

Each model is a `ServedModel` (daemon/engine/served.py). Weights are loaded and unloaded on one loader
thread, one model at a time, which is also where the budget makes room by unloading idle models, least
recently used first.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from daemon.config.units import format_bytes
from daemon.engine.draft import Draft, NotPlainAttention, VocabularyMismatch, load_draft, prepare_draft
from daemon.engine.group import GROUP_FAILED, Group
from daemon.engine.jobs import EngineLimits
from daemon.engine.lockstep import Lockstep
from daemon.engine.memory import NoRoom, Resident, plan_room
from daemon.engine.model import LoadedModel, PreparedModel, load_weights
from daemon.engine.names import ModelNames, NameRule, tier_rules
from daemon.engine.ondemand import OnDemandEngine
from daemon.engine.prompt_cache import PromptCache, model_cache
from daemon.engine.runner import Engine
from daemon.engine.served import ModelLoadError, ModelSpec, ServedModel
from daemon.engine.status import ModelStatus
from daemon.store.files import (
    estimate_weight_bytes,
    resolve_path,
    weight_bytes,
)

log = logging.getLogger(__name__)

REAP_INTERVAL = 1.0  # seconds between checks for idle models


@dataclass(frozen=True)
class EngineOptions:
    limits: EngineLimits = field(default_factory=EngineLimits)
    prompt_cache_bytes: int = 0
    disk_cache_dir: Path | None = None
    disk_cache_bytes: int = 0
    group: Group | None = None  # the processes one model is split across, this one among them


class ModelRegistry:
    """Every served model, the main one first; `small` is the model for Claude Code's background tier."""

    def __init__(
        self,
        specs: Sequence[ModelSpec],
        *,
        small: str | None = None,
        rules: Sequence[NameRule] = (),
        options: EngineOptions | None = None,
        default_ttl: float = 0.0,
        memory_budget: int = 0,
        keep_small_loaded: bool = False,
    ):
        if not specs:
            raise ValueError("a registry needs at least one model")
        self.options = options or EngineOptions()
        self.default_ttl = default_ttl
        self.memory_budget = memory_budget
        self._prepare_pool = ThreadPoolExecutor(2, thread_name_prefix="model-prepare")
        self._loader = ThreadPoolExecutor(1, thread_name_prefix="model-loader")
        self._models = {spec.name: self._served(spec) for spec in specs}
        aliases = {spec.name: spec.aliases for spec in specs}
        small_name = ModelNames(aliases, []).canonical(small) if small else None
        if small and small_name is None:
            raise ValueError(f"small model {small!r} is not one of the models")
        self.main = self._models[specs[0].name]
        self.small = self._models[small_name] if small_name else None
        self.names = ModelNames(aliases, [*rules, *tier_rules(self.main.name, small_name)])
        self._kept = {self.main.name, self.small.name} if keep_small_loaded and self.small else set()
        self._stopping = threading.Event()
        self._reaper = threading.Thread(target=self._reap, name="model-reaper", daemon=True)
        self._close_lock = threading.Lock()

    def _served(self, spec: ModelSpec) -> ServedModel:
        served: ServedModel

        def start_load() -> Future[None]:
            return self._loader.submit(self._load, served)

        engine = OnDemandEngine(spec.name, self.options.limits, start_load)
        served = ServedModel(spec, engine, self._prepare_pool)
        return served

    def start(self) -> None:
        """Begin unloading idle models, and load the pinned ones."""
        self._reaper.start()
        for served in self:
            if self.pinned(served):
                served.engine.load()

    def resolve(self, requested: str) -> ServedModel | None:
        """The model a requested name means (exact name, alias, then pattern rules), or None."""
        name = self.names.resolve(requested)
        return self._models[name] if name is not None else None

    def __iter__(self) -> Iterator[ServedModel]:
        return iter(self._models.values())

    def pinned(self, served: ServedModel) -> bool:
        """Pinned models (and, with `keep_small_loaded`, the main and small ones) stay loaded."""
        return served.spec.pinned or served.name in self._kept

    def ttl(self, served: ServedModel) -> float:
        """Seconds idle before the model is unloaded; 0 for never."""
        if self.pinned(served):
            return 0.0
        return served.spec.ttl if served.spec.ttl is not None else self.default_ttl

    def status(self, served: ServedModel) -> ModelStatus:
        engine = served.engine
        state = "loaded" if engine.resident else "loading" if engine.loading else "unloaded"
        return ModelStatus(
            name=served.name,
            aliases=served.spec.aliases,
            source=served.spec.source,
            state=state,
            pinned=self.pinned(served),
            ttl=self.ttl(served),
            weight_bytes=engine.weight_bytes,
            cache_bytes=engine.cache.nbytes,
            kv_bytes=engine.kv_bytes,
            disk_cache_bytes=engine.cache.disk_bytes,
            cache_counts=engine.cache.counts(),
            idle_seconds=engine.idle_seconds() if engine.resident else None,
            active_sequences=engine.active_sequences,
            queued=engine.queued,
            requests_served=engine.requests_served,
            context_length=served.context_length(),
            last_error=engine.last_error,
        )

    def check_room(self, served: ServedModel) -> None:
        """Raise `NoRoom` now, before a response begins, when the model cannot be loaded within the budget;
        its size is estimated from its files (unknown sizes pass: the load checks again)."""
        if served.engine.resident or self.memory_budget == 0:
            return
        sizes = [estimate_weight_bytes(source) for source in _sources(served.spec)]
        if None not in sizes:
            plan_room(served.name, sum(sizes), self.memory_budget, self._residents(served))  # type: ignore[arg-type]

    def unload(self, served: ServedModel) -> Future[int]:
        """Unload the model unless a request is in flight; the future gives the bytes freed (0: it stays)."""
        return self._loader.submit(served.engine.unload_if_idle)

    def close(self) -> None:
        """Stop unloading and loading, and close every engine (requests in flight end with an overloaded
        error). Safe to call from several threads; each returns once everything is stopped."""
        with self._close_lock:
            self._stopping.set()
            if self._reaper.is_alive():
                self._reaper.join()
            for served in self:
                served.engine.close()
            # A load in progress (a download may take minutes) is not waited for: the requests waiting on
            # it have ended, and a load that completes finds its engine closed at once. See `loading`.
            # Idle workers are joined, so that no thread that ran MLX is still alive at exit.
            wait = not self.loading
            self._loader.shutdown(wait=wait, cancel_futures=True)
            self._prepare_pool.shutdown(wait=wait, cancel_futures=True)

    @property
    def loading(self) -> bool:
        """A model's files or weights are being read or downloaded."""
        return any(served.engine.loading or served.preparing for served in self)

    def _load(self, served: ServedModel) -> None:
        """On the loader thread: fetch the weights if needed, make room, load, and start the engine."""
        spec = served.spec
        if self.options.group is not None and self.options.group.failed.is_set():
            served.engine.fail(GROUP_FAILED, overloaded=True, retry=True)  # its ranks are gone: no reload
            return
        try:
            prepared = served.prepare().result()
            started = time.perf_counter()
            log.info("loading model %s from %s", spec.name, spec.source)
            path = resolve_path(spec.source)  # downloads the weights of a repo not in the cache yet
            draft = self._prepare_draft(spec, prepared)
            size = weight_bytes(path) + (weight_bytes(draft[1]) if draft else 0)
            self._make_room(served, size)
            loaded = load_weights(prepared, path, self.options.group)
            if draft is not None:
                loaded.draft = self._load_draft(loaded, *draft)
            engine = Engine(loaded, self._prompt_cache(loaded), self.options.limits, self._lockstep(served))
        except NoRoom as error:
            log.warning("not loading model %s: %s", spec.name, error)
            served.engine.fail(str(error), overloaded=error.retry, retry=error.retry)
            raise
        except ModelLoadError as error:
            log.error("%s", error)
            served.engine.fail(str(error), overloaded=False, retry=False)
            raise
        except Exception as error:  # whatever the files or the network did: reported, never fatal
            message = f"model {spec.name} failed to load from {spec.source}: {error}"
            log.exception("%s", message)
            served.engine.fail(message, overloaded=False, retry=False)
            raise ModelLoadError(message) from error
        served.engine.attach(engine, size)
        log.info(
            "model %s ready: %s of weights, context %d tokens, loaded in %.1fs",
            spec.name,
            format_bytes(size),
            prepared.context_length,
            time.perf_counter() - started,
        )

    def _prepare_draft(self, spec: ModelSpec, prepared: PreparedModel) -> tuple[PreparedModel, Path] | None:
        if spec.speculative != "draft" or spec.draft_model is None:
            return None
        try:
            return prepare_draft(spec.name, spec.draft_model, prepared.tokenizer)
        except VocabularyMismatch as error:
            raise ModelLoadError(f"model {spec.name} cannot draft with it: {error}") from error
        except Exception as error:  # as for the model's own files: reported, never fatal
            message = f"model {spec.name}: its draft model cannot be loaded from {spec.draft_model}: {error}"
            raise ModelLoadError(message) from error

    def _load_draft(self, loaded: LoadedModel, draft: PreparedModel, path: Path) -> Draft:
        options = self.options
        try:
            return load_draft(draft, path, loaded.fingerprint, options.prompt_cache_bytes, options.limits)
        except NotPlainAttention as error:
            raise ModelLoadError(f"model {loaded.name} cannot draft with it: {error}") from error

    def _make_room(self, served: ServedModel, size: int) -> None:
        while victims := plan_room(served.name, size, self.memory_budget, self._residents(served)):
            victim = self._models[victims[0].name]
            # A victim that became busy since the plan stays, and is no candidate in the next plan.
            if freed := victim.engine.unload_if_idle():
                log.info(
                    "unloaded model %s (%s, least recently used) to make room for %s",
                    victim.name,
                    format_bytes(freed),
                    served.name,
                )

    def _residents(self, loading: ServedModel) -> list[Resident]:
        return [
            Resident(
                s.name,
                s.engine.weight_bytes + s.engine.kv_bytes,
                self.pinned(s),
                s.engine.busy,
                s.engine.last_used,
                s.engine.kv_bytes,
            )
            for s in self
            if s is not loading and s.engine.resident
        ]

    def _lockstep(self, served: ServedModel) -> Lockstep | None:
        group = self.options.group
        return Lockstep(group, lambda chat: (served.render(chat), served.parts(chat))) if group else None

    def _prompt_cache(self, loaded: LoadedModel) -> PromptCache:
        options = self.options
        share = options.group.cache_share if options.group is not None else 1.0
        return model_cache(
            loaded, int(options.prompt_cache_bytes * share), options.disk_cache_dir, options.disk_cache_bytes
        )

    def _reap(self) -> None:
        """Schedule the unload of each model idle past its TTL (one at a time per model)."""
        scheduled: dict[str, Future[int]] = {}
        while not self._stopping.wait(REAP_INTERVAL):
            for served in self:
                ttl = self.ttl(served)
                pending = scheduled.get(served.name)
                if not ttl or not served.engine.resident or (pending is not None and not pending.done()):
                    continue
                idle = served.engine.idle_seconds()
                if idle is not None and idle >= ttl:
                    scheduled[served.name] = self._loader.submit(self._unload_idle, served, ttl)

    @staticmethod
    def _unload_idle(served: ServedModel, ttl: float) -> int:
        freed = served.engine.unload_if_idle(idle_for=ttl)
        if freed:
            log.info("unloaded model %s after %.0fs idle: freed %s", served.name, ttl, format_bytes(freed))
        return freed


def _sources(spec: ModelSpec) -> list[str]:
    """What loading the model reads: its weights, and its draft model's."""
    draft = [spec.draft_model] if spec.speculative == "draft" and spec.draft_model else []
    return [spec.source, *draft]
