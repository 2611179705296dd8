"""Send one streaming OpenAI request and measure it: TTFT, end-to-end latency, usage, who served it.

`LoadClient` wraps one aiohttp session (no proxy, no connection limit) against a base URL (Envoy, a
router or a model server). Every request is streamed with `stream_options.include_usage`, so the last
chunk carries the token counts. TTFT is the time from sending the request to the first SSE data chunk
that carries generated text (the chat role-only first chunk does not count). The serving backend is the
`x-sim-server` response header that the simulator sets (None for other servers).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp

from epp.tools.loadgen.workloads import Api, Session, Turn

__all__ = ["BACKEND_HEADER", "LoadClient", "RequestResult", "build_body"]

BACKEND_HEADER = "x-sim-server"
_ERROR_BODY_LIMIT = 300


@dataclass(frozen=True, slots=True)
class RequestResult:
    """What happened to one request. Times are seconds; `start_s` is relative to the run's start.

    `ok` means HTTP 200 and a complete stream (`[DONE]` seen); otherwise `error` says what went wrong.
    """

    session_id: str
    group: str
    turn: int
    start_s: float
    status: int
    ttft_s: float | None
    e2e_s: float
    backend: str | None
    error: str | None = None
    prompt_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0

    @property
    def ok(self) -> bool:
        return self.error is None


def build_body(
    api: Api,
    session: Session,
    turn: Turn,
    history: Sequence[tuple[str, str]],
    model: str | None,
) -> dict[str, Any]:
    """The JSON body for `turn`, replaying `history` ((user text, response text) of earlier turns)."""
    body: dict[str, Any] = {
        "max_tokens": turn.max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
        "ignore_eos": True,
    }
    if model is not None:
        body["model"] = model
    if api == "chat":
        messages: list[dict[str, str]] = []
        if session.system:
            messages.append({"role": "system", "content": session.system})
        for user, answer in history:
            messages += [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
        messages.append({"role": "user", "content": turn.text})
        body["messages"] = messages
    else:
        parts = [session.system] if session.system else []
        for user, answer in history:
            parts += [user, answer]
        parts.append(turn.text)
        body["prompt"] = "\n".join(parts)
    return body


def _chunk_text(api: Api, chunk: Mapping[str, Any]) -> str:
    choices = chunk.get("choices") or []
    if not choices or not isinstance(choices[0], Mapping):
        return ""
    if api == "chat":
        delta = choices[0].get("delta") or {}
        content = delta.get("content") if isinstance(delta, Mapping) else None
        return content if isinstance(content, str) else ""
    text = choices[0].get("text")
    return text if isinstance(text, str) else ""


@dataclass(slots=True)
class _Stream:
    ttft_s: float | None = None
    text: str = ""
    done: bool = False
    usage: Mapping[str, Any] | None = None


class LoadClient:
    """Streaming OpenAI requests against `base_url`. Use as `async with LoadClient(url) as client:`."""

    def __init__(
        self,
        base_url: str,
        *,
        api: Api = "completions",
        model: str | None = None,
        timeout_s: float = 60.0,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.api: Api = api
        self.model = model
        self.timeout_s = timeout_s
        self.headers = dict(headers or {})
        self._http: aiohttp.ClientSession | None = None

    @property
    def path(self) -> str:
        return "/v1/chat/completions" if self.api == "chat" else "/v1/completions"

    async def __aenter__(self) -> LoadClient:
        self._session()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _session(self) -> aiohttp.ClientSession:
        if self._http is None:
            connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=None)
            self._http = aiohttp.ClientSession(connector=connector, trust_env=False)
        return self._http

    async def close(self) -> None:
        http, self._http = self._http, None
        if http is not None:
            await http.close()

    async def send(
        self,
        session: Session,
        turn_index: int,
        history: Sequence[tuple[str, str]] = (),
        *,
        run_start: float | None = None,
    ) -> tuple[RequestResult, str]:
        """Send turn `turn_index` of `session`; returns its result and the generated text."""
        turn = session.turns[turn_index]
        body = build_body(self.api, session, turn, history, session.model or self.model)
        headers = {**self.headers, **dict(session.headers), "x-request-id": f"{session.id}-t{turn_index}"}
        start = time.perf_counter()
        status, backend, error = 0, None, None
        stream = _Stream()
        try:
            async with asyncio.timeout(self.timeout_s):
                async with self._session().post(
                    self.base_url + self.path, json=body, headers=headers
                ) as resp:
                    status = resp.status
                    backend = resp.headers.get(BACKEND_HEADER)
                    if status != 200:
                        text = (await resp.read()).decode(errors="replace")
                        error = f"HTTP {status}: {text[:_ERROR_BODY_LIMIT]}"
                    else:
                        await self._read_stream(resp, start, stream)
                        if not stream.done:
                            error = "stream ended before [DONE]"
        except TimeoutError:
            error = f"timeout after {self.timeout_s:g}s"
        except aiohttp.ClientError as exc:
            error = f"{type(exc).__name__}: {exc}"
        end = time.perf_counter()
        usage = stream.usage or {}
        details = usage.get("prompt_tokens_details") or {}
        result = RequestResult(
            session_id=session.id,
            group=session.group,
            turn=turn_index,
            start_s=start - (run_start if run_start is not None else start),
            status=status,
            ttft_s=stream.ttft_s,
            e2e_s=end - start,
            backend=backend,
            error=error,
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            output_tokens=int(usage.get("completion_tokens") or 0),
            cached_tokens=int(details.get("cached_tokens") or 0) if isinstance(details, Mapping) else 0,
        )
        return result, stream.text

    async def _read_stream(self, resp: aiohttp.ClientResponse, start: float, stream: _Stream) -> None:
        pieces: list[str] = []
        async for raw in resp.content:
            line = raw.strip()
            if not line.startswith(b"data:"):
                continue
            data = line[5:].strip()
            if data == b"[DONE]":
                stream.done = True
                break
            try:
                chunk = json.loads(data)
            except ValueError:
                continue
            if not isinstance(chunk, dict):
                continue
            text = _chunk_text(self.api, chunk)
            if text:
                if stream.ttft_s is None:
                    stream.ttft_s = time.perf_counter() - start
                pieces.append(text)
            if chunk.get("usage"):
                stream.usage = chunk["usage"]
        stream.text = "".join(pieces)
