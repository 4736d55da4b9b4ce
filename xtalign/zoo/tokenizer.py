"""The one tokenizer interface xtalign uses, over several encoder backends.

A `Tokenizer` pairs an encoder (tiktoken, SentencePiece, HF `tokenizers`, or a greedy byte trie)
with the `Vocab` that says which bytes each id contributes. Encoding never inserts special tokens;
callers add bos/eos explicitly from `vocab.roles` so no hidden state changes ids.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Protocol

import numpy as np

from xtalign.vocab import Vocab


class Backend(Protocol):
    def encode(self, text: str) -> list[int]: ...

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]: ...


class TiktokenBackend:
    """tiktoken over raw byte ranks; specials are never parsed out of text."""

    def __init__(self, name: str, ranks: dict[bytes, int], pattern: str, specials: dict[str, int]) -> None:
        import tiktoken

        self.encoding = tiktoken.Encoding(name, pat_str=pattern, mergeable_ranks=ranks, special_tokens=specials)

    def encode(self, text: str) -> list[int]:
        return self.encoding.encode_ordinary(text)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        texts = list(texts)
        # tiktoken's threaded batch costs more than it saves on many short strings (vocab re-encoding)
        if len(texts) > 256 and sum(map(len, texts)) < 256 * len(texts):
            return [self.encoding.encode_ordinary(t) for t in texts]
        return self.encoding.encode_ordinary_batch(texts)


class SentencePieceBackend:
    def __init__(self, model_proto: bytes) -> None:
        import sentencepiece as spm

        self.sp = spm.SentencePieceProcessor(model_proto=model_proto)

    def encode(self, text: str) -> list[int]:
        return self.sp.encode(text)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return self.sp.encode(list(texts))


class HFBackend:
    """A `tokenizers.Tokenizer`; also gives character offsets for normalising tokenizers."""

    def __init__(self, tok: Any) -> None:
        self.tok = tok
        # special-token strings in text are text, as for every other backend (no hidden role switches)
        self.tok.encode_special_tokens = True

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self.tok.encode_batch(list(texts), add_special_tokens=False)]

    def encode_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        enc = self.tok.encode(text, add_special_tokens=False)
        return enc.ids, enc.offsets


class GreedyTrieBackend:
    """Greedy longest-match over bytes (RWKV "world" tokenizer semantics)."""

    def __init__(self, bytes_to_id: dict[bytes, int]) -> None:
        self.table = bytes_to_id
        lengths: dict[int, set[int]] = {}
        for b in bytes_to_id:
            lengths.setdefault(b[0], set()).add(len(b))
        self.lengths = {k: sorted(v, reverse=True) for k, v in lengths.items()}

    def encode(self, text: str) -> list[int]:
        data, out, i, n = text.encode("utf-8"), [], 0, 0
        n = len(data)
        while i < n:
            for ln in self.lengths.get(data[i], ()):
                tid = self.table.get(data[i : i + ln])
                if tid is not None:
                    out.append(tid)
                    i += ln
                    break
            else:
                raise ValueError(f"byte {data[i]:#x} has no token")
        return out

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]


@dataclass(eq=False)
class Tokenizer:
    """A loaded tokenizer: encoder + canonical vocabulary.

    `lossless`: the bytes of `encode(text)` concatenated are exactly the UTF-8 of `text` (after
    the `dummy_prefix` space SentencePiece adds, when `dummy_prefix` is true).
    """

    name: str
    family: str
    source: str
    vocab: Vocab
    backend_factory: Callable[[], Backend]
    lossless: bool = True
    dummy_prefix: bool = False
    model_rows: int | None = None  # embedding rows of the matching model, where it differs
    meta: dict[str, Any] = field(default_factory=dict)

    @cached_property
    def backend(self) -> Backend:
        """The encoder, built on first use: vocabulary-only work (overlap) never pays for it."""
        return self.backend_factory()

    @property
    def size(self) -> int:
        return self.vocab.size

    def encode(self, text: str) -> list[int]:
        return self.backend.encode(text)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return self.backend.encode_batch(texts)

    def decode_bytes(self, ids: Sequence[int]) -> bytes:
        """Exact bytes of `ids` in text (the dummy-prefix space removed)."""
        out = self.vocab.decode_bytes(ids)
        if self.dummy_prefix and out.startswith(b" "):  # the phantom space of the first token with bytes
            out = out[1:]
        return out

    def decode(self, ids: Sequence[int]) -> str:
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def byte_ends(self, text: str, ids: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Token ids and, per token, the byte offset in UTF-8 `text` where it ends. [T], [T]

        Lossless tokenizers use exact byte lengths (the dummy-prefix space is removed from the
        first token that has bytes); normalising tokenizers fall back to the encoder's offsets.
        """
        if ids is None and not self.lossless and isinstance(self.backend, HFBackend):
            return _ends_from_offsets(self.backend, text)
        if ids is None:
            ids = self.encode(text)
        arr = np.asarray(ids, dtype=np.int64)
        lens = self.vocab.byte_lengths[arr].astype(np.int64)  # [T]
        ends = np.cumsum(lens)
        if self.dummy_prefix and len(ends) and ends[-1] > 0:
            ends = np.maximum(ends - 1, 0)
        return arr, ends


def _ends_from_offsets(backend: HFBackend, text: str) -> tuple[np.ndarray, np.ndarray]:
    ids, offsets = backend.encode_offsets(text)
    # character offsets -> byte offsets through a prefix sum of UTF-8 lengths
    char_bytes = np.fromiter((len(c.encode("utf-8")) for c in text), dtype=np.int64, count=len(text))
    prefix = np.concatenate([[0], np.cumsum(char_bytes)])
    ends = prefix[np.maximum.accumulate(np.asarray([e for _, e in offsets] or [0], dtype=np.int64))]
    return np.asarray(ids, dtype=np.int64), ends[: len(ids)]


LoaderFn = Callable[[], Tokenizer]
