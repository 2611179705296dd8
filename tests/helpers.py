"""What the tests share: waiting for a condition (`until`, `until_sync`) and free loopback ports.

A test that waits for something done in the background (a scrape, a reload, a dispatch, a log line)
polls for it with `until` rather than sleeping a guessed while: it returns as soon as the condition
holds, and fails with an AssertionError naming the condition once `timeout` has passed. Sleeps stay
only where a test shows that something does *not* happen within a time.

The fixtures (one simulator-server fixture, `start_sim`) are in `tests/conftest.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import socket
import time
from collections.abc import Awaitable, Callable

__all__ = ["INTERVAL", "TIMEOUT", "free_port", "free_ports", "until", "until_sync"]

TIMEOUT = 10.0
"""How long `until` waits by default (seconds): generous, a slow CI machine still passes."""

INTERVAL = 0.01
"""How often `until` checks by default (seconds)."""


async def until(
    predicate: Callable[[], object] | Callable[[], Awaitable[object]],
    timeout: float = TIMEOUT,
    interval: float = INTERVAL,
    *,
    what: str | None = None,
) -> float:
    """Poll `predicate` every `interval` seconds until it returns a truthy value; return the seconds
    that took.

    `predicate` is a plain function or lambda, or a coroutine function (what it returns is awaited).
    After `timeout` seconds it raises AssertionError naming `what` (else the predicate's source) and
    the last value seen. Exceptions from `predicate` propagate at once.
    """
    loop = asyncio.get_running_loop()
    start = loop.time()
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return loop.time() - start
        if loop.time() - start > timeout:
            raise AssertionError(_timed_out(predicate, timeout, what, result))
        await asyncio.sleep(interval)


def until_sync(
    predicate: Callable[[], object],
    timeout: float = TIMEOUT,
    interval: float = INTERVAL,
    *,
    what: str | None = None,
) -> float:
    """`until` for code without an event loop (threads, subprocesses): blocks between checks."""
    start = time.monotonic()
    while True:
        result = predicate()
        if result:
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise AssertionError(_timed_out(predicate, timeout, what, result))
        time.sleep(interval)


def _timed_out(predicate: Callable[..., object], timeout: float, what: str | None, last: object) -> str:
    return f"timed out after {timeout:g}s waiting for {what or _describe(predicate)} (last: {last!r})"


def _describe(predicate: Callable[..., object]) -> str:
    """A lambda's source (`lambda: c.queued_requests == 2`), else the predicate's qualified name."""
    name = getattr(predicate, "__qualname__", None) or repr(predicate)
    if name.endswith("<lambda>"):
        with contextlib.suppress(OSError, TypeError):
            lines, _ = inspect.getsourcelines(predicate)
            source = " ".join(line.strip() for line in lines)
            return _lambda_text(source[source.find("lambda") :])
    return name


def _lambda_text(text: str) -> str:
    """`text` up to the end of the lambda it starts with (the first `,` or unmatched closing bracket)."""
    depth = 0
    for i, ch in enumerate(text):
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            if depth == 0:
                return text[:i].rstrip()
            depth -= 1
        elif ch == "," and depth == 0:
            return text[:i].rstrip()
    return text.rstrip()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (bound to port 0, then closed): free for a
    process to take, and refused to connect to until one does."""
    return free_ports(1)[0]


def free_ports(n: int) -> list[int]:
    """`n` distinct free ports on 127.0.0.1 (all bound at once, so no two are the same)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]
