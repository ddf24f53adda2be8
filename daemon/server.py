"""The Quart app factory and the Hypercorn runner: request ids, the boundary checks, auth, routes, the
server's timeouts and limits, signals and shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from dataclasses import replace
from http import HTTPStatus
from pathlib import Path
from typing import Any, NoReturn

import h11
import hypercorn.protocol
from hypercorn.asyncio import serve as hypercorn_serve
from hypercorn.config import Config as HypercornConfig
from hypercorn.config import Sockets
from hypercorn.protocol.h11 import H11Protocol
from quart import Quart, Response, g, request

from daemon import __version__
from daemon.anthropic.errors import envelope, error_type
from daemon.api import admin, boundary, chat_completions, errors, health, messages, metrics, models, page
from daemon.api.activity import Activity
from daemon.api.auth import token_checker
from daemon.api.image_urls import Fetching
from daemon.api.metrics import Metrics
from daemon.chat.images import ImageLimits
from daemon.config.logs import current_request, new_request_id
from daemon.config.model_tables import Speculation
from daemon.config.settings import Settings, data_dir
from daemon.config.units import format_bytes
from daemon.engine.group import STATUS_ENV, Group, GroupError, join, settings_digest
from daemon.engine.jobs import EngineLimits
from daemon.engine.names import NameRule
from daemon.engine.registry import EngineOptions, ModelRegistry
from daemon.engine.served import ModelSpec

log = logging.getLogger(__name__)

# Hypercorn's limits and timeouts not taken from settings (the README's table says why each).
MAX_HEADER_BYTES = 16 * 1024  # a request head arriving in pieces may grow this big; Claude Code's is ~2 KiB
BACKLOG = 128  # connections waiting to be accepted; macOS caps the listen queue at 128 anyway
SEND_BUFFER_BYTES = 128 * 1024  # per connection; a client that stops reading is noticed after this much

DEMO_WARNING = """
============================================================================
  mlxd is serving its DEMO model: random weights, so every answer is gibberish.
  It is here so you can see the server work. To serve a real model:
      mlxd serve --model mlx-community/Qwen3-4B-Instruct-2507-4bit
  or set `model = "..."` in {config} (or MLXD_MODEL).
