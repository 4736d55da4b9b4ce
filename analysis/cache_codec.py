"""Teacher-cache codec study: bytes per position, fidelity and read speed of `xtalign.distill.teacher.codec`.

    .venv/bin/python analysis/corpus.py                                      # the pinned corpus (out/corpus/)
    nice -n 5 .venv/bin/python analysis/cache_codec.py --allow-dirty         # all stages (≈ 1.5 h on 2 CPU cores)
    .venv/bin/python analysis/cache_codec.py --stage table                   # rewrite the table from the JSON

Stages (each reads the previous one's output): ``teacher`` runs the engine's teacher once per source and keeps
what the others need under ``out/cache_codec/<source>.pt``; ``bytes`` encodes those answers with every codec
setting and times encoding and decoding; ``fidelity`` scores the decoded answers with the engine's losses against
the full teacher distribution; ``table`` writes ``analysis/cache_codec.md``. Results: ``benchmarks/results/
cache_codec.json`` (with provenance; drop ``--allow-dirty`` on a clean tree).

The teacher side is the engine's (as in analysis/topk_fidelity.py, whose functions this reuses): the real
Gemma-3-270M (V_t = 262,144) through ``TeacherWorker.forward`` (bf16 top-k logits, int32 ids, fp32 logsumexp and
target log-prob; LM head in slices of 256 positions) over the batch the engine's ``BatchBuilder`` makes of each
source's held-out then train documents (4 rows × seq_len 2,048, bos first), once at k = 256; smaller k are its
truncation. The fp32 logits of the LM head are kept at the teacher positions of the evaluated chunks (the
reference needs the full distribution there), and the student's (SmolLM2-135M-Instruct) final hidden states.

Fidelity is computed as topk_fidelity.py computes it: for P-KL (``per_batch`` with the engine's cap, and
``per_chunk``), H-KL, GOLD and ULD the engine's loss modules prepared on the whole decoded batch, evaluated on
windows of whole chunks, against the same loss from the full fp32 teacher distribution; gradient cosine of the
student-logit gradients and relative loss error (Σ top-k − Σ full) / Σ full per text. Same-vocabulary top-k KL
(``TopKKLLoss``, bucket tail) needs a student with the teacher's vocabulary, which the zoo has not: a synthetic
one, ``z_s = 0.7 · z_t + ε`` (ε ~ N(0, 1) per id, seeded per position) on the captured teacher positions,
against the full forward KL.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import math
import sys
import time
from dataclasses import asdict
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from xtalign.distill.teacher.codec import CodecConfig, decode_row, decode_rows, encode_rows
from xtalign.losses import ChunkLayout, TeacherTopK, TopKKLConfig
from xtalign.losses.kl import PreparedTopK

log = logging.getLogger("cache_codec")

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "out" / "cache_codec"
RESULT = ROOT / "benchmarks" / "results" / "cache_codec.json"
TABLE = ROOT / "analysis" / "cache_codec.md"
SOURCES = ("botchan", "docutils", "sphinx", "pytest")
ROWS, SEQ, K_MAX, HEAD_SLICE = 4, 2048, 256, 256
STEP_POSITIONS = 4 * 512  # the CPU recipe's student step (benchmarks/results/gemma3-teacher-cpu/pkl)
STEP_SECONDS_FILE = ROOT / "benchmarks" / "results" / "gemma3-teacher-cpu" / "pkl" / "metrics.jsonl"
LOSSES = ("pkl_per_batch", "pkl_per_chunk", "hkl", "gold", "uld", "same_vocab")
LABELS = {
    "pkl_per_batch": "P-KL per_batch",
    "pkl_per_chunk": "P-KL per_chunk",
    "hkl": "H-KL",
    "gold": "GOLD",
    "uld": "ULD",
    "same_vocab": "same-vocab",
}
BASELINE = "exact-64"
BYTE_TARGET = 150.0
READ_SHARE = 0.02  # reading a step's positions may cost at most this share of the student step


def settings() -> dict[str, tuple[int, CodecConfig]]:
    """name → (teacher k before encoding, codec setting). ``exact-64`` is today's cache."""
    c = CodecConfig
    out: dict[str, tuple[int, CodecConfig]] = {
        "exact-64": (64, c(kind="exact", compressor="none")),
        "exact-64-lzma": (64, c(kind="exact", compressor="lzma")),
        "exact-64-zstd": (64, c(kind="exact", compressor="zstd")),
        "exact-16": (16, c(kind="exact", compressor="none")),
        "exact-256": (256, c(kind="exact", compressor="none")),
        "c64-none-raw": (64, c(compressor="none", ids="raw")),
        "c64-zlib-raw": (64, c(compressor="zlib", ids="raw")),
        "c64-zlib": (64, c(compressor="zlib")),
        "c64-zstd-raw": (64, c(compressor="zstd", ids="raw")),
        "c64-zstd": (64, c(compressor="zstd")),
        "c64-zstd3": (64, c(compressor="zstd", level=3)),
        "c64-lzma-raw": (64, c(compressor="lzma", ids="raw")),
        "c64-lzma1": (64, c(compressor="lzma", level=1)),
        "c64": (64, c()),
        "c64-step8": (64, c(step=1 / 8)),
        "c64-step32": (64, c(step=1 / 32)),
        "c64-step4": (64, c(step=1 / 4)),
    }
    for mass in (0.99, 0.98, 0.95, 0.9):
        out[f"c64-m{mass}"] = (64, c(mass=mass))
        out[f"c64-zstd-m{mass}"] = (64, c(mass=mass, compressor="zstd"))
    for k in (128, 256):
        for mass in (0.99, 0.98, 0.97, 0.95):
            out[f"c{k}-m{mass}"] = (k, c(k=k, mass=mass))
    return out


