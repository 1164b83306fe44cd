"""Typed request payloads (TypedDicts, for editors) and response models (pydantic v2).

Responses follow vLLM's OpenAI server format, which is what Azion returns, and keep any extra
field a server adds (``model_extra``), so nothing a backend sends is lost.
"""

from __future__ import annotations

from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr
from typing_extensions import NotRequired, Required, TypedDict

__all__ = [
    "ChatPayload",
    "StreamingChatPayload",
    "NonStreamingChatPayload",
    "ChatCompletion",
    "ChatCompletionChunk",
    "EmbeddingPayload",
    "RerankPayload",
    "ScorePayload",
    "EmbeddingResponse",
    "Embedding",
    "RerankResponse",
    "RerankResult",
    "ScoreResponse",
    "ScoreResult",
    "Choice",
    "ChunkChoice",
    "Message",
    "ChoiceDelta",
    "ToolCall",
    "FunctionCall",
    "ChoiceDeltaToolCall",
    "ChoiceDeltaFunctionCall",
    "Usage",
]


# -- request payloads: the JSON of Azion's JS API ---------------------------------------------


class TextContentItem(TypedDict):
    type: Literal["text"]
    text: str


class ImageURL(TypedDict):
    url: str


class ImageContentItem(TypedDict):
    type: Literal["image_url"]
    image_url: ImageURL


class FunctionCallParam(TypedDict):
    name: str
    arguments: str


class ToolCallParam(TypedDict):
    id: str
    type: Literal["function"]
    function: FunctionCallParam


class MessageParam(TypedDict, total=False):
    role: Required[Literal["system", "user", "assistant", "tool"]]
    content: str | list[TextContentItem | ImageContentItem] | None
    tool_calls: list[ToolCallParam]
    tool_call_id: str


class FunctionDefinition(TypedDict, total=False):
    name: Required[str]
    description: str
    parameters: dict[str, Any]
    strict: bool


class ToolDefinition(TypedDict):
    type: Literal["function"]
    function: FunctionDefinition


class _PayloadBase(TypedDict, total=False):
    messages: Required[list[MessageParam]]
    temperature: float
    top_p: float
    n: int
    max_tokens: int
    presence_penalty: float
    frequency_penalty: float
    tools: list[ToolDefinition]


class StreamingChatPayload(_PayloadBase):
    stream: Required[Literal[True]]


class NonStreamingChatPayload(_PayloadBase):
    stream: NotRequired[Literal[False]]


class ChatPayload(_PayloadBase, total=False):
    stream: bool


class EmbeddingPayload(TypedDict, total=False):
    """``qwen-qwen3-embedding-4b``'s payload (OpenAI's embeddings request)."""

    input: Required[Union[str, list[str], list[int], list[list[int]]]]  # noqa: UP007
    encoding_format: Literal["float", "base64"]
    dimensions: Literal[256, 512, 1024, 2048, 4096]


class RerankPayload(TypedDict, total=False):
    """``baai-bge-reranker-v2-m3``'s rerank payload."""

    query: Required[str]
    documents: Required[list[str]]
    top_n: int
    max_tokens_per_doc: int


class ScorePayload(TypedDict):
    """The reranker page's score payload (sent to /score)."""

    text_1: Union[str, list[str]]  # noqa: UP007
    text_2: Union[str, list[str]]  # noqa: UP007


# -- responses ----------------------------------------------------------------------------------


class _Model(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)


class _Answer(_Model):
    """A whole answer: it also carries the server's request id (``x-request-id``), if any."""

    _request_id: str | None = PrivateAttr(default=None)

    @property
    def request_id(self) -> str | None:
        return self._request_id


class FunctionCall(_Model):
    name: str
    arguments: str = "{}"


class ToolCall(_Model):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class Message(_Model):
    role: Literal["assistant"] = "assistant"
    content: str | None = None
    reasoning_content: str | None = None
    tool_calls: list[ToolCall] = Field(default_factory=list)


class Choice(_Model):
    index: int = 0
    message: Message
    logprobs: Any = None
    finish_reason: str | None = None
    stop_reason: Union[int, str, None] = None  # noqa: UP007 (pydantic needs the runtime union)


class Usage(_Model):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    prompt_tokens_details: Any = None


class ChatCompletion(_Answer):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage | None = None
    prompt_logprobs: Any = None


class ChoiceDeltaFunctionCall(_Model):
    name: str | None = None
    arguments: str | None = None


class ChoiceDeltaToolCall(_Model):
    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: ChoiceDeltaFunctionCall | None = None


class ChoiceDelta(_Model):
    role: Literal["assistant"] | None = None
    content: str | None = None
    reasoning_content: str | None = None
    tool_calls: list[ChoiceDeltaToolCall] | None = None


class ChunkChoice(_Model):
    index: int = 0
    delta: ChoiceDelta = Field(default_factory=ChoiceDelta)
    logprobs: Any = None
    finish_reason: str | None = None
    stop_reason: Union[int, str, None] = None  # noqa: UP007


class ChatCompletionChunk(_Model):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice] = Field(default_factory=list)
    usage: Usage | None = None


# -- embeddings, rerank, score (vLLM's /v1/embeddings, /v1/rerank, /v1/score) --------------------


class Embedding(_Model):
    index: int
    object: Literal["embedding"] = "embedding"
    embedding: Union[list[float], str]  # noqa: UP007  # str: base64 (encoding_format "base64")


class EmbeddingUsage(_Model):
    prompt_tokens: int = 0
    total_tokens: int = 0
    completion_tokens: int | None = 0
    prompt_tokens_details: Any = None


class EmbeddingResponse(_Answer):
    id: str | None = None
    object: Literal["list"] = "list"
    created: int | None = None
    model: str
    data: list[Embedding]
    usage: EmbeddingUsage | None = None


class RerankDocument(_Model):
    text: str


class RerankResult(_Model):
    index: int
    document: RerankDocument | None = None
    relevance_score: float


class RerankUsage(_Model):
    total_tokens: int = 0


class RerankResponse(_Answer):
    id: str | None = None
    model: str
    usage: RerankUsage | None = None
    results: list[RerankResult]


class ScoreResult(_Model):
    index: int
    object: Literal["score"] = "score"
    score: float


class ScoreResponse(_Answer):
    id: str | None = None
    object: Literal["list"] = "list"
    created: int | None = None
    model: str
    data: list[ScoreResult]
    usage: Any = None
