"""Third-party tools the benchmarks run, each in its own virtualenv under `.cache/`, installed on request.

The rival routers (`sglang-router`, `vllm-router`) and the `inference-perf` client are not project
dependencies. `ensure_tool(name)` returns the tool's executable if it is installed, and otherwise raises
`NotInstalled` ("run 'epp bench install' or pass --install-rivals"): nothing is installed behind the
user's back. `ensure_tool(name, install=True)` (what `epp bench install` and `--install-rivals` do)
creates `.cache/bench/venvs/<name>` with a suitable interpreter, `pip install`s the pinned requirement
from the package index pip is configured for, and returns the executable. A marker file records what was
installed, so later calls return at once; a lock file serialises concurrent installs (a test run and a
manual run). `inference-perf` needs Python >= 3.12, found next to this interpreter, in
`~/.pyenv/versions/`, or on `$PATH`.

`InstallError.offline` says that the package index could not be reached (the one case in which a
smoke test may skip the rivals).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "TOOLS",
    "InstallError",
    "NotInstalled",
    "Tool",
    "cache_root",
    "check_tools",
    "ensure_tool",
    "ensure_tools",
    "find_python",
    "installed_tool",
    "offline_env",
]


@dataclass(frozen=True, slots=True)
class Tool:
    """A pip-installable command: what to install, which script to run, which Python it needs."""

    name: str
    requirement: str
    executable: str
    min_python: tuple[int, int] = (3, 8)


TOOLS: dict[str, Tool] = {
    "sglang-router": Tool("sglang-router", "sglang-router==0.3.2", "smg"),
    "vllm-router": Tool("vllm-router", "vllm-router==0.1.17", "vllm-router"),
    "inference-perf": Tool("inference-perf", "inference-perf==0.7.0", "inference-perf", (3, 12)),
}

_MARKER = ".epp-bench-installed"
_OFFLINE_HINTS = re.compile(
    r"(NewConnectionError|Failed to establish a new connection|Temporary failure in name resolution|"
    r"Name or service not known|Network is unreachable|Connection refused|ConnectTimeout|ReadTimeout|"
    r"No matching distribution found|Could not find a version that satisfies)",
)


class InstallError(RuntimeError):
    """A tool could not be installed; `offline` when the package index was unreachable."""

    def __init__(self, message: str, *, offline: bool = False) -> None:
        super().__init__(message)
        self.offline = offline


class NotInstalled(InstallError):
    """A tool is not installed and installing was not asked for (`install=False`)."""

    def __init__(self, name: str) -> None:
        super().__init__(f"{name} is not installed: run 'epp bench install' or pass --install-rivals")
        self.name = name


def cache_root() -> Path:
    """`$EPP_BENCH_CACHE`, else `.cache/bench` in the source tree (or the current directory)."""
    env = os.environ.get("EPP_BENCH_CACHE")
    if env:
        return Path(env)
    tree = Path(__file__).resolve().parents[3]
    base = tree if (tree / "pyproject.toml").is_file() else Path.cwd()
    return base / ".cache" / "bench"


def _version(python: str) -> tuple[int, int] | None:
    try:
        out = subprocess.run(
            [python, "-c", "import sys; print(*sys.version_info[:2])"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout.split()
        return int(out[0]), int(out[1])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


def find_python(minimum: tuple[int, int]) -> str | None:
    """An interpreter of at least `minimum` (this one, ~/.pyenv/versions/*, python3.N on $PATH)."""
    if sys.version_info[:2] >= minimum:
        return sys.executable
    candidates: list[str] = []
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    if pyenv.is_dir():

        def key(d: Path) -> tuple[int, ...]:
            parts = d.name.split(".")
            return tuple(int(p) for p in parts) if all(p.isdigit() for p in parts) else (999,)

        # the oldest version that qualifies: the one the tools were verified with (3.12)
        for d in sorted(pyenv.iterdir(), key=key):
            candidates.append(str(d / "bin" / "python"))
    for minor in range(minimum[1], minimum[1] + 4):
        found = shutil.which(f"python{minimum[0]}.{minor}")
        if found:
            candidates.append(found)
    for c in candidates:
        if Path(c).is_file():
            v = _version(c)
            if v is not None and v >= minimum:
                return c
    return None


def offline_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """An environment that keeps a child process on loopback.

    Hugging Face clients are told to stay offline, and every HTTP(S) proxy variable points at a closed
    loopback port, so a tool that tries to reach the internet (sglang-router looks up a tokenizer for
    the served model) fails at once, locally; `NO_PROXY` keeps loopback traffic direct.
    """
    env = dict(os.environ if base is None else base)
    dead = "http://127.0.0.1:9"
    for key in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        env[key] = dead
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost,::1"
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    env["HF_HUB_DISABLE_TELEMETRY"] = "1"
    return env


def _venv_dir(tool: Tool) -> Path:
    return cache_root() / "venvs" / tool.name


def installed_tool(name: str) -> Path | None:
    """The tool's executable if it is installed at the pinned version, else None (never installs)."""
    tool = TOOLS[name]
    venv = _venv_dir(tool)
    exe = venv / "bin" / tool.executable
    marker = venv / _MARKER
    try:
        if exe.is_file() and marker.read_text().strip() == tool.requirement:
            return exe
    except OSError:
        pass
    return None


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _run(cmd: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.setdefault("PIP_DISABLE_PIP_VERSION_CHECK", "1")
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, check=False)


def ensure_tool(
    name: str, *, install: bool = False, say: Callable[[str], None] | None = None, timeout: float = 900.0
) -> Path:
    """The executable of `name` (a key of TOOLS). When it is not installed: with `install`, install it
    now; without, raise `NotInstalled` (nothing is run). Raises InstallError when installing fails."""
    if name not in TOOLS:
        raise InstallError(f"unknown tool {name!r}; known: {', '.join(TOOLS)}")
    found = installed_tool(name)
    if found is not None:
        return found
    if not install:
        raise NotInstalled(name)
    tool = TOOLS[name]
    venv = _venv_dir(tool)
    with _locked(venv.parent / f"{tool.name}.lock"):
        found = installed_tool(name)  # another process may have finished it meanwhile
        if found is not None:
            return found
        return _install(tool, venv, say, timeout)


def _install(tool: Tool, venv: Path, say: Callable[[str], None] | None, timeout: float) -> Path:
    python = find_python(tool.min_python)
    if python is None:
        need = ".".join(map(str, tool.min_python))
        raise InstallError(f"{tool.name} needs Python >= {need}; none found (try ~/.pyenv/versions/)")
    if say is not None:
        say(f"installing {tool.requirement} into {venv} (once) ...")
    shutil.rmtree(venv, ignore_errors=True)
    made = _run([python, "-m", "venv", str(venv)], 300)
    if made.returncode != 0:
        raise InstallError(f"cannot create a virtualenv for {tool.name}: {made.stderr.strip()[-1000:]}")
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    res = _run([*pip, tool.requirement], timeout)
    if res.returncode != 0:
        text = (res.stdout + res.stderr).strip()
        offline = bool(_OFFLINE_HINTS.search(text))
        shutil.rmtree(venv, ignore_errors=True)
        raise InstallError(f"pip install {tool.requirement} failed:\n{text[-2000:]}", offline=offline)
    exe = venv / "bin" / tool.executable
    if not exe.is_file():
        raise InstallError(f"{tool.requirement} installed no {tool.executable} script")
    (venv / _MARKER).write_text(tool.requirement + "\n")
    return exe


def ensure_tools(
    names: Iterable[str], *, install: bool = False, say: Callable[[str], None] | None = None
) -> dict[str, Path]:
    """`ensure_tool` for each of `names` (each once, in order): the executables by name.

    A benchmark calls it before it starts anything, so that a missing tool stops it at once."""
    return {name: ensure_tool(name, install=install, say=say) for name in dict.fromkeys(names)}


def check_tools(
    prog: str, names: Iterable[str], *, install: bool = False, say: Callable[[str], None] | None = None
) -> int:
    """What a benchmark command runs before it starts anything: `ensure_tools(names, install=...)`.

    Returns 0 when every tool is there (installed now if `install`); otherwise prints `prog: why` on
    stderr and returns the exit status: 2 when a tool is not installed (and installing was not asked
    for), 1 when installing failed.
    """
    try:
        ensure_tools(names, install=install, say=say)
    except InstallError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, NotInstalled) else 1
    return 0