============================================================================"""


def create_app(settings: Settings, registry: ModelRegistry) -> Quart:
    # No static folder: Quart would otherwise serve files from `./static` of whatever folder mlxd started in.
    app = Quart("mlxd", static_folder=None)
    # Werkzeug would answer a `//` in a path (a model id beginning with `/`) with an HTML redirect to the
    # merged path, not an envelope; unmerged, the model-id converter takes the id whole.
    app.url_map.merge_slashes = False
    app.url_map.converters["model_id"] = models.ModelIdConverter
    app.config.update(
        MAX_CONTENT_LENGTH=settings.max_body_bytes,
        RESPONSE_TIMEOUT=None,  # streams last as long as generation does
        BODY_TIMEOUT=settings.body_timeout,
        PROVIDE_AUTOMATIC_OPTIONS=False,  # no CORS preflight is ever granted; see daemon.api.boundary
        MLXD_REGISTRY=registry,
        MLXD_METRICS=Metrics(registry),
        MLXD_ACTIVITY=Activity(),
        MLXD_PING_INTERVAL=settings.ping_interval,
        MLXD_STREAM_BUFFER_EVENTS=settings.stream_buffer_events,
        MLXD_STRIP_BILLING_HEADER=settings.strip_billing_header,
        MLXD_TEXT_MODEL_IMAGES=settings.text_model_images,
        MLXD_IMAGE_LIMITS=ImageLimits(settings.max_image_bytes, settings.max_image_side, settings.max_images),
        MLXD_IMAGE_FETCHING=(
            Fetching(settings.image_url_timeout, settings.max_image_bytes)
            if settings.image_urls == "fetch"
            else None
        ),
        MLXD_STARTED=time.monotonic(),
    )

    @app.before_request
    async def assign_request_id() -> None:
        g.request_id = new_request_id()
        current_request.set(g.request_id)

    boundary.register(app, settings)
    app.before_request(token_checker(settings.resolved_token))

    @app.after_request
    async def tag_response(response: Response) -> Response:
        response.headers["request-id"] = g.get("request_id") or new_request_id()
        route = request.url_rule.rule if request.url_rule else "unmatched"
        app.config["MLXD_METRICS"].requests.labels(route, str(response.status_code)).inc()
        return response

    errors.register(app)
    for module in (health, models, messages, chat_completions, metrics, admin, page):
        app.register_blueprint(module.blueprint)
    return app


def load_registry(settings: Settings, group: Group | None = None) -> ModelRegistry:
    """The configured models (none loaded yet), or the demo model when none is configured. A group serves
    its main model alone, loaded from the start, without a disk tier or images (see lockstep)."""
    from daemon.config.settings import default_config_path
    from daemon.engine.demo_model import ensure_demo_model

    specs = [
        ModelSpec(
            name=m.name,
            source=m.source,
            aliases=m.aliases,
            context_length=m.context_length,
            sampling=m.sampling,
            pinned=m.pinned,
            ttl=m.ttl,
            constrained=settings.constrained_decoding,
            **_speculation(settings.speculation_of(m)),
            kv=settings.kv_of(m),
            vision=m.vision,
        )
        for m in settings.served_models()
    ]
    if not specs:
        demo = ensure_demo_model(data_dir())
        specs = [
            ModelSpec(
                settings.served_name,
                str(demo),
                context_length=settings.context_length,
                constrained=settings.constrained_decoding,
                **_speculation(settings.speculation_of(None)),
                kv=settings.kv_of(None),
            )
        ]
        log.warning(DEMO_WARNING.format(config=default_config_path()))
    options = EngineOptions(
        limits=EngineLimits(settings.max_sequences, settings.max_queued, settings.prefill_step_size),
        prompt_cache_bytes=settings.prompt_cache_bytes,
        disk_cache_dir=settings.disk_cache_dir if group is None else None,
        disk_cache_bytes=settings.prompt_cache_disk_bytes,
        group=group,
    )
    if group is not None:
        if len(specs) > 1:
            log.warning(
                "a group serves one model: %s (not %s)", specs[0].name, ", ".join(s.name for s in specs[1:])
            )
        specs = [replace(specs[0], pinned=True, vision=False)]
    return ModelRegistry(
        specs,
        small=settings.small_model if group is None else None,
        rules=[NameRule(rule.pattern, rule.model) for rule in settings.model_rules] if group is None else [],
        options=options,
        default_ttl=settings.model_ttl,
        memory_budget=settings.memory_budget,
        keep_small_loaded=settings.keep_small_model_loaded,
    )


def run(settings: Settings) -> None:
    """Serve until SIGINT or SIGTERM, end the generations in flight, save the prompt caches, and exit. As
    one of a group `mlx.launch` started: rank 0 serves, the others follow; a lost group exits 1."""
    settings.check_bind()
    group = join_group(settings)
    registry = load_registry(settings, group)
    if group is not None and not group.leader:
        follow(registry, group, settings.shutdown_grace)
    app = create_app(settings, registry)
    hypercorn.protocol.H11Protocol = EnvelopeH11Protocol
    try:
        registry.start()
        if group is not None:
            _loaded_or_exit(registry, group)
        asyncio.run(_serve(app, hypercorn_config(settings), settings, registry))
    finally:
        if group is None or not group.failed.is_set():  # a lost group's engine may wait forever
            registry.close()
    if registry.loading:
        log.warning("a model was still loading or downloading; exiting without waiting for it")
    _exit(1 if group is not None and group.failed.is_set() else 0)


# Settings each process of a group may have of its own; every other one must be the same on every rank.
_PER_PROCESS = {"host", "port", "token", "token_file", "log_level", "log_file", "prompt_cache_dir"}


def join_group(settings: Settings) -> Group | None:
    """This process's group, introduced to the others (exits 2 when a rank has other settings)."""
    group = join(settings.group_timeout, settings.parallel)
    if group is None:
        return None
    if group.leader and not settings.served_models():  # built once, before the others look for it
        from daemon.engine.demo_model import ensure_demo_model

        ensure_demo_model(data_dir())
    try:
        group.introduce(settings_digest(__version__, settings.model_dump_json(exclude=_PER_PROCESS)))
    except GroupError as error:
        log.error("%s", error)
        _refused(group)
    role = "serving HTTP" if group.leader else "following rank 0"
    log.info("rank %d of %d (%s backend): %s", group.rank, group.size, group.backend, role)
    group.watch()
    if group.leader and (status := os.environ.get(STATUS_ENV)):  # where `mlxd serve` sends its signals
        Path(f"{status}.pid").write_text(str(os.getpid()))
    return group


