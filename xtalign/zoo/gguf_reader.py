"""A minimal reader for the key/value header of GGUF files.

Only the metadata is read (tokenizer lists, pre-tokenizer tag, special ids), so a file truncated
after its header — such as the first part of a split model — is enough to build its tokenizer.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

_SCALARS: dict[int, tuple[str, int]] = {
    0: ("<B", 1), 1: ("<b", 1), 2: ("<H", 2), 3: ("<h", 2), 4: ("<I", 4), 5: ("<i", 4),
    6: ("<f", 4), 7: ("<?", 1), 10: ("<Q", 8), 11: ("<q", 8), 12: ("<d", 8),
}
_NUMPY: dict[int, str] = {0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4",
                          7: "?", 10: "<u8", 11: "<i8", 12: "<f8"}
_STRING, _ARRAY = 8, 9


class GGUFError(ValueError):
    pass


def _read(f: BinaryIO, n: int) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise GGUFError("GGUF header is truncated")
    return data


def _read_str(f: BinaryIO) -> str:
    (n,) = struct.unpack("<Q", _read(f, 8))
    return _read(f, n).decode("utf-8", errors="surrogateescape")


def _read_value(f: BinaryIO, vtype: int) -> Any:
    if vtype in _SCALARS:
        fmt, size = _SCALARS[vtype]
        return struct.unpack(fmt, _read(f, size))[0]
    if vtype == _STRING:
        return _read_str(f)
    if vtype == _ARRAY:
        (itype,) = struct.unpack("<I", _read(f, 4))
        (n,) = struct.unpack("<Q", _read(f, 8))
        if itype in _NUMPY:
            dt = np.dtype(_NUMPY[itype])
            return np.frombuffer(_read(f, n * dt.itemsize), dtype=dt).copy()
        return [_read_value(f, itype) for _ in range(n)]
    raise GGUFError(f"unknown GGUF value type {vtype}")


def read_gguf_metadata(path: str | Path) -> dict[str, Any]:
    """All key/value pairs of a GGUF file's header (arrays of numbers come back as numpy arrays)."""
    with open(path, "rb") as f:
        if _read(f, 4) != b"GGUF":
            raise GGUFError(f"{path} is not a GGUF file (bad magic)")
        (version,) = struct.unpack("<I", _read(f, 4))
        if version < 2:
            raise GGUFError(f"{path}: GGUF version {version} is not supported (need ≥ 2)")
        _n_tensors, n_kv = struct.unpack("<QQ", _read(f, 16))
        meta: dict[str, Any] = {"GGUF.version": version}
        for _ in range(n_kv):
            key = _read_str(f)
            (vtype,) = struct.unpack("<I", _read(f, 4))
            meta[key] = _read_value(f, vtype)
    return meta
