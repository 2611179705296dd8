"""A simulated vLLM-compatible model server (`epp sim`): engine model, prefix cache, LoRA, metrics.

`SimServer(SimConfig(...))` runs one in-process; `epp sim` / `python -m epp.sim` runs one per process.
See docs/simulator.md.
"""

from epp.sim.config import EngineKind, SimConfig
from epp.sim.metrics import MetricsOverride
from epp.sim.server import SimServer

__all__ = ["EngineKind", "MetricsOverride", "SimConfig", "SimServer"]
