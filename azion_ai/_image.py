"""``azion_ai.image(source)``: an ``image_url`` content part from a file, bytes or a PIL image.

Users never hand-encode base64: the bytes become a ``data:`` URI whose media type is read from
the bytes themselves (not the file name), optionally downscaled to a pixel budget first (PIL,
the ``local`` extra, is needed only for that and for PIL input).
"""

from __future__ import annotations

import base64
import io
import os
from pathlib import Path
from typing import Any

_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "image/png", "PNG"),
    (b"\xff\xd8\xff", "image/jpeg", "JPEG"),
    (b"GIF87a", "image/gif", "GIF"),
    (b"GIF89a", "image/gif", "GIF"),
    (b"BM", "image/bmp", "BMP"),
)


def _sniff(data: bytes) -> tuple[str, str]:
    """(media type, PIL format) from the first bytes."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp", "WEBP"
    for signature, media_type, fmt in _SIGNATURES:
        if data.startswith(signature):
            return media_type, fmt
    raise ValueError("not a PNG, JPEG, GIF, WEBP or BMP image (checked from its bytes); convert it first")


def _pil() -> Any:
    try:
        from PIL import Image
    except ImportError:
        from ._exceptions import MissingDependencyError

        raise MissingDependencyError("PIL images and max_pixels need Pillow: pip install 'azion-ai[local]' (or pillow)") from None
    return Image


def image(source: str | os.PathLike[str] | bytes | Any, *, max_pixels: int | None = None) -> dict[str, Any]:
    """A ``{"type": "image_url", "image_url": {"url": "data:..."}}`` content part.

    ``source``: a file path, the image's bytes, a PIL image, or an http(s)/``data:`` URL (kept as
    it is). ``max_pixels``: downscale (keeping the aspect ratio) so width x height stays within it.
    """
    if isinstance(source, str) and source.split(":", 1)[0].lower() in ("http", "https", "data"):
        if max_pixels is not None:
            raise ValueError("max_pixels needs the image itself (a path, bytes or a PIL image), not a URL")
        return {"type": "image_url", "image_url": {"url": source}}
    if isinstance(source, (str, os.PathLike)):
        path = Path(source).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"no image file at {str(path)!r}")
        data = path.read_bytes()
    elif isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    elif hasattr(source, "save") and hasattr(source, "size"):  # a PIL image
        buffer = io.BytesIO()
        source.save(buffer, format=source.format or "PNG")
        data = buffer.getvalue()
    else:
        raise TypeError(f"image() takes a path, bytes or a PIL image, not {type(source).__name__}")
    media_type, fmt = _sniff(data)
    if max_pixels is not None:
        if max_pixels < 1:
            raise ValueError("max_pixels must be >= 1")
        Image = _pil()
        with Image.open(io.BytesIO(data)) as opened:
            width, height = opened.size
            if width * height > max_pixels:
                scale = (max_pixels / (width * height)) ** 0.5
                size = (max(1, int(width * scale)), max(1, int(height * scale)))
                resized = opened.convert("RGB" if fmt == "JPEG" else opened.mode).resize(size, Image.Resampling.LANCZOS)
                buffer = io.BytesIO()
                resized.save(buffer, format=fmt)
                data = buffer.getvalue()
    return {"type": "image_url", "image_url": {"url": f"data:{media_type};base64," + base64.b64encode(data).decode("ascii")}}
