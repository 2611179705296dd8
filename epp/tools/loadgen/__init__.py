"""Load generation for the demo and the benchmarks: seeded workloads, a streaming OpenAI client with
open- and closed-loop runners, run summaries, a progress bar, and the fleet (simulators, EPP, Envoy).

`epp.tools.loadgen.gateway` (EPP + Envoy) is not imported here, so the client side stays light.
"""

from epp.tools.loadgen.client import BACKEND_HEADER, LoadClient, RequestResult
from epp.tools.loadgen.fleet import FleetStats, SimFleet, fleet_stats
from epp.tools.loadgen.progress import Progress
from epp.tools.loadgen.runner import RunResult, poisson_arrivals, run_closed_loop, run_open_loop
from epp.tools.loadgen.stats import RunSummary, percentile, summarize
from epp.tools.loadgen.workloads import (
    WORKLOADS,
    Session,
    Turn,
    Workload,
    build_workload,
    register_workload,
    shared_prefix,
)

__all__ = [
    "BACKEND_HEADER",
    "WORKLOADS",
    "FleetStats",
    "LoadClient",
    "Progress",
    "RequestResult",
    "RunResult",
    "RunSummary",
    "Session",
    "SimFleet",
    "Turn",
    "Workload",
    "build_workload",
    "fleet_stats",
    "percentile",
    "poisson_arrivals",
    "register_workload",
    "run_closed_loop",
    "run_open_loop",
    "shared_prefix",
    "summarize",
]
