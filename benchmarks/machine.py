"""The machine a run measures: CPU, cores, memory, MLX backend and versions; its memory bandwidth; and the
resident memory of a server process over time."""

from __future__ import annotations

import platform
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import psutil


def describe() -> dict[str, Any]:
    """What labels every figure: the hardware, the MLX backend and the versions of everything measured."""
    import mlx.core as mx

    return {
        "cpu": _cpu_name(),
        "cores": psutil.cpu_count(logical=False) or psutil.cpu_count(),
        "memory_bytes": psutil.virtual_memory().total,
        "os": platform.platform(terse=True),
        "mlx_backend": "gpu (Metal)" if mx.default_device().type == mx.gpu else "cpu",
        "versions": {
            name: _version(name) for name in ("mlxd", "mlx", "mlx-lm", "transformers", "numpy", "quart")
        }
        | {"python": platform.python_version()},
    }


def label(machine: dict[str, Any]) -> str:
    """One line naming the machine and versions, for tables and plots."""
    versions = machine["versions"]
    return (
        f"{machine['cpu']}, {machine['cores']} cores, {machine['memory_bytes'] / 2**30:.0f} GiB, "
        f"{machine['os']}, MLX backend {machine['mlx_backend']}; mlxd {versions['mlxd']}, "
        f"mlx {versions['mlx']}, mlx-lm {versions['mlx-lm']}, Python {versions['python']}"
    )


def _cpu_name() -> str:
    if sys.platform == "darwin":
        brand = subprocess.run(
            ["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True, check=False
        )
        return brand.stdout.strip() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def memory_bandwidth(megabytes: int = 256, repeats: int = 10) -> dict[str, Any]:
    """Copy bandwidth, bytes read plus bytes written per second, best of `repeats`: once with numpy on the
    CPU (a STREAM-style copy) and once with MLX on its default device (`x + 1`), since on Apple silicon
    the GPU reaches more of the memory system than one CPU thread. The bound uses the higher of the two."""
    import mlx.core as mx

    count = megabytes * 2**20 // 4
    source = np.ones(count, dtype=np.float32)
    target = np.empty_like(source)
    numpy_best = _best(lambda: np.copyto(target, source), repeats)
    array = mx.ones((count,), dtype=mx.float32)
    mx.eval(array)
    mlx_best = _best(lambda: mx.eval(array + 1), repeats)
    moved = 2 * source.nbytes
    numpy_gbps, mlx_gbps = moved / numpy_best / 1e9, moved / mlx_best / 1e9
    return {
        "numpy_copy_gb_per_s": round(numpy_gbps, 2),
        "mlx_copy_gb_per_s": round(mlx_gbps, 2),
        "gb_per_s": round(max(numpy_gbps, mlx_gbps), 2),
        "buffer_mib": megabytes,
    }


def _best(work: Callable[[], object], repeats: int) -> float:
    work()  # first touch: page faults and kernel compilation are not bandwidth
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return min(times)


class RssMonitor:
    """Samples a process's resident memory a few times a second; `peak` also asks the OS for the
    high-water mark where it keeps one (Linux), which catches spikes between samples."""

    def __init__(self, pid: int, interval: float = 0.25):
        self.pid = pid
        self.interval = interval
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"rss-{pid}", daemon=True)

    def __enter__(self) -> RssMonitor:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def now(self) -> int:
        return psutil.Process(self.pid).memory_info().rss

    @property
    def peak(self) -> int:
        status = Path(f"/proc/{self.pid}/status")
        if status.exists():
            for line in status.read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return max(int(line.split()[1]) * 1024, *self.samples, 0)
        return max(self.samples, default=0)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.samples.append(self.now())
            except psutil.Error:
                return
