"""llama.cpp's reference tokenizations (`ggml-vocab-*.gguf.inp/.out`) as a check on the zoo."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from xtalign.zoo.artifacts import member_path

_DIR = "llama_cpp_python-0.3.36/vendor/llama.cpp/models/"
_SEP = "\n__ggml_vocab_test__\n"

# llama.cpp vocab file -> the zoo name that must reproduce it (None: load the GGUF itself)
REFERENCE_VOCABS: dict[str, str | None] = {
    "gpt-2": "gpt2", "llama-bpe": "llama3", "qwen2": "qwen3", "phi-3": "phi3", "llama-spm": "llama2",
    "falcon": "falcon", "starcoder": "starcoder2", "deepseek-llm": "deepseek-llm", "deepseek-coder": "deepseek-coder",
    "mpt": "mpt", "command-r": "command-r", "refact": "refact", "bert-bge": "bert", "qwen35": None, "gemma-4": "gemma4",
}


@dataclass(frozen=True, kw_only=True)
class ReferenceResult:
    vocab: str
    tokenizer: str
    cases: int
    matched: int
    error: str | None = None
    mismatches: tuple[tuple[str, list[int], list[int]], ...] = ()

    @property
    def rate(self) -> float:
        return self.matched / self.cases if self.cases else 0.0


def reference_cases(vocab: str) -> list[tuple[str, list[int]]]:
    """(input text, expected ids) pairs for one llama.cpp vocab."""
    inp = member_path("llama-cpp", f"{_DIR}ggml-vocab-{vocab}.gguf.inp").read_text(encoding="utf-8")
    out = member_path("llama-cpp", f"{_DIR}ggml-vocab-{vocab}.gguf.out").read_text(encoding="utf-8")
    texts = inp.split(_SEP)
    if texts and texts[-1].endswith("\n__ggml_vocab_test__"):
        texts[-1] = texts[-1][: -len("\n__ggml_vocab_test__")]
    expected = [[int(x) for x in line.split()] for line in out.split("\n")]
    return list(zip(texts, expected[: len(texts)], strict=True))


def check_reference(vocab: str) -> ReferenceResult:
    """Encode every reference input with the zoo tokenizer and count exact id matches."""
    from xtalign.zoo.builders import from_gguf
    from xtalign.zoo.registry import load_tokenizer

    name = REFERENCE_VOCABS.get(vocab)
    try:
        if name is None:
            path = member_path("llama-cpp", f"{_DIR}ggml-vocab-{vocab}.gguf")
            tok = from_gguf(vocab, "gguf", str(Path(path).name), path)
        else:
            tok = load_tokenizer(name)
        cases = reference_cases(vocab)
        got = tok.encode_batch([t for t, _ in cases])
    except (ValueError, RuntimeError) as exc:
        return ReferenceResult(vocab=vocab, tokenizer=name or vocab, cases=0, matched=0, error=str(exc))
    bad = tuple((t, e, g) for (t, e), g in zip(cases, got, strict=True) if e != g)
    return ReferenceResult(vocab=vocab, tokenizer=name or vocab, cases=len(cases), matched=len(cases) - len(bad),
                           mismatches=bad)
