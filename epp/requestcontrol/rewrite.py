"""Model rewrite: the `x-gateway-model-name-rewrite` header and InferenceModelRewrite rules.

Rule precedence (upstream): a rule naming the model exactly beats a generic (match-all) rule; then the oldest
resource; then list order. The pick among a rule's targets is weighted (all weights 0: uniform).
The rule index is rebuilt only when the datastore publishes a new rules tuple.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass

from epp.datalayer.datastore import ModelRewriteRule

__all__ = ["ModelNameRestorer", "RewriteDecision", "RewriteIndex", "pick_weighted"]


@dataclass(frozen=True, slots=True)
class RewriteDecision:
    """The target model and, when a rule chose it, that rule's name (for the metric)."""

    target: str
    rule: str = ""


def pick_weighted(rule: ModelRewriteRule, rng: random.Random) -> str:
    """upstream `selectWeightedModel`: r in [0, total), walk the cumulative weights; total 0 → uniform."""
    targets = rule.targets
    total = sum(max(t.weight, 0) for t in targets)
    if total <= 0:
        return targets[rng.randrange(len(targets))].model
    r = rng.randrange(total)
    for t in targets:
        w = max(t.weight, 0)
        if r < w:
            return t.model
        r -= w
    return targets[-1].model  # unreachable unless weights changed under us


class RewriteIndex:
    """Resolves the rule that applies to a model; caches per rules tuple."""

    def __init__(self) -> None:
        self._rules: tuple[ModelRewriteRule, ...] | None = None
        self._exact: dict[str, ModelRewriteRule] = {}
        self._generic: ModelRewriteRule | None = None

    def _rebuild(self, rules: tuple[ModelRewriteRule, ...]) -> None:
        exact: dict[str, ModelRewriteRule] = {}
        generic: ModelRewriteRule | None = None
        for rule in sorted(rules, key=lambda r: (r.created, r.order)):
            if not rule.targets:
                continue
            if not rule.matches:
                if generic is None:
                    generic = rule
                continue
            for model in rule.matches:
                exact.setdefault(model, rule)
        self._rules, self._exact, self._generic = rules, exact, generic

    def rule_for(self, model: str, rules: tuple[ModelRewriteRule, ...]) -> ModelRewriteRule | None:
        if rules is not self._rules:
            self._rebuild(rules)
        return self._exact.get(model, self._generic)

    def decide(
        self, model: str, header_target: str | None, rules: Sequence[ModelRewriteRule], rng: random.Random
    ) -> RewriteDecision:
        """Target = header override if given, else the model; a matching rule overrides both."""
        target = header_target or model
        if rules:
            rule = self.rule_for(model, tuple(rules) if not isinstance(rules, tuple) else rules)
            if rule is not None:
                return RewriteDecision(pick_weighted(rule, rng), rule.name)
        return RewriteDecision(target)


class ModelNameRestorer:
    """Rewrites the model name back in response bytes: `"model":"<target>"` → `"model":"<incoming>"`.

    A literal byte replace as upstream does (also the `"model": "<target>"` spacing). For streamed
    responses `feed` emits only complete lines and holds back the rest until the next chunk, so a pattern
    split across two chunks is still replaced; `flush` returns what is held at end of stream.
    """

    __slots__ = ("_carry", "_pairs")

    #: Emit held-back bytes anyway once they exceed this (a stream without newlines).
    MAX_HOLD = 64 * 1024

    def __init__(self, target: str, incoming: str) -> None:
        t = json.dumps(target).encode()
        i = json.dumps(incoming).encode()
        self._pairs = ((b'"model":' + t, b'"model":' + i), (b'"model": ' + t, b'"model": ' + i))
        self._carry = b""

    def replace(self, data: bytes) -> bytes:
        for old, new in self._pairs:
            if old in data:
                data = data.replace(old, new)
        return data

    def feed(self, chunk: bytes) -> bytes:
        buf = self._carry + chunk if self._carry else chunk
        end = buf.rfind(b"\n")
        if end < 0 and len(buf) <= self.MAX_HOLD:
            self._carry = buf
            return b""
        if end < 0:
            end = len(buf) - 1
        self._carry = buf[end + 1 :]
        return self.replace(buf[: end + 1])

    def flush(self) -> bytes:
        carry, self._carry = self._carry, b""
        return self.replace(carry) if carry else b""
