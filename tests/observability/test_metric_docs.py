"""The metric tables of the docs list exactly the families `EppMetrics` declares, with their types and labels.

docs/observability.md has a `| metric | type | labels | meaning |` table per group and docs/flow-control.md
the flow-control one; a family added, renamed or relabelled without its docs row (or the reverse) fails.
(Upstream's buckets and help texts are pinned by test_catalogue.py.)
"""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from epp.observability.metrics import EppMetrics

DOCS = Path(__file__).resolve().parents[2] / "docs"
MODEL_LABELS = ("model_name", "target_model_name")


def _doc_rows(path: Path) -> dict[str, tuple[str, tuple[str, ...]]]:
    """name → (type, sorted labels) for every row of the `| metric | type | labels ...` tables."""
    rows: dict[str, tuple[str, tuple[str, ...]]] = {}
    in_table = False
    previous: tuple[str, ...] = ()
    for line in path.read_text().splitlines():
        if line.startswith("| metric | type | labels"):
            in_table = True
            continue
        if not line.startswith("|"):
            in_table = False
        if not in_table or line.startswith("|---"):
            continue
        name, kind, labels = (cell.strip() for cell in line.strip("|").split("|")[:3])
        found: list[str] = []
        for part in (p.strip().strip("`") for p in labels.split(",")):
            if part == "model labels":
                found += MODEL_LABELS
            elif part == "same":
                found += previous
            elif part not in ("", "—"):
                found.append(part)
        previous = tuple(sorted(found))
        rows[name.strip("`")] = (kind.split()[0], previous)
    return rows


def _declared() -> dict[str, tuple[str, tuple[str, ...]]]:
    """name (counters with `_total`, as in PromQL) → (type, sorted labels) of a fresh `EppMetrics`."""
    out = {}
    for collector in EppMetrics(CollectorRegistry()).collectors():
        (family,) = collector.describe()
        name = f"{family.name}_total" if family.type == "counter" else family.name
        out[name] = (family.type, tuple(sorted(collector._labelnames)))
    return out


def test_the_table_parser_reads_types_labels_and_shorthands(tmp_path: Path) -> None:
    doc = tmp_path / "doc.md"
    doc.write_text(
        "| metric | type | labels | meaning |\n|---|---|---|---|\n"
        "| `a_total` | counter | model labels, `priority` | x |\n"
        "| `b` | gauge (1) | same | y |\n"
        "| `c` | histogram | — | z |\n\n"
        "| metric | meaning |\n|---|---|\n| `d` | not a family table |\n"
    )
    assert _doc_rows(doc) == {
        "a_total": ("counter", ("model_name", "priority", "target_model_name")),
        "b": ("gauge", ("model_name", "priority", "target_model_name")),
        "c": ("histogram", ()),
    }


@pytest.fixture(scope="module")
def documented() -> dict[str, tuple[str, tuple[str, ...]]]:
    rows = _doc_rows(DOCS / "observability.md")
    flow_control = _doc_rows(DOCS / "flow-control.md")
    assert not rows.keys() & flow_control.keys()
    return {**rows, **flow_control}


def test_every_declared_family_is_documented_and_nothing_else(documented) -> None:
    declared = _declared()
    assert sorted(documented.keys() - declared.keys()) == [], "documented but not declared"
    assert sorted(declared.keys() - documented.keys()) == [], "declared but not documented"


def test_documented_types_and_labels_are_the_declared_ones(documented) -> None:
    declared = _declared()
    both = declared.keys() & documented.keys()
    wrong = {n: (documented[n], declared[n]) for n in sorted(both) if documented[n] != declared[n]}
    assert wrong == {}, "name: (documented, declared)"
