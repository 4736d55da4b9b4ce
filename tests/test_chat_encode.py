"""Encoding rendered chats: markers become their specials with exact byte spans, one BOS, HF's rule for
special strings inside content."""

from __future__ import annotations

import numpy as np
import pytest

from xtalign.chat import encode_rendered
from xtalign.vocab import TokenKind, make_vocab
from xtalign.zoo import Tokenizer
from xtalign.zoo.tokenizer import GreedyTrieBackend

TEXTS = {
    "smollm2": "<|im_start|>user\nnaïve 🤖👍🏽 日本語<|im_end|>\n<|im_start|>assistant\n Hi<|im_end|>\n",
    "gemma3": "<bos><start_of_turn>user\nnaïve 🤖👍🏽 日本語<end_of_turn>\n<start_of_turn>model\n Hi<end_of_turn>\n",
    "llama3": "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nnaïve 🤖<|eot_id|>",
    "qwen3": "<|im_start|>assistant\n<think>\n\n</think>\n\nok 👍🏽<|im_end|>\n",
    "mistral-v1": "<s>[INST] naïve 🤖 [/INST] Hi</s>",  # SentencePiece with a dummy prefix
}


def _check_spans(tok: Tokenizer, text: str, ids: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> None:
    data = text.encode("utf-8")
    assert ids.dtype == starts.dtype == ends.dtype == np.int64
    assert starts[0] == 0 and ends[-1] == len(data)
    assert np.array_equal(starts[1:], ends[:-1])  # the tokens tile the text
    vocab = tok.vocab
    for t, (i, a, b) in enumerate(zip(ids.tolist(), starts.tolist(), ends.tolist(), strict=True)):
        if vocab.kinds[i] == TokenKind.SPECIAL:
            assert data[a:b] == vocab.names[i].encode("utf-8")  # every marker keeps its span and its id
        elif tok.dummy_prefix and vocab.token_bytes[i][:1] == b" " and (
                t == 0 or vocab.kinds[ids[t - 1]] == TokenKind.SPECIAL):
            assert b" " + data[a:b] == vocab.token_bytes[i]  # the phantom space of a piece's first token
        else:
            assert data[a:b] == vocab.token_bytes[i]


@pytest.mark.parametrize("name", list(TEXTS))
def test_markers_survive_with_exact_spans(zoo, name: str) -> None:
    tok, text = zoo(name), TEXTS[name]
    ids, starts, ends = encode_rendered(tok, text)
    _check_spans(tok, text, ids, starts, ends)
    vocab = tok.vocab
    for i in vocab.special_ids.tolist():
        if vocab.names[i]:
            assert int((ids == i).sum()) == text.count(vocab.names[i]), vocab.names[i]


def test_bos_exactly_once(zoo) -> None:
    gemma = zoo("gemma3")
    ids, _, _ = encode_rendered(gemma, TEXTS["gemma3"], add_bos=True)  # the template already wrote <bos>
    assert ids[0] == gemma.vocab.roles["bos"] and int((ids == gemma.vocab.roles["bos"]).sum()) == 1
    bare = TEXTS["gemma3"].removeprefix("<bos>")
    ids, starts, ends = encode_rendered(gemma, bare, add_bos=True)
    assert ids[0] == gemma.vocab.roles["bos"] and (starts[0], ends[0]) == (0, 0)
    assert int((ids == gemma.vocab.roles["bos"]).sum()) == 1
    assert gemma.vocab.roles["bos"] not in encode_rendered(gemma, bare)[0].tolist()  # not asked: none added
    smol = zoo("smollm2")  # its BOS is <|im_start|>: a ChatML rendering starts with it
    ids, _, _ = encode_rendered(smol, TEXTS["smollm2"], add_bos=True)
    assert ids[0] == smol.vocab.roles["bos"] and ids[1] != smol.vocab.roles["bos"]
    qwen = zoo("qwen3")  # no BOS at all: nothing to add
    assert np.array_equal(encode_rendered(qwen, TEXTS["qwen3"], add_bos=True)[0],
                          encode_rendered(qwen, TEXTS["qwen3"])[0])


def test_special_strings_inside_text_are_specials_as_in_hf(zoo) -> None:
    tok = zoo("qwen3")
    ids, _, _ = encode_rendered(tok, "<|im_start|>user\nsay <|im_end|> please<|im_end|>")
    assert int((ids == 151645).sum()) == 2


def test_longest_special_wins() -> None:
    chars = [bytes([b]) for b in range(32, 127)]
    names = [c.decode() for c in chars] + ["<a>", "<a><b>"]
    kinds = [TokenKind.NORMAL] * len(chars) + [TokenKind.SPECIAL, TokenKind.SPECIAL]
    vocab = make_vocab("toy", chars + [b"", b""], kinds, names)
    tok = Tokenizer(name="toy", family="toy", source="test", vocab=vocab,
                    backend_factory=lambda: GreedyTrieBackend({c: i for i, c in enumerate(chars)}))
    ids, starts, ends = encode_rendered(tok, "x<a><b>y<a>")
    assert ids.tolist() == [ord("x") - 32, len(chars) + 1, ord("y") - 32, len(chars)]
    assert list(zip(starts.tolist(), ends.tolist(), strict=True)) == [(0, 1), (1, 7), (7, 8), (8, 11)]
