"""A worker process: ext_proc on the pod's shared port, a copy of the pod's fleet picture, shared state.

Started by the pod process (`epp.workers.pool`) as `python -m epp.workers.worker --dir D --slot I
--incarnation N --slots K`; its settings are the pod process's (`D/settings.json`). With `--slot -1` it
is the warm spare: it imports and builds what it can, then waits to be told which worker to replace.
A worker says hello on the control channel, gets the whole picture (config, endpoints and their
metrics, objectives, rewrite rules), builds the pipeline, listens on the shared ext_proc port and says
it is ready; from then on it applies what the pod process sends and shares its routing decisions with
the other workers (`statebus`).

It never talks to the model servers, Kubernetes or the config file itself, and serves no health or
metrics port: the pod process does, for all of them. It exits when told to (SIGTERM: stop accepting,
drain for 5 s) and when the pod process dies (it would be orphaned).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import logging
import os
import pickle
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from epp import __version__
from epp.builtins import default_flow_policies, default_registry
from epp.config import build_pipeline, load_config
from epp.datalayer.datastore import Datastore
from epp.datalayer.k8s_notifications import LazyObjectWatcher, ObjectWatcher
from epp.datalayer.sources import configured_source_kind
from epp.errors import ConfigError
from epp.extproc.server import ExtProcServer
from epp.extproc.tls import TlsOptions
from epp.flowcontrol.admission import FlowControlAdmission
from epp.flowcontrol.observe import PrometheusFlowObserver
from epp.logs import configure_logging, set_worker_label
from epp.observability.metrics import WORKER_METRICS, EppMetrics
from epp.observability.pool import PoolMetricsRefresher
from epp.observability.tracing import OtelTracing, start_tracing
from epp.plugin_runtime import PluginRuntime
from epp.registry import PluginRegistry
from epp.requestcontrol.context import RequestOptions
from epp.scheduling.pipeline import Pipeline, PipelineHolder
from epp.settings import EppSettings
from epp.workers import control as c
from epp.workers.codec import decode_endpoint, decode_metrics, decode_rules
from epp.workers.control import ControlClient
from epp.workers.statebus import StateBus, peers_address

__all__ = ["Worker", "apply_picture_message", "main", "mirror_all", "request_options"]

log = logging.getLogger("epp.worker")

#: How long a new worker waits for the pod process's picture before giving up.
SNAPSHOT_TIMEOUT = 60.0
_PR_SET_PDEATHSIG = 1


def _object_watcher(s: EppSettings) -> Callable[[], ObjectWatcher]:
    """How a worker makes the watcher of its `k8s-notification-source` plugins (each worker runs its own
    watches, as it runs its own KV-event subscriptions)."""

    def make() -> ObjectWatcher:
        from typing import cast

        from kubernetes import config

        from epp.k8s.client import load_api_client
        from epp.k8s.notifications import KubeObjectWatcher

        if s.kubeconfig:
            loader = cast(Any, config)  # the kubernetes package has no type hints
            return KubeObjectWatcher(loader.new_client_from_config(config_file=s.kubeconfig))
        return KubeObjectWatcher(load_api_client())

    return make


def request_options(s: EppSettings) -> RequestOptions:
    return RequestOptions(
        metrics_staleness=s.metrics_staleness_threshold,
        disable_endpoint_subset_filter=s.disable_endpoint_subset_filter,
        decision_header=s.enable_decision_header,
        max_request_body_bytes=s.max_request_body_bytes,
        track_token_usage=s.track_token_usage,
    )


def build_generation(
    config: dict[str, Any], registry: PluginRegistry, metrics: EppMetrics, previous: Pipeline | None
) -> Pipeline:
    """The pipeline of one config generation, from the bytes the pod process loaded (None: default)."""
    text = config["text"]
    source = config["source"]
    loaded = load_config(text, registry=registry, source=source, log_warnings=False)
    return build_pipeline(
        loaded,
        registry,
        generation=config["generation"],
        observer=metrics,
        metrics=metrics,
        previous=previous,
        source=source,
        config_hash=config["hash"],
        config_text=text,
    )


def mirror_all(datastore: Datastore, endpoints: list[Any]) -> None:
    """Make `datastore` hold exactly `endpoints`."""
    keys = {e.key for e in endpoints}
    current = datastore.keys()
    datastore.mirror(endpoints, [k for k in current if k not in keys])


def apply_picture_message(datastore: Datastore, message: list[Any]) -> bool:
    """Apply a fleet-picture message of the pod process (`epp.workers.picture`) to a worker's copy of the
    datastore; False when the message is about something else."""
    kind = message[0]
    if kind == c.UPDATE:
        datastore.refresh([(key, decode_metrics(m), healthy) for key, m, healthy in message[1]])
    elif kind == c.ENDPOINTS:
        mirror_all(datastore, [decode_endpoint(v) for v in message[1]])
    elif kind == c.SNAPSHOT:
        picture = message[1]
        mirror_all(datastore, [decode_endpoint(v) for v in picture["endpoints"]])
        datastore.set_objectives(picture["objectives"])
        datastore.set_rewrite_rules(decode_rules(picture["rules"]))
        if picture["synced"]:
            datastore.mark_synced()
    elif kind == c.OBJECTIVES:
        datastore.set_objectives(message[1])
    elif kind == c.RULES:
        datastore.set_rewrite_rules(decode_rules(message[1]))
    elif kind == c.SYNCED:
        datastore.mark_synced()
    else:
        return False
    return True


class Worker:
    def __init__(
        self,
        settings: EppSettings,
        *,
        directory: str,
        slot: int,
        incarnation: int,
        slots: int,
        replica: str = "",
    ) -> None:
        self.settings = settings
        self.replica = replica  # set: active-active, this pod's replica id
        self.directory = directory
        self.slot = slot
        self.incarnation = incarnation
        self.slots = slots
        self.registry = default_registry()
        self.metrics = EppMetrics(CollectorRegistry(), pool_name=settings.pool_name or "static")
        self.worker_families = self.metrics.family_names(WORKER_METRICS)
        self.datastore = Datastore()
        name = f"{slot}.{incarnation}" if slot >= 0 else f"spare.{incarnation}"
        self.client = ControlClient(f"ipc://{directory}/control", name.encode(), self._on_control)
        self._waiting: asyncio.Future[list[Any]] | None = None  # for the snapshot, or (spare) an assignment
        self._configs: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.holder: PipelineHolder | None = None
        self.server: ExtProcServer | None = None
        self.bus: StateBus | None = None
        self._shares: list[bytes] = []  # peers' snapshots that came before the bus
        self.plugins: PluginRuntime | None = None
        self.admission: FlowControlAdmission | None = None
        self.tracing: OtelTracing | None = None
        self.stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []

    # ---- start --------------------------------------------------------------------------------------

    async def _wait_for(self, kind: str, timeout: float | None = None) -> list[Any]:
        self._waiting = asyncio.get_running_loop().create_future()
        message = await asyncio.wait_for(self._waiting, timeout)
        self._waiting = None
        if message[0] != kind:
            raise RuntimeError(f"expected {kind!r} from the pod process, got {message[0]!r}")
        return message

    async def wait_for_assignment(self) -> None:
        """The warm spare: everything imported and built that can be, until the pod process says which
        worker to become (a worker died)."""
        self.client.send([c.HELLO, -1, self.incarnation, os.getpid()])
        message = await self._wait_for(c.ASSIGN)
        self.slot, self.incarnation = int(message[1]), int(message[2])
        set_worker_label(str(self.slot))
        log.info("the warm spare becomes worker %d", self.slot)

    async def start(self) -> None:
        self.client.start()
        if self.slot < 0:
            await self.wait_for_assignment()
        self.client.send([c.HELLO, self.slot, self.incarnation, os.getpid()])
        message = await self._wait_for(c.SNAPSHOT, SNAPSHOT_TIMEOUT)
        config = message[1]["config"]
        pipeline = await asyncio.to_thread(build_generation, config, self.registry, self.metrics, None)
        self.holder = holder = PipelineHolder(pipeline)
        s = self.settings
        self.admission = FlowControlAdmission(
            self.datastore,
            s.metrics_staleness_threshold,
            default_policies=default_flow_policies,
            observer=PrometheusFlowObserver(self.metrics),
        )
        self.tracing = start_tracing(s.tracing, version=__version__, worker=str(self.slot))
        self.server = ExtProcServer(
            holder,
            self.datastore,
            self.metrics,
            request_options(s),
            admission=self.admission,
            tracer=self.tracing,
        )
        self.bus = StateBus(
            holder,
            directory=self.directory,
            slot=self.slot,
            incarnation=self.incarnation,
            slots=self.slots,
            on_message=self.metrics.sync_message,
            replica=self.replica,
            extra_sources=[peers_address(self.directory)] if self.replica else (),
        )
        self.bus.start()
        for share in self._shares:
            self.bus.import_snapshot(share)
        self._shares.clear()
        self.server.director.on_state_change = self.bus.notify
        self.plugins = PluginRuntime(
            holder,
            self.datastore,
            log_membership=False,
            object_watcher=None
            if configured_source_kind(s) == "static"
            else LazyObjectWatcher(_object_watcher(s)),
        )
        self.plugins.start()
        self.plugins.tell_membership()
        self.metrics.count_tasks_of(asyncio.get_running_loop(), worker=True)
        tls = TlsOptions(cert_path=s.cert_path, reload=s.enable_cert_reload) if s.secure_serving else None
        host = s.bind_address or "[::]"
        await self.server.start(s.grpc_port, tls, host=host, reuse_port=True)
        refresher = PoolMetricsRefresher(
            self.metrics,
            self.datastore,
            lambda: holder.current.plugins.values(),
            interval=s.refresh_prometheus_metrics_interval,
            staleness=s.metrics_staleness_threshold,
        )
        self._spawn(refresher.run(), "pool-gauges")
        self._spawn(self._reloads(), "reloads")
        self._spawn(self._watch_parent(os.getppid()), "parent")
        self.client.send([c.READY, True])
        log.info(
            "worker %d (pid %d) ready: ext_proc %d, config generation %d, %d endpoints",
            self.slot,
            os.getpid(),
            s.grpc_port,
            pipeline.generation,
            len(self.datastore),
        )

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        task.add_done_callback(self._task_done)
        self._tasks.append(task)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        if task.cancelled() or self.stopping.is_set():
            return
        exc = task.exception()
        log.error("worker %d: %s ended (%r): stopping", self.slot, task.get_name(), exc, exc_info=exc)
        self.stopping.set()

    # ---- control messages ---------------------------------------------------------------------------

    def _on_control(self, message: list[Any]) -> None:
        """Every message from the pod process, in order, on the event loop; the picture is applied at once
        (also before the pipeline is built), config generations are built in order by `_reloads`."""
        kind = message[0]
        if apply_picture_message(self.datastore, message):
            if kind == c.SNAPSHOT and self._waiting is not None and not self._waiting.done():
                self._waiting.set_result(message)
        elif kind == c.ASSIGN:
            if self._waiting is not None and not self._waiting.done():
                self._waiting.set_result(message)
        elif kind == c.COLLECT:
            families = [f for f in self.metrics.registry.collect() if f.name in self.worker_families]
            data = pickle.dumps(families, protocol=pickle.HIGHEST_PROTOCOL)
            self.client.send([c.FAMILIES, message[1], data])
        elif kind == c.CONFIG:
            self._configs.put_nowait(message[1])
        elif kind == c.GONE and self.bus is not None:
            self.bus.forget_slot(int(message[1]))
        elif kind == c.SHARE_ASK:
            share = self.bus.export_snapshot() if self.bus is not None else None
            self.client.send([c.SHARED, message[1], share])
        elif kind == c.SHARE:
            if self.bus is None:
                self._shares.append(message[1])
            else:
                self.bus.import_snapshot(message[1])

    async def _reloads(self) -> None:
        while True:
            await self._reload(await self._configs.get())

    async def _reload(self, config: dict[str, Any]) -> None:
        holder = self.holder
        assert holder is not None
        generation = config["generation"]
        if generation <= holder.current.generation:
            self.client.send([c.APPLIED, generation, True, ""])  # the snapshot already had it
            return
        try:
            pipeline = await asyncio.to_thread(
                build_generation, config, self.registry, self.metrics, holder.current
            )
        except (ConfigError, Exception) as exc:  # the pod process validated it: this is a bug
            log.exception("worker %d cannot build config generation %d", self.slot, generation)
            self.client.send([c.APPLIED, generation, False, str(exc)])
            return
        holder.swap(pipeline)
        self.client.send([c.APPLIED, generation, True, ""])

    async def _watch_parent(self, parent: int) -> None:
        """The pod process died without stopping us (SIGKILL): stop too."""
        while os.getppid() == parent:
            await asyncio.sleep(1.0)
        log.error("worker %d: the pod process %d is gone; stopping", self.slot, parent)
        self.stopping.set()

    # ---- stop ---------------------------------------------------------------------------------------

    async def stop(self) -> None:
        self.client.send([c.READY, False])
        if self.server is not None:
            await self.server.stop(grace=5.0)
        if self.admission is not None:
            await self.admission.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.plugins is not None:
            await self.plugins.stop()
        if self.bus is not None:
            self.bus.close()
        if self.tracing is not None:
            await asyncio.to_thread(self.tracing.shutdown)  # flushes the spans still queued
        self.client.close()


def _die_with_parent() -> None:
    """Linux: SIGTERM when the pod process dies, however it dies."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


