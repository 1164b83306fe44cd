"""The compiled fast path (``_schema_compile``) against jsonschema, the reference.

"valid" from the fast path must always mean jsonschema accepts the payload and nothing in it is
nested past the limit; on the real schemas and on a schema that uses every translated keyword,
its answers are checked against jsonschema's for thousands of generated values."""

from __future__ import annotations

import copy

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft7Validator
from payload_strategies import json_values, mutated
from seeds import INTERNVL, QWEN, example_payloads, examples, plain_json, plain_validator

import azion_ai
from azion_ai import ValidationError, _validation
from azion_ai._schema_compile import Unsupported, compile_schema, resolve_local_ref

LIMIT = _validation.MAX_DEPTH


def depth(value, level=0):
    if isinstance(value, dict):
        return max([depth(v, level + 1) for v in value.values()], default=level)
    if isinstance(value, list):
        return max([depth(v, level + 1) for v in value], default=level)
    return level


def reference(model_id):
    """The fast path under test, and plain jsonschema on the published schema (no azion_ai code)."""
    return _validation._fast_check_for(azion_ai.get_model(model_id)), plain_validator(model_id)


def agree(fast, full, payload):
    answer = fast(payload)
    if depth(payload) > LIMIT:
        assert answer is False  # never "valid" past the limit
    else:
        # "valid" also means plain JSON: json_values may hold Infinity, which JSON cannot carry
        assert answer is (full.is_valid(payload) and plain_json(payload)), payload


@settings(max_examples=examples(400, under_mutation=15), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_real_schemas_mutated_seeds(case):
    model_id, payload = case
    fast, full = reference(model_id)
    agree(fast, full, payload)


@settings(max_examples=examples(200, under_mutation=10), deadline=None)
@given(st.sampled_from([QWEN, INTERNVL]), st.fixed_dictionaries({"messages": st.lists(json_values, max_size=4)}, optional={"tools": json_values, "n": json_values, "temperature": json_values}))
def test_real_schemas_random_messages(model_id, payload):
    fast, full = reference(model_id)
    agree(fast, full, payload)


def test_real_schemas_handwritten_cases():
    fast, full = reference(QWEN)
    user = {"role": "user", "content": "hi"}
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    cases = [
        {"messages": [user]},
        {"messages": [user], "n": 2.0},  # an integral float is an integer in JSON Schema
        {"messages": [user], "n": 2.5},
        {"messages": [user], "n": True},
        {"messages": [user], "temperature": float("nan")},
        {"messages": [{"role": "assistant", "content": "x", "tool_calls": [call]}]},  # both forms match: oneOf fails
        {"messages": [{"role": "assistant", "tool_calls": [call]}]},
        {"messages": [{"role": "assistant", "content": "x"}]},
        {"messages": [{"role": "tool", "content": "x", "tool_call_id": "c1"}]},
        {"messages": [{"role": "tool", "content": "x"}]},
        {"messages": [{"role": ["user"], "content": "x"}]},
        {"messages": [user], "tools": [{"type": "function", "function": {"name": "f", "parameters": {"a": [[{"b": 1}]]}}}]},
        {"messages": [user], "extra": {"free": ["values", {"are": "allowed"}]}},
        {"messages": "not a list"},
        {"messages": [user, 5]},
    ]
    for payload in cases:
        agree(fast, full, payload)
    for payload in example_payloads(QWEN):
        assert fast(payload) is True


def nested(levels, leaf="x"):
    value = leaf
    for _ in range(levels):
        value = [value]
    return value


def test_depth_limit_is_exact_in_free_values():
    fast, _ = reference(QWEN)
    # "extra" sits at depth 1, so its innermost value sits at depth 1 + levels.
    assert fast({"messages": [], "extra": nested(LIMIT - 1)}) is True
    assert fast({"messages": [], "extra": nested(LIMIT)}) is False
    assert fast({"messages": [], "extra": nested(5000)}) is False
    with pytest.raises(ValidationError, match="nested deeper"):
        azion_ai.validate(QWEN, {"messages": [{"role": "user", "content": "x"}], "extra": nested(LIMIT)})
    azion_ai.validate(QWEN, {"messages": [{"role": "user", "content": "x"}], "extra": nested(LIMIT - 1)})


# -- every translated keyword, against jsonschema ----------------------------------------------------

KITCHEN_SINK = {
    "definitions": {
        "tree": {"type": "object", "properties": {"value": {"type": "integer"}, "children": {"type": "array", "items": {"$ref": "#/definitions/tree"}}}},
    },
    "type": "object",
    "properties": {
        "s": {"type": "string", "minLength": 1, "maxLength": 4, "pattern": "^[a-c]+$"},
        "n": {"type": ["number", "null"], "minimum": -1, "maximum": 3},
        "ex": {"exclusiveMinimum": 0, "exclusiveMaximum": 2},
        "i": {"type": "integer"},
        "b": {"type": "boolean"},
        "e": {"enum": [1, "1", None, [1, 2], {"a": 1}]},
        "c": {"const": 0},
        "list": {"type": "array", "minItems": 1, "maxItems": 3, "items": {"type": "string"}},
        "tup": {"type": "array", "items": [{"type": "integer"}, {"type": "string"}]},
        "has": {"contains": {"const": "x"}},
        "any": {"anyOf": [{"type": "string"}, {"type": "integer", "minimum": 5}]},
        "all": {"allOf": [{"type": "object"}, {"required": ["k"]}]},
        "one": {"oneOf": [{"type": "integer"}, {"type": "number", "minimum": 2}]},
        "tagged": {"oneOf": [
            {"type": "object", "required": ["kind"], "properties": {"kind": {"enum": ["a"]}, "v": {"type": "string"}}},
            {"type": "object", "required": ["kind"], "properties": {"kind": {"const": "b"}, "v": {"type": "integer"}}},
            {"type": "object", "required": ["kind"], "properties": {"kind": {"enum": ["b", "c"]}}},
        ]},
        "neg": {"not": {"type": "string"}},
        "cond": {"if": {"required": ["x"]}, "then": {"required": ["y"]}, "else": {"maxProperties": 1}},
        "closed": {"type": "object", "properties": {"a": {}}, "additionalProperties": False},
        "typed_extra": {"type": "object", "additionalProperties": {"type": "integer"}, "minProperties": 1},
        "patterns": {"type": "object", "patternProperties": {"^x": {"type": "string"}}, "additionalProperties": False},
        "names": {"type": "object", "propertyNames": {"maxLength": 2}},
        "deps": {"type": "object", "dependencies": {"a": ["b"], "c": {"required": ["d"]}}},
        "tree": {"$ref": "#/definitions/tree"},
        "yes": True,
        "no": False,
    },
}

PROPERTIES = list(KITCHEN_SINK["properties"])
KEYS = PROPERTIES + ["k", "x", "y", "a", "b", "c", "d", "kind", "v", "value", "children", "xa", "zz"]
# Boundary values of the schema's bounds, and JSON look-alikes (1 vs 1.0 vs true, "1" vs 1).
leaves = st.one_of(
    st.sampled_from([None, True, False, 0, 1, 2, 3, -1, 5, 0.0, 1.0, 2.0, 2.5, -1.5, 3.0, "", "a", "abc", "abcd", "x", "1", "zzzzz"]),
    st.integers(-3, 8),
    st.floats(-3, 8),
)
values = st.recursive(leaves, lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.sampled_from(KEYS), kids, max_size=4), max_leaves=20)


