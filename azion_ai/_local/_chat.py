"""From the JSON payload to the model's prompt, and from generated text back to OpenAI shapes.

Prompts are rendered as vLLM (the engine Azion runs) renders them for the same checkpoint: the
same choice of chat template, the same content shapes handed to it, the same tools JSON, so the
local backend's prompt is token for token the one Azion's engine sees. Generated hermes tool
calls are parsed back, whole or from a stream of text pieces, by vLLM's rules.
"""

from __future__ import annotations

import decimal
import functools
import json
import math
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

TOOL_OPEN = "<tool_call>"
TOOL_CLOSE = "</tool_call>"

ContentFormat = Literal["string", "openai"]


@dataclass(frozen=True)
class ChatTemplates:
    """The chat templates a checkpoint ships, and the user's override; picked as vLLM picks.

    vLLM renders a request with the template given to it (``--chat-template``); otherwise with
    the processor's template (``chat_template.json``) when the request has no tools, and with the
    tokenizer's (``tokenizer_config.json``) when it has: for Qwen2.5-VL that is Qwen2.5's own
    template with the hermes ``# Tools`` section, which the processor's lacks.
    """

    processor: str | None
    tokenizer: str | None
    override: str | None = None

    def select(self, tools: bool) -> str:
        for template in (self.override, None if tools else self.processor, self.tokenizer, self.processor):
            if template:
                return template
        raise ValueError("the checkpoint has no chat template; pass chat_template=")


@functools.lru_cache(maxsize=32)
def content_format(template: str) -> ContentFormat:
    """``"openai"`` when the template loops over a message's content parts (it places images
    itself), else ``"string"``: contents are flattened to text and image placeholders go to the
    front of their message, as vLLM does for such templates."""
    import jinja2
    from jinja2 import nodes

    try:
        ast = jinja2.Environment(extensions=["jinja2.ext.loopcontrols"]).parse(template)
    except jinja2.TemplateSyntaxError:
        return "string"
    for loop in ast.find_all(nodes.For):
        it = loop.iter
        if isinstance(it, nodes.Filter) and it.node is not None:
            it = it.node
        if (
            (isinstance(it, nodes.Getitem) and isinstance(it.arg, nodes.Const) and it.arg.value == "content")
            or (isinstance(it, nodes.Getattr) and it.attr == "content")
            or (isinstance(it, nodes.Name) and it.name == "content")
        ):
            return "openai"
    return "string"


def template_tools(tools: Sequence[Mapping[str, Any]] | None) -> list[dict[str, Any]] | None:
    """Tools as vLLM hands them to the template: ``{"type", "function": {"name", "description",
    "parameters"[, "strict"]}}``, absent fields as null, unknown keys dropped."""
    if not tools:
        return None
    out = []
    for tool in tools:
        function = tool.get("function") or {}
        spec: dict[str, Any] = {
            "name": function.get("name"),
            "description": function.get("description"),
            "parameters": function.get("parameters"),
        }
        if function.get("strict") is not None:
            spec["strict"] = function["strict"]
        out.append({"type": "function", "function": spec})
    return out


def _tool_call_for_template(call: Mapping[str, Any]) -> dict[str, Any]:
    """A history tool call with its ``arguments`` parsed into an object (what templates expect;
    vLLM does the same, and an unparsable string becomes ``{}``)."""
    call = dict(call)
    function = dict(call.get("function") or {})
    raw = function.get("arguments")
    if not raw:
        function["arguments"] = {}
    elif isinstance(raw, str):
        try:
            function["arguments"] = json.loads(raw)
        except ValueError:
            function["arguments"] = {}
    call["function"] = function
    return call


