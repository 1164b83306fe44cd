"""From the JSON payload to the model's prompt, and from generated text back to OpenAI shapes.

Prompts use the checkpoint's own chat template; what it lacks (Qwen2.5-VL's processor template
has no tools section) is rendered here in Qwen's hermes style: tools inside ``<tools></tools>``
in the system turn, calls as ``<tool_call>{json}</tool_call>``, results as ``<tool_response>``
inside a user turn. Generated calls are parsed back, whole or from a stream of text pieces.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

QWEN_DEFAULT_SYSTEM = "You are a helpful assistant."
TOOL_OPEN = "<tool_call>"
TOOL_CLOSE = "</tool_call>"


def _text_of(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(str(item.get("text", "")) for item in content if isinstance(item, Mapping))


def tools_system_block(tools: Sequence[Mapping[str, Any]]) -> str:
    lines = "\n".join(json.dumps(dict(tool), ensure_ascii=False) for tool in tools)
    return (
        "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
        "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
        f"{lines}\n</tools>\n\n"
        "For each function call, return a json object with function name and arguments within "
        "<tool_call></tool_call> XML tags:\n<tool_call>\n"
        '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>'
    )


def _render_tool_call(call: Mapping[str, Any]) -> str:
    function = call.get("function") or {}
    raw_args = function.get("arguments", "{}")
    try:
        args: Any = json.loads(raw_args) if isinstance(raw_args, str) else raw_args
    except ValueError:
        args = raw_args
    body = json.dumps({"name": function.get("name", ""), "arguments": args}, ensure_ascii=False)
    return f"{TOOL_OPEN}\n{body}\n{TOOL_CLOSE}"


def build_conversation(
    messages: Sequence[Mapping[str, Any]], tools: Sequence[Mapping[str, Any]] | None
) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
    """HF-style messages for ``apply_chat_template``, and the image URLs in prompt order.

    Each image URL comes with the JSON path of its payload field, for error messages.
    """
    out: list[dict[str, Any]] = []
    images: list[tuple[str, str]] = []
    pending_tool: list[str] = []

    def flush_tools() -> None:
        if pending_tool:
            out.append({"role": "user", "content": [{"type": "text", "text": "\n".join(pending_tool)}]})
            pending_tool.clear()

    for i, message in enumerate(messages):
        role = message.get("role")
        content = message.get("content")
        if role == "tool":
            pending_tool.append(f"<tool_response>\n{_text_of(content)}\n</tool_response>")
            continue
        flush_tools()
        if role == "user":
            items: list[dict[str, Any]] = []
            if isinstance(content, str):
                items.append({"type": "text", "text": content})
            else:
                for j, item in enumerate(content or ()):
                    if item.get("type") == "image_url":
                        images.append((item["image_url"]["url"], f"messages[{i}].content[{j}].image_url.url"))
                        items.append({"type": "image"})
                    else:
                        items.append({"type": "text", "text": str(item.get("text", ""))})
            out.append({"role": "user", "content": items})
        elif role == "assistant":
            text = _text_of(content)
            calls = [_render_tool_call(c) for c in message.get("tool_calls") or ()]
            if calls:
                text = (text + "\n" if text else "") + "\n".join(calls)
            out.append({"role": "assistant", "content": [{"type": "text", "text": text}]})
        else:
            out.append({"role": "system", "content": [{"type": "text", "text": _text_of(content)}]})
    flush_tools()
    if tools:
        if out and out[0]["role"] == "system":
            first = out[0]["content"][0]
            first["text"] = (first["text"] or QWEN_DEFAULT_SYSTEM) + tools_system_block(tools)
        else:
            out.insert(0, {"role": "system", "content": [{"type": "text", "text": QWEN_DEFAULT_SYSTEM + tools_system_block(tools)}]})
    return out, images


# -- incremental detokenization -------------------------------------------------------------


class IncrementalDecoder:
    """Token ids in, text pieces out, never cutting a multi-byte character in half.

    Decodes a short sliding window rather than the whole output each step, so it stays linear.
    """

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        # The Rust tokenizer's own decode is ~3x faster than transformers' wrapper and gives the
        # same text when the wrapper would not clean up spaces (true for these models).
        backend = getattr(tokenizer, "_tokenizer", None)
        if backend is not None and not getattr(tokenizer, "clean_up_tokenization_spaces", True):
            self._decode = backend.decode
        else:
            self._decode = tokenizer.decode
        self.ids: list[int] = []
        self._prefix = 0
        self._read = 0

    def add(self, token_id: int) -> str:
        self.ids.append(token_id)
        decode = self._decode
        prefix_text = decode(self.ids[self._prefix : self._read], skip_special_tokens=True)
        new_text = decode(self.ids[self._prefix :], skip_special_tokens=True)
        if len(new_text) > len(prefix_text) and not new_text.endswith("\ufffd"):
            self._prefix, self._read = self._read, len(self.ids)
            return new_text[len(prefix_text) :]
        return ""

    def flush(self) -> str:
        """At the end: whatever is still held back (an incomplete character decodes as U+FFFD)."""
        decode = self._decode
        prefix_text = decode(self.ids[self._prefix : self._read], skip_special_tokens=True)
        new_text = decode(self.ids[self._prefix :], skip_special_tokens=True)
        self._prefix = self._read = len(self.ids)
        return new_text[len(prefix_text) :]


# -- tool-call parsing ------------------------------------------------------------------------


def new_tool_call_id() -> str:
    return f"chatcmpl-tool-{uuid.uuid4().hex}"


def _parse_call(body: str) -> dict[str, Any] | None:
    try:
        obj = json.loads(body)
    except ValueError:
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str) or not obj["name"]:
        return None
    args = obj.get("arguments", obj.get("parameters", {}))
    arguments = args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)
    return {"id": new_tool_call_id(), "type": "function", "function": {"name": obj["name"], "arguments": arguments}}


@dataclass
class ParsedPiece:
    content: str = ""
    tool_calls: list[dict[str, Any]] = field(default_factory=list)


class ToolCallParser:
    """Splits generated text into content and hermes tool calls, piece by piece.

    Text that might be the start of ``<tool_call>`` is held back until it is known not to be, so
    no tag leaks into content. A call whose JSON does not parse is given back as plain content.
    """

    def __init__(self) -> None:
        self._buf = ""
        self._in_call = False
        self.calls = 0

    def feed(self, text: str) -> ParsedPiece:
        self._buf += text
        out = ParsedPiece()
        while True:
            if not self._in_call:
                at = self._buf.find(TOOL_OPEN)
                if at < 0:
                    keep = _partial_suffix(self._buf, TOOL_OPEN)
                    out.content += self._buf[: len(self._buf) - keep]
                    self._buf = self._buf[len(self._buf) - keep :]
                    return out
                out.content += self._buf[:at]
                self._buf = self._buf[at + len(TOOL_OPEN) :]
                self._in_call = True
            end = self._buf.find(TOOL_CLOSE)
            if end < 0:
                return out
            body, self._buf = self._buf[:end], self._buf[end + len(TOOL_CLOSE) :]
            self._in_call = False
            call = _parse_call(body.strip())
            if call is None:
                out.content += TOOL_OPEN + body + TOOL_CLOSE
            else:
                self.calls += 1
                out.tool_calls.append(call)

    def finish(self) -> ParsedPiece:
        """End of generation: a call left open is parsed if its JSON is whole, else kept as text."""
        out = ParsedPiece()
        rest, self._buf = self._buf, ""
        if self._in_call:
            self._in_call = False
            call = _parse_call(rest.strip())
            if call is not None:
                self.calls += 1
                out.tool_calls.append(call)
            else:
                out.content = TOOL_OPEN + rest
        else:
            out.content = rest
        return out


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of ``tag``."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0