async def serve_worker(args: argparse.Namespace) -> int:
    data = json.loads((Path(args.dir) / "settings.json").read_text())
    settings = EppSettings.model_validate(data)
    worker = Worker(
        settings,
        directory=args.dir,
        slot=args.slot,
        incarnation=args.incarnation,
        slots=args.slots,
        replica=args.replica,
    )
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, worker.stopping.set)
    starting = asyncio.ensure_future(worker.start())
    stopping = asyncio.ensure_future(worker.stopping.wait())
    # a SIGTERM (the pod process died: PDEATHSIG, or it stops us) also ends a start still waiting, e.g.
    # the warm spare waiting for its assignment
    await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
    if not starting.done():
        starting.cancel()
        await asyncio.gather(starting, return_exceptions=True)
        stopping.cancel()
        await worker.stop()
        return 0
    try:
        starting.result()
    except Exception:
        log.exception("worker %d failed to start", args.slot)
        stopping.cancel()
        await worker.stop()
        return 1
    await stopping
    await worker.stop()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m epp.workers.worker", description=__doc__.split("\n\n")[0])
    p.add_argument("--dir", required=True, help="the pod process's private directory")
    p.add_argument("--slot", type=int, required=True)
    p.add_argument("--incarnation", type=int, required=True)
    p.add_argument("--slots", type=int, required=True)
    p.add_argument("--replica", default="", help="active-active: the pod's replica id")
    p.add_argument("--parent", type=int, default=0, help="the pod process's PID (0: not checked)")
    args = p.parse_args(argv)
    _die_with_parent()
    if args.parent and os.getppid() != args.parent:
        # the pod process died before PDEATHSIG was armed (it would never come): nobody to serve for
        return 0
    data = json.loads((Path(args.dir) / "settings.json").read_text())
    label = str(args.slot) if args.slot >= 0 else "spare"
    configure_logging(int(data.get("v", 2)), str(data.get("log_format", "console")), worker=label)
    return asyncio.run(serve_worker(args))


if __name__ == "__main__":
    sys.exit(main())
