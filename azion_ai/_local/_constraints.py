"""Constrained decoding: ``response_format`` and forced ``tool_choice`` as xgrammar grammars.

vLLM (Azion's engine) honours ``response_format`` (``json_object``, ``json_schema``) and
``tool_choice`` (``"required"``, a named function) by structured output with xgrammar; the same
library does it here, with the same grammars. A grammar is compiled once per request; a
:class:`Constraint` holds one matcher per choice and masks each step's logits to the tokens the
grammar allows, so the answer parses whatever the model's weights.

What each request is constrained to, as vLLM 0.32 does it with the hermes tool parser:
- ``json_object``: any JSON object (the schema ``{"type": "object"}``); ``json_schema``: that schema;
- a named tool: exactly one hermes call of it, ``<tool_call>{"name": ..., "arguments": ...}</tool_call>``;
  ``"required"``: one or more calls of the tools; the arguments follow a tool's ``parameters``
  when the tool says ``"strict": true`` (or the strict level is ``"parameter"``), else any JSON;
- ``"auto"`` with a strict tool: calls are constrained once ``<tool_call>`` is written.
The text then goes through the hermes parser like any other answer.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .._exceptions import MissingDependencyError, ValidationError, ValidationIssue


def _xgrammar() -> Any:
    try:
        import xgrammar
    except ImportError:
        raise MissingDependencyError(
            "response_format and forced tool_choice need xgrammar: pip install 'azion-ai[local]'"
        ) from None
    return xgrammar


STRICT_LEVELS = ("auto", "function", "parameter")


def _strict(tool: Mapping[str, Any]) -> bool:
    return (tool.get("function") or {}).get("strict") is True


def _compact_json(schema: Any) -> dict[str, Any]:
    """Tag content for arguments that follow ``schema`` with no whitespace between JSON tokens.

    vLLM 0.32 applies ``disable_any_whitespace`` to JSON schemas only, not to the arguments inside
    a structural tag, so a forced call on weak weights can pad whitespace until ``max_tokens``.
    Here the option reaches tool calls too (a documented difference): the arguments become an
    xgrammar grammar built with vLLM's whitespace-free settings (``separators=(",", ":")``)."""
    xgr = _xgrammar()
    grammar = xgr.Grammar.from_json_schema(json.dumps(schema), any_whitespace=False, separators=COMPACT_SEPARATORS)
    return {"type": "grammar", "grammar": str(grammar)}


COMPACT_SEPARATORS = (",", ":")
"""Between JSON items and after keys when whitespace is off, as vLLM's ``disable_any_whitespace``."""


def _hermes_tags(tools: Sequence[Mapping[str, Any]], pin_arguments: bool, any_whitespace: bool = True) -> list[dict[str, Any]]:
    """One tag per tool and layout (with and without newlines inside ``<tool_call>``): the call
    envelope is fixed, the arguments follow the tool's schema when it is strict, else any JSON."""
    tags = []
    for tool in tools:
        function = tool.get("function") or {}
        schema: Any = True
        if pin_arguments or function.get("strict") is True:
            schema = function.get("parameters") if function.get("parameters") is not None else True
        content: dict[str, Any]
        if any_whitespace:
            content = {"type": "json_schema", "json_schema": schema, "style": "json", "any_order": False, "max_whitespace_cnt": None, "excludes": []}
        else:
            content = _compact_json(schema)
        for begin, end in (('<tool_call>\n{"name": "', "}\n</tool_call>"), ('<tool_call>{"name": "', "}</tool_call>")):
            tags.append({"type": "tag", "begin": begin + function["name"] + '", "arguments": ', "content": content, "end": end})
    return tags


