"""The daemon's composition root: build every part from the settings, run them, stop them cleanly.

Start-up order matters for what users see: the config is loaded first (a bad config exits 2 before
anything listens), then the servers start listening (the ext_proc port answers within a second or two),
then the endpoint source and the scrape loops fill the datastore; readiness turns SERVING once the source
has synced and every endpoint has been scraped once (unreachable ones are retried, never fatal) and, with
leader election, only on the leader. Followers keep syncing and scraping (warm standby).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from epp import __version__
from epp.builtins import default_flow_policies, default_registry
from epp.config import build_pipeline, load_config, load_default_config
from epp.config.reloader import ConfigReloader
from epp.config.watcher import ConfigWatcher
from epp.datalayer.data_source import MetricsSourceDefaults
from epp.datalayer.datastore import Datastore
from epp.datalayer.k8s_notifications import (
    K8S_NOTIFICATION_SOURCE_TYPE,
    STATIC_MODE_REASON,
    LazyObjectWatcher,
    ObjectWatcher,
)
from epp.datalayer.metric_spec import MetricOverrides
from epp.datalayer.scraper import Scraper
from epp.datalayer.sources import EndpointSource, configured_source_kind, start_endpoint_source
from epp.datalayer.wiring import DataLayerSelector
from epp.errors import ConfigError, ConfigProblem, SettingsError
from epp.extproc.health import HealthServer, ReadinessState
from epp.extproc.server import ExtProcServer
from epp.extproc.tls import TlsOptions
from epp.flowcontrol.admission import FlowControlAdmission
from epp.flowcontrol.observe import PrometheusFlowObserver
from epp.ha.replica import replica_id
from epp.ha.runtime import ActiveActive
from epp.logs import configure_logging
from epp.observability.http import MetricsAuthorizer, MetricsHttpServer
from epp.observability.metrics import EppMetrics, build_commit
from epp.observability.pool import PoolMetricsRefresher
from epp.observability.tracing import OtelTracing, start_tracing
from epp.plugin_runtime import PluginRuntime
from epp.registry import PluginRegistry
from epp.scheduling.pipeline import Pipeline, PipelineHolder
from epp.settings import EppSettings, HaMode
from epp.workers.cpus import default_workers
from epp.workers.metrics_merge import ExcludingCollector
from epp.workers.pool import WorkerPool
from epp.workers.worker import request_options

__all__ = ["App", "run"]

log = logging.getLogger("epp")


def _effective_settings(settings: EppSettings) -> dict[str, Any]:
    """The settings worth logging at start-up: those set to something (config text shortened)."""
    values = settings.model_dump(mode="json")
    text = values.get("config_text")
    if isinstance(text, str) and len(text) > 80:
        values["config_text"] = f"<{len(text)} characters>"
    return {k: v for k, v in sorted(values.items()) if v not in (None, "", [], {})}


def _describe(settings: EppSettings) -> str:
    """The effective settings for the start-up log line."""
    return " ".join(f"{k}={v}" for k, v in _effective_settings(settings).items())


def _read_config_file(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(
            [ConfigProblem(path, 1, "", f"cannot read the config file: {exc.strerror or exc}")]
        ) from None


def _kubeconfig_client(path: str) -> Any:
    """An API client from a kubeconfig file (`--kubeconfig`)."""
    from kubernetes import client, config
    from kubernetes.config.config_exception import ConfigException

    cfg = client.Configuration()
    try:
        config.load_kube_config(config_file=path, client_configuration=cfg)  # type: ignore[no-untyped-call]
    except (ConfigException, OSError) as exc:
        raise SettingsError(f"--kubeconfig {path}: {exc}") from None
    return client.ApiClient(cfg)


class App:
    """All long-running parts of one daemon process."""

    def __init__(
        self,
        settings: EppSettings,
        *,
        registry: PluginRegistry | None = None,
        bind_host: str = "",
        k8s_api_client: Any = None,
        workers: int = 1,
    ) -> None:
        self.settings = settings
        self.workers = workers
        self.registry = registry or default_registry()
        if configured_source_kind(settings) == "static":  # refused at load, with FILE:LINE and why
            self.registry = self.registry.without({K8S_NOTIFICATION_SOURCE_TYPE: STATIC_MODE_REASON})
        self.bind_host = bind_host or str(getattr(settings, "bind_address", "") or "")
        self.k8s_api_client = k8s_api_client
        self.metrics = EppMetrics(CollectorRegistry(), pool_name=settings.pool_name or "static")
        self.metrics.set_info(commit=build_commit(), build_ref=__version__)
        self.datastore = Datastore()
        self.readiness = ReadinessState(leader_election=settings.ha_enable_leader_election)
        self.holder = PipelineHolder(self._initial_pipeline())
        self.stopping = asyncio.Event()
        self.grpc_port = 0
        self.health_port = 0
        self.metrics_port = 0
        self._tasks: list[asyncio.Task[Any]] = []
        self.plugins = PluginRuntime(
            self.holder,
            self.datastore,
            object_watcher=None
            if configured_source_kind(settings) == "static"
            else LazyObjectWatcher(self._object_watcher),
        )
        self._source: EndpointSource | None = None
        self._scraper: Scraper | None = None
        self._watcher: ConfigWatcher | None = None
        self._reloader: ConfigReloader | None = None
        self._elector: Any = None
        self.extproc: ExtProcServer | None = None
        self.pool: WorkerPool | None = None
        self.health: HealthServer | None = None
        self.metrics_http: MetricsHttpServer | None = None
        self.admission: FlowControlAdmission | None = None
        self.pool_metrics: PoolMetricsRefresher | None = None
        self.replica = replica_id() if settings.ha_mode is HaMode.ACTIVE_ACTIVE else ""
        self.active_active: ActiveActive | None = None
        self.ha_port = 0
        self.tracing: OtelTracing | None = None

    # ---- config ------------------------------------------------------------------------------------

    def _initial_pipeline(self) -> Pipeline:
        s = self.settings
        text: bytes | str | None = None
        if s.config_file:
            text = _read_config_file(s.config_file)
            config = load_config(text, registry=self.registry, source=s.config_file)
        elif s.config_text:
            text = s.config_text
            config = load_config(text, registry=self.registry)
        else:
            config = load_default_config(self.registry)
        pipeline = build_pipeline(
            config,
            self.registry,
            generation=1,
            observer=self.metrics,
            metrics=self.metrics,
            config_text=text,
        )
        self.metrics.record_config_loaded(pipeline.generation, pipeline.config_hash, pipeline.source)
        log.info(
            "config loaded from %s (sha256 %s): %s",
            pipeline.source,
            pipeline.config_hash[:12],
            json.dumps(pipeline.effective_config, separators=(",", ":"), default=str),
            extra={"fields": {"config": pipeline.effective_config}},
        )
        return pipeline

    # ---- lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        s = self.settings
        log.info(
            "epp %s starting with settings %s",
            __version__,
            _describe(s),
            extra={"fields": {"settings": _effective_settings(s)}},
        )
        if configured_source_kind(s) == "static":
            self.datastore.set_objectives(s.static_objectives)
        self.metrics.count_tasks_of(asyncio.get_running_loop())
        tls = TlsOptions(cert_path=s.cert_path, reload=s.enable_cert_reload) if s.secure_serving else None
        host = self.bind_host or "[::]"
        exposition, gather = await self._start_ext_proc(tls, host)
        self.health = HealthServer(self.readiness)
        self.health_port = await self.health.start(s.grpc_health_port, host=host)
        pool_metrics = await self._start_metrics_http(exposition, gather)

        if self.pool is None:
            self.plugins.start()  # with workers, the plugins that serve live there

        await self._start_endpoints()
        if self.replica:
            await self._start_active_active()
        self._spawn(self._watch_readiness(), "readiness")
        self._spawn(pool_metrics.run(), "pool-gauges")

        if s.ha_enable_leader_election:
            from epp.k8s.leader import start_leader_election

            self._elector = await start_leader_election(s, self.readiness, api_client=self._k8s_client())
        else:
            self.readiness.set_leader(True)

        if s.config_file:
            self._start_config_reloads(s.config_file)
        log.info(
            "epp listening: ext_proc %d (%s), health %d, metrics %d",
            self.grpc_port,
            "TLS" if tls else "plaintext",
            self.health_port,
            self.metrics_port,
        )

    async def _start_ext_proc(
        self, tls: TlsOptions | None, host: str
    ) -> tuple[CollectorRegistry, Callable[[], Awaitable[None]] | None]:
        """The ext_proc server: in this process, or (`--workers` > 1) worker processes sharing its port.

        Returns the registry `/metrics` exposes and, with workers, how to gather theirs before a scrape.
        """
        s = self.settings
        if self.workers <= 1:
            self.tracing = start_tracing(s.tracing, version=__version__)  # workers start their own
            self.admission = FlowControlAdmission(
                self.datastore,
                s.metrics_staleness_threshold,
                default_policies=default_flow_policies,
                observer=PrometheusFlowObserver(self.metrics),
            )
            self.extproc = ExtProcServer(
                self.holder,
                self.datastore,
                self.metrics,
                request_options(s),
                admission=self.admission,
                tracer=self.tracing,
            )
            self.grpc_port = await self.extproc.start(s.grpc_port, tls, host=host)
            return self.metrics.registry, None
        self.pool = WorkerPool(
            s,
            self.workers,
            datastore=self.datastore,
            holder=self.holder,
            readiness=self.readiness,
            metrics=self.metrics,
            host=host,
            replica=self.replica,
        )
        self.grpc_port = await self.pool.start()
        exposition = CollectorRegistry(auto_describe=False)
        exposition.register(ExcludingCollector(self.metrics.registry, self.pool.worker_families))
        exposition.register(self.pool.collector)
        return exposition, self.pool.collect

    async def _start_metrics_http(
        self, exposition: CollectorRegistry, gather: Callable[[], Awaitable[None]] | None
    ) -> PoolMetricsRefresher:
        """The `/metrics` server, and the pool gauges' refresher it brings up to date before a scrape."""
        s = self.settings
        self.pool_metrics = PoolMetricsRefresher(
            self.metrics,
            self.datastore,
            lambda: self.holder.current.plugins.values(),
            interval=s.refresh_prometheus_metrics_interval,
            staleness=s.metrics_staleness_threshold,
        )
        self.metrics_http = MetricsHttpServer(
            exposition,
            host=self.bind_host or "0.0.0.0",
            port=s.metrics_port,
            token_file=s.metrics_bearer_token_file,
            before_scrape=self.pool_metrics.before_scrape,
            gather=gather,
            authorizer=self._metrics_authorizer(),
        )
        self.metrics_port = await self.metrics_http.start()
        return self.pool_metrics

    def _metrics_authorizer(self) -> MetricsAuthorizer | None:
        """Kubernetes mode with `--metrics-endpoint-auth` (and no token file, which wins): the
        TokenReview + SubjectAccessReview check of /metrics; otherwise none."""
        s = self.settings
        if (
            configured_source_kind(s) == "static"
            or not s.metrics_endpoint_auth
            or s.metrics_bearer_token_file
        ):
            return None
        from epp.k8s.client import load_api_client
        from epp.k8s.metrics_auth import TokenReviewAuthorizer

        return TokenReviewAuthorizer(self._k8s_client() or load_api_client())

    async def _start_active_active(self) -> None:
        """`--ha-mode active-active`: the peer link (readiness waits for its bootstrap)."""
        self.active_active = ActiveActive(
            self.settings,
            replica=self.replica,
            holder=self.holder,
            metrics=self.metrics,
            readiness=self.readiness,
            pool=self.pool,
            director=self.extproc.director if self.extproc is not None else None,
            k8s_client=self._k8s_client,
            host=self.bind_host or "0.0.0.0",
        )
        self.ha_port = await self.active_active.start()

    async def _start_endpoints(self) -> None:
        """The endpoint source (static, InferencePool or label selector) and the model-server scraper."""
        s = self.settings
        self._source = await start_endpoint_source(
            s, self.datastore, build_kubernetes=self._kubernetes_source
        )
        self._spawn(self._source.run(), "endpoint-source")
        data_layer = DataLayerSelector(
            self.holder,
            MetricOverrides(
                queued=s.total_queued_requests_metric,
                running=s.total_running_requests_metric,
                kv_usage=s.kv_cache_usage_percentage_metric,
                lora=s.lora_info_metric,
                cache_info=s.cache_info_metric,
            ),
            MetricsSourceDefaults(
                scheme=str(s.model_server_metrics_scheme),
                path=s.model_server_metrics_path,
                insecure_skip_verify=s.model_server_metrics_https_insecure_skip_verify,
            ),
        )
        self._scraper = Scraper(
            self.datastore,
            data_source=data_layer.data_source,
            extractor=data_layer.extractor,
            interval=s.refresh_metrics_interval,
            metrics_port=s.model_server_metrics_port,
            on_error=lambda key: self.metrics.scrape.errors.labels(key).inc(),
        )
        await self._scraper.start()

    def _start_config_reloads(self, config_file: str) -> None:
        """Reloads of `--config-file`: on SIGHUP, and on change unless `--watch-config-file=false`."""
        s = self.settings
        self._reloader = ConfigReloader(
            self.holder,
            self.registry,
            source=config_file,
            metrics=self.metrics,
            observer=self.metrics,
        )
        if s.watch_config_file:
            self._watcher = ConfigWatcher(
                config_file,
                self._reloader.reload,
                initial_hash=self.holder.current.config_hash,
                debounce=s.config_reload_debounce,
            )
            self._spawn(self._watcher.run(), "config-watcher")

    def request_reload(self) -> None:
        """SIGHUP: re-read the config file now (also when it is not being watched)."""
        if self._watcher is not None:
            self._watcher.trigger()
        elif self._reloader is not None:
            self._spawn(self._reload_from_file(self._reloader), "sighup-reload")
        else:
            log.warning("SIGHUP ignored: the config does not come from --config-file")

    async def _reload_from_file(self, reloader: ConfigReloader) -> None:
        try:
            data = await asyncio.to_thread(Path(self.settings.config_file or "").read_bytes)
        except OSError as exc:
            log.error(
                "SIGHUP: cannot read %s: %s (keeping the running config)", self.settings.config_file, exc
            )
            return
        await reloader.reload(data)

    async def stop(self) -> None:
        """Graceful shutdown: stop being ready, release the lease, drain in-flight streams, stop loops.

        The lease goes first so that the standby takes over while this replica drains, rather than after.
        """
        self.readiness.set_draining()
        if self._watcher is not None:
            self._watcher.stop()
        if self._elector is not None:
            await self._elector.stop()
        if self.extproc is not None:
            await self.extproc.stop(grace=5.0)
        if self.active_active is not None:
            await self.active_active.stop()
        if self.pool is not None:
            await self.pool.stop(grace=5.0)
        if self._scraper is not None:
            await self._scraper.stop()
        if self._source is not None:
            await self._source.stop()
        if self.admission is not None:
            await self.admission.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.plugins.stop()
        if self.health is not None:
            await self.health.stop()
        if self.metrics_http is not None:
            await self.metrics_http.stop()
        if self.tracing is not None:
            await asyncio.to_thread(self.tracing.shutdown)  # flushes the spans still queued
        log.info("epp stopped")

    # ---- background loops --------------------------------------------------------------------------

    def _kubernetes_source(self, kind: str, settings: object, datastore: Datastore) -> EndpointSource:
        """The Kubernetes endpoint source, imported only when one is configured (a static daemon never
        loads the Kubernetes client)."""
        from epp.k8s.sources import build_kubernetes_source

        return build_kubernetes_source(kind, settings, datastore, api_client=self._k8s_client())

    def _object_watcher(self) -> ObjectWatcher:
        """The watches of `k8s-notification-source` plugins, on the daemon's Kubernetes client."""
        from epp.k8s.client import load_api_client
        from epp.k8s.notifications import KubeObjectWatcher

        return KubeObjectWatcher(self._k8s_client() or load_api_client())

    def _k8s_client(self) -> Any:
        """The API client given, or one from `--kubeconfig` (made once), or None: the in-cluster default."""
        if self.k8s_api_client is None and self.settings.kubeconfig:
            self.k8s_api_client = _kubeconfig_client(self.settings.kubeconfig)
        return self.k8s_api_client

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        task.add_done_callback(self._task_done)
        self._tasks.append(task)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        with contextlib.suppress(ValueError):
            self._tasks.remove(task)  # one-shot tasks (a SIGHUP reload) must not pile up
        if task.cancelled() or self.stopping.is_set():
            return
        exc = task.exception()
        if exc is not None:
            log.error("background task %s died: %r; stopping", task.get_name(), exc, exc_info=exc)
            self.stopping.set()

    async def _watch_readiness(self) -> None:
        synced = asyncio.Event()
        if self.datastore.synced:
            synced.set()
        else:
            self.datastore.subscribe_synced(synced.set)
        await synced.wait()
        self.readiness.set_synced(True)
        assert self._scraper is not None
        await self._scraper.first_round_done.wait()
        self.readiness.set_scraped(True)
        if self.pool_metrics is not None:
            self.pool_metrics.refresh_now()  # the pool gauges reflect the first scrape at once
        log.info(
            "endpoints synced (%d) and scraped once%s",
            len(self.datastore),
            ": ready" if self.readiness.ready else "; readiness waits for the rest (workers, leadership)",
        )