@settings(max_examples=examples(1500, under_mutation=40), deadline=None)
@given(st.dictionaries(st.sampled_from(KEYS), values, max_size=6))
def test_every_keyword_matches_jsonschema(instance):
    fast = compile_schema(KITCHEN_SINK, max_depth=LIMIT)
    assert fast(instance) is Draft7Validator(KITCHEN_SINK).is_valid(instance), instance


@settings(max_examples=examples(2000, under_mutation=60), deadline=None)
@given(st.sampled_from(PROPERTIES), st.one_of(leaves, values, st.dictionaries(st.sampled_from(["a", "b", "c", "d", "k", "x", "y", "xa", "zz", "kind", "v"]), leaves, max_size=3)))
def test_each_keyword_alone_matches_jsonschema(name, value):
    # One property at a time: the rest of the instance cannot hide a wrong answer.
    fast = compile_schema(KITCHEN_SINK, max_depth=LIMIT)
    assert fast({name: value}) is Draft7Validator(KITCHEN_SINK).is_valid({name: value}), value


EDGE_CASES = [
    {"c": 0}, {"c": 0.0}, {"c": False}, {"e": 1.0}, {"e": True}, {"e": "1"}, {"e": [1, 2]}, {"e": [1, 2.0]}, {"e": [True, 2]}, {"e": {"a": 1}}, {"e": {"a": True}},
    {"one": 1}, {"one": 3}, {"one": 2.5}, {"one": 1.5}, {"any": 5}, {"any": 4}, {"any": "x"},
    {"ex": 0}, {"ex": 2}, {"ex": 1}, {"ex": 0.5}, {"n": -1}, {"n": 3}, {"n": 3.5}, {"n": None}, {"i": 2.0}, {"i": True}, {"i": 2.5},
    {"patterns": {"xa": "s"}}, {"patterns": {"xa": 1}}, {"patterns": {"a": "s"}}, {"closed": {"a": [1]}}, {"closed": {"b": 1}},
    {"typed_extra": {}}, {"typed_extra": {"q": 1}}, {"typed_extra": {"q": "1"}}, {"names": {"ab": 1}}, {"names": {"abc": 1}},
    {"deps": {"a": 1}}, {"deps": {"a": 1, "b": 2}}, {"deps": {"c": 1}}, {"deps": {"c": 1, "d": 1}},
    {"tagged": {"kind": "a", "v": "s"}}, {"tagged": {"kind": "a", "v": 1}}, {"tagged": {"kind": "b", "v": 1}}, {"tagged": {"kind": "b"}},
    {"tagged": {"kind": "c"}}, {"tagged": {"kind": "d"}}, {"tagged": {"v": 1}}, {"tagged": "a"},
    {"cond": {"x": 1, "y": 1}}, {"cond": {"x": 1}}, {"cond": {"a": 1, "b": 2}}, {"cond": {"a": 1}}, {"cond": 5},
    {"neg": "s"}, {"neg": 1}, {"has": ["x"]}, {"has": ["y"]}, {"has": []}, {"list": []}, {"list": ["a"]}, {"list": ["a", "b", "c", "d"]},
    {"tup": [1, "a", {"free": 1}]}, {"tup": ["a"]}, {"tup": [1]}, {"s": "abc"}, {"s": "abd"}, {"s": ""}, {"s": "abcab"},
    {"all": {"k": 1}}, {"all": {}}, {"yes": [[1]]}, {"no": None},
]


