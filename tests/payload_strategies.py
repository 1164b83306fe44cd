"""Hypothesis strategies for payloads: random JSON values and mutations of the seed payloads."""

from __future__ import annotations

import copy

from hypothesis import strategies as st
from seeds import INTERNVL, QWEN, example_payloads

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**12, 10**12) | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12), children, max_size=5),
    max_leaves=30,
)
SEEDS = [(QWEN, p) for p in example_payloads(QWEN)] + [(INTERNVL, p) for p in example_payloads(INTERNVL)]
KEYS = ["messages", "role", "content", "type", "text", "image_url", "url", "tools", "function", "name", "tool_calls", "tool_call_id", "stream", "temperature", "top_p", "n", "max_tokens", "presence_penalty", "frequency_penalty", "arguments", "id"]
REPLACEMENTS = st.one_of(
    json_values,
    st.sampled_from(["", "x" * 100_000, "ftp://host/x", "data:,", "data:image/png;base64,@@", "http://", "tool", "wizard", "file:///etc/passwd", "http://169.254.169.254/latest"]),
    st.integers(-3, 40000),
)


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, (*prefix, i))


@st.composite
def mutated(draw):
    model_id, seed = draw(st.sampled_from(SEEDS))
    payload = copy.deepcopy(seed)
    for _ in range(draw(st.integers(1, 3))):
        paths = list(_paths(payload))
        path = draw(st.sampled_from(paths))
        action = draw(st.sampled_from(["replace", "delete", "add", "nest"]))
        parent = payload
        for key in path[:-1]:
            parent = parent[key]
        if not path:
            continue
        key = path[-1]
        if action == "replace":
            parent[key] = draw(REPLACEMENTS)
        elif action == "delete":
            del parent[key]
        elif action == "add" and isinstance(parent[key], dict):
            parent[key][draw(st.sampled_from(KEYS))] = draw(REPLACEMENTS)
        elif action == "add" and isinstance(parent[key], list):
            parent[key].append(draw(st.one_of(REPLACEMENTS, st.sampled_from([{"role": "tool", "content": "x", "tool_call_id": "nope"}, {"role": "assistant"}, {"type": "image_url", "image_url": {"url": "javascript:alert(1)"}}]))))
        elif action == "nest":
            value = parent[key]
            for _ in range(draw(st.integers(1, 60))):
                value = [value]
            parent[key] = value
    return model_id, payload
