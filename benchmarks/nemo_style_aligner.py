"""BASELINE FOR COMPARISON ONLY: a re-implementation of a NeMo-RL-style token aligner.

Written from the published description of NeMo RL's X-Token sequence alignment (see
/work/shared/DESIGN.md §4), not from its code, to measure speed and correctness against
`xtalign.align`. It is not used by xtalign itself.

Method: unique token 3-grams (present exactly once on each side) become anchors, kept when they
progress monotonically on both sides; between anchors, a Needleman–Wunsch DP over token strings
scores +3 for a match, −3 for a mismatch, −1.5 per gap, and +1.5·k when k ≤ 4 consecutive tokens on
one side spell exactly one token of the other (a 1-to-k span). Pure Python, like NeMo's.

Every alignment operation becomes one chunk: a match, mismatch or span pairs tokens of both sides; a
gap leaves a token on one side with no partner (an "unaligned" one-sided chunk). Token strings are the
exact bytes each token contributes, decoded as latin-1 (a bijection), which is kinder to the baseline
than NeMo's heuristic string normaliser: a mismatched pair is then a real byte disagreement.
"""

from __future__ import annotations

from collections.abc import Sequence

MATCH, MISMATCH, GAP, SPAN_UNIT, MAX_SPAN = 3.0, -3.0, -1.5, 1.5, 4

Chunk = tuple[list[int], list[int]]  # (student token indices, teacher token indices)


def token_strings(ids: Sequence[int], token_bytes: Sequence[bytes]) -> list[str]:
    """Each token's exact bytes as a latin-1 string (equality of strings == equality of bytes)."""
    return [token_bytes[i].decode("latin-1") for i in ids]


def _anchors(a: list[str], b: list[str]) -> list[tuple[int, int]]:
    """Start positions (i, j) of 3-grams occurring exactly once on each side, monotone and disjoint."""

    def unique_grams(s: list[str]) -> dict[tuple[str, str, str], int]:
        seen: dict[tuple[str, str, str], int] = {}
        dup: set[tuple[str, str, str]] = set()
        for i in range(len(s) - 2):
            g = (s[i], s[i + 1], s[i + 2])
            if g in seen:
                dup.add(g)
            seen[g] = i
        return {g: i for g, i in seen.items() if g not in dup}

    ga, gb = unique_grams(a), unique_grams(b)
    out: list[tuple[int, int]] = []
    last_i, last_j = -3, -3
    for g, i in sorted(ga.items(), key=lambda kv: kv[1]):
        j = gb.get(g)
        if j is not None and i >= last_i + 3 and j >= last_j + 3:
            out.append((i, j))
            last_i, last_j = i, j
    return out


def _span_joins(s: list[str]) -> list[list[str | None]]:
    """joins[k][i] = s[i-k:i] concatenated, for k in 2..MAX_SPAN (None where i < k)."""
    return [[None] * (len(s) + 1) if k < 2 else
            [None if i < k else "".join(s[i - k:i]) for i in range(len(s) + 1)] for k in range(MAX_SPAN + 1)]


def needleman_wunsch(a: list[str], b: list[str]) -> list[Chunk]:
    """Global alignment of two token-string lists with 1-to-k spans; returns chunks (local indices)."""
    n, m = len(a), len(b)
    ja, jb = _span_joins(a), _span_joins(b)
    score = [[0.0] * (m + 1) for _ in range(n + 1)]
    back: list[list[tuple[int, int]]] = [[(0, 0)] * (m + 1) for _ in range(n + 1)]
    for i in range(1, n + 1):
        score[i][0], back[i][0] = GAP * i, (1, 0)
    for j in range(1, m + 1):
        score[0][j], back[0][j] = GAP * j, (0, 1)
    for i in range(1, n + 1):
        row, prev, ai = score[i], score[i - 1], a[i - 1]
        for j in range(1, m + 1):
            bj = b[j - 1]
            best, step = prev[j - 1] + (MATCH if ai == bj else MISMATCH), (1, 1)
            if prev[j] + GAP > best:
                best, step = prev[j] + GAP, (1, 0)
            if row[j - 1] + GAP > best:
                best, step = row[j - 1] + GAP, (0, 1)
            for k in range(2, MAX_SPAN + 1):
                if i >= k and ja[k][i] == bj and score[i - k][j - 1] + SPAN_UNIT * k > best:
                    best, step = score[i - k][j - 1] + SPAN_UNIT * k, (k, 1)
                if j >= k and jb[k][j] == ai and prev[j - k] + SPAN_UNIT * k > best:
                    best, step = prev[j - k] + SPAN_UNIT * k, (1, k)
            row[j], back[i][j] = best, step
    chunks: list[Chunk] = []
    i, j = n, m
    while i > 0 or j > 0:
        di, dj = back[i][j]
        chunks.append((list(range(i - di, i)), list(range(j - dj, j))))
        i, j = i - di, j - dj
    chunks.reverse()
    return chunks


def nemo_style_align(a: list[str], b: list[str]) -> list[Chunk]:
    """Anchored alignment of two token-string lists: anchors 1:1, Needleman–Wunsch between them."""
    chunks: list[Chunk] = []
    pi, pj = 0, 0
    for i, j in [*_anchors(a, b), (len(a), len(b))]:
        for ca, cb in needleman_wunsch(a[pi:i], b[pj:j]):
            chunks.append(([x + pi for x in ca], [y + pj for y in cb]))
        if i < len(a):
            chunks.extend(([i + d], [j + d]) for d in range(3))
        pi, pj = i + 3, j + 3
    return chunks


def score_chunks(chunks: list[Chunk], a: list[str], b: list[str]) -> dict[str, int]:
    """Counts: paired chunks, paired chunks whose bytes differ between sides, tokens left unaligned."""
    paired = [(ca, cb) for ca, cb in chunks if ca and cb]
    bad = sum("".join(a[x] for x in ca) != "".join(b[y] for y in cb) for ca, cb in paired)
    unaligned = sum(len(ca) + len(cb) for ca, cb in chunks if not (ca and cb))
    return {"chunks": len(chunks), "paired": len(paired), "paired_bytes_differ": bad, "unaligned_tokens": unaligned}
