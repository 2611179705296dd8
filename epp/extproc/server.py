"""The ext_proc gRPC server: bootstrap, TLS or plaintext, graceful stop.

Usage by the app:

    server = ExtProcServer(holder, datastore, metrics, RequestOptions(...))
    port = await server.start(9002, tls=TlsOptions(cert_path=None))   # tls=None: plaintext
    ...
    await server.stop(grace=5.0)
"""

from __future__ import annotations

import logging
from typing import Any

import grpc
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from grpc_health.v1 import health_pb2_grpc

from epp.datalayer.datastore import Datastore
from epp.extproc import wire
from epp.extproc.health import HealthServicer, ReadinessState
from epp.extproc.ports import bind_port
from epp.extproc.servicer import ExtProcServicer
from epp.extproc.tls import TlsOptions, server_credentials
from epp.metadata import EXT_PROC_SERVICE
from epp.observability.metrics import EppMetrics
from epp.requestcontrol.admission import Admission
from epp.requestcontrol.context import RequestOptions
from epp.requestcontrol.director import Director
from epp.scheduling.pipeline import PipelineHolder
from epp.scheduling.spans import RequestTracer

__all__ = ["ExtProcServer"]

log = logging.getLogger(__name__)

#: Room for protobuf framing on top of the largest body a message may carry (BUFFERED mode sends the
#: whole body in one message, both ways).
_MESSAGE_SLACK = 1 << 20


def _handler(servicer: ExtProcServicer) -> grpc.GenericRpcHandler[Any, Any]:
    """The ExternalProcessor service with a response serialiser that passes pre-encoded bytes through."""
    process = grpc.stream_stream_rpc_method_handler(
        servicer.Process,
        request_deserializer=pb.ProcessingRequest.FromString,
        response_serializer=wire.serialize,
    )
    return grpc.method_handlers_generic_handler(EXT_PROC_SERVICE, {"Process": process})


class ExtProcServer:
    """Serves `envoy.service.ext_proc.v3.ExternalProcessor` for one pipeline holder and datastore.

    `health` (upstream `--health-checking`): also serve the gRPC health service on this port.
    `tracer` (`--tracing`): traces the requests (`epp.observability.tracing`).
    """

    def __init__(
        self,
        holder: PipelineHolder,
        datastore: Datastore,
        metrics: EppMetrics,
        options: RequestOptions | None = None,
        *,
        admission: Admission | None = None,
        director: Director | None = None,
        health: ReadinessState | None = None,
        tracer: RequestTracer | None = None,
    ) -> None:
        self.options = options or RequestOptions()
        self.director = director or Director(datastore, metrics, self.options, admission, tracer=tracer)
        self.servicer = ExtProcServicer(holder, self.director)
        self.health = health
        self._server: grpc.aio.Server | None = None
        self.port = 0

    async def start(
        self, port: int, tls: TlsOptions | None = None, host: str = "[::]", *, reuse_port: bool = False
    ) -> int:
        """Listen on `host:port` (0 = any free port); returns the bound port. `tls` None = plaintext.
        `reuse_port`: share the port with the other workers of the pod (SO_REUSEPORT: the kernel hands
        each new connection to one of the listening processes)."""
        limit = self.options.max_request_body_bytes + _MESSAGE_SLACK
        server = grpc.aio.server(
            options=[
                ("grpc.so_reuseport", 1 if reuse_port else 0),
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", limit),
            ]
        )
        server.add_generic_rpc_handlers((_handler(self.servicer),))
        if self.health is not None:
            health_pb2_grpc.add_HealthServicer_to_server(HealthServicer(self.health), server)
        creds = server_credentials(tls) if tls is not None else None
        self.port = bind_port(server, host, port, creds)
        await server.start()
        self._server = server
        log.info("ext_proc server listening on %s:%d (%s)", host, self.port, "TLS" if tls else "plaintext")
        return self.port

    async def stop(self, grace: float = 5.0) -> None:
        """Stop accepting streams; in-flight ones get `grace` seconds to finish, then are cancelled."""
        if self._server is not None:
            server, self._server = self._server, None
            await server.stop(grace)

    async def wait_for_termination(self) -> None:
        if self._server is not None:
            await self._server.wait_for_termination()
