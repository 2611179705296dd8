"""The ext_proc `Process` stream: Envoy's protocol, one state machine per HTTP request.

A stream is either a routing stream (the main ext_proc filter: it routes the request and, where needed,
handles its response) or an observer stream (a second filter in Envoy's `observability_mode`, told apart
by that flag on its first message: it reads the response body off the critical path). The routing
stream's two halves live in `epp.extproc.request_side` and `epp.extproc.response_side`, the observer in
`epp.extproc.observer`.

Every failure before routing becomes an ImmediateResponse (400/413/429/503, 500 for anything unexpected);
a failure on the response path degrades to passing the response through untouched. Whatever happens,
`Director.finish` runs when the stream ends, so response hooks run exactly once and metrics are counted once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pbg

from epp.errors import ErrorCode, RequestError
from epp.extproc import messages as m
from epp.extproc.observer import ObserverRegistry, ObserverStream
from epp.extproc.request_side import Reply, RequestSide
from epp.extproc.response_side import ResponseSide
from epp.logs import VERBOSE
from epp.requestcontrol.director import Director
from epp.scheduling.pipeline import PipelineHolder

__all__ = ["ExtProcServicer"]

log = logging.getLogger(__name__)

_EOF = grpc.aio.EOF  # type: ignore[attr-defined]  # not in the stubs


def _complete_at_end(response: ResponseSide) -> None:
    """End of stream without an observer to wait for: complete a response whose body nobody took."""
    try:
        response.complete_at_stream_end()
    except Exception:
        log.exception("completing the response at the end of its stream failed")


class ExtProcServicer(pbg.ExternalProcessorServicer):  # type: ignore[misc]
    """`envoy.service.ext_proc.v3.ExternalProcessor/Process`.

    `registry` holds the requests this process routed and still has in flight, for observer streams to
    find; every server of one process shares it.
    """

    def __init__(
        self, holder: PipelineHolder, director: Director, registry: ObserverRegistry | None = None
    ) -> None:
        self.holder = holder
        self.director = director
        self.registry = registry if registry is not None else ObserverRegistry()
        self._endings: set[asyncio.Task[None]] = set()

    async def Process(
        self,
        request_iterator: AsyncIterator[m.ProcessingRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> None:
        # read/write on the context rather than iterating and yielding: one async-generator layer less
        # per message each way (the stream is all the handler does, so the two are equivalent)
        read = context.read
        first = await read()
        if first is _EOF:
            return
        if first.observability_mode:
            await self._observe(first, read)
        else:
            await self._route(first, read, context.write)

    async def _observe(self, msg: m.ProcessingRequest, read: Callable[[], Awaitable[Any]]) -> None:
        """An observer stream: read until it has seen what its request needs, then end the RPC (Envoy
        stops sending). Nothing is ever written: Envoy does not wait for replies in observability mode."""
        stream = ObserverStream(self.registry, self.director)
        try:
            while stream.on_message(msg):
                msg = await read()
                if msg is _EOF:
                    return
        except Exception:  # observing is accounting: never worth more than a log line
            log.exception("observer stream failed")
        finally:
            stream.close()

    async def _route(
        self,
        msg: m.ProcessingRequest,
        read: Callable[[], Awaitable[Any]],
        write: Callable[[Reply], Awaitable[None]],
    ) -> None:
        request = RequestSide(self.director, self.holder, self.registry)
        response = ResponseSide(self.director, request)
        ended = False  # Envoy ended the stream: the HTTP request is over
        try:
            while True:
                replies = await self._handle(request, response, msg)
                if replies is None:  # rejected with an immediate response: the stream is over
                    await write(self._reject(request, request.rejection))
                    return
                for reply in replies:
                    await write(reply)
                msg = await read()
                if msg is _EOF:
                    ended = True
                    return
        except asyncio.CancelledError:
            # When Envoy is done with a stream it half-closes it and resets it: the server sees the one or
            # the other, in a read or in a write still completing, whether the HTTP request completed or its
            # client went away.
            ended = True
            raise
        finally:
            if ended and response.waits_for_observer():
                # the observer's last message trails the end of this stream by a moment: wait for it in
                # a task of our own (this one may be cancelled)
                task = asyncio.create_task(self._end_after_observer(request, response))
                self._endings.add(task)
                task.add_done_callback(self._endings.discard)
            else:
                if ended:
                    _complete_at_end(response)
                self._finish_safely(request)

    @staticmethod
    async def _handle(
        request: RequestSide, response: ResponseSide, msg: m.ProcessingRequest
    ) -> list[Reply] | None:
        """The replies to one message; None when the request is rejected (`request.rejection` says why)."""
        kind = msg.WhichOneof("request")
        try:
            if kind == "request_body":
                return await request.on_body(msg)
            if kind == "response_body":
                return response.on_body(msg)
            if kind == "request_headers":
                return request.on_headers(msg)
            if kind == "response_headers":
                return response.on_headers(msg)
            if kind == "request_trailers":
                return await request.on_trailers(msg)
            if kind == "response_trailers":
                return response.on_trailers(msg)
            return []
        except RequestError as err:
            if request.done:
                log.exception("request error on the response path")
                return response.fail(msg)
            request.rejection = err
            return None
        except Exception:
            if request.done:
                log.exception("response processing failed; passing the response through")
                return response.fail(msg)
            log.exception("request processing failed")
            request.rejection = RequestError(ErrorCode.INTERNAL, "internal error")
            return None

    async def _end_after_observer(self, request: RequestSide, response: ResponseSide) -> None:
        try:
            await response.at_stream_end()
        finally:
            self._finish_safely(request)

    def _finish_safely(self, request: RequestSide) -> None:
        try:
            self._finish(request)
        except Exception:  # never let cleanup turn into a stream error
            log.exception("stream cleanup failed")

    def _finish(self, request: RequestSide) -> None:
        ctx = request.ctx
        if ctx is not None:
            self.registry.unregister(ctx)
            self.director.finish(ctx)
        elif request.orphan_error:
            self.director.meter.error("", "", request.orphan_error)

    @staticmethod
    def _reject(request: RequestSide, err: RequestError | None) -> m.ProcessingResponse:
        if err is None:
            err = RequestError(ErrorCode.INTERNAL, "internal error")
        request.done = True
        ctx = request.ctx
        if ctx is None:
            request.orphan_error = err.code.value
        elif not ctx.error_code:
            ctx.error_code = err.code.value
        level = logging.ERROR if err.code == ErrorCode.INTERNAL else VERBOSE
        log.log(level, "request rejected: %s %s", err.status, err.message)
        return m.immediate_response(err.status, err.body(), details=f"epp_{err.code.value}")
