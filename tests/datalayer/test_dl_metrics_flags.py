"""Upstream's deprecated `--model-server-metrics-*` flags act as upstream: the port replaces the
endpoint's own for scraping, scheme / path / TLS verification are the defaults of the data source's
parameters the config leaves out (the config's win), and bad values are usage errors."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from epp.app import App
from epp.builtins import builtin_registry
from epp.datalayer.data_source import MetricsDataSource, MetricsSourceDefaults
from epp.datalayer.datastore import Datastore
from epp.datalayer.scraper import Scraper
from epp.errors import SettingsError
from epp.extproc.tls import generate_self_signed
from epp.framework.types import Endpoint
from epp.settings import parse_settings
from epp.tools.engine_pages import ServerState, vllm_page
from epp.tools.loadgen.gateway import epp_flags
from tests.helpers import free_port, until

from .servers import MetricsServer

PAGE = vllm_page(ServerState(waiting=7, running=3, kv_usage=0.25))


@pytest.fixture
async def servers() -> AsyncIterator[list[MetricsServer]]:
    started: list[MetricsServer] = []
    yield started
    for server in started:
        await server.stop()


async def _server(
    started: list[MetricsServer], path: str, *, ssl_context: ssl.SSLContext | None = None
) -> MetricsServer:
    server = await MetricsServer(PAGE, path=path).start(ssl_context=ssl_context)
    started.append(server)
    return server


def _tls_context(tmp_path: Path) -> ssl.SSLContext:
    cert, key = generate_self_signed(common_name="model-server")
    (tmp_path / "tls.crt").write_bytes(cert)
    (tmp_path / "tls.key").write_bytes(key)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(tmp_path / "tls.crt", tmp_path / "tls.key")
    return ctx


async def _scraped_queue(endpoint: str, flags: Sequence[str], config_text: str | None = None) -> int | None:
    """Run the daemon over one static endpoint with `flags`; the queue it scraped (None: unreachable)."""
    settings = parse_settings(
        [
            *epp_flags([endpoint], config_text=config_text, secure_serving=False),
            "--grpc-port=0",
            "--grpc-health-port=0",
            "--metrics-port=0",
            "--refresh-metrics-interval=20ms",
            *flags,
        ],
        environ={},
    )
    app = App(settings, registry=builtin_registry())
    await app.start()
    try:
        ds = app.datastore
        await until(lambda: ds.get(endpoint) is not None and app._scraper is not None)
        scraper = app._scraper
        assert scraper is not None
        await until(lambda: scraper.stats().get(endpoint) and scraper.stats()[endpoint].attempts >= 2)
        current = ds.get(endpoint)
        assert current is not None
        return current.metrics.waiting_queue_size if current.healthy else None
    finally:
        await app.stop()


async def test_port_and_path_flags_change_what_is_scraped(servers: list[MetricsServer]) -> None:
    server = await _server(servers, "/custom/metrics")
    endpoint = f"127.0.0.1:{free_port()}"  # nothing serves the endpoint's own port
    assert await _scraped_queue(endpoint, []) is None
    flags = [f"--model-server-metrics-port={server.port}", "--model-server-metrics-path=/custom/metrics"]
    assert await _scraped_queue(endpoint, flags) == 7
    assert server.requests >= 2


async def test_config_parameters_win_over_the_flags(servers: list[MetricsServer]) -> None:
    server = await _server(servers, "/from-config")
    config = """
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: queue-scorer
- type: metrics-data-source
  parameters: {path: /from-config}
- type: core-metrics-extractor
"""
    flags = [f"--model-server-metrics-port={server.port}", "--model-server-metrics-path=/from-flag"]
    assert await _scraped_queue(f"127.0.0.1:{free_port()}", flags, config) == 7


async def test_https_scrape_skips_verification_unless_the_flag_says_not_to(
    servers: list[MetricsServer], tmp_path: Path
) -> None:
    server = await _server(servers, "/metrics", ssl_context=_tls_context(tmp_path))
    endpoint = server.address
    assert await _scraped_queue(endpoint, []) is None  # plain http to a TLS server
    assert await _scraped_queue(endpoint, ["--model-server-metrics-scheme=https"]) == 7  # skip: default true
    strict = [
        "--model-server-metrics-scheme=https",
        "--model-server-metrics-https-insecure-skip-verify=false",
    ]
    assert await _scraped_queue(endpoint, strict) is None  # a self-signed certificate does not verify


@pytest.mark.parametrize(
    ("flag", "message"),
    [
        ("--model-server-metrics-scheme=ftp", "--model-server-metrics-scheme: must be 'http' or 'https'"),
        ("--model-server-metrics-port=65536", "--model-server-metrics-port: port 65536 is out of range"),
        ("--model-server-metrics-port=-1", "--model-server-metrics-port: port -1 is out of range"),
        (
            "--model-server-metrics-path=metrics",
            "--model-server-metrics-path: a URL path must start with '/'",
        ),
        ("--model-server-metrics-https-insecure-skip-verify=maybe", "expected true or false"),
    ],
)
def test_bad_values_are_usage_errors(flag: str, message: str) -> None:
    with pytest.raises(SettingsError) as info:
        parse_settings(["--static-endpoints=127.0.0.1:8000", flag], environ={})
    assert message in str(info.value)


def test_flag_defaults_fill_only_what_the_config_leaves_out() -> None:
    defaults = MetricsSourceDefaults(scheme="https", path="/m", insecure_skip_verify=False)
    unset = MetricsDataSource().with_defaults(defaults)
    assert (unset.scheme, unset.path, unset.verify_tls) == ("https", "/m", True)
    given = MetricsDataSource(path="/x", explicit=frozenset({"path"})).with_defaults(defaults)
    assert (given.scheme, given.path) == ("https", "/x")
    plain = MetricsDataSource()
    assert plain.with_defaults(MetricsSourceDefaults()) is plain


async def test_the_port_override_skips_pods_with_several_ranks() -> None:
    ds = Datastore()
    one = Endpoint(key="a-rank-0", ip="10.0.0.1", port=8000, pod_name="a")
    ranks = [Endpoint(key=f"b-rank-{i}", ip="10.0.0.2", port=8000 + i, pod_name="b") for i in range(2)]
    ds.set_endpoints([one, *ranks])
    scraper = Scraper(ds, data_source=lambda: None, extractor=lambda: None, metrics_port=9100)
    await scraper.start()
    try:
        assert scraper.metrics_port_for(one) == 9100
        assert [scraper.metrics_port_for(e) for e in ranks] == [0, 0]
    finally:
        await scraper.stop()
