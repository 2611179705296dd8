"""gRPC health (services, readiness transitions, Watch, List) and TLS on the ext_proc port."""

from __future__ import annotations

import asyncio
import os
import socket
import ssl

import grpc
import pytest
from cryptography import x509
from grpc_health.v1 import health_pb2, health_pb2_grpc

from epp.errors import SettingsError
from epp.extproc.health import HealthServer, HealthServicer, ReadinessState
from epp.extproc.tls import TlsOptions, generate_self_signed

from .harness import (
    DEFAULT_CONFIG,
    Harness,
    endpoint,
    json_body,
    pipeline_from,
    request_body,
    request_headers,
)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
EXT_PROC = "envoy.service.ext_proc.v3.ExternalProcessor"


async def check(stub, service: str) -> int:
    return (await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)).status


@pytest.mark.parametrize("leader_election", [False, True])
async def test_health_services_follow_readiness(leader_election: bool) -> None:
    state = ReadinessState(leader_election=leader_election)
    server = HealthServer(state)
    port = await server.start(0, host="127.0.0.1")
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            assert await check(stub, "liveness") == SERVING
            for name in ("readiness", "", EXT_PROC):
                assert await check(stub, name) == NOT_SERVING
            state.set_synced()
            assert await check(stub, "readiness") == NOT_SERVING  # first scrape round not done yet
            state.set_scraped()
            expected = NOT_SERVING if leader_election else SERVING
            for name in ("readiness", "", EXT_PROC):
                assert await check(stub, name) == expected
            # upstream: unknown names are ignored without leader election (the single-replica chart probes
            # "inference-extension"), unknown with it
            assert await check(stub, "inference-extension") == (UNKNOWN if leader_election else SERVING)
            if leader_election:
                state.set_leader(True)
                assert await check(stub, "readiness") == SERVING
                state.set_leader(False)
                assert await check(stub, "readiness") == NOT_SERVING
                assert await check(stub, "liveness") == SERVING  # a standby is never restarted
            listed = await stub.List(health_pb2.HealthListRequest(), timeout=5)
            assert set(listed.statuses) == {"liveness", "readiness", "", EXT_PROC}
            assert listed.statuses["liveness"].status == SERVING
    finally:
        await server.stop(0)


async def test_health_watch_streams_changes() -> None:
    state = ReadinessState()
    server = HealthServer(state)
    port = await server.start(0, host="127.0.0.1")
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            call = stub.Watch(health_pb2.HealthCheckRequest(service="readiness"))
            assert (await asyncio.wait_for(call.read(), 5)).status == NOT_SERVING
            state.set_synced()
            state.set_scraped()
            assert (await asyncio.wait_for(call.read(), 5)).status == SERVING
            state.set_protocol_ok(False)
            assert (await asyncio.wait_for(call.read(), 5)).status == NOT_SERVING
            call.cancel()
    finally:
        await server.stop(0)


async def test_health_watch_sees_a_change_made_while_its_stream_was_suspended() -> None:
    """A change that lands while `Watch` is parked at its `yield` (gRPC still sending) is not lost."""
    state = ReadinessState()
    stream = HealthServicer(state).Watch(health_pb2.HealthCheckRequest(service="readiness"), None)
    assert (await asyncio.wait_for(anext(stream), 5)).status == NOT_SERVING
    state.set_synced()  # the generator is suspended at its yield: nobody is waiting yet
    state.set_scraped()
    assert (await asyncio.wait_for(anext(stream), 5)).status == SERVING
    await stream.aclose()


def test_self_signed_certificate_covers_loopback() -> None:
    cert_pem, key_pem = generate_self_signed()
    cert = x509.load_pem_x509_certificate(cert_pem)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in san.get_values_for_type(x509.DNSName)
    assert b"PRIVATE KEY" in key_pem


async def _route_ok(h: Harness) -> None:
    replies = await h.exchange([request_headers(), request_body(json_body(model="m", prompt="p"), eos=True)])
    assert replies[0].WhichOneof("response") == "request_headers"