def test_kitchen_sink_edge_cases_match_jsonschema():
    fast = compile_schema(KITCHEN_SINK, max_depth=LIMIT)
    answers = [Draft7Validator(KITCHEN_SINK).is_valid(case) for case in EDGE_CASES]
    assert [fast(case) for case in EDGE_CASES] == answers
    assert 0.3 < sum(answers) / len(answers) < 0.7  # both answers are well represented


def test_recursive_schema_past_the_limit_is_refused_not_a_crash():
    fast = compile_schema(KITCHEN_SINK, max_depth=LIMIT)
    tree = {"value": 1}
    for _ in range(400):
        tree = {"value": 1, "children": [tree]}
    assert fast({"tree": tree}) is False
    shallow = {"value": 1, "children": [{"value": 2, "children": []}]}
    assert fast({"tree": shallow}) is True


def test_negation_is_exact_even_for_deep_values():
    # A deep value must not make `not` accept what jsonschema rejects.
    schema = {"not": {"required": ["a"]}}
    fast = compile_schema(schema, max_depth=LIMIT)
    assert fast({"a": nested(LIMIT + 5)}) is False
    assert fast({"b": 1}) is True


def test_deeply_nested_schemas_compile():
    # Inlining stops before Python's limit on nested blocks; deeper levels become functions.
    schema: dict = {"type": "string"}
    instance: object = "leaf"
    for level in range(40):
        schema = {"type": "object", "required": [f"k{level}"], "properties": {f"k{level}": {"type": "array", "items": schema}}}
        instance = {f"k{level}": [instance]}
    fast = compile_schema(schema, max_depth=200)
    assert fast(instance) is True
    assert fast(instance | {"k39": [{"k38": "no"}]}) is False
    assert compile_schema(schema, max_depth=LIMIT)(instance) is False  # 80 levels > 64


def test_values_json_cannot_carry_are_refused_with_their_path():
    import json

    from azion_ai import AI, BaseTransport
    from azion_ai._transport import TransportResponse

    class Recording(BaseTransport):
        sent: list = []

        def handle_request(self, request):
            self.sent.append(json.dumps(dict(request.payload), allow_nan=False))
            return TransportResponse(body={"id": "x", "object": "chat.completion", "created": 1, "model": QWEN, "choices": []})

    user = {"role": "user", "content": "hi"}
    cases = [
        ({"messages": [user], "temperature": float("nan")}, "temperature", "not a JSON number"),
        ({"messages": [user], "top_p": float("inf")}, "top_p", "not a JSON number"),
        ({"messages": [user], "extra": {"ids": {1, 2}}}, "extra.ids", "a set is not a JSON value"),
        ({"messages": [user], "extra": [b"raw"]}, r"extra\[0\]", "a bytes is not a JSON value"),
        ({"messages": [{**user, "meta": object()}]}, r"messages\[0\].meta", "not a JSON value"),
        ({"messages": [{**user, (1, 2): "x"}]}, r"messages\[0\]", "tuple key"),
        ({"messages": [user], "tools": [{"type": "function", "function": {"name": "f", "parameters": {"x": float("-inf")}}}]}, "parameters.x", "not a JSON number"),
    ]
    transport = Recording()
    ai = AI(transport=transport)
    fast, _ = reference(QWEN)
    for payload, path, message in cases:
        assert fast(payload) is False
        with pytest.raises(ValidationError, match=path) as info:
            ai.run(QWEN, payload)
        assert message in str(info.value)
    assert transport.sent == []  # nothing reached the transport
    ai.run(QWEN, {"messages": [user], "temperature": 0.5, "extra": {"ok": [1, 2.5, None, True, "s"]}})
    assert len(transport.sent) == 1


def test_untranslated_keywords_fall_back_to_jsonschema():
    with pytest.raises(Unsupported):
        compile_schema({"type": "number", "multipleOf": 3}, max_depth=LIMIT)
    schema = {"type": "object", "required": ["messages"], "properties": {"messages": {"type": "array"}, "seed": {"type": "integer", "multipleOf": 3}}}
    info = azion_ai.ModelInfo(id="acme-multiple", schema=schema, context_length=2048)
    azion_ai.register_model(info)
    try:
        azion_ai.validate("acme-multiple", {"messages": [{"role": "user", "content": "x"}], "seed": 6})
        with pytest.raises(ValidationError, match="seed"):
            azion_ai.validate("acme-multiple", {"messages": [{"role": "user", "content": "x"}], "seed": 7})
        with pytest.raises(ValidationError, match="nested deeper"):
            azion_ai.validate("acme-multiple", {"messages": [nested(LIMIT + 1)]})
    finally:
        from azion_ai import _models

        _models._registry.pop("acme-multiple", None)


def test_tuples_and_mappings_validate_like_lists_and_dicts():
    from types import MappingProxyType

    payload = {"messages": ({"role": "user", "content": ({"type": "text", "text": "hi"},)},)}
    azion_ai.validate(QWEN, payload)
    azion_ai.validate(QWEN, MappingProxyType(copy.deepcopy(payload)))
    with pytest.raises(ValidationError, match=r"messages\[0\].content"):
        azion_ai.validate(QWEN, {"messages": ({"role": "user", "content": ({"type": "text"},)},)})


