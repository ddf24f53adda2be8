"""Small real images for tests, as base64: what a client sends in an image block or a data URL."""

from __future__ import annotations

import base64
import io


def encoded(fmt: str = "PNG", size: tuple[int, int] = (2, 2), color: str = "red") -> str:
    """A solid image in `fmt` (PNG, JPEG, GIF or WEBP), base64-encoded."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, fmt)
    return base64.b64encode(buffer.getvalue()).decode()


PNG = encoded()