async def test_tls_self_signed_serves_ext_proc_and_rejects_plaintext() -> None:
    async with Harness(pipeline_from(DEFAULT_CONFIG), [endpoint("10.0.0.1", 8000)], tls=TlsOptions()) as h:
        await _route_ok(h)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{h.port}") as plain:
            with pytest.raises(grpc.aio.AioRpcError):
                await asyncio.wait_for(_plain_call(plain), 5)


async def _plain_call(channel: grpc.aio.Channel) -> None:
    from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pbg

    call = pbg.ExternalProcessorStub(channel).Process()
    await call.write(request_headers(eos=True))
    await call.read()


async def test_tls_from_cert_path_and_rotation(tmp_path) -> None:
    cert1, key1 = generate_self_signed(common_name="first")
    (tmp_path / "tls.crt").write_bytes(cert1)
    (tmp_path / "tls.key").write_bytes(key1)
    async with Harness(
        pipeline_from(DEFAULT_CONFIG), [endpoint("10.0.0.1", 8000)], tls=TlsOptions(str(tmp_path))
    ) as h:
        await _route_ok(h)
        assert _served_cn(h.port) == "first"
        cert2, key2 = generate_self_signed(common_name="second")
        (tmp_path / "tls.key.new").write_bytes(key2)
        (tmp_path / "tls.crt.new").write_bytes(cert2)
        os.replace(tmp_path / "tls.key.new", tmp_path / "tls.key")
        os.replace(tmp_path / "tls.crt.new", tmp_path / "tls.crt")
        assert _served_cn(h.port) == "second"  # a new connection gets the rotated certificate


async def test_an_open_stream_outlives_a_rotation_and_reload_can_be_off(tmp_path) -> None:
    on, off = tmp_path / "on", tmp_path / "off"
    for d in (on, off):
        d.mkdir()
        _write_cert(d, "first")
    eps = [endpoint("10.0.0.1", 8000)]
    async with (
        Harness(pipeline_from(DEFAULT_CONFIG), eps, tls=TlsOptions(str(on))) as h,
        Harness(pipeline_from(DEFAULT_CONFIG), eps, tls=TlsOptions(str(off), reload=False)) as fixed,
    ):
        s = h.stream()  # a stream opened before the rotation, on the connection made with "first"
        await s.send(request_headers())  # (full duplex: its reply comes with the body's)
        for d in (on, off):
            _write_cert(d, "second")
        assert _served_cn(h.port) == "second"
        assert _served_cn(fixed.port) == "first"  # --enable-cert-reload=false: the certificate of the start
        await s.send(request_body(json_body(model="m", prompt="p"), eos=True))
        replies = await s.recv(2)
        assert [r.WhichOneof("response") for r in replies] == ["request_headers", "request_body"]
        s.cancel()


def _write_cert(directory, cn: str) -> None:
    """A certificate for `cn`, swapped in as a Secret update does (new files renamed over the old)."""
    cert, key = generate_self_signed(common_name=cn)
    (directory / "tls.key.new").write_bytes(key)
    (directory / "tls.crt.new").write_bytes(cert)
    os.replace(directory / "tls.key.new", directory / "tls.key")
    os.replace(directory / "tls.crt.new", directory / "tls.crt")


def _served_cn(port: int) -> str:
    """The CN of the certificate a fresh TLS connection (ALPN h2) gets."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2"])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock, ctx.wrap_socket(sock) as tls:
        assert tls.selected_alpn_protocol() == "h2"
        der = tls.getpeercert(binary_form=True)
    cert = x509.load_der_x509_certificate(der)
    return cert.subject.get_attributes_for_oid(x509.oid.NameOID.COMMON_NAME)[0].value


async def test_missing_cert_files_are_a_settings_error(tmp_path) -> None:
    h = Harness(pipeline_from(DEFAULT_CONFIG), [], tls=TlsOptions(str(tmp_path)))
    with pytest.raises(SettingsError, match=r"tls\.crt"):
        await h.server.start(0, tls=h.tls, host="127.0.0.1")
    await h.server.stop(0)
