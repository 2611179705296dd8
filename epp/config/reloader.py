"""Hot reload: turn new config bytes into a new pipeline and swap it in, or keep the old one and say why.

Parsing, validation and building run in a worker thread (off the event loop, so requests keep flowing);
only the final swap happens on the loop, as one attribute assignment. Stateful plugins whose type, name
and parameters are unchanged are carried over (the builder reuses them), so an unrelated weight edit does
not forget the prefix-cache index. A bad document never replaces a good pipeline: the error goes to the
log at ERROR as `FILE:LINE: path: message` lines and to `epp_config_reload_total{result="error"}`.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging

from epp.config.build import build_pipeline
from epp.config.loader import load_config
from epp.errors import ConfigError, ConfigProblem
from epp.framework.handle import PluginMetrics
from epp.observability.metrics import EppMetrics
from epp.registry import PluginRegistry
from epp.scheduling.observer import SchedulerObserver
from epp.scheduling.pipeline import Pipeline, PipelineHolder

__all__ = ["ConfigReloader"]

log = logging.getLogger(__name__)


class ConfigReloader:
    def __init__(
        self,
        holder: PipelineHolder,
        registry: PluginRegistry,
        *,
        source: str,
        metrics: EppMetrics,
        observer: SchedulerObserver | None = None,
        plugin_metrics: PluginMetrics | None = None,
    ) -> None:
        self.holder = holder
        self.registry = registry
        self.source = source
        self.metrics = metrics
        self.observer = observer
        self.plugin_metrics = plugin_metrics or metrics
        self._lock = asyncio.Lock()
        self.last_error: ConfigError | None = None

    def _build(self, data: bytes, previous: Pipeline) -> Pipeline:
        config = load_config(data, registry=self.registry, source=self.source)
        if config.is_default:
            # At start-up an empty file means "the built-in default"; on a running daemon it is far more
            # often an edit caught half-written (truncate, then write) than a wish to drop every setting.
            raise ConfigError(
                [
                    ConfigProblem(
                        self.source,
                        1,
                        "",
                        "the file is empty (or only comments): not applied on a running daemon; "
                        "write the config out in full, or restart to run the built-in default",
                    )
                ]
            )
        return build_pipeline(
            config,
            self.registry,
            generation=previous.generation + 1,
            observer=self.observer,
            previous=previous,
            metrics=self.plugin_metrics,
            config_text=data,
        )

    async def reload(self, data: bytes) -> bool:
        """Apply `data`; returns True when a new pipeline went live."""
        async with self._lock:
            previous = self.holder.current
            digest = hashlib.sha256(data).hexdigest()
            if digest == previous.config_hash:
                log.info("config %s unchanged (sha256 %s); nothing to reload", self.source, digest[:12])
                self.metrics.record_reload("unchanged")
                return False
            try:
                pipeline = await asyncio.to_thread(self._build, data, previous)
            except ConfigError as exc:
                self.last_error = exc
                self.metrics.record_reload("error")
                log.error(
                    "config reload failed; keeping generation %d (sha256 %s):\n%s",
                    previous.generation,
                    previous.config_hash[:12],
                    exc,
                )
                return False
            except Exception:
                # a plugin factory bug must not take the daemon down: keep serving the old pipeline
                self.last_error = None
                self.metrics.record_reload("error")
                log.exception("config reload failed unexpectedly; keeping generation %d", previous.generation)
                return False
            if self.holder.current is not previous:  # cannot happen under the lock; be explicit anyway
                return False
            self.holder.swap(pipeline)
            self.last_error = None
            self.metrics.record_reload("success")
            self.metrics.record_config_loaded(pipeline.generation, pipeline.config_hash, pipeline.source)
            reused = sum(1 for n, p in pipeline.plugins.items() if previous.plugins.get(n) is p)
            log.info(
                "config reloaded from %s: generation %d (sha256 %s), %d plugin(s) carried over",
                self.source,
                pipeline.generation,
                pipeline.config_hash[:12],
                reused,
            )
            return True
