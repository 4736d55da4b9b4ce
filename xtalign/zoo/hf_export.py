"""Hugging Face tokenizer files for every zoo tokenizer, encoding exactly as the xtalign tokenizer does.

`write_hf_tokenizer(tok, folder)` writes `tokenizer.json`, `tokenizer_config.json`, `special_tokens_map.json`
and `xtalign_tokenizer.json` (the reference xtalign reloads the exact tokenizer from) so that
`transformers.AutoTokenizer.from_pretrained(folder)` loads offline. How each backend becomes a `tokenizers`
pipeline:

- tiktoken rank tables (gpt2, cl100k, o200k, gpt-oss, llama3, qwen3, tekken): byte-level BPE whose merges are
  every two-token split of each token, ordered by the merged token's rank (`bpe_from_ranks`);
- SentencePiece protos (mistral-v1/v3, j2, and the protos built from GGUF "llama" vocabularies: llama2, phi3,
  gemma3, baichuan): BPE with SentencePiece's merge order (score of the merged piece) and byte fallback, or
  Unigram; the dummy prefix is a "▁" inserted before the whole text by the normalizer (`spm_tokenizer`);
- `tokenizers` backends (GGUF byte-level BPE, GGUF WordPiece, gemma4, clip, claude-v1): as they are;
- the greedy byte trie (rwkv-world): byte-level pre-tokenizer, then one `Split` whose regex is the vocabulary's
  trie with longer continuations tried first (greedy longest match), then a word-level model (`trie_tokenizer`).

Conventions (tested in tests/test_hf_export.py):

- `hf(text, add_special_tokens=False, split_special_tokens=True).input_ids == tok.encode(text)` for every text:
  xtalign never parses special-token strings out of text. With the default `split_special_tokens=False` a
  special-token string in text becomes its single id (what chat templates rely on); text without one encodes the
  same either way.
- BOS rule: `add_special_tokens=True` prepends the document-start token the engine puts before every training
  text (`data.add_bos`, default true): the bos role's id, else the eos role's, else nothing
  (`start_token_id`). Nothing is ever appended.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from xtalign.vocab import BYTE_TO_UNICODE, TokenKind
from xtalign.zoo.hf_backends import (
    TokenizerExportError,
    bpe_from_ranks,
    onig_pattern,
    spell_bytes,
    spm_tokenizer,
    trie_tokenizer,
)
from xtalign.zoo.registry import canonical_name, load_tokenizer
from xtalign.zoo.tokenizer import GreedyTrieBackend, HFBackend, SentencePieceBackend, TiktokenBackend, Tokenizer

__all__ = ["TOKENIZER_FILES", "XTALIGN_TOKENIZER_FILE", "TokenizerExportError", "backend_tokenizer",
           "bpe_from_ranks", "export_caveat", "hf_tokenizer_files", "load_exported_tokenizer", "onig_pattern",
           "special_tokens_map", "spm_tokenizer", "start_token_id", "tokenizer_config", "tokenizer_json",
           "tokenizer_reference", "trie_tokenizer", "write_hf_tokenizer"]

log = logging.getLogger(__name__)

XTALIGN_TOKENIZER_FILE = "xtalign_tokenizer.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", XTALIGN_TOKENIZER_FILE)
_FORMAT = "xtalign-tokenizer-ref"
_VERY_LARGE_INTEGER = int(1e30)  # transformers' "no limit" model_max_length
_SPM_SPACE = "\u2581"
_HF_ROLES = ("bos", "eos", "unk", "pad", "sep", "cls", "mask")


# --- one dispatch over the backends ------------------------------------------------------------------------------


def _specials_of(tok: Tokenizer) -> dict[str, int]:
    """Name -> id of the special (and unused special-slot) tokens that carry a name."""
    v = tok.vocab
    return {v.names[i]: int(i) for i, k in enumerate(v.kinds.tolist())
            if k in (TokenKind.SPECIAL, TokenKind.UNUSED) and v.names[i]}


def backend_tokenizer(tok: Tokenizer) -> Any | None:
    """A fresh `tokenizers.Tokenizer` encoding like `tok` (no post-processor), or None where there is none."""
    from tokenizers import Tokenizer as HFTokenizer

    backend = tok.backend
    if isinstance(backend, HFBackend):
        return HFTokenizer.from_str(backend.tok.to_str())
    if isinstance(backend, TiktokenBackend):
        enc = backend.encoding
        return bpe_from_ranks(enc._mergeable_ranks, enc._pat_str, enc._special_tokens)
    if isinstance(backend, SentencePieceBackend):
        return spm_tokenizer(backend.sp.serialized_model_proto())
    if isinstance(backend, GreedyTrieBackend):
        return trie_tokenizer(backend.table, _specials_of(tok))
    return None


def start_token_id(tok: Tokenizer) -> int | None:
    """The document-start token the engine prepends when `data.add_bos` is on: bos, else eos, else none."""
    roles = tok.vocab.roles
    return roles["bos"] if "bos" in roles else roles.get("eos")


def _set_post_processor(hf: Any, tok: Tokenizer) -> None:
    """`add_special_tokens=True` prepends `start_token_id(tok)` (once, also for pairs); nothing is appended."""
    from tokenizers import processors

    start = start_token_id(tok)
    if start is None:
        hf.post_processor = processors.TemplateProcessing(single="$A:0", pair="$A:0 $B:1", special_tokens=[])
        return
    name = tok.vocab.names[start]
    hf.post_processor = processors.TemplateProcessing(single=f"{name}:0 $A:0", pair=f"{name}:0 $A:0 $B:1",
                                                      special_tokens=[(name, start)])


def export_caveat(tok: Tokenizer) -> str | None:
    """Why the `tokenizer.json` of `tok` is not exact, or None where it encodes exactly as `tok`.

    Only SentencePiece Unigram models with a precompiled normalisation map (j2) have one: `tokenizers`' Unigram
    breaks exact Viterbi ties in float64 where SentencePiece sums float32, and its `Precompiled` normaliser maps a
    short multi-character grapheme (CR LF, a compatibility character + a combining mark) by its first character.
    """
    from sentencepiece import sentencepiece_model_pb2 as pb

    if not isinstance(tok.backend, SentencePieceBackend):
        return None
    proto = pb.ModelProto()
    proto.ParseFromString(tok.backend.sp.serialized_model_proto())
    reasons = []
    if proto.trainer_spec.model_type == pb.TrainerSpec.UNIGRAM:
        reasons.append("Unigram ties are broken differently")
    if proto.normalizer_spec.precompiled_charsmap:
        reasons.append("multi-character graphemes such as CR LF are normalised by their first character")
    return "; ".join(reasons) or None


# --- making the backend's pipeline a complete tokenizer.json -------------------------------------------------


def _state(component: Any) -> str:
    """The JSON of a `tokenizers` normalizer / pre-tokenizer / decoder ("null" where there is none)."""
    return "null" if component is None else component.__getstate__().decode("utf-8")


def _component_type(component: Any) -> str | None:
    """The "type" of a `tokenizers` normalizer / pre-tokenizer / decoder (None where there is none)."""
    return None if component is None else json.loads(_state(component)).get("type")


def _decode_bytelevel_suffix(hf: Any) -> None:
    """CLIP-style BPE (byte-level pieces, "</w>" word ends) decodes to bytes: the suffix becomes a byte-level space
    and a byte-level decoder follows, so decoding gives the canonical bytes rather than byte-level characters."""
    from tokenizers import decoders

    if _component_type(hf.decoder) != "BPEDecoder" or '"ByteLevel"' not in _state(hf.pre_tokenizer):
        return
    suffix = json.loads(_state(hf.decoder))["suffix"]
    hf.decoder = decoders.Sequence([decoders.Replace(suffix, BYTE_TO_UNICODE[0x20]), decoders.ByteLevel()])


def _decode_spm_pieces(hf: Any) -> None:
    """A `tokenizers` pipeline that spells spaces "▁" (gemma4) but has no decoder gets SentencePiece's decoder."""
    from tokenizers import decoders

    if hf.decoder is None and _SPM_SPACE in _state(hf.normalizer):
        hf.decoder = decoders.Sequence([decoders.Replace(_SPM_SPACE, " "), decoders.ByteFallback(), decoders.Fuse()])


