"""/metrics behind a TokenReview + SubjectAccessReview (upstream's default in Kubernetes mode).

kmock stands in for the API server: POST tokenreviews and subjectaccessreviews answer from tables
(token -> user, user -> allowed), and count the calls, so the cache can be checked. The /metrics server
is a real aiohttp server on loopback.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import kmock
import pytest
from kubernetes import client
from prometheus_client import CollectorRegistry

from epp.app import App
from epp.k8s.metrics_auth import TokenReviewAuthorizer
from epp.observability.http import MetricsHttpServer
from epp.settings import parse_settings
from tests.helpers import free_port

from .kube import KubeServer

USERS = {"good": "system:serviceaccount:monitoring:prometheus", "nosy": "system:serviceaccount:default:nosy"}
ALLOWED = {"system:serviceaccount:monitoring:prometheus"}


class Reviews:
    """The API server's side: who a token is, and what that user may do."""

    def __init__(self) -> None:
        self.token_reviews: list[dict[str, Any]] = []
        self.access_reviews: list[dict[str, Any]] = []

    def install(self, k8s: Any) -> None:
        def forget(plural: str) -> None:
            # kmock's emulator stores every create; reviews have no name, so a second one would conflict
            for key in list(k8s.objects.keys()):
                if key[0].plural == plural and not k8s.objects[key].deleted:
                    k8s.objects[key].delete()

        def token_review(req: Any) -> Any:
            forget("tokenreviews")
            self.token_reviews.append(req.data)
            token = req.data["spec"]["token"]
            user = USERS.get(token)
            status: dict[str, Any] = {"authenticated": user is not None}
            if user is not None:
                status["user"] = {"username": user, "groups": ["system:serviceaccounts"], "uid": "u-1"}
            return {**req.data, "status": status}

        def access_review(req: Any) -> Any:
            forget("subjectaccessreviews")
            self.access_reviews.append(req.data)
            spec = req.data["spec"]
            ok = (
                spec.get("user") in ALLOWED
                and spec.get("nonResourceAttributes") == {"path": "/metrics", "verb": "get"}
                and "system:serviceaccounts" in spec.get("groups", [])
            )
            return {**req.data, "status": {"allowed": ok}}

        k8s["post", kmock.resource("authentication.k8s.io/v1/tokenreviews")] << token_review
        k8s["post", kmock.resource("authorization.k8s.io/v1/subjectaccessreviews")] << access_review


@pytest.fixture
def reviews(kube_server: KubeServer) -> Reviews:
    r = Reviews()
    kube_server.react(r.install)
    return r


async def _serve(authorizer: Any = None, token_file: str | None = None) -> MetricsHttpServer:
    server = MetricsHttpServer(
        CollectorRegistry(), host="127.0.0.1", port=0, authorizer=authorizer, token_file=token_file
    )
    await server.start()
    return server


@pytest.fixture
async def metrics_url(api: client.ApiClient, reviews: Reviews) -> AsyncIterator[str]:
    server = await _serve(TokenReviewAuthorizer(api))
    yield f"http://127.0.0.1:{server.port}/metrics"
    await server.stop()


async def _get(url: str, token: str | None = None, header: str | None = None) -> tuple[int, str]:
    headers = {"Authorization": header} if header is not None else {}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    async with aiohttp.ClientSession() as s, s.get(url, headers=headers) as r:
        return r.status, await r.text()


async def test_allowed_token_is_served_and_cached(metrics_url: str, reviews: Reviews) -> None:
    status, _ = await _get(metrics_url, "good")
    assert status == 200
    assert len(reviews.token_reviews) == 1 and len(reviews.access_reviews) == 1
    assert reviews.token_reviews[0]["spec"]["token"] == "good"
    assert reviews.access_reviews[0]["spec"]["user"] == USERS["good"]
    assert (await _get(metrics_url, "good"))[0] == 200
    assert len(reviews.token_reviews) == 1 and len(reviews.access_reviews) == 1  # from the cache


async def test_unauthenticated_token_is_401_and_cached(metrics_url: str, reviews: Reviews) -> None:
    status, text = await _get(metrics_url, "stranger")
    assert status == 401 and "not authenticated" in text
    assert len(reviews.token_reviews) == 1 and not reviews.access_reviews  # no SAR for a stranger
    assert (await _get(metrics_url, "stranger"))[0] == 401
    assert len(reviews.token_reviews) == 1


