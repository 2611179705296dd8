"""A targeted scanner for the Prometheus text exposition format (version 0.0.4).

Why not `prometheus_client.parser`: it parses every line of a page into objects. A vLLM page is 20-80 KB
of mostly histogram buckets, so it costs ~9 ms per page, and 64 endpoints every 50 ms would need more than
ten cores (measured by `python -m epp.bench.scrape`, see docs/benchmarks.md). The scheduler needs about
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
from itertools import chain
from typing import NamedTuple

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


def scan(text: str, names: Iterable[str]) -> ScanResult:
    """Find every sample of each metric name in `names` in a text-format page (one pass)."""
    wanted = tuple(sorted(set(names), key=lambda s: (-len(s), s)))
    out: dict[str, list[Sample]] = {name: [] for name in wanted}
    if not wanted:
        return ScanResult(out, 0)
    head, body = _finders(wanted)
    first = head.match(text)
    matches = body.finditer(text) if first is None else chain((first,), body.finditer(text))
    malformed = 0
    size = len(text)
    find = text.find
    for m in matches:
        name = m.group(1)
        pos = m.end(1)
        end = find("\n", pos)
        if end < 0:
            end = size
        line = text[m.start(1) : end]
        sample = _LINES.get(line)
        if sample is None:
            sample = _parse_rest(name, text, pos, end)
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
_LINES: dict[str, Sample] = {}
_LINES_MAX = 16_384


_FINDERS: dict[tuple[str, ...], tuple[re.Pattern[str], re.Pattern[str]]] = {}


def _finders(wanted: tuple[str, ...]) -> tuple[re.Pattern[str], re.Pattern[str]]:
    """(first-line pattern, other-lines pattern) for a set of names, compiled once per set.

    The other-lines pattern starts with a literal newline, which the regex engine scans for quickly; a
    name must be followed by `{`, a blank or the end of the line, so `foo` never matches `foo_bar`.
    """
    found = _FINDERS.get(wanted)
    if found is None:
        if len(_FINDERS) > 256:  # the names come from config; bound the cache anyway
            _FINDERS.clear()
        line = r"[ \t]*(" + "|".join(re.escape(name) for name in wanted) + r")(?=[ \t{\r\n]|\Z)"
        found = (re.compile(line), re.compile("\n" + line))
        _FINDERS[wanted] = found
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