def build_conversation(
    messages: Sequence[Mapping[str, Any]], fmt: ContentFormat = "openai", image_placeholder: str = ""
) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
    """Messages for the chat template, and the image URLs in prompt order, as vLLM builds them.

    ``fmt`` is :func:`content_format` of the template. ``"openai"``: contents are lists of
    ``{"type": "text"}`` / ``{"type": "image"}`` parts in their order. ``"string"``: text parts
    are joined with newlines and each image's ``image_placeholder`` goes in front of the text.
    Each image URL comes with the JSON path of its payload field, for error messages.
    """
    out: list[dict[str, Any]] = []
    images: list[tuple[str, str]] = []
    for i, message in enumerate(messages):
        role = message.get("role")
        content = message.get("content")
        parts: list[Any] = [{"type": "text", "text": content}] if isinstance(content, str) else list(content or ())
        rendered: list[dict[str, Any]] = []
        texts: list[str] = []
        placeholders: list[str] = []
        for j, part in enumerate(parts):
            if isinstance(part, str):
                part = {"type": "text", "text": part}
            if part.get("type") == "image_url":
                images.append((part["image_url"]["url"], f"messages[{i}].content[{j}].image_url.url"))
                rendered.append({"type": "image"})
                placeholders.append(image_placeholder)
            elif "text" in part:
                rendered.append({"type": "text", "text": str(part.get("text", ""))})
                texts.append(str(part.get("text", "")))
        entry: dict[str, Any] = {"role": role}
        if fmt == "openai" and role != "tool":
            entry["content"] = rendered
        else:
            text = "\n".join(texts)
            entry["content"] = "\n".join(placeholders + [text]) if text else "\n".join(placeholders)
        if role == "assistant" and message.get("tool_calls"):
            entry["tool_calls"] = [_tool_call_for_template(c) for c in message["tool_calls"]]
        if role == "tool" and "tool_call_id" in message:
            entry["tool_call_id"] = message["tool_call_id"]
        if isinstance(message.get("name"), str):
            entry["name"] = message["name"]
        out.append(entry)
    return out, images


def render_prompt(tokenizer: Any, templates: ChatTemplates, messages: Sequence[Mapping[str, Any]], tools: Sequence[Mapping[str, Any]] | None, image_placeholder: str) -> tuple[str, list[tuple[str, str]]]:
    """The prompt text (image placeholders not yet expanded) and the image URLs, as vLLM renders."""
    template = templates.select(bool(tools))
    conversation, images = build_conversation(messages, content_format(template), image_placeholder)
    text = tokenizer.apply_chat_template(
        conversation, tools=template_tools(tools), chat_template=template, add_generation_prompt=True, tokenize=False
    )
    return str(text), images


# -- incremental detokenization -------------------------------------------------------------


class IncrementalDecoder:
    """Token ids in, text pieces out, never cutting a multi-byte character in half.

    Decodes a short sliding window rather than the whole output each step, so it stays linear.
    """

    def __init__(self, tokenizer: Any, skip_special_tokens: bool = True) -> None:
        self._skip = skip_special_tokens
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
        prefix_text = decode(self.ids[self._prefix : self._read], skip_special_tokens=self._skip)
        new_text = decode(self.ids[self._prefix :], skip_special_tokens=self._skip)
        if len(new_text) > len(prefix_text) and not new_text.endswith("\ufffd"):
            self._prefix, self._read = self._read, len(self.ids)
            return new_text[len(prefix_text) :]
        return ""

    def flush(self) -> str:
        """At the end: what is still held back, unless it ends in an incomplete character. As
        in vLLM, output cut inside a multi-byte character leaves that part out (no U+FFFD)."""
        decode = self._decode
        prefix_text = decode(self.ids[self._prefix : self._read], skip_special_tokens=self._skip)
        new_text = decode(self.ids[self._prefix :], skip_special_tokens=self._skip)
        self._prefix = self._read = len(self.ids)
        if new_text.endswith("\ufffd"):
            return ""
        return new_text[len(prefix_text) :]


# -- tool-call parsing ------------------------------------------------------------------------


def new_tool_call_id() -> str:
    return f"chatcmpl-tool-{uuid.uuid4().hex}"


@dataclass
class ParsedPiece:
    content: str = ""
    tool_calls: list[dict[str, Any]] = field(default_factory=list)


_CALL_RE = re.compile(r"<tool_call>(.*?)</tool_call>|<tool_call>(.*)", re.DOTALL)


class _Number(str):
    """A JSON number as the model wrote it (no float or int conversion that could change it)."""


def _not_json(constant: str) -> Any:
    """``NaN`` / ``Infinity`` are not JSON: a call holding one is malformed (its text stays content)."""
    raise ValueError(f"{constant} is not JSON")


def _number_json(text: str) -> str:
    """A number laid out as vLLM's ``json.dumps(json.loads(...))`` lays it out where that keeps its
    value (``1.50`` -> ``1.5``); otherwise the model's own digits: ``1e999`` would become the
    invalid ``Infinity``, and digits past a float's precision would be lost."""
    if not any(c in text for c in ".eE"):
        return text  # an integer: Python's int is exact (and has no digit limit this way)
    number = float(text)
    if math.isfinite(number) and decimal.Decimal(repr(number)) == decimal.Decimal(text):
        return repr(number)
    return text


