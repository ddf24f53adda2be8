"""Images on the real server: every image block is checked (type, base64, the bytes an image of that type,
Anthropic's size and count limits) with a 400 naming its path, for either API; a model that cannot see
images reads a note in each one's place, and the response says so in a header, the log line and a metric
count it; `text_model_images = "refuse"` makes such a request a 400 instead."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx
import openai
import pytest

from tests.conftest import RunningServer, run_server, server_env
from tests.images import PNG, encoded

IMAGE = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}}
WARNING = "mlxd-warning"


@pytest.fixture(scope="module")
def server(tiny_model: Path, tmp_path_factory) -> Iterator[RunningServer]:
    home = tmp_path_factory.mktemp("images")
    with run_server(home, "--model", str(tiny_model), "--model-name", "tiny") as running:
        yield running


def with_images(*blocks: dict) -> list[dict]:
    """A conversation whose last user turn holds `blocks`, after a tool call whose result is an image."""
    return [
        {"role": "user", "content": "Take a screenshot."},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "shot", "input": {}}]},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "t1", "content": [IMAGE]}, *blocks],
        },
    ]


TOOLS = [{"name": "shot", "description": "Takes a screenshot.", "input_schema": {"type": "object"}}]


@pytest.mark.parametrize("stream", [False, True])
def test_a_text_model_reads_a_note_for_each_image_and_the_response_says_so(
    server: RunningServer, stream: bool
) -> None:
    body = {
        "model": "tiny",
        "max_tokens": 3,
        "messages": with_images(IMAGE),
        "tools": TOOLS,
        "stream": stream,
    }
    with server.http() as http:
        response = http.post("/v1/messages", json=body)
        assert response.status_code == 200, response.text
        metrics = http.get("/metrics").text
    assert response.headers[WARNING] == "2 images omitted: model tiny cannot see images"
    request_id = response.headers["request-id"]
    line = next(line for line in server.log().splitlines() if request_id in line and "stop=" in line)
    assert line.endswith("images_omitted=2")
    assert 'mlxd_images_omitted_total{model="tiny"}' in metrics


def test_count_tokens_counts_the_note_an_image_becomes(server: RunningServer) -> None:
    client = server.client()
    plain = client.messages.count_tokens(model="tiny", messages=[{"role": "user", "content": "Look."}])
    looked = client.messages.count_tokens(
        model="tiny", messages=[{"role": "user", "content": [{"type": "text", "text": "Look."}, IMAGE]}]
    )
    assert looked.input_tokens > plain.input_tokens


BAD_SOURCES = {
    "media type": (
        {"type": "base64", "media_type": "image/bmp", "data": PNG},
        "messages.2.content.1.source.media_type: Input should be 'image/jpeg', 'image/png', 'image/gif' or "
        "'image/webp'",
    ),
    "base64": (
        {"type": "base64", "media_type": "image/png", "data": "not base64!"},
        "messages.2.content.1.source.data: the image data is not valid base64",
    ),
    "another type": (
        {"type": "base64", "media_type": "image/webp", "data": PNG},
        "messages.2.content.1.source.data: the data is a PNG image, not image/webp",
    ),
    "not an image": (
        {"type": "base64", "media_type": "image/png", "data": "aGVsbG8="},
        "messages.2.content.1.source.data: the data is not a readable PNG image",
    ),
    "too wide": (
        {"type": "base64", "media_type": "image/png", "data": encoded(size=(8001, 1))},
        "messages.2.content.1.source.data: the image is 8001x1 pixels; at most 8000 a side",
    ),
    "too large": (
        {"type": "base64", "media_type": "image/png", "data": "A" * (7 * 1024 * 1024)},
        "messages.2.content.1.source.data: the image is 5505024 bytes; at most 5242880 are allowed",
    ),
    "url": (
        {"type": "url", "url": "http://169.254.169.254/latest/meta-data/"},
        "messages.2.content.1.source.url: mlxd fetches no URLs",
    ),
}


@pytest.mark.parametrize("problem", BAD_SOURCES)
def test_each_bad_image_is_a_400_naming_its_path(server: RunningServer, problem: str) -> None:
    source, message = BAD_SOURCES[problem]
    with pytest.raises(anthropic.BadRequestError) as refused:
        server.client().messages.create(
            model="tiny", max_tokens=3, tools=TOOLS, messages=with_images({"type": "image", "source": source})
        )
    assert refused.value.body["error"]["message"].startswith(message)
    assert httpx.get(f"{server.url}/health").json()["status"] == "ok"


def test_more_than_a_hundred_images_are_refused(server: RunningServer) -> None:
    with pytest.raises(
        anthropic.BadRequestError, match="messages: 101 images in all; at most 100 are allowed"
    ):
        server.client().messages.create(
            model="tiny", max_tokens=3, messages=[{"role": "user", "content": [IMAGE] * 101}]
        )


def test_the_openai_face_checks_and_notes_images_alike(server: RunningServer) -> None:
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused")
    part = {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}}
    raw = client.chat.completions.with_raw_response.create(
        model="tiny",
        max_tokens=3,
        messages=[{"role": "user", "content": [{"type": "text", "text": "Look."}, part]}],
    )
    assert raw.headers[WARNING] == "1 images omitted: model tiny cannot see images"
    wrong = {"type": "image_url", "image_url": {"url": f"data:image/gif;base64,{PNG}"}}
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(
            model="tiny", max_tokens=3, messages=[{"role": "user", "content": [wrong]}]
        )
    assert refused.value.body["param"] == "messages[0].content[0].image_url.url"
    assert "the data is a PNG image, not image/gif" in refused.value.body["message"]


def test_models_say_they_take_no_images(server: RunningServer) -> None:
    with server.http() as http:
        assert http.get("/v1/models").json()["data"][0]["images"] is False


def test_refusing_images_for_text_models_names_the_setting(tiny_model: Path, tmp_path: Path) -> None:
    env = server_env(tmp_path, MLXD_TEXT_MODEL_IMAGES="refuse")
    with run_server(tmp_path, "--model", str(tiny_model), "--model-name", "tiny", env=env) as server:
        with pytest.raises(anthropic.BadRequestError) as refused:
            server.client().messages.create(model="tiny", max_tokens=3, tools=TOOLS, messages=with_images())
        plain = server.client().messages.create(
            model="tiny", max_tokens=3, messages=[{"role": "user", "content": "Hi"}]
        )
    assert refused.value.body["error"]["message"] == (
        'model tiny cannot see images, and text_model_images is "refuse": the request holds 1 images; '
        "no model served here takes images"
    )
    assert plain.stop_reason == "max_tokens"


def test_the_image_limits_are_settings(tiny_model: Path, tmp_path: Path) -> None:
    env = server_env(tmp_path, MLXD_MAX_IMAGES="1", MLXD_MAX_IMAGE_SIDE="1", MLXD_MAX_IMAGE_BYTES="75")
    dot, wide, large = (encoded(size=size) for size in ((1, 1), (2, 1), (2, 2)))  # 69, 72 and 79 bytes
    with run_server(tmp_path, "--model", str(tiny_model), "--model-name", "tiny", env=env) as server:
        refusals = []
        for images in ([dot, dot], [wide], [large]):
            blocks = [{"type": "image", "source": {**IMAGE["source"], "data": data}} for data in images]
            with pytest.raises(anthropic.BadRequestError) as refused:
                server.client().messages.create(
                    model="tiny", max_tokens=3, messages=[{"role": "user", "content": blocks}]
                )
            refusals.append(refused.value.body["error"]["message"])
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused")
        part = {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{dot}"}}
        with pytest.raises(openai.BadRequestError, match="messages: 2 images in all; at most 1 are allowed"):
            client.chat.completions.create(
                model="tiny", max_tokens=3, messages=[{"role": "user", "content": [part, part]}]
            )
    assert refusals == [
        "messages: 2 images in all; at most 1 are allowed",
        "messages.0.content.0.source.data: the image is 2x1 pixels; at most 1 a side",
        "messages.0.content.0.source.data: the image is 79 bytes; at most 75 are allowed",
    ]
