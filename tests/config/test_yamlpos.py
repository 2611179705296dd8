"""YAML parsing with line numbers: safe_load semantics plus positions, duplicate keys and one document."""

from __future__ import annotations

import pytest
import yaml

from epp.config.yamlpos import format_path, parse_yaml
from epp.errors import ConfigError

DOC = """\
# a comment
top: 1
items:
  - name: a
    extra: &anchor {p: 1, q: 2}
  - name: b
    copy: *anchor
merged:
  <<: *anchor
  r: 3
"""


def test_same_data_as_safe_load() -> None:
    assert parse_yaml(DOC, "f").data == yaml.safe_load(DOC)


def test_lines_of_keys_and_items() -> None:
    lines = parse_yaml(DOC, "f").lines
    assert lines.line_of(("top",)) == 2
    assert lines.line_of(("items",)) == 3
    assert lines.line_of(("items", 0)) == 4
    assert lines.line_of(("items", 0, "extra", "q")) == 5
    assert lines.line_of(("items", 1)) == 6
    assert lines.line_of(("merged", "r")) == 10


def test_aliases_and_merge_keys_point_at_the_anchor() -> None:
    lines = parse_yaml(DOC, "f").lines
    assert lines.line_of(("items", 1, "copy", "p")) == 5
    assert lines.line_of(("merged", "p")) == 5


def test_missing_path_falls_back_to_nearest_ancestor_then_line_1() -> None:
    lines = parse_yaml(DOC, "f").lines
    assert lines.line_of(("items", 1, "nope", "deeper")) == 6
    assert lines.line_of(("absent",)) == 1
    assert lines.line_of(()) == 1


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ("a: 1\nb: 2\na: 3\n", 3, "duplicate key 'a' (first at line 1)"),
        ("a:\n  x: {k: 1, k: 2}\n", 2, "duplicate key 'k'"),
        ("a: 1\n---\nb: 2\n", 2, "more than one YAML document"),
        ("a: [1, 2\n", 2, "expected ',' or ']'"),
        ("a: 'open\n", 2, "while scanning a quoted scalar that starts at line 1"),
        ("a: *nowhere\n", 1, "found undefined alias 'nowhere'"),
        ("a: 1\n\tb: 2\n", 2, "cannot start any token"),
        ("ok: 1\nbad: \x07\n", 2, "unacceptable character U+0007"),
    ],
)
def test_problems_carry_the_line(text: str, line: int, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_yaml(text, "x.yaml")
    (problem,) = info.value.problems
    assert (problem.file, problem.line) == ("x.yaml", line)
    assert fragment in problem.message


def test_true_and_yes_keys_collide_as_in_yaml_1_1() -> None:
    with pytest.raises(ConfigError, match="duplicate key True"):
        parse_yaml("true: 1\nyes: 2\n", "f")


def test_merge_override_is_not_a_duplicate() -> None:
    doc = parse_yaml("base: &b {x: 1}\nderived:\n  <<: *b\n  x: 2\n", "f")
    assert doc.data["derived"] == {"x": 2}


def test_empty_and_comment_only_documents_are_none() -> None:
    assert parse_yaml("", "f").data is None
    assert parse_yaml("# nothing\n", "f").data is None


def test_recursive_alias_does_not_hang() -> None:
    doc = parse_yaml("a: &x [1, *x]\n", "f")
    assert doc.data["a"][0] == 1


def test_aliases_of_aliases_that_expand_without_bound_are_refused() -> None:
    """A few hundred bytes ("billion laughs") must not hang the loader or a reload."""
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]
    with pytest.raises(ConfigError, match=r"expands to more than 250,000 values"):
        parse_yaml("\n".join(lines) + "\n", "f")
    # the same shape a few levels shallower is an ordinary document
    assert len(parse_yaml("\n".join(lines[:4]) + "\n", "f").data["a3"]) == 10


def test_exponent_floats_are_numbers_as_in_yaml_1_2() -> None:
    data = parse_yaml("a: 1e3\nb: -2.5E-2\nc: 12\nd: e3\ne: '1e3'\n", "f").data
    assert data == {"a": 1000.0, "b": -0.025, "c": 12, "d": "e3", "e": "1e3"}
    assert yaml.safe_load("a: 1e3") == {"a": "1e3"}  # PyYAML's own loader is left as it was


def test_an_empty_document_after_the_config_is_ignored_as_upstream_does() -> None:
    assert parse_yaml("a: 1\n---\n", "f").data == {"a": 1}
    assert parse_yaml("a: 1\n---\n# nothing more\n", "f").data == {"a": 1}
    assert parse_yaml("---\n", "f").data is None


def test_format_path() -> None:
    assert (
        format_path(("schedulingProfiles", 0, "plugins", 2, "weight"))
        == "schedulingProfiles[0].plugins[2].weight"
    )
    assert format_path(("plugins", 1, "parameters", "a.b")) == "plugins[1].parameters['a.b']"
    assert format_path(()) == ""
