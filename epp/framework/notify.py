"""Calling a list of change listeners so that one that raises neither hides the change from the others
nor propagates into the code that made the change (a swap, a membership update)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["notify_all"]

log = logging.getLogger(__name__)


def notify_all(listeners: Iterable[Callable[..., Any]], *args: Any, what: str) -> None:
    """Call every listener with `args`; log (with its traceback) any that raises, and go on."""
    for listener in listeners:
        try:
            listener(*args)
        except Exception:
            log.exception(
                "a listener of %s failed: %r (the change stands; other listeners ran)", what, listener
            )
