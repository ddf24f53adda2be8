"""One typed settings object, layered: defaults < config file (TOML) < `MLXD_*` environment < flags."""

from __future__ import annotations

import ipaddress
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import platformdirs
from pydantic import BaseModel, ConfigDict, Field, ValidationError

APP = "mlxd"
DEFAULT_PORT = 8484
ENV_PREFIX = "MLXD_"


def physical_memory() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def default_prompt_cache_bytes() -> int:
    """A fifth of physical memory, at most 16 GiB: room for several long prefixes beside the model."""
    return min(physical_memory() // 5, 16 * 2**30)


def config_dir(environ: Mapping[str, str] = os.environ) -> Path:
    return Path(environ.get("MLXD_CONFIG_DIR") or platformdirs.user_config_dir(APP))


def data_dir() -> Path:
    return Path(os.environ.get("MLXD_DATA_DIR") or platformdirs.user_data_dir(APP))


class SettingsError(Exception):
    """A setting that cannot be used, with a message that says which and why."""


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
    max_sequences: int = Field(8, gt=0)
    max_queued: int = Field(64, ge=0)
    prefill_step_size: int = Field(1024, gt=0)
    prompt_cache_bytes: int = Field(default_factory=default_prompt_cache_bytes, ge=0)
    prompt_cache_dir: Path | None = None
    prompt_cache_save_bytes: int = Field(4 * 2**30, ge=0)
    strip_billing_header: bool = True

    @property
    def saved_cache_dir(self) -> Path:
        """Where prefixes are saved at shutdown for a warm restart."""
        return (self.prompt_cache_dir or data_dir() / "prompt-cache").expanduser()

    @property
    def served_name(self) -> str:
        """The id clients use for the model: `model_name`, else the source as given, else `demo`."""
        return self.model_name or self.model or "demo"

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
        if self.resolved_token() is None and not _is_loopback(self.host):
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
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
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


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