# enum/const compare as JSON Schema does (1 is 1.0, true is not 1, arrays and objects by value):
# each instance's answer comes from plain jsonschema.
JSON_EQUALITY_SCHEMA = {"properties": {
    "flag": {"enum": [True]},
    "off": {"const": False},
    "pair": {"enum": [[1, "a"]]},
    "obj": {"const": {"a": 1, "b": [True]}},
    "one": {"const": 1},
    "nested": {"const": [[1]]},
}}
JSON_EQUALITY_CASES = [
    {"flag": True}, {"flag": False}, {"flag": 1}, {"flag": "true"}, {"off": False}, {"off": True}, {"off": 0}, {"off": None},
    {"pair": [1, "a"]}, {"pair": [1.0, "a"]}, {"pair": [1, "b"]}, {"pair": [1]}, {"pair": [1, "a", 2]}, {"pair": [True, "a"]}, {"pair": {"1": "a"}},
    {"obj": {"a": 1, "b": [True]}}, {"obj": {"a": 1.0, "b": [True]}}, {"obj": {"a": 1, "b": [1]}}, {"obj": {"a": 1}}, {"obj": {"a": 1, "c": [True]}}, {"obj": [1]},
    {"one": 1}, {"one": 1.0}, {"one": True}, {"one": [1]}, {"one": {"1": 1}}, {"one": "1"},
    {"nested": [[1]]}, {"nested": [1]}, {"nested": [[1.0]]}, {"nested": [[True]]}, {"nested": [{"1": 1}]}, {"nested": 1},
]


def test_enum_and_const_compare_json_values_like_jsonschema():
    fast = compile_schema(JSON_EQUALITY_SCHEMA, max_depth=LIMIT)
    expected = [Draft7Validator(JSON_EQUALITY_SCHEMA).is_valid(case) for case in JSON_EQUALITY_CASES]
    assert [fast(case) for case in JSON_EQUALITY_CASES] == expected
    assert expected.count(True) == 10  # flag, off, pair (2), obj (2), one (2), nested (2): hand-counted


TAGGED = {"oneOf": [
    {"type": "object", "required": ["role"], "properties": {"role": {"const": "user"}, "content": {"type": "string"}}},
    {"type": "object", "required": ["role"], "properties": {"role": {"enum": ["assistant", "tool"]}}},
    {"oneOf": [
        {"type": "object", "required": ["role"], "properties": {"role": {"const": "system"}}},
        {"type": "object", "required": ["role"], "properties": {"role": {"const": "developer"}}},
    ]},
]}


def _tables(check):
    """The tag tables the compiled predicate looks branches up in ({tag value: branch functions})."""
    (entry,) = [cell.cell_contents for cell in check.__closure__ if callable(cell.cell_contents)]
    return [value for name, value in entry.__globals__.items() if name.startswith("_D")]


def test_a_oneof_tagged_by_a_required_string_enum_compiles_to_one_lookup_table():
    fast = compile_schema(TAGGED, max_depth=LIMIT)
    # the outer oneOf, and the nested one (its own table); each tag value names the one branch
    # that can accept it (hand-written)
    inner, outer = sorted(_tables(fast), key=len)
    assert sorted(inner) == ["developer", "system"] and sorted(outer) == ["assistant", "developer", "system", "tool", "user"]
    assert all(len(functions) == 1 for table in (inner, outer) for functions in table.values())
    assert outer["assistant"] == outer["tool"] and outer["system"] == outer["developer"] and outer["user"] != outer["tool"] != outer["system"]
    assert inner["system"] != inner["developer"]
    cases = [{"role": "user", "content": "x"}, {"role": "user", "content": 1}, {"role": "tool"}, {"role": "system"}, {"role": "developer"}, {"role": "other"}, {"role": 1}, {}, "user", [{"role": "user"}]]
    assert [fast(c) for c in cases] == [Draft7Validator(TAGGED).is_valid(c) for c in cases]


@pytest.mark.parametrize("branches", [
    # tags on different properties, an untagged branch, a non-string enum: no table, plain oneOf
    [{"type": "object", "required": ["a"], "properties": {"a": {"const": "x"}}}, {"type": "object", "required": ["b"], "properties": {"b": {"const": "y"}}}],
    [{"type": "object", "required": ["a"], "properties": {"a": {"const": "x"}}}, {"type": "object"}],
    [{"type": "object", "required": ["a"], "properties": {"a": {"enum": [1, 2]}}}, {"type": "object", "required": ["a"], "properties": {"a": {"const": "y"}}}],
    [{"type": "string"}, {"type": "object", "required": ["a"], "properties": {"a": {"const": "y"}}}],
])
def test_a_oneof_without_one_shared_string_tag_compiles_without_a_table(branches):
    schema = {"oneOf": branches}
    fast = compile_schema(schema, max_depth=LIMIT)
    assert _tables(fast) == []
    cases = [{"a": "x"}, {"b": "y"}, {"a": "x", "b": "y"}, {"a": 1}, {"a": "y"}, {}, "s", 1]
    assert [fast(c) for c in cases] == [Draft7Validator(schema).is_valid(c) for c in cases]


REF_ROOT = {"a": {"b/c": 1, "d~e": 2, "~1": 3, "list": [10, 20], "s": "abc"}, "b": 4}


