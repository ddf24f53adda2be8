"""The Linux backend: a `systemd --user` unit with the same command line and environment as the launchd
agent, driven with `systemctl --user`."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from pathlib import Path

from daemon.config.atomic_write import write_atomically
from daemon.service.common import ServiceError, require_installed, run_tool
from daemon.service.spec import ServiceSpec

UNIT = "mlxd.service"

UNIT_TEMPLATE = """\
[Unit]
Description=mlxd: MLX models behind Anthropic's Messages API

[Service]
Type=exec
ExecStart={exec_start}
WorkingDirectory={working_directory}
{environment}
# Restart after a crash, not after a clean stop (SIGTERM exits 0).
Restart=on-failure
RestartSec=10
# Before SIGKILL: longer than the daemon's drain of the streams in flight (shutdown_grace, 30 s by
# default, plus 5 s to send their last events).
TimeoutStopSec=60

[Install]
WantedBy=default.target
"""


def render_unit(spec: ServiceSpec) -> str:
    environment = "\n".join(f"Environment={_quote(f'{k}={v}')}" for k, v in spec.environment.items())
    return UNIT_TEMPLATE.format(
        exec_start=" ".join(_quote(arg).replace("$", "$$") for arg in spec.program),
        working_directory=_specifiers_escaped(str(spec.working_directory)),
        environment=environment,
    )


def _quote(value: str) -> str:
    """One word for systemd's parser: double-quoted, C escapes for backslash and quote, `%` doubled so it
    is not read as a specifier."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{_specifiers_escaped(escaped)}"'


def _specifiers_escaped(value: str) -> str:
    if "\n" in value:
        raise ServiceError(f"a unit file cannot hold a value with a line break: {value!r}")
    return value.replace("%", "%%")


class Systemd:
    name = "systemd"

    def __init__(self, home: Path | None = None, environ: Mapping[str, str] = os.environ):
        home = home or Path.home()
        config_home = Path(environ.get("XDG_CONFIG_HOME") or home / ".config")
        state_home = Path(environ.get("XDG_STATE_HOME") or home / ".local" / "state")
        self.definition_path = config_home / "systemd" / "user" / UNIT
        self.log_dir = state_home / "mlxd" / "log"

    def render(self, spec: ServiceSpec) -> str:
        return render_unit(spec)

    def install(self, spec: ServiceSpec) -> None:
        write_atomically(self.definition_path, render_unit(spec).encode(), 0o644)
        self._systemctl("daemon-reload")
        self._systemctl("enable", UNIT)
        # restart, not start: a second install must replace the daemon running from the first.
        self._systemctl("restart", UNIT)

    def uninstall(self) -> bool:
        if not self.definition_path.exists():
            return False
        self._systemctl("disable", "--now", UNIT)
        self.definition_path.unlink()
        self._systemctl("daemon-reload")
        return True

    def start(self) -> None:
        require_installed(self)
        self._systemctl("start", UNIT)

    def stop(self) -> None:
        if self.definition_path.exists():
            self._systemctl("stop", UNIT)

    def restart(self) -> None:
        require_installed(self)
        self._systemctl("restart", UNIT)

    def describe(self) -> str:
        if not self.definition_path.exists():
            return "not installed"
        output = self._systemctl("show", "-p", "ActiveState,SubState,MainPID", UNIT).stdout
        facts = dict(line.split("=", 1) for line in output.splitlines() if "=" in line)
        description = f"{facts.get('ActiveState', 'unknown')} ({facts.get('SubState', 'unknown')})"
        return description + (f", pid {facts['MainPID']}" if facts.get("MainPID", "0") != "0" else "")

    def log_command(self, lines: int, follow: bool) -> list[str]:
        log_file = self.log_dir / "mlxd.log"
        if log_file.exists():
            return ["tail", "-n", str(lines), *(["-F"] if follow else []), str(log_file)]
        # Until the daemon has written its log file, what it printed is in the journal.
        return [
            "journalctl",
            "--user",
            "-u",
            UNIT,
            "-n",
            str(lines),
            *(["-f"] if follow else []),
            "--no-pager",
        ]

    def _systemctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run_tool(["systemctl", "--user", *args])
