"""`mlxd serve` for a group: `mlx.launch` starts every rank (rank 0 here, serving HTTP; the others on the
hosts its hostfile or `--hosts` names, or on this machine with `--ranks`), and this process waits for them.

`mlx.launch` itself exits 0 whatever its ranks did, so rank 0 writes its exit status to a file this process
reads: a lost group exits non-zero here too, and launchd (KeepAlive on failure) starts it again. A signal
goes on to rank 0, which stops the group as it stops serving (to every rank here, before rank 0 is up).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from daemon.config.settings import Settings
from daemon.engine.group import STATUS_ENV, launched


def group_wanted(settings: Settings) -> bool:
    """The settings ask for a group, and this process is not one of its ranks yet."""
    wanted = settings.hostfile is not None or settings.hosts is not None or settings.ranks is not None
    return wanted and not launched()


def launch(settings: Settings, serve_args: list[str]) -> int:
    """Run the group until it ends, each rank with `serve_args` (`mlxd serve`'s own: in a rank, the group
    flags are not read again); the exit status is rank 0's (1 when it wrote none)."""
    launcher = mlx_launch()
    if settings.hostfile is not None:
        where = ["--hostfile", str(settings.hostfile.expanduser())]
    elif settings.hosts is not None:
        where = ["--hosts", settings.hosts]
    else:
        where = ring_on_loopback(settings.ranks or 2)
    with tempfile.TemporaryDirectory(prefix="mlxd-group-") as folder:
        status = Path(folder) / "status"
        command = [launcher, *where, "--python", sys.executable, "--", "-m", "daemon", "serve", *serve_args]
        process = subprocess.Popen(
            command, env={**os.environ, STATUS_ENV: str(status)}, start_new_session=True
        )

        def forward(signum: int, _frame: object) -> None:
            # To rank 0, which stops the group (mlx.launch goes on passing the ranks' output meanwhile);
            # to every process here when rank 0 has not started yet.
            rank0 = Path(f"{status}.pid")
            if rank0.exists():
                os.kill(int(rank0.read_text()), signum)
            else:
                os.killpg(process.pid, signum)

        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, forward)
        process.wait()
        # mlx.launch may end before rank 0 has written its status (a signal from elsewhere ends it at once).
        deadline = time.monotonic() + settings.shutdown_grace + 10
        while not status.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        return int(status.read_text() or 1) if status.exists() else 1


def mlx_launch() -> str:
    """The `mlx.launch` beside this interpreter (the same virtualenv), else the one on PATH."""
    launcher = shutil.which("mlx.launch", path=str(Path(sys.executable).parent)) or shutil.which("mlx.launch")
    if launcher is None:
        raise RuntimeError("mlx.launch was not found (it comes with mlx); reinstall mlxd")
    return launcher


def ring_on_loopback(ranks: int) -> list[str]:
    """`mlx.launch`'s arguments for `ranks` processes here over the ring backend, from ports free now (a group
    that just ended may still hold its own)."""
    return ["-n", str(ranks), "--backend", "ring", "--starting-port", str(_free_ports(ranks))]


def _free_ports(count: int) -> int:
    """The first of `count` consecutive loopback ports free now."""
    while True:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            first = probe.getsockname()[1]
        if first + count <= 65535 and all(_free(port) for port in range(first, first + count)):
            return first


def _free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True
