"""The Quart app factory and the Hypercorn runner: request ids, auth, routes, signals and shutdown."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import signal
import time

from hypercorn.asyncio import serve as hypercorn_serve
from hypercorn.config import Config as HypercornConfig
from quart import Quart, Response, g, request

from daemon import __version__
from daemon.api import admin, errors, health, messages, metrics, models
from daemon.api.metrics import Metrics
from daemon.auth import token_checker
from daemon.engine.memory import format_bytes
from daemon.engine.names import NameRule
from daemon.engine.registry import EngineOptions, ModelRegistry, ModelSpec
from daemon.engine.runner import EngineLimits
from daemon.settings import Settings, data_dir

log = logging.getLogger(__name__)

DEMO_WARNING = """
============================================================================
  mlxd is serving its DEMO model: random weights, so every answer is gibberish.
  It is here so you can see the server work. To serve a real model:
      mlxd serve --model mlx-community/Qwen3-4B-Instruct-2507-4bit
  or set `model = "..."` in {config} (or MLXD_MODEL).
============================================================================"""


def create_app(settings: Settings, registry: ModelRegistry) -> Quart:
    app = Quart("mlxd")
    app.config.update(
        MAX_CONTENT_LENGTH=settings.max_body_bytes,
        RESPONSE_TIMEOUT=None,  # streams last as long as generation does
        BODY_TIMEOUT=600,
        MLXD_REGISTRY=registry,
        MLXD_METRICS=Metrics(registry),
        MLXD_PING_INTERVAL=settings.ping_interval,
        MLXD_STARTED=time.monotonic(),
    )

    @app.before_request
    async def assign_request_id() -> None:
        g.request_id = f"req_{secrets.token_hex(12)}"

    app.before_request(token_checker(settings.resolved_token))

    @app.after_request
    async def tag_response(response: Response) -> Response:
        response.headers["request-id"] = g.get("request_id") or f"req_{secrets.token_hex(12)}"
        route = request.url_rule.rule if request.url_rule else "unmatched"
        app.config["MLXD_METRICS"].requests.labels(route, str(response.status_code)).inc()
        return response

    errors.register(app)
    for module in (health, models, messages, metrics, admin):
        app.register_blueprint(module.blueprint)
    return app


def load_registry(settings: Settings) -> ModelRegistry:
    """The configured models (none loaded yet), or the demo model when none is configured."""
    from daemon.engine.demo_model import ensure_demo_model
    from daemon.settings import default_config_path

    specs = [
        ModelSpec(
            name=m.name,
            source=m.source,
            aliases=m.aliases,
            context_length=m.context_length,
            sampling=m.sampling,
            pinned=m.pinned,
            ttl=m.ttl,
        )
        for m in settings.served_models()
    ]
    if not specs:
        demo = ensure_demo_model(data_dir())
        specs = [ModelSpec(settings.served_name, str(demo), context_length=settings.context_length)]
        log.warning(DEMO_WARNING.format(config=default_config_path()))
    options = EngineOptions(
        limits=EngineLimits(settings.max_sequences, settings.max_queued, settings.prefill_step_size),
        prompt_cache_bytes=settings.prompt_cache_bytes,
        saved_cache_dir=settings.saved_cache_dir,
        saved_cache_bytes=settings.prompt_cache_save_bytes,
        strip_billing_header=settings.strip_billing_header,
    )
    return ModelRegistry(
        specs,
        small=settings.small_model,
        rules=[NameRule(rule.pattern, rule.model) for rule in settings.model_rules],
        options=options,
        default_ttl=settings.model_ttl,
        memory_budget=settings.memory_budget,
        keep_small_loaded=settings.keep_small_model_loaded,
    )


def run(settings: Settings) -> None:
    """Serve until SIGINT or SIGTERM, then end the generations in flight and return."""
    settings.check_bind()
    registry = load_registry(settings)
    app = create_app(settings, registry)
    config = HypercornConfig()
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    config.bind = [f"{host}:{settings.port}"]
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    # Hypercorn waits for open requests this long after shutdown starts; the engines end theirs at the
    # grace period, which leaves a few seconds to send the final error events.
    config.graceful_timeout = settings.shutdown_grace + 5.0
    try:
        registry.start()
        asyncio.run(_serve(app, config, settings, registry))
    finally:
        registry.close()


async def _serve(app: Quart, config: HypercornConfig, settings: Settings, registry: ModelRegistry) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def on_signal(signum: int) -> None:
        if stop.is_set():
            log.warning("second %s: exiting at once", signal.Signals(signum).name)
            os._exit(0)
        log.info(
            "%s: no longer accepting; waiting up to %.0fs for streams in flight",
            signal.Signals(signum).name,
            settings.shutdown_grace,
        )
        stop.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal, signum)

    ending: list[asyncio.Task] = []

    async def shutdown_trigger() -> None:
        await stop.wait()
        ending.append(loop.create_task(_end_streams_after(settings.shutdown_grace, registry)))

    log.info(
        "mlxd %s listening on http://%s:%d (auth %s; models %s; memory budget %s)",
        __version__,
        settings.host,
        settings.port,
        "on" if settings.resolved_token() else "off",
        ", ".join(served.name for served in registry),
        format_bytes(registry.memory_budget) if registry.memory_budget else "unlimited",
    )
    await hypercorn_serve(app, config, shutdown_trigger=shutdown_trigger)
    log.info("mlxd stopped")


async def _end_streams_after(grace: float, registry: ModelRegistry) -> None:
    """Past the grace period, streams still open end with an overloaded error event (clients retry)
    rather than a silent cut; Hypercorn then lets them flush before it closes their connections."""
    await asyncio.sleep(grace)
    log.info("grace period over: ending the generations still in flight")
    await asyncio.to_thread(registry.close)
