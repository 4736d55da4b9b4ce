"""The student's peak memory and step time on the engine's own forward: full logits vs `student.loss_slice`.

    .venv/bin/python benchmarks/bench_student_memory.py                  # CPU: both shapes, 2 decoder layers
    .venv/bin/python benchmarks/bench_student_memory.py --device cuda --layers 0   # GPU: the models' full depth

Each variant is one optimiser-free training step (forward + backward, as `StudentWorker._micro_step` runs it)
of a random-init Llama-architecture student through `xtalign.distill.student.sliced.StudentForward`, the module
the worker calls: `loss_slice: 0` takes the logits `[B, T, V_s]` and computes `next_token_ce` + P-KL on them;
the sliced variant passes the same CE targets and the P-KL term (`SlicedTerm`) and never forms them. Shapes:
`smol` = SmolLM2-135M (H 576, 9 heads / 3 kv, FFN 1,536, V_s 49,152) at 4 x 2,048; `llama` = Llama-3.2-1B
(H 2,048, 32 / 8, FFN 8,192, V_s 128,256) at 2 x 2,048. On CPU the body is cut to `--layers` decoder layers (the
head, CE and KD, which is what slicing changes, keep their real sizes; a deeper body adds the same activations to
both variants); `--layers 0` = the model's real depth. The teacher side is random top-64 of V_t = 151,936 with a
random top-4 W, built outside the timer (benchmarks/bench_sliced_loss.py's inputs).

Every variant runs in its own subprocess, so its peak is its own: CUDA `max_memory_allocated`, CPU the kernel's
peak RSS (VmHWM, reset before the step), both minus what was held before the first step (model, gradients of
a previous step are not kept). Time: median of `--runs` steps after `--warmup`. Results (with provenance taken
at the start): benchmarks/results/student_memory.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_sliced_loss import _baseline, _chunks, _peak, _teacher_row  # noqa: E402
from common import begin, write_results  # noqa: E402

from xtalign.losses import PKLConfig, SparseProjection, TeacherTopK, next_token_ce  # noqa: E402
from xtalign.losses.sliced import SlicedTerm  # noqa: E402

SHAPES: dict[str, dict[str, int]] = {
    "smol": {"hidden": 576, "heads": 9, "kv": 3, "ffn": 1536, "vocab": 49_152, "layers": 30, "batch": 4, "seq": 2048},
    "llama": {"hidden": 2048, "heads": 32, "kv": 8, "ffn": 8192, "vocab": 128_256, "layers": 16, "batch": 2,
              "seq": 2048},
}
VARIANTS = ("full", "sliced")
RESULTS = ROOT / "benchmarks" / "results" / "student_memory.json"


def build_model(shape: dict[str, int], layers: int, device: str) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(hidden_size=shape["hidden"], num_attention_heads=shape["heads"],
                      num_key_value_heads=shape["kv"], intermediate_size=shape["ffn"], vocab_size=shape["vocab"],
                      num_hidden_layers=layers or shape["layers"], max_position_embeddings=shape["seq"],
                      tie_word_embeddings=True)
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).to(device)


def teacher_inputs(shape: dict[str, int], vt: int, device: str) -> dict[str, Any]:
    gen = torch.Generator(device=device).manual_seed(0)
    bsz, seq, vs = shape["batch"], shape["seq"], shape["vocab"]
    args = argparse.Namespace(vt=vt, teacher_k=64)
    rows = [_teacher_row(args, seq, gen, device) for _ in range(bsz)]
    teacher = TeacherTopK(logits=torch.stack([r[0] for r in rows]), ids=torch.stack([r[1] for r in rows]),
                          logsumexp=torch.stack([r[2] for r in rows]), vocab_size=vt)
    w = torch.rand(vs, 4, generator=gen, device=device)
    proj = SparseProjection(indices=torch.randint(0, vt, (vs, 4), generator=gen, device=device),
                            weights=w / w.sum(1, keepdim=True), teacher_vocab_size=vt)
    ids = torch.randint(0, vs, (bsz, seq), generator=gen, device=device)  # [B, T]
    targets = torch.cat([ids[:, 1:], torch.full((bsz, 1), -100, device=device)], 1)  # [B, T]
    sc = torch.cat([_chunks(seq, gen, device) for _ in range(bsz)])  # [B, T]
    tc = torch.cat([_chunks(seq, gen, device) for _ in range(bsz)])
    return {"teacher": teacher, "proj": proj, "ids": ids, "targets": targets, "sc": sc, "tc": tc}


def run_child(args: argparse.Namespace) -> dict[str, Any]:
    from xtalign.distill.student.sliced import StudentForward

    shape, device = dict(SHAPES[args.child_shape]), args.device
    shape["seq"] = args.seq or shape["seq"]
    model = build_model(shape, args.layers, device)
    data = teacher_inputs(shape, args.vt, device)
    pkl = PKLConfig(subset="per_batch", aggregation="nemo").build(data["proj"]).to(device)
    fwd = StudentForward(model, args.slice)
    mask = torch.ones_like(data["ids"])
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda" else torch.autocast("cpu",
                                                                                                  enabled=False)

    def step() -> float:
        model.zero_grad(set_to_none=True)
        with autocast:
            if args.child == "full":
                logits = fwd(data["ids"], mask).float()  # [B, T, V_s]
                loss = next_token_ce(logits, data["targets"]) + pkl(logits, data["teacher"], data["sc"], data["tc"])
            else:
                out = fwd(data["ids"], mask, targets=data["targets"],
                          terms=[SlicedTerm(pkl, data["teacher"], data["sc"], data["tc"])])
                loss = out.ce + out.kd[0]
        loss.backward()
        return float(loss.detach())

    cuda = device == "cuda"
    for _ in range(args.warmup):
        step()
    model.zero_grad(set_to_none=True)
    base, exact = _baseline(cuda)
    times, loss = [], float("nan")
    for _ in range(args.runs):
        t0 = time.perf_counter()
        loss = step()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    peak = _peak(cuda, exact)
    return {"variant": args.child, "shape": args.child_shape, "loss": loss, "step_s": statistics.median(times),
            "step_s_all": times, "peak_above_start_mib": (peak - base) / 2**20, "peak_exact": exact,
            "layers": args.layers or shape["layers"], "params": sum(p.numel() for p in model.parameters())}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=[*SHAPES, "all"], default="all")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--layers", type=int, default=2, help="decoder layers (0: the model's real depth)")
    ap.add_argument("--slice", type=int, default=None, help="positions per slice (default: about 2**25 logits)")
    ap.add_argument("--vt", type=int, default=151_936)
    ap.add_argument("--seq", type=int, default=None, help="override the shapes' T")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--allow-dirty", action="store_true")
    ap.add_argument("--smoke", action="store_true", help="seq 256, one step each, 1 layer (results outside "
                    "benchmarks/results/)")
    ap.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    ap.add_argument("--child-shape", choices=sorted(SHAPES), help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def _child_cmd(args: argparse.Namespace, variant: str, shape: str) -> list[str]:
    cmd = [sys.executable, __file__, "--child", variant, "--child-shape", shape, "--device", args.device,
           "--layers", str(args.layers), "--vt", str(args.vt), "--runs", str(args.runs), "--warmup", str(args.warmup)]
    cmd += ["--slice", str(args.slice)] if args.slice else []
    cmd += ["--seq", str(args.seq)] if args.seq else []
    cmd += ["--threads", str(args.threads)] if args.threads else []
    return cmd


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        print(json.dumps(run_child(args)))
        return 0
    if args.smoke:
        args.seq, args.runs, args.warmup, args.layers = 256, 1, 0, 1
    prov = begin(args, "bench_student_memory.py")
    rows = []
    for shape in SHAPES if args.shape == "all" else [args.shape]:
        for variant in VARIANTS:
            res = subprocess.run(_child_cmd(args, variant, shape), capture_output=True, text=True, check=False)
            if res.returncode != 0:
                print(f"error: {shape}/{variant} failed: {res.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
                return 1
            rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
            r = rows[-1]
            print(f"{shape:5s} {variant:6s} step {r['step_s']:.2f} s  peak +{r['peak_above_start_mib']:,.0f} MiB  "
                  f"loss {r['loss']:.4f}", flush=True)
    ratios = {}
    for shape in {r["shape"] for r in rows}:
        full, cut = (next(r for r in rows if r["shape"] == shape and r["variant"] == v) for v in VARIANTS)
        ratios[shape] = {"peak": cut["peak_above_start_mib"] / full["peak_above_start_mib"],
                         "step_time": cut["step_s"] / full["step_s"],
                         "loss_rel_diff": abs(cut["loss"] - full["loss"]) / abs(full["loss"])}
        print(f"{shape}: sliced peak {ratios[shape]['peak']:.2f}x, step time {ratios[shape]['step_time']:.2f}x of "
              f"full logits")
    write_results(args, "student_memory", prov, {"device": args.device, "layers": args.layers, "runs": args.runs,
                                                 "rows": rows, "ratios": ratios})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