@pytest.mark.parametrize(("ref", "expected"), [
    ("#", REF_ROOT), ("#/b", 4), ("#/a/list", [10, 20]), ("#/a/list/1", 20), ("#/a/list/0", 10),
    ("#/a/b~1c", 1), ("#/a/d~0e", 2), ("#/a/~01", 3),  # RFC 6901 escapes: ~1 is "/", ~0 is "~", in that order
])
def test_resolve_local_ref_follows_json_pointers(ref, expected):
    assert resolve_local_ref(REF_ROOT, ref) == expected


@pytest.mark.parametrize(("ref", "message"), [
    ("#/a/list/2", "does not resolve"), ("#/a/list/x", "does not resolve"), ("#/a/x", "does not resolve"),
    ("#/a/s/b", "does not resolve"), ("#/a/b/c", "does not resolve"), ("#/zz", "does not resolve"),
    ("x/b", "is not a local reference"), ("other.json#/b", "is not a local reference"), (5, "is not a local reference"), (None, "is not a local reference"),
])
def test_resolve_local_ref_refuses_remote_and_dangling_refs(ref, message):
    with pytest.raises(LookupError, match=message) as caught:
        resolve_local_ref(REF_ROOT, ref)
    assert type(caught.value) is LookupError  # not a KeyError or IndexError from a stray lookup


KIND_A = {"type": "object", "required": ["kind"], "properties": {"kind": {"const": "a"}, "v": {"type": "string"}}}
KIND_C = {"type": "object", "required": ["kind"], "properties": {"kind": {"const": "c"}}}


@pytest.mark.parametrize(("schema", "tables"), [
    # a nested oneOf with an untagged branch leaves the outer oneOf untagged (the inner one too)
    ({"oneOf": [{"oneOf": [KIND_A, {"type": "object"}]}, KIND_C]}, 0),
    # a typed node's own oneOf does not tag it: only the inner oneOf gets a table
    ({"oneOf": [{"type": "object", "oneOf": [KIND_A, KIND_C]}, {"type": "object", "required": ["kind"], "properties": {"kind": {"const": "d"}}}]}, 1),
    # an untyped branch with a required string const is not a tagged object branch
    ({"oneOf": [{"required": ["kind"], "properties": {"kind": {"const": "a"}}}, KIND_C]}, 0),
])
def test_oneof_tagging_needs_every_branch_tagged_and_typed(schema, tables):
    fast = compile_schema(schema, max_depth=LIMIT)
    assert len(_tables(fast)) == tables
    cases = [{"kind": "a", "v": "s"}, {"kind": "a", "v": 1}, {"kind": "c"}, {"kind": "d"}, {"kind": "zzz"}, {"kind": 1}, {}, "a", [1]]
    assert [fast(c) for c in cases] == [Draft7Validator(schema).is_valid(c) for c in cases]


@pytest.mark.parametrize(("branch", "tagged"), [
    ({"type": ["object"], "required": ["kind"], "properties": {"kind": {"const": "b"}}}, True),  # type as a one-item list
    ({"type": "object", "required": ["x", "kind"], "properties": {"x": {"type": "integer"}, "kind": {"const": "b"}}}, True),  # the tag is not the first required key
    ({"type": "object", "required": ["y", "kind"], "properties": {"kind": {"enum": ["b"]}}}, True),  # a required key with no schema comes first
    ({"type": "object", "required": ["kind"]}, False),  # required, but no properties to name its values
    ({"type": "object", "required": ["kind"], "properties": {"kind": {"type": "string"}}}, False),  # neither enum nor const
])
def test_a_oneof_branch_is_tagged_by_its_first_required_string_enum_property(branch, tagged):
    schema = {"oneOf": [KIND_A, branch]}
    fast = compile_schema(schema, max_depth=LIMIT)
    assert len(_tables(fast)) == (1 if tagged else 0)
    cases = [{"kind": "a", "v": "s"}, {"kind": "b"}, {"kind": "b", "x": 1}, {"kind": "b", "x": "1"}, {"kind": "c"}, {"kind": 1}, {}, "b"]
    assert [fast(c) for c in cases] == [Draft7Validator(schema).is_valid(c) for c in cases]


def test_kitchen_sink_refs_are_followed_like_jsonschema():
    fast = compile_schema(KITCHEN_SINK, max_depth=LIMIT)
    cases = [{"tree": {"value": 1}}, {"tree": {"value": "x"}}, {"tree": {"value": 1, "children": [{"value": 2}]}}, {"tree": {"value": 1, "children": [{"value": "2"}]}}, {"tree": 1}]
    assert [fast(c) for c in cases] == [Draft7Validator(KITCHEN_SINK).is_valid(c) for c in cases]
    assert [Draft7Validator(KITCHEN_SINK).is_valid(c) for c in cases].count(True) >= 1


def test_a_ref_cycle_is_unsupported_and_a_long_ref_chain_is_not():
    with pytest.raises(Unsupported, match=r"^\$ref cycle$"):
        compile_schema({"definitions": {"a": {"$ref": "#/definitions/b"}, "b": {"$ref": "#/definitions/a"}}, "properties": {"p": {"$ref": "#/definitions/a"}}}, max_depth=LIMIT)
    # 100 hops of $ref to reach a schema are followed (the 101st would count as a cycle)
    chain = {f"r{i}": {"$ref": f"#/definitions/r{i + 1}"} for i in range(99)} | {"r99": {"type": "integer"}}
    fast = compile_schema({"definitions": chain, "properties": {"p": {"$ref": "#/definitions/r0"}}}, max_depth=LIMIT)
    assert [fast({"p": 1}), fast({"p": "1"})] == [True, False]
    with pytest.raises(Unsupported, match="does not resolve"):
        compile_schema({"properties": {"p": {"$ref": "#/definitions/missing"}}}, max_depth=LIMIT)


