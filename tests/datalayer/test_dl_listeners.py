"""Change listeners (datastore membership and first sync, pipeline swaps): one that raises is logged and
neither hides the change from the listeners after it nor undoes the change."""

from __future__ import annotations

import logging

from epp.builtins import default_registry
from epp.config import build_pipeline, load_config
from epp.datalayer.datastore import Datastore
from epp.framework.types import Endpoint
from epp.scheduling.pipeline import PipelineHolder


def _boom(*args: object) -> None:
    raise RuntimeError("listener bug")


def test_a_raising_membership_listener_does_not_starve_the_next_one(caplog) -> None:
    ds = Datastore()
    seen: list[frozenset[str]] = []
    ds.subscribe_membership(_boom)
    ds.subscribe_membership(seen.append)
    with caplog.at_level(logging.ERROR, logger="epp.framework.notify"):
        ds.set_endpoints([Endpoint("a", "127.0.0.1", 8000)])
    assert seen == [frozenset({"a"})]
    assert [e.key for e in ds.snapshot()] == ["a"]
    (record,) = caplog.records
    assert "an endpoint membership change" in record.getMessage() and record.exc_info is not None


def test_a_raising_sync_listener_does_not_stop_the_others_or_the_sync(caplog) -> None:
    ds = Datastore()
    calls: list[str] = []
    ds.subscribe_synced(_boom)
    ds.subscribe_synced(lambda: calls.append("second"))
    with caplog.at_level(logging.ERROR, logger="epp.framework.notify"):
        ds.mark_synced()
    assert ds.synced and calls == ["second"]
    assert "the first endpoint sync" in caplog.records[0].getMessage()


def test_a_raising_swap_listener_leaves_the_new_pipeline_live(caplog) -> None:
    registry = default_registry()
    first = build_pipeline(load_config(None, registry=registry), registry)
    second = build_pipeline(load_config(None, registry=registry), registry)
    holder = PipelineHolder(first)
    swaps: list[tuple[object, object]] = []
    holder.subscribe(_boom)
    holder.subscribe(lambda old, new: swaps.append((old, new)))
    with caplog.at_level(logging.ERROR, logger="epp.framework.notify"):
        assert holder.swap(second) is first
    assert holder.current is second and swaps == [(first, second)]
    assert "a pipeline swap" in caplog.records[0].getMessage()
