"""Local payload validation: the model's JSON Schema first, then the rules it cannot express.

Every violation is reported with its JSON path (``messages[1].content[0].image_url.url``) and a
short message that says what to fix. Validators are compiled once per model and cached.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
import threading
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

from jsonschema import Draft7Validator, validators
from jsonschema.exceptions import ValidationError as SchemaError
from jsonschema.exceptions import best_match

from ._exceptions import ValidationError, ValidationIssue
from ._models import ModelInfo, endpoint, score_schema
from ._schema_compile import (
    JSON_SCALARS,
    Unsupported,
    compile_schema,
    is_json_scalar,
    resolve_local_ref,
)

__all__ = ["validate_payload", "format_path", "lone_surrogate_issue"]

MAX_DEPTH = 64
_DISCRIMINATORS = frozenset({"role", "type"})
_MAX_SHOWN = 60

# Tuples are sent as JSON arrays, so they validate as arrays (as in the compiled fast path).
_PayloadValidator = validators.extend(
    Draft7Validator,
    type_checker=Draft7Validator.TYPE_CHECKER.redefine("array", lambda _, value: isinstance(value, (list, tuple))),
)

_cache_lock = threading.Lock()
# model id -> (the schema object it was built from, the validator): a model registered again
# carries a new schema object, so a stale entry is never used (and the registry needs not call
# back into validation).
_validators: dict[str, tuple[Any, Draft7Validator]] = {}
_fast_checks: dict[str, tuple[Any, Callable[[Any], Any]]] = {}


def forget_validator(model_id: str) -> None:
    """Drop a model's compiled validators (benchmarks time the first, cold validation)."""
    with _cache_lock:
        _validators.pop(model_id, None)
        _fast_checks.pop(model_id, None)


def _cached(cache: Mapping[str, tuple[Any, Any]], model: ModelInfo) -> Any:
    entry = cache.get(model.id)
    return entry[1] if entry is not None and entry[0] is model.schema else None


def format_path(parts: Iterable[Any]) -> str:
    """``["messages", 1, "content"]`` -> ``messages[1].content``."""
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _short(value: Any) -> str:
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 3] + "..."


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, Mapping):
        return "object"
    if isinstance(value, (list, tuple)):
        return "array"
    return type(value).__name__


# -- schema preparation -----------------------------------------------------------------------


def _resolves(schema: Mapping[str, Any], ref: str) -> bool:
    try:
        resolve_local_ref(schema, ref)  # remote refs are never fetched
    except LookupError:
        return False
    return True


