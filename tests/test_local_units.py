"""Pieces of the local backend that need no model: tool-call parsing, detokenization, penalties, images."""

from __future__ import annotations

import json
import subprocess
import sys

import httpx
import pytest
from conftest import png_data_uri, require

from azion_ai import ImageError
from azion_ai._local._chat import IncrementalDecoder, ToolCallParser, build_conversation
from azion_ai._local._images import ImageLoader, ImagePolicy

QWEN_OUTPUTS = [
    '<tool_call>\n{"name": "get_weather", "arguments": {"location": "London"}}\n</tool_call>',
    'Sure, checking.\n<tool_call>\n{"name": "get_weather", "arguments": {"location": "São Paulo, BR"}}\n</tool_call>',
    '<tool_call>\n{"name": "a", "arguments": {}}\n</tool_call>\n<tool_call>\n{"name": "b", "arguments": {"x": [1, 2]}}\n</tool_call>',
    'Use <tool_call> tags like < this: <tool_call>\n{broken\n</tool_call> done',
    "Plain answer with a < sign and <tool but no call.",
    '<tool_call>\n{"name": "late", "arguments": {"q": 1}}',
]


def _parse(pieces):
    parser = ToolCallParser()
    content = "".join(parser.feed(piece) for piece in pieces)
    out = parser.finish()
    return content + out.content, [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in out.tool_calls]


@pytest.mark.parametrize("text", QWEN_OUTPUTS)
def test_tool_call_parsing_is_the_same_at_every_split(text):
    whole = _parse([text])
    for cut in range(len(text) + 1):
        assert _parse([text[:cut], text[cut:]]) == whole, cut
    assert _parse(list(text)) == whole


def test_tool_call_parsing_results():
    assert _parse([QWEN_OUTPUTS[0]]) == ("", [("get_weather", {"location": "London"})])
    assert _parse([QWEN_OUTPUTS[1]]) == ("Sure, checking.\n", [("get_weather", {"location": "São Paulo, BR"})])
    assert _parse([QWEN_OUTPUTS[2]])[1] == [("a", {}), ("b", {"x": [1, 2]})]
    content, calls = _parse([QWEN_OUTPUTS[3]])
    assert calls == [] and content == QWEN_OUTPUTS[3]
    assert _parse([QWEN_OUTPUTS[4]]) == (QWEN_OUTPUTS[4], [])
    assert _parse([QWEN_OUTPUTS[5]]) == ("", [("late", {"q": 1})])  # stopped before </tool_call>


def test_no_partial_tag_is_ever_emitted_as_content():
    parser = ToolCallParser()
    emitted = ""
    for ch in "ok <tool_call>\n{\"name\": \"f\", \"arguments\": {}}\n</tool_call>":
        emitted += parser.feed(ch)
        assert "<" not in emitted.replace("ok ", "", 1) or emitted == "ok "
    assert emitted == "ok "


class ByteTokenizer:
    """Each id is one UTF-8 byte: the worst case for cutting characters."""

    def decode(self, ids, skip_special_tokens=True):
        return bytes(ids).decode("utf-8", errors="replace")


def test_incremental_decoder_never_splits_a_character():
    text = "héllo 😀 世界"
    decoder = IncrementalDecoder(ByteTokenizer())
    pieces = [decoder.add(b) for b in text.encode()]
    pieces.append(decoder.flush())
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)


def test_penalties_follow_openai_semantics():
    torch = require("torch")
    from azion_ai._local._request import SamplingParams
    from azion_ai._local._sampling import Penalties

    params = SamplingParams.resolve({"presence_penalty": 0.5, "frequency_penalty": 0.25})
    penalties = Penalties(params, torch.tensor([[5, 5, 5]]), rows=1, width=6)
    for token in (1, 1, 2):  # generated, one step at a time
        penalties.update(torch.tensor([[token]]))
    out = penalties(torch.zeros(1, 6))
    assert out[0].tolist() == [0.0, -(0.5 + 2 * 0.25), -(0.5 + 0.25), 0.0, 0.0, 0.0]  # prompt token 5 untouched


