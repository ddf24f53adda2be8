"""`mlxd service status`: what the service manager says about the service, and whether the daemon
itself answers its health check."""

from __future__ import annotations

from dataclasses import dataclass

from daemon.client.http import DaemonClient, DaemonUnreachable, base_url
from daemon.config.settings import SettingsError
from daemon.service.common import ServiceBackend
from daemon.service.install import service_settings
from daemon.service.spec import ServiceSpec


@dataclass(frozen=True)
class StatusReport:
    lines: list[str]
    up: bool  # the daemon answered its health check


def service_status(backend: ServiceBackend, spec: ServiceSpec) -> StatusReport:
    service = f"service: {backend.name}, {backend.describe()}"
    try:
        url = base_url(service_settings(spec))
    except SettingsError as error:
        return StatusReport([service, f"daemon:  cannot tell where it listens: {error}"], False)
    up, health = daemon_health(url)
    return StatusReport([service, f"daemon:  {url}: {health}"], up)


def daemon_health(url: str) -> tuple[bool, str]:
    """(up, one line about it) from GET /health."""
    try:
        reply = DaemonClient(url, timeout=5).request("GET", "/health", authorized=False)
    except DaemonUnreachable as error:
        return False, f"not answering ({error.reason})"
    except OSError as error:
        return False, f"no answer ({error})"
    if reply.status != 200:
        return False, f"unhealthy: HTTP {reply.status} {reply.error_message()}"
    health = reply.json()
    models = ", ".join(model["id"] for model in health.get("models", [])) or "none"
    return True, (
        f"{health.get('status')}, mlxd {health.get('version')}, "
        f"up {health.get('uptime_seconds')} s, models: {models}"
    )
