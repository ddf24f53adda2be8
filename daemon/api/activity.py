"""What the status page shows of recent requests: the last few hundred, kept in memory as each request's
log line records it (`RequestLog`), newest last."""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any

RECENT = 300


class Activity:
    def __init__(self, keep: int = RECENT):
        self._recent: deque[dict[str, Any]] = deque(maxlen=keep)
        self._lock = threading.Lock()

    def record(self, entry: dict[str, Any]) -> None:
        with self._lock:
            self._recent.append({**entry, "finished_at": round(time.time(), 3)})

    def recent(self) -> list[dict[str, Any]]:
        """Newest first."""
        with self._lock:
            return list(reversed(self._recent))
