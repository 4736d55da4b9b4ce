"""Vocabulary overlap on canonical bytes: |A∩B| / min, Jaccard, directional coverage, and
corpus-weighted coverage (the share of a text's bytes, tokenized by A, whose tokens exist in B)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from xtalign.vocab import Vocab

Metric = Literal["min", "jaccard", "coverage"]
METRICS: tuple[Metric, ...] = ("min", "jaccard", "coverage")
_SPECIAL_TAG = b"\x00special:"  # keeps special names from colliding with text bytes


def canonical_set(vocab: Vocab, *, include_special: bool = False) -> frozenset[bytes]:
    """Distinct canonical byte strings of normal tokens (plus tagged special names if asked)."""
    if not include_special:
        return vocab.normal_set
    specials = {_SPECIAL_TAG + vocab.names[i].encode("utf-8") for i in vocab.special_ids.tolist()}
    return vocab.normal_set | specials


def intersection_matrix(sets: Sequence[frozenset[bytes]]) -> np.ndarray:
    """[N, N] int64: |A ∩ B| for every pair (diagonal = |A|)."""
    n = len(sets)
    out = np.zeros((n, n), dtype=np.int64)
    for i in range(n):
        for j in range(i, n):
            out[i, j] = out[j, i] = len(sets[i] & sets[j]) if i != j else len(sets[i])
    return out


def metric_matrix(inter: np.ndarray, sizes: np.ndarray, metric: Metric) -> np.ndarray:
    """[N, N] float from intersections; `coverage` is row-directional: |A∩B| / |A| for row A."""
    a, b = sizes[:, None].astype(np.float64), sizes[None, :].astype(np.float64)
    if metric == "min":
        denom = np.minimum(a, b)
    elif metric == "jaccard":
        denom = a + b - inter
    elif metric == "coverage":
        denom = np.broadcast_to(a, inter.shape)
    else:
        raise ValueError(f"unknown metric {metric!r}; choose one of {METRICS}")
    return np.divide(inter, denom, out=np.zeros(inter.shape), where=denom > 0)


def token_byte_counts(ids_per_doc: Sequence[Sequence[int]], vocab: Vocab) -> np.ndarray:
    """[V] float64: total corpus bytes carried by each token id."""
    flat = np.concatenate([np.asarray(d, dtype=np.int64) for d in ids_per_doc]) if ids_per_doc else np.zeros(0, int)
    return np.bincount(flat, weights=vocab.byte_lengths[flat], minlength=vocab.size)


def corpus_coverage(byte_counts: np.ndarray, vocab: Vocab, other: frozenset[bytes]) -> float:
    """Share of corpus bytes (tokenized by `vocab`) whose token's canonical bytes exist in `other`."""
    total = byte_counts.sum()
    if total == 0:
        return 0.0
    ids = np.flatnonzero(byte_counts)
    hit = np.fromiter((vocab.token_bytes[i] in other for i in ids.tolist()), dtype=bool, count=len(ids))
    return float(byte_counts[ids[hit]].sum() / total)


@dataclass(frozen=True, kw_only=True)
class OverlapResult:
    tokenizers: list[str]
    sizes: list[int]
    intersections: list[list[int]]
    metric: Metric
    matrix: list[list[float]]
    include_special: bool = False
    corpus: str | None = None
    corpus_byte_coverage: list[list[float]] | None = None  # row A, column B
    extra: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        out = {k: getattr(self, k) for k in ("tokenizers", "sizes", "intersections", "metric", "matrix",
                                              "include_special")}
        if self.corpus_byte_coverage is not None:
            out["corpus"] = self.corpus
            out["corpus_byte_coverage"] = self.corpus_byte_coverage
        out.update(self.extra)
        return out


def compute_overlap(vocabs: Sequence[Vocab], *, metric: Metric = "min", include_special: bool = False,
                    corpus_counts: Sequence[np.ndarray] | None = None, corpus: str | None = None) -> OverlapResult:
    """Overlap of several vocabularies; `corpus_counts[i]` = token_byte_counts of the corpus under vocab i."""
    sets = [canonical_set(v, include_special=include_special) for v in vocabs]
    inter = intersection_matrix(sets)
    sizes = np.array([len(s) for s in sets])
    cov = None
    if corpus_counts is not None:
        cov = [[1.0 if i == j else corpus_coverage(corpus_counts[i], vocabs[i], sets[j]) for j in range(len(sets))]
               for i in range(len(sets))]
    return OverlapResult(tokenizers=[v.name for v in vocabs], sizes=sizes.tolist(), intersections=inter.tolist(),
                         metric=metric, matrix=metric_matrix(inter, sizes, metric).round(6).tolist(),
                         include_special=include_special, corpus=corpus, corpus_byte_coverage=cov)