def _without_dangling_refs(schema: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of the schema where each ``$ref`` that points nowhere accepts anything.

    Azion's InternVL3 schema refers to ``#/components/schemas/ToolDefinition`` without defining
    it; the capability check (``tools`` on a model without tool calling) covers that field.
    """

    def walk(node: Any) -> Any:
        if isinstance(node, Mapping):
            ref = node.get("$ref")
            if isinstance(ref, str) and not _resolves(schema, ref):
                return {}
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    result: dict[str, Any] = walk(schema)
    return result


def _validator_for(model: ModelInfo) -> Draft7Validator:
    validator: Draft7Validator | None = _cached(_validators, model)
    if validator is None:
        schema = _without_dangling_refs(model.schema)
        Draft7Validator.check_schema(schema)
        validator = _PayloadValidator(schema)
        with _cache_lock:
            _validators[model.id] = (model.schema, validator)
    return validator


def _fast_check_for(model: ModelInfo) -> Callable[[Any], bool]:
    """The schema compiled to Python (``_schema_compile``): answers "valid and not too deep?" in
    microseconds. On "no", jsonschema finds and explains every violation; formats are annotations
    (as in jsonschema without a format checker) and our own rules check image URLs."""
    check: Callable[[Any], bool] | None = _cached(_fast_checks, model)
    if check is None:
        try:
            check = compile_schema(_without_dangling_refs(model.schema), max_depth=MAX_DEPTH)
        except Unsupported:
            validator = _validator_for(model)

            def check(payload: Any) -> bool:
                return _not_plain_json(payload) is None and validator.is_valid(payload)

        with _cache_lock:
            _fast_checks[model.id] = (model.schema, check)
    return check


# -- turning jsonschema's errors into issues ---------------------------------------------------


def _relative(sub: SchemaError, parent: SchemaError) -> list[Any]:
    return list(sub.absolute_path)[len(parent.absolute_path) :]


def _rejects_branch(sub: SchemaError, parent: SchemaError) -> bool:
    """Does this error say 'the instance is not this kind of thing' (rather than 'it is, but wrong')?"""
    rel = _relative(sub, parent)
    if sub.validator in ("enum", "const") and len(rel) == 1 and rel[0] in _DISCRIMINATORS:
        return True
    if not rel and sub.validator in ("type", "not"):
        return True
    if not rel and sub.validator == "required":
        missing = _missing_property(sub)
        return missing in _DISCRIMINATORS
    if not rel and sub.validator in ("oneOf", "anyOf") and sub.context:
        return all(
            any(_rejects_branch(e, sub) for e in errs) for errs in _branches(sub).values()
        ) and len(_branches(sub)) == len(sub.validator_value)
    return False


def _missing_property(error: SchemaError) -> str | None:
    match = re.match(r"^'(.+)' is a required property$", error.message)
    return match.group(1) if match else None


def _branches(error: SchemaError) -> dict[int, list[SchemaError]]:
    grouped: dict[int, list[SchemaError]] = defaultdict(list)
    for sub in error.context or ():
        grouped[int(sub.relative_schema_path[0])].append(sub)
    return grouped


def _discriminator_issue(error: SchemaError) -> ValidationIssue:
    """Every alternative rejected the instance outright: say what kinds were allowed."""
    enums: dict[str, list[Any]] = defaultdict(list)
    types: list[str] = []
    required: set[str] = set()
    forbidden: list[str] = []

    def collect(err: SchemaError, base: SchemaError) -> None:
        for sub in err.context or ():
            rel = _relative(sub, base)
            if sub.validator in ("oneOf", "anyOf"):
                collect(sub, base)
            elif sub.validator in ("enum", "const") and len(rel) == 1:
                values = sub.validator_value if sub.validator == "enum" else [sub.validator_value]
                for v in values:
                    if v not in enums[rel[0]]:
                        enums[rel[0]].append(v)
            elif sub.validator == "type" and not rel:
                for t in [sub.validator_value] if isinstance(sub.validator_value, str) else sub.validator_value:
                    if t not in types:
                        types.append(t)
            elif sub.validator == "required" and not rel:
                prop = _missing_property(sub)
                if prop:
                    required.add(prop)
            elif sub.validator == "not" and not rel and isinstance(sub.validator_value, Mapping):
                forbidden.extend(sub.validator_value.get("required", []))

    collect(error, error)
    instance = error.instance
    path = list(error.absolute_path)
    if types and _json_type(instance) not in types:
        return ValidationIssue(format_path(path), f"expected {' or '.join(types)}, got {_json_type(instance)}")
    for prop in ("role", "type"):
        if prop in required and isinstance(instance, Mapping) and prop not in instance:
            return ValidationIssue(format_path([*path, prop]), "required property is missing")
    present = [p for p in forbidden if isinstance(instance, Mapping) and p in instance]
    if present:
        return ValidationIssue(format_path([*path, present[0]]), "is not allowed in this message")
    for prop, values in enums.items():
        if isinstance(instance, Mapping) and prop in instance:
            allowed = ", ".join(_short(v) for v in values)
            return ValidationIssue(
                format_path([*path, prop]), f"{_short(instance[prop])} is not one of: {allowed}"
            )
    return ValidationIssue(format_path(path), "does not match any allowed form")


def _issues(error: SchemaError) -> list[ValidationIssue]:
    if error.validator in ("oneOf", "anyOf") and error.context:
        branches = _branches(error)
        if len(branches) < len(error.validator_value):
            return [ValidationIssue(format_path(error.absolute_path), "matches more than one allowed form")]
        viable = [errs for errs in branches.values() if not any(_rejects_branch(e, error) for e in errs)]
        if not viable:
            return [_discriminator_issue(error)]
        chosen = min(viable, key=len) if len(viable) > 1 else viable[0]
        if len(viable) > 1:
            best = best_match(chosen)
            chosen = [best] if best is not None else chosen
        out: list[ValidationIssue] = []
        for sub in chosen:
            out.extend(_issues(sub))
        return out
    return [_leaf_issue(error)]


def _leaf_issue(error: SchemaError) -> ValidationIssue:
    path = list(error.absolute_path)
    value = error.validator_value
    instance = error.instance
    kind = error.validator
    if kind == "required":
        prop = _missing_property(error)
        if prop is not None:
            return ValidationIssue(format_path([*path, prop]), "required property is missing")
    if kind == "type":
        expected = value if isinstance(value, str) else " or ".join(value)
        return ValidationIssue(format_path(path), f"expected {expected}, got {_json_type(instance)}")
    if kind in ("enum", "const"):
        allowed = ", ".join(_short(v) for v in (value if kind == "enum" else [value]))
        return ValidationIssue(format_path(path), f"{_short(instance)} is not one of: {allowed}")
    if kind in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        words = {
            "minimum": "must be >=",
            "maximum": "must be <=",
            "exclusiveMinimum": "must be >",
            "exclusiveMaximum": "must be <",
        }[kind]
        return ValidationIssue(format_path(path), f"{_short(instance)} {words} {value}")
    if kind in ("maxItems", "minItems") and isinstance(instance, (list, tuple)):
        words = "at most" if kind == "maxItems" else "at least"
        return ValidationIssue(format_path(path), f"has {len(instance)} items; {words} {value} allowed")
    if kind == "minLength" and isinstance(instance, str):
        return ValidationIssue(format_path(path), f"must have at least {value} character(s)")
    if kind == "not" and isinstance(value, Mapping) and "required" in value:
        props = ", ".join(value["required"])
        return ValidationIssue(format_path(path), f"must not have {props} here")
    message = error.message
    if len(message) > 200:
        message = message[:197] + "..."
    return ValidationIssue(format_path(path), message)


# -- rules the schema cannot express ---------------------------------------------------------


_DATA_URI = re.compile(r"^data:[\w.+-]+/[\w.+-]+(?:;[\w.+-]+=[\w.+-]+)*(?:;base64)?,", re.ASCII)


_SPACE = re.compile(r"\s")
_NO_SCHEMES: frozenset[str] = frozenset()


@functools.lru_cache(maxsize=1024)
def _check_http_url(url: str) -> str | None:
    """Cached: a conversation sends the same image URLs again on every turn."""
    try:
        host = urlsplit(url).hostname
    except ValueError:
        host = None
    if host and _SPACE.search(url) is None:
        return None
    return f"{_short(url)} is not a valid http(s) URL (it needs a host and no spaces)"


def _check_image_url(url: str, extra_schemes: frozenset[str]) -> str | None:
    # Only the head of a URL is sliced: data: URIs can be megabytes long.
    if url[:5].lower() == "data:":
        if _DATA_URI.match(url):
            return None
        return "malformed data: URI; expected data:<media-type>[;base64],<data>"
    colon = url.find(":", 0, 64)
    scheme = url[:colon].lower() if colon > 0 else ""
    if scheme in ("http", "https"):
        return _check_http_url(url) if len(url) <= 2048 else _check_http_url.__wrapped__(url)
    if scheme and scheme in extra_schemes and url[len(scheme) + 1 :]:
        return None
    return f"{_short(url)} is not an http(s) URL or a data: URI"


def _semantic_issues(
    payload: Mapping[str, Any], model: ModelInfo, extra_schemes: frozenset[str]
) -> list[ValidationIssue]:
    issues: list[ValidationIssue] = []
    tool_calling, takes_images = model.tool_calling, model.supports_images
    tools = payload.get("tools")
    if tools and not tool_calling:
        issues.append(
            ValidationIssue("tools", f"model {model.id!r} does not support tool calling; remove 'tools'")
        )
    max_tokens = payload.get("max_tokens")
    if isinstance(max_tokens, int) and not isinstance(max_tokens, bool) and max_tokens > model.context_length:
        issues.append(
            ValidationIssue(
                "max_tokens",
                f"{max_tokens} exceeds the context length of {model.id!r} ({model.context_length} tokens)",
            )
        )
    messages = payload.get("messages")
    if not isinstance(messages, (list, tuple)):
        return issues
    if not messages:
        issues.append(ValidationIssue("messages", "must contain at least one message"))
    call_ids: set[str] = set()
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            continue
        role = message.get("role")
        if role in ("assistant", "tool") and not tool_calling and (
            role == "tool" or message.get("tool_calls")
        ):
            issues.append(
                ValidationIssue(
                    format_path(["messages", i, "role" if role == "tool" else "tool_calls"]),
                    f"model {model.id!r} does not support tool calling",
                )
            )
            continue
        if role == "assistant":
            for call in message.get("tool_calls") or ():
                if isinstance(call, dict) and isinstance(call.get("id"), str):
                    call_ids.add(call["id"])
        elif role == "tool":
            call_id = message.get("tool_call_id")
            if isinstance(call_id, str) and call_id not in call_ids:
                issues.append(
                    ValidationIssue(
                        format_path(["messages", i, "tool_call_id"]),
                        f"{_short(call_id)} matches no tool call of an earlier assistant message",
                    )
                )
        content = message.get("content")
        if role != "user" or not isinstance(content, (list, tuple)):
            continue
        for j, item in enumerate(content):
            if not isinstance(item, dict) or item.get("type") != "image_url":
                continue
            where = ["messages", i, "content", j]
            if not takes_images:
                issues.append(ValidationIssue(format_path(where), f"model {model.id!r} does not take images"))
                continue
            image = item.get("image_url")
            url = image.get("url") if isinstance(image, dict) else None
            if isinstance(url, str):
                problem = _check_image_url(url, extra_schemes)
                if problem:
                    issues.append(ValidationIssue(format_path([*where, "image_url", "url"]), problem))
    return issues


def _not_plain_json(payload: Any, limit: int = MAX_DEPTH) -> ValidationIssue | None:
    """The first value JSON cannot carry (a set, bytes, an object, NaN, a non-string key...) or
    nested deeper than ``limit``: json.dumps would fail, or the server would, far from the cause."""
    stack: list[tuple[Any, list[Any]]] = [(payload, [])]
    while stack:
        node, path = stack.pop()
        if len(path) > limit:
            return ValidationIssue(format_path(path[: limit + 1]), f"nested deeper than {limit} levels")
        if isinstance(node, Mapping):
            for key, value in node.items():
                if not isinstance(key, JSON_SCALARS):
                    return ValidationIssue(format_path(path), f"has a {type(key).__name__} key; JSON object keys are strings")
                stack.append((value, [*path, key]))
        elif isinstance(node, (list, tuple)):
            stack.extend((v, [*path, i]) for i, v in enumerate(node))
        elif is_json_scalar(node):
            continue
        elif isinstance(node, float):
            return ValidationIssue(format_path(path), f"{node} is not a JSON number; use a finite number")
        else:
            return ValidationIssue(
                format_path(path),
                f"a {type(node).__name__} is not a JSON value; use strings, numbers, booleans, null, lists or dicts",
            )
    return None


_SURROGATE = re.compile("[\ud800-\udfff]")


def lone_surrogate_issue(payload: Any) -> ValidationIssue | None:
    """The first string (value or key) holding a lone surrogate (``"\\ud800"``): JSON can carry
    it as an escape, but it is no Unicode character, so no UTF-8 encoder and no tokenizer takes it."""
    stack: list[tuple[Any, list[Any]]] = [(payload, [])]
    while stack:
        node, path = stack.pop()
        if isinstance(node, str):
            found = None if node.isascii() else _SURROGATE.search(node)
            if found is not None:
                code = f"U+{ord(found.group()):04X}"
                return ValidationIssue(
                    format_path(path),
                    f"holds a lone surrogate ({code} at character {found.start()}), which is not valid Unicode; "
                    "remove it or send the whole character (a surrogate pair decodes to one)",
                )
        elif isinstance(node, Mapping):
            for key, value in node.items():
                if isinstance(key, str) and _SURROGATE.search(key):
                    return ValidationIssue(format_path(path), f"has a key with a lone surrogate ({ascii(key)[:_MAX_SHOWN]}), which is not valid Unicode")
                stack.append((value, [*path, key]))
        elif isinstance(node, (list, tuple)):
            stack.extend((v, [*path, i]) for i, v in enumerate(node))
    return None


# -- the score shape of rerank models ---------------------------------------------------------

_score_models: dict[str, ModelInfo] = {}


def is_score_request(model: ModelInfo, payload: Mapping[str, Any]) -> bool:
    """A rerank model's ``{text_1, text_2}`` request (the page's score example), for /score."""
    return endpoint(model, payload) == "score"


def _score_model(model: ModelInfo) -> ModelInfo:
    """The rerank model with the score shape's schema (its page's own schema rejects that shape)."""
    score = _score_models.get(model.id)
    if score is None:
        score = dataclasses.replace(model, id=f"{model.id}#score", schema=score_schema())
        _score_models[model.id] = score
    return score


# -- the OpenAI parameters Azion's schemas leave open -----------------------------------------

_openai_validator: list[Draft7Validator] = []


def _openai_parameters() -> Draft7Validator:
    """The OpenAI-parameters layer (``schemas/openai-parameters.json``): the same for every model."""
    if not _openai_validator:
        from ._models import load_bundled_schema

        schema = load_bundled_schema("openai-parameters")
        Draft7Validator.check_schema(schema)
        _openai_validator.append(_PayloadValidator(schema))
    return _openai_validator[0]


OPENAI_PARAMETERS = frozenset(
    {"max_completion_tokens", "stop", "seed", "response_format", "tool_choice", "logprobs", "top_logprobs",
     "stream_options", "top_k", "min_p", "repetition_penalty", "parallel_tool_calls", "logit_bias"}
)


def _openai_issues(payload: Mapping[str, Any], model: ModelInfo) -> list[ValidationIssue]:
    """Types and ranges of the OpenAI parameters, then the rules between fields (as vLLM and
    OpenAI apply them), each with its JSON path."""
    if OPENAI_PARAMETERS.isdisjoint(payload):
        return []
    issues: list[ValidationIssue] = []
    for error in sorted(_openai_parameters().iter_errors(payload), key=lambda e: list(map(str, e.absolute_path))):
        issues.extend(_issues(error))
    if issues:
        return issues
    limit = payload.get("max_completion_tokens")
    if isinstance(limit, int) and limit > model.context_length:
        issues.append(ValidationIssue("max_completion_tokens", f"{limit} exceeds the context length of {model.id!r} ({model.context_length} tokens)"))
    if payload.get("top_logprobs") is not None and not payload.get("logprobs"):
        issues.append(ValidationIssue("top_logprobs", "needs \"logprobs\": true"))
    if payload.get("stream_options") is not None and not payload.get("stream"):
        issues.append(ValidationIssue("stream_options", "is only allowed with \"stream\": true"))
    response_format = payload.get("response_format")
    if isinstance(response_format, Mapping) and response_format.get("type") == "json_schema" and "json_schema" not in response_format:
        issues.append(ValidationIssue("response_format.json_schema", "is required when type is \"json_schema\""))
    choice = payload.get("tool_choice")
    tools = payload.get("tools") or []
    names = [t["function"].get("name") for t in tools if isinstance(t, Mapping) and isinstance(t.get("function"), Mapping)]
    if choice == "required" and not tools:
        issues.append(ValidationIssue("tool_choice", "\"required\" needs at least one tool in \"tools\""))
    elif isinstance(choice, Mapping):
        name = choice["function"]["name"]
        if name not in names:
            known = ", ".join(map(str, names)) or "none"
            issues.append(ValidationIssue("tool_choice.function.name", f"{_short(name)} matches no tool in \"tools\" ({known})"))
    return issues


def _without_empty_tool_calls(payload: dict[str, Any]) -> dict[str, Any]:
    """An assistant message's ``"tool_calls": []`` counts as absent (models answer with one, as
    Azion's InternVL3 example does, and it must be sendable back), for every model and backend."""
    messages = payload.get("messages")
    if not isinstance(messages, list) or not any(
        isinstance(m, dict) and m.get("tool_calls") == [] for m in messages
    ):
        return payload
    cleaned = [
        {k: v for k, v in m.items() if k != "tool_calls"} if isinstance(m, dict) and m.get("tool_calls") == [] else m
        for m in messages
    ]
    return {**payload, "messages": cleaned}


