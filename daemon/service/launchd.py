"""The macOS backend: a launchd user agent rendered from the packaged plist template, driven with
`launchctl bootstrap / bootout / kickstart / print` in the user's GUI domain."""

from __future__ import annotations

import os
import plistlib
import re
import time
from importlib.resources import files
from pathlib import Path

from daemon.config.atomic_write import write_atomically
from daemon.service.common import ServiceError, require_installed, run_tool
from daemon.service.spec import ServiceSpec

LABEL = "io.mlxd.daemon"
# The template ships inside the package (launchd/ in the repository links to it), so an installed mlxd
# renders the very file the repository shows.
TEMPLATE = files("daemon.service").joinpath(f"{LABEL}.plist")
# launchctl print's top-level facts are "<tab>key = value" lines; nested blocks are indented further.
_TOP_LEVEL_FACT = re.compile(r"^\t(\w[\w ]*?) = (.*)$", re.MULTILINE)


def render_plist(spec: ServiceSpec) -> bytes:
    """The template with this installation's values; plistlib escapes whatever the paths contain."""
    plist = plistlib.loads(TEMPLATE.read_bytes())
    plist.update(
        ProgramArguments=spec.program,
        EnvironmentVariables=spec.environment,
        WorkingDirectory=str(spec.working_directory),
        StandardOutPath=str(spec.log_dir / "stdout.log"),
        StandardErrorPath=str(spec.log_dir / "stderr.log"),
    )
    return plistlib.dumps(plist, sort_keys=False)


def parse_print(output: str) -> dict[str, str]:
    """The top-level facts of `launchctl print` (state, pid, last exit code, …), first occurrence wins."""
    facts: dict[str, str] = {}
    for key, value in _TOP_LEVEL_FACT.findall(output):
        facts.setdefault(key, value.strip())
    return facts


class Launchd:
    name = "launchd"

    def __init__(self, home: Path | None = None, uid: int | None = None):
        home = home or Path.home()
        self.definition_path = home / "Library" / "LaunchAgents" / f"{LABEL}.plist"
        self.log_dir = home / "Library" / "Logs" / "mlxd"
        self.domain = f"gui/{os.getuid() if uid is None else uid}"
        self.target = f"{self.domain}/{LABEL}"

    def render(self, spec: ServiceSpec) -> str:
        return render_plist(spec).decode()

    def install(self, spec: ServiceSpec) -> None:
        # launchd keeps the plist it loaded; a changed one applies only after a bootout and a bootstrap.
        if self._loaded():
            self._bootout()
        write_atomically(self.definition_path, render_plist(spec), 0o644)
        self._bootstrap()

    def uninstall(self) -> bool:
        installed = self.definition_path.exists()
        if self._loaded():
            self._bootout()
            installed = True
        self.definition_path.unlink(missing_ok=True)
        return installed

    def start(self) -> None:
        require_installed(self)
        if self._loaded():
            run_tool(["launchctl", "kickstart", self.target])
        else:
            self._bootstrap()  # RunAtLoad starts it

    def stop(self) -> None:
        # A bootout rather than a signal: unloaded, the agent stays down whatever KeepAlive says, until
        # `mlxd service start` or the next login.
        if self._loaded():
            self._bootout()

    def restart(self) -> None:
        require_installed(self)
        if self._loaded():
            run_tool(["launchctl", "kickstart", "-k", self.target])
        else:
            self._bootstrap()

    def describe(self) -> str:
        result = run_tool(["launchctl", "print", self.target], check=False)
        if result.returncode != 0:
            return "not loaded" if self.definition_path.exists() else "not installed"
        facts = parse_print(result.stdout)
        state = facts.get("state", "unknown")
        if state == "running":
            return f"running, pid {facts.get('pid', 'unknown')}"
        return f"{state}, last exit code {facts.get('last exit code', 'unknown')}"

    def log_command(self, lines: int, follow: bool) -> list[str]:
        # The daemon's own (rotated) log, and stderr for what happens before logging starts: tracebacks,
        # a config the daemon refuses.
        logs = [path for path in (self.log_dir / "mlxd.log", self.log_dir / "stderr.log") if path.exists()]
        if not logs:
            raise ServiceError(f"no logs yet in {self.log_dir}")
        return ["tail", "-n", str(lines), *(["-F"] if follow else []), *map(str, logs)]

    def _loaded(self) -> bool:
        return run_tool(["launchctl", "print", self.target], check=False).returncode == 0

    def _bootstrap(self) -> None:
        try:
            run_tool(["launchctl", "bootstrap", self.domain, str(self.definition_path)])
        except ServiceError as error:
            raise ServiceError(f"{error}\nsee the logs in {self.log_dir} (`mlxd service logs`)") from None

    def _bootout(self) -> None:
        run_tool(["launchctl", "bootout", self.target])
        # bootout can return while the daemon is still draining; a bootstrap then fails with an I/O error.
        # Past the plist's ExitTimeOut launchd kills it, so waiting longer than that is pointless.
        patience = plistlib.loads(TEMPLATE.read_bytes())["ExitTimeOut"] + 10
        deadline = time.monotonic() + patience
        while self._loaded():
            if time.monotonic() > deadline:
                raise ServiceError(f"{self.target} is still loaded {patience} s after bootout")
            time.sleep(0.25)
