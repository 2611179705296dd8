"""A simulated vLLM-compatible model server (`epp sim`): engine model, prefix cache, LoRA, metrics.

`SimServer(SimConfig(...))` runs one in-process; `epp sim` / `python -m epp.tools.sim` runs one per process.
See docs/simulator.md.
"""

from epp.tools.sim.config import EngineKind, SimConfig
from epp.tools.sim.metrics import MetricsOverride
from epp.tools.sim.server import SimServer

__all__ = ["EngineKind", "MetricsOverride", "SimConfig", "SimServer"]
