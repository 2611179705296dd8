"""The pod process's side of `--workers N`: start the workers, feed them, watch them, restart them.

- The ext_proc port is reserved first (a socket bound with SO_REUSEPORT, never listening, kept open), so
  `--grpc-port 0` means one free port for every worker, and a port taken by another program fails at once.
- Each worker gets the pod's settings (`settings.json` in a private 0700 directory that also holds the
  `ipc://` sockets), says hello on the control channel and is sent the whole picture, then every change:
  datastore updates (`PicturePublisher`), each config generation the pod's reloader made live.
- Ready when every worker is: `ReadinessState.set_workers`. A worker that exits unexpectedly is counted
  (`epp_worker_restarts_total`), the others are told to forget its in-flight share, and it is started
  again: a warm spare process (started once all workers are ready, everything imported, waiting) takes
  its place at once, or a new process starts, after a back-off (0.1 s, doubling up to 5 s) when the
  worker had failed within 2 s of its start.
- `/metrics`: `collect()` asks every worker for its request-path families before a scrape (and every
  5 s, so a worker that dies takes at most that much of its counts with it); `collector` adds them up
  (`epp.workers.metrics_merge`).
- Stop: SIGTERM to every worker (each drains its streams for 5 s), SIGKILL to any still running after.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import pickle
import shutil
import signal
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

from epp.datalayer.datastore import Datastore
from epp.extproc.health import ReadinessState
from epp.observability.metrics import WORKER_MAX_GAUGES, WORKER_METRICS, EppMetrics
from epp.scheduling.pipeline import Pipeline, PipelineHolder
from epp.settings import EppSettings
from epp.workers import control as c
from epp.workers.codec import pack
from epp.workers.control import ControlServer
from epp.workers.metrics_merge import WorkerMetrics
from epp.workers.picture import PicturePublisher

__all__ = ["WorkerPool", "config_message", "reserve_port"]

log = logging.getLogger("epp.workers")

#: Seconds between collections of the workers' metrics besides those a scrape asks for.
COLLECT_INTERVAL = 5.0
#: A worker that lives at least this long before failing is replaced at once; one that fails sooner
#: (a crash loop) after a back-off.
_STABLE_AFTER = 2.0
_BACKOFF_MIN = 0.1
_BACKOFF_MAX = 5.0


def reserve_port(host: str, port: int) -> socket.socket:
    """A socket bound to `host:port` with SO_REUSEPORT (never listening): the workers' port group."""
    addr = host.strip("[]")
    family = socket.AF_INET6 if (":" in addr or not addr) else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind((addr or "::", port))
    except OSError:
        sock.close()
        raise
    return sock


def config_message(pipeline: Pipeline) -> dict[str, Any]:
    return {
        "generation": pipeline.generation,
        "text": pipeline.config_text,
        "source": pipeline.source,
        "hash": pipeline.config_hash,
    }


@dataclass(slots=True)
class _Slot:
    index: int
    incarnation: int = 0
    proc: asyncio.subprocess.Process | None = None
    identity: bytes | None = None
    ready: bool = False
    generation: int = 0
    started_at: float = 0.0
    collected: asyncio.Future[bytes] | None = field(default=None, repr=False)


@dataclass(slots=True)
class _Spare:
    number: int
    proc: asyncio.subprocess.Process
    identity: bytes | None = None  # known once it said hello


