"""Build `Tokenizer`s (encoder + canonical Vocab) from each on-disk format."""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any

import numpy as np

from xtalign.vocab import (
    TokenKind,
    Vocab,
    bytelevel_to_bytes,
    make_vocab,
    parse_byte_piece,
    sentencepiece_to_bytes,
)
from xtalign.zoo import formats
from xtalign.zoo.gguf_reader import read_gguf_metadata
from xtalign.zoo.tokenizer import (
    GreedyTrieBackend,
    HFBackend,
    SentencePieceBackend,
    TiktokenBackend,
    Tokenizer,
)

# Split patterns (facts from the tokenizers' public definitions, written out here).
_CONTRACTIONS = r"'s|'t|'re|'ve|'m|'ll|'d"
PAT_GPT2 = _CONTRACTIONS + r"| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
PAT_LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
              r"|\s*[\r\n]+|\s+(?!\S)|\s+")
PAT_QWEN = PAT_LLAMA3.replace(r"\p{N}{1,3}", r"\p{N}")

# Marker-like special names that are reserved slots rather than live specials.
_UNUSED_NAME = re.compile(r"^(<unused\d+>|\[PAD\d+\]|<\|reserved_special_token_\d+\|>|<\|placeholder\d+\|>"
                          r"|<SPECIAL_\d+>|<\|reserved_\d+\|>)$")

ROLE_NAMES = {
    "bos": ("<s>", "<bos>", "<|begin_of_text|>", "<|startoftext|>", "<SOS>", "[CLS]", "<BOS_TOKEN>"),
    "eos": ("</s>", "<eos>", "<|end_of_text|>", "<|endoftext|>", "<EOT>", "<|EOS_TOKEN|>", "<EOS_TOKEN>"),
    "pad": ("<pad>", "[PAD]", "<|finetune_right_pad_id|>", "<PAD>"),
    "unk": ("<unk>", "[UNK]", "<UNK>"),
    "mask": ("<mask>", "[MASK]"),
    "sep": ("[SEP]",),
    "cls": ("[CLS]",),
}


def _special_kind(name: str) -> int:
    return TokenKind.UNUSED if _UNUSED_NAME.match(name) else TokenKind.SPECIAL


def roles_from_names(names: list[str], kinds: np.ndarray, explicit: dict[str, int] | None = None) -> dict[str, int]:
    """Map roles to ids: explicit ids from the file first, then the family's conventional names."""
    roles = {k: v for k, v in (explicit or {}).items() if v is not None and 0 <= v < len(names)}
    lookup = {names[i]: int(i) for i in np.flatnonzero(kinds != TokenKind.NORMAL)}
    for role, candidates in ROLE_NAMES.items():
        if role not in roles:
            hit = next((lookup[c] for c in candidates if c in lookup), None)
            if hit is not None:
                roles[role] = hit
    return roles


# --- tiktoken families -------------------------------------------------------------------------


def from_ranks(name: str, family: str, source: str, ranks: dict[bytes, int], pattern: str,
               specials: dict[str, int], *, size: int | None = None, model_rows: int | None = None) -> Tokenizer:
    n = size or max([*ranks.values(), *specials.values()]) + 1
    tb, kinds, names = [b""] * n, np.full(n, TokenKind.UNUSED, np.uint8), [""] * n
    for b, r in ranks.items():
        tb[r], kinds[r], names[r] = b, TokenKind.NORMAL, b.decode("utf-8", errors="backslashreplace")
    for s, i in specials.items():
        kinds[i], names[i] = _special_kind(s), s
    vocab = make_vocab(name, tb, kinds, names, roles_from_names(names, kinds))
    factory = functools.partial(TiktokenBackend, name, ranks, pattern, specials)
    return Tokenizer(name=name, family=family, source=source, vocab=vocab, backend_factory=factory,
                     model_rows=model_rows)


def o200k_pattern() -> str:
    from tiktoken_ext import openai_public

    return _pattern_of(openai_public, "o200k_base")


def cl100k_pattern() -> str:
    from tiktoken_ext import openai_public

    return _pattern_of(openai_public, "cl100k_base")


def _pattern_of(module: Any, fn: str) -> str:
    # The constructors in tiktoken_ext fetch ranks over the network; read the pattern statically
    # by calling them with the loader patched out.
    import tiktoken.load as tl

    orig = tl.load_tiktoken_bpe
    try:
        module.load_tiktoken_bpe = lambda *a, **k: {}
        return getattr(module, fn)()["pat_str"]
    finally:
        module.load_tiktoken_bpe = orig


