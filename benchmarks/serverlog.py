"""What mlxd itself logged of each request: its INFO line (`daemon/api/bridge.py`), found by the request id
the response carried, with the engine's decode rate, speculation's counts and, for a constrained request,
the grammar's figures, and the vision tower's time on a prompt's images."""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from benchmarks.client import BenchError

LINE = re.compile(
    r"\[(?P<id>req_\w+)\]: model=\S+ prompt=(?P<prompt>\d+) cached=(?P<cached>\d+) output=(?P<output>\d+) "
    r"ttft=\S+ tok/s=(?P<tps>[\d.]+) stop=(?P<stop>\S+)"
    r"(?: spec=accepted:(?P<accepted>\d+)/(?P<proposed>\d+)\(\d+%\))?"
    r"(?: grammar=compile:(?P<compile>[\d.]+)ms,mask:(?P<mask>\d+)us/tok)?"
    r"(?: images_omitted=\d+)?"
    r"(?: images=\d+ image_encode=(?P<encode>[\d.]+)s)?"
)
WAIT_S = 10  # for the last lines to reach the file


@dataclass(frozen=True)
class Served:
    prompt_tokens: int
    cached_tokens: int
    output_tokens: int
    decode_tps: float  # (output tokens - 1) / the engine's decode seconds
    stop: str
    compile_ms: float | None  # None: no grammar
    mask_us: float | None  # per masked token
    proposed: int = 0  # speculative decoding: tokens proposed
    accepted: int = 0  # and accepted
    image_seconds: float = 0.0  # the vision tower's run on the prompt's images


def read(log_path: Path, ids: Iterable[str]) -> dict[str, Served]:
    """Each request's line; waits a little for lines still being written, then names the missing."""
    wanted = set(ids)
    deadline = time.monotonic() + WAIT_S
    while True:
        found = {
            match["id"]: _served(match)
            for match in LINE.finditer(log_path.read_text(errors="replace"))
            if match["id"] in wanted
        }
        if len(found) == len(wanted):
            return found
        if time.monotonic() > deadline:
            missing = ", ".join(sorted(wanted - set(found))[:5])
            raise BenchError(f"mlxd logged no request line for {missing} (log: {log_path})")
        time.sleep(0.1)


def _served(match: re.Match[str]) -> Served:
    return Served(
        prompt_tokens=int(match["prompt"]),
        cached_tokens=int(match["cached"]),
        output_tokens=int(match["output"]),
        decode_tps=float(match["tps"]),
        stop=match["stop"],
        compile_ms=float(match["compile"]) if match["compile"] is not None else None,
        mask_us=float(match["mask"]) if match["mask"] is not None else None,
        proposed=int(match["proposed"] or 0),
        accepted=int(match["accepted"] or 0),
        image_seconds=float(match["encode"] or 0.0),
    )
