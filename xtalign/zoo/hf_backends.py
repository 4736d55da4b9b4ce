"""Tokenizer backends as `tokenizers` pipelines: tiktoken rank tables as byte-level BPE, SentencePiece protos,
and RWKV's greedy byte trie (the pieces `xtalign.zoo.hf_export` writes as tokenizer.json)."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable
from typing import Any

from xtalign.vocab import BYTE_TO_UNICODE

__all__ = ["TokenizerExportError", "bpe_from_ranks", "onig_pattern", "spell_bytes", "spm_tokenizer", "trie_tokenizer"]

_SPM_SPACE = "\u2581"
# SentencePiece piece types
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _UNUSED, _BYTE = 1, 2, 3, 4, 5, 6


class TokenizerExportError(ValueError):
    """An exported tokenizer folder is unusable; the message is one line."""


# --- tiktoken rank tables --------------------------------------------------------------------------------------


def onig_pattern(pattern: str) -> str:
    """A tiktoken (fancy-regex) split pattern rewritten for `tokenizers`' Oniguruma: `{n,m}+` is possessive in
    fancy-regex but "repeat the interval" in Oniguruma, and `$` is the end of text there, a line end here."""
    pattern = re.sub(r"(?<!\\)(\{\d+(?:,\d*)?\})\+", r"\1", pattern)
    return re.sub(r"(?<!\\)\$", r"\\z", pattern)


_SPELLING = str.maketrans(BYTE_TO_UNICODE)  # byte value (as a latin-1 character) -> GPT-2 character


def spell_bytes(b: bytes) -> str:
    """GPT-2 byte-level spelling of raw bytes."""
    return b.decode("latin-1").translate(_SPELLING)


def bpe_from_ranks(ranks: dict[bytes, int], pattern: str, specials: dict[str, int]) -> Any:
    """A `tokenizers.Tokenizer` equivalent to a tiktoken rank table: byte-level BPE whose merges are every
    split of each token into two tokens, ordered by the merged token's rank (tiktoken's merge priority)."""
    from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers
    from tokenizers import Tokenizer as HFTokenizer

    spelled = {b: spell_bytes(b) for b in ranks}
    merges: list[tuple[int, int, int, str, str]] = []
    for b, r in ranks.items():
        for i in range(1, len(b)):
            left, right = b[:i], b[i:]
            if left in ranks and right in ranks:
                merges.append((r, ranks[left], ranks[right], spelled[left], spelled[right]))
    merges.sort()
    vocab = {spelled[b]: r for b, r in ranks.items()} | specials
    hf = HFTokenizer(models.BPE(vocab=vocab, merges=[(m[3], m[4]) for m in merges], ignore_merges=True))
    hf.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(onig_pattern(pattern)), behavior="isolated"),
                                                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    hf.decoder = decoders.ByteLevel()
    hf.add_special_tokens([AddedToken(s, normalized=False, special=True) for s in sorted(specials, key=specials.get)])
    return hf


# --- SentencePiece protos --------------------------------------------------------------------------------------


def _spm_merges(pieces: list[Any]) -> list[tuple[str, str]]:
    """SentencePiece BPE as merges: a pair may merge when the joined piece is a normal or user-defined piece, and
    the highest-scoring joined piece merges first (ties: lower id). Halves are single characters or such pieces.
    Unused pieces are left out: SentencePiece splits them back after merging, which merges cannot express."""
    mergeable = {p.piece: (-p.score, i) for i, p in enumerate(pieces) if p.type in (_NORMAL, _USER_DEFINED)}
    known = {p.piece for p in pieces}
    out: list[tuple[tuple[float, int], str, str]] = []
    for piece, key in mergeable.items():
        for i in range(1, len(piece)):
            left, right = piece[:i], piece[i:]
            if (left in mergeable or (len(left) == 1 and left in known)) and \
                    (right in mergeable or (len(right) == 1 and right in known)):
                out.append((key, left, right))
    out.sort()
    return [(left, right) for _, left, right in out]


def _dummy_prefix(user_defined: list[str]) -> Any:
    """SentencePiece's dummy prefix: "▁" before the whole (non-empty) text.

    `tokenizers` normalises the content of normalised added tokens with the same normalizer, so a plain
    `Prepend("▁")` would turn every user-defined piece into "▁piece" and it would no longer match inside text. The
    prefix is therefore a zero-width regex replacement that skips a string that is exactly one user-defined piece:
    pieces match anywhere, at the price of one case (a whole text equal to a user-defined piece gets no "▁").
    """
    from tokenizers import Regex, normalizers

    skip = "|".join(re.escape(p) for p in sorted(user_defined, key=len, reverse=True))
    guard = rf"(?!(?:{skip})\z)" if skip else ""
    return normalizers.Replace(Regex(rf"\A{guard}(?=[\s\S])"), _SPM_SPACE)


def _spm_normalizer(proto: Any) -> Any:
    """SentencePiece's normalizer: the precompiled character map (if any), the dummy prefix, spaces -> ▁."""
    from tokenizers import normalizers

    ns = proto.normalizer_spec
    if ns.remove_extra_whitespaces:
        raise ValueError("SentencePiece models that remove extra whitespace have no exact tokenizer.json form")
    steps: list[Any] = []
    if ns.precompiled_charsmap:
        steps.append(normalizers.Precompiled(ns.precompiled_charsmap))
    if ns.add_dummy_prefix:
        steps.append(_dummy_prefix([p.piece for p in proto.pieces if p.type == _USER_DEFINED]))
    if ns.escape_whitespaces:
        steps.append(normalizers.Replace(" ", _SPM_SPACE))
    return normalizers.Sequence(steps)


