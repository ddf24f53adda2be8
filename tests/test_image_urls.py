"""Images given by URL, with `image_urls = "fetch"`: the trained vision model names the colour of an image
the server fetched (an Anthropic `url` source, in a user turn and in a tool result; an OpenAI http
`image_url`), whatever media type the image's server claims; a URL that fails (an error status, too slow,
too big, not an image, not http) is a 400 naming the block's field, and the server keeps serving. By default
URL sources stay refused. The images come from a plain HTTP server on 127.0.0.1 in this process."""

from __future__ import annotations

import base64
import contextlib
import http.server
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import anthropic
import pytest

from tests.conftest import RunningServer, run_server, server_env
from tests.images import encoded
from tests.vision_model import QUESTION

GREEDY = {"temperature": 0}
PNG = {colour: base64.b64decode(encoded("PNG", (64, 64), colour)) for colour in ("red", "blue")}


class Images(http.server.BaseHTTPRequestHandler):
    """`/red.png` and `/blue.png` (the second served as application/octet-stream), `/slow.png` (after
    the timeout), `/big.png` (past the byte limit), `/page.png` (HTML), anything else a 404."""

    def do_GET(self) -> None:
        name = self.path.strip("/").removesuffix(".png")
        if name in PNG:
            self._send(PNG[name], "image/png" if name == "red" else "application/octet-stream")
        elif name == "slow":
            time.sleep(3)
            self._send(PNG["red"], "image/png")
        elif name == "big":
            self._send(PNG["red"] + b"\0" * 300_000, "image/png")
        elif name == "page":
            self._send(b"<html>not an image</html>", "text/html")
        else:
            self.send_error(404)

    def _send(self, body: bytes, media_type: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", media_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # mlxd stopped reading it
            self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def images() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Images)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture(scope="module")
def server(vision: Path, tmp_path_factory) -> Iterator[RunningServer]:
    home = tmp_path_factory.mktemp("image-urls")
    env = server_env(home, MLXD_IMAGE_URLS="fetch", MLXD_IMAGE_URL_TIMEOUT="1", MLXD_MAX_IMAGE_BYTES="200000")
    with run_server(home, "--model", str(vision), "--model-name", "vision", env=env) as running:
        yield running


def url_block(url: str) -> dict:
    return {"type": "image", "source": {"type": "url", "url": url}}


def in_user_turn(url: str) -> list[dict]:
    return [{"role": "user", "content": [url_block(url), {"type": "text", "text": QUESTION}]}]


def in_tool_result(url: str) -> list[dict]:
    call = {"type": "tool_use", "id": "toolu_01", "name": "Read", "input": {"file_path": "/tmp/picture.png"}}
    result = {"type": "tool_result", "tool_use_id": "toolu_01", "content": [url_block(url)]}
    return [
        {"role": "user", "content": QUESTION},
        {"role": "assistant", "content": [call]},
        {"role": "user", "content": [result]},
    ]


def answer(server: RunningServer, messages: list[dict]) -> str:
    reply = server.client().messages.create(
        model="vision", max_tokens=8, extra_body=GREEDY, messages=messages
    )
    return reply.content[0].text


@pytest.mark.parametrize("shape", [in_user_turn, in_tool_result], ids=["user-turn", "tool-result"])
def test_the_model_names_the_colour_of_a_fetched_image(server: RunningServer, images: str, shape) -> None:
    assert [answer(server, shape(f"{images}/{colour}.png")) for colour in ("red", "blue", "red")] == [
        "red",
        "blue",
        "red",
    ]


def test_the_openai_face_fetches_http_image_urls(server: RunningServer, images: str) -> None:
    import openai

    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
    content = [
        {"type": "image_url", "image_url": {"url": f"{images}/blue.png"}},
        {"type": "text", "text": QUESTION},
    ]
    reply = client.chat.completions.create(
        model="vision", max_tokens=8, temperature=0, messages=[{"role": "user", "content": content}]
    )
    assert reply.choices[0].message.content == "blue"


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("missing.png", "could not fetch"),
        ("slow.png", "did not arrive within 1s"),
        ("big.png", "is over 200000 bytes"),
        ("page.png", "is not a readable PNG image"),
    ],
)
def test_a_url_that_fails_is_a_400_naming_the_block(
    server: RunningServer, images: str, path: str, message: str
) -> None:
    with pytest.raises(anthropic.BadRequestError) as refused:
        answer(server, in_tool_result(f"{images}/{path}"))
    said = refused.value.body["error"]["message"]
    assert said.startswith("messages.2.content.0.content.0.source.") and message in said
    assert answer(server, in_user_turn(f"{images}/red.png")) == "red"  # still serving


def test_only_http_urls_are_fetched(server: RunningServer) -> None:
    with pytest.raises(anthropic.BadRequestError) as refused:
        answer(server, in_user_turn("file:///etc/passwd"))
    assert (
        "messages.0.content.0.source.url: an image URL must be http:// or https://" in refused.value.message
    )


def test_url_sources_are_refused_by_default(vision: Path, tmp_path: Path, images: str) -> None:
    with (
        run_server(tmp_path, "--model", str(vision), "--model-name", "vision") as running,
        pytest.raises(anthropic.BadRequestError) as refused,
    ):
        answer(running, in_user_turn(f"{images}/red.png"))
    assert "mlxd fetches no URLs" in refused.value.message and 'image_urls = "fetch"' in refused.value.message
