"""The example payloads and responses on Azion's model pages (copied verbatim into tests/data/seeds)."""

from __future__ import annotations

import json
import re
from pathlib import Path

SEEDS = Path(__file__).parent / "data" / "seeds"
QWEN = "qwen-qwen25-vl-3b-instruct-awq"
INTERNVL = "opengvlab-internvl3-1b-instruct"
SEED_FILES = {QWEN: "qwen25-vl-3b-instruct-awq.txt", INTERNVL: "internvl3-1b-instruct.txt"}


def _objects_after(text: str, marker: str) -> list[dict]:
    decoder = json.JSONDecoder()
    found = []
    for match in re.finditer(re.escape(marker), text):
        start = text.index("{", match.end())
        obj, _ = decoder.raw_decode(text[start:])
        found.append(obj)
    return found


def example_payloads(model_id: str) -> list[dict]:
    text = (SEEDS / SEED_FILES[model_id]).read_text()
    return _objects_after(text, f'Azion.AI.run("{model_id}",')


def example_responses() -> list[dict]:
    text = (SEEDS / SEED_FILES[QWEN]).read_text()
    return _objects_after(text, "Response example:")
