"""Run mlxd as a per-user service that starts at login and restarts after a crash: a launchd agent on
macOS, a `systemd --user` unit on Linux."""

from __future__ import annotations

import sys

from daemon.service.common import ServiceBackend
from daemon.service.launchd import Launchd
from daemon.service.systemd import Systemd

BACKENDS: dict[str, type[Launchd] | type[Systemd]] = {"launchd": Launchd, "systemd": Systemd}


def backend_for(name: str | None = None) -> ServiceBackend:
    """The named backend, else this system's."""
    return BACKENDS[name or ("launchd" if sys.platform == "darwin" else "systemd")]()