# --- SentencePiece -----------------------------------------------------------------------------


def from_sentencepiece(name: str, family: str, source: str, model_proto: bytes,
                       *, model_rows: int | None = None) -> Tokenizer:
    from sentencepiece import sentencepiece_model_pb2 as pb

    proto = pb.ModelProto()
    proto.ParseFromString(model_proto)
    pieces = [p.piece for p in proto.pieces]
    types = np.fromiter((p.type for p in proto.pieces), dtype=np.int64, count=len(pieces))
    ts = proto.trainer_spec
    explicit = {"bos": ts.bos_id, "eos": ts.eos_id, "pad": ts.pad_id, "unk": ts.unk_id}
    vocab = _spm_vocab(name, pieces, types, explicit)
    ns = proto.normalizer_spec
    lossless = ns.name in ("identity", "") and not ns.remove_extra_whitespaces
    return Tokenizer(name=name, family=family, source=source, vocab=vocab,
                     backend_factory=functools.partial(SentencePieceBackend, model_proto), lossless=lossless,
                     dummy_prefix=bool(ns.add_dummy_prefix), model_rows=model_rows,
                     meta={"normalizer": ns.name or "identity"})


def _spm_vocab(name: str, pieces: list[str], types: np.ndarray, explicit: dict[str, int]) -> Vocab:
    """SentencePiece piece types (1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte)."""
    n = len(pieces)
    tb, kinds = [b""] * n, np.zeros(n, np.uint8)
    for i, (piece, typ) in enumerate(zip(pieces, types.tolist(), strict=True)):
        if typ in (1, 4):
            tb[i] = sentencepiece_to_bytes(piece)
        elif typ == 6:
            tb[i], kinds[i] = bytes([parse_byte_piece(piece) or 0]), TokenKind.BYTE
        elif typ == 5 or (typ == 2 and i != explicit.get("unk")):
            kinds[i] = TokenKind.UNUSED
        else:
            kinds[i] = _special_kind(piece)
    return make_vocab(name, tb, kinds, pieces, roles_from_names(pieces, kinds, explicit))