def _helper_functions(check):
    """The names of the functions the compiled predicate was built from (entry included)."""
    (entry,) = [cell.cell_contents for cell in check.__closure__ if callable(cell.cell_contents)]
    return sorted(name for name, value in entry.__globals__.items() if name.startswith("_f") and callable(value))


def test_a_bare_scalar_type_branch_is_inlined_not_a_helper_function():
    # Each branch is a scalar "type" with only annotations beside it: no function is generated for it.
    branches = [
        {"type": "string", "description": "d", "title": "t", "default": "x", "format": "f"},
        {"type": "boolean", "description": "d"},
        {"type": "null", "title": "t"},
        {"type": "number", "default": 1},
        {"type": "integer", "format": "int32"},
    ]
    schema = {"anyOf": branches}
    check = compile_schema(schema, max_depth=LIMIT)
    assert _helper_functions(check) == ["_f1"]
    cases = ["s", True, None, 1.5, 3, [], {}]
    assert [check(c) for c in cases] == [True, True, True, True, True, False, False]
    assert [Draft7Validator(schema).is_valid(c) for c in cases] == [True, True, True, True, True, False, False]
    # an object or array type, a list of types, or another keyword beside "type" gets a function
    for branch in ({"type": "object"}, {"type": "array"}, {"type": ["string"]}, {"type": "string", "minLength": 1}):
        assert _helper_functions(compile_schema({"anyOf": [branch]}, max_depth=LIMIT)) == ["_f1", "_f2"], branch


def test_an_object_type_branch_still_refuses_values_past_the_limit():
    schema = {"anyOf": [{"type": "object"}]}
    check = compile_schema(schema, max_depth=2)
    assert Draft7Validator(schema).is_valid({"a": {"b": {"c": 1}}})
    assert check({"a": {"b": 1}}) is True  # depth 2
    assert check({"a": {"b": {"c": 1}}}) is False  # depth 3: past the limit


def test_true_and_false_subschemas_in_combinators_match_jsonschema():
    schemas = [
        {"if": True, "then": {"type": "string"}},
        {"not": True},
        {"anyOf": [False, {"type": "string"}]},
        {"anyOf": [True]},
        {"oneOf": [False, True]},
    ]
    for schema in schemas:
        check = compile_schema(schema, max_depth=LIMIT)
        for value in ["s", 1, None, [1], {"a": 1}]:
            assert check(value) is Draft7Validator(schema).is_valid(value), (schema, value)


@pytest.mark.parametrize("schema", [
    {"items": [{"items": [{"type": "string"}]}]},
    {"items": {"items": {"type": "string"}}},
    {"items": [{"items": {"type": "string"}}]},
    {"items": {"items": [{"type": "string"}]}},
])
def test_typed_checks_nested_in_arrays_count_toward_the_depth_limit(schema):
    value = [["x"]]  # "x" sits at depth 2
    assert Draft7Validator(schema).is_valid(value)
    assert compile_schema(schema, max_depth=2)(value) is True
    assert compile_schema(schema, max_depth=1)(value) is False


def test_free_values_inside_tuple_items_are_walked_at_their_depth():
    schema = {"items": [{"type": "object"}, {"type": "array"}]}
    value = [{"a": {"b": 1}}, [[1]]]  # both reach depth 3
    assert Draft7Validator(schema).is_valid(value)
    assert compile_schema(schema, max_depth=3)(value) is True
    assert compile_schema(schema, max_depth=2)(value) is False
    assert compile_schema(schema, max_depth=2)([{"a": 1}, [1]]) is True


@pytest.mark.parametrize(("schema", "message"), [
    ({"type": "strin"}, "type 'strin'"),
    ({"type": []}, "type []"),
    ({"properties": {"a": 5}}, "schema node 5"),
    ({"uniqueItems": True, "multipleOf": 2}, "multipleOf, uniqueItems"),
    ({"minimum": "1"}, "minimum '1'"),
    ({"maximum": True}, "maximum True"),
])
def test_unsupported_schemas_name_what_is_not_translated(schema, message):
    with pytest.raises(Unsupported) as caught:
        compile_schema(schema, max_depth=LIMIT)
    assert str(caught.value) == message


@pytest.mark.parametrize("schema", [
    {"minLength": 2},
    {"maxLength": 1},
    {"pattern": "^a"},
    {"minItems": 2},
    {"maxItems": 1},
    {"minProperties": 2},
    {"maxProperties": 1},
    {"additionalProperties": False},
    {"additionalProperties": {"type": "string"}},
    {"patternProperties": {"^a": {"type": "string"}}},
    {"enum": ["a", "b"]},
    {"enum": [1, 2]},
    {"anyOf": []},
    {"then": {"type": "string"}},
    {"else": {"type": "string"}},
    {"if": {"type": "string"}, "then": {"minLength": 2}},
    {"if": {"type": "string"}, "else": {"type": "integer"}},
    {"not": {"items": {"anyOf": [{"type": "string"}, {"minimum": 1}]}}},
    {"if": {"items": {"anyOf": [{"type": "string"}, {"minimum": 1}]}}, "then": {"minItems": 2}},
])
def test_each_keyword_alone_decides_like_jsonschema(schema):
    values = ["a", "ab", "b", "", 1, 1.5, None, [], [1], [1, 2], ["a"], ["a", "b"], [[1]], {}, {"a": 1}, {"a": "x"}, {"b": 1}, {"a": 1, "b": 2}]
    check = compile_schema(schema, max_depth=LIMIT)
    assert [check(v) for v in values] == [Draft7Validator(schema).is_valid(v) for v in values]


