"""A small standard-library HTTP client for the CLI to talk to a running mlxd: health, models, and
Messages requests, streamed or not."""

from __future__ import annotations

import http.client
import ipaddress
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from daemon.config.settings import Settings

# Long enough for a real model's first prefill of a Claude Code sized prompt.
DEFAULT_TIMEOUT = 300.0


class DaemonUnreachable(ConnectionError):
    """Nothing answered at the daemon's address."""

    def __init__(self, url: str, reason: str):
        super().__init__(
            f"mlxd is not running at {url} ({reason}); start it with `mlxd serve` or `mlxd service start`"
        )
        self.url = url
        self.reason = reason


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def error_message(self) -> str:
        """The message of an Anthropic error envelope, else the start of the body."""
        try:
            return str(self.json()["error"]["message"])
        except (ValueError, KeyError, TypeError):
            return self.body[:200].decode(errors="replace")


@dataclass(frozen=True)
class ServerEvent:
    name: str
    data: dict[str, Any]


def base_url(settings: Settings) -> str:
    """Where a client on this machine reaches the daemon these settings describe."""
    host = settings.host
    if host in ("", "0.0.0.0", "localhost"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    try:
        if ipaddress.ip_address(host).version == 6:
            host = f"[{host}]"
    except ValueError:
        pass  # a host name
    return f"http://{host}:{settings.port}"


class DaemonClient:
    def __init__(self, url: str, token: str | None = None, timeout: float = DEFAULT_TIMEOUT):
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout
        parts = urlsplit(self.url)
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or 80

    def request(
        self,
        method: str,
        path: str,
        body: dict | None = None,
        headers: dict[str, str] | None = None,
        *,
        authorized: bool = True,
    ) -> Reply:
        connection, response = self._send(method, path, body, headers, authorized)
        try:
            return Reply(response.status, response.read())
        finally:
            connection.close()

    def stream(
        self, path: str, body: dict, headers: dict[str, str] | None = None
    ) -> tuple[Reply | None, Iterator[ServerEvent]]:
        """POST a streamed request: (the error reply, no events) unless it answered 200, else (None, its
        Server-Sent Events as they arrive)."""
        connection, response = self._send("POST", path, body, headers, authorized=True)
        if response.status != 200:
            reply = Reply(response.status, response.read())
            connection.close()
            return reply, iter(())
        return None, _events(connection, response)

    def _send(
        self,
        method: str,
        path: str,
        body: dict | None,
        headers: dict[str, str] | None,
        authorized: bool,
    ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        # http.client, not urllib: no proxy settings (macOS system proxies included) apply to a local daemon.
        connection = http.client.HTTPConnection(self._host, self._port, timeout=self.timeout)
        sent = {"accept": "application/json", **(headers or {})}
        if authorized and self.token:
            sent["authorization"] = f"Bearer {self.token}"
        payload = None
        if body is not None:
            payload = json.dumps(body).encode()
            sent["content-type"] = "application/json"
        try:
            connection.connect()
        except OSError as error:
            connection.close()
            raise DaemonUnreachable(self.url, _reason(error)) from error
        try:
            connection.request(method, path, body=payload, headers=sent)
            return connection, connection.getresponse()
        except BaseException:
            connection.close()
            raise


def _events(
    connection: http.client.HTTPConnection, response: http.client.HTTPResponse
) -> Iterator[ServerEvent]:
    name = "message"
    data: list[str] = []
    try:
        for raw in response:
            line = raw.decode().rstrip("\r\n")
            if line.startswith("event:"):
                name = line.removeprefix("event:").strip()
            elif line.startswith("data:"):
                data.append(line.removeprefix("data:").strip())
            elif not line and data:
                yield ServerEvent(name, json.loads("\n".join(data)))
                name, data = "message", []
    finally:
        connection.close()


def _reason(error: OSError) -> str:
    if isinstance(error, ConnectionRefusedError):
        return "connection refused"
    if isinstance(error, TimeoutError):
        return "timed out"
    return error.strerror or str(error)