def _arguments_json(value: Any) -> str:
    """Arguments as JSON text, always valid JSON, otherwise as vLLM's hermes parser re-dumps them
    (``json.dumps`` with its default separators, non-ASCII kept)."""
    if isinstance(value, _Number):
        return _number_json(value)
    if isinstance(value, dict):
        items = (f"{json.dumps(k, ensure_ascii=False)}: {_arguments_json(v)}" for k, v in value.items())
        return "{" + ", ".join(items) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_arguments_json(v) for v in value) + "]"
    return json.dumps(value, ensure_ascii=False)


def _json_decoder(forced: bool) -> json.JSONDecoder:
    """Numbers kept as written, NaN/Infinity refused. In a forced call, raw control characters
    inside strings are read (and sent on escaped): xgrammar's rule for a string with ``maxLength``
    lets U+0000-U+001F (but CR and LF) through, which strict JSON forbids unescaped."""
    return json.JSONDecoder(parse_float=_Number, parse_int=_Number, parse_constant=_not_json, strict=not forced)


def _cut_call(body: str) -> Any:
    """A call's JSON whose end tag was cut off (``{...}</tool_``), or None if the JSON is cut too."""
    body = body.lstrip()
    try:
        obj, end = _json_decoder(True).raw_decode(body)
    except ValueError:
        return None
    rest = body[end:].strip()
    return obj if TOOL_CLOSE.startswith(rest) else None


def parse_tool_calls(text: str, forced: bool = False) -> tuple[str | None, list[dict[str, Any]]]:
    """A whole output as content and hermes tool calls, by the rules of vLLM's hermes parser.

    Each ``<tool_call>`` body (closed, or open at the end) must be a JSON object with a string
    ``name`` and an ``arguments`` member (``parameters`` does not count); ``arguments`` is sent
    on as a JSON string. If any call fails, there are no calls and the whole output is content.
    With calls, the content is the text before the first ``<tool_call>`` (None if empty); text
    after the calls is dropped.

    ``forced`` (a named or ``"required"`` tool_choice, whose grammar makes every call valid): a
    last call cut by ``max_tokens`` counts when its JSON is whole (only its end tag is missing),
    else it is dropped and the calls before it are kept, where vLLM would return no call at all
    (a deliberate difference, docs/conformance.md).
    """
    if TOOL_OPEN not in text:
        return text, []
    calls: list[dict[str, Any]] = []
    try:
        for match in _CALL_RE.finditer(text):
            closed, unclosed = match.groups()
            try:
                obj = _json_decoder(forced).decode((closed if unclosed is None else unclosed).strip())
            except ValueError:
                if not (forced and unclosed is not None):
                    raise
                obj = _cut_call(unclosed)
                if obj is None and calls:
                    break  # the last call, cut short: keep the whole ones before it
                if obj is None:
                    raise
            name, arguments = obj["name"], obj["arguments"]
            if not isinstance(name, str) or isinstance(name, _Number):
                raise TypeError("name is not a string")
            body = {"name": name, "arguments": _arguments_json(arguments)}
            calls.append({"id": new_tool_call_id(), "type": "function", "function": body})
    except (ValueError, KeyError, TypeError, IndexError):
        return text, []
    content = text[: text.find(TOOL_OPEN)]
    return content or None, calls


class ToolCallParser:
    """Content and hermes tool calls from a stream of text pieces.

    Text before the first ``<tool_call>`` goes out as it comes (a suffix that might start the
    tag is held back, so no tag leaks into content); from the tag on, text is held to the end,
    where :func:`parse_tool_calls` decides: tool calls, or (any call malformed) plain content.
    So a stream ends with the same message as the whole response.
    """

    def __init__(self, forced: bool = False) -> None:
        self._text = ""
        self._sent = 0
        self._in_calls = False
        self._forced = forced
        self._finished = False

    def feed(self, piece: str) -> str:
        """Content that can be sent now."""
        self._text += piece
        if self._in_calls:
            return ""
        at = self._text.find(TOOL_OPEN, max(0, self._sent - len(TOOL_OPEN)))
        if at >= 0:
            self._in_calls = True
            end = at
        else:
            end = len(self._text) - _partial_suffix(self._text, TOOL_OPEN)
        out, self._sent = self._text[self._sent : end], max(self._sent, end)
        return out

    def finish(self) -> ParsedPiece:
        """End of generation: the rest of the content, or the tool calls (once: a second call
        gives nothing, so the calls never go out twice under new ids)."""
        if self._finished:
            return ParsedPiece(content="", tool_calls=[])
        self._finished = True
        _, calls = parse_tool_calls(self._text, self._forced)
        rest = "" if calls else self._text[self._sent :]
        self._sent = len(self._text)
        return ParsedPiece(content=rest, tool_calls=calls)


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of ``tag``."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0


