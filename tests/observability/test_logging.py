"""Logging: upstream verbosity levels, console and JSON lines, request-scoped fields, detached loops."""

from __future__ import annotations

import asyncio
import io
import json
import logging

import pytest

from epp.logs import (
    TRACE,
    VERBOSE,
    bind_request,
    configure_logging,
    detached_context,
    level_for_verbosity,
)
from epp.settings import parse_settings

log = logging.getLogger("tests.observability.logging")


@pytest.fixture
def capture():
    """configure_logging into a buffer; the root logger is restored afterwards."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    buf = io.StringIO()

    def configure(verbosity: int, fmt: str = "json") -> io.StringIO:
        buf.seek(0)
        buf.truncate()
        configure_logging(verbosity, fmt, stream=buf)
        return buf

    yield configure
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in saved[0]:
        root.addHandler(h)
    root.setLevel(saved[1])
    for name in ("aiohttp", "asyncio", "kubernetes", "urllib3", "grpc", "watchfiles"):
        logging.getLogger(name).setLevel(logging.NOTSET)


def _json_lines(buf: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in buf.getvalue().splitlines()]


def _emit_every_level() -> None:
    log.error("e")
    log.warning("w")
    log.info("i")
    log.log(VERBOSE, "v")
    log.debug("d")
    log.log(TRACE, "t")


@pytest.mark.parametrize(
    ("verbosity", "shown"),
    [
        (0, "ewi"),
        (1, "ewi"),
        (2, "ewi"),
        (3, "ewiv"),
        (4, "ewivd"),
        (5, "ewivdt"),
        (8, "ewivdt"),
    ],
)
def test_verbosity_levels_as_upstream(capture, verbosity: int, shown: str) -> None:
    buf = capture(verbosity)
    _emit_every_level()
    assert "".join(line["msg"] for line in _json_lines(buf)) == shown


def test_level_names_and_numbers() -> None:
    assert level_for_verbosity(2) == logging.INFO
    assert level_for_verbosity(3) == VERBOSE and logging.DEBUG < VERBOSE < logging.INFO
    assert level_for_verbosity(4) == logging.DEBUG
    assert level_for_verbosity(5) == TRACE and TRACE < logging.DEBUG
    assert logging.getLevelName(TRACE) == "TRACE" and logging.getLevelName(VERBOSE) == "VERBOSE"


def test_the_v_flag_reaches_settings() -> None:
    src = ["--static-endpoints=127.0.0.1:8000"]
    for argv, v in ((["-v=5"], 5), (["--v=4"], 4), (["-v", "3"], 3), ([], 2)):
        assert parse_settings([*src, *argv], environ={}).v == v
    assert str(parse_settings([*src, "--log-format=json"], environ={}).log_format) == "json"
    assert str(parse_settings([*src, "--zap-encoder=json"], environ={}).log_format) == "json"


def test_json_lines_carry_request_id_and_model_of_their_own_task(capture) -> None:
    buf = capture(4)

    async def request(rid: str, model: str, started: asyncio.Event, other: asyncio.Event) -> None:
        bind_request(rid)
        log.info("headers")
        bind_request(rid, model)
        started.set()
        await other.wait()  # interleave the two requests
        logging.getLogger("some.plugin").debug("plugin line")

    async def main() -> None:
        a, b = asyncio.Event(), asyncio.Event()
        log.info("before")
        await asyncio.gather(request("r-1", "m-1", a, b), request("r-2", "m-2", b, a))
        log.info("after")

    asyncio.run(main())
    lines = _json_lines(buf)
    got = [(ln["msg"], ln.get("request_id"), ln.get("model")) for ln in lines]
    assert got[0] == ("before", None, None) and got[-1] == ("after", None, None)
    assert ("headers", "r-1", None) in got and ("headers", "r-2", None) in got
    assert ("plugin line", "r-1", "m-1") in got and ("plugin line", "r-2", "m-2") in got
    assert {ln["logger"] for ln in lines} == {"tests.observability.logging", "some.plugin"}
    assert all(isinstance(ln["ts"], float) for ln in lines)


def test_a_loop_started_from_a_request_logs_without_its_id_when_detached(capture) -> None:
    buf = capture(2)

    async def loop_body(tag: str) -> None:
        log.info("loop %s", tag)

    async def request() -> None:
        bind_request("r-9", "m")
        loop = asyncio.get_running_loop()
        await loop.create_task(loop_body("inherited"))
        await loop.create_task(loop_body("detached"), context=detached_context())

    asyncio.run(request())
    by_msg = {ln["msg"]: ln for ln in _json_lines(buf)}
    assert by_msg["loop inherited"]["request_id"] == "r-9"  # why detaching matters
    assert "request_id" not in by_msg["loop detached"]


def test_structured_fields_in_json_only(capture) -> None:
    buf = capture(2)
    log.info("config loaded", extra={"fields": {"config": {"a": [1, 2]}, "msg": "not overwritten"}})
    line = _json_lines(buf)[0]
    assert line["config"] == {"a": [1, 2]} and line["msg"] == "config loaded"
    buf = capture(2, "console")
    log.info("config loaded", extra={"fields": {"config": {"a": [1, 2]}}})
    assert buf.getvalue().rstrip().endswith("INFO    tests.observability.logging: config loaded")


def test_console_format_appends_request_fields_and_exceptions(capture) -> None:
    buf = capture(4, "console")

    async def request() -> None:
        bind_request("abc", "llama")
        log.debug("picked %s", "10.0.0.1:8000")
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("hook failed")

    asyncio.run(request())
    text = buf.getvalue()
    first = text.splitlines()[0]
    assert first.endswith(
        "DEBUG   tests.observability.logging: picked 10.0.0.1:8000 request_id=abc model=llama"
    )
    assert first[:4].isdigit() and first[23] == "Z"
    assert "ValueError: boom" in text


def test_json_exception_is_one_line_with_the_traceback(capture) -> None:
    buf = capture(2)
    try:
        raise RuntimeError("bad")
    except RuntimeError:
        log.exception("failed")
    (line,) = _json_lines(buf)
    assert line["level"] == "error" and "RuntimeError: bad" in line["error"]


def test_third_party_debug_only_past_trace(capture) -> None:
    capture(5)
    assert not logging.getLogger("grpc").isEnabledFor(logging.DEBUG)
    assert logging.getLogger("grpc").isEnabledFor(logging.WARNING)
    capture(6)
    assert logging.getLogger("grpc").isEnabledFor(logging.DEBUG)
