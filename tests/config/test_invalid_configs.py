"""Every file in `invalid/` must be rejected with exactly the problems its header announces.

Each fixture starts with a comment saying what is wrong, then one `# expect: LINE: PATH: MESSAGE` line per
problem. The test loads (and builds) the file as `epp validate` does and checks that the problems are
exactly those: same count, each printed as `FILE:LINE: PATH: ...MESSAGE...`, in file order.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from epp.config import build_pipeline, load_config_file
from epp.errors import ConfigError

from .cfg_fakes import fake_registry

INVALID = Path(__file__).parent / "invalid"
EXPECT = re.compile(r"^# expect: (\d+): (\S+): (.+)$")
FILES = sorted(INVALID.glob("*.yaml"))


def expectations(path: Path) -> list[tuple[int, str, str]]:
    out = []
    for line in path.read_text().splitlines():
        m = EXPECT.match(line)
        if m:
            out.append((int(m.group(1)), m.group(2), m.group(3)))
    return out


def test_there_are_enough_cases() -> None:
    assert len(FILES) >= 40
    assert all(expectations(f) for f in FILES), "every fixture announces its problems"


@pytest.mark.parametrize("path", FILES, ids=[f.stem for f in FILES])
def test_invalid_config_is_rejected_at_the_right_line(path: Path) -> None:
    registry = fake_registry()
    name = str(path.relative_to(Path.cwd())) if path.is_relative_to(Path.cwd()) else str(path)
    with pytest.raises(ConfigError) as info:
        build_pipeline(load_config_file(name, registry=registry), registry)
    problems = info.value.problems
    expected = expectations(path)
    shown = "\n".join(str(p) for p in problems)
    assert len(problems) == len(expected), f"expected {len(expected)} problems, got:\n{shown}"
    for problem, (line, yaml_path, message) in zip(problems, expected, strict=True):
        assert problem.file == name
        assert (problem.line, problem.path or "<root>") == (line, yaml_path), shown
        assert message in problem.message, shown
        assert str(problem).startswith(f"{name}:{line}: {yaml_path}: ")
