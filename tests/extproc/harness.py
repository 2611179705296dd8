"""Test kit for the ext_proc server: pipelines from real plugins, an Envoy-speaking gRPC client, messages."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2 as pm
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pbg
from prometheus_client import CollectorRegistry

from epp.builtins import builtin_registry
from epp.config import build_pipeline, load_config
from epp.datalayer.datastore import Datastore
from epp.extproc.server import ExtProcServer
from epp.extproc.tls import TlsOptions
from epp.framework.cycle import CycleState
from epp.framework.types import (
    Endpoint,
    EndpointMetrics,
    InferenceRequest,
    ResponseInfo,
    SchedulingResult,
    TypedName,
)
from epp.observability.metrics import EppMetrics
from epp.requestcontrol.admission import Admission
from epp.requestcontrol.context import RequestOptions
from epp.scheduling.pipeline import Pipeline, PipelineHolder

FULL_DUPLEX = pm.ProcessingMode.FULL_DUPLEX_STREAMED
BUFFERED = pm.ProcessingMode.BUFFERED
BUFFERED_PARTIAL = pm.ProcessingMode.BUFFERED_PARTIAL
NONE = pm.ProcessingMode.NONE
STREAMED = pm.ProcessingMode.STREAMED

DEFAULT_CONFIG = """
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: queue-scorer
- type: max-score-picker
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: queue-scorer
"""

CONFORMANCE_CONFIG = """
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: header-based-testing-filter
- type: destination-endpoint-served-verifier
- type: max-score-picker
  parameters:
    maxNumOfEndpoints: 3
schedulingProfiles:
- name: conformance
  plugins:
  - pluginRef: header-based-testing-filter
  - pluginRef: max-score-picker
