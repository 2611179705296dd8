"""`prefill-filter` and `decode-filter`: keep the endpoints that may serve one stage of P/D disaggregation.

llm-d's role filters (`bylabel/roles.go`): each reads the pod label `llm-d.ai/role`.

- `decode-filter` keeps `decode`, `prefill-decode`, `both` (deprecated alias of `prefill-decode`) and
  `encode-prefill-decode`, and endpoints **without** the label (an unlabelled pod is an ordinary
  aggregated server, so a decode profile still works on a fleet that was never labelled);
- `prefill-filter` keeps `prefill`, `encode-prefill`, `prefill-decode`, `both` and
  `encode-prefill-decode`; an endpoint without the label is dropped.

As in llm-d the label name is fixed and neither filter takes parameters.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from epp.framework.cycle import CycleState
from epp.framework.handle import Handle
from epp.framework.plugins import PluginKind
from epp.framework.types import Endpoint, InferenceRequest, TypedName
from epp.registry import EmptyParams, PluginType

__all__ = [
    "DECODE_FILTER",
    "DECODE_ROLES",
    "PREFILL_FILTER",
    "PREFILL_ROLES",
    "ROLE_LABEL",
    "RoleFilter",
]

#: The pod label llm-d's role filters read.
ROLE_LABEL = "llm-d.ai/role"

ROLE_DECODE = "decode"
ROLE_PREFILL = "prefill"
ROLE_PREFILL_DECODE = "prefill-decode"
ROLE_ENCODE_PREFILL = "encode-prefill"
ROLE_ENCODE_PREFILL_DECODE = "encode-prefill-decode"
ROLE_BOTH = "both"  # deprecated alias of prefill-decode

DECODE_ROLES = frozenset({ROLE_DECODE, ROLE_PREFILL_DECODE, ROLE_BOTH, ROLE_ENCODE_PREFILL_DECODE})
PREFILL_ROLES = frozenset(
    {ROLE_PREFILL, ROLE_ENCODE_PREFILL, ROLE_PREFILL_DECODE, ROLE_BOTH, ROLE_ENCODE_PREFILL_DECODE}
)


@dataclass(frozen=True, slots=True)
class RoleFilter:
    """Keeps endpoints whose role label is one of `roles` (or that have none, when `allows_no_label`)."""

    typed_name: TypedName
    roles: frozenset[str]
    allows_no_label: bool
    label: str = ROLE_LABEL

    def filter(
        self, cycle: CycleState, request: InferenceRequest, endpoints: Sequence[Endpoint]
    ) -> Sequence[Endpoint]:
        label, roles, no_label = self.label, self.roles, self.allows_no_label
        out: list[Endpoint] = []
        for e in endpoints:
            value = e.labels.get(label)
            if value in roles if value is not None else no_label:
                out.append(e)
        return out


def _decode(name: str, params: EmptyParams, handle: Handle) -> RoleFilter:
    return RoleFilter(TypedName("decode-filter", name), DECODE_ROLES, allows_no_label=True)


def _prefill(name: str, params: EmptyParams, handle: Handle) -> RoleFilter:
    return RoleFilter(TypedName("prefill-filter", name), PREFILL_ROLES, allows_no_label=False)


DECODE_FILTER = PluginType(
    type_name="decode-filter",
    params_model=EmptyParams,
    factory=_decode,
    kinds=frozenset({PluginKind.FILTER}),
    description="P/D: keeps endpoints labelled llm-d.ai/role decode, prefill-decode or both, "
    "and unlabelled ones.",
)

PREFILL_FILTER = PluginType(
    type_name="prefill-filter",
    params_model=EmptyParams,
    factory=_prefill,
    kinds=frozenset({PluginKind.FILTER}),
    description="P/D: keeps endpoints labelled llm-d.ai/role prefill, prefill-decode or both.",
)
