"""`--static-endpoints` parsing, resolution and publishing, and choosing the endpoint source."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from epp.datalayer.datastore import Datastore
from epp.datalayer.metric_spec import ENGINE_LABEL_KEY
from epp.datalayer.sources import configured_source_kind, start_endpoint_source
from epp.datalayer.static_source import StaticEndpointSource, StaticTarget, parse_static_endpoints
from epp.errors import SettingsError
from epp.tools.engine_pages import ServerState, sglang_page
from tests.helpers import until

from .servers import MetricsServer


def test_parse_ipv4_ipv6_and_names():
    targets = parse_static_endpoints(
        " 10.0.0.1:8000 ,[fd00::1]:8001,model-a.svc.cluster.local:9000,, localhost:1"
    )
    assert [(t.host, t.port, t.is_ip) for t in targets] == [
        ("10.0.0.1", 8000, True),
        ("fd00::1", 8001, True),
        ("model-a.svc.cluster.local", 9000, False),
        ("localhost", 1, False),
    ]
    assert [t.key for t in targets] == [
        "10.0.0.1:8000",
        "[fd00::1]:8001",
        "model-a.svc.cluster.local:9000",
        "localhost:1",
    ]


def test_parse_accepts_a_list_and_drops_duplicates():
    targets = parse_static_endpoints(["127.0.0.1:1,127.0.0.1:2", "127.0.0.1:1"])
    assert [t.key for t in targets] == ["127.0.0.1:1", "127.0.0.1:2"]


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("", "no endpoints given"),
        ("10.0.0.1", "has no port"),
        ("10.0.0.1:", "port must be a number"),
        ("10.0.0.1:0", "port must be a number"),
        ("10.0.0.1:70000", "port must be a number"),
        ("fd00::1:8000", "write IPv6 addresses in brackets"),
        ("[fd00::1]8000", r"is not \[ipv6\]:port"),
        ("[not-v6]:8000", "is not an IPv6 address"),
        ("bad host:80", "is not a host name or IP"),
        ("a..b:80", "is not a host name or IP"),  # an empty label: the resolver would raise UnicodeError
        ("x" * 64 + ".svc:80", "is not a host name or IP"),  # a label over 63 characters
        ("-lead.svc:80", "is not a host name or IP"),
        (":80", "has no port"),
    ],
)
def test_parse_errors_are_settings_errors(value, fragment):
    with pytest.raises(SettingsError, match=fragment):
        parse_static_endpoints(value)


def test_long_but_valid_host_names_parse():
    name = ".".join(["x" * 63] * 3) + ".svc"
    assert parse_static_endpoints(f"{name}:80,vllm_0.ns.svc.cluster.local:8000")[0].host == name


async def test_static_source_publishes_resolves_and_labels_the_engine():
    ds = Datastore()
    source = StaticEndpointSource(
        ds, parse_static_endpoints("127.0.0.9:8000,[::1]:8001,localhost:8002"), engine="sglang"
    )
    await source.start()
    assert ds.synced
    eps = {e.key: e for e in ds.snapshot()}
    assert set(eps) == {"127.0.0.9:8000", "[::1]:8001", "localhost:8002"}
    assert eps["[::1]:8001"].ip == "::1" and eps["[::1]:8001"].address == "[::1]:8001"
    assert eps["localhost:8002"].ip == "127.0.0.1"  # IPv4 preferred for a name with both families
    assert all(e.labels == {ENGINE_LABEL_KEY: "sglang"} for e in eps.values())


async def test_unresolvable_name_is_retried_not_fatal(monkeypatch):
    ds = Datastore()
    targets = [StaticTarget("127.0.0.1", 1, True), StaticTarget("not-yet.invalid", 2, False)]
    source = StaticEndpointSource(ds, targets, retry_initial=0.02, retry_max=0.05)
    calls = {"n": 0}
    loop = asyncio.get_running_loop()
    real = loop.getaddrinfo

    async def flaky(host, port, **kwargs):
        calls["n"] += 1
        if calls["n"] < 3:
            raise OSError("name not known")
        return await real("127.0.0.1", port, **kwargs)

    monkeypatch.setattr(loop, "getaddrinfo", flaky)
    await source.start()
    assert ds.synced and [e.key for e in ds.snapshot()] == ["127.0.0.1:1"]
    assert source.unresolved == ["not-yet.invalid:2"]
    task = asyncio.create_task(source.run())
    try:
        await until(lambda: len(ds) == 2)
        assert ds.get("not-yet.invalid:2").ip == "127.0.0.1"
    finally:
        await source.stop()
        await asyncio.wait_for(task, 1)


@pytest.mark.parametrize(
    ("settings", "kind"),
    [
        ({"static_endpoints": "127.0.0.1:1"}, "static"),
        ({"pool_name": "pool"}, "pool"),
        ({"endpoint_selector": "app=x"}, "selector"),
        ({"static_endpoints": ["a:1"], "pool_name": ""}, "static"),
    ],
)
def test_exactly_one_source(settings, kind):
    assert configured_source_kind(SimpleNamespace(**settings)) == kind


@pytest.mark.parametrize(
    "settings",
    [{}, {"static_endpoints": "a:1", "pool_name": "p"}, {"pool_name": "p", "endpoint_selector": "a=b"}],
)
def test_zero_or_two_sources_is_an_error(settings):
    with pytest.raises(SettingsError, match="exactly one endpoint source"):
        configured_source_kind(SimpleNamespace(**settings))


async def test_start_endpoint_source_static_with_model_server_type():
    server = await MetricsServer(sglang_page(ServerState(waiting=2))).start()
    try:
        ds = Datastore()
        settings = SimpleNamespace(static_endpoints=f"127.0.0.1:{server.port}", model_server_type="sglang")
        source = await start_endpoint_source(settings, ds)
        assert ds.synced and ds.snapshot()[0].labels == {ENGINE_LABEL_KEY: "sglang"}
        await source.stop()
    finally:
        await server.stop()


async def test_engine_setting_may_be_a_str_enum():
    from enum import StrEnum

    class Engine(StrEnum):
        TRTLLM = "trtllm-serve"

    ds = Datastore()
    settings = SimpleNamespace(static_endpoints=("127.0.0.1:1",), model_server_type=Engine.TRTLLM)
    source = await start_endpoint_source(settings, ds)
    label = ds.snapshot()[0].labels[ENGINE_LABEL_KEY]
    assert label == "trtllm-serve" and type(label) is str
    await source.stop()