@pytest.mark.parametrize("schema", [
    {"not": {"items": {"items": {"type": "string"}}}},
    {"if": {"items": {"items": {"type": "string"}}}, "then": True, "else": False},
])
def test_negated_and_condition_subschemas_ignore_the_depth_limit(schema):
    # the subschema reaches two levels below the value, past max_depth=1, yet [] satisfies it
    assert compile_schema(schema, max_depth=1)([]) is Draft7Validator(schema).is_valid([])


@pytest.mark.parametrize(("schema", "max_depth", "value"), [
    (True, 0, "x"),
    ({"type": "string"}, 0, "x"),
    ({"items": True}, 1, [1]),
    ({"items": False}, 1, []),
    ({"items": [False]}, 1, []),
])
def test_a_value_at_the_limit_is_accepted(schema, max_depth, value):
    assert Draft7Validator({} if schema is True else schema).is_valid(value)
    assert compile_schema(schema, max_depth=max_depth)(value) is True


def test_a_value_whose_comparison_raises_does_not_match_an_enum():
    class Hostile:
        def __eq__(self, other):
            raise RuntimeError("no comparison")

        __hash__ = object.__hash__

    assert compile_schema({"enum": [1, 2]}, max_depth=LIMIT)(Hostile()) is False
    assert compile_schema({"const": 1.5}, max_depth=LIMIT)(Hostile()) is False


def test_a_check_split_into_a_helper_function_adds_no_height():
    # the third "properties" level sits past the inlining limit and becomes a helper function
    schema = {"properties": {"a": {"properties": {"a": {"properties": {"a": {"type": "string"}}}}}}}
    value = {"a": {"a": {"a": "x"}}}  # "x" at depth 3
    assert Draft7Validator(schema).is_valid(value)
    assert compile_schema(schema, max_depth=3)(value) is True
    assert compile_schema(schema, max_depth=2)(value) is False


@pytest.mark.parametrize("schema", [
    {"dependencies": {"a": ["b", "c"]}},
    {"dependencies": {"a": []}},
    {"patternProperties": {"^a": {"minLength": 2}}},
    {"properties": {"a": {}}, "patternProperties": {"^a": {"type": "string"}}},
    {"type": "integer", "minLength": 1},
    {"anyOf": [True]},
])
def test_object_keywords_decide_like_jsonschema(schema):
    values = ["a", "ab", 5, [], {}, {"a": 1}, {"a": "x"}, {"a": "xy"}, {"b": 1}, {"a": 1, "b": 2}, {"a": 1, "b": 2, "c": 3}]
    check = compile_schema(schema, max_depth=LIMIT)
    assert [check(v) for v in values] == [Draft7Validator(schema).is_valid(v) for v in values]


@pytest.mark.parametrize("schema", [
    {"properties": {"a": {"properties": {"a": {"type": "string"}}}}},
    {"type": "object", "properties": {"a": {"type": "object", "properties": {"a": {"type": "string"}}}}},
])
def test_typed_checks_nested_in_properties_count_toward_the_depth_limit(schema):
    value = {"a": {"a": "x"}}  # "x" sits at depth 2
    assert Draft7Validator(schema).is_valid(value)
    assert compile_schema(schema, max_depth=2)(value) is True
    assert compile_schema(schema, max_depth=1)(value) is False


@pytest.mark.parametrize("schema", [{"maxProperties": 1}, {}, {"anyOf": [True]}])
def test_values_json_cannot_carry_are_never_valid(schema):
    assert compile_schema(schema, max_depth=0)({}) is True
    assert compile_schema(schema, max_depth=0)({"a": 1}) is False  # 1 sits at depth 1, past 0
    assert compile_schema(schema, max_depth=LIMIT)({(1, 2): 1}) is False  # a key JSON cannot write
    assert compile_schema(schema, max_depth=LIMIT)({"a": float("nan")}) is False


def test_a_ref_chain_of_101_hops_counts_as_a_cycle():
    chain = {f"r{i}": {"$ref": f"#/definitions/r{i + 1}"} for i in range(100)} | {"r100": {"type": "integer"}}
    with pytest.raises(Unsupported, match=r"^\$ref cycle$"):
        compile_schema({"definitions": chain, "properties": {"p": {"$ref": "#/definitions/r0"}}}, max_depth=LIMIT)


def test_a_negated_additional_properties_false_is_exact():
    schema = {"not": {"properties": {"a": {"type": "integer"}}, "additionalProperties": False}}
    assert Draft7Validator(schema).is_valid({"b": 1}) and not Draft7Validator(schema).is_valid({"a": 1})
    check = compile_schema(schema, max_depth=LIMIT)
    assert [check({"b": 1}), check({"a": 1})] == [True, False]


