"""ZeroMQ sockets driven from the event loop at a microsecond or so per message.

pyzmq's asyncio sockets cost ~40 µs of Python per message (a future, a reader registration and a loop
wake-up each); these are plain sockets: sends never block (`NOBLOCK`; a full queue drops the message and
says so), and `Inbox` reads every queued message in one wake-up of the loop. A ZeroMQ socket's file
descriptor only signals edges, so the inbox drains until the socket says nothing is left, and is kicked
after every send on the same socket (a send may consume the edge of an arriving message).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import zmq

__all__ = ["Inbox", "socket"]

log = logging.getLogger(__name__)

_HWM = 100_000


def socket(context: zmq.Context[zmq.Socket[bytes]], kind: int, *, hwm: int = _HWM) -> zmq.Socket[bytes]:
    sock = context.socket(kind)
    sock.setsockopt(zmq.SNDHWM, hwm)
    sock.setsockopt(zmq.RCVHWM, hwm)
    sock.setsockopt(zmq.LINGER, 0)
    return sock


class Inbox:
    """Calls `on_message(frames)` for every message that arrives on `sock`, from the event loop."""

    def __init__(self, sock: zmq.Socket[bytes], on_message: Callable[[list[bytes]], None]) -> None:
        self.sock = sock
        self.on_message = on_message
        self._loop: asyncio.AbstractEventLoop | None = None
        self._fd = -1
        self._kicked = False

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._fd = int(self.sock.getsockopt(zmq.FD))
        self._loop.add_reader(self._fd, self._drain)
        self.kick()  # what arrived before the reader was added

    def kick(self) -> None:
        """Look for messages at the loop's next turn (call after sending on the same socket)."""
        if self._loop is not None and not self._kicked:
            self._kicked = True
            self._loop.call_soon(self._drain)

    def _drain(self) -> None:
        self._kicked = False
        sock = self.sock
        recv = sock.recv_multipart
        while True:
            try:
                # ZMQ_EVENTS both says whether a message waits and re-arms the descriptor's edge, without
                # the cost of an EAGAIN exception per wake-up
                if not int(sock.getsockopt(zmq.EVENTS)) & zmq.POLLIN:
                    return
                frames = recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            except zmq.ZMQError as exc:
                if exc.errno == zmq.ENOTSOCK:  # closed under us
                    return
                raise
            try:
                self.on_message(frames)
            except Exception:
                log.exception("a message on %s could not be handled", self.sock)

    def close(self) -> None:
        if self._loop is not None and self._fd >= 0:
            self._loop.remove_reader(self._fd)
        self._loop = None
        self.sock.close(0)
