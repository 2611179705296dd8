"""The `epp` command line: the daemon (default, or `serve`) and the tools (`validate`, `schema`, ...).

Exit status: 0 success; 1 a tool found problems (invalid config files) or is missing from this build;
2 bad usage, bad flags or a bad config at daemon start (the message says which flag, file and line).
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import sys
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from epp import __version__
from epp.errors import ConfigError, SettingsError

__all__ = ["main"]

#: Subcommands implemented in other modules, imported only when used: name → (module, function).
_LAZY_TOOLS: dict[str, tuple[str, str]] = {
    "sim": ("epp.tools.sim.cli", "main"),
    "demo": ("epp.tools.demo", "main"),
    "bench": ("epp.tools.bench.cli", "main"),
}

_VALIDATE_USAGE = """usage: epp validate [--effective] FILE...

Check EndpointPickerConfig files as the daemon would load them (all plugins are built).
Prints 'FILE: ok — summary' per valid file (exit 0), or one 'FILE:LINE: path: message' per problem
(exit 1). '-' reads standard input. --effective also prints each valid file's effective config
(every default written out). Warnings go to standard error.
"""


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    command = args[0] if args else ""
    if command == "validate":
        return _validate(args[1:])
    if command == "schema":
        return _schema(args[1:])
    if command in _LAZY_TOOLS:
        return _lazy_tool(command, args[1:])
    if command in ("--version", "version"):
        print(f"epp {__version__}")
        return 0
    if command == "serve":
        args = args[1:]
    return _serve(args)


def _err(message: str) -> None:
    print(f"epp: {message}", file=sys.stderr)


# ---- the daemon ----------------------------------------------------------------------------------


def _serve(args: list[str]) -> int:
    from epp.builtins import default_registry
    from epp.config import build_pipeline, load_config_source
    from epp.settings import HelpRequested, parse_settings

    try:
        settings = parse_settings(args)
    except HelpRequested as help_:
        print(help_.text, end="")
        return 0
    except SettingsError as exc:
        _err(str(exc))
        return 2
    # Check the config before anything starts, so a bad one fails fast with every problem listed.
    registry = default_registry()
    try:
        build_pipeline(
            load_config_source(
                settings.config_file, settings.config_text, registry=registry, log_warnings=False
            ),
            registry,
        )
    except ConfigError as exc:
        _err("invalid EndpointPickerConfig:")
        print(str(exc), file=sys.stderr)
        return 2
    try:
        app = importlib.import_module("epp.app")
    except ModuleNotFoundError as exc:
        if exc.name != "epp.app":
            raise
        _err("the daemon (epp.app) is not part of this build")
        return 1
    try:
        result: Any = app.run(settings)
        if inspect.isawaitable(result):
            result = asyncio.run(_await(result))
    except (SettingsError, ConfigError) as exc:
        _err(str(exc))
        return 2
    except KeyboardInterrupt:
        return 130
    return int(result or 0)


async def _await(awaitable: Any) -> Any:
    return await awaitable


# ---- tools ---------------------------------------------------------------------------------------


def _lazy_tool(command: str, args: list[str]) -> int:
    module_name, func_name = _LAZY_TOOLS[command]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is None or not module_name.startswith(exc.name):
            raise
        _err(f"'{command}' is not available in this build (module {module_name} is missing)")
        return 1
    func: Callable[[list[str]], int | None] | None = getattr(module, func_name, None)
    if func is None:
        _err(f"'{command}' is not available in this build ({module_name} has no {func_name}())")
        return 1
    return int(func(args) or 0)


def _schema(args: list[str]) -> int:
    if args in (["-h"], ["--help"]):
        print("usage: epp schema\n\nPrint the JSON schema (draft 2020-12) of EndpointPickerConfig.")
        return 0
    if args:
        _err(f"schema takes no arguments, got {' '.join(args)}")
        return 2
    from epp.builtins import default_registry
    from epp.config import schema_text

    sys.stdout.write(schema_text(default_registry()))
    return 0


def _validate(args: list[str]) -> int:
    effective = False
    files: list[str] = []
    for arg in args:
        if arg in ("-h", "--help"):
            print(_VALIDATE_USAGE, end="")
            return 0
        if arg == "--effective":
            effective = True
        elif arg.startswith("-") and arg != "-":
            _err(f"validate: unknown option {arg}")
            return 2
        else:
            files.append(arg)
    if not files:
        print(_VALIDATE_USAGE, end="", file=sys.stderr)
        return 2
    from epp.builtins import default_registry

    registry = default_registry()
    ok = True
    for name in files:
        ok = _validate_one(name, registry, effective, sys.stdout, sys.stderr) and ok
    return 0 if ok else 1


def _validate_one(name: str, registry: Any, effective: bool, out: TextIO, err: TextIO) -> bool:
    import yaml

    from epp.config import build_pipeline, load_config, load_config_file

    try:
        if name == "-":
            data = sys.stdin.buffer.read()
            config = load_config(data, registry=registry, source="<stdin>", log_warnings=False)
        else:
            config = load_config_file(name, registry=registry, log_warnings=False)
        build_pipeline(config, registry)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=out)
        return False
    for warning in config.warnings:
        print(
            f"{warning.file}:{warning.line}: {warning.path or '<root>'}: warning: {warning.message}", file=err
        )
    print(f"{config.source}: ok — {config.summary()}", file=out)
    if effective:
        out.write(yaml.safe_dump(config.to_document(), sort_keys=False))
    return True
