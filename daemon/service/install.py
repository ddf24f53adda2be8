"""Installing the service: a config file and a token before the service manager ever starts the daemon,
so it does not start into a crash loop or without auth."""

from __future__ import annotations

from pathlib import Path

from daemon.config.settings import Settings, load_settings
from daemon.config.tokens import ensure_token
from daemon.service.common import ServiceBackend
from daemon.service.spec import ServiceSpec, build_spec, ensure_config, prepare_folders


def service_settings(spec: ServiceSpec) -> Settings:
    """The settings the daemon will run with: its config file and the environment the service gives it."""
    return load_settings({"config": str(spec.config_path)}, environ=spec.environment)


def install(backend: ServiceBackend, config_path: Path, *, auth: bool) -> list[str]:
    """Install (or reinstall) and start the service; returns what the user should know about it."""
    spec = build_spec(config_path, backend.log_dir)
    notes = []
    if ensure_config(spec.config_path):
        notes.append(
            f"created a starter config at {spec.config_path}: set `model` in it, then `mlxd service restart`"
        )
    settings = service_settings(spec)  # a config the daemon would refuse fails here, not in a restart loop
    if auth:
        path, created = ensure_token(settings)
        if created:
            notes.append(f"created a token at {path} (see it with `mlxd token show`)")
    elif settings.resolved_token() is not None:
        notes.append("auth stays on: a token is configured (`mlxd token show`); remove it to serve without")
    settings.check_bind()
    prepare_folders(spec)
    backend.install(spec)
    notes.append(f"installed {backend.definition_path} and started it; logs in {spec.log_dir}")
    return notes
