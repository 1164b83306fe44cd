"""Compile a draft-7 JSON Schema into one Python predicate: "is this payload valid?".

Validation runs before every request, so answering "valid" must cost a few microseconds, not the
tens that a general validator spends. The schema is turned into straight-line Python once per
model: nested checks are inlined, ``$ref`` targets become functions, and a ``oneOf`` whose
branches are told apart by a required string-enum property (``role``, ``type``) looks at that
property and runs only the branch that can match.

The predicate may be conservative: ``True`` always means jsonschema would accept the payload, the
payload is plain JSON (no sets, bytes or objects, no NaN or Infinity) and nothing in it is nested
deeper than ``max_depth``; ``False`` only means "take the slow path", where jsonschema decides
and explains. A schema using a keyword not handled here raises
:class:`Unsupported` at compile time and the caller keeps jsonschema for everything.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["JSON_SCALARS", "Unsupported", "compile_schema", "is_json_scalar", "resolve_local_ref"]

# Validation keywords of draft 7 that this compiler does not translate.
_UNTRANSLATED = frozenset({"multipleOf", "uniqueItems", "additionalItems", "$id", "id"})
_MAX_INLINE = 6  # nested inline blocks per function before a helper function is split out


class Unsupported(Exception):
    """The schema uses a keyword this compiler does not translate."""


_TYPE_TESTS = {
    "object": "isinstance({v}, dict)",
    "array": "isinstance({v}, (list, tuple))",
    "string": "isinstance({v}, str)",
    "boolean": "isinstance({v}, bool)",
    "null": "{v} is None",
    # Finite only: JSON has no NaN or Infinity (stricter than JSON Schema, which the caller knows).
    "number": "(isinstance({v}, int) and not isinstance({v}, bool) or isinstance({v}, float) and {v} - {v} == 0.0)",
    "integer": "((isinstance({v}, int) and not isinstance({v}, bool)) or (isinstance({v}, float) and {v}.is_integer()))",
}


def _json_equal(a: Any, b: Any) -> bool:
    """Equality as JSON Schema means it: ``1`` is not ``true``, ``1`` is ``1.0``."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, str) or isinstance(b, str):
        return isinstance(a, str) and isinstance(b, str) and a == b
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_json_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_json_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple, dict)) or isinstance(b, (list, tuple, dict)):
        return False
    try:
        return bool(a == b)
    except Exception:
        return False


JSON_SCALARS = (str, int, float, bool, type(None))


def is_json_scalar(value: Any) -> bool:
    """A value json.dumps writes as valid JSON: no sets, bytes or objects; no NaN or Infinity."""
    if isinstance(value, float):
        return value - value == 0.0  # false for NaN and +-Infinity
    return isinstance(value, JSON_SCALARS)


def _plain(value: Any, depth: int, limit: int) -> bool:
    """Is ``value`` (itself at ``depth``) plain JSON, with nothing nested deeper than ``limit``?

    Recursive: the depth limit bounds the recursion, and small payloads walk faster this way."""
    if depth > limit:
        return False
    if isinstance(value, dict):
        items: Any = value.items()
    elif isinstance(value, (list, tuple)):
        items = enumerate(value)
    else:
        return is_json_scalar(value)
    for key, child in items:
        if type(key) is not str and not isinstance(key, JSON_SCALARS):
            return False
        kind = type(child)
        if kind is str or kind is int or kind is bool or child is None:
            if depth + 1 > limit:
                return False
        elif not _plain(child, depth + 1, limit):
            return False
    return True


def resolve_local_ref(root: Any, ref: Any) -> Any:
    """The node a ``#/a/b/0`` reference points to; LookupError for others or a dangling one."""
    if not isinstance(ref, str) or not ref.startswith("#"):
        raise LookupError(f"$ref {ref!r} is not a local reference")
    node = root
    for raw in ref[1:].split("/")[1:]:
        key = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(node, Mapping) and key in node:
            node = node[key]
        elif isinstance(node, list) and key.isdigit() and int(key) < len(node):
            node = node[int(key)]
        else:
            raise LookupError(f"$ref {ref!r} does not resolve")
    return node


