"""Parsers for the on-disk tokenizer formats of the zoo: each returns the pieces a backend needs.

Nothing here knows about the registry; every function takes a path (or bytes) and returns data.
"""

from __future__ import annotations

import ast
import base64
import gzip
import json
import struct
from pathlib import Path

# --- tiktoken-style rank files ----------------------------------------------------------------


def read_quicktok_vocab(path: Path) -> dict[bytes, int]:
    """quicktok `.vocab`: u32 n, then n × (u16 len, bytes, u32 rank)."""
    data = path.read_bytes()
    (n,) = struct.unpack_from("<I", data, 0)
    pos, ranks = 4, {}
    for _ in range(n):
        (ln,) = struct.unpack_from("<H", data, pos)
        tok = data[pos + 2 : pos + 2 + ln]
        (rank,) = struct.unpack_from("<I", data, pos + 2 + ln)
        ranks[tok] = rank
        pos += 6 + ln
    return ranks


def read_quicktok_special(path: Path) -> dict[str, int]:
    """quicktok `.special`: u32 n, then n × (u32 id, u16 len, bytes)."""
    data = path.read_bytes()
    (n,) = struct.unpack_from("<I", data, 0)
    pos, out = 4, {}
    for _ in range(n):
        tid, ln = struct.unpack_from("<IH", data, pos)
        out[data[pos + 6 : pos + 6 + ln].decode("utf-8")] = tid
        pos += 6 + ln
    return out


def read_tiktoken_file(path: Path) -> dict[bytes, int]:
    """`.tiktoken`: one `base64(token) rank` per line."""
    ranks = {}
    for line in path.read_bytes().splitlines():
        if line:
            tok, rank = line.split()
            ranks[base64.b64decode(tok)] = int(rank)
    return ranks


TEKKEN_SPECIALS = ("<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]",
                   "[TOOL_RESULTS]", "[/TOOL_RESULTS]", "[TOOL_CALLS]", "[IMG]", "<pad>", "[IMG_BREAK]",
                   "[IMG_END]", "[PREFIX]", "[MIDDLE]", "[SUFFIX]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]",
                   "[TOOL_CONTENT]")


def read_tekken(path: Path) -> tuple[dict[bytes, int], dict[str, int], str, int]:
    """Tekken JSON -> (ranks with ids already offset by the specials, specials, pattern, n_specials).

    The first `default_num_special_tokens` ids are specials, so BPE rank r has id r + n_specials, and
    only the first `default_vocab_size - n_specials` ranks are used.
    """
    d = json.loads(path.read_text())
    cfg = d["config"]
    n_special = int(cfg["default_num_special_tokens"])
    n_bpe = int(cfg["default_vocab_size"]) - n_special
    ranks = {base64.b64decode(e["token_bytes"]): int(e["rank"]) + n_special
             for e in d["vocab"] if int(e["rank"]) < n_bpe}
    listed = [s.get("token_str") for s in d.get("special_tokens", [])] or list(TEKKEN_SPECIALS)
    specials = {name: i for i, name in enumerate(listed)}
    for i in range(len(listed), n_special):
        specials[f"<SPECIAL_{i}>"] = i
    return ranks, specials, cfg["pattern"], n_special


# --- CLIP merges -------------------------------------------------------------------------------

CLIP_N_MERGES = 49152 - 256 - 2  # the merges CLIP actually uses (48,894)


def read_clip_merges(path: Path) -> list[tuple[str, str]]:
    lines = gzip.decompress(path.read_bytes()).decode("utf-8").split("\n")
    return [tuple(m.split()) for m in lines[1 : CLIP_N_MERGES + 1]]  # type: ignore[misc]


# --- RWKV world vocab --------------------------------------------------------------------------


def read_rwkv_vocab(path: Path) -> dict[int, bytes]:
    """Lines `id repr(token) byte_len`; token is a Python str or bytes literal."""
    out = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        first, rest = line.index(" "), line.rindex(" ")
        tid, lit, n = int(line[:first]), line[first + 1 : rest], int(line[rest + 1 :])
        tok = ast.literal_eval(lit)
        b = tok.encode("utf-8") if isinstance(tok, str) else tok
        if len(b) != n:
            raise ValueError(f"rwkv vocab line {tid}: length {len(b)} != {n}")
        out[tid] = b
    return out


def read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))
