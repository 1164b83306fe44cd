"""One exception tree for everything the SDK raises.

No httpx, torch or transformers type ever escapes: transports map their low-level errors
onto these classes at the edge, so callers catch ``azion_ai.AzionAIError`` and nothing else.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
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


class AzionAIError(Exception):
    """Root of every error the SDK raises."""


class ClientClosedError(AzionAIError, RuntimeError):
    """``run`` on a client after ``close()`` / ``aclose()`` (or after its ``with`` block)."""


@dataclass(frozen=True)
class ValidationIssue:
    """One violation: where in the payload (``messages[1].content[0].image_url.url``) and what."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path or '<payload>'}: {self.message}"


class ValidationError(AzionAIError, ValueError):
    """The payload broke the model's schema or a rule the schema cannot express.

    Raised before anything is sent or run. ``issues`` lists every violation found.
    """

    def __init__(self, model: str, issues: Sequence[ValidationIssue]) -> None:
        self.model = model
        self.issues = list(issues)
        lines = "\n".join(f"  - {issue}" for issue in self.issues)
        count = len(self.issues)
        noun = "problem" if count == 1 else "problems"
        super().__init__(f"payload for {model!r} has {count} {noun}:\n{lines}")

    @property
    def paths(self) -> list[str]:
        return [issue.path for issue in self.issues]


class UnknownModelError(AzionAIError, ValueError):
    """The model id is not in the registry."""

    def __init__(self, model: str, known: Sequence[str]) -> None:
        self.model = model
        self.known = list(known)
        super().__init__(
            f"unknown model {model!r}; known models: {', '.join(self.known)}. "
            "Register others with azion_ai.register_model()."
        )


class APIError(AzionAIError):
    """A request reached (or tried to reach) a backend and did not succeed."""

    def __init__(self, message: str, *, body: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.body = body


class APIStatusError(APIError):
    """The backend answered with an error status."""

    status_code: int = 0

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        body: Any = None,
        request_id: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message, body=body)
        self.status_code = status_code
        self.request_id = request_id
        self.headers = dict(headers or {})

    def __str__(self) -> str:
        rid = f" (request id {self.request_id})" if self.request_id else ""
        return f"HTTP {self.status_code}: {self.message}{rid}"


class BadRequestError(APIStatusError):
    status_code = 400


class AuthenticationError(APIStatusError):
    status_code = 401


class PermissionDeniedError(APIStatusError):
    status_code = 403


class NotFoundError(APIStatusError):
    status_code = 404


class ConflictError(APIStatusError):
    status_code = 409


class RequestTooLargeError(APIStatusError):
    status_code = 413


class UnprocessableEntityError(APIStatusError):
    status_code = 422


class RateLimitError(APIStatusError):
    status_code = 429


class InternalServerError(APIStatusError):
    """Any 5xx."""

    status_code = 500


class ServiceUnavailableError(InternalServerError):
    status_code = 503


_STATUS_CLASSES: dict[int, type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    413: RequestTooLargeError,
    422: UnprocessableEntityError,
    429: RateLimitError,
    503: ServiceUnavailableError,
}


def status_error_class(status_code: int) -> type[APIStatusError]:
    """The exception class for an HTTP status (5xx without its own class -> InternalServerError)."""
    if status_code in _STATUS_CLASSES:
        return _STATUS_CLASSES[status_code]
    if status_code >= 500:
        return InternalServerError
    return APIStatusError


def make_status_error(
    message: str,
    *,
    status_code: int,
    body: Any = None,
    request_id: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> APIStatusError:
    cls = status_error_class(status_code)
    return cls(message, status_code=status_code, body=body, request_id=request_id, headers=headers)


class APIConnectionError(APIError):
    """The backend could not be reached, or the connection broke."""

    def __init__(self, message: str = "connection error") -> None:
        super().__init__(message)


class APITimeoutError(APIConnectionError):
    """The backend did not answer in time."""

    def __init__(self, message: str = "request timed out") -> None:
        super().__init__(message)


class APIResponseValidationError(APIError):
    """The backend answered 2xx with a body that is not a chat completion."""


class StreamError(APIError):
    """A stream broke: an in-band error event, malformed data, or an end without ``[DONE]``."""


class LocalBackendError(AzionAIError):
    """The local backend failed to run a request (the model stays loaded and usable)."""


class MissingDependencyError(LocalBackendError, ImportError):
    """An optional extra is not installed."""


class ModelLoadError(LocalBackendError):
    """A model directory is missing, incomplete or of the wrong architecture."""


class ImageError(LocalBackendError, ValueError):
    """An image in the payload was refused or could not be decoded."""

    def __init__(self, message: str, *, path: str | None = None) -> None:
        self.path = path
        super().__init__(f"{path}: {message}" if path else message)
