"""Export a (distilled) student as a Hugging Face folder any `transformers` user can load.

The folder holds `config.json` + `model.safetensors` (+ `generation_config.json`), a `tokenizer.json`
where the xtalign tokenizer has a faithful `tokenizers` form (HF backends as they are; tiktoken rank
tables rebuilt as a byte-level BPE), and `xtalign_tokenizer.json` naming the xtalign tokenizer
(name, vocabulary fingerprint, source) so `xtalign` reloads exactly the tokenizer it trained with.
Everything is written into a temporary sibling folder and renamed into place.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from xtalign.zoo import Tokenizer, load_tokenizer
from xtalign.zoo.registry import canonical_name
from xtalign.zoo.tokenizer import HFBackend, TiktokenBackend

__all__ = ["ExportError", "bpe_from_ranks", "onig_pattern", "export_hf", "load_exported_tokenizer", "tokenizer_json"]

log = logging.getLogger(__name__)

XTALIGN_TOKENIZER_FILE = "xtalign_tokenizer.json"
_FORMAT = "xtalign-tokenizer-ref"


class ExportError(ValueError):
    """The export target or the exported folder is unusable; the message is one line."""


def onig_pattern(pattern: str) -> str:
    """A tiktoken (fancy-regex) split pattern rewritten for `tokenizers`' Oniguruma: `{n,m}+` is possessive in
    fancy-regex but "repeat the interval" in Oniguruma, and `$` is the end of text there, a line end here."""
    pattern = re.sub(r"(?<!\\)(\{\d+(?:,\d*)?\})\+", r"\1", pattern)
    return re.sub(r"(?<!\\)\$", r"\\z", pattern)


def bpe_from_ranks(ranks: dict[bytes, int], pattern: str, specials: dict[str, int]) -> Any:
    """A `tokenizers.Tokenizer` equivalent to a tiktoken rank table: byte-level BPE whose merges are every
    split of each token into two tokens, ordered by the merged token's rank (tiktoken's merge priority)."""
    from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers
    from tokenizers import Tokenizer as HFTokenizer

    from xtalign.vocab import BYTE_TO_UNICODE

    def spell(b: bytes) -> str:
        return "".join(BYTE_TO_UNICODE[x] for x in b)

    vocab = {spell(b): r for b, r in ranks.items()}
    merges: list[tuple[int, int, int, str, str]] = []
    for b, r in ranks.items():
        for i in range(1, len(b)):
            left, right = b[:i], b[i:]
            if left in ranks and right in ranks:
                merges.append((r, ranks[left], ranks[right], spell(left), spell(right)))
    merges.sort()
    vocab.update(specials)
    hf = HFTokenizer(models.BPE(vocab=vocab, merges=[(m[3], m[4]) for m in merges], ignore_merges=True))
    hf.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(onig_pattern(pattern)), behavior="isolated"),
                                                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    hf.decoder = decoders.ByteLevel()
    hf.add_special_tokens([AddedToken(s, normalized=False, special=True) for s in sorted(specials, key=specials.get)])
    return hf


def tokenizer_json(tokenizer: Tokenizer) -> str | None:
    """The tokenizer as a `tokenizer.json` string, or None where no faithful form is built (SentencePiece, tries)."""
    backend = tokenizer.backend
    if isinstance(backend, HFBackend):
        return backend.tok.to_str()
    if isinstance(backend, TiktokenBackend):
        enc = backend.encoding
        return bpe_from_ranks(enc._mergeable_ranks, enc._pat_str, enc._special_tokens).to_str()
    log.info("tokenizer %s (%s backend) has no tokenizer.json form; only %s is written", tokenizer.name,
             type(backend).__name__, XTALIGN_TOKENIZER_FILE)
    return None


def _reference(tokenizer: Tokenizer, wrote_json: bool) -> dict[str, Any]:
    return {"format": _FORMAT, "version": 1, "name": tokenizer.name, "fingerprint": tokenizer.vocab.fingerprint,
            "source": tokenizer.source, "family": tokenizer.family, "size": tokenizer.size,
            "model_rows": tokenizer.model_rows, "tokenizer_json": wrote_json}


def _check_target(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise ExportError(f"export target {out_dir} exists and is not a directory; choose another path")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise ExportError(f"export target {out_dir} already holds files; pass overwrite=True or choose another path")


def _swap_in(tmp: Path, out_dir: Path) -> None:
    """Rename the finished temp folder onto `out_dir`; an old non-empty folder is removed only afterwards."""
    old = None
    if out_dir.is_dir() and any(out_dir.iterdir()):
        old = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.old-"))
        os.replace(out_dir, old / "prev")
    elif out_dir.is_dir():
        out_dir.rmdir()
    os.replace(tmp, out_dir)
    if old is not None:
        shutil.rmtree(old)


def export_hf(model: Any, tokenizer: Tokenizer, out_dir: Path, *, overwrite: bool = False,
              state_dict: dict[str, Any] | None = None) -> Path:
    """Write `model` (an HF CausalLM or a `LoadedModel`) and `tokenizer` to `out_dir` as an HF folder."""
    from xtalign.distill.models import LoadedModel

    model = model.model if isinstance(model, LoadedModel) else model
    out_dir = Path(out_dir)
    _check_target(out_dir, overwrite)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.tmp-"))
    try:
        from xtalign.distill.models import quiet_transformers

        quiet_transformers()
        model.save_pretrained(str(tmp), **({} if state_dict is None else {"state_dict": state_dict}))
        if not (tmp / "model.safetensors").is_file():
            raise ExportError(f"save_pretrained wrote no single model.safetensors in {tmp}; got "
                              f"{sorted(p.name for p in tmp.iterdir())}")
        text = tokenizer_json(tokenizer)
        if text is not None:
            (tmp / "tokenizer.json").write_text(text, encoding="utf-8")
        ref = json.dumps(_reference(tokenizer, text is not None), indent=2) + "\n"
        (tmp / XTALIGN_TOKENIZER_FILE).write_text(ref, encoding="utf-8")
        _swap_in(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    log.info("exported %s to %s", type(model).__name__, out_dir)
    return out_dir


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
    """The xtalign tokenizer an `export_hf` folder names, checked against its vocabulary fingerprint."""
    folder = Path(folder)
    path = folder / XTALIGN_TOKENIZER_FILE
    try:
        ref = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ExportError(f"{path}: cannot read the tokenizer reference ({exc}); re-export the model") from None
    for spec in _candidates(folder, ref):
        try:
            tok = load_tokenizer(spec)
        except (ValueError, OSError) as exc:
            log.info("tokenizer candidate %s failed: %s", spec, exc)
            continue
        if tok.vocab.fingerprint == ref.get("fingerprint"):
            return tok
    raise ExportError(f"{folder}: no tokenizer matching {ref.get('name')!r} (fingerprint "
                      f"{str(ref.get('fingerprint'))[:16]}) could be loaded; pass the tokenizer explicitly")
