"""azion_ai: Azion's ``Azion.AI.run(modelId, payload)`` for Python.

    import azion_ai
    completion = azion_ai.run("qwen-qwen25-vl-3b-instruct-awq", {"messages": [...]})

Importing this package is light: torch and transformers load only when the local backend runs
a model.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any, overload

from ._client import AI, AsyncAI, RawResponse
from ._exceptions import (
    APIConnectionError,
    APIError,
    APIResponseValidationError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    AzionAIError,
    BadRequestError,
    ClientClosedError,
    ConflictError,
    ImageError,
    InternalServerError,
    LocalBackendError,
    MissingDependencyError,
    ModelLoadError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    RequestTooLargeError,
    ServiceUnavailableError,
    StreamError,
    UnknownModelError,
    UnprocessableEntityError,
    ValidationError,
    ValidationIssue,
)
from ._image import image
from ._local._images import ImagePolicy
from ._models import ModelInfo, get_model, list_models, register_model
from ._streaming import AsyncStream, ChunkAccumulator, Stream
from ._transport import AsyncBaseTransport, BaseTransport, ChatRequest
from ._types import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatPayload,
    Choice,
    ChoiceDelta,
    ChoiceDeltaToolCall,
    ChunkChoice,
    Embedding,
    EmbeddingPayload,
    EmbeddingResponse,
    FunctionCall,
    Message,
    NonStreamingChatPayload,
    RerankPayload,
    RerankResponse,
    RerankResult,
    ScorePayload,
    ScoreResponse,
    ScoreResult,
    StreamingChatPayload,
    ToolCall,
    Usage,
)
from ._validation import validate_payload as _validate_payload
from ._version import __version__

__all__ = [
    "__version__",
    "run",
    "validate",
    "image",
    "AI",
    "AsyncAI",
    "RawResponse",
    "Stream",
    "AsyncStream",
    "ChunkAccumulator",
    "ImagePolicy",
    "ModelInfo",
    "register_model",
    "get_model",
    "list_models",
    "ChatPayload",
    "StreamingChatPayload",
    "NonStreamingChatPayload",
    "ChatCompletion",
    "ChatCompletionChunk",
    "EmbeddingPayload",
    "EmbeddingResponse",
    "Embedding",
    "RerankPayload",
    "RerankResponse",
    "RerankResult",
    "ScorePayload",
    "ScoreResponse",
    "ScoreResult",
    "Choice",
    "ChunkChoice",
    "ChoiceDelta",
    "ChoiceDeltaToolCall",
    "Message",
    "ToolCall",
    "FunctionCall",
    "Usage",
    "BaseTransport",
    "AsyncBaseTransport",
    "ChatRequest",
    "AzionAIError",
    "ClientClosedError",
    "ValidationError",
    "ValidationIssue",
    "UnknownModelError",
    "APIError",
    "APIStatusError",
    "BadRequestError",
    "AuthenticationError",
    "PermissionDeniedError",
    "NotFoundError",
    "ConflictError",
    "RequestTooLargeError",
    "UnprocessableEntityError",
    "RateLimitError",
    "InternalServerError",
    "ServiceUnavailableError",
    "APIConnectionError",
    "APITimeoutError",
    "APIResponseValidationError",
    "StreamError",
    "LocalBackendError",
    "MissingDependencyError",
    "ModelLoadError",
    "ImageError",
]

_default_lock = threading.Lock()
_default_client: AI | None = None


def _default() -> AI:
    global _default_client
    with _default_lock:
        if _default_client is None:
            _default_client = AI()
        return _default_client


@overload
def run(model_id: str, payload: StreamingChatPayload) -> Stream: ...


@overload
def run(model_id: str, payload: NonStreamingChatPayload) -> ChatCompletion: ...


@overload
def run(model_id: str, payload: EmbeddingPayload) -> EmbeddingResponse: ...


@overload
def run(model_id: str, payload: RerankPayload) -> RerankResponse: ...


@overload
def run(model_id: str, payload: ScorePayload) -> ScoreResponse: ...


@overload
def run(model_id: str, payload: ChatPayload | Mapping[str, Any]) -> ChatCompletion | Stream | EmbeddingResponse | RerankResponse | ScoreResponse: ...


def run(model_id: str, payload: ChatPayload | Mapping[str, Any]) -> ChatCompletion | Stream | EmbeddingResponse | RerankResponse | ScoreResponse:
    """``Azion.AI.run(modelId, payload)``: a module-level client configured from the environment.

    ``AZION_AI_BASE_URL`` and ``AZION_AI_TOKEN`` pick the remote endpoint; ``AZION_AI_BACKEND=local``
    (with ``AZION_AI_MODELS_DIR``) runs the weights in-process instead.
    """
    return _default().run(model_id, payload)


def validate(model_id: str, payload: Any) -> None:
    """Check ``payload`` against ``model_id``'s schema; raises :class:`ValidationError`."""
    _validate_payload(get_model(model_id), payload)
