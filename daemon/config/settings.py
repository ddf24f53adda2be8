"""One typed settings object, layered: defaults < config file (TOML) < `MLXD_*` environment < flags."""

from __future__ import annotations

import ipaddress
import os
import tomllib
from collections.abc import Mapping
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path
from typing import Any, Literal

import platformdirs
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from daemon.config.model_tables import (
    MAX_DRAFT_TOKENS,
    KVBits,
    KVGroupSize,
    ModelConfig,
    ModelRule,
    SettingsError,
    Speculation,
    Speculative,
    check_unique,
    names_and_aliases,
    retrievable_id,
)

APP = "mlxd"
DEFAULT_PORT = 8484
ENV_PREFIX = "MLXD_"


def physical_memory() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def default_prompt_cache_bytes() -> int:
    """A fifth of physical memory, at most 16 GiB: room for several long prefixes beside the model."""
    return min(physical_memory() // 5, 16 * 2**30)


def default_memory_budget() -> int:
    """Three quarters of physical memory (about what macOS lets the GPU keep wired): the room for the
    models' weights and the KV state they hold."""
    return physical_memory() * 3 // 4


def config_dir(environ: Mapping[str, str] = os.environ) -> Path:
    return Path(environ.get("MLXD_CONFIG_DIR") or platformdirs.user_config_dir(APP))


def data_dir() -> Path:
    return Path(os.environ.get("MLXD_DATA_DIR") or platformdirs.user_data_dir(APP))


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(DEFAULT_PORT, ge=0, le=65535)
    model: str | None = None
    model_name: str | None = None
    context_length: int | None = Field(None, gt=0)
    token: str | None = None
    token_file: Path | None = None
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_file: Path | None = None
    shutdown_grace: float = Field(30.0, ge=0)
    max_body_bytes: int = Field(32 * 1024 * 1024, gt=0)
    ping_interval: float = Field(5.0, gt=0)
    # Events (about one per token) a stream may hold unsent before its client counts as not reading it.
    stream_buffer_events: int = Field(1024, gt=0)
    max_sequences: int = Field(8, gt=0)
    max_queued: int = Field(64, ge=0)
    prefill_step_size: int = Field(1024, gt=0)
    prompt_cache_bytes: int = Field(default_factory=default_prompt_cache_bytes, ge=0)
    prompt_cache_dir: Path | None = None
    prompt_cache_disk_bytes: int = Field(16 * 2**30, ge=0)  # the disk tier under the prompt cache
    strip_billing_header: bool = True
    text_model_images: Literal["omit", "refuse"] = "omit"  # images sent to a model that cannot see them
    max_image_bytes: int = Field(5 * 1024 * 1024, gt=0)  # one image, decoded (Anthropic's limit)
    max_image_side: int = Field(8000, gt=0)  # pixels
    max_images: int = Field(100, gt=0)  # in one request, tool results' included
    image_urls: Literal["refuse", "fetch"] = "refuse"  # images given by URL: fetched only when asked (SSRF)
    image_url_timeout: float = Field(10.0, gt=0)  # seconds to fetch one
    constrained_decoding: bool = True  # hold calls and JSON answers to their grammars
    speculative: Speculative = "prompt-lookup"  # how models propose tokens to verify; per model in [[models]]
    draft_model: str | None = Field(None, min_length=1)  # the draft of models that set none of their own
    num_draft_tokens: int = Field(8, ge=1, le=MAX_DRAFT_TOKENS)  # the longest proposal
    kv_bits: KVBits = 0  # a quantized KV cache (4 or 8 bits), for models that set none; 0: full precision
    kv_group_size: KVGroupSize = 64
    models: tuple[ModelConfig, ...] = ()
    model_rules: tuple[ModelRule, ...] = ()
    small_model: str | None = None
    keep_small_model_loaded: bool = False
    model_ttl: float = Field(1800.0, ge=0)
    memory_budget_bytes: int | None = Field(None, ge=0)
    # A group of processes started by `mlx.launch` (one model across several Macs): how the model is split,
    # and how long an engine step may wait for another process before the group counts as lost.
    # `mlxd serve` then starts every rank through `mlx.launch`: from a hostfile as `mlx.distributed_config`
    # writes it, on a list of hosts (this Mac first), or as `ranks` processes on this machine.
    hostfile: Path | None = None
    hosts: str | None = None
    ranks: int | None = Field(None, ge=2)
    parallel: Literal["auto", "tensor", "pipeline"] = "auto"
    group_timeout: float = Field(120.0, gt=0)
    allowed_hosts: tuple[str, ...] = ()  # Host names answered besides loopback ones (and a non-loopback bind)
    allowed_origins: tuple[str, ...] = ()  # web page origins answered; requests without Origin always are
    allowed_clients: tuple[IPv4Network | IPv6Network, ...] = ()  # client addresses; empty: any that connects
    body_timeout: float = Field(30.0, gt=0)  # seconds for a whole request body to arrive
    keep_alive_timeout: float = Field(10.0, gt=0)  # seconds an idle connection, or a request head, may take

    @field_validator("model_name", mode="after")
    @classmethod
    def _retrievable_model_name(cls, name: str | None) -> str | None:
        return retrievable_id(name) if name is not None else None

    @field_validator("allowed_hosts", "allowed_origins", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        return _entries(value)

    @field_validator("allowed_hosts", mode="after")
    @classmethod
    def _host_names(cls, hosts: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(host_name(host) for host in hosts)

    @field_validator("allowed_origins", mode="after")
    @classmethod
    def _origins(cls, origins: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(origin.lower().rstrip("/") for origin in origins)

    @field_validator("allowed_clients", mode="before")
    @classmethod
    def _networks(cls, clients: Any) -> Any:
        # An address is a network of one; host bits in a CIDR entry are forgiven: 10.1.2.3/8 is 10.0.0.0/8.
        return [
            ipaddress.ip_network(entry, strict=False) if isinstance(entry, str) else entry
            for entry in _entries(clients)
        ]

    @model_validator(mode="after")
    def _models_are_consistent(self) -> Settings:
        served = self.served_models()
        known = names_and_aliases(served)
        for model in served or [None]:
            speculation = self.speculation_of(model)
            if speculation.mode == "draft" and speculation.draft_model is None:
                name = model.name if model else self.served_name
                raise ValueError(f'model {name}: speculative = "draft" needs draft_model (its source)')
        if self.small_model is not None and self.small_model not in known:
            raise ValueError(f"small_model {self.small_model!r} is not a configured model name or alias")
        if self.keep_small_model_loaded and self.small_model is None:
            raise ValueError("keep_small_model_loaded needs small_model: the model to keep loaded")
        for rule in self.model_rules:
            if rule.model not in known:
                raise ValueError(
                    f"model_rules: {rule.pattern!r} points to {rule.model!r}, "
                    "not a configured model name or alias"
                )
        return self

    def served_models(self) -> list[ModelConfig]:
        """Every model to serve, the main one first: `model` (a configured name, or a source served as
        `model_name`, by default as `ModelConfig.from_source` names it), else the first `[[models]]` table.
        Empty when nothing is configured."""
        models = list(self.models)
        if self.model is not None:
            chosen = next((m for m in models if self.model == m.name or self.model in m.aliases), None)
            if chosen is None:
                chosen = ModelConfig.from_source(self.model, self.model_name)
                if chosen.name in names_and_aliases(models):
                    raise ValueError(
                        f"model: {self.model} would be served as {chosen.name!r}, which a [[models]] table "
                        "already names: set model_name"
                    )
            elif self.model_name is not None:
                raise ValueError(
                    f"model_name applies to a model given by its source; {self.model!r} is a configured "
                    "model: rename it in its [[models]] table"
                )
            else:
                models.remove(chosen)
            models.insert(0, chosen)
        if models and self.context_length is not None and models[0].context_length is None:
            models[0] = models[0].model_copy(update={"context_length": self.context_length})
        check_unique(models)
        return models

    @property
    def memory_budget(self) -> int:
        """Bytes of model weights that may be loaded at once; 0 means no limit."""
        if self.memory_budget_bytes is not None:
            return self.memory_budget_bytes
        return default_memory_budget()

    @property
    def disk_cache_dir(self) -> Path:
        """Where the prompt cache's disk tier keeps its blocks, a folder per model."""
        return (self.prompt_cache_dir or data_dir() / "prompt-cache").expanduser()

    def speculation_of(self, model: ModelConfig | None) -> Speculation:
        """How `model` speculates: its own settings, else the top-level ones (None: the demo model's)."""
        return Speculation(
            (model and model.speculative) or self.speculative,
            (model and model.draft_model) or self.draft_model,
            (model and model.num_draft_tokens) or self.num_draft_tokens,
        )

    def kv_of(self, model: ModelConfig | None) -> tuple[int, int]:
        """`model`'s KV cache (bits, group size): its own, else the top-level one (None: the demo model's)."""
        bits = model.kv_bits if model and model.kv_bits is not None else self.kv_bits
        return bits, (model and model.kv_group_size) or self.kv_group_size

    def check_sources(self) -> None:
        """Refuse to serve a model whose local folder is missing (see `ModelConfig.check_source`)."""
        for model in self.served_models():
            model.check_source()

    @property
    def served_name(self) -> str:
        """The main model's name: `model_name`, else the name `model` is served as (the configured model it
        names, a repo id as given, a folder's name), else the first `[[models]]` table's name, else `demo`
        (the demo model's)."""
        models = self.served_models()
        return models[0].name if models else self.model_name or "demo"

    def resolved_token(self) -> str | None:
        """The token clients must present: `token`, else `token_file`, else the token `mlxd token` made
        in the config folder if there is one; None when auth is off. Read on every call, so a rotated
        token applies at once."""
        if self.token:
            return self.token
        path = self.token_file
        if path is None:
            path = default_token_path()
            if not path.exists():
                return None
        try:
            token = path.expanduser().read_text().strip()
        except OSError as error:
            raise SettingsError(f"cannot read token_file {path}: {error.strerror}") from error
        if not token:
            raise SettingsError(f"token_file {path} is empty")
        return token

    def check_bind(self) -> None:
        """Refuse to listen beyond this machine without a token."""
        if self.resolved_token() is None and not is_loopback(self.host):
            raise SettingsError(
                f"refusing to listen on {self.host} without a token: anyone who can reach this machine "
                "could use the model. Set --token, MLXD_TOKEN or token_file, or bind to 127.0.0.1."
            )


def load_settings(flags: Mapping[str, Any], environ: Mapping[str, str] = os.environ) -> Settings:
    """Merge the layers; `flags` holds only what was given on the command line (None = not given)."""
    given = {name: value for name, value in flags.items() if value is not None}
    path = given.pop("config", None) or environ.get("MLXD_CONFIG")
    from_file = (
        _read_config(Path(path), required=True) if path else _read_config(default_config_path(environ))
    )
    from_env = {
        name: environ[ENV_PREFIX + name.upper()]
        for name in Settings.model_fields
        if ENV_PREFIX + name.upper() in environ
    }
    try:
        return Settings.model_validate({**from_file, **from_env, **given})
    except ValidationError as error:
        problems = "; ".join(_problem(e["loc"], e["msg"]) for e in error.errors())
        raise SettingsError(f"invalid settings: {problems}") from error


def default_token_path() -> Path:
    return config_dir() / "token"


def default_config_path(environ: Mapping[str, str] = os.environ) -> Path:
    return config_dir(environ) / "config.toml"


def _read_config(path: Path, required: bool = False) -> dict[str, Any]:
    path = path.expanduser()
    if not path.exists():
        if required:
            raise SettingsError(f"config file {path} does not exist")
        return {}
    try:
        return tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise SettingsError(f"cannot read config file {path}: {error}") from error


def _entries(value: Any) -> Any:
    """A list setting: a list in the config file, comma-separated in the environment (`MLXD_X=a,b`)."""
    if isinstance(value, str):
        return [entry for entry in (part.strip() for part in value.split(",")) if entry]
    return value


def _problem(loc: tuple[Any, ...], message: str) -> str:
    message = message.removeprefix("Value error, ")
    return f"{'.'.join(map(str, loc))}: {message}" if loc else message


def host_name(host: str) -> str:
    """A host as Host headers are compared: lower case, without IPv6 brackets."""
    return host.strip().lower().removeprefix("[").removesuffix("]")


def is_loopback(host: str) -> bool:
    """`localhost`, any 127.x address or ::1 (any case, brackets or not)."""
    name = host_name(host)
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False