@pytest.mark.parametrize("inner", [
    {"properties": {"a": {}}, "additionalProperties": False},
    {"properties": {"a": True}},
    {"properties": {}},
    {"additionalProperties": True},
    {"type": "object", "additionalProperties": {}},
    {"items": {}},
    {"items": True, "type": "array"},
    {"contains": True},
    {"items": []},
    {"type": "array", "items": []},
])
@pytest.mark.parametrize("wrap", ["not", "if"])
def test_subschemas_that_accept_anything_compile_inside_not_and_if(inner, wrap):
    # exact contexts emit no depth check for an accept-anything subschema, so its block is empty
    schema = {"not": inner} if wrap == "not" else {"if": inner, "then": {"required": ["b"]}}
    values = [None, 1, "a", [], [1], {}, {"a": 1}, {"b": 1}, {"a": 1, "b": 2}]
    check = compile_schema(schema, max_depth=LIMIT)
    assert [check(v) for v in values] == [Draft7Validator(schema).is_valid(v) for v in values]


def test_a_subschema_used_in_every_position_compiles_to_one_function():
    # one helper per distinct subschema (function_for's memo): a definition that a schema uses
    # in many places must be compiled once (the catalogue's schemas reuse their $refs), whichever
    # keyword reaches it; the root, reached again through "#", is no exception
    ref, tagged = {"$ref": "#/definitions/d"}, {"$ref": "#/definitions/t"}
    schema = {
        "definitions": {
            "d": {"type": "object", "properties": {"x": {"type": "integer"}}},
            "t": {"required": ["t"], "properties": {"t": {"enum": ["u"]}}, "contains": ref},
        },
        "allOf": [{"contains": ref}],
        "properties": {
            "a": {"anyOf": [ref, {"type": "string"}]},
            "b": {"oneOf": [ref, {"type": "string"}]},
            "c": {"if": {"type": "string"}, "then": ref, "else": ref},
            "e": {"items": [{"contains": ref}]},
            "f": {"items": {"contains": ref}},
            "h": {"additionalProperties": ref},
            "i": {"patternProperties": {"^z": ref}},
            "j": {"dependencies": {"k": ref}},
            "m": {"properties": {"n": {"contains": ref}}},
            "o": {"oneOf": [tagged]},
            "p": {"propertyNames": {"$ref": "#/definitions/d/properties/x"}, "anyOf": [tagged]},
            "q": {"anyOf": [{"$ref": "#"}, {"type": "string"}]},
        },
    }
    check = compile_schema(schema, max_depth=LIMIT)
    # the entry (also "#"), "d" and "t"; bare scalar types ("x", the `if` condition) are inlined
    assert len(_helper_functions(check)) == 3
    good, bad = {"x": 1}, {"x": "no"}
    cases = [
        ({"a": good, "h": {"q": good}, "j": {"k": 1, "x": 2}}, True),
        ({"h": {"q": bad}}, False),
        ({"f": [[good]], "q": {"q": "s"}}, True),
        ({"q": {"a": bad}}, False),
        ([good], True),
        ([bad], False),
    ]
    for value, expected in cases:
        assert check(value) is expected is Draft7Validator(schema).is_valid(value), value


def test_a_free_property_value_past_the_limit_or_not_json_is_refused():
    # a property whose schema is `true` or only annotations checks nothing, yet its value must
    # still be plain JSON within the depth limit
    for schema in ({"properties": {"a": True}}, {"properties": {"a": {"description": "anything"}}}):
        check = compile_schema(schema, max_depth=2)
        assert Draft7Validator(schema).is_valid({"a": [[1]]})
        assert check({"a": [1]}) is True  # 1 at depth 2
        assert check({"a": [[1]]}) is False  # 1 at depth 3
        assert check({"a": float("nan")}) is False and check({"a": {1, 2}}) is False


def test_a_container_constant_past_the_limit_is_refused():
    schema = {"enum": [[[1]]]}
    assert Draft7Validator(schema).is_valid([[1]])
    assert compile_schema(schema, max_depth=2)([[1]]) is True  # 1 at depth 2
    assert compile_schema(schema, max_depth=1)([[1]]) is False


def test_an_empty_tuple_items_adds_no_height():
    assert compile_schema({"items": []}, max_depth=0)([]) is True


def test_tuple_items_past_the_listed_ones_are_walked_for_depth():
    schema = {"items": [{"type": "integer"}]}
    assert Draft7Validator(schema).is_valid([1, [[1]]])
    assert compile_schema(schema, max_depth=2)([1, [1]]) is True
    assert compile_schema(schema, max_depth=2)([1, [[1]]]) is False


@pytest.mark.parametrize("schema", [
    {"not": {"patternProperties": {"^a": {"type": "integer"}}}},
    {"not": {"additionalProperties": {"type": "integer"}}},
    {"not": {"properties": {"a": {"type": "string"}}, "additionalProperties": {"type": "integer"}}},
])
def test_negated_pattern_and_additional_properties_match_jsonschema(schema):
    values = [{}, {"a": 1}, {"a": "x"}, {"b": 1}, {"b": "x"}, {"a": "x", "b": 1}, 1]
    check = compile_schema(schema, max_depth=LIMIT)
    assert [check(v) for v in values] == [Draft7Validator(schema).is_valid(v) for v in values]


def test_a_recursive_exact_check_too_deep_for_python_is_not_valid():
    # `not` of a recursive schema walks the whole value (exact checks have no depth limit): past
    # Python's recursion limit the fast path must answer "not valid" (jsonschema then decides)
    schema = {"definitions": {"t": {"items": {"$ref": "#/definitions/t"}}}, "not": {"$ref": "#/definitions/t"}}
    value: list = []
    for _ in range(5000):
        value = [value]
    assert compile_schema(schema, max_depth=LIMIT)(value) is False
