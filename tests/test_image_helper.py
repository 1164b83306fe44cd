"""``azion_ai.image()``: content parts from files, bytes and PIL images, type read from the bytes."""

from __future__ import annotations

import base64
import io

import pytest
from conftest import QWEN_ID, require

import azion_ai

PIL = require("PIL.Image")


def _bytes(fmt: str, size=(40, 30)) -> bytes:
    buffer = io.BytesIO()
    PIL.new("RGB", size, (10, 120, 200)).save(buffer, fmt)
    return buffer.getvalue()


def _decoded(part: dict) -> tuple[str, bytes]:
    header, data = part["image_url"]["url"].split(",", 1)
    return header, base64.b64decode(data)


@pytest.mark.parametrize(("fmt", "media"), [("PNG", "image/png"), ("JPEG", "image/jpeg"), ("GIF", "image/gif"), ("WEBP", "image/webp"), ("BMP", "image/bmp")])
def test_bytes_paths_and_pil_images_become_data_uris(tmp_path, fmt, media):
    data = _bytes(fmt)
    misnamed = tmp_path / "photo.txt"  # the name lies: the bytes decide
    misnamed.write_bytes(data)
    for source in (data, misnamed, str(misnamed)):
        header, body = _decoded(azion_ai.image(source))
        assert header == f"data:{media};base64" and body == data
    from_pil = azion_ai.image(PIL.open(io.BytesIO(data)))
    assert _decoded(from_pil)[0] == f"data:{media};base64"


def test_the_part_validates_and_urls_pass_through():
    payload = {"messages": [{"role": "user", "content": [{"type": "text", "text": "What?"}, azion_ai.image(_bytes("PNG"))]}]}
    azion_ai.validate(QWEN_ID, payload)
    assert azion_ai.image("https://example.com/cat.jpg") == {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}}


def test_downscale_to_a_pixel_budget_keeps_the_format_and_aspect():
    part = azion_ai.image(_bytes("JPEG", size=(400, 200)), max_pixels=20_000)
    header, body = _decoded(part)
    with PIL.open(io.BytesIO(body)) as small:
        assert header == "data:image/jpeg;base64" and small.format == "JPEG"
        assert small.size[0] * small.size[1] <= 20_000 and small.size == (200, 100)
    untouched = _bytes("PNG", size=(10, 10))
    assert _decoded(azion_ai.image(untouched, max_pixels=20_000))[1] == untouched


def test_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="not a PNG"):
        azion_ai.image(b"plain text, not an image")
    with pytest.raises(FileNotFoundError, match="no image file"):
        azion_ai.image(tmp_path / "missing.png")
    with pytest.raises(TypeError, match="path, bytes or a PIL image"):
        azion_ai.image(42)
    with pytest.raises(ValueError, match="max_pixels"):
        azion_ai.image("https://example.com/a.png", max_pixels=10)
