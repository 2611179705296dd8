"""Fuzz: generated request bodies and header sets through Envoy, generated configs through the loader and
a running daemon's reload (hypothesis).

**Requests.** Each example is one of a few kinds with a known right answer — a valid completion or chat
request (200, from the simulator), a valid one naming a model nobody serves (404, from the simulator; an
empty completion prompt is the simulator's 400, as vLLM's),
bytes that are not JSON, JSON that is not an object, an object without a model, a model that is not a
string or empty (400, from the EPP) — filled with generated text, numbers, unknown fields and extra
headers (random names and values, plus random values for the gateway's own objective, fairness and
request-id headers). The status of each must be the right one.

**Configs.** Generated EndpointPickerConfig documents (random plugin types from the registry, random
parameters, weights, profiles and references, some not YAML at all). Each is judged in this process
(load + build: accepted, or `ConfigError`; any other exception is a crash) and then written to the
running daemon's config file and applied with SIGHUP: the daemon must agree (applied, refused, or
unchanged for the document already live).

Either way: no EPP crash (the process still running, ready) and no traceback in its log.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import signal
import string
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from epp.builtins import default_registry
from epp.config.build import build_pipeline
from epp.config.loader import load_config
from epp.errors import ConfigError
from epp.tools.bench.reliability.rig import MODEL, Row, metric_value, replace_file, until

__all__ = ["ConfigFuzz", "RequestFuzz", "fuzz_configs_in_process", "fuzz_requests"]

_TEXT = st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=60)
_JSON_SCALAR = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=False, allow_infinity=False),
    _TEXT,
)
_JSON = st.recursive(
    _JSON_SCALAR,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_TEXT, inner, max_size=4),
    max_leaves=12,
)
_HEADER_NAME = st.text(alphabet=string.ascii_lowercase + string.digits + "-", min_size=1, max_size=20).map(
    lambda s: "x-fuzz-" + s
)
_HEADER_VALUE = st.text(
    alphabet=string.ascii_letters + string.digits + " -_.,;:/=+*!?()[]{}@#$%^&~", max_size=40
)
_UNKNOWN_FIELD = st.text(alphabet=string.ascii_lowercase + "_", min_size=3, max_size=12).map(
    lambda s: "zz_" + s
)


@st.composite
def _case(draw: st.DrawFn) -> tuple[str, bytes, dict[str, str], int, str]:
    """(kind, body, headers, expected status, path)."""
    kind = draw(
        st.sampled_from(
            ["completion", "chat", "unknown-model", "not-json", "not-object", "no-model", "bad-model"]
        )
    )
    extra: dict[str, Any] = draw(st.dictionaries(_UNKNOWN_FIELD, _JSON, max_size=3))
    headers = draw(st.dictionaries(_HEADER_NAME, _HEADER_VALUE, max_size=4))
    for name in ("x-gateway-inference-objective", "x-gateway-inference-fairness-id", "x-request-id"):
        if draw(st.booleans()):
            headers[name] = draw(_HEADER_VALUE.filter(lambda v: v.strip() != ""))
    prompt = draw(_TEXT)
    common = {"max_tokens": draw(st.integers(1, 3)), "stream": draw(st.booleans()), **extra}
    path = "/v1/completions"
    if kind == "completion":
        body, status = json.dumps({"model": MODEL, "prompt": prompt, **common}).encode(), 200
    elif kind == "chat":
        path = "/v1/chat/completions"
        messages = [{"role": "user", "content": prompt}]
        body, status = json.dumps({"model": MODEL, "messages": messages, **common}).encode(), 200
    elif kind == "unknown-model":
        model = draw(_TEXT.filter(lambda m: m.strip() != "" and m != MODEL))
        body, status = json.dumps({"model": model, "prompt": prompt, **common}).encode(), 404
    elif kind == "not-json":
        raw = draw(st.binary(min_size=1, max_size=200))
        body = b"{" + raw if _parses(raw) else raw
        status = 400
    elif kind == "not-object":
        value = draw(st.one_of(_JSON_SCALAR, st.lists(_JSON, max_size=4)))
        body, status = json.dumps(value).encode(), 400
    elif kind == "no-model":
        body, status = json.dumps({"prompt": prompt, **common}).encode(), 400
    else:
        bad: Any = draw(
            st.one_of(st.just(""), st.integers(), st.lists(_JSON_SCALAR, max_size=2), st.booleans())
        )
        body, status = json.dumps({"model": bad, "prompt": prompt, **common}).encode(), 400
    if kind in ("completion", "unknown-model") and prompt == "":
        status = 400  # the model server refuses an empty prompt (vLLM: "The prompt cannot be empty.")
    return kind, body, headers, status, path


def _parses(raw: bytes) -> bool:
    try:
        json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return False
    return True


@dataclass
class RequestFuzz:
    sent: int = 0
    wrong: Counter[str] = field(default_factory=Counter)
    by_kind: Counter[str] = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)


def fuzz_requests(host: str, port: int, examples: int, seed: int = 0) -> RequestFuzz:
    """Send `examples` generated requests to Envoy (blocking; run it in a thread)."""
    out = RequestFuzz()
    conn = http.client.HTTPConnection(host, port, timeout=30)

    @_examples(examples)
    @given(_case())
    def one(case: tuple[str, bytes, dict[str, str], int, str]) -> None:
        nonlocal conn
        kind, body, headers, expected, path = case
        try:
            conn.request("POST", path, body=body, headers={"content-type": "application/json", **headers})
            resp = conn.getresponse()
            answer = resp.read()
            status = resp.status
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            conn = http.client.HTTPConnection(host, port, timeout=30)
            status = 0
            detail = f"{type(exc).__name__}"
        else:
            detail = answer[:160].decode(errors="replace")
        out.sent += 1
        out.by_kind[kind] += 1
        if status != expected:
            out.wrong[f"{kind}: {status} (want {expected})"] += 1
            if len(out.examples) < 5:
                out.examples.append(f"{kind} {path} {body[:300]!r} {headers} → {status} {detail}")

    one()
    conn.close()
    return out


def _examples(count: int) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Hypothesis settings of a fuzz run: `count` examples, reproducible, no deadline, no example database."""
    return settings(
        max_examples=count,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )


