"""A Hugging Face Hub on 127.0.0.1 that serves model folders as repos, for `HF_ENDPOINT`: the routes
`huggingface_hub.snapshot_download` calls (repo info, file tree, and file HEAD/GET with ranges), so the real
download path runs end to end. A test can hold a file's body back until it lets it go."""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


@dataclass
class FakeHub:
    repos: dict[str, Path]  # repo id -> folder
    url: str = ""
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)  # method, path, Range
    held: dict[str, threading.Event] = field(default_factory=dict)  # file name -> released when set

    def hold(self, file_name: str) -> threading.Event:
        """Make GETs of `file_name` wait (after their headers) until the returned event is set."""
        release = self.held[file_name] = threading.Event()
        return release

    def gets(self, file_name: str) -> list[str | None]:
        """The Range header of each GET of `file_name`, in order."""
        return [
            rng for method, path, rng in self.requests if method == "GET" and path.endswith("/" + file_name)
        ]

    def commit(self, repo_id: str) -> str:
        return hashlib.sha1(repo_id.encode()).hexdigest()

    def files(self, repo_id: str) -> dict[str, Path]:
        folder = self.repos[repo_id]
        return {str(p.relative_to(folder)): p for p in sorted(folder.rglob("*")) if p.is_file()}


@contextmanager
def serve_hub(repos: dict[str, Path]) -> Iterator[FakeHub]:
    hub = FakeHub(repos)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(hub))
    server.daemon_threads = True
    hub.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield hub
    finally:
        for release in hub.held.values():
            release.set()
        server.shutdown()
        server.server_close()


_INFO = re.compile(r"^/api/models/(.+)/revision/([^/]+)$")
_TREE = re.compile(r"^/api/models/(.+)/tree/([^/]+)$")
_FILE = re.compile(r"^/(.+)/resolve/([^/]+)/(.+)$")


def _handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_HEAD(self) -> None:
            self._answer(body=False)

        def do_GET(self) -> None:
            self._answer(body=True)

        def _answer(self, body: bool) -> None:
            path = self.path.split("?", 1)[0]
            hub.requests.append((self.command, path, self.headers.get("Range")))
            if (match := _INFO.match(path)) and match[1] in hub.repos:
                repo = match[1]
                siblings = [{"rfilename": name} for name in hub.files(repo)]
                return self._json({"id": repo, "sha": hub.commit(repo), "siblings": siblings})
            if (match := _TREE.match(path)) and match[1] in hub.repos:
                entries = [
                    {"type": "file", "path": name, "size": file.stat().st_size, "oid": _digest(file)[:40]}
                    for name, file in hub.files(match[1]).items()
                ]
                return self._json(entries)
            if (match := _FILE.match(path)) and match[1] in hub.repos and match[3] in hub.files(match[1]):
                return self._file(match[1], match[3], body)
            self.send_response(404)
            self.send_header("X-Error-Code", "RepoNotFound")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def _json(self, value: object) -> None:
            data = json.dumps(value).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _file(self, repo: str, name: str, body: bool) -> None:
            file = hub.files(repo)[name]
            data = file.read_bytes()
            start = (
                int(match[1]) if (match := re.match(r"bytes=(\d+)-", self.headers.get("Range", ""))) else 0
            )
            self.send_response(206 if start else 200)
            self.send_header("X-Repo-Commit", hub.commit(repo))
            self.send_header("ETag", f'"{_digest(file)}"')
            self.send_header("Content-Length", str(len(data) - start))
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.end_headers()
            if not body:
                return
            if release := hub.held.get(name):
                release.wait()
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # a client a test ended
                self.wfile.write(data[start:])

    return Handler


def _digest(file: Path) -> str:
    return hashlib.sha256(file.read_bytes()).hexdigest()