class WorkerPool:
    def __init__(
        self,
        settings: EppSettings,
        count: int,
        *,
        datastore: Datastore,
        holder: PipelineHolder,
        readiness: ReadinessState,
        metrics: EppMetrics,
        host: str,
        replica: str = "",
    ) -> None:
        self.settings = settings
        self.replica = replica  # set: active-active
        self.count = count
        self.datastore = datastore
        self.holder = holder
        self.readiness = readiness
        self.metrics = metrics
        self.host = host
        self.collector = WorkerMetrics(max_gauges=metrics.family_names(WORKER_MAX_GAUGES))
        self.worker_families = metrics.family_names(WORKER_METRICS)
        self.slots = [_Slot(i) for i in range(count)]
        self.directory = ""
        self.port = 0
        self._stop = asyncio.Event()
        self.control: ControlServer | None = None
        self.publisher = PicturePublisher(datastore, self._broadcast)
        self._reservation: socket.socket | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._token = 0
        self._applied: dict[int, set[int]] = {}  # config generation -> slots that built it
        self._spare: _Spare | None = None
        self._spares = 0
        self._spare_taken = asyncio.Event()
        self._all_ready = asyncio.Event()
        self._share: bytes | None = None  # a peer's snapshot, for workers that start before all took it
        self._shared: dict[int, asyncio.Future[bytes | None]] = {}

    # ---- lifecycle ----------------------------------------------------------------------------------

    async def start(self) -> int:
        """Reserve the port, start every worker; returns the ext_proc port (readiness follows later)."""
        self._reservation = reserve_port(self.host, self.settings.grpc_port)
        self.port = int(self._reservation.getsockname()[1])
        self.directory = tempfile.mkdtemp(prefix="epp-")
        os.chmod(self.directory, 0o700)
        values = self.settings.model_dump(mode="json")
        values["grpc_port"] = self.port
        with open(os.path.join(self.directory, "settings.json"), "w") as f:
            json.dump(values, f)
        self.control = ControlServer(f"ipc://{self.directory}/control", self._on_message)
        self.control.start()
        self.publisher.start()
        self.holder.subscribe(self._on_swap)
        self.readiness.set_workers(False)
        for slot in self.slots:
            self._spawn(self._supervise(slot), f"worker-{slot.index}")
        self._spawn(self._collect_every(COLLECT_INTERVAL), "worker-metrics")
        self._spawn(self._keep_spare(), "worker-spare")
        self._gauge()
        log.info("starting %d workers on ext_proc port %d", self.count, self.port)
        return self.port

    def _spawn(self, coro: Any, name: str) -> None:
        self._tasks.append(asyncio.create_task(coro, name=name))

    async def _process(self, slot: int, incarnation: int) -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "epp.workers.worker",
            "--dir",
            self.directory,
            "--slot",
            str(slot),
            "--incarnation",
            str(incarnation),
            "--slots",
            str(self.count),
            "--parent",
            str(os.getpid()),
            *(("--replica", self.replica) if self.replica else ()),
            stdin=asyncio.subprocess.DEVNULL,
        )

    async def _supervise(self, slot: _Slot) -> None:
        backoff = _BACKOFF_MIN
        while not self._stop.is_set():
            slot.incarnation += 1
            slot.started_at = time.monotonic()
            spare = self._spare
            if spare is not None and spare.identity is not None and spare.proc.returncode is None:
                # the warm spare has everything imported: it serves in a fraction of a cold start
                assert self.control is not None
                self._spare = None
                self._spare_taken.set()
                self._gauge()
                slot.proc = spare.proc
                self.control.send(spare.identity, [c.ASSIGN, slot.index, slot.incarnation])
            else:
                slot.proc = await self._process(slot.index, slot.incarnation)
            code = await slot.proc.wait()
            self._lost(slot)
            if self._stop.is_set():
                return
            self.metrics.workers.restarts.inc()
            lived = time.monotonic() - slot.started_at
            delay = 0.0 if lived > _STABLE_AFTER else backoff
            backoff = _BACKOFF_MIN if lived > _STABLE_AFTER else min(backoff * 2, _BACKOFF_MAX)
            log.error(
                "worker %d (pid %d) exited with status %s after %.1f s; replacing it%s",
                slot.index,
                slot.proc.pid,
                code,
                lived,
                f" in {delay:.1f} s" if delay else "",
            )
            if delay:
                await asyncio.sleep(delay)

    async def _keep_spare(self) -> None:
        """One warm spare process while the pool runs, started once every worker is ready (so that it
        does not slow their start), and again each time one is taken."""
        await self._all_ready.wait()
        backoff = _BACKOFF_MIN
        while not self._stop.is_set():
            self._spare_taken.clear()
            self._spares += 1
            spare = self._spare = _Spare(self._spares, await self._process(-1, self._spares))
            died = asyncio.ensure_future(spare.proc.wait())
            taken = asyncio.ensure_future(self._spare_taken.wait())
            try:
                await asyncio.wait({died, taken}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                died.cancel()
                taken.cancel()
            if self._spare is spare:  # it died idle: start another after a pause
                self._spare = None
                if not self._stop.is_set():
                    log.warning("the warm spare worker (pid %d) exited; starting another", spare.proc.pid)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, _BACKOFF_MAX)
            else:
                backoff = _BACKOFF_MIN

    def _lost(self, slot: _Slot) -> None:
        slot.ready = False
        slot.identity = None
        if slot.collected is not None and not slot.collected.done():
            slot.collected.cancel()
        self.collector.retire(slot.index)
        self._broadcast(pack([c.GONE, slot.index]))
        self._update_readiness()

    async def stop(self, grace: float = 5.0) -> None:
        """SIGTERM every worker (they drain for up to `grace`), SIGKILL what is left, clean up."""
        self._stop.set()
        procs = [s.proc for s in self.slots if s.proc is not None and s.proc.returncode is None]
        if self._spare is not None and self._spare.proc.returncode is None:
            procs.append(self._spare.proc)
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        if procs:
            waits = [asyncio.ensure_future(p.wait()) for p in procs]
            _, pending = await asyncio.wait(waits, timeout=grace + 2)
            for proc in procs:
                if proc.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
            if pending:
                await asyncio.wait(pending, timeout=5)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.control is not None:
            self.control.close()
        if self._reservation is not None:
            self._reservation.close()
        if self.directory:
            shutil.rmtree(self.directory, ignore_errors=True)

    @property
    def pids(self) -> list[int]:
        return [s.proc.pid for s in self.slots if s.proc is not None and s.proc.returncode is None]

    # ---- control messages ---------------------------------------------------------------------------

    def _broadcast(self, data: bytes) -> None:
        if self.control is None:
            return
        for slot in self.slots:
            if slot.identity is not None:
                self.control.send_packed(slot.identity, data)

    def _slot_of(self, identity: bytes) -> _Slot | None:
        for slot in self.slots:
            if slot.identity == identity:
                return slot
        return None

    def _on_message(self, identity: bytes, message: list[Any]) -> None:
        kind = message[0]
        if kind == c.HELLO:
            self._hello(identity, int(message[1]), int(message[2]))
            return
        slot = self._slot_of(identity)
        if slot is None:
            return  # a worker from before a restart
        if kind == c.READY:
            slot.ready = bool(message[1])
            self._update_readiness()
        elif kind == c.APPLIED:
            self._applied_by(slot, int(message[1]), bool(message[2]), str(message[3]))
        elif kind == c.FAMILIES and slot.collected is not None and not slot.collected.done():
            slot.collected.set_result(message[2])
        elif kind == c.SHARED:
            waiting = self._shared.pop(int(message[1]), None)
            if waiting is not None and not waiting.done():
                waiting.set_result(message[2])

    def _hello(self, identity: bytes, index: int, incarnation: int) -> None:
        spare = self._spare
        if index == -1 and spare is not None and spare.number == incarnation:
            spare.identity = identity
            self._gauge()
            return
        if not 0 <= index < self.count or self.control is None:
            return
        slot = self.slots[index]
        if incarnation != slot.incarnation:
            return
        slot.identity = identity
        slot.generation = self.holder.current.generation
        picture = {"config": config_message(self.holder.current), **self.publisher.snapshot()}
        self.control.send(identity, [c.SNAPSHOT, picture])
        if self._share is not None:
            self.control.send(identity, [c.SHARE, self._share])

    def _on_swap(self, old: Pipeline, new: Pipeline) -> None:
        self._applied[new.generation] = set()
        self._broadcast(pack([c.CONFIG, config_message(new)]))

    def _applied_by(self, slot: _Slot, generation: int, ok: bool, error: str) -> None:
        if not ok:
            log.error("worker %d refused config generation %d: %s", slot.index, generation, error)
            return
        slot.generation = generation
        done = self._applied.setdefault(generation, set())
        done.add(slot.index)
        if len(done) == self.count:
            del self._applied[generation]
            log.info("config generation %d is live on all %d workers", generation, self.count)

    # ---- readiness, metrics -------------------------------------------------------------------------

    def _update_readiness(self) -> None:
        ready = all(s.ready for s in self.slots)
        if ready:
            self._all_ready.set()
            self._share = None
        if ready != self.readiness.workers_ready:
            self.readiness.set_workers(ready)
            log.info("workers: %d of %d ready", sum(s.ready for s in self.slots), self.count)
        self._gauge()

    def _gauge(self) -> None:
        ready = sum(s.ready for s in self.slots)
        self.metrics.workers.processes.labels("ready").set(ready)
        self.metrics.workers.processes.labels("starting").set(self.count - ready)
        spare = self._spare
        spare_waiting = int(spare is not None and spare.identity is not None)
        self.metrics.workers.processes.labels("spare").set(spare_waiting)

    # ---- active-active: shared-state snapshots ------------------------------------------------------

    async def snapshot(self, timeout: float = 2.0) -> bytes | None:
        """A ready worker's shared-state snapshot (every worker holds the same), for a starting peer."""
        slot = next((s for s in self.slots if s.identity is not None and s.ready), None)
        if slot is None or slot.identity is None or self.control is None:
            return None
        self._token += 1
        token = self._token
        waiting = self._shared[token] = asyncio.get_running_loop().create_future()
        self.control.send(slot.identity, [c.SHARE_ASK, token])
        try:
            return await asyncio.wait_for(waiting, timeout)
        except TimeoutError:
            log.warning("worker %d gave no shared-state snapshot within %.1f s", slot.index, timeout)
            return None
        finally:
            self._shared.pop(token, None)

    async def apply_snapshot(self, data: bytes) -> int:
        """A peer's snapshot to every worker (and to those that say hello until all are ready)."""
        self._share = None if self._all_ready.is_set() else data
        self._broadcast(pack([c.SHARE, data]))
        return sum(1 for s in self.slots if s.identity is not None)

    async def _collect_every(self, interval: float) -> None:
        """Between scrapes too, so a worker that dies takes at most `interval` of its counts with it."""
        while True:
            await asyncio.sleep(interval)
            await self.collect()

    async def collect(self, timeout: float = 2.0) -> None:
        """Ask every ready worker for its metric families (for the next `/metrics` answer)."""
        if self.control is None:
            return
        self._token += 1
        loop = asyncio.get_running_loop()
        waiting: dict[int, asyncio.Future[bytes]] = {}
        for slot in self.slots:
            if slot.identity is not None and slot.ready:
                slot.collected = waiting[slot.index] = loop.create_future()
                self.control.send(slot.identity, [c.COLLECT, self._token])
        if not waiting:
            return
        await asyncio.wait(waiting.values(), timeout=timeout)
        for index, fut in waiting.items():
            if fut.done() and not fut.cancelled():
                try:
                    self.collector.update(index, pickle.loads(fut.result()))
                except Exception:
                    log.exception("metrics of worker %d could not be read", index)
            else:
                fut.cancel()
                log.warning("worker %d did not send its metrics within %.1f s", index, timeout)
