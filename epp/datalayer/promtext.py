"""A targeted scanner for the Prometheus text exposition format (version 0.0.4).

Why not `prometheus_client.parser`: it parses every line of a page into objects. A vLLM page is 20-80 KB
of mostly histogram buckets, so it costs ~9 ms per page, and 64 endpoints every 50 ms would need more than
ten cores (measured by `python -m epp.tools.bench.scrape`, see docs/benchmarks.md). The scheduler needs about
six series per page. This scanner looks up only the metric names it is asked for (`str.find`, which runs
in C over the page) and parses only those lines, so a page costs tens of microseconds.

Semantics (checked against prometheus_client by a property test over generated pages and the engine
fixtures): a sample line is `name[{labels}] value [timestamp_ms]`, with optional blanks before the name,
between the name and `{`, and between tokens; label values are double-quoted with the escapes `\\\\`,
`\\"` and `\\n`; values may be `NaN`, `+Inf`, `-Inf` or any float; comments, `# HELP` and `# TYPE` lines
and blank lines are skipped. Samples are matched by their *sample* name as written (a histogram's
`x_bucket`, a counter's `x_total`). A malformed line of a wanted series is skipped and counted, never
fatal: the rest of the page is still used. Unlike prometheus_client, a counter declared without the
`_total` suffix keeps the sample name it was written with (as Go's expfmt does), and the rare
`{__name__="..."}` form is not recognised.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from itertools import chain
from typing import Any, NamedTuple

__all__ = ["Sample", "ScanResult", "scan"]

_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")
_ESCAPE = re.compile(r"\\[\\n\"]")
_ESCAPES = {"\\\\": "\\", "\\n": "\n", '\\"': '"'}
_BLANK = " \t"


class Sample(NamedTuple):
    """One parsed sample line. Treat `labels` as read-only: parsed lines are cached and shared."""

    name: str
    labels: Mapping[str, str]
    value: float
    timestamp_ms: int | None = None


class ScanResult(NamedTuple):
    """Samples found per requested name (every requested name is a key), and malformed wanted lines."""

    samples: Mapping[str, list[Sample]]
    malformed: int


def scan(page: str | bytes, names: Iterable[str]) -> ScanResult:
    """Find every sample of each metric name in `names` in a text-format page (one pass).

    `page` may be the raw response body (bytes, UTF-8): only the wanted lines are decoded.
    """
    finder = _finder(names if isinstance(names, frozenset) else frozenset(names), isinstance(page, bytes))
    out: dict[str, list[Sample]] = {name: [] for name in finder.names}
    if not out:
        return ScanResult(out, 0)
    first = finder.head.match(page)
    matches = finder.body.finditer(page)
    if first is not None:
        matches = chain((first,), matches)
    newline: Any = finder.newline
    by_token = finder.by_token
    malformed = 0
    size = len(page)
    find = page.find
    for m in matches:
        name = by_token[m.group(1)]
        start = m.start(1)
        end = find(newline, m.end(1))
        if end < 0:
            end = size
        line = page[start:end]
        sample = _LINES.get(line)
        if sample is None:
            text = line.decode("utf-8", "replace") if isinstance(line, bytes) else line
            sample = _parse_rest(name, text, len(name), len(text))
            if sample is None:
                malformed += 1
                continue
            if len(_LINES) >= _LINES_MAX:
                _LINES.clear()
            _LINES[line] = sample
        out[name].append(sample)
    return ScanResult(out, malformed)


# Parsed lines by their text from the name on: most wanted lines repeat from one scrape to the next
# (cache_config_info, lora info, idle gauges), and a dict lookup is ~50x cheaper than parsing labels.
_LINES: dict[str | bytes, Sample] = {}
_LINES_MAX = 4096


@dataclass(frozen=True, slots=True)
class _Finder:
    """Compiled patterns for one set of names, for str or for bytes pages.

    `body` starts with a literal newline, which the regex engine scans for quickly; `head` checks the first
    line. A name must be followed by `{`, a blank or the end of the line, so `foo` never matches `foo_bar`.
    Longer names come first in the alternation, so a name that prefixes another cannot shadow it.
    """

    names: tuple[str, ...]
    head: re.Pattern[Any]
    body: re.Pattern[Any]
    newline: str | bytes
    by_token: Mapping[str | bytes, str]


_FINDERS: dict[tuple[frozenset[str], bool], _Finder] = {}


def _finder(names: frozenset[str], for_bytes: bool) -> _Finder:
    found = _FINDERS.get((names, for_bytes))
    if found is None:
        if len(_FINDERS) > 256:  # the names come from config; bound the cache anyway
            _FINDERS.clear()
        wanted = tuple(sorted(names, key=lambda s: (-len(s), s)))
        line = r"[ \t]*(" + "|".join(re.escape(name) for name in wanted) + r")(?=[ \t{\r\n]|\Z)"
        if for_bytes:
            found = _Finder(
                wanted,
                re.compile(line.encode()),
                re.compile(b"\n" + line.encode()),
                b"\n",
                {name.encode(): name for name in wanted},
            )
        else:
            found = _Finder(wanted, re.compile(line), re.compile("\n" + line), "\n", {n: n for n in wanted})
        _FINDERS[(names, for_bytes)] = found
    return found


def _parse_rest(name: str, text: str, pos: int, end: int) -> Sample | None:
    """Parse `[{labels}] value [timestamp]` in text[pos:end]; None when malformed."""
    while pos < end and text[pos] in _BLANK:
        pos += 1
    labels: dict[str, str]
    if pos < end and text[pos] == "{":
        parsed = _parse_labels(text, pos + 1, end)
        if parsed is None:
            return None
        labels, pos = parsed
        if pos < end and text[pos] not in _BLANK:
            return None
    else:
        labels = {}
    tokens = text[pos:end].split()
    if not tokens or len(tokens) > 2:
        return None
    value = _parse_float(tokens[0])
    if value is None:
        return None
    timestamp: int | None = None
    if len(tokens) == 2:
        if "_" in tokens[1]:
            return None
        try:
            timestamp = int(tokens[1])
        except ValueError:
            return None
    return Sample(name, labels, value, timestamp)


def _parse_float(token: str) -> float | None:
    # Python's float() also accepts "1_000"; the exposition format does not.
    if "_" in token:
        return None
    try:
        return float(token)
    except ValueError:
        return None


def _parse_labels(text: str, pos: int, end: int) -> tuple[dict[str, str], int] | None:
    """Parse label pairs after `{` up to and including `}`; returns (labels, position after `}`)."""
    labels: dict[str, str] = {}
    while True:
        while pos < end and text[pos] in _BLANK:
            pos += 1
        if pos >= end:
            return None
        if text[pos] == "}":
            return labels, pos + 1
        eq = text.find("=", pos, end)
        if eq < 0:
            return None
        label = text[pos:eq].strip(_BLANK)
        if not _LABEL_NAME.match(label) or label in labels:
            return None
        pos = eq + 1
        while pos < end and text[pos] in _BLANK:
            pos += 1
        if pos >= end or text[pos] != '"':
            return None
        close = text.find('"', pos + 1, end)
        while close >= 0 and _escaped(text, close):
            close = text.find('"', close + 1, end)
        if close < 0:
            return None
        raw = text[pos + 1 : close]
        labels[label] = _ESCAPE.sub(_unescape, raw) if "\\" in raw else raw
        pos = close + 1
        while pos < end and text[pos] in _BLANK:
            pos += 1
        if pos >= end:
            return None
        c = text[pos]
        if c == ",":
            pos += 1
        elif c != "}":
            return None


def _escaped(text: str, quote: int) -> bool:
    """True when the quote at `quote` is preceded by an odd number of backslashes."""
    k = quote - 1
    while text[k] == "\\":
        k -= 1
    return (quote - 1 - k) % 2 == 1


def _unescape(match: re.Match[str]) -> str:
    return _ESCAPES[match.group(0)]
