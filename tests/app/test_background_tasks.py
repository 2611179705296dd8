"""The daemon's background tasks: a plugin loop that dies is reported, one-shot reload tasks do not pile
up, and a reload that drops a plugin with a loop stops that loop."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

from epp.app import App
from epp.builtins import builtin_registry
from epp.framework.cycle import CycleState
from epp.framework.plugins import PluginKind, ScorerCategory
from epp.framework.types import Endpoint, InferenceRequest, TypedName
from epp.registry import EmptyParams, PluginType
from epp.settings import parse_settings
from epp.tools.loadgen.gateway import epp_flags
from tests.helpers import free_port, until

CONFIG = """\
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- {type: queue-scorer}
- {type: max-score-picker}
- {name: looper, type: %s}
schedulingProfiles:
- name: default
  plugins: [{pluginRef: queue-scorer}, {pluginRef: max-score-picker}]
"""

started: list[str] = []
cancelled: list[str] = []


class LoopingScorer:
    """An unused scorer with a background loop; `crash-` types raise in it, others run until cancelled."""

    category = ScorerCategory.BALANCE

    def __init__(self, type_name: str, name: str) -> None:
        self.typed_name = TypedName(type_name, name)

    def score(
        self, cycle: CycleState, request: InferenceRequest, endpoints: Sequence[Endpoint]
    ) -> Mapping[str, float]:
        return {}

    async def run(self) -> None:
        started.append(self.typed_name.type)
        if self.typed_name.type == "crash-loop":
            raise RuntimeError("subscriber bug")
        try:
            await asyncio.Event().wait()
        finally:
            cancelled.append(self.typed_name.type)


def _registry():
    registry = builtin_registry()
    for type_name in ("crash-loop", "steady-loop"):
        registry.register(
            PluginType(
                type_name=type_name,
                params_model=EmptyParams,
                factory=lambda name, params, handle, t=type_name: LoopingScorer(t, name),
                kinds=frozenset({PluginKind.SCORER}),
            )
        )
    return registry


async def test_plugin_loops_are_reported_reloads_do_not_pile_up_and_dropped_loops_stop(
    tmp_path: Path, caplog
) -> None:
    started.clear()
    cancelled.clear()
    config = tmp_path / "epp.yaml"
    config.write_text(CONFIG % "crash-loop")
    flags = epp_flags([f"127.0.0.1:{free_port()}"], config_file=config, secure_serving=False)
    settings = parse_settings(
        [*flags, "--grpc-port=0", "--grpc-health-port=0", "--metrics-port=0"], environ={}
    )
    app = App(settings, registry=_registry())
    with caplog.at_level(logging.INFO, logger="epp"):
        await app.start()
        try:
            await until(lambda: any("plugin-looper died" in r.getMessage() for r in caplog.records))
            (died,) = [r for r in caplog.records if "plugin-looper died" in r.getMessage()]
            assert died.levelno == logging.ERROR and died.exc_info is not None
            assert not app.stopping.is_set()  # a plugin's loop is not the daemon's

            config.write_text(CONFIG % "steady-loop")
            app.request_reload()  # SIGHUP without a file watcher: a one-shot task
            await until(
                lambda: app.holder.current.generation == 2 and started == ["crash-loop", "steady-loop"]
            )
            for _ in range(5):
                app.request_reload()  # unchanged file: nothing to swap
            await until(lambda: not [t for t in app._tasks if t.get_name() == "sighup-reload"])

            config.write_text(CONFIG.replace("- {name: looper, type: %s}\n", ""))
            app.request_reload()
            await until(lambda: cancelled == ["steady-loop"])  # the dropped plugin's loop is stopped
        finally:
            await app.stop()