def _decode_added_text_as_text(hf: Any) -> None:
    """A byte-level decoder reads every token as GPT-2 byte characters; a non-special added token is raw text, so
    one spelled only with such characters (deepseek's "À", "ö", …: bytes no UTF-8 text holds) is respelled first."""
    from tokenizers import decoders

    from xtalign.vocab import bytelevel_to_bytes

    if _component_type(hf.decoder) != "ByteLevel":
        return
    fixes = [decoders.Replace(a.content, spell_bytes(a.content.encode("utf-8"))) for a in
             hf.get_added_tokens_decoder().values() if not a.special and
             bytelevel_to_bytes(a.content) not in (None, a.content.encode("utf-8"))]
    if fixes:
        hf.decoder = decoders.Sequence([*fixes, hf.decoder])


def _mark_specials(hf: Any, tok: Tokenizer) -> None:
    """Role tokens (bos, eos, unk, …) and chat markers become special added tokens where they are not yet, as
    transformers would make them on load, so `tokenizer.json` alone behaves as the loaded tokenizer."""
    from tokenizers import AddedToken

    v, added = tok.vocab, set(hf.get_added_tokens_decoder())
    ids = sorted({v.roles[r] for r in _HF_ROLES if r in v.roles} | set(_chat_markers(tok).values()))
    hf.add_special_tokens([AddedToken(v.names[i], normalized=False, special=True) for i in ids
                           if i not in added and hf.token_to_id(v.names[i]) == i])


