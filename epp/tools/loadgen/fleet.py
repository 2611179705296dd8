"""A fleet of simulated model servers on free loopback ports, in-process or one subprocess each.

`SimFleet([SimConfig(...), ...])` starts them (`mode="inprocess"` runs `SimServer`s on the current
event loop; `mode="subprocess"` runs `python -m epp.tools.sim --port 0 ...` per server and reads the chosen
port from its first stdout line), reads their `/admin/stats` counters, resets caches and counters
between runs, and stops them: subprocesses by their PID (SIGTERM, then SIGKILL after a grace period).
`fleet_stats` turns the counters into what reports need: hit ratio in tokens, balance, busy time.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import aiohttp

from epp.tools.sim import SimConfig, SimServer
from epp.tools.sim.config import GPU_CLASS_FIELDS

__all__ = ["FleetMode", "FleetStats", "SimFleet", "SimMember", "fleet_stats", "sim_argv"]

FleetMode = Literal["inprocess", "subprocess"]
_LISTENING = "epp-sim listening on "
_NO_FLAG = frozenset({"host", "port", "vocab_size"})


def sim_argv(config: SimConfig) -> list[str]:
    """`epp sim` flags for `config` (only values that differ from the defaults; port 0 = any free one).

    The defaults are those of `config`'s hardware class (`--gpu`), so a value the class sets is not
    repeated and an explicit one that equals the h100 default is still passed.
    """
    default, hardware = SimConfig(), SimConfig(gpu=config.gpu)
    if config.vocab_size != default.vocab_size:
        raise ValueError("vocab_size has no `epp sim` flag; use mode='inprocess'")
    args = ["--host", config.host, "--port", str(config.port)]
    for f in dataclasses.fields(SimConfig):
        if f.name in _NO_FLAG:
            continue
        value = getattr(config, f.name)
        ref = getattr(hardware if f.name in GPU_CLASS_FIELDS else default, f.name)
        if value == ref or value is None:
            continue
        if isinstance(value, tuple):
            value = ",".join(value)
        args += [f"--{f.name.replace('_', '-')}", str(value)]
    return args


@dataclass(slots=True)
class SimMember:
    """One running simulator: its name, `host:port` address and URL; `pid` for subprocesses."""

    config: SimConfig
    name: str = ""
    url: str = ""
    server: SimServer | None = None
    process: asyncio.subprocess.Process | None = None

    @property
    def address(self) -> str:
        return self.url.removeprefix("http://")

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None


class SimFleet:
    """Simulators for one run or many. `async with SimFleet(configs) as fleet:` or start()/stop()."""

    def __init__(
        self,
        configs: Sequence[SimConfig],
        *,
        mode: FleetMode = "inprocess",
        python: str = sys.executable,
        log_dir: str | Path | None = None,
        log_level: str = "warning",
    ) -> None:
        if mode not in ("inprocess", "subprocess"):
            raise ValueError(f"mode must be 'inprocess' or 'subprocess', got {mode!r}")
        self.mode: FleetMode = mode
        self.python = python
        self.log_dir = Path(log_dir) if log_dir is not None else None
        self.log_level = log_level
        self.members = [SimMember(config=c) for c in configs]
        self._http: aiohttp.ClientSession | None = None

    @property
    def addresses(self) -> list[str]:
        return [m.address for m in self.members]

    @property
    def names(self) -> list[str]:
        return [m.name for m in self.members]

    async def __aenter__(self) -> SimFleet:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self, timeout: float = 30.0) -> SimFleet:
        """Start every simulator (concurrently) and wait until each serves; on failure stop them all."""
        try:
            async with asyncio.timeout(timeout):
                await asyncio.gather(*(self._start_one(m) for m in self.members))
        except BaseException:
            await self.stop()
            raise
        return self

    async def _start_one(self, member: SimMember) -> None:
        if self.mode == "inprocess":
            member.server = SimServer(member.config)
            await member.server.start()
            member.name, member.url = member.server.name, member.server.url
            return
        if self.log_dir is None:
            self.log_dir = Path(tempfile.mkdtemp(prefix="epp-fleet-"))
        index = self.members.index(member)
        log_path = self.log_dir / f"sim-{index}.log"
        argv = [self.python, "-m", "epp.tools.sim", *sim_argv(member.config), "--log-level", self.log_level]
        with log_path.open("ab") as log:
            member.process = await asyncio.create_subprocess_exec(
                *argv, stdout=asyncio.subprocess.PIPE, stderr=log, stdin=asyncio.subprocess.DEVNULL
            )
        assert member.process.stdout is not None
        line = (await member.process.stdout.readline()).decode(errors="replace").strip()
        if not line.startswith(_LISTENING):
            await member.process.wait()
            log_text = log_path.read_text(errors="replace")[-2000:]
            raise RuntimeError(
                f"epp sim exited with {member.process.returncode} before listening:\n{log_text}"
            )
        url, _, name = line[len(_LISTENING) :].partition(" name=")
        member.url, member.name = url, name

    async def crash(self, index: int) -> None:
        """SIGKILL simulator `index` (subprocess fleets), its open streams cut; `restart` brings it back."""
        member = self.members[index]
        proc = member.process
        if proc is None:
            raise RuntimeError("crash() needs a subprocess fleet")
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()

    async def restart(self, index: int, timeout: float = 30.0) -> None:
        """Start simulator `index` again on its old port, once it is no longer running."""
        member = self.members[index]
        if member.process is not None and member.process.returncode is None:
            raise RuntimeError(f"simulator {index} is still running")
        port = int(member.address.rpartition(":")[2])
        member.config = dataclasses.replace(member.config, port=port)
        async with asyncio.timeout(timeout):
            await self._start_one(member)

    async def stop(self, grace: float = 5.0) -> None:
        """Stop every simulator this fleet started (subprocesses by PID: SIGTERM, SIGKILL after `grace`)."""
        await asyncio.gather(*(self._stop_one(m, grace) for m in self.members), return_exceptions=True)
        http, self._http = self._http, None
        if http is not None:
            await http.close()

    async def _stop_one(self, member: SimMember, grace: float) -> None:
        server, member.server = member.server, None
        if server is not None:
            await server.stop()
        proc, member.process = member.process, None
        if proc is None:
            return
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), grace)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        if proc.stdout is not None:
            proc.stdout.feed_eof()

    def _client(self) -> aiohttp.ClientSession:
        if self._http is None:
            self._http = aiohttp.ClientSession(trust_env=False, timeout=aiohttp.ClientTimeout(total=10))
        return self._http

    async def _admin(self, member: SimMember, method: str, path: str) -> dict[str, Any]:
        if member.server is not None:
            if path == "/admin/stats":
                return member.server.stats()
            if path == "/admin/reset-stats":
                member.server.reset_stats()
                return {}
            if path == "/admin/reset-cache":
                return {"dropped_blocks": member.server.reset_cache()}
        async with self._client().request(method, member.url + path) as resp:
            resp.raise_for_status()
            body: dict[str, Any] = await resp.json()
            return body

    async def stats(self) -> list[dict[str, Any]]:
        """Each simulator's `/admin/stats` counters (since start or the last `reset`), in fleet order."""
        return list(await asyncio.gather(*(self._admin(m, "GET", "/admin/stats") for m in self.members)))

    async def reset(self) -> None:
        """Forget every cached prefix block and restart the counters, so that the next run is independent."""

        async def one(member: SimMember) -> None:
            await self._admin(member, "POST", "/admin/reset-cache")
            await self._admin(member, "POST", "/admin/reset-stats")

        await asyncio.gather(*(one(m) for m in self.members))


