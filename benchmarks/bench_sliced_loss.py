"""Student head + CE + P-KL, forward and backward: full logits vs ``xtalign.losses.sliced``.

(a) straightforward: ``logits = hidden @ W^T`` as ``[B, T, V_s]`` fp32, then ``next_token_ce`` and
    ``PKLLoss`` on them (what a worker does with a Hugging Face model's ``.logits``); (b) sliced:
    ``sliced_losses(hidden, LMHead(W), targets=..., terms=[SlicedTerm(pkl, ...)])`` — the same values and
    gradients, never more than one slice of logits alive, each slice recomputed in backward; (c) fused:
    the same with ``weights=(1, 1)``, the gradient formed in the forward pass (no recomputation).

Inputs: ``hidden [B, T, H]`` (a leaf standing in for the student body's output) and ``W [V_s, H]``, both
needing gradients; a random row-stochastic top-4 W projection onto V_t = 151,936 teacher ids; a random
Zipf-like teacher top-64 per position; ~15 % of chunks span two positions on each side; P-KL is ``nemo``
over a batch-global subset of at most 8,192 columns. Configurations (``--config``): ``smol`` =
V_s 49,152, H 576, 4 × 2,048 (SmolLM2-135M's head); ``llama`` = V_s 128,256, H 2,048, 2 × 2,048
(Llama-3.2-1B's head).

Each variant runs in its own subprocess so that its peak memory is its own. Peak memory is reported
ABOVE the inputs (hidden, W, teacher, projection) and includes the gradients both variants must produce
(``dL/dW``, ``dL/dhidden``): on CUDA ``torch.cuda.max_memory_allocated`` minus the allocation before the
first step; on CPU the kernel's peak-RSS counter (VmHWM, reset through ``/proc/self/clear_refs``) minus
VmRSS before the first step, with glibc's mmap threshold lowered so that freed large buffers return to the
OS (tracemalloc does not see torch's allocations). Time: median of ``--runs`` fwd+bwd steps after
``--warmup``.

    python benchmarks/bench_sliced_loss.py                       # CPU, both configs
    python benchmarks/bench_sliced_loss.py --device cuda --runs 10
Results go to out/bench/sliced_loss.json (git sha, date, versions, hardware, figures).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import memory_baseline, memory_peak  # noqa: E402
from xtalign.cli.common import provenance  # noqa: E402
from xtalign.losses import PKLConfig, PKLLoss, SparseProjection, TeacherTopK, next_token_ce  # noqa: E402
from xtalign.losses.sliced import LMHead, SlicedTerm, auto_slice_positions, sliced_losses  # noqa: E402

CONFIGS: dict[str, dict[str, int]] = {
    "smol": {"vs": 49_152, "hidden": 576, "batch": 4, "seq": 2048},
    "llama": {"vs": 128_256, "hidden": 2048, "batch": 2, "seq": 2048},
}
VARIANTS = {"straight": "full logits", "sliced": "sliced", "fused": "sliced+fused"}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--config", choices=[*CONFIGS, "all"], default="all")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset of " + ", ".join(VARIANTS))
    ap.add_argument("--vt", type=int, default=151_936, help="teacher vocabulary size")
    ap.add_argument("--teacher-k", type=int, default=64, help="teacher top-k per position")
    ap.add_argument("--w-k", type=int, default=4, help="non-zeros per row of W")
    ap.add_argument("--cap", type=int, default=8192, help="P-KL batch-global subset cap")
    ap.add_argument("--slice", type=int, default=None, help="positions per slice (default: auto, 2**25 logits)")
    ap.add_argument("--seq", type=int, default=None, help="override the configs' T (quick checks)")
    ap.add_argument("--runs", type=int, default=5, help="timed steps (median reported)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--out", type=Path, default=ROOT / "out" / "bench" / "sliced_loss.json")
    ap.add_argument("--child", choices=sorted(VARIANTS), help=argparse.SUPPRESS)
    ap.add_argument("--child-config", choices=sorted(CONFIGS), help=argparse.SUPPRESS)
    return ap.parse_args(argv)


# ------------------------------------------------------------------------------------------------- inputs
def make_inputs(args: argparse.Namespace, cfg: dict[str, int], device: str) -> dict[str, Any]:
    """Student hidden states and head, targets, a teacher top-k batch, chunk ids and a random W."""
    gen = torch.Generator(device=device).manual_seed(0)
    bsz, seq, v_s, dim = cfg["batch"], cfg["seq"], cfg["vs"], cfg["hidden"]
    hidden = torch.randn(bsz, seq, dim, generator=gen, device=device).requires_grad_()  # [B, T, H]
    weight = torch.nn.Parameter(torch.randn(v_s, dim, generator=gen, device=device) / dim**0.5)  # [V, H]
    targets = torch.randint(0, v_s, (bsz, seq), generator=gen, device=device)  # [B, T]
    targets[:, -1] = -100
    idx = torch.randint(0, args.vt, (v_s, args.w_k), generator=gen, device=device)
    w = torch.rand(v_s, args.w_k, generator=gen, device=device)
    proj = SparseProjection(indices=idx, weights=w / w.sum(1, keepdim=True), teacher_vocab_size=args.vt)
    rows = [_teacher_row(args, seq, gen, device) for _ in range(bsz)]
    teacher = TeacherTopK(
        logits=torch.stack([r[0] for r in rows]),
        ids=torch.stack([r[1] for r in rows]),
        logsumexp=torch.stack([r[2] for r in rows]),
        vocab_size=args.vt,
    )
    sc = torch.cat([_chunks(seq, gen, device) for _ in range(bsz)])  # [B, T]
    tc = torch.cat([_chunks(seq, gen, device) for _ in range(bsz)])  # [B, T]
    return {"hidden": hidden, "weight": weight, "targets": targets, "proj": proj, "teacher": teacher,
            "sc": sc, "tc": tc}


def _teacher_row(args: argparse.Namespace, seq: int, gen: torch.Generator, device: str) -> tuple[torch.Tensor, ...]:
    """One row of teacher top-k: a Zipf-like prior plus noise, 64 positions at a time (never [T, V_t])."""
    prior = -1.1 * torch.log(torch.arange(1, args.vt + 1, device=device, dtype=torch.float32))  # [V_t]
    vals, ids, lses = [], [], []
    for i in range(0, seq, 64):
        lg = prior + 3.0 * torch.randn(min(64, seq - i), args.vt, generator=gen, device=device)  # [b, V_t]
        top = torch.topk(lg, args.teacher_k, dim=-1)
        vals.append(top.values)
        ids.append(top.indices.to(torch.int32))
        lses.append(torch.logsumexp(lg, dim=-1))
    return torch.cat(vals), torch.cat(ids), torch.cat(lses)


def _chunks(seq: int, gen: torch.Generator, device: str) -> torch.Tensor:
    """~85 % of positions start a new chunk (same chunk count on both sides); the last position has none."""
    n_chunks = max(1, int(0.85 * (seq - 1)))
    cuts = torch.randperm(seq - 2, generator=gen, device=device)[: n_chunks - 1] + 1
    starts = torch.zeros(seq - 1, dtype=torch.long, device=device)
    starts[cuts] = 1
    ids = torch.cumsum(starts, 0)
    return torch.cat([ids, torch.full((1,), -1, dtype=torch.long, device=device)])[None]  # [1, T]


# ------------------------------------------------------------------------------------------------ one step
def step_fn(variant: str, data: dict[str, Any], pkl: PKLLoss, size: int | None) -> Any:
    """A closure running one forward + backward of head + CE + P-KL; returns ``(loss, slices)``."""
    hidden, weight, targets = data["hidden"], data["weight"], data["targets"]
    teacher, sc, tc = data["teacher"], data["sc"], data["tc"]

    def straight() -> tuple[float, int]:
        logits = F.linear(hidden, weight).float()  # [B, T, V] the full logits
        loss = next_token_ce(logits, targets) + pkl(logits, teacher, sc, tc)
        loss.backward()
        return float(loss.detach()), 1

    def sliced() -> tuple[float, int]:
        weights = (1.0, 1.0) if variant == "fused" else None
        out = sliced_losses(hidden, LMHead(weight), targets=targets, terms=[SlicedTerm(pkl, teacher, sc, tc)],
                            slice_positions=size, weights=weights)
        assert out.ce is not None
        loss = out.total if out.total is not None else out.ce + out.kd[0]
        loss.backward()
        return float(loss.detach()), out.n_slices

    return straight if variant == "straight" else sliced


# ---------------------------------------------------------------------------------------------- measuring
def run_child(args: argparse.Namespace) -> dict[str, Any]:
    cfg, device = dict(CONFIGS[args.child_config]), args.device
    cfg["seq"] = args.seq or cfg["seq"]
    data = make_inputs(args, cfg, device)
    pkl = PKLConfig(subset="per_batch", aggregation="nemo", subset_cap=args.cap).build(data["proj"]).to(device)
    step = step_fn(args.child, data, pkl, args.slice)
    cuda = device == "cuda"
    base, exact = memory_baseline(cuda)
    times, cpu, loss, n_slices = [], [], float("nan"), 0
    for r in range(args.warmup + args.runs):
        data["hidden"].grad, data["weight"].grad = None, None
        if cuda:
            torch.cuda.synchronize()
        t0, c0 = time.perf_counter(), time.process_time()
        loss, n_slices = step()
        if cuda:
            torch.cuda.synchronize()
        if r >= args.warmup:
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
    return {
        "variant": args.child,
        "config": args.child_config,
        "device": device,
        **cfg,
        "slice": (args.slice or auto_slice_positions(cfg["vs"])) if args.child != "straight" else None,
        "n_slices": n_slices,
        "median_s": statistics.median(times),
        "min_s": min(times),
        "cpu_median_s": statistics.median(cpu),
        "times_s": times,
        "peak_mib": (memory_peak(cuda, exact) - base) / 2**20,
        "peak_exact": exact,
        "loss": loss,
        "grad_w_norm": float(data["weight"].grad.norm()),
        "grad_h_norm": float(data["hidden"].grad.norm()),
    }


# -------------------------------------------------------------------------------------------------- driver
def _spawn(argv: list[str], variant: str, config: str) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), *argv, "--child", variant, "--child-config", config]
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, check=False)
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    why = "killed (out of memory?)" if out.returncode == -9 else f"exit {out.returncode}"
    print(f"{variant} / {config} failed: {why}\n{out.stderr[-3000:]}", file=sys.stderr, flush=True)
    return {"variant": variant, "config": config, "error": why}


TABLE_HEAD = (f"{'config':<6} {'variant':<13} {'slice':>6} {'slices':>6} {'median s':>9} {'min s':>8} "
              f"{'cpu s':>8} {'peak MiB':>9} {'loss':>10}")


def _row(r: dict[str, Any]) -> str:
    if "error" in r:
        return f"{r['config']:<6} {VARIANTS[r['variant']]:<13} {r['error']}"
    return (f"{r['config']:<6} {VARIANTS[r['variant']]:<13} {r['slice'] or '-':>6} {r['n_slices']:>6} "
            f"{r['median_s']:>9.2f} {r['min_s']:>8.2f} {r['cpu_median_s']:>8.2f} {r['peak_mib']:>9.0f} "
            f"{r['loss']:>10.6f}")


def _ratios(s: dict[str, Any], f: dict[str, Any]) -> dict[str, float]:
    """Variant ``f`` against the straightforward ``s`` (empty when either run failed)."""
    if "error" in s or "error" in f:
        return {}
    return {
        "peak": f["peak_mib"] / max(s["peak_mib"], 1e-9),
        "time_median": f["median_s"] / s["median_s"],
        "time_min": f["min_s"] / s["min_s"],
        "cpu_time_median": f["cpu_median_s"] / s["cpu_median_s"],
        "loss_rel_diff": abs(s["loss"] - f["loss"]) / max(abs(s["loss"]), 1e-12),
        "grad_w_norm_rel_diff": abs(s["grad_w_norm"] - f["grad_w_norm"]) / max(s["grad_w_norm"], 1e-30),
        "grad_h_norm_rel_diff": abs(s["grad_h_norm"] - f["grad_h_norm"]) / max(s["grad_h_norm"], 1e-30),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        print("RESULT " + json.dumps(run_child(args)), flush=True)
        return 0
    if args.device == "cuda" and not torch.cuda.is_available():
        print("CUDA requested but not available", file=sys.stderr)
        return 2
    passthrough = _strip(list(argv if argv is not None else sys.argv[1:]))
    configs = list(CONFIGS) if args.config == "all" else [args.config]
    results: list[dict[str, Any]] = []
    ratios: dict[str, dict[str, dict[str, float]]] = {}
    print(TABLE_HEAD, flush=True)
    for name in configs:
        got = {}
        for v in [v for v in VARIANTS if v in args.variants.split(",")]:
            got[v] = _spawn(passthrough, v, name)
            results.append(got[v])
            print(_row(got[v]), flush=True)
            _write(args, results, ratios)  # after every variant: a long run keeps what it measured
        if "straight" in got:
            ratios[name] = {v: _ratios(got["straight"], r) for v, r in got.items() if v != "straight"}
        _write(args, results, ratios)
    for name, per in ratios.items():
        for v, r in per.items():
            print(_ratio_line(name, v, r))
    print(f"wrote {args.out}")
    return 0


def _ratio_line(name: str, variant: str, r: dict[str, float]) -> str:
    if not r:
        return f"{name} {VARIANTS[variant]}: no ratio (a run failed)"
    return (f"{name} {VARIANTS[variant]} / full logits: {r['peak']:.2f}x peak memory, time {r['time_median']:.2f}x "
            f"(median) {r['time_min']:.2f}x (min) {r['cpu_time_median']:.2f}x (CPU time); loss rel. diff "
            f"{r['loss_rel_diff']:.1e}, |dW| {r['grad_w_norm_rel_diff']:.1e}, |dh| {r['grad_h_norm_rel_diff']:.1e}")


def _write(args: argparse.Namespace, results: list[dict[str, Any]], ratios: dict[str, Any]) -> None:
    record = {
        "benchmark": "sliced_loss",
        **provenance(),
        "torch": torch.__version__,
        "hardware": {"torch_threads": torch.get_num_threads(),
                     **({"gpu": torch.cuda.get_device_name(0)} if args.device == "cuda" else {})},
        "config": {k: v for k, v in vars(args).items() if k not in ("child", "child_config", "out")},
        "peak_memory": "above inputs, incl. dW and dh; CUDA max_memory_allocated, CPU VmHWM after clear_refs",
        "results": results,
        "ratios": ratios,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2, default=str) + "\n")


def _strip(argv: list[str]) -> list[str]:
    """Drop the driver-only flags (--config, --out, --variants) before passing the rest to a child."""
    driver = ("--config", "--out", "--variants")
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a in driver:
            skip = True
            continue
        if a.split("=", 1)[0] in driver:
            continue
        out.append(a)
    return out


if __name__ == "__main__":
    sys.exit(main())
