"""Shared fixtures: real zoo tokenizers are loaded once per session (artifacts are cached on disk)."""

from __future__ import annotations

import pytest

from xtalign.zoo import Tokenizer, load_tokenizer


@pytest.fixture(scope="session")
def zoo():
    """Callable fixture: zoo("llama3") -> Tokenizer (memoised by the registry)."""

    def get(name: str) -> Tokenizer:
        return load_tokenizer(name)

    return get