# ---- configs ----------------------------------------------------------------------------------------

_HEAD = {"apiVersion": "inference.networking.x-k8s.io/v1alpha1", "kind": "EndpointPickerConfig"}


@st.composite
def _config_text(draw: st.DrawFn, types: list[str]) -> str:
    if draw(st.integers(0, 19)) == 0:  # now and then, not YAML (or not a mapping) at all
        return draw(st.text(max_size=200))
    plugins = []
    for i in range(draw(st.integers(0, 6))):
        decl: dict[str, Any] = {"type": draw(st.sampled_from(types) | _TEXT)}
        if draw(st.booleans()):
            decl["name"] = draw(st.sampled_from([f"p{i}", f"p{i - 1}", "x"]))
        if draw(st.integers(0, 3)) == 0:
            decl["parameters"] = draw(st.dictionaries(_TEXT, _JSON, max_size=3))
        plugins.append(decl)
    names = [p.get("name", p["type"]) for p in plugins] or ["none"]
    doc: dict[str, Any] = {**_HEAD, "plugins": plugins}
    if draw(st.booleans()):
        refs = []
        for _ in range(draw(st.integers(0, 4))):
            ref: dict[str, Any] = {"pluginRef": draw(st.sampled_from(names) | _TEXT)}
            if draw(st.booleans()):
                ref["weight"] = draw(st.one_of(st.integers(-2, 5), st.floats(-1, 5), _TEXT))
            refs.append(ref)
        doc["schedulingProfiles"] = [{"name": draw(st.sampled_from(["default", "a", ""])), "plugins": refs}]
    if draw(st.integers(0, 4)) == 0:
        doc[draw(st.sampled_from(["featureGates", "saturationDetector", "data", "flowControl", "zz"]))] = (
            draw(_JSON)
        )
    return yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)


@dataclass
class ConfigFuzz:
    verdicts: list[tuple[str, str]] = field(default_factory=list)  # (document, "ok" | "error" | "crash: ...")
    crashes: list[str] = field(default_factory=list)

    @property
    def counts(self) -> Counter[str]:
        return Counter(v if not v.startswith("crash") else "crash" for _, v in self.verdicts)


def fuzz_configs_in_process(examples: int, source: str) -> ConfigFuzz:
    """Judge `examples` generated documents with the loader and the pipeline builder of this process."""
    registry = default_registry()
    types = sorted(registry.names())
    out = ConfigFuzz()

    @_examples(examples)
    @given(_config_text(types))
    def one(text: str) -> None:
        try:
            config = load_config(text, registry=registry, source=source, log_warnings=False)
            if config.is_default:
                raise ConfigError([])  # the daemon refuses an empty document on reload
            build_pipeline(config, registry)
            verdict = "ok"
        except ConfigError:
            verdict = "error"
        except Exception as exc:
            verdict = f"crash: {type(exc).__name__}: {exc}"
            out.crashes.append(f"{verdict}\n{text[:300]}")
        out.verdicts.append((text, verdict))

    one()
    return out


async def fuzz_configs_in_daemon(
    fuzz: ConfigFuzz, config_path: Path, pid: int, metrics: Callable[[], Any], say: Callable[[str], None]
) -> tuple[int, int]:
    """Apply each judged document to the daemon (write, SIGHUP) and compare; (agreeing, compared)."""
    live = hashlib.sha256(config_path.read_bytes()).hexdigest()
    agree = compared = 0
    for text, verdict in fuzz.verdicts:
        if verdict.startswith("crash"):
            continue
        before = await metrics()
        totals = {
            r: metric_value(before, "epp_config_reload_total", result=r)
            for r in ("success", "error", "unchanged")
        }
        replace_file(config_path, text)
        os.kill(pid, signal.SIGHUP)
        seen: dict[str, str] = {}

        async def counted(totals: dict[str, float] = totals, seen: dict[str, str] = seen) -> bool:
            after = await metrics()
            for r, n in totals.items():
                if metric_value(after, "epp_config_reload_total", result=r) > n:
                    seen["result"] = r
                    return True
            return False

        if await until(counted, timeout=10, interval=0.005) is None:
            say(f"  fuzz: no reload counted for a document within 10 s:\n{text[:200]}")
            continue
        digest = hashlib.sha256(text.encode()).hexdigest()
        want = "unchanged" if digest == live else ("success" if verdict == "ok" else "error")
        compared += 1
        if seen["result"] == want:
            agree += 1
        elif compared - agree <= 3:
            say(f"  fuzz: daemon said {seen['result']}, this process {want}:\n{text[:300]}")
        if seen["result"] == "success":
            live = digest
    return agree, compared


def request_rows(result: RequestFuzz, examples: int) -> list[Row]:
    wrong = sum(result.wrong.values())
    for example in result.examples:
        print(f"  fuzz: {example}")
    kinds = ", ".join(f"{k} {n}" for k, n in sorted(result.by_kind.items()))
    return [
        Row(
            "fuzz",
            "generated requests through Envoy (by kind)",
            f"{result.sent} ({kinds})",
            f"{examples}",
            result.sent == examples,
        ),
        Row(
            "fuzz",
            "requests with the wrong status",
            f"{wrong} {dict(result.wrong) or ''}".strip(),
            "0",
            wrong == 0,
        ),
    ]