@dataclass(frozen=True, slots=True)
class FleetStats:
    """The servers' view of a run: per-server counters and fleet-wide ratios (tokens, seconds)."""

    per_server: Mapping[str, Mapping[str, Any]]
    prefix_cache_queries: int
    prefix_cache_hits: int
    requests: int

    @property
    def hit_ratio(self) -> float:
        return self.prefix_cache_hits / self.prefix_cache_queries if self.prefix_cache_queries else 0.0

    def balance(self, key: str = "requests_finished") -> float:
        """max / mean of `key` over the servers (1.0 = perfectly even); 0 when nothing was counted."""
        values = [float(s.get(key, 0) or 0) for s in self.per_server.values()]
        mean = sum(values) / len(values) if values else 0.0
        return max(values) / mean if mean > 0 else 0.0


def fleet_stats(stats: Sequence[Mapping[str, Any]]) -> FleetStats:
    """Aggregate `SimFleet.stats()` output."""
    return FleetStats(
        per_server={str(s["name"]): s for s in stats},
        prefix_cache_queries=sum(int(s["prefix_cache_queries"]) for s in stats),
        prefix_cache_hits=sum(int(s["prefix_cache_hits"]) for s in stats),
        requests=sum(int(s["requests_finished"]) for s in stats),
    )
