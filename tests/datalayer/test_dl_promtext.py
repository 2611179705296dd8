"""The targeted text-format scanner: edge cases, and equivalence with prometheus_client's parser."""

from __future__ import annotations

import math
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from epp.datalayer.promtext import Sample, scan
from epp.tools.engine_pages import (
    ServerState,
    sglang_page,
    triton_trtllm_page,
    trtllm_serve_page,
    vllm_page,
)


def written_name(text: str, family_type: str, name: str) -> str:
    """Undo prometheus_client's renaming of a counter's samples to `<name>_total` when the page wrote
    them without the suffix (Go's parser, and ours, keep the name as written)."""
    if (
        family_type == "counter"
        and name.endswith("_total")
        and not re.search(r"^[ \t]*" + re.escape(name) + r"[ \t{]", text, re.M)
    ):
        return name[: -len("_total")]
    return name


def reference(text: str, names: set[str]) -> dict[str, list[tuple]]:
    """prometheus_client's reading of the page, flattened to samples by (written) sample name."""
    out: dict[str, list[tuple]] = {n: [] for n in names}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            name = written_name(text, family.type, s.name)
            if name in out:
                out[name].append((dict(s.labels), float(s.value), s.timestamp))
    return out


def page_names(text: str) -> set[str]:
    return {
        written_name(text, fam.type, s.name)
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


def ours(text: str, names: set[str]) -> dict[str, list[tuple]]:
    from_str, from_bytes = scan(text, names), scan(text.encode(), names)
    assert from_str.malformed == from_bytes.malformed == 0
    flat = [
        {
            n: [
                (dict(s.labels), s.value, None if s.timestamp_ms is None else s.timestamp_ms / 1000)
                for s in result.samples[n]
            ]
            for n in names
        }
        for result in (from_str, from_bytes)
    ]
    assert same(flat[0], flat[1])  # the raw-body (bytes) path reads the same
    return flat[0]


def same(a: dict[str, list[tuple]], b: dict[str, list[tuple]]) -> bool:
    if a.keys() != b.keys():
        return False
    for name in a:
        if len(a[name]) != len(b[name]):
            return False
        for (la, va, ta), (lb, vb, tb) in zip(a[name], b[name], strict=True):
            if la != lb or ta != tb:
                return False
            if not (va == vb or (math.isnan(va) and math.isnan(vb))):
                return False
    return True


# ---- edge cases -------------------------------------------------------------------------------------


def test_escapes_in_label_values():
    text = 'm{a="x\\"y",b="back\\\\slash",c="new\\nline",d="}{,="} 1\n'
    [s] = scan(text, ["m"]).samples["m"]
    assert s.labels == {"a": 'x"y', "b": "back\\slash", "c": "new\nline", "d": "}{,="}


def test_special_values_and_timestamps():
    text = "a NaN\nb +Inf 1700000000000\nc -Inf\nd 1.5e-3 -5\n"
    r = scan(text, ["a", "b", "c", "d"]).samples
    assert math.isnan(r["a"][0].value)
    assert r["b"][0] == Sample("b", {}, math.inf, 1700000000000)
    assert r["c"][0].value == -math.inf
    assert r["d"][0] == Sample("d", {}, 0.0015, -5)


def test_names_must_match_exactly_and_start_a_line():
    text = (
        "# HELP foo foo is documented here\n"
        "# TYPE foo gauge\n"
        "foo_bar 1\n"
        'x{v="foo 3"} 2\n'
        "foo 4\n"
        '  foo{a="b"}\t5\n'
    )
    r = scan(text, ["foo"]).samples["foo"]
    assert [(dict(s.labels), s.value) for s in r] == [({}, 4.0), ({"a": "b"}, 5.0)]


def test_first_line_and_missing_final_newline():
    r = scan("foo 1\nbar 2", ["foo", "bar"]).samples
    assert r["foo"][0].value == 1.0 and r["bar"][0].value == 2.0


def test_crlf_line_endings():
    r = scan('foo 1\r\nbar{a="b"} 2\r\n', ["foo", "bar"]).samples
    assert r["foo"][0].value == 1.0 and r["bar"][0].labels == {"a": "b"}


@pytest.mark.parametrize(
    "line",
    [
        "foo",
        "foo ",
        'foo{a="b"}',
        'foo{a="b" 1',
        "foo{a=b} 1",
        'foo{a="b",a="c"} 1',
        'foo{1a="b"} 1',
        "foo 1_000",
        "foo one",
        "foo 1 2 3",
        "foo 1 1.5",
        'foo{a="b"}1',
    ],
)
def test_malformed_wanted_lines_are_counted_not_fatal(line):
    result = scan(f"{line}\nbar 7\n", ["foo", "bar"])
    assert result.samples["foo"] == []
    assert result.malformed == 1
    assert result.samples["bar"][0].value == 7.0


def test_empty_label_set_and_trailing_comma():
    r = scan('foo{} 1\nfoo{a="b",} 2\n', ["foo"]).samples["foo"]
    assert [dict(s.labels) for s in r] == [{}, {"a": "b"}]


def test_unrequested_names_are_never_parsed():
    # A broken line of a series nobody asked for costs nothing and is not reported.
    result = scan("garbage{{{ 1\nfoo 1\n", ["foo"])
    assert result.malformed == 0 and result.samples["foo"][0].value == 1.0


def test_repeated_lines_share_the_parse_cache_safely():
    text = 'foo{a="1"} 1\n'
    first = scan(text, ["foo"]).samples["foo"][0]
    second = scan(text, ["foo"]).samples["foo"][0]
    assert first == second
    other = scan('foo{a="1"} 2\n', ["foo"]).samples["foo"][0]
    assert other.value == 2.0


# ---- equivalence with prometheus_client -----------------------------------------------------------

TARGETS = ["vllm:num_requests_waiting", "vllm:kv_cache_usage_perc", "nv_trt_llm_request_metrics", "up"]
NAME_POOL = [
    *TARGETS,
    "vllm:num_requests_waiting_total",
    "vllm:num_requests_waiting_x",
    "upx",
    "up_total",
    "http_requests_total",
    "process_cpu_seconds_total",
]

metric_names = st.one_of(
    st.sampled_from(NAME_POOL), st.from_regex(r"[a-zA-Z_:][a-zA-Z0-9_:]{0,12}", fullmatch=True)
)
label_names = st.from_regex(r"[a-zA-Z][a-zA-Z0-9_]{0,8}", fullmatch=True)
label_values = st.one_of(
    st.sampled_from(["", "a", 'q"uote', "back\\slash", "new\nline", "}", ",", "=", "# x", "up 1", "vllm:x"]),
    st.text(max_size=12),
)
values = st.one_of(
    st.integers(-(10**12), 10**12).map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.sampled_from(["NaN", "+Inf", "-Inf", "1e3", "-0.5", "0"]),
)
blank = st.sampled_from([" ", "  ", "\t"])


def escape(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


@st.composite
def sample_lines(draw, name: str) -> str:
    labels = draw(st.dictionaries(label_names, label_values, max_size=3))
    sep = draw(blank)
    lead = draw(st.sampled_from(["", "", " ", "\t"]))
    gap = draw(st.sampled_from(["", "", " "]))
    if labels or draw(st.booleans()):
        comma = draw(st.sampled_from([",", ", "]))
        body = comma.join(f'{k}="{escape(v)}"' for k, v in labels.items())
        if labels and draw(st.booleans()):
            body += ","
        head = f"{name}{gap}{{{body}}}"
    else:
        head = name
    line = f"{lead}{head}{sep}{draw(values)}"
    if draw(st.booleans()):
        line += sep + str(draw(st.integers(-(10**13), 10**13)))
    return line + draw(st.sampled_from(["", " "]))


@st.composite
def pages(draw) -> str:
    lines: list[str] = []
    for _ in range(draw(st.integers(1, 8))):
        name = draw(metric_names)
        kind = draw(st.sampled_from(["gauge", "untyped", "counter", "histogram", "summary", None]))
        if kind == "counter" and not name.endswith("_total"):
            kind = "gauge"
        if draw(st.booleans()):
            help_text = escape(draw(st.one_of(st.text(max_size=20), st.sampled_from(TARGETS))))
            lines.append(f"# HELP {name} {help_text}")
        if kind is not None:
            lines.append(f"# TYPE {name} {kind}")
        suffixes = {"histogram": ["_bucket", "_sum", "_count"], "summary": ["", "_sum", "_count"]}.get(
            kind or "", [""]
        )
        for _ in range(draw(st.integers(0, 4))):
            lines.append(draw(sample_lines(name + draw(st.sampled_from(suffixes)))))
        if draw(st.booleans()):
            lines.append(
                draw(st.sampled_from(["", "# a comment up 1", "#", "# note: vllm:num_requests_waiting 5"]))
            )
    return "\n".join(lines) + draw(st.sampled_from(["\n", ""]))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pages(), st.sets(st.sampled_from(NAME_POOL), max_size=4))
def test_equivalent_to_prometheus_client_on_generated_pages(text, extra):
    names = set(TARGETS) | extra
    names |= page_names(text)  # also every name the page actually has
    assert same(ours(text, names), reference(text, names))


ENGINE_PAGES = [
    vllm_page(ServerState(waiting=3, running=2, kv_usage=0.5, running_loras=("a",), max_loras=2)),
    vllm_page(ServerState(), legacy_kv_name=True, engines=2),
    sglang_page(ServerState(waiting=1)),
    trtllm_serve_page(ServerState(running=4)),
    triton_trtllm_page(ServerState(kv_usage=0.125)),
]


@pytest.mark.parametrize(
    "page", ENGINE_PAGES, ids=["vllm", "vllm-legacy-dp2", "sglang", "trtllm-serve", "triton"]
)
def test_equivalent_on_engine_fixtures_for_every_series(page):
    names = page_names(page)
    assert len(names) > 20
    assert same(ours(page, names), reference(page, names))