async def test_authenticated_but_not_allowed_is_403(metrics_url: str, reviews: Reviews) -> None:
    status, text = await _get(metrics_url, "nosy")
    assert status == 403 and "forbidden" in text
    assert len(reviews.access_reviews) == 1
    assert (await _get(metrics_url, "nosy"))[0] == 403
    assert len(reviews.token_reviews) == 1 and len(reviews.access_reviews) == 1


@pytest.mark.parametrize(
    ("header", "why"),
    [
        (None, "no Authorization header"),
        ("Basic dXNlcjpwYXNz", "malformed Authorization header"),
        ("Bearer", "malformed Authorization header"),
        ("Bearer   ", "malformed Authorization header"),
    ],
)
async def test_missing_or_malformed_header_is_401_without_a_review(
    metrics_url: str, reviews: Reviews, header: str | None, why: str
) -> None:
    status, text = await _get(metrics_url, header=header)
    assert status == 401 and why in text
    assert not reviews.token_reviews


async def test_api_server_unreachable_is_503_and_not_cached(caplog: pytest.LogCaptureFixture) -> None:
    cfg = client.Configuration(host=f"http://127.0.0.1:{free_port()}")  # nothing listens there
    cfg.retries = 0
    api = client.ApiClient(cfg)
    authorizer = TokenReviewAuthorizer(api, request_timeout=2.0)
    server = await _serve(authorizer)
    url = f"http://127.0.0.1:{server.port}/metrics"
    try:
        with caplog.at_level("ERROR", logger="epp.k8s.metrics_auth"):
            status, text = await _get(url, "good")
            assert status == 503 and "unavailable" in text
            assert (await _get(url, "good"))[0] == 503
        assert authorizer.reviews == 2  # a failure is not cached: the next scrape asks again
        errors = [r for r in caplog.records if "cannot review" in r.getMessage()]
        assert len(errors) == 1  # rate-limited
    finally:
        await server.stop()
        api.close()


async def test_cache_expires_and_is_bounded(api: client.ApiClient, reviews: Reviews) -> None:
    now = [0.0]
    authorizer = TokenReviewAuthorizer(api, allow_ttl=60, deny_ttl=10, max_entries=2, clock=lambda: now[0])
    assert await authorizer.review("good") == "allowed"
    assert await authorizer.review("stranger") == "unauthenticated"
    now[0] = 11.0  # the denial has expired, the allowance not
    assert await authorizer.review("good") == "allowed"
    assert await authorizer.review("stranger") == "unauthenticated"
    assert authorizer.reviews == 3
    now[0] = 61.0
    assert await authorizer.review("good") == "allowed"
    assert authorizer.reviews == 4
    assert await authorizer.review("nosy") == "forbidden"  # a third token: the oldest entry goes
    assert len(authorizer._cache) == 2


async def test_token_file_wins_over_the_authorizer(
    api: client.ApiClient, reviews: Reviews, tmp_path: Any
) -> None:
    path = tmp_path / "token"
    path.write_text("s3cret\n")
    server = await _serve(TokenReviewAuthorizer(api), token_file=str(path))
    url = f"http://127.0.0.1:{server.port}/metrics"
    try:
        assert (await _get(url, "s3cret"))[0] == 200
        assert (await _get(url, "good"))[0] == 401
        assert not reviews.token_reviews
    finally:
        await server.stop()


@pytest.mark.parametrize(
    ("args", "reviewed"),
    [
        (["--pool-name", "p"], True),
        (["--pool-name", "p", "--metrics-endpoint-auth=false"], False),
        (["--pool-name", "p", "--metrics-bearer-token-file", "/x"], False),
        (["--static-endpoints", "127.0.0.1:1"], False),
        (["--static-endpoints", "127.0.0.1:1", "--metrics-endpoint-auth=true"], False),
    ],
)
def test_app_wires_the_review_in_kubernetes_mode_only(
    api: client.ApiClient, args: list[str], reviewed: bool
) -> None:
    app = App(parse_settings(args, {}), k8s_api_client=api)
    assert isinstance(app._metrics_authorizer(), TokenReviewAuthorizer) is reviewed
    assert parse_settings(args, {}).metrics_endpoint_auth is ("--metrics-endpoint-auth=false" not in args)


async def test_open_without_authorizer() -> None:
    server = await _serve()
    try:
        assert (await _get(f"http://127.0.0.1:{server.port}/metrics"))[0] == 200
    finally:
        await server.stop()
