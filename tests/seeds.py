"""The example payloads and responses on Azion's model pages (copied verbatim into tests/data/seeds)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

SEEDS = Path(__file__).parent / "data" / "seeds"
MUTATION = bool(os.environ.get("AZION_AI_MUTATION"))  # set by scripts/mutation.sh


def examples(n: int, under_mutation: int | None = None) -> int:
    """Hypothesis examples for a property test: all of them, or a tenth (derandomized, see
    conftest) under mutation testing, where the suite runs once per mutant; ``under_mutation``
    sets a smaller count there for a test that covers a module with many mutants."""
    if not MUTATION:
        return n
    return under_mutation if under_mutation is not None else max(20, n // 10)
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


def _dangling_refs(schema: dict) -> list[str]:
    """Every local ``$ref`` whose JSON pointer names nothing in the schema."""
    found: list[str] = []

    def resolves(pointer: str) -> bool:
        node: object = schema
        for part in pointer.lstrip("#/").split("/"):
            if not isinstance(node, dict) or part not in node:
                return False
            node = node[part]
        return True

    def walk(node: object) -> None:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/") and not resolves(ref):
                found.append(ref)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    return found


def plain_validator(model_id: str):
    """Plain jsonschema (Draft 7) on the model's published schema: the tests' reference verdict,
    sharing no code with azion_ai's validation. Azion's InternVL3 schema refers to
    ``#/components/schemas/ToolDefinition`` without defining it; that definition is added here as
    ``{}`` (anything), the published meaning being unknowable (the capability check covers it)."""
    import copy

    from jsonschema import Draft7Validator

    import azion_ai

    schema = copy.deepcopy(dict(azion_ai.get_model(model_id).schema))
    for ref in _dangling_refs(schema):
        node = schema
        parts = ref.lstrip("#/").split("/")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = {}
    Draft7Validator.check_schema(schema)
    return Draft7Validator(schema)


def plain_json(value: object) -> bool:
    """What JSON can carry: json.dumps with no NaN or Infinity, and string keys only."""
    def keys_are_strings(node: object) -> bool:
        if isinstance(node, dict):
            return all(isinstance(k, str) and keys_are_strings(v) for k, v in node.items())
        if isinstance(node, list):
            return all(keys_are_strings(v) for v in node)
        return True

    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return False
    return keys_are_strings(value)
