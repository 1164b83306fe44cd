"""Tool-call parsing against vLLM's own hermes parser, imported in the vLLM environment.

The same corpus of model outputs goes through vLLM's ``Hermes2ProToolParser`` and through ours
(whole, and fed piece by piece as a stream); content, tool calls and whether tools were called
must agree exactly, arguments string included.
"""

from __future__ import annotations

import json

import pytest
import vllm_reference
from conformance import WEATHER, require_vllm
from conftest import QWEN_ID

from azion_ai._local._chat import ToolCallParser, parse_tool_calls

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"location": "London"}}\n</tool_call>'
CORPUS = [
    "plain text, no calls",
    "",
    CALL,
    "Let me check. " + CALL,
    CALL + " and some text after it",
    "Two: " + CALL + "\n" + CALL.replace("London", "Paris"),
    '<tool_call>\n{"name": "get_weather", "arguments": {"location": "London"\n</tool_call>',  # malformed JSON
    '<tool_call>\n{"name": "get_weather"}\n</tool_call>',  # no arguments
    '<tool_call>\n{"name": "get_weather", "parameters": {"location": "Rome"}}\n</tool_call>',
    '<tool_call>\n{"name": "get_weather", "arguments": {"location": "Oslo"}}',  # never closed, whole JSON
    '<tool_call>\n{"name": "get_weather", "arguments": {"loc',  # cut mid-call
    '<tool_call>\n{"name": "get_weather", "arguments": "{\\"location\\": \\"Lima\\"}"}\n</tool_call>',  # string args
    '<tool_call>\n{"name": 7, "arguments": {}}\n</tool_call>',
    "<tool_call>\n[1, 2]\n</tool_call>",
    "<tool_call></tool_call>",
    '<tool_call>{"name": "get_time", "arguments": {}}</tool_call>',
    '<tool_call>\n{"name": "get_weather", "arguments": {"location": "São Paulo 東京"}}\n</tool_call>',
    CALL + CALL + "trailing <tool_call",
    "text with a stray </tool_call> closing tag",
    "partial tag at the end <tool_ca",
    'ok ' + CALL + ' then a broken one <tool_call>{"name": }</tool_call>',
    '<tool_call>\n{"name": "get_weather", "arguments": null}\n</tool_call>',
]

VLLM_SNIPPET = r"""
import json, sys
from vllm.tokenizers import get_tokenizer
from vllm.tool_parsers.hermes_tool_parser import Hermes2ProToolParser
from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest

corpus = json.loads(sys.argv[2])
tokenizer = get_tokenizer(sys.argv[1])
request = ChatCompletionRequest(model="m", messages=[{"role": "user", "content": "x"}], tools=[json.loads(sys.argv[3])])
out = []
for text in corpus:
    parser = Hermes2ProToolParser(tokenizer)
    result = parser.extract_tool_calls(text, request)
    out.append({
        "tools_called": result.tools_called,
        "content": result.content,
        "calls": [[c.function.name, c.function.arguments] for c in result.tool_calls],
    })
print("RESULT" + json.dumps(out))
"""


@pytest.fixture(scope="module")
def vllm_results(tiny_dirs):
    require_vllm()
    stdout = vllm_reference.run_python(VLLM_SNIPPET, str(tiny_dirs[QWEN_ID] / "reference"), json.dumps(CORPUS), json.dumps(WEATHER))
    return json.loads(stdout.split("RESULT", 1)[1])


def _ours(text: str) -> dict:
    content, calls = parse_tool_calls(text)
    return {
        "tools_called": bool(calls),
        "content": content,
        "calls": [[c["function"]["name"], c["function"]["arguments"]] for c in calls],
    }


def _streamed(text: str, size: int) -> dict:
    parser = ToolCallParser()
    content = "".join(parser.feed(text[i : i + size]) for i in range(0, len(text), size))
    rest = parser.finish()
    content += rest.content
    calls = [[c["function"]["name"], c["function"]["arguments"]] for c in rest.tool_calls]
    return {"tools_called": bool(calls), "content": content or None if calls else content, "calls": calls}


@pytest.mark.parametrize("index", range(len(CORPUS)))
def test_our_parser_gives_vllms_message(vllm_results, index):
    assert _ours(CORPUS[index]) == vllm_results[index]


@pytest.mark.parametrize("size", [1, 3, 7, 1000])
def test_a_streamed_output_ends_with_the_same_message(vllm_results, size):
    for text, expected in zip(CORPUS, vllm_results, strict=True):
        assert _streamed(text, size) == expected, text