"""


def pipeline_from(text: str | None, *, extra_plugins: Sequence[Any] = ()) -> Pipeline:
    """A pipeline built by the real config loader; `extra_plugins` are appended as response/pre hooks."""
    registry = builtin_registry()
    pipeline = build_pipeline(load_config(text, registry=registry), registry)
    if not extra_plugins:
        return pipeline
    import dataclasses

    def having(method: str) -> tuple[Any, ...]:
        return tuple(p for p in extra_plugins if callable(getattr(p, method, None)))

    return dataclasses.replace(
        pipeline,
        pre_request=pipeline.pre_request + having("pre_request"),
        response_received=pipeline.response_received + having("response_received"),
        response_complete=pipeline.response_complete + having("response_complete"),
        admitters=pipeline.admitters + having("admit"),
        producers=pipeline.producers + having("prepare_data"),
        response_writers=pipeline.response_writers
        or any(not getattr(p, "reads_response_only", False) for p in having("response_received")),
    )


def endpoint(ip: str, port: int, queue: int = 0, fresh: bool = True) -> Endpoint:
    addr = f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"
    return Endpoint(
        key=addr,
        ip=ip,
        port=port,
        metrics=EndpointMetrics(waiting_queue_size=queue, update_time=time.monotonic() if fresh else 0.0),
    )


@dataclass
class Recorder:
    """A plugin that records every hook call (pre-request, response received/complete)."""

    typed_name: TypedName = field(default_factory=lambda: TypedName("recorder", "recorder"))
    pre: list[InferenceRequest] = field(default_factory=list)
    received: list[ResponseInfo] = field(default_factory=list)
    completed: list[ResponseInfo] = field(default_factory=list)
    set_header: tuple[str, str] | None = None
    metadata: dict[str, dict[str, Any]] | None = None
    complete_event: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def reads_response_only(self) -> bool:
        return self.set_header is None and self.metadata is None

    def pre_request(self, cycle: CycleState, request: InferenceRequest, result: SchedulingResult) -> None:
        self.pre.append(request)

    def response_received(
        self, cycle: CycleState, request: InferenceRequest, response: ResponseInfo, result: SchedulingResult
    ) -> None:
        self.received.append(response)
        if self.set_header:
            response.set_headers[self.set_header[0]] = self.set_header[1]

    def response_complete(
        self, cycle: CycleState, request: InferenceRequest, response: ResponseInfo, result: SchedulingResult
    ) -> None:
        self.completed.append(response)
        if self.metadata:
            response.dynamic_metadata.update(self.metadata)
        self.complete_event.set()


# ---- messages as Envoy sends them ---------------------------------------------------------------


def _header_map(headers: Mapping[str, str]) -> base_pb2.HeaderMap:
    hm = base_pb2.HeaderMap()
    for k, v in headers.items():
        hm.headers.add(key=k, raw_value=v.encode())
    return hm


def request_headers(
    path: str = "/v1/completions",
    headers: Mapping[str, str] | None = None,
    *,
    method: str = "POST",
    eos: bool = False,
    mode: int = FULL_DUPLEX,
    response_mode: int | None = None,
    metadata: Mapping[str, Mapping[str, Any]] | None = None,
    protocol_config: bool = True,
) -> pb.ProcessingRequest:
    all_headers = {":path": path, ":method": method, ":authority": "gw", ":scheme": "http"}
    all_headers.update(headers or {})
    msg = pb.ProcessingRequest()
    msg.request_headers.headers.CopyFrom(_header_map(all_headers))
    msg.request_headers.end_of_stream = eos
    if protocol_config:
        msg.protocol_config.request_body_mode = mode
        msg.protocol_config.response_body_mode = mode if response_mode is None else response_mode
    if metadata:
        for ns, values in metadata.items():
            msg.metadata_context.filter_metadata[ns].update(values)
    return msg


def request_body(chunk: bytes, eos: bool = False) -> pb.ProcessingRequest:
    msg = pb.ProcessingRequest()
    msg.request_body.body = chunk
    msg.request_body.end_of_stream = eos
    return msg


def request_trailers() -> pb.ProcessingRequest:
    msg = pb.ProcessingRequest()
    msg.request_trailers.SetInParent()
    return msg


def response_headers(
    status: int = 200,
    content_type: str = "application/json",
    headers: Mapping[str, str] | None = None,
    *,
    eos: bool = False,
    served: str | None = None,
    upstream_address: str | None = None,
) -> pb.ProcessingRequest:
    all_headers = {":status": str(status), "content-type": content_type}
    all_headers.update(headers or {})
    msg = pb.ProcessingRequest()
    msg.response_headers.headers.CopyFrom(_header_map(all_headers))
    msg.response_headers.end_of_stream = eos
    if served is not None:
        msg.metadata_context.filter_metadata["envoy.lb"].update(
            {"x-gateway-destination-endpoint-served": served}
        )
    if upstream_address is not None:
        msg.attributes["envoy.filters.http.ext_proc"].update({"upstream.address": upstream_address})
    return msg


def response_body(chunk: bytes, eos: bool = False) -> pb.ProcessingRequest:
    msg = pb.ProcessingRequest()
    msg.response_body.body = chunk
    msg.response_body.end_of_stream = eos
    return msg


def response_trailers() -> pb.ProcessingRequest:
    msg = pb.ProcessingRequest()
    msg.response_trailers.SetInParent()
    return msg


def json_body(**fields: Any) -> bytes:
    return json.dumps(fields).encode()


# ---- reading replies ----------------------------------------------------------------------------


def set_headers(reply: pb.ProcessingResponse) -> dict[str, str]:
    """The header mutation's set headers of a headers or body reply (values from raw_value)."""
    kind = reply.WhichOneof("response")
    common = getattr(reply, kind).response if kind != "request_trailers" else None
    assert common is not None
    out = {}
    for opt in common.header_mutation.set_headers:
        assert not opt.header.value, "header values must go in raw_value"
        out[opt.header.key] = opt.header.raw_value.decode()
    return out


def removed_headers(reply: pb.ProcessingResponse) -> list[str]:
    kind = reply.WhichOneof("response")
    return list(getattr(reply, kind).response.header_mutation.remove_headers)


