"""Request-side token ids and block keys: the same keys the index derives from BlockStored events."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from epp.plugins.kvevents.tokens import (
    BASE_SEED,
    Char4BlockKeys,
    block_keys,
    char4_tokens,
    lora_seed,
    render_llama3_chat,
    request_tokens,
)
from epp.tools.sim.tokenizer import CharTokenizer, render_chat

TOKENS = st.lists(st.integers(min_value=0, max_value=2**32 - 1), max_size=200)


@pytest.mark.parametrize(
    ("n_tokens", "block_size", "max_blocks", "expected"),
    [
        (0, 16, 0, 0),
        (15, 16, 0, 0),  # shorter than one block: nothing to key
        (16, 16, 0, 1),
        (47, 16, 0, 2),  # the trailing partial block is never keyed (engines cache full blocks only)
        (48, 16, 0, 3),
        (48, 16, 2, 2),
        (100, 64, 0, 1),
        (100, 0, 0, 0),
    ],
)
def test_only_full_blocks_get_keys(n_tokens: int, block_size: int, max_blocks: int, expected: int) -> None:
    assert len(block_keys(list(range(n_tokens)), block_size, BASE_SEED, max_blocks)) == expected


@settings(max_examples=200, deadline=None)
@given(TOKENS, TOKENS, st.sampled_from([1, 4, 16]))
def test_a_key_names_the_whole_prefix(a: list[int], b: list[int], size: int) -> None:
    ka, kb = block_keys(a, size, BASE_SEED), block_keys(b, size, BASE_SEED)
    common = 0
    while common < min(len(a), len(b)) and a[common] == b[common]:
        common += 1
    shared_blocks = common // size
    assert ka[:shared_blocks] == kb[:shared_blocks]
    if len(ka) > shared_blocks and len(kb) > shared_blocks:
        assert ka[shared_blocks] != kb[shared_blocks]


@settings(max_examples=100, deadline=None)
@given(TOKENS, st.sampled_from([2, 16]))
def test_keys_continue_from_a_parent_key(tokens: list[int], size: int) -> None:
    """The index keys a BlockStored by chaining on from its parent's key: same as keying the whole prompt."""
    whole = block_keys(tokens, size, BASE_SEED)
    for cut in range(len(whole)):
        parent = whole[cut - 1] if cut else BASE_SEED
        assert block_keys(tokens[cut * size :], size, parent) == whole[cut:]


def test_lora_blocks_never_share_keys_with_the_base_model() -> None:
    tokens = list(range(32))
    assert lora_seed(None) == BASE_SEED
    assert block_keys(tokens, 16, lora_seed("sql")) != block_keys(tokens, 16, BASE_SEED)
    assert block_keys(tokens, 16, lora_seed("sql")) != block_keys(tokens, 16, lora_seed("chat"))


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_char4_is_the_simulators_default_tokenizer(text: str) -> None:
    try:
        expected = CharTokenizer().encode(text)
    except UnicodeEncodeError:  # lone surrogates: the simulator cannot encode them either
        return
    assert char4_tokens(text) == expected


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.fixed_dictionaries(
            {
                "role": st.sampled_from(["system", "user", "assistant"]),
                "content": st.one_of(
                    st.text(max_size=40),
                    st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": st.text(max_size=10)})),
                ),
            }
        ),
        min_size=1,
        max_size=4,
    )
)
def test_chat_rendering_matches_the_simulator(messages: list[dict]) -> None:
    assert render_llama3_chat(messages) == render_chat(messages)


@pytest.mark.parametrize(
    "messages",
    [
        [{"role": "", "content": "x"}],
        [{"content": "x"}],
        [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "u"}}]}],
        [{"role": "user", "content": 7}],
    ],
)
def test_chat_that_is_not_text_cannot_be_tokenized(messages: list[dict]) -> None:
    assert render_llama3_chat(messages) is None
    assert request_tokens(None, None, messages, "char4") is None


@pytest.mark.parametrize(
    ("token_ids", "prompt", "messages", "mode", "expected"),
    [
        ((5, 6, 7), "ignored", None, "request", (5, 6, 7)),
        ((5, 6, 7), None, None, "char4", (5, 6, 7)),
        (None, "abcdefgh", None, "request", None),
        (None, "abcdefgh", None, "char4", char4_tokens("abcdefgh")),
        (
            None,
            None,
            [{"role": "user", "content": "hi"}],
            "char4",
            char4_tokens(render_chat([{"role": "user", "content": "hi"}])),
        ),
        (None, None, None, "char4", None),
    ],
)
def test_request_tokens_by_mode(token_ids, prompt, messages, mode, expected) -> None:
    got = request_tokens(token_ids, prompt, messages, mode)
    assert (None if got is None else tuple(got)) == (None if expected is None else tuple(expected))


@settings(max_examples=200, deadline=None)
@given(
    st.text(alphabet="abcdé €\n", max_size=400),
    st.sampled_from([1, 4, 16]),
    st.integers(0, 5),
    st.integers(1, 3),
)
def test_cached_char4_keys_equal_tokenizing_then_keying(
    text: str, size: int, max_blocks: int, cap: int
) -> None:
    keys = Char4BlockKeys(max_chunks=cap)  # a tiny cache: clearing must not change anything
    expected = block_keys(char4_tokens(text), size, 7, max_blocks)
    assert keys.keys(text, size, 7, max_blocks) == expected
    assert keys.keys(text, size, 7, max_blocks) == expected  # from the cache
    assert keys.keys(text, 0, 7) == ()