def tokenizer_json(tok: Tokenizer) -> str | None:
    """The tokenizer as a `tokenizer.json` string (with the BOS rule as post-processor), or None where no
    faithful form can be built (logged as one line)."""
    try:
        hf = backend_tokenizer(tok)
    except ValueError as exc:
        log.warning("tokenizer %s has no exact tokenizer.json form (%s); only %s is written", tok.name, exc,
                    XTALIGN_TOKENIZER_FILE)
        return None
    if hf is None:
        log.warning("tokenizer %s (%s backend) has no tokenizer.json form; only %s is written", tok.name,
                    type(tok.backend).__name__, XTALIGN_TOKENIZER_FILE)
        return None
    if caveat := export_caveat(tok):
        log.warning("tokenizer %s: its tokenizer.json is close to but not exact (%s)", tok.name, caveat)
    hf.encode_special_tokens = False  # the HF convention; xtalign's own backends set it per use
    _decode_bytelevel_suffix(hf)
    _decode_spm_pieces(hf)
    _decode_added_text_as_text(hf)
    _mark_specials(hf, tok)
    _set_post_processor(hf, tok)
    return hf.to_str()


# --- tokenizer_config.json / special_tokens_map.json -----------------------------------------------------------


def _chat_markers(tok: Tokenizer) -> dict[str, int]:
    """Chat / tool markers (`projection.CHAT_ROLES`) that are special tokens of `tok`: name -> id, in id order."""
    from xtalign.projection import CHAT_ROLES

    v = tok.vocab
    specials = {v.names[i]: int(i) for i in v.special_ids.tolist()}
    names = {n for group in CHAT_ROLES.values() for n in group if n in specials}
    return {n: specials[n] for n in sorted(names, key=specials.get)}


def special_tokens_map(tok: Tokenizer) -> dict[str, Any]:
    """`bos_token`, `eos_token`, … by role from `tok.vocab.roles`, plus the chat markers."""
    v = tok.vocab
    out: dict[str, Any] = {f"{r}_token": v.names[v.roles[r]] for r in _HF_ROLES if r in v.roles}
    markers = _chat_markers(tok)
    if markers:
        out["additional_special_tokens"] = list(markers)
    return out


def tokenizer_config(tok: Tokenizer, *, chat_template: str | None = None,
                     model_max_length: int | None = None) -> dict[str, Any]:
    """`tokenizer_config.json` for `PreTrainedTokenizerFast` over our `tokenizer.json` (see the module doc)."""
    cfg: dict[str, Any] = {"tokenizer_class": "PreTrainedTokenizerFast",
                           "model_max_length": model_max_length or _VERY_LARGE_INTEGER,
                           "clean_up_tokenization_spaces": False, "split_special_tokens": False}
    cfg.update(special_tokens_map(tok))
    if chat_template is not None:
        cfg["chat_template"] = chat_template
    return cfg