class _Compiler:
    def __init__(self, root: Any, max_depth: int) -> None:
        self.root = root
        self.namespace: dict[str, Any] = {
            "_MISSING": object(),
            "_json_equal": _json_equal,
            "_plain": _plain,
            "is_json_scalar": is_json_scalar,
            "JSON_SCALARS": JSON_SCALARS,
            "_LIMIT": max_depth,
        }
        self.functions: list[str] = []
        self.pending_tables: list[tuple[str, dict[str, tuple[str, ...]]]] = []
        self.by_node: dict[tuple[int, bool], str] = {}
        self.counter = 0

    # -- helpers -------------------------------------------------------------------------------

    def fresh(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}{self.counter}"

    def constant(self, value: Any, prefix: str = "_C") -> str:
        name = self.fresh(prefix)
        self.namespace[name] = value
        return name

    def resolve(self, node: Any) -> Any:
        """Follow ``$ref`` chains (draft 7: a ``$ref`` makes its siblings ignored)."""
        seen = 0
        while isinstance(node, Mapping) and "$ref" in node:
            try:
                node = resolve_local_ref(self.root, node["$ref"])
            except LookupError as exc:
                raise Unsupported(str(exc)) from None
            seen += 1
            if seen > 100:
                raise Unsupported("$ref cycle")
        return node

    def function_for(self, node: Any, exact: bool) -> str:
        """A function ``f(x, d) -> bool`` for a subschema (one per distinct schema object).

        ``exact`` functions answer the schema's question and nothing else: they serve negated
        contexts (``not``, an ``if`` condition), where an extra "too deep" refusal would turn
        into an acceptance."""
        node = self.resolve(node)
        key = (id(node), exact)
        if key in self.by_node:
            return self.by_node[key]
        name = self.fresh("_f")
        self.by_node[key] = name
        body: list[str] = []
        height = self.emit(node, "x", "d", body, 1, 0, exact)
        head = [f"def {name}(x, d):"]
        if not exact:
            head.append(f"    if d > _LIMIT - {height}: return False")
        self.functions.append("\n".join([*head, *body, "    return True"]))
        return name

    # -- code generation -----------------------------------------------------------------------

    def emit(self, node: Any, var: str, depth: str, out: list[str], indent: int, nesting: int, exact: bool) -> int:
        """Lines that ``return False`` when ``var`` fails ``node``; returns how many levels below
        ``var`` the inlined checks reach (so the function can refuse deeper entry points)."""
        node = self.resolve(node)
        pad = "    " * indent
        if node is True:
            if not exact:
                out.append(f"{pad}if not _plain({var}, {depth}, _LIMIT): return False")
            return 0
        if node is False:
            out.append(f"{pad}return False")
            return 0
        if not isinstance(node, Mapping):
            raise Unsupported(f"schema node {node!r}")
        bad = _UNTRANSLATED.intersection(node)
        if bad:
            raise Unsupported(", ".join(sorted(bad)))
        if nesting >= _MAX_INLINE:
            out.append(f"{pad}if not {self.function_for(node, exact)}({var}, {depth}): return False")
            return 0

        height = 0
        types = node.get("type")
        known: str | None = None
        if types is not None:
            names = [types] if isinstance(types, str) else list(types)
            if not names or any(t not in _TYPE_TESTS for t in names):
                raise Unsupported(f"type {types!r}")
            test = " or ".join(_TYPE_TESTS[t].format(v=var) for t in names)
            out.append(f"{pad}if not ({test}): return False")
            if len(names) == 1:
                known = names[0]

        if "enum" in node or "const" in node:
            values = list(node["enum"]) if "enum" in node else [node["const"]]
            if values and all(isinstance(v, str) for v in values):
                allowed = self.constant(frozenset(values))
                test = f"{var} in {allowed}" if known == "string" else f"isinstance({var}, str) and {var} in {allowed}"
                out.append(f"{pad}if not ({test}): return False")
            else:
                allowed = self.constant(tuple(values))
                out.append(f"{pad}if not any(_json_equal({var}, c) for c in {allowed}): return False")

        numeric = [k for k in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum") if k in node]
        if numeric:
            inner, block = self.guard(known, "number", var, pad, out)
            for key in numeric:
                bound = node[key]
                if isinstance(bound, bool) or not isinstance(bound, (int, float)):
                    raise Unsupported(f"{key} {bound!r}")
                op = {"minimum": "<", "maximum": ">", "exclusiveMinimum": "<=", "exclusiveMaximum": ">="}[key]
                out.append(f"{inner}if {var} {op} {bound!r}: return False")

        string_keys = [k for k in ("minLength", "maxLength", "pattern") if k in node]
        if string_keys:
            inner, block = self.guard(known, "string", var, pad, out)
            if "minLength" in node:
                out.append(f"{inner}if len({var}) < {int(node['minLength'])}: return False")
            if "maxLength" in node:
                out.append(f"{inner}if len({var}) > {int(node['maxLength'])}: return False")
            if "pattern" in node:
                search = self.constant(re.compile(node["pattern"]).search)
                out.append(f"{inner}if {search}({var}) is None: return False")

        if any(k in node for k in ("items", "minItems", "maxItems", "contains")):
            inner, block = self.guard(known, "array", var, pad, out)
            opened = len(out)
            level = indent + (1 if block else 0)
            height = max(height, self.emit_array(node, var, depth, out, level, nesting + block, exact))
            self.close(out, opened, inner)

        object_keys = ("properties", "required", "additionalProperties", "patternProperties",
                       "minProperties", "maxProperties", "propertyNames", "dependencies")
        if any(k in node for k in object_keys):
            inner, block = self.guard(known, "object", var, pad, out)
            opened = len(out)
            level = indent + (1 if block else 0)
            height = max(height, self.emit_object(node, var, depth, out, level, nesting + block, exact))
            self.close(out, opened, inner)

        for sub in node.get("allOf", ()):
            height = max(height, self.emit(sub, var, depth, out, indent, nesting + 1, exact))
        if "anyOf" in node:
            calls = " or ".join(self.call(sub, var, depth, exact) for sub in node["anyOf"])
            out.append(f"{pad}if not ({calls or 'False'}): return False")
        if "oneOf" in node:
            self.emit_one_of(node["oneOf"], var, depth, out, pad, exact)
        if "not" in node:
            out.append(f"{pad}if {self.call(node['not'], var, depth, True)}: return False")
        if "if" in node and ("then" in node or "else" in node):
            then = self.call(node.get("then", True), var, depth, exact)
            other = self.call(node.get("else", True), var, depth, exact)
            condition = self.call(node["if"], var, depth, True)
            out.append(f"{pad}if not (({then}) if {condition} else ({other})): return False")
        # Containers the checks above did not walk into are unconstrained: only their depth matters.
        constants = list(node.get("enum", ())) + ([node["const"]] if "const" in node else [])
        scalar_constants = bool(constants) and not any(isinstance(c, (dict, list)) for c in constants)
        if not exact and not scalar_constants and not any(k in node for k in ("oneOf", "anyOf", "allOf")):
            walked = {"array": ("items", "minItems", "maxItems", "contains"), "object": object_keys}
            for kind, keys in walked.items():
                if known in (None, kind) and not any(k in node for k in keys):
                    test = "True" if known == kind else _TYPE_TESTS[kind].format(v=var)
                    out.append(f"{pad}if {test} and not _plain({var}, {depth}, _LIMIT): return False")
            if known is None:  # a scalar here is unconstrained: it must still be plain JSON
                out.append(f"{pad}if not isinstance({var}, (dict, list, tuple)) and not is_json_scalar({var}): return False")
        return height

    @staticmethod
    def close(out: list[str], opened: int, pad: str) -> None:
        """A block that got no lines (its schema accepts everything, as in ``not`` or an ``if``
        condition, where no depth check is added) still needs a body to compile."""
        if len(out) == opened:
            out.append(f"{pad}pass")

    def guard(self, known: str | None, kind: str, var: str, pad: str, out: list[str]) -> tuple[str, int]:
        """Keywords for one JSON type apply only to values of that type: open an ``if`` unless the
        node's ``type`` already guarantees it. Returns the indentation inside and 1 if opened."""
        if known == kind or (kind == "number" and known == "integer"):
            return pad, 0
        out.append(f"{pad}if {_TYPE_TESTS[kind].format(v=var)}:")
        return pad + "    ", 1

    def call(self, node: Any, var: str, depth: str, exact: bool) -> str:
        """An expression that is true when ``var`` satisfies ``node``."""
        resolved = self.resolve(node)
        if resolved is True:
            return "True" if exact else f"_plain({var}, {depth}, _LIMIT)"
        if resolved is False:
            return "False"
        if isinstance(resolved, Mapping) and set(resolved) <= {"type", "description", "title", "default", "format"}:
            types = resolved.get("type")
            if isinstance(types, str) and types in ("string", "boolean", "null", "number", "integer"):
                return _TYPE_TESTS[types].format(v=var)
        return f"{self.function_for(resolved, exact)}({var}, {depth})"

    def emit_array(
        self, node: Mapping[str, Any], var: str, depth: str, out: list[str], indent: int, nesting: int, exact: bool
    ) -> int:
        pad = "    " * indent
        if "minItems" in node:
            out.append(f"{pad}if len({var}) < {int(node['minItems'])}: return False")
        if "maxItems" in node:
            out.append(f"{pad}if len({var}) > {int(node['maxItems'])}: return False")
        if "contains" in node:
            item = self.fresh("_i")
            out.append(f"{pad}if not any({self.call(node['contains'], item, depth + ' + 1', exact)} for {item} in {var}): return False")
        items = node.get("items", True)
        if isinstance(items, list):
            height = 0
            for index, sub in enumerate(items):
                item = self.fresh("_i")
                out.append(f"{pad}if len({var}) > {index}:")
                out.append(f"{pad}    {item} = {var}[{index}]")
                height = max(height, 1 + self.emit(sub, item, depth + " + 1", out, indent + 1, nesting + 1, exact))
            if not exact:
                out.append(f"{pad}for _extra in {var}[{len(items)}:]:")
                out.append(f"{pad}    if not _plain(_extra, {depth} + 1, _LIMIT): return False")
            return height
        item = self.fresh("_i")
        out.append(f"{pad}for {item} in {var}:")
        opened = len(out)
        height = 1 + self.emit(items, item, depth + " + 1", out, indent + 1, nesting + 1, exact)
        self.close(out, opened, pad + "    ")
        return height

    def emit_object(
        self, node: Mapping[str, Any], var: str, depth: str, out: list[str], indent: int, nesting: int, exact: bool
    ) -> int:
        pad = "    " * indent
        height = 0
        required = list(node.get("required", ()))
        if required:
            test = " and ".join(f"{key!r} in {var}" for key in required)
            out.append(f"{pad}if not ({test}): return False")
        if "minProperties" in node:
            out.append(f"{pad}if len({var}) < {int(node['minProperties'])}: return False")
        if "maxProperties" in node:
            out.append(f"{pad}if len({var}) > {int(node['maxProperties'])}: return False")
        properties: Mapping[str, Any] = node.get("properties", {})
        for key, sub in properties.items():
            value = self.fresh("_v")
            out.append(f"{pad}{value} = {var}.get({key!r}, _MISSING)")
            out.append(f"{pad}if {value} is not _MISSING:")
            opened = len(out)
            height = max(height, 1 + self.emit(sub, value, depth + " + 1", out, indent + 1, nesting + 1, exact))
            self.close(out, opened, pad + "    ")
        for key, dependency in dict(node.get("dependencies", {})).items():
            if isinstance(dependency, list):
                test = " and ".join(f"{d!r} in {var}" for d in dependency) or "True"
                out.append(f"{pad}if {key!r} in {var} and not ({test}): return False")
            else:
                out.append(f"{pad}if {key!r} in {var} and not {self.call(dependency, var, depth, exact)}: return False")
        if "propertyNames" in node:
            name = self.fresh("_k")
            out.append(f"{pad}for {name} in {var}:")
            out.append(f"{pad}    if not {self.call(node['propertyNames'], name, depth + ' + 1', exact)}: return False")
        patterns = dict(node.get("patternProperties", {}))
        extra = node.get("additionalProperties", True)
        known = self.constant(frozenset(properties))
        name, value = self.fresh("_k"), self.fresh("_v")
        if not patterns and extra is False:
            out.append(f"{pad}if not {var}.keys() <= {known}: return False")
            return height
        if not patterns and extra is True and exact:
            return height
        # Values under keys the schema does not name: checked by patternProperties and
        # additionalProperties, and never nested past the depth limit.
        out.append(f"{pad}if not {var}.keys() <= {known}:" if not patterns else f"{pad}if True:")
        out.append(f"{pad}    for {name}, {value} in {var}.items():")
        inner = pad + "        "
        matched = self.fresh("_m")
        if patterns:
            out.append(f"{inner}{matched} = {name} in {known}")
            for pattern, sub in patterns.items():
                search = self.constant(re.compile(pattern).search)
                out.append(f"{inner}if isinstance({name}, str) and {search}({name}) is not None:")
                out.append(f"{inner}    {matched} = True")
                out.append(f"{inner}    if not {self.call(sub, value, depth + ' + 1', exact)}: return False")
            out.append(f"{inner}if {matched}: continue")
        else:
            out.append(f"{inner}if {name} in {known}: continue")
        if not exact:
            out.append(f"{inner}if not isinstance({name}, JSON_SCALARS): return False")
        out.append(f"{inner}if not {self.call(extra, value, depth + ' + 1', exact)}: return False")
        return height

    def emit_one_of(self, branches: list[Any], var: str, depth: str, out: list[str], pad: str, exact: bool) -> None:
        dispatch = self.discriminate(branches)
        if dispatch is None:
            calls = [self.call(sub, var, depth, exact) for sub in branches]
            count = self.fresh("_n")
            out.append(f"{pad}{count} = 0")
            for call in calls:
                out.append(f"{pad}if {call}:")
                out.append(f"{pad}    if {count}: return False")
                out.append(f"{pad}    {count} = 1")
            out.append(f"{pad}if not {count}: return False")
            return
        # Look the tag up in a table of {value: branch functions}; exactly one must accept.
        prop, table = dispatch
        functions = {
            value: tuple(self.function_for(branches[i], exact) for i in indices) for value, indices in table.items()
        }
        lookup = self.fresh("_D")
        self.pending_tables.append((lookup, functions))
        tag, chosen = self.fresh("_t"), self.fresh("_b")
        out.append(f"{pad}if not isinstance({var}, dict): return False")
        out.append(f"{pad}{tag} = {var}.get({prop!r})")
        out.append(f"{pad}{chosen} = {lookup}.get({tag}) if isinstance({tag}, str) else None")
        out.append(f"{pad}if {chosen} is None: return False")
        out.append(f"{pad}if len({chosen}) == 1:")
        out.append(f"{pad}    if not {chosen}[0]({var}, {depth}): return False")
        out.append(f"{pad}elif sum(1 for f in {chosen} if f({var}, {depth})) != 1: return False")

    def discriminate(self, branches: list[Any]) -> tuple[str, dict[str, list[int]]] | None:
        """When every branch is an object that requires one property with string-enum values,
        map each value to the branches that accept it: the others cannot match."""
        found = [self.tags(sub) for sub in branches]
        if not found or any(f is None for f in found):
            return None
        props = {f[0] for f in found if f is not None}
        if len(props) != 1:
            return None
        table: dict[str, list[int]] = {}
        for index, f in enumerate(found):
            assert f is not None
            for value in f[1]:
                table.setdefault(value, []).append(index)
        return props.pop(), table

    def tags(self, node: Any) -> tuple[str, frozenset[str]] | None:
        node = self.resolve(node)
        if not isinstance(node, Mapping):
            return None
        if "oneOf" in node and "type" not in node:
            inner = [self.tags(sub) for sub in node["oneOf"]]
            if not inner or any(i is None for i in inner) or len({i[0] for i in inner if i}) != 1:
                return None
            values = frozenset().union(*(i[1] for i in inner if i))
            return next(i for i in inner if i)[0], values
        if node.get("type") not in ("object", ["object"]):
            return None
        for prop in node.get("required", ()):
            sub = self.resolve(node.get("properties", {}).get(prop))
            if not isinstance(sub, Mapping):
                continue
            listed = list(sub["enum"]) if "enum" in sub else [sub["const"]] if "const" in sub else None
            if listed and all(isinstance(v, str) for v in listed):
                return prop, frozenset(listed)
        return None


def compile_schema(schema: Any, *, max_depth: int) -> Callable[[Any], bool]:
    """``check(payload) -> bool``; raises :class:`Unsupported` for schemas it cannot translate."""
    compiler = _Compiler(schema, max_depth)
    entry = compiler.function_for(schema, False)
    namespace = dict(compiler.namespace)
    source = "\n\n".join(compiler.functions)
    exec(compile(source, "<azion_ai schema>", "exec"), namespace)  # noqa: S102 - code we generated
    for name, table in compiler.pending_tables:
        namespace[name] = {value: tuple(namespace[f] for f in fs) for value, fs in table.items()}
    function = namespace[entry]

    def check(payload: Any) -> bool:
        try:
            return bool(function(payload, 0))
        except RecursionError:  # an exact sub-check inside a recursive schema: let jsonschema answer
            return False

    return check
