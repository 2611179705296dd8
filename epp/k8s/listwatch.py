"""A list+watch of one Kubernetes resource, run by the official blocking client in a daemon thread.

The thread lists the resource (one `SYNC` event with every object), then watches from the listing's
resourceVersion and forwards each `ADDED` / `MODIFIED` / `DELETED` event. Events reach the asyncio side
through `loop.call_soon_threadsafe`, so the event loop never blocks on the API server. Objects are plain
JSON dicts (no model deserialisation: cheaper, and custom resources need none).

Recovery:
- a watch that ends normally (server timeout) resumes from the last resourceVersion seen;
- `410 Gone` / "resource version too old" (as an HTTP status or as an ERROR event) relists at once;
- any other failure (connection refused, 5xx, a broken stream) relists after a capped exponential backoff
  (`backoff_initial`, doubling up to `backoff_max`), reset after a successful listing.

`stop()` is non-blocking: it sets a flag and shuts the socket of the watch in progress.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from kubernetes.client.exceptions import ApiException

__all__ = ["DEFAULT_WATCH_OPTIONS", "ListWatch", "WatchEvent", "WatchOptions"]

log = logging.getLogger(__name__)

EventType = Literal["SYNC", "ADDED", "MODIFIED", "DELETED"]


@dataclass(frozen=True, slots=True)
class WatchEvent:
    """`SYNC` carries the whole listing in `objects`; the other types carry one object."""

    type: EventType
    objects: tuple[Mapping[str, Any], ...]


@dataclass(frozen=True, slots=True)
class WatchOptions:
    """Timeouts and retry pacing of a list+watch (seconds)."""

    watch_timeout: float = 300.0
    request_timeout: float = 10.0
    backoff_initial: float = 0.5
    backoff_max: float = 30.0


DEFAULT_WATCH_OPTIONS = WatchOptions()


class _Gone(Exception):
    """The watch's resourceVersion expired: relist."""


