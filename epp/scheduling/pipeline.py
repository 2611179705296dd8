"""The pipeline: everything one config generation built, and the holder that swaps it atomically.

A request takes `holder.current` once when its stream starts and uses that pipeline to the end, so a
reload never changes the rules under an in-flight request. `swap` is a single attribute assignment on the
event-loop thread; readers never lock.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from epp.framework.notify import notify_all
from epp.framework.plugins import (
    Admitter,
    DataProducer,
    PreRequest,
    RequestParser,
    ResponseComplete,
    ResponseReceived,
    SaturationDetector,
)
from epp.scheduling.scheduler import Scheduler

__all__ = ["Pipeline", "PipelineHolder"]


@dataclass(frozen=True)
class Pipeline:
    """One built config generation.

    Attributes:
        generation: 1 for the config loaded at start, +1 per successful reload.
        config_hash: sha256 of the config bytes (or of the canonical default config).
        source: where the config came from (a path, "<config-text>" or "<default>").
        plugins: every instance by configured name (including ones not used by any profile).
        plugin_specs: canonical JSON of each plugin's (type, parameters), to reuse unchanged instances.
        producers: data producers in dependency order.
        extras: plugin-independent config sections (flow control, data layer ...) as validated models.
        config_text: the bytes the config was loaded from (None: the built-in default), so that the
            workers of a pod build the same generation.
        response_writers: a response hook may set response headers or metadata (it does not declare
            `ResponseReader.reads_response_only`), so the routing stream must see the response headers.
        reads_first_byte: a plugin reads `ResponseInfo.first_byte_at` (see `ResponseWatcher`), so the
            response's first body chunk must be observed.
    """

    generation: int
    config_hash: str
    source: str
    scheduler: Scheduler
    parser: RequestParser
    plugins: Mapping[str, object]
    plugin_specs: Mapping[str, str] = field(default_factory=dict)
    producers: tuple[DataProducer, ...] = ()
    admitters: tuple[Admitter, ...] = ()
    pre_request: tuple[PreRequest, ...] = ()
    response_received: tuple[ResponseReceived, ...] = ()
    response_complete: tuple[ResponseComplete, ...] = ()
    saturation_detector: SaturationDetector | None = None
    feature_gates: frozenset[str] = frozenset()
    extras: Mapping[str, Any] = field(default_factory=dict)
    effective_config: Mapping[str, Any] = field(default_factory=dict)
    config_text: bytes | None = None
    reads_first_byte: bool = False
    response_writers: bool = False


class PipelineHolder:
    """Holds the live pipeline; `swap` replaces it and notifies listeners (metrics, background tasks)."""

    def __init__(self, initial: Pipeline) -> None:
        self.current = initial
        self._listeners: list[Callable[[Pipeline, Pipeline], None]] = []

    def subscribe(self, listener: Callable[[Pipeline, Pipeline], None]) -> None:
        """Call `listener(old, new)` after every swap."""
        self._listeners.append(listener)

    def swap(self, new: Pipeline) -> Pipeline:
        old = self.current
        self.current = new
        notify_all(self._listeners, old, new, what="a pipeline swap")
        return old
