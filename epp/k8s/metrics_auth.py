"""/metrics authentication as upstream's: a TokenReview, then a SubjectAccessReview.

A bearer token is first authenticated (`authentication.k8s.io/v1` TokenReview); the user it names
(with its groups, uid and extra) must then be allowed to `get` the non-resource URL `/metrics`
(`authorization.k8s.io/v1` SubjectAccessReview). The EPP's ServiceAccount therefore needs `create` on
`tokenreviews` and `subjectaccessreviews` (the chart's ClusterRole grants it).

Answers are cached per token (a hash of it, never the token): an allowed one for `allow_ttl` (60 s), a
refused one for `deny_ttl` (10 s), at most `max_entries` of them (the oldest go first). An API server
that cannot be asked is not cached: the next scrape asks again. The client is blocking, so the calls
run in a worker thread.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from kubernetes import client

from epp.observability.http import AuthDecision

__all__ = ["TokenReviewAuthorizer"]

log = logging.getLogger(__name__)


class TokenReviewAuthorizer:
    """A `MetricsAuthorizer` asking the Kubernetes API server (see the module docstring)."""

    def __init__(
        self,
        api_client: Any,
        *,
        allow_ttl: float = 60.0,
        deny_ttl: float = 10.0,
        max_entries: int = 1024,
        request_timeout: float = 5.0,
        error_log_interval: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._authn = client.AuthenticationV1Api(api_client)
        self._authz = client.AuthorizationV1Api(api_client)
        self.allow_ttl = allow_ttl
        self.deny_ttl = deny_ttl
        self.max_entries = max_entries
        self.request_timeout = request_timeout
        self.error_log_interval = error_log_interval
        self._clock = clock
        self._cache: OrderedDict[bytes, tuple[float, AuthDecision]] = OrderedDict()
        self._last_error_log = float("-inf")
        self.reviews = 0  # TokenReviews sent (for tests and debugging)

    async def review(self, token: str) -> AuthDecision:
        key = hashlib.sha256(token.encode()).digest()
        now = self._clock()
        hit = self._cache.get(key)
        if hit is not None:
            if hit[0] > now:
                return hit[1]
            del self._cache[key]
        try:
            decision = await asyncio.to_thread(self._ask, token)
        except Exception as exc:  # any failure to ask is a 503, never a traceback
            self._log_unavailable(exc)
            return "unavailable"
        ttl = self.allow_ttl if decision == "allowed" else self.deny_ttl
        self._cache[key] = (self._clock() + ttl, decision)
        while len(self._cache) > self.max_entries:
            self._cache.popitem(last=False)
        return decision

    def _ask(self, token: str) -> AuthDecision:
        """Blocking: the TokenReview, then (authenticated) the SubjectAccessReview."""
        self.reviews += 1
        tr = self._authn.create_token_review(
            client.V1TokenReview(spec=client.V1TokenReviewSpec(token=token)),
            _request_timeout=self.request_timeout,
        )
        status = tr.status
        if status is None or not status.authenticated or status.user is None:
            return "unauthenticated"
        user = status.user
        sar = self._authz.create_subject_access_review(
            client.V1SubjectAccessReview(
                spec=client.V1SubjectAccessReviewSpec(
                    user=user.username,
                    groups=user.groups,
                    uid=user.uid,
                    extra=user.extra,
                    non_resource_attributes=client.V1NonResourceAttributes(path="/metrics", verb="get"),
                )
            ),
            _request_timeout=self.request_timeout,
        )
        allowed = sar.status is not None and bool(sar.status.allowed)
        if not allowed:
            log.debug("/metrics: user %s may not get /metrics", user.username)
        return "allowed" if allowed else "forbidden"

    def _log_unavailable(self, exc: Exception) -> None:
        now = self._clock()
        if now - self._last_error_log >= self.error_log_interval:
            self._last_error_log = now
            log.error("/metrics: cannot review the bearer token with the API server (503): %r", exc)
