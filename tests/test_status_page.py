"""The status page and its JSON: `GET /` gives a browser the page (without a token; it holds no data) and
every other client what it got before; `GET /v1/admin/requests` needs the token and gives the requests
running now and the recent ones with their cache figures and, for a miss, what changed; `mlxd open` starts
the browser on the page."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx
import pytest

from tests.conftest import MLXD, RunningServer, run_server, server_env
from tests.model_zoo import wait_for

TOKEN = "status-page-test-token"
# System blocks as a client sends them: short ones, then one long enough (past half the prompt) that
# changing it makes the request read little of the cache: the explainer's case.
SHORT_BLOCKS = ["You are a helpful assistant.", "Answer briefly.", "Use plain words."]
LONG_BLOCK = " ".join(f"Rule {n}: read the file before you edit it." for n in range(60))


def system(long_block: str = LONG_BLOCK) -> list[dict]:
    return [{"type": "text", "text": text} for text in [*SHORT_BLOCKS, long_block]]


@pytest.fixture(scope="module")
def server(trained: Path, tmp_path_factory) -> Iterator[RunningServer]:
    home = tmp_path_factory.mktemp("status")
    with run_server(home, "--model", str(trained), "--model-name", "trained", token=TOKEN) as running:
        yield running


def ask(server: RunningServer, blocks: list[dict], **kwargs) -> anthropic.types.Message:
    messages = [{"role": "user", "content": "Say hello."}]
    return server.client().messages.with_raw_response.create(
        model="trained", max_tokens=8, system=blocks, messages=messages, **kwargs
    )


def recent(server: RunningServer) -> list[dict]:
    with server.http() as http:
        return http.get("/v1/admin/requests").json()["recent"]


def test_the_requests_route_needs_the_token(server: RunningServer) -> None:
    refused = httpx.get(f"{server.url}/v1/admin/requests")
    assert refused.status_code == 401
    assert refused.json()["error"]["type"] == "authentication_error"
    with server.http() as http:
        reply = http.get("/v1/admin/requests").json()
    assert set(reply) == {"live", "queued", "recent"} and reply["queued"] == {"trained": 0}


def test_recent_requests_carry_their_figures_and_what_changed_on_a_miss(server: RunningServer) -> None:
    first = ask(server, system())
    changed = ask(server, system(LONG_BLOCK.replace("Rule 1:", "Rule one:")))
    by_id = {entry["request_id"]: entry for entry in recent(server)}
    before, after = by_id[first.headers["request-id"]], by_id[changed.headers["request-id"]]
    assert after["cache_miss"] == "system block 3 changed"
    assert after["cached_tokens"] < after["prompt_tokens"] // 2
    for entry in (before, after):
        assert entry["model"] == "trained" and entry["stop_reason"] in ("end_turn", "max_tokens")
        assert entry["output_tokens"] >= 1 and entry["ttft_s"] > 0 and entry["tokens_per_second"] >= 0
        assert entry["finished_at"] <= time.time()
    assert list(by_id).index(after["request_id"]) < list(by_id).index(before["request_id"])  # newest first


def test_a_running_request_is_live_with_its_counts(tiny_model: Path, tmp_path: Path) -> None:
    with run_server(tmp_path, "--model", str(tiny_model), "--model-name", "tiny") as running:
        body = {
            "model": "tiny",
            "max_tokens": 4000,
            "stream": True,
            "messages": [{"role": "user", "content": "Go"}],
        }
        seen: list[dict] = []
        stop = threading.Event()

        def stream() -> None:
            with httpx.stream("POST", f"{running.url}/v1/messages", json=body, timeout=120) as response:
                for _ in response.iter_lines():
                    if stop.is_set():
                        return

        streaming = threading.Thread(target=stream)
        streaming.start()

        def decoding() -> bool:
            live = httpx.get(f"{running.url}/v1/admin/requests").json()["live"]
            seen[:] = [entry for entry in live if entry["output_tokens"] > 1]
            return bool(seen)

        wait_for(decoding, "the request to be decoding")
        stop.set()
        streaming.join()
    (entry,) = seen
    assert entry["model"] == "tiny" and entry["state"] == "decoding"
    assert entry["prompt_tokens"] > 0 and entry["ttft_s"] > 0 and entry["request_id"].startswith("req_")


def test_the_page_is_for_browsers_and_the_rest_get_what_they_got(server: RunningServer) -> None:
    page = httpx.get(f"{server.url}/", headers={"Accept": "text/html,application/xhtml+xml"})
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert (
        "default-src 'none'" in policy and "connect-src 'self'" in policy and "'unsafe-inline'" not in policy
    )
    assert "/v1/admin/requests" in page.text and TOKEN not in page.text
    other = httpx.get(f"{server.url}/", headers={"Accept": "*/*"})
    assert other.status_code == 405 and other.json()["type"] == "error"
    assert httpx.head(f"{server.url}/").status_code == 200
    foreign = httpx.get(f"{server.url}/", headers={"Accept": "text/html", "Host": "evil.example:80"})
    assert foreign.status_code == 403


def test_only_the_pages_own_origin_may_post(server: RunningServer) -> None:
    own = server.url.replace("127.0.0.1", "127.0.0.1")
    headers = {"x-api-key": TOKEN}
    loaded = httpx.post(
        f"{server.url}/v1/admin/models/trained/load", headers={**headers, "Origin": own}, timeout=120
    )
    assert loaded.status_code == 200
    refused = httpx.post(
        f"{server.url}/v1/admin/models/trained/load", headers={**headers, "Origin": "http://evil.example"}
    )
    assert refused.status_code == 403


def test_mlxd_open_starts_the_browser_on_the_page(tmp_path: Path) -> None:
    opened = tmp_path / "opened"
    browser = tmp_path / "browser"
    browser.write_text(
        f"#!{sys.executable}\nimport sys, pathlib\npathlib.Path({str(opened)!r}).write_text(sys.argv[1])\n"
    )
    browser.chmod(0o755)
    env = {**server_env(tmp_path), "BROWSER": str(browser), "DISPLAY": ""}
    url = "http://127.0.0.1:9876"
    done = subprocess.run(
        [str(MLXD), "open", "--url", url], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"opening {url}/"
    wait_for(opened.exists, "the browser to be started")
    assert opened.read_text() == f"{url}/"
