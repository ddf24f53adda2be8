"""What the launchd and systemd backends share: their interface, their errors, and running the service
manager's command line."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from daemon.service.spec import ServiceSpec


class ServiceError(Exception):
    """A service action that failed, with what the service manager said."""


class ServiceBackend(Protocol):
    name: str
    definition_path: Path  # the plist or unit file
    log_dir: Path

    def render(self, spec: ServiceSpec) -> str: ...

    def install(self, spec: ServiceSpec) -> None:
        """Write the definition and (re)start the service from it; replaces an earlier installation."""

    def uninstall(self) -> bool:
        """Stop the service and remove its definition; False when it was not installed."""

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def restart(self) -> None: ...

    def describe(self) -> str:
        """The service manager's view in a few words: "running, pid 412", "not installed", …"""

    def log_command(self, lines: int, follow: bool) -> list[str]: ...


def run_tool(args: list[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run launchctl / systemctl; with `check`, a non-zero exit is a ServiceError carrying its output."""
    try:
        result = subprocess.run(args, capture_output=True, text=True, timeout=120)
    except FileNotFoundError as error:
        raise ServiceError(
            f"{args[0]} not found: is this the right service manager for this system?"
        ) from error
    if check and result.returncode != 0:
        said = (result.stderr or result.stdout).strip()
        raise ServiceError(f"`{' '.join(args)}` failed with exit code {result.returncode}: {said}")
    return result


def require_installed(backend: ServiceBackend) -> None:
    if not backend.definition_path.exists():
        raise ServiceError(
            f"the service is not installed ({backend.definition_path}); run `mlxd service install`"
        )