def _spm_decoder(proto: Any) -> Any:
    from tokenizers import decoders

    steps = [decoders.Replace(_SPM_SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
    if proto.normalizer_spec.add_dummy_prefix:
        steps.append(decoders.Strip(" ", 1, 0))
    return decoders.Sequence(steps)


def _spm_model(proto: Any) -> Any:
    from sentencepiece import sentencepiece_model_pb2 as pb
    from tokenizers import models

    ts, pieces = proto.trainer_spec, list(proto.pieces)
    if ts.model_type == pb.TrainerSpec.BPE:
        vocab = {p.piece: i for i, p in enumerate(pieces)}
        unk = pieces[ts.unk_id].piece if 0 <= ts.unk_id < len(pieces) else None
        return models.BPE(vocab=vocab, merges=_spm_merges(pieces), unk_token=unk, fuse_unk=True,
                          byte_fallback=ts.byte_fallback)
    if ts.model_type == pb.TrainerSpec.UNIGRAM:
        # pieces SentencePiece never matches in text (control, byte, unused) get a score that never wins
        floor = min((p.score for p in pieces if p.type == _NORMAL), default=0.0) - 1e4
        vocab = [(p.piece, p.score if p.type in (_NORMAL, _USER_DEFINED, _UNKNOWN) else floor) for p in pieces]
        return models.Unigram(vocab, unk_id=ts.unk_id, byte_fallback=ts.byte_fallback)
    raise ValueError(f"SentencePiece model type {ts.model_type} has no tokenizer.json form (BPE and Unigram do)")


def spm_tokenizer(model_proto: bytes) -> Any:
    """A `tokenizers.Tokenizer` that encodes like SentencePiece with this serialized model proto.

    User-defined pieces are added tokens matched after normalisation (as SentencePiece matches them after
    whitespace escaping); control pieces are special added tokens, matched on raw text.
    """
    from sentencepiece import sentencepiece_model_pb2 as pb
    from tokenizers import AddedToken
    from tokenizers import Tokenizer as HFTokenizer

    proto = pb.ModelProto()
    proto.ParseFromString(model_proto)
    hf = HFTokenizer(_spm_model(proto))
    hf.normalizer = _spm_normalizer(proto)
    hf.decoder = _spm_decoder(proto)
    pieces = list(proto.pieces)
    hf.add_tokens([AddedToken(p.piece, normalized=True, special=False) for p in pieces if p.type == _USER_DEFINED])
    hf.add_special_tokens([AddedToken(p.piece, normalized=False, special=True) for p in pieces
                           if p.type == _CONTROL])
    return hf


# --- greedy byte trie (RWKV world) -----------------------------------------------------------------------------


def _depth(node: dict[str, Any]) -> int:
    """Height of a character trie, iteratively."""
    best, stack = 0, [(node, 0)]
    while stack:
        cur, d = stack.pop()
        best = max(best, d)
        stack.extend((child, d + 1) for child in cur.values())
    return best


def _trie_regex(words: Iterable[str]) -> str:
    """An Oniguruma regex that, at each position, matches the longest of `words` (a trie, continuations first)."""
    root: dict[str, Any] = {}
    for w in words:
        node = root
        for ch in w:
            node = node.setdefault(ch, {})
        node[""] = {}  # end-of-word marker

    def emit(node: dict[str, Any]) -> str:
        alts = [re.escape(ch) + emit(child) for ch, child in sorted(node.items()) if ch]
        if "" in node:
            alts.append("")  # a word ends here: the shortest choice, tried last
        return alts[0] if len(alts) == 1 else "(?:" + "|".join(alts) + ")"

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 4 * _depth(root) + 1000))  # emit() recurses once per character
    try:
        return "(?:" + "|".join(re.escape(ch) + emit(child) for ch, child in sorted(root.items())) + ")"
    finally:
        sys.setrecursionlimit(limit)


def trie_tokenizer(table: dict[bytes, int], specials: dict[str, int]) -> Any:
    """A `tokenizers.Tokenizer` for greedy longest-match over bytes: bytes are spelled byte-level, one `Split`
    isolates the longest vocabulary entry at each position, and a word-level model maps it to its id."""
    from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers
    from tokenizers import Tokenizer as HFTokenizer

    vocab = {spell_bytes(b): i for b, i in table.items()}
    vocab.update(specials)
    unk = next(iter(specials), None) or spell_bytes(min(table, key=table.get))
    hf = HFTokenizer(models.WordLevel(vocab=vocab, unk_token=unk))
    hf.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        pre_tokenizers.Split(Regex(_trie_regex(spell_bytes(b) for b in table)), behavior="isolated")])
    hf.decoder = decoders.ByteLevel()
    hf.add_special_tokens([AddedToken(s, normalized=False, special=True) for s in sorted(specials, key=specials.get)])
    return hf
