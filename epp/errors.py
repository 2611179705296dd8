"""The error tree of the EPP, and the one mapping from request error codes to HTTP statuses.

    EppError
    ├── ConfigError          a config file or text that cannot be loaded (carries every problem found)
    ├── SettingsError        a bad flag or flag combination (exit code 2)
    └── RequestError         a request that gets an ImmediateResponse (carries an ErrorCode)
        └── SchedulingError  the scheduler found no target (no candidates, all filtered, plugin failure)

Plugins never raise these for ordinary outcomes: "no viable endpoint" is an empty list. The engine turns
empty results and plugin exceptions into `SchedulingError`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

__all__ = [
    "ConfigError",
    "ConfigProblem",
    "EppError",
    "ErrorCode",
    "RequestError",
    "SchedulingError",
    "SettingsError",
    "http_status",
]


class EppError(Exception):
    """Base of every error the EPP raises on purpose."""


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    """One problem in a config document, located by file, line and YAML path."""

    file: str
    line: int
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.path or '<root>'}: {self.message}"


class ConfigError(EppError):
    """A config document that cannot be loaded; `problems` lists every problem found, in file order."""

    def __init__(self, problems: Sequence[ConfigProblem]) -> None:
        self.problems = tuple(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class SettingsError(EppError):
    """Bad process settings (flags or environment); the daemon exits with status 2."""


class ErrorCode(StrEnum):
    """Request error codes, named as upstream's (they appear in metric labels)."""

    BAD_REQUEST = "BadRequest"
    NOT_FOUND = "NotFound"
    RESOURCE_EXHAUSTED = "ResourceExhausted"
    SERVICE_UNAVAILABLE = "ServiceUnavailable"
    INTERNAL = "Internal"
    BODY_TOO_LARGE = "RequestEntityTooLarge"
    MODEL_SERVER_ERROR = "ModelServerError"


_HTTP_STATUS: dict[ErrorCode, int] = {
    ErrorCode.BAD_REQUEST: 400,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.BODY_TOO_LARGE: 413,
    ErrorCode.RESOURCE_EXHAUSTED: 429,
    ErrorCode.INTERNAL: 500,
    ErrorCode.MODEL_SERVER_ERROR: 500,
    ErrorCode.SERVICE_UNAVAILABLE: 503,
}


def http_status(code: ErrorCode) -> int:
    """The HTTP status of an ImmediateResponse for `code`."""
    return _HTTP_STATUS[code]


class RequestError(EppError):
    """A request that is answered by the EPP itself with an error status and a body saying why."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        self.code = code
        self.message = message
        super().__init__(f"{code.value}: {message}")

    @property
    def status(self) -> int:
        return http_status(self.code)

    def body(self) -> str:
        """The response body text, in upstream's format."""
        return f"inference error: {self.code.value} - {self.message}"


class SchedulingError(RequestError):
    """The scheduler could not produce a target."""
