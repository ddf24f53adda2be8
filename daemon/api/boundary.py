"""The checks every request passes before its token or body is looked at: the client's address, the Host
and Origin it names (so web pages and DNS rebinding reach nothing), no CORS preflights, JSON-only bodies;
and, after the response is made, the rest of a body the route did not read."""

from __future__ import annotations

import asyncio
import ipaddress
import re
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from quart import Quart, Response, current_app, g, request
from werkzeug.exceptions import RequestEntityTooLarge

from daemon.chat.errors import RequestError, invalid_request
from daemon.config.settings import Settings, host_name, is_loopback

# A Host header: a name or dotted address, or a bracketed IPv6 address, and an optional port.
_HOST = re.compile(r"(?:\[(?P<ipv6>[0-9a-f:.]+)\]|(?P<name>[a-z0-9._-]+))(?::\d{1,5})?")
_SHOWN = 100  # characters of a client-sent value quoted in a message


@dataclass(frozen=True)
class Boundary:
    """Who may talk to the daemon: client networks (empty: anyone who can connect), Host names beyond
    loopback ones, and web page origins (empty: none)."""

    clients: tuple[IPv4Network | IPv6Network, ...]
    hosts: frozenset[str]
    origins: frozenset[str]

    @classmethod
    def from_settings(cls, settings: Settings) -> Boundary:
        hosts = set(settings.allowed_hosts)
        if not is_loopback(settings.host):
            hosts.add(host_name(settings.host))  # the address clients beyond this machine were told to use
        return cls(settings.allowed_clients, frozenset(hosts), frozenset(settings.allowed_origins))

    async def check(self) -> None:
        """The before-request hook (async, since Quart runs plain functions in a thread): the connection,
        then the names the request gives, then its shape."""
        self.check_client()
        self.check_host()
        self.check_origin()
        refuse_preflight()
        check_content_type()

    def check_client(self) -> None:
        if not self.clients:
            return
        address = _client_address(request.remote_addr)
        if address is None or not any(address in network for network in self.clients):
            raise RequestError(
                403,
                f"client address {_shown(request.remote_addr)} is not in allowed_clients; "
                "add it (or its network) there to let it in",
                should_retry=False,
            )

    def check_host(self) -> None:
        host = request.headers.get("host", "")  # Hypercorn turns an HTTP/2 :authority into Host
        name = _host_name(host)
        if name is None or not (is_loopback(name) or name in self.hosts):
            raise RequestError(
                403,
                f"Host {_shown(host)} is not allowed: mlxd answers loopback names (localhost, 127.0.0.1, "
                "[::1]) and the names in allowed_hosts; add this name there if clients use it",
                should_retry=False,
            )

    def check_origin(self) -> None:
        # Programs send no Origin; browsers always do on cross-site requests, and on every POST. The
        # daemon's own status page, at the Host just checked, is the one origin always let in.
        origin = request.headers.get("origin")
        own = f"http://{request.headers.get('host', '')}".lower()
        if origin is not None and origin.lower().rstrip("/") not in self.origins | {own}:
            raise RequestError(
                403,
                f"Origin {_shown(origin)} is not allowed: mlxd answers web pages only from the origins in "
                "allowed_origins",
                should_retry=False,
            )


def refuse_preflight() -> None:
    """No CORS preflight is granted (no route sends Access-Control-Allow-* headers), so none is answered."""
    if request.method == "OPTIONS":
        raise RequestError(
            405,
            "method not allowed: mlxd grants no CORS preflight; call it from a program",
            should_retry=False,
        )


def check_content_type() -> None:
    """A body must be declared `application/json` (parameters aside; `+json` types are not): what a web
    page may send without a preflight (`text/plain`, forms, multipart) never is."""
    if declares_body() and request.mimetype != "application/json":
        raise invalid_request(
            f"content-type: send the body as application/json, not {_shown(request.content_type or 'none')}"
        )


def declares_body() -> bool:
    """Whether the head announces a body (known before any of it is read)."""
    return bool(request.content_length) or "chunked" in request.headers.get("transfer-encoding", "").lower()


async def start_body_clock() -> None:
    """The request's whole body must have arrived by this deadline, read by the route or drained after."""
    g.body_deadline = asyncio.get_running_loop().time() + current_app.config["BODY_TIMEOUT"]


async def settle_body(response: Response) -> Response:
    """Hypercorn closes a connection whose request body was not read to its end, without saying so, and a
    client that reuses it loses its next request. So read and discard what is left (in chunks, within the
    body limit and the body's deadline); when that fails, say `Connection: close`."""
    if declares_body() and not await _drain_body() and request.http_version in ("1.0", "1.1"):
        response.headers["Connection"] = "close"  # HTTP/2 forbids the header; a stream ends on its own
    return response


async def _drain_body() -> bool:
    limit = current_app.config["MAX_CONTENT_LENGTH"]
    received = 0
    try:
        async with asyncio.timeout_at(g.body_deadline):
            async for chunk in request.body:
                received += len(chunk)
                if received > limit:
                    return False
    except (TimeoutError, RequestEntityTooLarge):
        return False
    return True


def register(app: Quart, settings: Settings) -> None:
    """Install the hooks; call after the request-id hook and before the token check."""
    app.before_request(start_body_clock)
    app.before_request(Boundary.from_settings(settings).check)
    app.after_request(settle_body)


def _host_name(host: str) -> str | None:
    """The name a Host header gives, lower case, without port or brackets; None when it is malformed."""
    match = _HOST.fullmatch(host.strip().lower())
    if match is None:
        return None
    return match["ipv6"] or match["name"]


def _client_address(remote: str | None) -> IPv4Address | IPv6Address | None:
    try:
        address = ipaddress.ip_address(remote or "")
    except ValueError:
        return None
    # A dual-stack socket reports IPv4 clients as ::ffff:a.b.c.d.
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _shown(value: str | None) -> str:
    text = repr(value)
    return text if len(text) <= _SHOWN else text[:_SHOWN] + "…'"
