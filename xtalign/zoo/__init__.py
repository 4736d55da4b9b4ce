"""Offline tokenizer zoo (see `registry`)."""

from xtalign.zoo.registry import ZOO, UnknownTokenizerError, load_tokenizer, suggest
from xtalign.zoo.tokenizer import Tokenizer

__all__ = ["ZOO", "Tokenizer", "UnknownTokenizerError", "load_tokenizer", "suggest"]