def gguf_to_sentencepiece(meta: dict[str, Any]) -> bytes:
    """A SentencePiece BPE model equivalent to a GGUF "llama" (SPM) vocabulary."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    tokens, scores = meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.scores"]
    types = meta["tokenizer.ggml.token_type"]
    unk = int(meta.get("tokenizer.ggml.unknown_token_id", 0))
    m = pb.ModelProto()
    ts = m.trainer_spec
    ts.model_type, ts.vocab_size, ts.byte_fallback = pb.TrainerSpec.BPE, len(tokens), bool((types == 6).any())
    ts.unk_id = unk
    for role, key in (("bos_id", "bos"), ("eos_id", "eos"), ("pad_id", "padding")):
        setattr(ts, role, int(meta.get(f"tokenizer.ggml.{key}_token_id", -1)))
    ns = m.normalizer_spec
    ns.name, ns.add_dummy_prefix = "identity", bool(meta.get("tokenizer.ggml.add_space_prefix", True))
    ns.remove_extra_whitespaces, ns.escape_whitespaces = False, True
    for i, (tok, score, typ) in enumerate(zip(tokens, scores.tolist(), types.tolist(), strict=True)):
        p = m.pieces.add()
        # user-defined pieces are matched after whitespace is escaped to U+2581
        p.piece = tok.replace(" ", "\u2581") if typ == 4 else tok
        # one UNKNOWN piece only; other "unknown"-typed GGUF slots are reserved placeholders
        p.score, p.type = score, (2 if i == unk else 5 if typ == 2 else typ)
    return m.SerializeToString()


# --- GGUF --------------------------------------------------------------------------------------

_GGUF_PRE: dict[str | None, list[str]] = {
    None: [PAT_GPT2], "default": [PAT_GPT2], "gpt-2": [PAT_GPT2], "mpt": [PAT_GPT2], "gpt-neox": [PAT_GPT2],
    "olmo": [PAT_GPT2], "llama-bpe": [PAT_LLAMA3], "qwen2": [PAT_QWEN], "qwen35": [PAT_QWEN],
    "starcoder": [r"\p{N}", PAT_GPT2], "refact": [r"\p{N}", PAT_GPT2], "smollm": [r"\p{N}", PAT_GPT2],
    "command-r": [r"\p{N}", PAT_GPT2],
    "falcon": [r"[\p{P}\$\+<=>\^~\|`]+", PAT_GPT2, r"[0-9][0-9][0-9]"],
    "deepseek-coder": [r"[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", r"[一-龥ࠀ-一가-퟿]+", r"\p{N}"],
    "deepseek-llm": [r"[\r\n]", r"\s?\p{L}+", r"\s?[!-/:-~！-／：-～‘-‟　-。]+", r"\s+$", r"[一-龥ࠀ-一가-퟿]+",
                     r"\p{N}+"],
}


def from_gguf(name: str, family: str, source: str, path: Path, *, model_rows: int | None = None) -> Tokenizer:
    meta = read_gguf_metadata(path)
    model = meta.get("tokenizer.ggml.model")
    if model == "llama":
        roles = _gguf_roles(meta)
        vocab = _spm_vocab(name, list(meta["tokenizer.ggml.tokens"]), meta["tokenizer.ggml.token_type"], roles)
        return Tokenizer(name=name, family=family, source=source, vocab=vocab,
                         backend_factory=lambda: SentencePieceBackend(gguf_to_sentencepiece(meta)),
                         dummy_prefix=bool(meta.get("tokenizer.ggml.add_space_prefix", True)),
                         model_rows=model_rows, meta={"gguf_pre": meta.get("tokenizer.ggml.pre")})
    if model == "gpt2":
        return _gguf_bytelevel(name, family, source, meta, model_rows)
    if model == "bert":
        return _gguf_wordpiece(name, family, source, meta)
    if model == "gemma4":
        return _gguf_merges_spm(name, family, source, meta, model_rows)
    raise ValueError(f"{path.name}: GGUF tokenizer model {model!r} is not supported (llama, gpt2, gemma4, bert are)")


def _gguf_merges_spm(name: str, family: str, source: str, meta: dict[str, Any], model_rows: int | None) -> Tokenizer:
    """SentencePiece-style pieces (U+2581 for space, <0xNN> byte fallback) merged by an explicit merge list."""
    from tokenizers import AddedToken, models, normalizers
    from tokenizers import Tokenizer as HFTokenizer

    tokens, types = list(meta["tokenizer.ggml.tokens"]), meta["tokenizer.ggml.token_type"]
    merges = [tuple(m.split(" ", 1)) for m in meta["tokenizer.ggml.merges"]]
    hf = HFTokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges, byte_fallback=True))
    hf.normalizer = normalizers.Replace(" ", "\u2581")
    hf.add_tokens([AddedToken(tokens[i].replace(" ", "\u2581"), normalized=True, special=False)
                   for i in np.flatnonzero(types == 4)])
    vocab = _spm_vocab(name, tokens, types, _gguf_roles(meta))
    return Tokenizer(name=name, family=family, source=source, vocab=vocab, backend_factory=lambda: HFBackend(hf),
                     dummy_prefix=bool(meta.get("tokenizer.ggml.add_space_prefix", False)), model_rows=model_rows)


def _gguf_roles(meta: dict[str, Any]) -> dict[str, int]:
    keys = {"bos": "bos", "eos": "eos", "pad": "padding", "unk": "unknown", "sep": "seperator",
            "cls": "cls", "mask": "mask"}
    return {r: int(meta[f"tokenizer.ggml.{k}_token_id"]) for r, k in keys.items()
            if f"tokenizer.ggml.{k}_token_id" in meta}


def _gguf_bytelevel(name: str, family: str, source: str, meta: dict[str, Any], model_rows: int | None) -> Tokenizer:
    from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers
    from tokenizers import Tokenizer as HFTokenizer

    tokens, types = meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.token_type"]
    merges = [tuple(m.split(" ", 1)) for m in meta["tokenizer.ggml.merges"]]
    n = len(tokens)
    tb, kinds = [b""] * n, np.zeros(n, np.uint8)
    for i, (t, ty) in enumerate(zip(tokens, types.tolist(), strict=True)):
        if ty in (1, 4):
            b = bytelevel_to_bytes(t) if ty == 1 else None
            tb[i] = b if b is not None else t.encode("utf-8")
        else:
            kinds[i] = TokenKind.UNUSED if ty == 5 else _special_kind(t)
    pre = meta.get("tokenizer.ggml.pre")
    pats = _GGUF_PRE.get(pre, [PAT_GPT2])
    hf = HFTokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges,
                                ignore_merges=pre == "llama-bpe"))
    hf.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(p), behavior="isolated") for p in pats]
        + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    hf.decoder = decoders.ByteLevel()
    hf.add_tokens([AddedToken(tokens[i], normalized=False, special=False) for i in np.flatnonzero(types == 4)])
    hf.add_special_tokens([AddedToken(tokens[i], normalized=False, special=True)
                           for i in np.flatnonzero(types == 3)])
    vocab = make_vocab(name, tb, kinds, list(tokens), roles_from_names(list(tokens), kinds, _gguf_roles(meta)))
    missing = missing_utf8_bytes(vocab)
    return Tokenizer(name=name, family=family, source=source, vocab=vocab, backend_factory=lambda: HFBackend(hf),
                     lossless=not missing, model_rows=model_rows, meta={"gguf_pre": pre, "missing_bytes": missing})


# Bytes that can occur in valid UTF-8 (C0, C1 and F5..FF never do).
_UTF8_BYTES = frozenset(range(256)) - {0xC0, 0xC1} - set(range(0xF5, 0x100))


def missing_utf8_bytes(vocab: Vocab) -> list[int]:
    """Byte values valid UTF-8 can contain that no single token carries: a byte-level BPE drops them."""
    singles = {b[0] for b in vocab.token_bytes if len(b) == 1}
    return sorted(_UTF8_BYTES - singles)


def _gguf_wordpiece(name: str, family: str, source: str, meta: dict[str, Any]) -> Tokenizer:
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, normalizers, pre_tokenizers

    types = meta["tokenizer.ggml.token_type"]
    # llama.cpp stores WordPiece word starts as "▁word" and continuations bare; restore "##".
    tokens = [t if types[i] == 3 or (t.startswith("[") and t.endswith("]")) else
              t[1:] if t.startswith("\u2581") else "##" + t for i, t in enumerate(meta["tokenizer.ggml.tokens"])]
    unk = tokens[int(meta.get("tokenizer.ggml.unknown_token_id", 100))]
    hf = HFTokenizer(models.WordPiece(vocab={t: i for i, t in enumerate(tokens)}, unk_token=unk))
    hf.normalizer = normalizers.BertNormalizer(lowercase=True)
    hf.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    hf.decoder = decoders.WordPiece()
    return _wordpiece_tokenizer(name, family, source, tokens, types, hf, _gguf_roles(meta))


def _wordpiece_tokenizer(name: str, family: str, source: str, tokens: list[str], types: np.ndarray,
                         hf: Any, roles: dict[str, int]) -> Tokenizer:
    n = len(tokens)
    tb, kinds = [b""] * n, np.zeros(n, np.uint8)
    for i, t in enumerate(tokens):
        if types[i] == 3 or (t.startswith("[") and t.endswith("]")):
            kinds[i] = TokenKind.UNUSED if t.startswith("[unused") else TokenKind.SPECIAL
        else:  # a word-initial piece is preceded by a space in decoded text; `##` continues a word
            tb[i] = t[2:].encode() if t.startswith("##") else b" " + t.encode()
    vocab = make_vocab(name, tb, kinds, tokens, roles_from_names(tokens, kinds, roles))
    return Tokenizer(name=name, family=family, source=source, vocab=vocab, backend_factory=lambda: HFBackend(hf),
                     lossless=False)


# --- HF tokenizer.json ---------------------------------------------------------------------------


def _has_type(node: Any, typ: str) -> bool:
    if isinstance(node, dict):
        return node.get("type") == typ or any(_has_type(v, typ) for v in node.values())
    if isinstance(node, list):
        return any(_has_type(v, typ) for v in node)
    return False


def from_tokenizer_json(name: str, family: str, source: str, text: str) -> Tokenizer:
    """A Hugging Face `tokenizer.json`: bytes per id follow its decoder (byte-level, SPM, WordPiece)."""
    import json

    from tokenizers import Tokenizer as HFTokenizer

    spec = json.loads(text)
    hf = HFTokenizer.from_str(text)
    n = hf.get_vocab_size(with_added_tokens=True)
    names = [hf.id_to_token(i) or "" for i in range(n)]
    model = spec.get("model", {})
    if model.get("type") == "WordPiece":
        typ = np.ones(n, np.int64)
        for a in spec.get("added_tokens", []):
            typ[a["id"]] = 3 if a.get("special") else 1
        return _wordpiece_tokenizer(name, family, source, names, typ, hf, {})
    bytelevel = _has_type(spec.get("pre_tokenizer"), "ByteLevel") or _has_type(spec.get("decoder"), "ByteLevel")
    tb, kinds = [b""] * n, np.zeros(n, np.uint8)
    added = {a["id"]: a for a in spec.get("added_tokens", [])}
    for i, t in enumerate(names):
        if i in added and added[i].get("special"):
            kinds[i] = _special_kind(t)
        elif i in added:
            tb[i] = t.encode("utf-8")
        elif bytelevel:
            tb[i] = bytelevel_to_bytes(t) or t.encode("utf-8")
        elif (bv := parse_byte_piece(t)) is not None and model.get("byte_fallback"):
            tb[i], kinds[i] = bytes([bv]), TokenKind.BYTE
        else:
            tb[i] = sentencepiece_to_bytes(t)
    normalizer = spec.get("normalizer")
    vocab = make_vocab(name, tb, kinds, names, roles_from_names(names, kinds))
    dummy = _has_type(spec.get("pre_tokenizer"), "Metaspace") or _has_type(normalizer, "Prepend")
    lossless = normalizer is None or _only_space_replacing(normalizer)
    return Tokenizer(name=name, family=family, source=source, vocab=vocab, backend_factory=lambda: HFBackend(hf),
                     lossless=lossless, dummy_prefix=dummy and not bytelevel)


def _only_space_replacing(normalizer: dict) -> bool:
    parts = normalizer.get("normalizers", [normalizer]) if normalizer.get("type") == "Sequence" else [normalizer]
    return all(p.get("type") in ("Replace", "Prepend") for p in parts)


# --- CLIP and RWKV -----------------------------------------------------------------------------

CLIP_PATTERN = r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"


def from_clip(name: str, source: str, path: Path) -> Tokenizer:
    from tokenizers import Regex, decoders, models, normalizers, pre_tokenizers
    from tokenizers import Tokenizer as HFTokenizer

    from xtalign.vocab import BYTE_TO_UNICODE

    merges = formats.read_clip_merges(path)
    base = [BYTE_TO_UNICODE[b] for b in range(256)]
    names = base + [c + "</w>" for c in base] + ["".join(m) for m in merges]
    names += ["<|startoftext|>", "<|endoftext|>"]
    hf = HFTokenizer(models.BPE(vocab={t: i for i, t in enumerate(names)}, merges=merges,
                                end_of_word_suffix="</w>"))
    hf.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "),
                                          normalizers.Lowercase()])
    hf.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(CLIP_PATTERN), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    hf.decoder = decoders.BPEDecoder(suffix="</w>")
    n = len(names)
    tb, kinds = [b""] * n, np.zeros(n, np.uint8)
    for i, t in enumerate(names[:-2]):  # a word-final piece ends with a space in decoded text
        end = t.endswith("</w>")
        tb[i] = (bytelevel_to_bytes(t[:-4] if end else t) or b"") + (b" " if end else b"")
    kinds[-2:] = TokenKind.SPECIAL
    vocab = make_vocab(name, tb, kinds, names, {"bos": n - 2, "eos": n - 1})
    return Tokenizer(name=name, family="clip-bpe", source=source, vocab=vocab, backend_factory=lambda: HFBackend(hf),
                     lossless=False)


def from_rwkv(name: str, source: str, path: Path) -> Tokenizer:
    table = formats.read_rwkv_vocab(path)
    n = max(table) + 1
    tb, kinds, names = [b""] * n, np.full(n, TokenKind.UNUSED, np.uint8), [""] * n
    for i, b in table.items():
        tb[i], kinds[i], names[i] = b, TokenKind.NORMAL, b.decode("utf-8", errors="backslashreplace")
    kinds[0], names[0] = TokenKind.SPECIAL, "<|endoftext|>"
    vocab = make_vocab(name, tb, kinds, names, {"eos": 0, "bos": 0})
    factory = functools.partial(GreedyTrieBackend, {b: i for i, b in table.items()})
    return Tokenizer(name=name, family="rwkv-trie", source=source, vocab=vocab, backend_factory=factory)
