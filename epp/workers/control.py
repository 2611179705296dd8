"""The control channel between the pod process and its workers: ZeroMQ ROUTER/DEALER over `ipc://`.

One ordered pipe per worker, so a worker never misses what was sent before it connected: its first
message (`hello`) makes the pod process send it the whole picture (`snapshot`), and every later change
follows on the same pipe. Messages are msgpack lists `[kind, ...]` (`epp.workers.codec`).

pod process → worker:
    snapshot   {config, endpoints, synced, objectives, rules}    after every hello
    config     {generation, text, source, hash}                   a reload that passed validation
    endpoints  [endpoint, ...]                                    the whole membership (it changed)
    update     [endpoint, ...]                                    endpoints that changed (metrics, ...)
    objectives {name: priority}
    rules      [rule, ...]                                        InferenceModelRewrite rules
    synced                                                        the endpoint source has synced
    collect    token                                              send your metric families
    gone       slot                                               that worker died: forget its state
    assign     slot, incarnation                                  (to the warm spare) you are that worker now
worker → pod process:
    hello      slot, incarnation, pid                             (slot -1: the warm spare, waiting)
    ready      bool                                               serving (config built, picture received)
    applied    generation, ok, error                              a config generation built or refused
    families   token, pickled families                            answer to collect
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import zmq
import zmq.asyncio

from epp.workers.codec import pack, unpack

__all__ = [
    "APPLIED",
    "ASSIGN",
    "COLLECT",
    "CONFIG",
    "ENDPOINTS",
    "FAMILIES",
    "GONE",
    "HELLO",
    "OBJECTIVES",
    "READY",
    "RULES",
    "SNAPSHOT",
    "SYNCED",
    "UPDATE",
    "ControlClient",
    "ControlServer",
]

log = logging.getLogger(__name__)

SNAPSHOT = "snapshot"
CONFIG = "config"
ENDPOINTS = "endpoints"
UPDATE = "update"
OBJECTIVES = "objectives"
RULES = "rules"
SYNCED = "synced"
COLLECT = "collect"
GONE = "gone"
ASSIGN = "assign"
HELLO = "hello"
READY = "ready"
APPLIED = "applied"
FAMILIES = "families"

#: Messages queued per peer before new ones are dropped (a worker that stopped reading).
_HWM = 100_000

Handler = Callable[[bytes, list[Any]], Awaitable[None] | None]


def _warn_dropped(fut: asyncio.Future[Any]) -> None:
    # pyzmq's asyncio sockets report a failed non-blocking send in the future, not by raising
    if not fut.cancelled() and fut.exception() is not None:
        log.warning("control message dropped: %s (the other end is not reading)", fut.exception())


class ControlServer:
    """The pod process's end: one ROUTER socket; peers are known by the identity their DEALER sent."""

    def __init__(self, address: str, context: zmq.asyncio.Context | None = None) -> None:
        self.context = context or zmq.asyncio.Context.instance()
        self.socket = self.context.socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.SNDHWM, _HWM)
        self.socket.setsockopt(zmq.RCVHWM, _HWM)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.ROUTER_MANDATORY, 0)  # a message to a gone peer is dropped silently
        self.socket.bind(address)
        self.address = address

    async def run(self, handler: Handler) -> None:
        """Receive until cancelled; `handler(identity, message)` for each (errors are logged)."""
        while True:
            identity, data = await self.socket.recv_multipart()
            try:
                result = handler(identity, unpack(data))
                if asyncio.iscoroutine(result):
                    await result
            except Exception:
                log.exception("control message from worker %r failed", identity)

    def send(self, identity: bytes, message: list[Any]) -> None:
        self.send_packed(identity, pack(message))

    def send_packed(self, identity: bytes, data: bytes) -> None:
        """Queue a message for a worker without waiting (dropped, with a warning, when its queue is full)."""
        fut: Any = self.socket.send_multipart([identity, data], flags=zmq.NOBLOCK)
        fut.add_done_callback(_warn_dropped)

    def close(self) -> None:
        self.socket.close(0)


class ControlClient:
    """A worker's end: one DEALER socket connected to the pod process."""

    def __init__(self, address: str, identity: bytes, context: zmq.asyncio.Context | None = None) -> None:
        self.context = context or zmq.asyncio.Context.instance()
        self.socket = self.context.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.IDENTITY, identity)
        self.socket.setsockopt(zmq.SNDHWM, _HWM)
        self.socket.setsockopt(zmq.RCVHWM, _HWM)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.connect(address)

    def send(self, message: list[Any]) -> None:
        """Queue a message for the pod process without waiting."""
        fut: Any = self.socket.send(pack(message), flags=zmq.NOBLOCK)
        fut.add_done_callback(_warn_dropped)

    async def recv(self) -> list[Any]:
        message = unpack(await self.socket.recv())
        if not isinstance(message, list) or not message:
            raise ValueError(f"malformed control message: {message!r}")
        return message

    def close(self) -> None:
        self.socket.close(0)
