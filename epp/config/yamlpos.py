"""YAML parsing that remembers where everything is.

`parse_yaml` has `yaml.safe_load` semantics (safe tags only, merge keys, anchors) but also records the
1-based line of every mapping key and sequence item, so a problem found later at a path such as
`("schedulingProfiles", 0, "plugins", 2, "weight")` can be reported at its line. It is stricter than
PyYAML in two ways: a duplicate mapping key is an error (PyYAML silently keeps the last one) and a stream
with more than one document is an error (empty documents after the first, a trailing `---`, are ignored).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from epp.errors import ConfigError, ConfigProblem

__all__ = ["LineMap", "YamlDocument", "YamlPath", "format_path", "parse_yaml"]

#: A path into a YAML document: mapping keys (str) and sequence indexes (int).
YamlPath = tuple[Any, ...]

_MERGE_TAG = "tag:yaml.org,2002:merge"


def format_path(path: Sequence[Any]) -> str:
    """`("plugins", 1, "parameters", "foo")` → `plugins[1].parameters.foo` (odd keys are quoted)."""
    out = ""
    for part in path:
        if isinstance(part, int) and not isinstance(part, bool):
            out += f"[{part}]"
        else:
            key = str(part)
            if key and all(c.isalnum() or c in "_-" for c in key):
                out += f".{key}" if out else key
            else:
                out += f"[{key!r}]"
    return out


@dataclass(frozen=True)
class LineMap:
    """Line numbers of the nodes of one document, by path."""

    lines: Mapping[YamlPath, int]

    def line_of(self, path: Sequence[Any]) -> int:
        """The line of `path`, or of its nearest ancestor present in the document (the root is line 1)."""
        p = tuple(path)
        while p:
            line = self.lines.get(p)
            if line is not None:
                return line
            p = p[:-1]
        return self.lines.get((), 1)

    def __contains__(self, path: object) -> bool:
        return path in self.lines


@dataclass(frozen=True)
class YamlDocument:
    """A parsed document (`data` is None for an empty one) and where its nodes are."""

    data: Any
    lines: LineMap


class _Loader(yaml.SafeLoader):
    """safe_load, plus YAML 1.2's exponent floats without a dot (`1e3`), which upstream's Go YAML reads
    as numbers and YAML 1.1 as strings."""


_Loader.yaml_implicit_resolvers = {k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)?(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+.0123456789"),
)


def parse_yaml(text: str, file: str) -> YamlDocument:
    """Parse one YAML document; raises ConfigError with the parser's line on any syntax problem."""
    loader: yaml.SafeLoader | None = None
    try:
        loader = _Loader(text)
        node = _single_node(loader, file)
        if node is None:
            return YamlDocument(None, LineMap({(): 1}))
        lines: dict[YamlPath, int] = {(): 1}
        problems: list[ConfigProblem] = []
        _walk(loader, node, (), lines, problems, file, _Walk())
        if problems:
            raise ConfigError(problems)
        data = loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        raise ConfigError([_syntax_problem(exc, file)]) from None
    except yaml.reader.ReaderError as exc:
        line = text[: exc.position].count("\n") + 1
        char = exc.character if isinstance(exc.character, int) else ord(exc.character)
        raise ConfigError(
            [ConfigProblem(file, line, "", f"invalid YAML: unacceptable character U+{char:04X}")]
        ) from None
    except yaml.YAMLError as exc:  # pragma: no cover - every PyYAML error above carries a mark
        raise ConfigError([ConfigProblem(file, 1, "", f"invalid YAML: {exc}")]) from None
    finally:
        if loader is not None:
            loader.dispose()
    return YamlDocument(data, LineMap(lines))


def _single_node(loader: yaml.SafeLoader, file: str) -> yaml.Node | None:
    """The document's node; empty documents after it (a trailing `---`) are ignored, as upstream reads
    only the first document, but a second document with content is an error."""
    node = loader.get_node() if loader.check_node() else None
    while loader.check_node():
        # reported at the document's start, its `---`
        line = loader.peek_event().start_mark.line + 1  # type: ignore[no-untyped-call]
        extra = loader.get_node()
        if isinstance(extra, yaml.ScalarNode) and extra.tag == "tag:yaml.org,2002:null" and not extra.value:
            continue
        raise ConfigError(
            [
                ConfigProblem(
                    file, line, "", "more than one YAML document (---); the config must be a single document"
                )
            ]
        )
    return node