def resolve_workers(settings: EppSettings) -> int:
    """`--workers`: 0 = the CPUs this process may use (at most 8)."""
    return settings.workers or default_workers()


async def serve(settings: EppSettings, *, ready: Callable[[App], None] | None = None) -> int:
    """Run the daemon until SIGTERM/SIGINT; returns the process exit code."""
    try:
        app = App(settings, workers=resolve_workers(settings))
    except ConfigError as exc:
        print(f"epp: invalid config:\n{exc}", file=sys.stderr)
        return 2
    except SettingsError as exc:
        print(f"epp: {exc}", file=sys.stderr)
        return 2
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, app.stopping.set)
    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(signal.SIGHUP, app.request_reload)
    try:
        await app.start()
    except SettingsError as exc:
        print(f"epp: {exc}", file=sys.stderr)
        await app.stop()
        return 2
    except Exception:
        log.exception("start-up failed")
        await app.stop()  # the servers already listening are closed cleanly
        return 1
    if ready is not None:
        ready(app)
    await app.stopping.wait()
    log.info("shutting down")
    await app.stop()
    return 0


def run(settings: EppSettings) -> int:
    """Entry point used by `epp` / `epp serve` after flag parsing."""
    configure_logging(settings.v, str(settings.log_format))
    return asyncio.run(serve(settings))
