"""Constrained decoding: ``response_format`` and forced ``tool_choice`` as xgrammar grammars.

vLLM (Azion's engine) honours ``response_format`` (``json_object``, ``json_schema``) and
``tool_choice`` (``"required"``, a named function) by structured output with xgrammar; the same
library does it here. A :class:`Grammar` is compiled once per request; a :class:`Constraint`
holds one matcher per choice and masks each step's logits to the tokens the grammar allows, so the
answer parses (and matches the schema) whatever the model's weights.

What each request is constrained to, as vLLM does it:
- ``json_object``: any JSON object (the schema ``{"type": "object"}``); ``json_schema``: that schema;
- a named tool: a JSON object matching the tool's ``parameters`` (the text is the call's arguments);
- ``"required"``: a JSON array of ``{"name": <one of the tools>, "parameters": {...}}``, 1 or more.
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


def tool_parameters(tool: Mapping[str, Any]) -> dict[str, Any]:
    params = (tool.get("function") or {}).get("parameters")
    return dict(params) if params else {"type": "object", "properties": {}}


def required_tools_schema(tools: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """vLLM's schema for ``tool_choice: "required"``: an array of calls, at least one."""
    calls = [
        {
            "properties": {"name": {"type": "string", "enum": [t["function"]["name"]]}, "parameters": tool_parameters(t)},
            "required": ["name", "parameters"],
        }
        for t in tools
    ]
    return {"type": "array", "minItems": 1, "items": {"type": "object", "anyOf": calls}}


@dataclass(frozen=True)
class GrammarSpec:
    """What one request's output is constrained to: a JSON schema, as text. ``json_object`` is
    the schema ``{"type": "object"}``; ``strict`` or not, the schema is enforced (vLLM ignores the
    flag too, and xgrammar's strict mode allows no properties the schema does not name)."""

    json_schema: str

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> GrammarSpec | None:
        choice = payload.get("tool_choice")
        tools = payload.get("tools") or []
        if isinstance(choice, Mapping):
            name = choice["function"]["name"]
            tool = next(t for t in tools if t["function"].get("name") == name)
            return cls(json.dumps(tool_parameters(tool)))
        if choice == "required":
            return cls(json.dumps(required_tools_schema(tools)))
        fmt = payload.get("response_format")
        if not isinstance(fmt, Mapping) or fmt.get("type") in (None, "text"):
            return None
        if fmt["type"] == "json_object":
            return cls('{"type": "object"}')
        schema = fmt["json_schema"].get("schema") or {"type": "object"}
        return cls(json.dumps(schema))


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
            return self._compiler.compile_json_schema(spec.json_schema, any_whitespace=self.any_whitespace)
        except (RuntimeError, ValueError) as exc:
            where = "response_format.json_schema.schema"
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
            matcher.fill_next_token_bitmask(self.bitmask, row)
        width = scores.shape[-1]
        self._xgr.apply_token_bitmask_inplace(scores, self.bitmask.to(scores.device), vocab_size=width)
        return scores

    def accept(self, tokens: Sequence[int]) -> None:
        for matcher, token in zip(self.matchers, tokens, strict=True):
            if not matcher.is_terminated():
                matcher.accept_token(int(token))