_OPENAI_DIFFERENCES = "docs/validation.md, \"Where Azion's schemas differ from OpenAI\""


def _with_openai_hint(payload: Mapping[str, Any], issue: ValidationIssue) -> ValidationIssue:
    """An issue where OpenAI's API allows what Azion's schema refuses, said as such, with the fix."""
    found = re.fullmatch(r"messages\[(\d+)\]\.(role|content)", issue.path)
    messages = payload.get("messages")
    if found is None or not isinstance(messages, list) or int(found.group(1)) >= len(messages):
        return issue
    message = messages[int(found.group(1))]
    if not isinstance(message, Mapping):
        return issue
    if found.group(2) == "role" and message.get("role") == "developer":
        hint = "OpenAI's \"developer\" role is not in Azion's schema for this model; send these instructions as a \"system\" message"
    elif found.group(2) == "content" and message.get("role") == "tool" and isinstance(message.get("content"), list):
        hint = "Azion's schema takes a tool result as one string, where OpenAI also allows a list of text parts; join the parts' text into one string"
    else:
        return issue
    return ValidationIssue(issue.path, f"{issue.message} ({hint}; see {_OPENAI_DIFFERENCES})")


def validate_payload(
    model: ModelInfo, payload: Any, *, extra_url_schemes: Iterable[str] = ()
) -> None:
    """Raise :class:`azion_ai.ValidationError` listing every problem with ``payload``."""
    if not isinstance(payload, dict):
        if not isinstance(payload, Mapping):
            raise ValidationError(
                model.id, [ValidationIssue("", f"payload must be a JSON object (dict), got {_json_type(payload)}")]
            )
        payload = dict(payload)
    payload = _without_empty_tool_calls(payload)
    chat, model_id = model.kind == "chat", model.id
    if is_score_request(model, payload):
        model = _score_model(model)
    issues: list[ValidationIssue] = []
    surrogate = lone_surrogate_issue(payload)
    if surrogate is not None:
        issues.append(surrogate)
    check = _fast_check_for(model)
    if not check(payload):
        problem = _not_plain_json(payload)
        if problem is not None:
            raise ValidationError(model_id, [problem])
        validator = _validator_for(model)
        for error in sorted(validator.iter_errors(payload), key=lambda e: list(map(str, e.absolute_path))):
            issues.extend(_issues(error))
    schemes = frozenset(s.lower() for s in extra_url_schemes) if extra_url_schemes else _NO_SCHEMES
    extra = [*_semantic_issues(payload, model, schemes), *_openai_issues(payload, model)] if chat else []
    for issue in extra:
        if issue not in issues:
            issues.append(issue)
    if issues:
        raise ValidationError(model_id, [_with_openai_hint(payload, issue) for issue in issues])