def _syntax_problem(exc: yaml.MarkedYAMLError, file: str) -> ConfigProblem:
    mark = exc.problem_mark or exc.context_mark
    line = mark.line + 1 if mark is not None else 1
    what = exc.problem or "syntax error"
    context = exc.context or ""
    if context:
        ctx_mark = exc.context_mark
        if ctx_mark is not None and mark is not None and ctx_mark.line != mark.line:
            what = f"{what} ({context} that starts at line {ctx_mark.line + 1})"
        else:
            what = f"{what} ({context})"
    return ConfigProblem(file, line, "", f"invalid YAML: {what}")


def _key_value(loader: yaml.SafeLoader, key_node: yaml.Node) -> Any:
    if not isinstance(key_node, yaml.ScalarNode):
        return None
    value = loader.construct_object(key_node)
    try:
        hash(value)
    except TypeError:  # pragma: no cover - scalars are hashable
        return None
    return value


def _merged_pairs(node: yaml.MappingNode) -> Iterator[tuple[yaml.Node, yaml.Node]]:
    """The key/value pairs a merge key (`<<: *anchor`) brings in, in PyYAML's precedence order."""
    for key_node, value_node in node.value:
        if key_node.tag != _MERGE_TAG:
            continue
        sources = value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
        for source in sources:
            if isinstance(source, yaml.MappingNode):
                yield from ((k, v) for k, v in source.value if k.tag != _MERGE_TAG)
                yield from _merged_pairs(source)


MAX_EXPANDED_NODES = 250_000
"""A config of a few thousand lines has tens of thousands of nodes; aliases of aliases can make a few
hundred bytes expand to billions (every later pass — validation, building — walks the expansion)."""


class _Walk:
    """What a walk carries across nodes: the aliases being expanded and how many nodes it visited."""

    __slots__ = ("nodes", "stack")

    def __init__(self) -> None:
        self.stack: set[int] = set()
        self.nodes = 0


def _walk(
    loader: yaml.SafeLoader,
    node: yaml.Node,
    path: YamlPath,
    lines: dict[YamlPath, int],
    problems: list[ConfigProblem],
    file: str,
    walk: _Walk,
) -> None:
    stack = walk.stack
    if id(node) in stack:  # a recursive alias; safe_load builds a cyclic object, we stop here
        return
    walk.nodes += 1
    if walk.nodes > MAX_EXPANDED_NODES:
        raise ConfigError(
            [
                ConfigProblem(
                    file,
                    node.start_mark.line + 1,
                    format_path(path),
                    f"the document expands to more than {MAX_EXPANDED_NODES:,} values "
                    "(aliases of aliases?); a config is far smaller",
                )
            ]
        )
    stack.add(id(node))
    try:
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, value_node in node.value:
                if key_node.tag == _MERGE_TAG:
                    continue
                key = _key_value(loader, key_node)
                line = key_node.start_mark.line + 1
                if key is None and not isinstance(key_node, yaml.ScalarNode):
                    continue
                if key in seen:
                    problems.append(
                        ConfigProblem(
                            file,
                            line,
                            format_path((*path, key)),
                            f"duplicate key {key!r} (first at line {seen[key]}); YAML keeps only one of them",
                        )
                    )
                    continue
                seen[key] = line
                lines[(*path, key)] = line
                _walk(loader, value_node, (*path, key), lines, problems, file, walk)
            for key_node, value_node in _merged_pairs(node):
                key = _key_value(loader, key_node)
                if key is None or key in seen:
                    continue
                seen[key] = key_node.start_mark.line + 1
                lines[(*path, key)] = seen[key]
                # merged values may hold duplicates of their own; those are reported at the anchor
                _walk(loader, value_node, (*path, key), lines, [], file, walk)
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                lines[(*path, index)] = item.start_mark.line + 1
                _walk(loader, item, (*path, index), lines, problems, file, walk)
    finally:
        stack.discard(id(node))