def _loaded_or_exit(registry: ModelRegistry, group: Group) -> None:
    """A group's model loads at start, or the process exits 2 (a model no rank can split ends them all)."""
    try:
        registry.main.engine.load().result()
    except Exception as error:
        log.error("the group cannot start: %s", error)
        _refused(group)


def _refused(group: Group) -> NoReturn:
    """The group cannot start: exit 2. Every rank finds so alike; the others leave rank 0 a moment to report
    it, since `mlx.launch` ends every rank once one exits."""
    if not group.leader:
        time.sleep(2)
    _exit(2)


def follow(registry: ModelRegistry, group: Group, grace: float) -> NoReturn:
    """A follower: no HTTP, its engine running rank 0's loop until rank 0 stops it (exit 0) or the group is
    lost (exit 1). A signal is left to rank 0, which stops the group; past the grace period, it exits 1."""

    def on_signal(*_: object) -> None:
        group.signalled()
        threading.Timer(grace + 5, _exit, (1,)).start()

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, on_signal)
    registry.start()
    _loaded_or_exit(registry, group)
    while not group.failed.wait(0.5) and registry.main.engine.alive:
        pass
    _exit(1 if group.failed.is_set() else 0)


def _exit(code: int) -> NoReturn:
    """End the process once every engine is closed, its cache saved and the log flushed, without Python's
    interpreter finalization. Two things go wrong there: Python would wait for a loader thread whose download
    may take minutes more, and a thread that ran MLX can still be running its C++ thread-local destructors
    after `join` has returned; one of those (in MLX's Python binding) takes the GIL, which a finalizing
    interpreter answers by unwinding the thread, and the unwind through a noexcept destructor aborts the
    process ("terminate called without an active exception", SIGABRT; seen in core dumps on a loaded
    machine, about one shutdown in fifteen)."""
    if (status := os.environ.get(STATUS_ENV)) and os.environ.get("MLX_RANK", "0") == "0":
        Path(status).write_text(str(code))  # for the `mlxd serve` that started the group
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError):  # a group's output goes through mlx.launch, which may be gone
            stream.flush()
    os._exit(code)


def _speculation(speculation: Speculation) -> dict[str, Any]:
    return {
        "speculative": speculation.mode,
        "draft_model": speculation.draft_model,
        "num_draft_tokens": speculation.num_draft_tokens,
    }


