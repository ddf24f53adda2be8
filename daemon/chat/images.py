"""What an image a client sends must be, for every model and either API: one of the four media types
Anthropic's API takes, base64 that decodes, bytes that Pillow reads as an image of that type, and within
Anthropic's limits (5 MB, 8000 pixels a side, 100 images a request). Each API's request models call
`check_image` from a validator, so a failure is a 400 naming the field at fault."""

from __future__ import annotations

import base64
import binascii
import io

MEDIA_TYPES = {"image/jpeg": "JPEG", "image/png": "PNG", "image/gif": "GIF", "image/webp": "WEBP"}
MAX_IMAGE_BYTES = 5 * 1024 * 1024  # decoded
MAX_IMAGE_SIDE = 8000  # pixels
MAX_IMAGES = 100  # in one request, tool results' included

IMAGE_OMITTED = "[image omitted: this model cannot see images]"


def check_image(media_type: str, data: str) -> tuple[int, int]:
    """The image's (width, height); raises ValueError saying what is wrong with it."""
    from PIL import Image, UnidentifiedImageError

    if media_type not in MEDIA_TYPES:
        raise ValueError(f"{media_type!r} is not a supported image type: use one of {', '.join(MEDIA_TYPES)}")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("the image data is not valid base64") from None
    if len(raw) > MAX_IMAGE_BYTES:
        raise ValueError(f"the image is {len(raw)} bytes; at most {MAX_IMAGE_BYTES} are allowed")
    try:
        with Image.open(io.BytesIO(raw)) as image:
            found, size = image.format, image.size
            image.verify()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise ValueError(f"the data is not a readable {MEDIA_TYPES[media_type]} image ({error})") from None
    if found != MEDIA_TYPES[media_type]:
        raise ValueError(f"the data is a {found} image, not {media_type}")
    if max(size) > MAX_IMAGE_SIDE:
        raise ValueError(f"the image is {size[0]}x{size[1]} pixels; at most {MAX_IMAGE_SIDE} a side")
    return size
