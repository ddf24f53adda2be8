"""Byte sizes as people read them, in logs and in the CLI."""

from __future__ import annotations


def format_bytes(count: int) -> str:
    """1023 B, 1.0 KiB, 18.6 MiB: binary units, one decimal."""
    size, unit = float(count), "B"
    for bigger in ("KiB", "MiB", "GiB", "TiB"):
        if size < 1024:
            break
        size, unit = size / 1024, bigger
    return f"{count} B" if unit == "B" else f"{size:.1f} {unit}"