def hypercorn_config(settings: Settings) -> HypercornConfig:
    """Every timeout and limit Hypercorn applies, chosen here (the README's table says why)."""
    config = ServerConfig()
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    config.bind = [f"{host}:{settings.port}"]
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    config.backlog = BACKLOG
    # Idle keep-alive connections, and connections whose request head is still incomplete (the same timer),
    # close after this; longer than the keep-alive of the usual clients (httpx 5 s, Node 4 s), so the client
    # is the one that closes, never a server racing a request the client just sent.
    config.keep_alive_timeout = settings.keep_alive_timeout
    # Hypercorn applies this to every read, also while a response streams and the client says nothing: any
    # value would cut long generations. Bodies are bounded by BODY_TIMEOUT, heads by keep_alive_timeout.
    config.read_timeout = None
    config.h11_max_incomplete_size = MAX_HEADER_BYTES
    # Hypercorn waits for open requests this long after shutdown starts; the engines end theirs at the
    # grace period, which leaves a few seconds to send the final error events.
    config.graceful_timeout = settings.shutdown_grace + 5.0
    return config


class ServerConfig(HypercornConfig):
    """Hypercorn's config, with a bounded send buffer on the listening sockets (accepted connections inherit
    it): left to the kernel it grows to megabytes, which a client that never reads fills before the stream
    notices it is not being read."""

    def create_sockets(self) -> Sockets:
        sockets = super().create_sockets()
        for listener in sockets.insecure_sockets:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)
        return sockets


class EnvelopeH11Protocol(H11Protocol):
    """Hypercorn's HTTP/1.1 protocol, except that what it refuses before the app sees a request (a malformed
    request, a head over `h11_max_incomplete_size`) is answered with an error envelope, not an empty body.
    Hypercorn has no hook for these responses; `run` installs this class where Hypercorn looks it up."""

    async def _send_error_response(self, status_code: int) -> None:
        request_id = new_request_id()
        message = _refusal(status_code)
        log.info("%d before the app: %s", status_code, message, extra={"request_id": request_id})
        body = json.dumps(envelope(error_type(status_code), message, request_id)).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
            (b"request-id", request_id.encode()),
            (b"x-should-retry", b"false"),
            *self.config.response_headers("h11"),
        ]
        await self._send_h11_event(h11.Response(status_code=status_code, headers=headers))
        await self._send_h11_event(h11.Data(data=body))
        await self._send_h11_event(h11.EndOfMessage())


def _refusal(status: int) -> str:
    if status == HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE:
        return f"request head exceeds the {MAX_HEADER_BYTES}-byte limit: send fewer or shorter headers"
    if status == HTTPStatus.BAD_REQUEST:
        return "malformed HTTP request: its request line, a header or its body framing is invalid"
    return f"request refused by the HTTP layer: {HTTPStatus(status).phrase}"


async def _serve(app: Quart, config: HypercornConfig, settings: Settings, registry: ModelRegistry) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def on_signal(signum: int) -> None:
        if registry.options.group is not None:
            registry.options.group.signalled()
        if stop.is_set():
            log.warning("second %s: exiting at once", signal.Signals(signum).name)
            _exit(0)
        log.info(
            "%s: no longer accepting; waiting up to %.0fs for streams in flight",
            signal.Signals(signum).name,
            settings.shutdown_grace,
        )
        stop.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal, signum)
    ending: list[asyncio.Task] = []  # tasks kept referenced while they run
    if registry.options.group is not None:
        ending.append(loop.create_task(_stop_when_lost(registry.options.group, stop)))

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


async def _stop_when_lost(group: Group, stop: asyncio.Event) -> None:
    """A lost group has ended its streams (with retryable errors): it stops serving, and exits 1."""
    while not group.failed.is_set():
        await asyncio.sleep(0.5)
    stop.set()


async def _end_streams_after(grace: float, registry: ModelRegistry) -> None:
    """Past the grace period, streams still open end with an overloaded error event (clients retry)
    rather than a silent cut; Hypercorn then lets them flush before it closes their connections."""
    group = registry.options.group
    await asyncio.sleep(grace if group is None or not group.failed.is_set() else 0)
    if group is not None and group.failed.is_set():
        return  # its streams ended already; its engine may wait forever for a lost rank
    log.info("grace period over: ending the generations still in flight")
    await asyncio.to_thread(registry.close)
