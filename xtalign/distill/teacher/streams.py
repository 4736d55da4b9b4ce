"""The byte layout of one teacher-answer blob (`teacher.codec`): a header, a stream table, and each numpy
stream compressed on its own (raw LZMA2 with literal settings per element size, zlib, zstd or none)."""

from __future__ import annotations

import lzma
import struct
import zlib
from typing import Any

import numpy as np

__all__ = ["COMPRESSORS", "DEFAULT_LEVELS", "HEADER", "MAGIC", "CodecError", "pack", "unpack"]

COMPRESSORS = ("none", "zlib", "lzma", "zstd")
DEFAULT_LEVELS = {"none": 0, "zlib": 9, "lzma": 6, "zstd": 19}
MAGIC = b"XTC1"
HEADER = struct.Struct("<4sBBBbIHIdd")  # magic, kind, flags, compressor, level, T, K, V, temperature, step
_STREAM = struct.Struct("<II")  # raw length, stored length
_LZMA_DICT = 1 << 23
# lzma literal-context settings per stream element size: lc (previous-byte bits), lp / pb (position bits)
_LZMA_SHAPE = {1: (3, 0, 0), 2: (0, 1, 1), 4: (0, 2, 2)}


class CodecError(ValueError):
    """A blob that is not a teacher-answer blob of this codec, is truncated, or was made with another setting."""


# --- compression of one stream ------------------------------------------------------------------------------------


def _lzma_filters(level: int, itemsize: int) -> list[dict[str, Any]]:
    lc, lp, pb = _LZMA_SHAPE[itemsize]
    return [{"id": lzma.FILTER_LZMA2, "preset": max(0, min(9, level)), "dict_size": _LZMA_DICT, "lc": lc, "lp": lp,
             "pb": pb}]


def _compress(data: bytes, compressor: str, level: int, itemsize: int) -> bytes:
    if not data or compressor == "none":
        return data
    if compressor == "lzma":
        return lzma.compress(data, format=lzma.FORMAT_RAW, filters=_lzma_filters(level, itemsize))
    if compressor == "zlib":
        return zlib.compress(data, level)
    import pyarrow as pa

    return pa.Codec("zstd", compression_level=level).compress(data, asbytes=True)


def _decompress(data: bytes, raw_len: int, compressor: str, level: int, itemsize: int) -> bytes:
    if raw_len == 0 or compressor == "none":
        return data
    if compressor == "lzma":
        return lzma.decompress(data, format=lzma.FORMAT_RAW, filters=_lzma_filters(level, itemsize))
    if compressor == "zlib":
        return zlib.decompress(data)
    import pyarrow as pa

    return pa.Codec("zstd", compression_level=level).decompress(data, decompressed_size=raw_len, asbytes=True)


def pack(header: tuple[Any, ...], streams: list[np.ndarray], compressor: str, level: int) -> bytes:
    parts, table = [], [struct.pack("<B", len(streams))]
    for a in streams:
        a = np.ascontiguousarray(a)
        raw = a.tobytes()
        stored = _compress(raw, compressor, level, a.dtype.itemsize)
        table.append(_STREAM.pack(len(raw), len(stored)))
        parts.append(stored)
    return HEADER.pack(*header) + b"".join(table) + b"".join(parts)


def unpack(blob: bytes, dtypes: list[np.dtype[Any]]) -> tuple[tuple[Any, ...], list[np.ndarray]]:
    """Header fields and the streams (as arrays of ``dtypes``) of one blob."""
    if len(blob) < HEADER.size + 1 or blob[:4] != MAGIC:
        raise CodecError("not a teacher-answer blob (bad magic or too short); the cache is damaged or of another "
                         "format: recompute the teacher")
    header = HEADER.unpack_from(blob, 0)
    compressor = COMPRESSORS[header[3]] if header[3] < len(COMPRESSORS) else None
    pos = HEADER.size
    n = blob[pos]
    pos += 1
    if compressor is None or n != len(dtypes):
        raise CodecError(f"teacher-answer blob: {n} streams / compressor {header[3]}, expected {len(dtypes)}; "
                         "the blob is damaged or of another codec version")
    sizes = [_STREAM.unpack_from(blob, pos + i * _STREAM.size) for i in range(n)]
    pos += n * _STREAM.size
    out = []
    for (raw_len, stored_len), dt in zip(sizes, dtypes, strict=True):
        if pos + stored_len > len(blob):
            raise CodecError("teacher-answer blob is truncated; recompute the teacher")
        try:
            raw = _decompress(blob[pos: pos + stored_len], raw_len, compressor, header[4], dt.itemsize)
        except (lzma.LZMAError, zlib.error, OSError, ValueError) as exc:
            raise CodecError(f"teacher-answer blob does not decompress ({exc}); recompute the teacher") from None
        if len(raw) != raw_len or raw_len % dt.itemsize:
            raise CodecError("teacher-answer blob: a stream has the wrong size; recompute the teacher")
        out.append(np.frombuffer(raw, dtype=dt))
        pos += stored_len
    return header, out