def test_repetition_penalty_covers_prompt_and_output():
    torch = require("torch")
    from azion_ai._local._request import SamplingParams
    from azion_ai._local._sampling import Penalties

    params = SamplingParams.resolve({"repetition_penalty": 2.0})
    scores = torch.tensor([[2.0, 2.0, 2.0, 2.0, -2.0, 2.0]] * 2)
    one = Penalties(params, torch.tensor([[3]]), rows=1, width=6)  # prompt [3], output 4
    one.update(torch.tensor([[4]]))
    assert one(scores[:1])[0].tolist() == [2.0, 2.0, 2.0, 1.0, -4.0, 2.0]
    two = Penalties(params, torch.tensor([[1, 2, 3]]), rows=2, width=6)  # n=2 rows of one prompt
    two.update(torch.tensor([[5], [4]]))
    out = two(scores)
    assert out[0].tolist() == [2.0, 1.0, 1.0, 1.0, -2.0, 1.0]
    assert out[1].tolist() == [2.0, 1.0, 1.0, 1.0, -4.0, 2.0]


HISTORY = [
    {"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "image_url", "image_url": {"url": "https://a/b.png"}}, {"type": "text", "text": "there"}]},
    {"role": "assistant", "content": "", "tool_calls": [{"id": "1", "type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}}, {"id": "2", "type": "function", "function": {"name": "g", "arguments": "not json"}}]},
    {"role": "tool", "content": [{"type": "text", "text": "A"}], "tool_call_id": "1"},
    {"role": "assistant", "content": "ok", "tool_calls": []},
]


def test_conversation_for_a_template_that_places_images():
    conv, images = build_conversation(HISTORY, "openai", "<IMG>")
    assert images == [("https://a/b.png", "messages[0].content[1].image_url.url")]
    assert conv[0]["content"] == [{"type": "text", "text": "hi"}, {"type": "image"}, {"type": "text", "text": "there"}]
    # history calls reach the template with their arguments parsed (unparsable ones as {})
    assert [c["function"]["arguments"] for c in conv[1]["tool_calls"]] == [{"x": 1}, {}]
    assert conv[2] == {"role": "tool", "content": "A", "tool_call_id": "1"}  # tool results are text
    assert "tool_calls" not in conv[3]  # an empty list is no calls


def test_conversation_for_a_string_template_puts_images_in_front():
    conv, _ = build_conversation(HISTORY, "string", "<IMG>")
    assert conv[0]["content"] == "<IMG>\nhi\nthere"
    assert conv[1]["content"] == ""


def test_content_format_is_read_from_the_template():
    from azion_ai._local._chat import content_format
    from azion_ai._local._tiny import INTERNVL_CHAT_TEMPLATE, QWEN_CHAT_TEMPLATE, qwen_tokenizer_template

    assert content_format(QWEN_CHAT_TEMPLATE) == "openai"
    assert content_format(INTERNVL_CHAT_TEMPLATE) == "openai"
    assert content_format(qwen_tokenizer_template()) == "string"
    assert content_format("{{ messages[0].content }}") == "string"


def test_template_choice_follows_vllm():
    from azion_ai._local._chat import ChatTemplates

    both = ChatTemplates(processor="P", tokenizer="T")
    assert both.select(tools=False) == "P" and both.select(tools=True) == "T"
    assert ChatTemplates(processor="P", tokenizer="T", override="O").select(tools=True) == "O"
    assert ChatTemplates(processor="P", tokenizer=None).select(tools=True) == "P"
    with pytest.raises(ValueError):
        ChatTemplates(None, None).select(tools=False)


def test_tools_reach_the_template_as_vllm_sends_them():
    from azion_ai._local._chat import template_tools

    tool = {"type": "function", "function": {"name": "f", "extra": 1, "parameters": {"type": "object"}}}
    assert template_tools([tool]) == [{"type": "function", "function": {"name": "f", "description": None, "parameters": {"type": "object"}}}]
    assert template_tools(None) is None and template_tools([]) is None


def test_sampling_settings_resolve_as_vllm():
    from azion_ai._local._request import SamplingParams

    qwen = {"temperature": 0.1, "top_p": 0.001, "top_k": 1, "repetition_penalty": 1.05}
    p = SamplingParams.resolve({}, qwen)
    assert (p.temperature, p.top_p, p.top_k, p.repetition_penalty) == (0.1, 0.001, 1, 1.05)
    p = SamplingParams.resolve({"temperature": 0}, qwen)  # greedy, the penalty still applies
    assert p.greedy and p.repetition_penalty == 1.05 and p.top_k == 1
    p = SamplingParams.resolve({"top_p": 0.9, "repetition_penalty": 1.0}, qwen)  # each field on its own
    assert (p.temperature, p.top_p, p.top_k, p.repetition_penalty) == (0.1, 0.9, 1, 1.0)
    p = SamplingParams.resolve({}, {})
    assert (p.temperature, p.top_p, p.top_k, p.min_p, p.repetition_penalty) == (1.0, 1.0, 0, 0.0, 1.0)
    assert SamplingParams.resolve({"temperature": 1e-4}).temperature == 0.01  # vLLM's floor
    assert SamplingParams.resolve({"top_k": -1}).top_k == 0  # vLLM's "off"
    assert SamplingParams.resolve({}, {"max_new_tokens": 7}).max_tokens == 7
    assert not SamplingParams.resolve({"stream_options": {"include_usage": True}}).include_usage  # streams only
    assert SamplingParams.resolve({"stream": True, "stream_options": {"include_usage": True}}).include_usage


def test_generation_defaults_are_read_as_vllm_reads_them(tmp_path):
    require("transformers")
    from azion_ai._local._loading import generation_defaults

    (tmp_path / "generation_config.json").write_text(json.dumps(
        {"do_sample": False, "temperature": 0.7, "top_k": 50, "top_p": 0.8, "repetition_penalty": 1.05, "eos_token_id": 2}
    ))
    # each value on its own, do_sample ignored (vLLM's generation_config="auto")
    assert generation_defaults(tmp_path, None) == {"temperature": 0.7, "top_k": 50, "top_p": 0.8, "repetition_penalty": 1.05}


def test_import_is_light():
    code = "import sys, azion_ai; from azion_ai import AI; AI(backend='local'); print(sorted(m for m in ('torch', 'transformers', 'PIL') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# -- images ---------------------------------------------------------------------------------------



class Recorder(httpx.BaseTransport):
    def __init__(self, responses=None):
        self.requests = []
        self.responses = responses or {}

    def handle_request(self, request):
        self.requests.append(request)
        return self.responses.get(request.headers["host"], httpx.Response(404))


def loader(resolve, responses=None, **policy):
    transport = Recorder(responses)
    return ImageLoader(ImagePolicy(**policy), resolver=lambda host, port: resolve[host], http_transport=transport), transport


@pytest.mark.parametrize(
    "address",
    ["127.0.0.1", "10.1.2.3", "172.16.0.9", "192.168.1.1", "169.254.169.254", "::1", "fd00::1", "fe80::1", "0.0.0.0", "::ffff:10.0.0.1", "100.64.0.1"],
)
def test_private_addresses_are_refused_without_connecting(address):
    images, transport = loader({"images.example.com": [address]})
    with pytest.raises(ImageError, match="refused") as info:
        images.load("http://images.example.com/cat.png", "messages[0].content[0].image_url.url")
    assert info.value.path == "messages[0].content[0].image_url.url"
    assert transport.requests == []


def test_any_private_answer_among_several_is_refused():
    images, transport = loader({"mixed.example.com": ["93.184.216.34", "10.0.0.5"]})
    with pytest.raises(ImageError, match="private"):
        images.load("https://mixed.example.com/x.png", "p")
    assert transport.requests == []


def test_literal_ip_urls_are_checked_too():
    images, transport = loader({})
    with pytest.raises(ImageError, match="link-local"):
        images.load("http://169.254.169.254/latest/meta-data", "p")
    assert transport.requests == []


def test_redirect_to_private_address_is_refused_on_the_hop():
    png = png_data_uri().split(",", 1)[1]
    import base64

    responses = {
        "public.example.com": httpx.Response(302, headers={"location": "http://internal.example.com/secret.png"}),
        "internal.example.com": httpx.Response(200, content=base64.b64decode(png), headers={"content-type": "image/png"}),
    }
    images, transport = loader({"public.example.com": ["93.184.216.34"], "internal.example.com": ["10.0.0.7"]}, responses)
    with pytest.raises(ImageError, match="private"):
        images.load("http://public.example.com/a.png", "p")
    assert [r.headers["host"] for r in transport.requests] == ["public.example.com"]
    assert transport.requests[0].url.host == "93.184.216.34"  # connected to the checked address


def test_public_fetch_works_and_limits_apply():
    import base64

    raw = base64.b64decode(png_data_uri(size=(40, 30)).split(",", 1)[1])
    responses = {
        "ok.example.com": httpx.Response(200, content=raw, headers={"content-type": "image/png"}),
        "html.example.com": httpx.Response(200, content=b"<html>", headers={"content-type": "text/html"}),
        "big.example.com": httpx.Response(200, content=raw * 50, headers={"content-type": "image/png"}),
    }
    resolve = {h: ["93.184.216.34"] for h in responses}
    images, _ = loader(resolve, responses)
    assert images.load("https://ok.example.com/a.png", "p").size == (40, 30)
    with pytest.raises(ImageError, match="not an image"):
        images.load("https://html.example.com/", "p")
    small, _ = loader(resolve, responses, max_bytes=len(raw) * 2)
    with pytest.raises(ImageError, match="larger than"):
        small.load("https://big.example.com/a.png", "p")
    allow, transport = loader(resolve, responses, allowed_domains=("ok.example.com",))
    with pytest.raises(ImageError, match="allowed domains"):
        allow.load("https://html.example.com/", "p")
    opt_in, _ = loader({"ok.example.com": ["127.0.0.1"]}, responses, allow_private_addresses=True)
    assert opt_in.load("http://ok.example.com/a.png", "p").size == (40, 30)


def test_data_uri_limits_and_decoding():
    images = ImageLoader(ImagePolicy(max_decoded_pixels=100 * 100))
    assert images.load(png_data_uri(size=(50, 20)), "p").size == (50, 20)
    with pytest.raises(ImageError, match="base64"):
        images.load("data:image/png;base64,@@@@", "p")
    with pytest.raises(ImageError, match="decodable"):
        images.load("data:image/png;base64,aGVsbG8=", "p")
    with pytest.raises(ImageError, match="over the limit"):
        images.load(png_data_uri(size=(200, 200)), "p")
    with pytest.raises(ImageError, match="not an image"):
        images.load("data:text/plain;base64,aGVsbG8=", "p")
    with pytest.raises(ImageError, match="limit is 2"):
        ImageLoader(ImagePolicy(max_images=2)).load_all([(png_data_uri(), f"m{i}") for i in range(3)])


def test_local_files_only_under_the_allowed_directory(tmp_path):
    import base64

    allowed = tmp_path / "allowed"
    allowed.mkdir()
    (allowed / "a.png").write_bytes(base64.b64decode(png_data_uri().split(",", 1)[1]))
    (tmp_path / "secret.png").write_bytes((allowed / "a.png").read_bytes())
    (allowed / "link.png").symlink_to(tmp_path / "secret.png")
    with pytest.raises(ImageError, match="local files are off"):
        ImageLoader().load((allowed / "a.png").as_uri(), "p")
    images = ImageLoader(ImagePolicy(allowed_local_dir=str(allowed)))
    assert images.load((allowed / "a.png").as_uri(), "p").size == (64, 48)
    for escape in (f"file://{allowed}/../secret.png", (allowed / "link.png").as_uri()):
        with pytest.raises(ImageError, match="outside the allowed directory"):
            images.load(escape, "p")


def test_download_timeout_redirect_limit_and_data_uri_size():
    class Slow(httpx.BaseTransport):
        def handle_request(self, request):
            raise httpx.ReadTimeout("slow", request=request)

    slow = ImageLoader(ImagePolicy(timeout=0.5), resolver=lambda h, p: ["93.184.216.34"], http_transport=Slow())
    with pytest.raises(ImageError, match="timed out after 0.5s"):
        slow.load("https://slow.example.com/a.png", "p")

    class Loop(httpx.BaseTransport):
        def __init__(self):
            self.count = 0

        def handle_request(self, request):
            self.count += 1
            return httpx.Response(302, headers={"location": f"/hop{self.count}"})

    loop = Loop()
    images = ImageLoader(ImagePolicy(max_redirects=3), resolver=lambda h, p: ["93.184.216.34"], http_transport=loop)
    with pytest.raises(ImageError, match="more than 3 redirects"):
        images.load("https://loop.example.com/a.png", "p")
    assert loop.count == 4

    tiny = ImageLoader(ImagePolicy(max_bytes=100))
    with pytest.raises(ImageError, match="larger than 100 bytes"):
        tiny.load(png_data_uri(size=(300, 300)), "p")
