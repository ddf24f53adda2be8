"""Images given by URL, fetched when `image_urls = "fetch"`: Anthropic's `url` image sources (in user turns
and tool results) and OpenAI's http(s) `image_url`s. Before the body is validated, each is fetched (within
`image_url_timeout` and the image byte limit) and put in the body as the base64 image it names, which is
then checked as any other image is (its type, its bytes, its size), so every failure is a 400 naming the
block's field.

Off by default: a daemon that fetches what requests name lets any client that reaches it make requests
from this machine, to its network too (server-side request forgery). Turn it on only for clients you trust.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx

from daemon.chat.errors import invalid_request
from daemon.chat.images import MEDIA_TYPES
from daemon.chat.limits import check_containers

REDIRECTS = 3


@dataclass(frozen=True)
class Fetching:
    """How URL images are fetched: within `timeout` seconds each, at most `max_bytes` each."""

    timeout: float
    max_bytes: int


async def inline_anthropic(body: bytes, fetching: Fetching | None) -> bytes:
    """`body` with each `url` image source replaced by the base64 source of what it names."""
    return await _inline(body, fetching, b'"url"', _anthropic_sources)


async def inline_openai(body: bytes, fetching: Fetching | None) -> bytes:
    """`body` with each http(s) `image_url` replaced by a data URL of what it names."""
    return await _inline(body, fetching, b"http", _openai_urls)


# A body's URL images: for each, its URL, the path a 400 names, and what puts the image in its place.
Found = Iterator[tuple[Any, str, Callable[[str, str], None]]]


async def _inline(
    body: bytes, fetching: Fetching | None, marker: bytes, find: Callable[[Any], Found]
) -> bytes:
    if fetching is None or marker not in body:
        return body
    request = _loaded(body)
    found = list(find(request))
    for url, path, put in found:
        put(*await _fetch(url, path, fetching))
    return json.dumps(request).encode() if found else body


def _loaded(body: bytes) -> Any:
    check_containers(body)
    try:
        return json.loads(body)
    except ValueError:
        return None  # the body's validation says what is wrong with it


def _anthropic_sources(request: Any) -> Found:
    """Each `url` image source (`messages.2.content.1.source.url`), in user turns and tool results."""
    for i, message in enumerate(_list(request, "messages")):
        for j, block in enumerate(_list(message, "content")):
            yield from _url_source(block, f"messages.{i}.content.{j}")
            if isinstance(block, dict) and block.get("type") == "tool_result":
                for k, part in enumerate(_list(block, "content")):
                    yield from _url_source(part, f"messages.{i}.content.{j}.content.{k}")


def _url_source(block: Any, path: str) -> Found:
    if isinstance(block, dict) and block.get("type") == "image":
        source = block.get("source")
        if isinstance(source, dict) and source.get("type") == "url":

            def put(media_type: str, data: str, source: dict = source) -> None:
                source.clear()
                source.update(type="base64", media_type=media_type, data=data)

            yield source.get("url"), f"{path}.source.url", put


def _openai_urls(request: Any) -> Found:
    """Each http(s) `image_url` (`messages[0].content[1].image_url.url`)."""
    for i, message in enumerate(_list(request, "messages")):
        for j, part in enumerate(_list(message, "content")):
            image = part.get("image_url") if isinstance(part, dict) else None
            url = image.get("url") if isinstance(image, dict) else None
            if isinstance(url, str) and url.startswith(("http://", "https://")):

                def put(media_type: str, data: str, image: dict = image) -> None:
                    image["url"] = f"data:{media_type};base64,{data}"

                yield url, f"messages[{i}].content[{j}].image_url.url", put


def _list(holder: Any, key: str) -> list:
    value = holder.get(key) if isinstance(holder, dict) else None
    return value if isinstance(value, list) else []


async def _fetch(url: Any, path: str, fetching: Fetching) -> tuple[str, str]:
    """The image at `url`: its media type (as the server says it, else as Pillow reads it) and base64 data;
    raises a 400 naming `path` when it cannot be had."""
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise invalid_request(f"{path}: an image URL must be http:// or https://", param=path)
    try:
        async with asyncio.timeout(fetching.timeout):
            media_type, raw = await _get(url, fetching.max_bytes)
    except TimeoutError:
        raise invalid_request(
            f"{path}: the image at {url} did not arrive within {fetching.timeout:g}s", param=path
        ) from None
    except httpx.HTTPError as error:
        raise invalid_request(f"{path}: could not fetch {url}: {error}", param=path) from None
    if raw is None:
        raise invalid_request(
            f"{path}: the image at {url} is over {fetching.max_bytes} bytes; at most that many are allowed",
            param=path,
        )
    return media_type or _sniffed(raw), base64.b64encode(raw).decode()


async def _get(url: str, max_bytes: int) -> tuple[str | None, bytes | None]:
    """The response's media type and bytes (None when they pass `max_bytes`); an error status raises."""
    async with (
        httpx.AsyncClient(follow_redirects=True, max_redirects=REDIRECTS) as client,
        client.stream("GET", url) as response,
    ):
        response.raise_for_status()
        chunks, size = [], 0
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > max_bytes:
                return None, None
            chunks.append(chunk)
        media_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
        return (media_type if media_type in MEDIA_TYPES else None), b"".join(chunks)


def _sniffed(raw: bytes) -> str:
    """The media type Pillow reads in `raw` (a server that named none, or another), for the checks that
    follow; bytes it cannot read are left to them to refuse."""
    import io

    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(raw)) as image:
            found = image.format
    except (UnidentifiedImageError, OSError):
        return "image/png"
    by_format = {name: media_type for media_type, name in MEDIA_TYPES.items()}
    return by_format.get(found or "", "image/png")
