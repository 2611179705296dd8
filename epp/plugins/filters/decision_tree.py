"""`decision-tree-filter` (v0.5): run filters as a flow chart.

Each node runs `current`; when it keeps some endpoints, `nextOnSuccess` (or `nextOnSuccessOrFailure`) runs
on those; when it keeps none, `nextOnFailure` (or `nextOnSuccessOrFailure`) runs on the node's *input*;
without a next step the node's own result stands. Each step is `{pluginRef: <filter>}` or a nested
`{decisionTree: {...}}`. References are resolved when the plugin is built, so they must name filter
plugins declared earlier in the config.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

from pydantic import BaseModel, ConfigDict, Field, model_validator

from epp.framework.cycle import CycleState
from epp.framework.handle import Handle
from epp.framework.plugins import Filter, PluginKind
from epp.framework.types import Endpoint, InferenceRequest, TypedName
from epp.registry import PluginType

__all__ = ["DECISION_TREE_FILTER", "DecisionTreeEntry", "DecisionTreeFilter", "DecisionTreeParams"]

TYPE_NAME = "decision-tree-filter"


class DecisionTreeEntry(BaseModel):
    """One step: exactly one of a filter plugin reference or a nested tree."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    pluginRef: str | None = Field(default=None, description="Name of a filter plugin declared earlier.")
    decisionTree: DecisionTreeParams | None = Field(default=None, description="A nested decision tree.")

    @model_validator(mode="after")
    def _exactly_one(self) -> DecisionTreeEntry:
        if self.pluginRef is not None and self.decisionTree is not None:
            raise ValueError("both pluginRef and decisionTree may not be specified")
        if self.pluginRef is None and self.decisionTree is None:
            raise ValueError("one of pluginRef or decisionTree must be specified")
        return self


class DecisionTreeParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    current: DecisionTreeEntry = Field(description="The filter this node runs first (required).")
    nextOnSuccess: DecisionTreeEntry | None = Field(
        default=None, description="Runs on the endpoints `current` kept, when it kept any."
    )
    nextOnFailure: DecisionTreeEntry | None = Field(
        default=None, description="Runs on this node's input when `current` kept none."
    )
    nextOnSuccessOrFailure: DecisionTreeEntry | None = Field(
        default=None, description="Runs next in either case unless the specific branch is set."
    )


DecisionTreeEntry.model_rebuild()


@dataclass(frozen=True, slots=True)
class _Node:
    typed_name: TypedName
    current: Filter
    on_success: Filter | None
    on_failure: Filter | None

    def filter(
        self, cycle: CycleState, request: InferenceRequest, endpoints: Sequence[Endpoint]
    ) -> Sequence[Endpoint]:
        kept = self.current.filter(cycle, request, endpoints)
        if kept:
            return kept if self.on_success is None else self.on_success.filter(cycle, request, kept)
        return kept if self.on_failure is None else self.on_failure.filter(cycle, request, endpoints)


@dataclass(frozen=True, slots=True)
class DecisionTreeFilter:
    typed_name: TypedName
    root: _Node

    def filter(
        self, cycle: CycleState, request: InferenceRequest, endpoints: Sequence[Endpoint]
    ) -> Sequence[Endpoint]:
        return self.root.filter(cycle, request, endpoints)


def _resolve(entry: DecisionTreeEntry, handle: Handle, path: str) -> Filter:
    if entry.decisionTree is not None:
        return _build(entry.decisionTree, handle, f"{path}.decisionTree")
    ref = cast(str, entry.pluginRef)
    try:
        plugin = handle.plugin(ref)
    except KeyError:
        raise ValueError(
            f"{path}.pluginRef: no plugin named '{ref}' is declared before this decision tree "
            "(a decision-tree-filter can only refer to filters declared earlier in 'plugins')"
        ) from None
    if not callable(getattr(plugin, "filter", None)):
        raise ValueError(f"{path}.pluginRef: '{ref}' is not a filter")
    return cast(Filter, plugin)


def _build(params: DecisionTreeParams, handle: Handle, path: str) -> _Node:
    current = _resolve(params.current, handle, f"{path}.current")
    either = params.nextOnSuccessOrFailure
    on_either = None if either is None else _resolve(either, handle, f"{path}.nextOnSuccessOrFailure")
    on_success = on_either
    if params.nextOnSuccess is not None:
        on_success = _resolve(params.nextOnSuccess, handle, f"{path}.nextOnSuccess")
    on_failure = on_either
    if params.nextOnFailure is not None:
        on_failure = _resolve(params.nextOnFailure, handle, f"{path}.nextOnFailure")
    return _Node(current.typed_name, current, on_success, on_failure)


def _factory(name: str, params: DecisionTreeParams, handle: Handle) -> DecisionTreeFilter:
    return DecisionTreeFilter(TypedName(TYPE_NAME, name), _build(params, handle, "parameters"))


DECISION_TREE_FILTER = PluginType(
    type_name=TYPE_NAME,
    params_model=DecisionTreeParams,
    factory=_factory,
    kinds=frozenset({PluginKind.FILTER}),
    description="Legacy v0.5: runs filters as a flow chart (current, nextOnSuccess, nextOnFailure).",
)