def hermes_structural_tag(
    tools: Sequence[Mapping[str, Any]], tool_choice: Any, strict_level: str = "auto", parallel: bool = True, any_whitespace: bool = True
) -> dict[str, Any] | None:
    """vLLM's structural tag for the hermes tool parser (``--tool-strict-level``): forced calls
    for a named function (exactly one) or ``"required"`` (one or more), and, under ``"auto"``, calls
    constrained once ``<tool_call>`` appears when a tool is ``strict`` or the level asks for it.
    ``parallel_tool_calls: false`` stops every list of calls after its first; ``any_whitespace=False``
    leaves no whitespace inside the arguments (see :func:`_compact_json`)."""
    if not tools or tool_choice == "none":
        return None
    level = STRICT_LEVELS.index(strict_level)
    if tool_choice in (None, "auto") and level == 0 and not any(_strict(t) for t in tools):
        return None
    pin = level >= 2
    if isinstance(tool_choice, Mapping):
        name = tool_choice["function"]["name"]
        chosen = [t for t in tools if (t.get("function") or {}).get("name") == name]
        fmt: dict[str, Any] = {"type": "tags_with_separator", "tags": _hermes_tags(chosen, pin, any_whitespace), "separator": "", "at_least_one": True, "stop_after_first": True}
    elif tool_choice == "required":
        fmt = {"type": "tags_with_separator", "tags": _hermes_tags(tools, pin, any_whitespace), "separator": "", "at_least_one": True, "stop_after_first": False}
    else:
        fmt = {"type": "triggered_tags", "triggers": ["<tool_call>"], "tags": _hermes_tags(tools, pin, any_whitespace), "at_least_one": False, "stop_after_first": False, "excludes": []}
    if not parallel:
        fmt["stop_after_first"] = True
    return {"type": "structural_tag", "format": fmt}


@dataclass(frozen=True)
class GrammarSpec:
    """What one request's output is constrained to: a JSON schema or a structural tag, as JSON
    text. ``json_object`` is the schema ``{"type": "object"}``; ``strict`` or not, a response
    schema is enforced (vLLM ignores the flag too)."""

    kind: str  # "json_schema" or "structural_tag"
    text: str

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any], strict_level: str = "auto", any_whitespace: bool = True) -> GrammarSpec | None:
        parallel = payload.get("parallel_tool_calls") is not False
        tag = hermes_structural_tag(payload.get("tools") or [], payload.get("tool_choice"), strict_level, parallel, any_whitespace)
        if tag is not None:
            return cls("structural_tag", json.dumps(tag))
        fmt = payload.get("response_format")
        if not isinstance(fmt, Mapping) or fmt.get("type") in (None, "text"):
            return None
        if fmt["type"] == "json_object":
            return cls("json_schema", '{"type": "object"}')
        schema = fmt["json_schema"].get("schema") or {"type": "object"}
        return cls("json_schema", json.dumps(schema))


class GrammarCompiler:
    """One per loaded model: xgrammar's compiler over the model's vocabulary, set up as vLLM sets
    it up (stop tokens from the tokenizer, any whitespace allowed in JSON), so the same grammar
    masks the same tokens on both."""

    def __init__(self, tokenizer: Any, vocab_size: int, any_whitespace: bool = True) -> None:
        xgr = _xgrammar()
        self.any_whitespace = any_whitespace
        info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size)
        self._xgr = xgr
        self._compiler = xgr.GrammarCompiler(info)
        self.vocab_size = vocab_size

    def compile(self, spec: GrammarSpec, model_id: str) -> Any:
        try:
            if spec.kind == "structural_tag":
                return self._compiler.compile_structural_tag(spec.text)
            separators = None if self.any_whitespace else COMPACT_SEPARATORS
            return self._compiler.compile_json_schema(spec.text, any_whitespace=self.any_whitespace, separators=separators)
        except (RuntimeError, ValueError) as exc:
            where = "tools" if spec.kind == "structural_tag" else "response_format.json_schema.schema"
            raise ValidationError(model_id, [ValidationIssue(where, f"cannot be used for constrained decoding: {str(exc)[:300]}")]) from None

    def constraint(self, grammar: Any, rows: int) -> Constraint:
        return Constraint(self._xgr, grammar, rows, self.vocab_size)


class Constraint:
    """Per-step logits masking for ``rows`` choices of one request."""

    def __init__(self, xgr: Any, grammar: Any, rows: int, vocab_size: int) -> None:
        self._xgr = xgr
        self.matchers = [xgr.GrammarMatcher(grammar) for _ in range(rows)]
        self.bitmask = xgr.allocate_token_bitmask(rows, vocab_size)

    def mask(self, scores: Any) -> Any:
        """Forbid, in place, every token the grammar does not allow next."""
        for row, matcher in enumerate(self.matchers):
            if matcher.is_terminated():  # this choice ended while others go on: its token is unused
                self.bitmask[row].fill_(-1)
            else:
                matcher.fill_next_token_bitmask(self.bitmask, row)
        width = scores.shape[-1]
        self._xgr.apply_token_bitmask_inplace(scores, self.bitmask.to(scores.device), vocab_size=width)
        return scores

    def accept(self, tokens: Sequence[int]) -> None:
        for matcher, token in zip(self.matchers, tokens, strict=True):
            if not matcher.is_terminated():
                matcher.accept_token(int(token))
