"""Shared fixtures: real zoo tokenizers are loaded once per session (artifacts are cached on disk)."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest

from tests.scripts import load_script
from xtalign.zoo import Tokenizer, load_tokenizer

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def zoo():
    """Callable fixture: zoo("llama3") -> Tokenizer (memoised by the registry)."""

    def get(name: str) -> Tokenizer:
        return load_tokenizer(name)

    return get


def _analysis(name: str) -> ModuleType:
    return load_script(f"analysis/{name}.py", f"{name}_for_tests")


@pytest.fixture(scope="session")
def pinned_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The pinned text corpus folder: out/corpus when built, else built here from its pinned artifacts."""
    if (ROOT / "out" / "corpus" / "train.jsonl").is_file():
        return ROOT / "out" / "corpus"
    corpus = _analysis("corpus")
    out = tmp_path_factory.mktemp("corpus")
    corpus.write(out, *corpus.build())
    return out


@pytest.fixture(scope="session")
def pinned_chat(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The pinned chat corpus folder: out/chat when built, else built here (analysis/chat_corpus.py)."""
    if (ROOT / "out" / "chat" / "train.jsonl").is_file():
        return ROOT / "out" / "chat"
    chat = _analysis("chat_corpus")
    out = tmp_path_factory.mktemp("chat")
    outputs, _ = chat.build()
    for name, data in outputs.items():
        (out / name).write_bytes(data)
    return out


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """`gpu`-marked tests run only where torch sees a CUDA device (benchmarks/gpu_check.py runs them there)."""
    if not any(item.get_closest_marker("gpu") for item in items):
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if item.get_closest_marker("gpu"):
            item.add_marker(skip)