def streamed(reply: pb.ProcessingResponse) -> tuple[bytes, bool]:
    kind = reply.WhichOneof("response")
    assert kind in ("request_body", "response_body"), kind
    sr = getattr(reply, kind).response.body_mutation.streamed_response
    return sr.body, sr.end_of_stream


def metadata_destination(reply: pb.ProcessingResponse) -> str:
    return str(
        reply.dynamic_metadata.fields["envoy.lb"]
        .struct_value.fields["x-gateway-destination-endpoint"]
        .string_value
    )


# ---- the server under test and an Envoy-like client ----------------------------------------------


class Harness:
    """A real ExtProcServer on 127.0.0.1:0 with a datastore of static endpoints, plus a client channel."""

    def __init__(
        self,
        pipeline: Pipeline,
        endpoints: Sequence[Endpoint] = (),
        options: RequestOptions | None = None,
        admission: Admission | None = None,
        tls: TlsOptions | None = None,
    ) -> None:
        self.datastore = Datastore()
        self.datastore.set_endpoints(endpoints)
        self.datastore.mark_synced()
        self.metrics = EppMetrics(CollectorRegistry())
        self.holder = PipelineHolder(pipeline)
        self.server = ExtProcServer(self.holder, self.datastore, self.metrics, options, admission=admission)
        self.tls = tls
        self.port = 0
        self.channel: grpc.aio.Channel | None = None
        self.stub: pbg.ExternalProcessorStub | None = None

    async def __aenter__(self) -> Harness:
        self.port = await self.server.start(0, tls=self.tls, host="127.0.0.1")
        if self.tls is None:
            self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{self.port}")
        else:
            self.channel = client_tls_channel(self.port)
        self.stub = pbg.ExternalProcessorStub(self.channel)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.channel is not None:
            await self.channel.close()
        await self.server.stop(0.5)

    def stream(self) -> Stream:
        assert self.stub is not None
        return Stream(self.stub.Process())

    async def exchange(self, messages: Sequence[pb.ProcessingRequest]) -> list[pb.ProcessingResponse]:
        """Send all messages, close the sending side, and collect every reply until the server ends."""
        s = self.stream()
        for msg in messages:
            await s.send(msg)
        await s.close()
        return await s.drain()

    def sample(self, name: str, labels: Mapping[str, str] | None = None) -> float:
        value = self.metrics.registry.get_sample_value(name, dict(labels or {}))
        return 0.0 if value is None else value


def client_tls_channel(port: int) -> grpc.aio.Channel:
    """A TLS channel that trusts the server's certificate as fetched (no validation, like Envoy's config)."""
    import ssl

    pem = ssl.get_server_certificate(("127.0.0.1", port)).encode()
    creds = grpc.ssl_channel_credentials(root_certificates=pem)
    return grpc.aio.secure_channel(
        f"127.0.0.1:{port}", creds, options=[("grpc.ssl_target_name_override", "localhost")]
    )


class Stream:
    def __init__(self, call: Any) -> None:
        self.call = call

    async def send(self, msg: pb.ProcessingRequest) -> None:
        await self.call.write(msg)

    async def recv(self, n: int = 1, timeout: float = 5.0) -> list[pb.ProcessingResponse]:
        out = []
        for _ in range(n):
            reply = await asyncio.wait_for(self.call.read(), timeout)
            assert reply is not grpc.aio.EOF, f"stream ended after {len(out)} of {n} replies"
            out.append(reply)
        return out

    async def close(self) -> None:
        await self.call.done_writing()

    async def drain(self, timeout: float = 5.0) -> list[pb.ProcessingResponse]:
        out = []
        while True:
            reply = await asyncio.wait_for(self.call.read(), timeout)
            if reply is grpc.aio.EOF:
                return out
            out.append(reply)

    def cancel(self) -> None:
        self.call.cancel()
