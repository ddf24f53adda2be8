"""Logging set-up: standard error by default, a size-rotated file when running as a service; every line
names the request it was logged for."""

from __future__ import annotations

import logging
import logging.handlers
import os
import secrets
import sys
from contextvars import ContextVar
from pathlib import Path

FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s]: %(message)s"
MAX_BYTES = 10 * 2**20
BACKUPS = 5
NO_REQUEST = "-"

# Set once per request by the app; each request runs in a task of its own, and `asyncio.to_thread` copies
# the context, so every line logged on its behalf on the API side finds its id here.
current_request: ContextVar[str] = ContextVar("current_request", default=NO_REQUEST)


def new_request_id() -> str:
    return f"req_{secrets.token_hex(12)}"


class RequestIdFilter(logging.Filter):
    """Gives each record a `request_id`: one passed in `extra` (the engine thread labels its own lines),
    else the request being handled, else "-"."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "request_id", None):
            record.request_id = current_request.get()
        return True


def configure(level: str, log_file: Path | None = None) -> None:
    handler: logging.Handler
    if log_file is None:
        handler = logging.StreamHandler(sys.stderr)
    else:
        log_file = log_file.expanduser()
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.handlers.RotatingFileHandler(log_file, maxBytes=MAX_BYTES, backupCount=BACKUPS)
    rank = os.environ.get("MLX_RANK")  # one of a group's processes (see daemon/engine/group.py)
    handler.setFormatter(
        logging.Formatter(FORMAT.replace("%(name)s", f"rank{rank} %(name)s") if rank else FORMAT)
    )
    handler.addFilter(RequestIdFilter())
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
