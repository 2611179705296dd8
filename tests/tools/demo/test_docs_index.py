"""The README and docs/index.md: their links resolve, and the index lists every documentation page."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
_LINK = re.compile(r"\]\(([^)\s]+)\)")


def _local_links(page: Path) -> list[tuple[str, Path]]:
    out = []
    for target in _LINK.findall(page.read_text()):
        if "://" in target or target.startswith("#"):
            continue
        out.append((target, (page.parent / target.split("#", 1)[0]).resolve()))
    return out


def test_readme_and_index_links_resolve() -> None:
    for page in (ROOT / "README.md", ROOT / "docs" / "index.md", ROOT / "docs" / "demo.md"):
        broken = [t for t, path in _local_links(page) if not path.exists()]
        assert not broken, f"{page.name}: broken links {broken}"


def test_every_doc_page_is_in_the_index() -> None:
    linked = {path for _, path in _local_links(ROOT / "docs" / "index.md")}
    pages = {p.resolve() for p in (ROOT / "docs").rglob("*.md") if p.name != "index.md"}
    missing = sorted(str(p.relative_to(ROOT)) for p in pages - linked)
    assert not missing, f"docs/index.md does not link {missing}"


def test_readme_names_the_two_commands_and_shows_a_demo_table() -> None:
    text = (ROOT / "README.md").read_text()
    assert "make demo" in text and "make test" in text
    assert "prefix-cache hit ratio" in text and "TTFT p90" in text
