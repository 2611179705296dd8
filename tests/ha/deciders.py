"""A replica's one decider for the HA tests: a state bus (ipc:// in a short private directory) over a
pipeline with a shared prefix index, subscribed to what the replica's peer link publishes."""

from __future__ import annotations

import tempfile

from epp.scheduling.pipeline import PipelineHolder
from epp.workers.statebus import StateBus, peers_address
from tests.workers.test_buses import _holder


def decider(name: str, *, silence: float, prefix: str = "epp-ha-") -> tuple[str, PipelineHolder, StateBus]:
    """(directory, holder, bus) of replica `name`'s decider; heartbeats every 0.1 s."""
    directory = tempfile.mkdtemp(prefix=prefix)  # ipc paths must stay short
    holder = _holder()
    bus = StateBus(
        holder,
        directory=directory,
        slot=0,
        incarnation=1,
        slots=1,
        replica=name,
        extra_sources=[peers_address(directory)],
        heartbeat=0.1,
        silence=silence,
    )
    return directory, holder, bus
