"""Building a `Pipeline` from an `EffectiveConfig`: instantiate, slot by kind, assemble the scheduler.

Plugins are created in build order with a handle that sees the plugins created before them (upstream's
`handle.Plugin(name)`, which `decision-tree-filter` needs). Every instantiated plugin is offered to the
request hooks whether or not a profile lists it, as upstream's runner does. On a reload, a stateful
plugin whose type and parameters are unchanged is carried over from the previous pipeline, so the prefix
index and in-flight counters survive.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any, cast

from epp.config.effective import EffectiveConfig, PluginDecl
from epp.config.yamlpos import format_path
from epp.errors import ConfigError, ConfigProblem
from epp.framework.handle import NullPluginMetrics, PluginMetrics, SimpleHandle
from epp.framework.plugins import (
    Admitter,
    DataProducer,
    Filter,
    Picker,
    PluginKind,
    PreRequest,
    ProfileHandler,
    RequestParser,
    ResponseComplete,
    ResponseReader,
    ResponseReceived,
    ResponseWatcher,
    SaturationDetector,
    Scorer,
)
from epp.registry import PluginRegistry
from epp.scheduling.observer import SchedulerObserver
from epp.scheduling.pipeline import Pipeline
from epp.scheduling.profile import SchedulerProfile, WeightedScorer
from epp.scheduling.scheduler import Scheduler

__all__ = ["build_pipeline"]

#: The methods an instance must have for each kind its type declares (checked once, at build time).
_REQUIRED: dict[PluginKind, tuple[str, ...]] = {
    PluginKind.FILTER: ("filter",),
    PluginKind.SCORER: ("score",),
    PluginKind.PICKER: ("pick",),
    PluginKind.PROFILE_HANDLER: ("pick_profiles", "process_results"),
    PluginKind.PARSER: ("parse",),
    PluginKind.DATA_PRODUCER: ("prepare_data",),
    PluginKind.PRE_REQUEST: ("pre_request",),
    PluginKind.RESPONSE_RECEIVED: ("response_received",),
    PluginKind.RESPONSE_COMPLETE: ("response_complete",),
    PluginKind.ADMITTER: ("admit",),
    PluginKind.SATURATION_DETECTOR: ("saturation",),
    PluginKind.NOTIFICATION_EXTRACTOR: ("extract_notification",),
}


def build_pipeline(
    config: EffectiveConfig,
    registry: PluginRegistry,
    *,
    generation: int = 1,
    source: str | None = None,
    config_hash: str | None = None,
    observer: SchedulerObserver | None = None,
    previous: Pipeline | None = None,
    clock: Callable[[], float] = time.monotonic,
    rng: random.Random | None = None,
    metrics: PluginMetrics | None = None,
    config_text: str | bytes | None = None,
) -> Pipeline:
    """Instantiate every plugin and assemble the pipeline; raises ConfigError naming the plugin and line
    when a factory fails or returns something that does not implement its declared kinds.
    `config_text`: the bytes the config was loaded from, kept on the pipeline (None: the built-in
    default or unknown), so another process can build the same generation."""
    handle = SimpleHandle(
        plugins={}, clock=clock, rng=rng or random.Random(), metrics=metrics or NullPluginMetrics()
    )
    specs, kinds = _instantiate(config, registry, handle, previous)
    plugins = handle.plugins
    profiles = _profiles(config, plugins, kinds)
    scheduler = Scheduler(cast(ProfileHandler, plugins[config.profile_handler]), profiles, observer)

    def having(kind: PluginKind) -> tuple[Any, ...]:
        return tuple(plugins[n] for n in plugins if kind in kinds[n])

    return Pipeline(
        generation=generation,
        config_hash=config_hash if config_hash is not None else config.config_hash,
        source=source if source is not None else config.source,
        scheduler=scheduler,
        parser=cast(RequestParser, plugins[config.parser]),
        plugins=dict(plugins),
        plugin_specs=specs,
        producers=tuple(cast(DataProducer, plugins[n]) for n in config.producers),
        admitters=cast(tuple[Admitter, ...], having(PluginKind.ADMITTER)),
        pre_request=cast(tuple[PreRequest, ...], having(PluginKind.PRE_REQUEST)),
        response_received=cast(tuple[ResponseReceived, ...], having(PluginKind.RESPONSE_RECEIVED)),
        response_complete=cast(tuple[ResponseComplete, ...], having(PluginKind.RESPONSE_COMPLETE)),
        saturation_detector=(
            cast(SaturationDetector, plugins[config.saturation_detector])
            if config.saturation_detector is not None
            else None
        ),
        feature_gates=config.feature_gates,
        extras={"flowControl": config.flow_control, "dataLayer": config.data_layer},
        effective_config=config.to_document(),
        config_text=config_text.encode() if isinstance(config_text, str) else config_text,
        reads_first_byte=any(isinstance(p, ResponseWatcher) and p.reads_first_byte for p in plugins.values()),
        response_writers=any(
            not (isinstance(p, ResponseReader) and p.reads_response_only)
            for p in (*having(PluginKind.RESPONSE_RECEIVED), *having(PluginKind.RESPONSE_COMPLETE))
        ),
    )


def _instantiate(
    config: EffectiveConfig, registry: PluginRegistry, handle: SimpleHandle, previous: Pipeline | None
) -> tuple[dict[str, str], dict[str, frozenset[PluginKind]]]:
    """Create every plugin in build order into `handle.plugins` (or carry it over from `previous`);
    returns their specs and kinds by name. Raises ConfigError listing every plugin that failed."""
    problems: list[ConfigProblem] = []
    specs: dict[str, str] = {}
    kinds: dict[str, frozenset[PluginKind]] = {}
    for decl in config.plugins:
        ptype = registry.get(decl.type)
        spec = decl.spec
        instance = _reusable(previous, decl.name, spec) if ptype.stateful else None
        if instance is None:
            try:
                instance = ptype.factory(decl.name, decl.params, handle)
            except Exception as exc:
                problems.append(_problem(config, decl, f"failed to create {decl.describe()}: {_reason(exc)}"))
                continue
        missing = [
            m
            for k in sorted(ptype.kinds)
            for m in _REQUIRED.get(k, ())
            if not callable(getattr(instance, m, None))
        ]
        if missing:
            problems.append(
                _problem(
                    config,
                    decl,
                    f"{decl.describe()}: the instance its factory built has no {', '.join(missing)}() "
                    f"although the type declares {', '.join(sorted(ptype.kinds))}",
                )
            )
            continue
        handle.plugins[decl.name] = instance
        specs[decl.name] = spec
        kinds[decl.name] = ptype.kinds
    if problems:
        raise ConfigError(problems)
    return specs, kinds


def _profiles(
    config: EffectiveConfig, plugins: dict[str, object], kinds: dict[str, frozenset[PluginKind]]
) -> dict[str, SchedulerProfile]:
    """Each profile's filters, weighted scorers and picker, in the order the profile lists them."""
    return {
        prof.name: SchedulerProfile(
            name=prof.name,
            filters=tuple(
                cast(Filter, plugins[e.plugin]) for e in prof.entries if PluginKind.FILTER in kinds[e.plugin]
            ),
            scorers=tuple(
                WeightedScorer(cast(Scorer, plugins[e.plugin]), e.weight)
                for e in prof.entries
                if PluginKind.SCORER in kinds[e.plugin]
            ),
            picker=next(
                cast(Picker, plugins[e.plugin]) for e in prof.entries if PluginKind.PICKER in kinds[e.plugin]
            ),
        )
        for prof in config.profiles
    }


def _reusable(previous: Pipeline | None, name: str, spec: str) -> object | None:
    if previous is None or previous.plugin_specs.get(name) != spec:
        return None
    return previous.plugins.get(name)


def _reason(exc: Exception) -> str:
    text = str(exc)
    if isinstance(exc, KeyError) and exc.args:  # handle.plugin(name) of a plugin declared later or not at all
        return f"no plugin named {exc.args[0]!r} is declared before it"
    return text or type(exc).__name__


def _problem(config: EffectiveConfig, decl: PluginDecl, message: str) -> ConfigProblem:
    path = format_path(decl.path)
    if not decl.declared:
        message = f"{message} (added by default: {decl.default_reason})"
    return ConfigProblem(config.source, decl.line, path, message)
