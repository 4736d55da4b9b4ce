"""Export a (distilled) student as a Hugging Face folder any `transformers` user can load.

The folder holds `config.json` + `model.safetensors` (+ `generation_config.json`) and the student's
tokenizer as `xtalign.zoo.hf_export` writes it for every zoo family: `tokenizer.json` encoding exactly like
the xtalign tokenizer, `tokenizer_config.json` with its special tokens (and its chat template when the run
had one), and `xtalign_tokenizer.json` naming the xtalign tokenizer so `xtalign` reloads exactly it.
Everything is written into a temporary sibling folder and renamed into place.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from xtalign.distill.errors import ExportError
from xtalign.distill.models.load import max_positions_of, quiet_transformers
from xtalign.zoo.hf_export import load_exported_tokenizer, write_hf_tokenizer
from xtalign.zoo.tokenizer import Tokenizer

__all__ = ["ExportError", "export_hf", "load_exported_tokenizer"]

log = logging.getLogger(__name__)


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
              state_dict: dict[str, Any] | None = None, chat_template: str | None = None) -> Path:
    """Write `model` (a Hugging Face causal LM) and `tokenizer` (+ its chat template) to `out_dir`."""
    out_dir = Path(out_dir)
    _check_target(out_dir, overwrite)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.tmp-"))
    try:
        quiet_transformers()
        model.save_pretrained(str(tmp), **({} if state_dict is None else {"state_dict": state_dict}))
        if not (tmp / "model.safetensors").is_file():
            raise ExportError(f"save_pretrained wrote no single model.safetensors in {tmp}; got "
                              f"{sorted(p.name for p in tmp.iterdir())}")
        write_hf_tokenizer(tokenizer, tmp, chat_template=chat_template, model_max_length=max_positions_of(model))
        _swap_in(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    log.info("exported %s to %s", type(model).__name__, out_dir)
    return out_dir
