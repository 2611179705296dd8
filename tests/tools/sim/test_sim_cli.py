"""`epp sim` / `python -m epp.tools.sim` as a process, flag parsing and the tokenizers."""

from __future__ import annotations

import importlib.util
import json
import signal
import subprocess
import sys
import urllib.request

import pytest

from epp.tools.sim.cli import build_parser, config_from_args, main
from epp.tools.sim.config import EngineKind
from epp.tools.sim.tokenizer import CharTokenizer, HFTokenizer, render_chat


def test_process_prints_its_port_serves_and_stops_on_sigterm():
    proc = subprocess.Popen(
        [sys.executable, "-m", "epp.tools.sim", "--port", "0", "--time-scale", "0.05", "--name", "p1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        assert line.startswith("epp-sim listening on http://127.0.0.1:") and "name=p1" in line, line
        url = line.split()[3]
        body = json.dumps({"prompt": "hello", "max_tokens": 2}).encode()
        req = urllib.request.Request(url + "/v1/completions", body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert resp.headers["x-sim-server"] == "p1"
            assert json.load(resp)["usage"]["completion_tokens"] == 2
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--kv-blocks", "0"], "--kv-blocks"),
        (["--time-scale", "0"], "--time-scale"),
        (["--lora-adapters", "a,a"], "duplicate"),
        (["--tokenizer", "/nonexistent/tokenizer.json"], "--tokenizer"),
    ],
)
def test_bad_flags_exit_2_with_a_message(argv, needle, capsys):
    assert main(argv) == 2
    assert needle in capsys.readouterr().err


def test_flags_map_to_the_config():
    args = build_parser().parse_args(
        [
            "--lora-adapters",
            "a, b",
            "--max-loras",
            "2",
            "--engine",
            "sglang",
            "--block-size",
            "32",
            "--seed",
            "9",
        ]
    )
    config = config_from_args(args)
    assert config.lora_adapters == ("a", "b") and config.max_loras == 2
    assert config.engine is EngineKind.SGLANG and config.block_size == 32 and config.seed == 9
    assert config.served_models == (config.model, "a", "b")


def test_char_tokenizer_keeps_shared_prefixes_shared():
    tok = CharTokenizer()
    a, b = (
        tok.encode("You are a helpful assistant. Question one"),
        tok.encode("You are a helpful assistant. Other"),
    )
    assert len(a) == 11 and a[:7] == b[:7] and a[7:] != b[7:]
    assert all(256 <= t < tok.vocab_size for t in a)
    assert tok.encode("") == []


def test_chat_template_puts_messages_in_order_and_rejects_non_text():
    text = render_chat([{"role": "system", "content": "S"}, {"role": "user", "content": "U"}])
    assert text.index("system") < text.index("S") < text.index("user") < text.index("U")
    assert text.endswith("assistant<|end_header_id|>\n\n")
    with pytest.raises(ValueError, match="text"):
        render_chat([{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}])
    with pytest.raises(ValueError, match="role"):
        render_chat([{"content": "x"}])


@pytest.mark.skipif(importlib.util.find_spec("tokenizers") is not None, reason="tokenizers is installed")
def test_hf_tokenizer_needs_the_optional_package():
    with pytest.raises(ValueError, match="pip install tokenizers"):
        HFTokenizer("tokenizer.json")