FIDELITY = (
    "exact-64",
    "exact-16",
    "exact-256",
    "c64",
    "c64-step8",
    "c64-step4",
    "c64-m0.99",
    "c64-m0.98",
    "c64-m0.95",
    "c64-m0.9",
    "c128-m0.99",
    "c128-m0.98",
    "c256-m0.98",
)


def load_fidelity_module() -> ModuleType:
    """analysis/topk_fidelity.py as a module (its functions are reused, not copied)."""
    spec = importlib.util.spec_from_file_location("topk_fidelity", ROOT / "analysis" / "topk_fidelity.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["topk_fidelity"] = module
    spec.loader.exec_module(module)
    return module


def truncate(t: TeacherTopK, k: int) -> TeacherTopK:
    return TeacherTopK(
        logits=t.logits[:, :, :k].contiguous(),
        ids=t.ids[:, :, :k].contiguous(),
        logsumexp=t.logsumexp,
        vocab_size=t.vocab_size,
        temperature=t.temperature,
        target_logprob=t.target_logprob,
    )


# --- stage 1: the teacher ----------------------------------------------------------------------------------------


def stage_teacher(args: argparse.Namespace, tf: ModuleType) -> dict[str, Any]:
    from xtalign.distill.data.builder import BatchBuilder

    DATA.mkdir(parents=True, exist_ok=True)
    todo = [s for s in args.sources if args.recompute or not (DATA / f"{s}.pt").is_file()]
    info: dict[str, Any] = {}
    if not todo:
        return info
    teacher, student = tf.load_models(False)
    builder = BatchBuilder(student.tokenizer, [teacher.tokenizer], seq_len=SEQ, add_bos=True)
    for source in todo:
        t0 = time.perf_counter()
        held, train = tf.source_documents(args.corpus, source)
        rows = tf.cut_rows("\n\n".join(held + train), ROWS, builder, SEQ)
        batch = builder.build(0, np.arange(ROWS), rows)
        side = batch.teachers[0]
        sc, tc = torch.as_tensor(side.student_chunk), torch.as_tensor(side.teacher_chunk)
        layout = ChunkLayout.build(sc, tc).ordered()
        windows = tf.plan_windows(
            layout, [int(n) for n in batch.student_lengths], sc.shape[1], args.windows_per_row, args.window
        )
        want = torch.unique(torch.cat([tf.layout_window(layout, w).teacher_pos for w in windows]))
        worker = tf.CapturingWorker(teacher, top_k=K_MAX, temperature=1.0, head_slice=HEAD_SLICE)
        worker.capture(want)
        ans = worker.forward(side.ids, side.lengths, side.targets)
        t1 = time.perf_counter()
        hidden = tf.student_hidden(student.model, batch.student_ids, batch.student_lengths)
        pos, rows_fp32 = worker.captured()
        torch.save(
            {
                "logits": ans.logits,
                "ids": ans.ids,
                "lse": ans.logsumexp,
                "tlp": ans.target_logprob,
                "vocab": ans.vocab_size,
                "lengths": side.lengths,
                "ids_in": side.ids,
                "targets": side.targets,
                "student_chunk": sc,
                "teacher_chunk": tc,
                "hidden": hidden,
                "student_lengths": batch.student_lengths,
                "windows": [(w.row, w.lo, w.hi) for w in windows],
                "cap_pos": pos,
                "cap_rows": rows_fp32,
            },
            DATA / f"{source}.pt",
        )
        info[source] = {"teacher_s": round(t1 - t0, 1), "positions": int(side.lengths.sum())}
        log.info("%s: teacher forward %.0f s over %s positions", source, t1 - t0, int(side.lengths.sum()))
    return info


def load_source(source: str) -> dict[str, Any]:
    path = DATA / f"{source}.pt"
    if not path.is_file():
        raise SystemExit(f"error: {path} is missing; run the teacher stage first (--stage teacher)")
    return torch.load(path, mmap=True, weights_only=False)


def answer_of(d: dict[str, Any]) -> TeacherTopK:
    return TeacherTopK(
        logits=d["logits"],
        ids=d["ids"],
        logsumexp=d["lse"],
        vocab_size=int(d["vocab"]),
        temperature=1.0,
        target_logprob=d["tlp"],
    )


def roundtrip(ans: TeacherTopK, lengths: np.ndarray, k: int, cfg: CodecConfig) -> tuple[list[bytes], TeacherTopK]:
    blobs = encode_rows(truncate(ans, k), lengths, cfg)
    return blobs, decode_rows(blobs, cfg, ans.vocab_size, ans.temperature, width=ans.logits.shape[1])


# --- stage 2: bytes and speed ------------------------------------------------------------------------------------


def timed(fn: Any, repeat: int) -> tuple[Any, float]:
    """``fn()`` and its best time over ``repeat`` calls (the machine is shared: the best is the cost)."""
    best, out = math.inf, None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return out, best


def stage_bytes(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(1)  # codec work is single-threaded numpy / compressors
    out: dict[str, Any] = {}
    data = {s: load_source(s) for s in args.sources}
    for name, (k, cfg) in settings().items():
        per: dict[str, Any] = {}
        for source, d in data.items():
            ans, lengths = truncate(answer_of(d), k), np.asarray(d["lengths"])
            ans = TeacherTopK(
                logits=ans.logits.clone(),
                ids=ans.ids.clone(),
                logsumexp=ans.logsumexp.clone(),
                vocab_size=ans.vocab_size,
                target_logprob=ans.target_logprob.clone(),
            )
            n = int(lengths.sum())
            blobs, enc = timed(lambda ans=ans, lengths=lengths, cfg=cfg: encode_rows(ans, lengths, cfg), 1)
            _, dec = timed(
                lambda blobs=blobs, cfg=cfg, ans=ans: decode_rows(
                    blobs, cfg, ans.vocab_size, 1.0, width=ans.logits.shape[1]
                ),
                args.repeat,
            )
            kept = kept_mean(blobs)
            per[source] = {
                "positions": n,
                "bytes": sum(map(len, blobs)),
                "bytes_per_position": sum(map(len, blobs)) / n,
                "encode_positions_per_s": n / enc,
                "decode_positions_per_s": n / dec,
                "mean_kept": kept,
            }
        n_all = sum(p["positions"] for p in per.values())
        b_all = sum(p["bytes"] for p in per.values())
        enc_all = n_all / sum(p["positions"] / p["encode_positions_per_s"] for p in per.values())
        dec_all = n_all / sum(p["positions"] / p["decode_positions_per_s"] for p in per.values())
        out[name] = {
            "k": k,
            "config": asdict(cfg),
            "positions": n_all,
            "bytes_per_position": b_all / n_all,
            "encode_positions_per_s": enc_all,
            "decode_positions_per_s": dec_all,
            "mean_kept": sum(p["mean_kept"] * p["positions"] for p in per.values()) / n_all,
            "sources": per,
        }
        log.info(
            "%-16s %7.2f B/position, kept %.1f, encode %7.0f /s, decode %7.0f /s",
            name,
            b_all / n_all,
            out[name]["mean_kept"],
            enc_all,
            dec_all,
        )
    return out


def kept_mean(blobs: list[bytes]) -> float:
    """Mean number of ids a position keeps (stored, not padding)."""
    n = np.concatenate([decode_row(b).n for b in blobs])
    return float(n.mean()) if n.size else 0.0


def stage_errors(args: argparse.Namespace) -> dict[str, Any]:
    """Per compact setting: how far the decoded log-probs of the kept slots are from the engine's bf16 ones (max and
    mean |error|, share stored without error) and the target log-prob's largest error."""
    out: dict[str, Any] = {}
    data = {s: load_source(s) for s in args.sources}
    for name, (k, cfg) in settings().items():
        if cfg.kind != "compact" or cfg.compressor != "lzma" or cfg.level is not None or cfg.ids != "rank":
            continue
        worst = total = exact = count = 0.0
        top_worst = target_worst = 0.0
        for d in data.values():
            ans, lengths = truncate(answer_of(d), k), np.asarray(d["lengths"])
            blobs = encode_rows(ans, lengths, cfg)
            lp = ans.logprobs(torch.float64)
            for r, blob in enumerate(blobs):
                row = decode_row(blob)
                keep = torch.arange(row.ids.shape[1])[None, :] < torch.as_tensor(row.n)[:, None]
                err = (torch.from_numpy(row.logits).double() - lp[r, : row.positions, : row.ids.shape[1]]).abs()[keep]
                worst, total = max(worst, float(err.max())), total + float(err.sum())
                exact, count = exact + float((err < 1e-5).sum()), count + err.numel()
                top_worst = max(
                    top_worst,
                    float((torch.from_numpy(row.logits[:, 0]).double() - lp[r, : row.positions, 0]).abs().max()),
                )
                tl = ans.target_logprob[r, : row.positions].double()
                target_worst = max(target_worst, float((torch.from_numpy(row.target).double() - tl).abs().max()))
        out[name] = {
            "max_abs": worst,
            "mean_abs": total / count,
            "share_exact": exact / count,
            "top_max_abs": top_worst,
            "target_max_abs": target_worst,
            "step": cfg.step,
        }
        log.info(
            "%-12s lp error max %.4f mean %.5f, %.1f %% exact; top %.1e, target %.1e",
            name,
            worst,
            total / count,
            100 * exact / count,
            top_worst,
            target_worst,
        )
    return out


def logit_grid(args: argparse.Namespace) -> dict[str, float]:
    """Share of the kept top-64 bf16 logits at 8 or above (there bf16 lies on a grid of 1/16 or coarser)."""
    ge8 = n = 0
    for s in args.sources:
        d = load_source(s)
        lengths = np.asarray(d["lengths"])
        for r, t in enumerate(lengths.tolist()):
            z = d["logits"][r, :t, :64].float()
            ge8, n = ge8 + int((z >= 8).sum()), n + z.numel()
    return {"share_logits_ge_8": ge8 / n}


# --- stage 3: fidelity -------------------------------------------------------------------------------------------


def same_vocab_student(rows: Tensor, positions: Tensor) -> Tensor:
    """The synthetic same-vocabulary student ``0.7 · z_t + ε`` at flat teacher ``positions`` (ε seeded per position)."""
    out = torch.empty_like(rows)
    for i, p in enumerate(positions.tolist()):
        g = torch.Generator().manual_seed(1_000_003 * int(p) + 17)
        out[i] = 0.7 * rows[i] + torch.randn(rows.shape[1], generator=g)
    return out


def same_vocab_reference(zs: Tensor, teacher_lp: Tensor) -> tuple[Tensor, Tensor]:
    """Full forward KL per position and its gradient wrt ``zs [P, V]`` (T = 1)."""
    pt = teacher_lp.exp()

    def fn(x: Tensor) -> Tensor:
        return (pt * (teacher_lp - F.log_softmax(x, dim=-1))).sum(-1)

    leaf = zs.detach().requires_grad_(True)
    with torch.enable_grad():
        values = fn(leaf)
        (grad,) = torch.autograd.grad(values.sum(), leaf)
    return values.detach(), grad


def same_vocab_topk(zs: Tensor, teacher: TeacherTopK, positions: Tensor) -> tuple[Tensor, Tensor]:
    """The engine's ``TopKKLLoss`` (bucket tail) per position at flat ``positions`` and its gradient wrt ``zs``."""
    k = teacher.k
    sub = TeacherTopK(
        logits=teacher.logits.reshape(-1, k)[positions][None],
        ids=teacher.ids.reshape(-1, k)[positions][None],
        logsumexp=teacher.logsumexp.reshape(-1)[positions][None],
        vocab_size=teacher.vocab_size,
        temperature=teacher.temperature,
    )
    prep = PreparedTopK(TopKKLConfig(), sub, None, torch.float32)
    part = (torch.arange(positions.shape[0]), prep.ids, prep.lt)
    leaf = zs.detach().requires_grad_(True)
    with torch.enable_grad():
        values = prep.values(leaf, part, None)
        (grad,) = torch.autograd.grad(values.sum(), leaf)
    return values.detach(), grad


def stage_fidelity(args: argparse.Namespace, tf: ModuleType) -> dict[str, Any]:
    from xtalign.losses.sliced import LMHead

    torch.set_num_threads(args.threads)
    teacher, student = tf.load_models(False)
    projection, where = tf.projection_for(teacher, student)
    engine = tf.engine_losses(projection)
    losses = {n: engine[n] for n in LOSSES if n in engine}
    refs = tf.References.of(projection, engine)
    head = LMHead.from_hf(student.model)
    names = [n for n in args.fidelity if n in settings()]
    texts: dict[str, Any] = {}
    for source in args.sources:
        t0 = time.perf_counter()
        d = load_source(source)
        ans, lengths = answer_of(d), np.asarray(d["lengths"])
        sc, tc = d["student_chunk"], d["teacher_chunk"]
        layout = ChunkLayout.build(sc, tc).ordered()
        windows = [tf.EvalWindow(*w) for w in d["windows"]][: args.max_windows]
        cap_pos, cap_rows = d["cap_pos"], d["cap_rows"]
        decoded = {n: roundtrip(ans, lengths, *settings()[n])[1] for n in names}
        prepared = {(n, loss): module.prepare(decoded[n], sc, tc) for n in names for loss, module in losses.items()}
        accs = {(n, loss): tf.Acc() for n in names for loss in LOSSES}
        for i, w in enumerate(windows):
            tw = time.perf_counter()
            with torch.no_grad():
                z = tf.student_logits(head, d["hidden"][w.lo : w.hi])
            lw = tf.layout_window(layout, w)
            if lw.n_groups == 0:
                continue
            rows = cap_rows[torch.searchsorted(cap_pos, lw.teacher_pos)]  # [P_t, V_t] fp32
            t_lp = tf.teacher_logprobs(rows)
            ref = {k: (v, g.double()) for k, (v, g) in refs.evaluate(z, lw, t_lp).items()}
            zs = same_vocab_student(rows, lw.teacher_pos)
            sv_v, sv_g = same_vocab_reference(zs, t_lp)
            ref["same_vocab"] = (sv_v, sv_g.double())
            del rows
            for n in names:
                for loss in losses:
                    p = prepared[(n, loss)]
                    values, grad, g = tf.topk_value_and_grad(loss, p, z, tf.window_of(p, w))
                    rv, rg = ref[tf.REFERENCE_OF[loss]]
                    if g != rv.shape[0]:
                        raise AssertionError(f"{n}/{loss}: {g} chunks in the window, the reference has {rv.shape[0]}")
                    accs[(n, loss)].add(values, rv, grad, rg)
                values, grad = same_vocab_topk(zs, decoded[n], lw.teacher_pos)
                accs[(n, "same_vocab")].add(values, sv_v, grad, ref["same_vocab"][1])
            log.info("%s window %d/%d: %.0f s", source, i + 1, len(windows), time.perf_counter() - tw)
            del t_lp, zs, sv_g, ref
        texts[source] = {n: {loss: accs[(n, loss)].summary() for loss in LOSSES} for n in names}
        texts[source]["_windows"] = len(windows)
        texts[source]["_seconds"] = round(time.perf_counter() - t0, 1)
        log.info("%s: fidelity in %.0f s", source, time.perf_counter() - t0)
    summary = {
        n: {
            loss: {
                m: tf.spread([texts[s][n][loss][m] for s in args.sources])
                for m in ("grad_cosine", "rel_error", "loss", "reference")
            }
            for loss in LOSSES
        }
        for n in names
    }
    return {
        "projection": where,
        "texts": texts,
        "summary": summary,
        "loss_configs": {n: repr(m.config) for n, m in losses.items()},
    }


# --- the choice and the table -------------------------------------------------------------------------------------


def step_seconds() -> float | None:
    """Median student step of the CPU recipe at 4 × 512 (the committed gemma3-teacher-cpu P-KL run)."""
    if not STEP_SECONDS_FILE.is_file():
        return None
    steps = [json.loads(line)["step_s"] for line in STEP_SECONDS_FILE.read_text().splitlines() if '"step_s"' in line]
    return float(np.median(steps)) if steps else None


def choose(result: dict[str, Any]) -> dict[str, Any]:
    """The default: the fewest bytes per position among the settings that are (1) ≤ BYTE_TARGET, (2) no worse than
    today's exact top-64 for every loss (mean gradient cosine ≥ the baseline's − 1e-4, mean loss error within the
    baseline's [min, max] over texts, or closer to 0), (3) read fast enough (a step's positions within READ_SHARE
    of the student step)."""
    b, fid = result["bytes"], result["fidelity"]["summary"]
    base = fid[BASELINE]
    step = result["setup"]["student_step_s"] or 1.0
    need = STEP_POSITIONS / (READ_SHARE * step)
    verdict = {}
    for name, f in fid.items():
        why = []
        if b[name]["bytes_per_position"] > BYTE_TARGET:
            why.append(f"{b[name]['bytes_per_position']:.1f} B > {BYTE_TARGET:.0f}")
        for loss in LOSSES:
            cos, err = f[loss]["grad_cosine"]["mean"], f[loss]["rel_error"]["mean"]
            bc, be = base[loss]["grad_cosine"], base[loss]["rel_error"]
            if cos < bc["mean"] - 1e-4:
                why.append(f"{loss} cos {cos:.4f} < {bc['mean']:.4f}")
            if not (be["min"] <= err <= be["max"] or abs(err) <= abs(be["mean"])):
                why.append(
                    f"{loss} error {100 * err:+.2f} % outside [{100 * be['min']:+.2f}, {100 * be['max']:+.2f}] %"
                )
        if b[name]["decode_positions_per_s"] < need:
            why.append(f"decode {b[name]['decode_positions_per_s']:.0f}/s < {need:.0f}/s")
        verdict[name] = why
    ok = [n for n, why in verdict.items() if not why and n != BASELINE]
    pick = min(ok, key=lambda n: b[n]["bytes_per_position"]) if ok else None
    return {
        "choice": pick,
        "rule": choose.__doc__.split("default: ")[1].strip(),
        "decode_needed_per_s": need,
        "rejected": {n: w for n, w in verdict.items() if w},
    }


def _ms(s: dict[str, float], fmt: str, scale: float = 1.0) -> str:
    return f"{scale * s['mean']:{fmt}} [{scale * s['min']:{fmt}}, {scale * s['max']:{fmt}}]"


def describe(name: str, k: int, cfg: dict[str, Any]) -> str:
    if cfg["kind"] == "exact":
        return f"exact top-{k}" + ("" if cfg["compressor"] == "none" else f", {cfg['compressor']}")
    parts = [f"k ≤ {cfg['k']}", f"step 1/{round(1 / cfg['step'])}"]
    if cfg["mass"] < 1:
        parts.append(f"mass {cfg['mass']}")
    parts.append(f"ids {cfg['ids']}")
    parts.append(cfg["compressor"] + ("" if cfg["level"] is None else f" {cfg['level']}"))
    return "compact, " + ", ".join(parts)


def _fidelity_table(
    summ: dict[str, Any], b: dict[str, Any], metric: str, fmt: str, scale: float, suffix: str, extra: Any
) -> list[str]:
    lines = [
        "| setting | bytes/position | kept ids | "
        + " | ".join(LABELS[n] for n in LOSSES)
        + " |"
        + (" read / step |" if extra else ""),
        "|---|---:|---:|" + "---:|" * len(LOSSES) + ("---:|" if extra else ""),
    ]
    for name in summ:
        r = summ[name]
        cells = [f"`{name}`", f"{b[name]['bytes_per_position']:.1f}", f"{b[name]['mean_kept']:.1f}"]
        cells += [_ms(r[n][metric], fmt, scale) + suffix for n in LOSSES]
        if extra:
            cells.append(extra(name))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def to_markdown(result: dict[str, Any]) -> str:
    """The committed write-up: setup, the choice, fidelity tables, bytes and speed, errors, the format."""
    s, b, fid = result["setup"], result["bytes"], result["fidelity"]
    summ, choice, errors = fid["summary"], result["choice"], result.get("errors", {})
    step = s["student_step_s"]
    pick = choice["choice"]

    def read_cost(name: str) -> str:
        per_step = STEP_POSITIONS / b[name]["decode_positions_per_s"]
        return f"{1e3 * per_step:.0f} ms" + (f" ({100 * per_step / step:.2f} %)" if step else "")

    n_windows = sum(t["_windows"] for t in fid["texts"].values())
    lines = [
        "# Teacher-cache codec: bytes per position, fidelity, read speed",
        "",
        f"Generated by `analysis/cache_codec.py` (results: `benchmarks/results/cache_codec.json`). Teacher "
        f"{s['teacher']} (V_t = {s['vocab']:,}) through the engine's `TeacherWorker.forward` (bf16 top-k logits, "
        f"int32 ids, fp32 logsumexp and target log-prob; LM head in slices of {s['head_slice']}), on the batch the "
        f"engine's `BatchBuilder` makes of each source's held-out then train documents: {s['rows']} rows × seq_len "
        f"{s['seq_len']:,}, bos first; sources {', '.join(s['sources'])}: {s['positions']:,} teacher positions "
        f"(pinned corpus sha256 `{s['corpus_sha256'][:16]}…`). One forward at k = {s['k_max']}; smaller k are its "
        "truncation.",
        "",
        f"Fidelity, as `analysis/topk_fidelity.py` computes it (its functions are reused): the engine's loss "
        f"modules prepared on each whole decoded batch, evaluated on {n_windows} windows of ≈ {s['window']} "
        "student positions (whole chunks), against the same loss from the teacher's full fp32 distribution "
        "(the worker's own LM-head logits, kept at the evaluated positions); student SmolLM2-135M-Instruct, W "
        f"{fid['projection']}. cos = cosine of the student-logit gradients, error = (Σ loss − Σ full) / Σ full "
        "per source. Same-vocab: `TopKKLLoss` (bucket tail) against the full forward KL, with a synthetic "
        "student `z_s = 0.7·z_t + N(0, 1)` on the captured positions (the zoo has no smaller Gemma-vocabulary "
        "model). Cells: mean over the sources [min, max]. Read / step: decoding the 2,048 teacher positions of "
        "one 4 × 512 student step, one thread"
        + (
            f", and its share of the CPU recipe's {step:.1f} s step "
            "(median of `benchmarks/results/gemma3-teacher-cpu/pkl/metrics.jsonl`)"
            if step
            else ""
        )
        + ".",
        "",
    ]
    if pick:
        bp, f0, f1 = b[pick], summ[BASELINE], summ[pick]
        worst = min(LOSSES, key=lambda n: f1[n]["grad_cosine"]["mean"] - f0[n]["grad_cosine"]["mean"])
        ratio = b[BASELINE]["bytes_per_position"] / bp["bytes_per_position"]
        gap = abs(f1[worst]["grad_cosine"]["mean"] - f0[worst]["grad_cosine"]["mean"])
        lines += [
            f"**Default: `{pick}`** = `CodecConfig({', '.join(f'{k}={v!r}' for k, v in bp['config'].items())})` — "
            f"{describe(pick, bp['k'], bp['config'])}: **{bp['bytes_per_position']:.1f} B per position** "
            f"(today {b[BASELINE]['bytes_per_position']:.0f} B: {ratio:.1f}× "
            f"less), gradient cosine within {gap:.1e} "
            f"of today's on every loss (largest gap: {LABELS[worst]}), decode "
            f"{bp['decode_positions_per_s']:,.0f} positions/s ({read_cost(pick)} per student step), encode "
            f"{bp['encode_positions_per_s']:,.0f} positions/s.",
            "",
            f"Rule: {choice['rule']}",
            "",
        ]
    else:
        lines += ["**No setting passed the rule**: " + choice["rule"], ""]
    lines += NOTES(result)
    lines += [
        "",
        "## Gradient cosine against the full distribution",
        "",
        *_fidelity_table(summ, b, "grad_cosine", ".4f", 1.0, "", read_cost),
        "",
        "## Relative loss error against the full distribution",
        "",
        *_fidelity_table(summ, b, "rel_error", "+.2f", 100.0, " %", None),
        "",
        "## Bytes and speed of every setting",
        "",
        "| setting | what | bytes/position | per source | kept ids | encode pos/s | decode pos/s | read / step |",
        "|---|---|---:|---|---:|---:|---:|---:|",
    ]
    for name, r in b.items():
        per = ", ".join(f"{src} {p['bytes_per_position']:.1f}" for src, p in r["sources"].items())
        lines.append(
            f"| `{name}` | {describe(name, r['k'], r['config'])} | {r['bytes_per_position']:.1f} | {per} | "
            f"{r['mean_kept']:.1f} | {r['encode_positions_per_s']:,.0f} | {r['decode_positions_per_s']:,.0f} | "
            f"{read_cost(name)} |"
        )
    if errors:
        grid = errors.get("_grid", {})
        lines += [
            "",
            "## Stored log-probs against the engine's bf16 ones",
            "",
            "Kept slots only (the compact answer's padding is the fill, not a stored value). "
            + (
                f"{100 * grid['share_logits_ge_8']:.2f} % of the kept top-64 bf16 logits are ≥ 8, where bf16 "
                "lies on a grid of 1/16 or coarser. "
                if grid
                else ""
            )
            + "Target: largest error of the restored target log-prob.",
            "",
            "| setting | step | max error | mean error | stored exactly | top log-prob max error | target max error |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for name, e in errors.items():
            if name.startswith("_"):
                continue
            lines.append(
                f"| `{name}` | 1/{round(1 / e['step'])} | {e['max_abs']:.4f} | {e['mean_abs']:.5f} | "
                f"{100 * e['share_exact']:.2f} % | {e['top_max_abs']:.1e} | {e['target_max_abs']:.1e} |"
            )
    lines += ["", *FORMAT_NOTES]
    if choice["rejected"]:
        lines += ["", "## Why the other scored settings were not picked", ""]
        lines += [f"- `{n}`: " + "; ".join(w) for n, w in choice["rejected"].items()]
    return "\n".join(lines) + "\n"


def NOTES(result: dict[str, Any]) -> list[str]:  # noqa: N802 - the findings, filled in from the numbers
    return []


FORMAT_NOTES = [
    "## The compact format",
    "",
    "One blob per sample row (positions `[0, length)`): a 36-byte header (kind, flags, compressor, level, T, the "
    "row's largest kept count, V, temperature, step) and a table of stream sizes, then the streams, each compressed "
    "on its own (raw LZMA2, literal-context settings per element size):",
    "",
    "- `count` [T] uint8: ids kept per position (constant, so free, when `mass = 1`);",
    "- `top` [T] int32: `round(−a / 2⁻¹²)` with `a` = the position's top log-prob (`max(logits)/T − logsumexp`, "
    "the logsumexp itself is not stored);",
    "- `offsets` [Σ(n − 1)] uint8 (255 = escape, the value then in `escapes` [uint32]): differences of consecutive "
    "codes `c_j = round((a_dec − lp_j) / step)`, measured from the DECODED top so that every kept log-prob comes back "
    "within step / 2;",
    "- `ids`: `rank` mode: the row's distinct kept ids most frequent first (int32) and each slot's index into that "
    "table (uint16; uint32 past 65,536 distinct ids); `raw` mode: int32 ids;",
    "- `target` [T] int32: `round(−target_logprob / 2⁻¹⁰)`.",
    "",
    "Decoding returns fp32 `logits = lp · T` with `logsumexp = 0` (so `logprobs()` is the stored log-probs; nothing "
    "in the engine reads raw logits), the ids (int32) and `target_logprob`. Slots a position did not keep hold the "
    "smallest ids it did not keep, at the maximum-entropy fill `log(r / (V − n))`: `fill_logprob()` stays the fill of "
    "the kept ids, GOLD / H-KL / ULD pool exactly the distribution of the kept ids, no id repeats within a position; "
    "P-KL and the top-k KL see those ids as extra ids at the fill value (tests/test_teacher_codec.py checks each).",
]


# --- main ----------------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stage", choices=("all", "teacher", "bytes", "errors", "fidelity", "table"), default="all")
    ap.add_argument("--corpus", type=Path, default=ROOT / "out" / "corpus")
    ap.add_argument("--sources", nargs="+", default=list(SOURCES))
    ap.add_argument("--fidelity", nargs="+", default=list(FIDELITY), help="settings scored for fidelity")
    ap.add_argument("--windows-per-row", type=int, default=2)
    ap.add_argument("--window", type=int, default=128)
    ap.add_argument("--max-windows", type=int, default=None, help="score only the first windows of each source")
    ap.add_argument("--repeat", type=int, default=3, help="decode timings: best of this many")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--recompute", action="store_true", help="rerun the teacher even where its output exists")
    ap.add_argument("--allow-dirty", action="store_true", help="run on a dirty tree (the diff's sha256 is recorded)")
    ap.add_argument("--out", type=Path, default=RESULT)
    ap.add_argument("--table", type=Path, default=TABLE)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from xtalign.io import dump_json, write_atomic

    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    result: dict[str, Any] = json.loads(args.out.read_text()) if args.out.is_file() else {}
    if args.stage != "table":
        from xtalign.provenance import start_provenance

        prov = start_provenance(allow_dirty=args.allow_dirty)
        result["provenance"] = prov  # the latest stage's; each stage's own under stage_provenance
        stages = ("teacher", "bytes", "errors", "fidelity") if args.stage == "all" else (args.stage,)
        result.setdefault("stage_provenance", {}).update(dict.fromkeys(stages, prov))
        tf = load_fidelity_module()
        if args.stage in ("all", "teacher"):
            result.setdefault("teacher", {}).update(stage_teacher(args, tf))
        if args.stage in ("all", "bytes"):
            result["bytes"] = stage_bytes(args)
        if args.stage in ("all", "errors"):
            result["errors"] = stage_errors(args)
            result["errors"]["_grid"] = logit_grid(args)
        if args.stage in ("all", "fidelity"):
            result["fidelity"] = stage_fidelity(args, tf)
        d = load_source(args.sources[0])
        manifest = args.corpus / "manifest.json"
        result["setup"] = {
            "teacher": "zoo:gemma3-270m",
            "student": "zoo:smollm2-135m",
            "vocab": int(d["vocab"]),
            "rows": ROWS,
            "seq_len": SEQ,
            "k_max": K_MAX,
            "head_slice": HEAD_SLICE,
            "sources": list(args.sources),
            "window": args.window,
            "windows_per_row": args.windows_per_row,
            "positions": int(sum(int(np.asarray(load_source(s)["lengths"]).sum()) for s in args.sources)),
            "corpus_sha256": json.loads(manifest.read_text())["sha256"] if manifest.is_file() else "",
            "student_step_s": step_seconds(),
            "step_positions": STEP_POSITIONS,
            "threads": args.threads,
        }
        if "bytes" in result and "fidelity" in result:
            result["choice"] = choose(result)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        dump_json(args.out, result)
    if {"bytes", "fidelity", "choice"} <= set(result):
        write_atomic(args.table, to_markdown(result))
        print(f"wrote {args.out} and {args.table}")
    else:
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