# --- the xtalign reference and the whole file set ----------------------------------------------------------------


def tokenizer_reference(tok: Tokenizer, *, wrote_json: bool, exact: bool | None = None) -> dict[str, Any]:
    """What `xtalign_tokenizer.json` holds: enough to reload and check the exact xtalign tokenizer.

    `tokenizer_json`: a `tokenizer.json` was written; `tokenizer_json_exact`: it encodes exactly as the xtalign
    tokenizer (defaults to `wrote_json`)."""
    return {"format": _FORMAT, "version": 1, "name": tok.name, "fingerprint": tok.vocab.fingerprint,
            "source": tok.source, "family": tok.family, "size": tok.size, "model_rows": tok.model_rows,
            "tokenizer_json": wrote_json, "tokenizer_json_exact": wrote_json if exact is None else exact}


def _dump(obj: Any) -> str:
    return json.dumps(obj, indent=2, ensure_ascii=False) + "\n"


def hf_tokenizer_files(tok: Tokenizer, *, chat_template: str | None = None,
                       model_max_length: int | None = None) -> dict[str, str]:
    """File name -> contents of the tokenizer files of an HF folder; only `xtalign_tokenizer.json` where the
    tokenizer has no `tokenizer.json` form (its `tokenizer_json_exact` says whether the form is exact)."""
    text = tokenizer_json(tok)
    exact = text is not None and export_caveat(tok) is None
    files = {XTALIGN_TOKENIZER_FILE: _dump(tokenizer_reference(tok, wrote_json=text is not None, exact=exact))}
    if text is None:
        return files
    files["tokenizer.json"] = text
    files["tokenizer_config.json"] = _dump(tokenizer_config(tok, chat_template=chat_template,
                                                            model_max_length=model_max_length))
    files["special_tokens_map.json"] = _dump(special_tokens_map(tok))
    return files


def write_hf_tokenizer(tok: Tokenizer, folder: Path, *, chat_template: str | None = None,
                       model_max_length: int | None = None) -> list[str]:
    """Write the tokenizer files into `folder` (created if needed); returns the names written."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    files = hf_tokenizer_files(tok, chat_template=chat_template, model_max_length=model_max_length)
    for name, text in files.items():
        (folder / name).write_text(text, encoding="utf-8")
    log.info("wrote tokenizer %s to %s (%s)", tok.name, folder, ", ".join(files))
    return list(files)


# --- reloading ----------------------------------------------------------------------------------------------------


def _candidates(folder: Path, ref: dict[str, Any]) -> list[str]:
    """Where the named tokenizer may be found, cheapest and most offline first."""
    out = []
    if canonical_name(str(ref.get("name", ""))) is not None:
        out.append(str(ref["name"]))
    if (folder / "tokenizer.json").is_file():
        out.append(str(folder / "tokenizer.json"))
    source = str(ref.get("source", ""))
    if source and Path(source).exists():
        out.append(source)
    if "/" in str(ref.get("name", "")):
        out.append(str(ref["name"]))
    return out


def load_exported_tokenizer(folder: Path) -> Tokenizer:
    """The xtalign tokenizer an exported folder names, checked against its vocabulary fingerprint."""
    folder = Path(folder)
    path = folder / XTALIGN_TOKENIZER_FILE
    try:
        ref = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise TokenizerExportError(f"{path}: cannot read the tokenizer reference ({exc}); re-export the model") \
            from None
    for spec in _candidates(folder, ref):
        try:
            tok = load_tokenizer(spec)
        except (ValueError, OSError) as exc:
            log.info("tokenizer candidate %s failed: %s", spec, exc)
            continue
        if tok.vocab.fingerprint == ref.get("fingerprint"):
            return tok
    raise TokenizerExportError(f"{folder}: no tokenizer matching {ref.get('name')!r} (fingerprint "
                               f"{str(ref.get('fingerprint'))[:16]}) could be loaded; pass the tokenizer explicitly")
