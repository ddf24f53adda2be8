"""Token check for every route but health and the reachability probes: `x-api-key` or `Authorization:
Bearer`, compared in constant time."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable

from quart import request

from daemon.chat.errors import RequestError

# What must answer without a token: health checks, Claude Code's reachability HEADs, and the status page's
# HTML, which holds no data (its script sends the token on the admin routes it reads).
OPEN_ROUTES = {("GET", "/health"), ("HEAD", "/health"), ("HEAD", "/"), ("HEAD", "/api/hello"), ("GET", "/")}


def presented_tokens() -> list[bytes]:
    """The tokens a request carries, as the bytes the client sent (Quart decodes headers as latin-1)."""
    tokens = []
    if api_key := request.headers.get("x-api-key", "").strip():
        tokens.append(api_key)
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        tokens.append(credentials.strip())
    return [token.encode("latin-1") for token in tokens]


def matches(presented: bytes, expected: bytes) -> bool:
    """Equal, in time that depends on neither value: `compare_digest` returns early on a length mismatch,
    so both sides are hashed to the same length first."""
    return hmac.compare_digest(hashlib.sha256(presented).digest(), hashlib.sha256(expected).digest())


def token_checker(expected: Callable[[], str | None]) -> Callable[[], Awaitable[None]]:
    """A before-request hook (async: Quart runs plain functions in a thread); `expected` is asked on every
    request so a changed token applies at once."""

    async def check() -> None:
        token = expected()
        if token is None or (request.method, request.path) in OPEN_ROUTES:
            return
        presented = presented_tokens()
        if not presented:
            raise RequestError(
                401, "missing token: send it as x-api-key or Authorization: Bearer", should_retry=False
            )
        # Every presented token is compared, so the time taken does not tell which header matched.
        if not any([matches(p, token.encode()) for p in presented]):
            raise RequestError(401, "invalid token: the token sent is not the daemon's", should_retry=False)

    return check
