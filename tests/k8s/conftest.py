"""Fixtures for the Kubernetes tests: a kmock API server per test (it stands in for a real API server)."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Iterator
from typing import Any

import pytest

from epp.k8s.listwatch import WatchOptions

from .kube import Kube, KubeServer

FAST = WatchOptions(watch_timeout=5.0, request_timeout=2.0, backoff_initial=0.05, backoff_max=0.2)


class AsyncKube:
    """`Kube`'s blocking helpers, run in a worker thread so the test's event loop keeps serving."""

    def __init__(self, kube: Kube) -> None:
        self.sync = kube

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.sync, name)

        async def call(*args: Any, **kwargs: Any) -> Any:
            return await asyncio.to_thread(functools.partial(method, *args, **kwargs))

        return call


@pytest.fixture
def kube_server() -> Iterator[KubeServer]:
    server = KubeServer().start()
    yield server
    server.stop()


@pytest.fixture
def api(kube_server: KubeServer):
    client = kube_server.api_client()
    yield client
    client.close()


@pytest.fixture
def kube(api) -> AsyncKube:
    return AsyncKube(Kube(api))