class ListWatch:
    def __init__(
        self,
        name: str,
        list_fn: Callable[..., Any],
        on_event: Callable[[WatchEvent], None],
        loop: asyncio.AbstractEventLoop,
        *,
        selectors: Mapping[str, str] | None = None,
        options: WatchOptions = DEFAULT_WATCH_OPTIONS,
    ) -> None:
        """`list_fn` is a client list method with its positional args bound (e.g. a partial of
        `CoreV1Api.list_namespaced_pod` with the namespace); `selectors` are passed to it as keyword
        arguments (`label_selector`, `field_selector`)."""
        self.name = name
        self._list_fn = list_fn
        self._on_event = on_event
        self._loop = loop
        self._selectors = dict(selectors or {})
        self._watch_timeout = options.watch_timeout
        self._request_timeout = options.request_timeout
        self._backoff_initial = options.backoff_initial
        self._backoff_max = options.backoff_max
        self._stop = threading.Event()
        self._resp: Any = None
        self._thread: threading.Thread | None = None
        self._watch_events = 0
        self.last_error = ""
        self.relists = 0

    # ---- control (any thread) ----------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name=f"watch {self.name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        resp = self._resp
        if resp is not None:
            _shutdown(resp)

    async def close(self, timeout: float = 5.0) -> None:
        """Stop, and wait (off the loop) up to `timeout` seconds for the thread to end."""
        self.stop()
        await asyncio.to_thread(self.join, timeout)

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the thread to end (blocking; call via `asyncio.to_thread` from the loop)."""
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # ---- the thread --------------------------------------------------------------------------------

    def _run(self) -> None:
        backoff = self._backoff_initial
        gone_streak = 0
        while not self._stop.is_set():
            reason = ""
            try:
                rv = self._list()
                backoff = self._backoff_initial
                while not self._stop.is_set():
                    rv = self._watch(rv)
                    if rv is None:  # nothing to resume from: relist
                        break
            except (_Gone, ApiException) as exc:
                if isinstance(exc, ApiException) and exc.status != 410:
                    reason = f"HTTP {exc.status} {exc.reason}"
                else:
                    gone_streak = 1 if self._watch_events else gone_streak + 1
                    log.info("watch of %s expired (410 Gone); relisting", self.name)
                    if gone_streak > 2:  # a fresh listing keeps expiring at once: do not spin
                        reason = "resourceVersion keeps expiring"
            except Exception as exc:
                if self._stop.is_set():
                    break
                reason = f"{type(exc).__name__}: {exc}"
            if reason and not self._stop.is_set():
                self.last_error = reason
                log.warning("list/watch of %s failed: %s; retrying in %.1fs", self.name, reason, backoff)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self._backoff_max)
        log.debug("watch of %s stopped", self.name)

    def _list(self) -> str | None:
        resp = self._list_fn(
            **self._selectors, _preload_content=False, _request_timeout=self._request_timeout
        )
        try:
            data = json.loads(resp.data)
        finally:
            resp.release_conn()
        items = tuple(data.get("items") or ())
        self.relists += 1
        self._deliver(WatchEvent("SYNC", items))
        rv = (data.get("metadata") or {}).get("resourceVersion")
        return str(rv) if rv else None

    def _watch(self, rv: str | None) -> str | None:
        """Stream one watch request; returns the resourceVersion to resume from (None: relist)."""
        kwargs: dict[str, Any] = dict(self._selectors)
        if rv is not None:
            kwargs["resource_version"] = rv
        resp = self._list_fn(
            **kwargs,
            watch=True,
            allow_watch_bookmarks=True,
            timeout_seconds=max(1, int(self._watch_timeout)),
            _preload_content=False,
            _request_timeout=(self._request_timeout, self._watch_timeout + self._request_timeout),
        )
        self._resp = resp
        self._watch_events = 0
        try:
            for line in _lines(resp):
                if self._stop.is_set():
                    return rv
                if not line.strip():
                    continue
                rv = self._handle_line(line, rv)
        except Exception as exc:
            if self._stop.is_set():
                return rv
            if _is_read_timeout(exc):
                return rv  # a quiet watch that outlived our read timeout: resume
            raise
        finally:
            self._resp = None
            with contextlib.suppress(Exception):
                resp.release_conn()
        return rv

    def _handle_line(self, line: str, rv: str | None) -> str | None:
        event = json.loads(line)
        kind = event.get("type")
        obj = event.get("object") or {}
        if kind == "ERROR":
            code = obj.get("code")
            if code == 410:
                raise _Gone()
            raise ApiException(status=code or 500, reason=f"{obj.get('reason')}: {obj.get('message')}")
        new_rv = (obj.get("metadata") or {}).get("resourceVersion")
        if new_rv:
            rv = str(new_rv)
        if kind in ("ADDED", "MODIFIED", "DELETED"):
            self._watch_events += 1
            self._deliver(WatchEvent(kind, (obj,)))
        return rv

    def _deliver(self, event: WatchEvent) -> None:
        try:
            self._loop.call_soon_threadsafe(self._on_event, event)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            self._stop.set()


def _lines(resp: Any) -> Iterator[str]:
    """The lines of a streamed response as they arrive (a watch sends one JSON event per line)."""
    buffer = b""
    for chunk in resp.stream(amt=None, decode_content=False):
        buffer += chunk if isinstance(chunk, bytes) else str(chunk).encode()
        *complete, buffer = buffer.split(b"\n")
        for line in complete:
            yield line.decode("utf-8", "replace")
    if buffer:
        yield buffer.decode("utf-8", "replace")


def _is_read_timeout(exc: BaseException) -> bool:
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, TimeoutError | socket.timeout) or "ReadTimeoutError" in type(cur).__name__:
            return True
        cur = cur.__cause__ or cur.__context__
    return False


def _shutdown(resp: Any) -> None:
    """Unblock a thread reading this response (closing alone can hang on a blocked read)."""
    with contextlib.suppress(Exception):
        sock = getattr(getattr(resp, "connection", None), "sock", None)
        if sock is not None:
            sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(Exception):
        resp.close()
