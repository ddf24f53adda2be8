"""What an image a client sends must be, for every model and either API: one of the four media types
Anthropic's API takes, base64 that decodes, bytes that Pillow reads as an image of that type, and within
limits (Anthropic's by default: 5 MB, 8000 pixels a side, 100 images a request; settings change them).
Each API's request models call `check_image` from a validator, with the limits given to validation as its
context (`validation_context`), so a failure is a 400 naming the field at fault."""

from __future__ import annotations

import base64
import binascii
import io
from dataclasses import dataclass
from typing import Any

MEDIA_TYPES = {"image/jpeg": "JPEG", "image/png": "PNG", "image/gif": "GIF", "image/webp": "WEBP"}


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int = 5 * 1024 * 1024  # of one image, decoded
    max_side: int = 8000  # pixels
    max_images: int = 100  # in one request, tool results' included


def limits_of(context: Any) -> ImageLimits:
    """The limits a validation was given (see `validation_context`), else the defaults."""
    given = context.get("image_limits") if isinstance(context, dict) else None
    return given if isinstance(given, ImageLimits) else ImageLimits()


def validation_context(limits: ImageLimits) -> dict[str, Any]:
    """What a request body's validation is given, so that its image checks use `limits`."""
    return {"image_limits": limits}


IMAGE_OMITTED = "[image omitted: this model cannot see images]"


def check_image(media_type: str, data: str, limits: ImageLimits) -> tuple[int, int]:
    """The image's (width, height); raises ValueError saying what is wrong with it."""
    from PIL import Image, UnidentifiedImageError

    if media_type not in MEDIA_TYPES:
        raise ValueError(f"{media_type!r} is not a supported image type: use one of {', '.join(MEDIA_TYPES)}")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("the image data is not valid base64") from None
    if len(raw) > limits.max_bytes:
        raise ValueError(f"the image is {len(raw)} bytes; at most {limits.max_bytes} are allowed")
    try:
        with Image.open(io.BytesIO(raw)) as image:
            found, size = image.format, image.size
            image.verify()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise ValueError(f"the data is not a readable {MEDIA_TYPES[media_type]} image ({error})") from None
    if found != MEDIA_TYPES[media_type]:
        raise ValueError(f"the data is a {found} image, not {media_type}")
    if max(size) > limits.max_side:
        raise ValueError(f"the image is {size[0]}x{size[1]} pixels; at most {limits.max_side} a side")
    return size
