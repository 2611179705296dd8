"""Discovering where an endpoint publishes its KV events: `GET http://<endpoint>/kv_event_sources`.

The answer is vllm-router's discovery format (parsed by `addresses.parse_discovery`). Called from the
KV-event source's background loop only, with one shared aiohttp session (2 s timeout per request); any
failure (refused, timeout, non-200, not JSON, no usable entry) is None and the source retries later.
"""

from __future__ import annotations

import contextlib
import json

import aiohttp

from epp.datalayer.kvevents.addresses import parse_discovery
from epp.framework.types import Endpoint

__all__ = ["DISCOVERY_PATH", "discover", "discovery_session"]

DISCOVERY_PATH = "/kv_event_sources"


def discovery_session(timeout: float = 2.0) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout))


async def discover(session: aiohttp.ClientSession, endpoint: Endpoint) -> str | None:
    """The ZMQ address `endpoint` says it publishes its KV events on, or None."""
    url = f"http://{endpoint.address}{DISCOVERY_PATH}"
    with contextlib.suppress(Exception):
        async with session.get(url) as response:
            if response.status != 200:
                return None
            document = json.loads(await response.read())
            return parse_discovery(document, endpoint)
    return None
