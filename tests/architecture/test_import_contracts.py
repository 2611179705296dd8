"""The layer contracts (`[tool.importlinter]` in pyproject.toml) hold, and they catch a bad import.

`lint-imports` runs in `make check` on the real tree; here it runs on a copy of the package with one
deliberate violation, to show each kind of contract fails when it should.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def lint(tree: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--no-logo", str(tree / "pyproject.toml")],
        cwd=tree,
        env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A copy of the package and its contracts, importable from `tmp_path` alone."""
    shutil.copytree(ROOT / "epp", tmp_path / "epp", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def add_import(tree: Path, module: str, statement: str) -> None:
    path = tree / (module.replace(".", "/") + ".py")
    text = path.read_text()
    marker = "from __future__ import annotations\n"
    assert marker in text, f"{module} has no __future__ import to put the bad import after"
    path.write_text(text.replace(marker, marker + statement + "  # deliberate violation\n", 1))


def test_the_tree_keeps_every_contract(tree: Path) -> None:
    result = lint(tree)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "BROKEN" not in result.stdout and "KEPT" in result.stdout


@pytest.mark.parametrize(
    ("module", "statement", "contract", "offence"),
    [
        (
            "epp.framework.types",
            "import epp.extproc.wire",
            "framework: contracts only, nothing else of epp",
            "epp.framework.types -> epp.extproc.wire",
        ),
        (
            "epp.app",
            "import epp.tools.sim.engine",
            "the daemon never imports the tools",
            "epp.app -> epp.tools.sim.engine",
        ),
        (
            "epp.plugins.scorers.queue",
            "import aiohttp",
            "plugins: no wire, no Kubernetes, no config internals, no network I/O",
            "epp.plugins.scorers.queue -> aiohttp",
        ),
        (
            "epp.scheduling.profile",
            "import epp.k8s.pods",
            "scheduling: no wire, no Kubernetes, no data sources, no tracing library",
            "epp.scheduling.profile -> epp.k8s.pods",
        ),
        (
            "epp.scheduling.spans",
            "import opentelemetry.trace",
            "scheduling: no wire, no Kubernetes, no data sources, no tracing library",
            "epp.scheduling.spans -> opentelemetry",
        ),
        (
            "epp.datalayer.datastore",
            "import epp.observability.metrics",
            "the daemon's layers (higher imports lower, never the reverse)",
            "epp.datalayer.datastore -> epp.observability.metrics",
        ),
    ],
)
def test_a_bad_import_breaks_its_contract(
    tree: Path, module: str, statement: str, contract: str, offence: str
) -> None:
    add_import(tree, module, statement)
    result = lint(tree)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"{contract} BROKEN" in result.stdout
    assert offence in result.stdout


def test_a_cycle_between_sibling_packages_is_reported(tree: Path) -> None:
    # prefix plugins <-> scorers: two sub-packages of one layer, which the layers contract does not order
    add_import(tree, "epp.plugins.prefix.index", "import epp.plugins.scorers.queue")
    add_import(tree, "epp.plugins.scorers.queue", "import epp.plugins.prefix.hashing")
    result = lint(tree)
    assert result.returncode == 1
    assert "no import cycle between sibling packages BROKEN" in result.stdout


def test_importing_the_daemon_loads_no_tool_module() -> None:
    code = "import epp.app, sys; print('\\n'.join(sorted(m for m in sys.modules if m.startswith('epp.'))))"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120, check=True
    ).stdout.split()
    assert "epp.app" in out and "epp.extproc.server" in out
    assert [m for m in out if m.startswith("epp.tools")] == []
