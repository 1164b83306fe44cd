"""Images three ways: an http(s) URL, a data: URI, and a local file (read by you, sent as data:)."""

import base64
import io
import os
import sys
import tempfile

from PIL import Image

from _setup import INTERNVL, make_client


def data_uri(path: str) -> str:
    with open(path, "rb") as fh:
        return "data:image/png;base64," + base64.b64encode(fh.read()).decode()


buf = io.BytesIO()
Image.new("RGB", (320, 200), (30, 120, 200)).save(buf, "PNG")
inline = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
local_file = os.path.join(tempfile.mkdtemp(), "photo.png")
Image.new("RGB", (200, 200), (200, 60, 30)).save(local_file)

sources = [("data: URI", inline), ("local file", data_uri(local_file))]
if len(sys.argv) > 1:  # pass an image URL to fetch it (the local backend refuses private addresses)
    sources.append(("URL", sys.argv[1]))

with make_client() as ai:
    for label, url in sources:
        completion = ai.run(INTERNVL, {
            "messages": [{"role": "user", "content": [
                {"type": "text", "text": "What is in this image?"},
                {"type": "image_url", "image_url": {"url": url}},
            ]}],
            "max_tokens": 32,
        })
        print(f"{label}: {completion.choices[0].message.content!r} ({completion.usage.prompt_tokens} prompt tokens)")
