"""One model across several processes, on one Mac or several: MLX's distributed group as `mlx.launch` starts
it (the ring backend over TCP, JACCL over Thunderbolt RDMA, MPI), and mlx-lm's sharding of a model over it.

Rank 0 serves HTTP and decides; the others follow (daemon/engine/lockstep.py). This module holds what every
rank does alike: join the group, check at start that every rank runs the same mlxd with the same settings,
share rank 0's objects with every rank through MLX's collectives (as `mlx_lm.server` shares its requests),
split a model's weights (tensor parallel where the model supports it, pipeline parallel where it does not or
when asked), and notice a rank that stops answering.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import mlx.core as mx
import numpy as np

from daemon.engine.guards import seed_random_state

log = logging.getLogger(__name__)

# What `mlx.launch` sets in each process it starts (MPI's launcher sets its own).
_LAUNCHED = ("MLX_RANK", "OMPI_COMM_WORLD_SIZE")
STATUS_ENV = (
    "MLXD_GROUP_STATUS"  # where rank 0 writes its exit status, for `mlxd serve` (daemon/cli/launch.py)
)
SIGNALLED_PATIENCE = 5.0  # seconds an engine step may wait for another rank once this one is stopping
GROUP_FAILED = "a process of this model's group stopped answering; the group restarts: retry shortly"


class GroupError(Exception):
    """The group cannot serve: a rank with other settings, a model that cannot be split, a lost rank."""


@dataclass(frozen=True)
class RankFacts:
    """One rank as it introduced itself at start."""

    rank: int
    host: str
    pid: int
    settings: str  # a digest of mlxd's version and the settings every rank must share


def launched() -> bool:
    """This process was started by `mlx.launch` (or MPI's launcher) as one of a group."""
    return any(name in os.environ for name in _LAUNCHED)


def backend_name() -> str:
    """The backend `mlx.launch` chose, as its environment shows it."""
    if "MLX_JACCL_COORDINATOR" in os.environ:
        return "jaccl"
    if "NCCL_HOST_IP" in os.environ:
        return "nccl"
    if "OMPI_COMM_WORLD_SIZE" in os.environ:
        return "mpi"
    return "ring"


class Group:
    """This process's place in the group, and the collectives every rank calls in the same order."""

    def __init__(self, world: Any, backend: str, timeout: float, wanted: str = "auto"):
        self.world = world
        self.wanted = wanted  # "auto", "tensor" or "pipeline"
        self.rank = world.rank()
        self.size = world.size()
        self.backend = backend
        self.timeout = timeout
        self.ranks: list[RankFacts] = []
        self.memory = [0] * self.size  # each rank's MLX active memory, as of the last exchange
        self.parallel = ""  # "tensor" or "pipeline", once a model is split
        self.cache_share = 1.0  # this rank's KV state for a prefix, against rank 0's
        self.failed = threading.Event()
        self._busy_since: float | None = None  # when the engine loop's current iteration began
        self._patience = timeout  # how long it may last
        self._iterations = 0
        self._on_lost: list[Callable[[], None]] = []

    @property
    def leader(self) -> bool:
        return self.rank == 0

    def introduce(self, settings_digest: str) -> None:
        """Every rank's facts to every rank; raises `GroupError` when a rank runs another mlxd version or
        other settings than rank 0 (each rank then exits: the group does not start)."""
        facts = RankFacts(self.rank, socket.gethostname(), os.getpid(), settings_digest)
        self.ranks = self.gather(facts)
        odd = [f for f in self.ranks if f.settings != self.ranks[0].settings]
        if odd:
            names = ", ".join(f"rank {f.rank} on {f.host}" for f in odd)
            raise GroupError(
                f"{names} started with another mlxd version or other settings than rank 0; start every "
                "rank from the same mlxd and config"
            )
        # One random state on every rank: each samples the same token from the same logits.
        seed_random_state(self.share(int.from_bytes(os.urandom(8), "big") >> 1 if self.leader else None))

    def gather(self, value: Any) -> list[Any]:
        """Every rank's `value`, in rank order, on every rank."""
        data = pickle.dumps(value)
        longest = int(mx.distributed.all_max(mx.array(len(data)), group=self.world).item())
        padded = mx.array(np.frombuffer(data.ljust(longest, b"\0"), np.uint8))
        rows = np.array(mx.distributed.all_gather(padded[None], group=self.world))
        return [pickle.loads(row.tobytes()) for row in rows]  # what follows a pickle's end is not read

    def share(self, value: Any) -> Any:
        """Rank 0's `value` (pickled; None costs one small collective) on every rank; the others pass None.
        Each rank's active memory goes along, into `memory`."""
        data = pickle.dumps(value) if self.leader and value is not None else b""
        header = [0] * (1 + self.size)
        header[0], header[1 + self.rank] = len(data), mx.get_active_memory()
        summed = mx.distributed.all_sum(mx.array(header, dtype=mx.int64), group=self.world).tolist()
        self.memory = summed[1:]
        if summed[0] == 0:
            return None
        payload = mx.array(np.frombuffer(data, np.uint8)) if self.leader else mx.zeros(summed[0], mx.uint8)
        payload = np.array(mx.distributed.all_sum(payload, group=self.world))  # evaluated on every rank
        return value if self.leader else pickle.loads(payload.tobytes())

    def split(self, model: Any) -> None:
        """Split `model`'s weights over the group: tensor parallel (`model.shard`) by default where mlx-lm's
        model has it, pipeline parallel (`model.model.pipeline`) where it has only that or `wanted` says so;
        raises `GroupError` for a model that has neither."""
        parallel = self.wanted
        tensor = hasattr(model, "shard")
        pipeline = hasattr(getattr(model, "model", None), "pipeline")
        kind = getattr(getattr(model, "args", None), "model_type", type(model).__module__.split(".")[-1])
        if (parallel == "pipeline" and not pipeline) or (parallel == "tensor" and not tensor):
            raise GroupError(f"mlx-lm's {kind} model has no {parallel} parallelism")
        if not (tensor or pipeline):
            raise GroupError(
                f"mlx-lm's {kind} model supports neither tensor parallelism (model.shard) nor pipeline "
                f"parallelism (pipeline); it cannot be split across {self.size} processes: serve it on one "
                "Mac"
            )
        if tensor and parallel != "pipeline":
            model.shard(self.world)
            self.parallel = "tensor"
        else:
            model.model.pipeline(self.world)
            self.parallel = "pipeline"
        layers = self.gather(len(model.layers))  # each rank's, whose KV state it holds
        # Every rank's prompt cache evicts as rank 0's does: its budget is rank 0's, scaled to its share of
        # the layers (the lockstep check stops the group should they disagree all the same).
        self.cache_share = layers[self.rank] / layers[0]

    # Noticing a rank that dies or stops answering. The backend reports a lost peer only in some states (a
    # collective inside a model's step may wait for it forever), so a watchdog ends the group when an
    # engine loop iteration lasts longer than `timeout` (a rank that hangs), or than `SIGNALLED_PATIENCE`
    # once this process was signalled: `mlx.launch` signals every rank when one exits, and a process
    # that is shutting down has no long steps left to wait for. One whose launcher is gone (orphaned) is
    # lost too.

    def on_lost(self, callback: Callable[[], None]) -> None:
        """Call `callback` (from the watchdog's thread) when the group is found lost."""
        self._on_lost.append(callback)

    def busy(self) -> None:
        """The engine loop begins an iteration (each has its collectives); from the second on, the watchdog
        times them (the first waits for every rank to load the model, which may mean a download)."""
        self._busy_since = time.monotonic() if self._iterations else None
        self._iterations += 1

    def idle(self) -> None:
        """The engine loop ended: nothing waits for another rank any more."""
        self._busy_since = None

    def lost(self, reason: str) -> None:
        """The group cannot go on: say why, once, and tell whoever waits."""
        if not self.failed.is_set():
            log.error("the group of %d processes is lost: %s", self.size, reason)
            self.failed.set()
            for callback in self._on_lost:
                callback()

    def watch(self) -> None:
        """Start the watchdog."""
        threading.Thread(target=self._watch, name="group-watchdog", daemon=True).start()

    def signalled(self) -> None:
        """This process was asked to stop: an engine step that waits long now means a lost rank."""
        self._patience = min(self.timeout, SIGNALLED_PATIENCE)

    def _watch(self) -> None:
        parent = os.getppid()
        while not self.failed.wait(0.5):
            since, patience = self._busy_since, self._patience
            if os.getppid() != parent:
                self.lost("its launcher is gone (mlx.launch ended)")
            elif since is not None and time.monotonic() - since > patience:
                self.lost(f"an engine step has waited {patience:.0f}s for another process")

    def describe(self) -> dict[str, Any]:
        """The group as `/health` shows it."""
        return {
            "size": self.size,
            "backend": self.backend,
            "parallel": self.parallel,
            "ranks": [
                {"rank": f.rank, "host": f.host, "pid": f.pid, "memory_bytes": self.memory[f.rank]}
                for f in self.ranks
            ],
        }


def join(timeout: float, wanted: str) -> Group | None:
    """This process's group when `mlx.launch` started it as one of several, else None."""
    if not launched():
        return None
    world = mx.distributed.init(strict=True)
    return Group(world, backend_name(), timeout, wanted) if world.size() > 1 else None


def settings_digest(version: str, shared: str) -> str:
    """What every rank must agree on: mlxd's version and the settings that shape the engine."""
    return hashlib.sha256(f"{version}\n{shared}".encode()).hexdigest()[:16]
