"""Logging setup: upstream verbosity levels, console or JSON lines, request-scoped fields.

Verbosity follows upstream's logr levels: `-v 2` DEFAULT (INFO), 3 VERBOSE, 4 DEBUG, 5 TRACE (`-v` 0 and 1
also mean INFO: upstream's V(0)/V(1) lines are always shown). VERBOSE (15) and TRACE (5) are custom
levels around DEBUG (10). Request-scoped code sets `request_id` / `model` context variables once; every
line logged inside that request's task carries them, whichever module logs it (plugins included).
Background loops must not inherit a request's context: start them with `detached_context()`.

A line may carry structured fields for the JSON format: `log.debug(..., extra={"fields": {...}})`
(the console format leaves them out). What goes at which level: docs/observability.md.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time
from typing import Any, TextIO

__all__ = [
    "TRACE",
    "VERBOSE",
    "ConsoleFormatter",
    "JsonFormatter",
    "bind_request",
    "configure_logging",
    "detached_context",
    "level_for_verbosity",
    "request_id",
    "request_model",
    "set_worker_label",
]

TRACE = 5
VERBOSE = 15
logging.addLevelName(TRACE, "TRACE")
logging.addLevelName(VERBOSE, "VERBOSE")

#: which process of the pod logs (`--workers`): "" for the pod process, the worker's slot in a worker
_process: list[str] = [""]

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("epp_request_id", default="")
request_model: contextvars.ContextVar[str] = contextvars.ContextVar("epp_request_model", default="")


def bind_request(rid: str, model: str = "") -> None:
    """Attach a request id (and model) to every log line of the current task from now on."""
    request_id.set(rid)
    if model:
        request_model.set(model)


def detached_context() -> contextvars.Context:
    """A fresh context for a long-lived task (`create_task(..., context=detached_context())`): a loop
    started lazily from inside a request must not log under that request's id forever after."""
    return contextvars.Context()


def level_for_verbosity(v: int) -> int:
    if v >= 5:
        return TRACE
    if v == 4:
        return logging.DEBUG
    if v == 3:
        return VERBOSE
    return logging.INFO


class _RequestContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        record.model = request_model.get()
        return True


class ConsoleFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        ms = int(record.msecs)
        extra = ""
        rid = getattr(record, "request_id", "")
        if rid:
            extra = f" request_id={rid}"
            model = getattr(record, "model", "")
            if model:
                extra += f" model={model}"
        if _process[0]:
            extra += f" worker={_process[0]}"
        line = f"{ts}.{ms:03d}Z {record.levelname:<7} {record.name}: {record.getMessage()}{extra}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": round(record.created, 6),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        rid = getattr(record, "request_id", "")
        if rid:
            out["request_id"] = rid
            model = getattr(record, "model", "")
            if model:
                out["model"] = model
        if _process[0]:
            out["worker"] = _process[0]
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            for key, value in fields.items():
                out.setdefault(key, value)
        if record.exc_info:
            out["error"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def set_worker_label(worker: str) -> None:
    """Every line logged from now on says `worker=<worker>` ("" for none)."""
    _process[0] = worker


def configure_logging(
    verbosity: int = 2, fmt: str = "console", stream: TextIO | None = None, *, worker: str = ""
) -> None:
    """Configure the root logger once for the process (idempotent: replaces earlier handlers). `worker`
    names the worker process (every line then says `worker=<it>`)."""
    _process[0] = worker
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else ConsoleFormatter())
    handler.addFilter(_RequestContextFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level_for_verbosity(verbosity))
    # third-party libraries (grpc logs per RPC at DEBUG) stay at WARNING up to -v 5; -v 6+ shows theirs too
    noisy_level = logging.DEBUG if verbosity >= 6 else logging.WARNING
    for name in ("aiohttp", "asyncio", "kubernetes", "urllib3", "grpc", "watchfiles"):
        logging.getLogger(name).setLevel(noisy_level)
