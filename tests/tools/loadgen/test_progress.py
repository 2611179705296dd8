"""The progress bar draws in place on a terminal and stays silent elsewhere."""

from __future__ import annotations

import io
import subprocess
import sys

from epp.tools.loadgen.progress import Progress


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_silent_when_the_stream_is_not_a_tty() -> None:
    out = io.StringIO()
    with Progress(10, "run", stream=out) as bar:
        assert not bar.enabled
        for _ in range(10):
            bar.advance(errors=1)
    assert out.getvalue() == ""
    assert bar.done == 10 and bar.errors == 10


def test_draws_in_place_on_a_tty_throttled_and_ends_the_line() -> None:
    out, clock = _Tty(), _Clock()
    bar = Progress(4, "run", stream=out, width=8, interval=0.5, clock=clock)
    assert bar.enabled
    clock.now += 1.0
    bar.advance()  # drawn (first draw)
    clock.now += 0.1
    bar.advance(errors=1)  # within the interval: not drawn
    assert out.getvalue().count("\r") == 1
    assert "run [##......] 1/4  errors 0  1/s  1.0s" in out.getvalue()
    clock.now += 0.1
    bar.advance()
    bar.advance()  # the last item is always drawn
    bar.close()
    bar.close()  # idempotent
    text = out.getvalue()
    assert text.endswith("\n") and text.count("\n") == 1
    assert "run [########] 4/4  errors 1" in text.splitlines()[-1].split("\r")[-1]


def test_forced_on_or_off() -> None:
    out = io.StringIO()
    with Progress(2, stream=out, enabled=True) as bar:
        bar.advance(2)
    assert "2/2" in out.getvalue()
    tty = _Tty()
    with Progress(2, stream=tty, enabled=False) as bar:
        bar.advance(2)
    assert tty.getvalue() == ""


def test_zero_total_renders() -> None:
    assert "0/0" in Progress(0, stream=io.StringIO()).render()


def test_a_piped_run_writes_no_progress() -> None:
    # the real stderr of a child process whose output goes to a pipe is not a TTY
    code = "from epp.tools.loadgen.progress import Progress\np = Progress(3, 'x')\np.advance(3)\np.close()"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True)
    assert res.stderr == "" and res.stdout == ""
