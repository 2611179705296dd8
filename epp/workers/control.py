"""The control channel between the pod process and its workers: ZeroMQ ROUTER/DEALER over `ipc://`.

One ordered pipe per worker, so a worker never misses what was sent before it connected: its first
message (`hello`) makes the pod process send it the whole picture (`snapshot`), and every later change
follows on the same pipe. Messages are msgpack lists `[kind, ...]` (`epp.workers.codec`).

pod process → worker:
    snapshot   {config, endpoints, synced, objectives, rules}    after every hello
    config     {generation, text, source, hash}                   a reload that passed validation
    endpoints  [endpoint, ...]                                    the whole membership (it changed)
    update     [[key, metrics, healthy], ...]                     endpoints scraped since (same members)
    objectives {name: priority}
    rules      [rule, ...]                                        InferenceModelRewrite rules
    synced                                                        the endpoint source has synced
    collect    token                                              send your metric families
    gone       slot                                               that worker died: forget its state
    assign     slot, incarnation                                  (to the warm spare) you are that worker now
    share-ask  token                                              (active-active) your shared-state snapshot
    share      snapshot bytes                                     (active-active) a peer's: import it
worker → pod process:
    hello      slot, incarnation, pid                             (slot -1: the warm spare, waiting)
    ready      bool                                               serving (config built, picture received)
    applied    generation, ok, error                              a config generation built or refused
    families   token, pickled families                            answer to collect
    shared     token, snapshot bytes or None                      answer to share-ask
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import zmq

from epp.workers.codec import pack, unpack
from epp.workers.transport import Inbox, socket

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
    "SHARE",
    "SHARED",
    "SHARE_ASK",
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
SHARE_ASK = "share-ask"
SHARE = "share"
SHARED = "shared"


def _message(data: bytes) -> list[Any]:
    message = unpack(data)
    if not isinstance(message, list) or not message:
        raise ValueError(f"malformed control message: {message!r}")
    return message


class ControlServer:
    """The pod process's end: one ROUTER socket; peers are known by the identity their DEALER sent.
    `on_message(identity, message)` runs on the event loop for every message (after `start`)."""

    def __init__(
        self,
        address: str,
        on_message: Callable[[bytes, list[Any]], None],
        context: zmq.Context[zmq.Socket[bytes]] | None = None,
    ) -> None:
        self.socket = socket(context or zmq.Context.instance(), zmq.ROUTER)
        self.socket.setsockopt(zmq.ROUTER_MANDATORY, 0)  # a message to a gone peer is dropped silently
        self.socket.bind(address)
        self.address = address
        self._on_message = on_message
        self.inbox = Inbox(self.socket, self._received)

    def start(self) -> None:
        self.inbox.start()

    def _received(self, frames: list[bytes]) -> None:
        identity, data = frames
        self._on_message(identity, _message(data))

    def send(self, identity: bytes, message: list[Any]) -> None:
        self.send_packed(identity, pack(message))

    def send_packed(self, identity: bytes, data: bytes) -> None:
        """Queue a message for a worker without waiting (dropped, with a warning, when its queue is full)."""
        try:
            self.socket.send_multipart([identity, data], zmq.NOBLOCK)
        except zmq.Again:
            log.warning("control message to worker %r dropped: it is not reading", identity)
        self.inbox.kick()

    def close(self) -> None:
        self.inbox.close()


class ControlClient:
    """A worker's end: one DEALER socket connected to the pod process."""

    def __init__(
        self,
        address: str,
        identity: bytes,
        on_message: Callable[[list[Any]], None],
        context: zmq.Context[zmq.Socket[bytes]] | None = None,
    ) -> None:
        self.socket = socket(context or zmq.Context.instance(), zmq.DEALER)
        self.socket.setsockopt(zmq.IDENTITY, identity)
        self.socket.connect(address)
        self._on_message = on_message
        self.inbox = Inbox(self.socket, self._received)

    def start(self) -> None:
        self.inbox.start()

    def _received(self, frames: list[bytes]) -> None:
        self._on_message(_message(frames[-1]))

    def send(self, message: list[Any]) -> None:
        """Queue a message for the pod process without waiting."""
        try:
            self.socket.send(pack(message), zmq.NOBLOCK)
        except zmq.Again:
            log.warning("control message %r to the pod process dropped", message[0])
        self.inbox.kick()

    def close(self) -> None:
        self.inbox.close()
