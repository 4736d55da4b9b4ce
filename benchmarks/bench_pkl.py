"""P-KL forward+backward: the straightforward implementation vs xtalign's fast path.

Sizes default to Llama-3 (V_s 128,256) × Qwen3 (V_t 151,936), B = 1, a random row-stochastic top-4 W,
teacher top-64 per position, a batch-global subset of at most 8,192 teacher columns, NeMo's ``nemo``
aggregation; both variants compute the same loss (the table shows both values).

(a) straightforward: full fp32 ``softmax(z / T)`` over the student vocabulary (kept by autograd), then a
    sparse CSR matmul onto the batch-global subset; (b) ``xtalign.losses.PKLLoss`` (blocked
    recomputation, no full-vocabulary probability tensor is kept).

Each variant runs in its own subprocess so that peak memory is its own. Peak memory is reported ABOVE
the inputs (logits, teacher top-k, W) and includes the logits gradient both variants must produce:
on CUDA ``torch.cuda.max_memory_allocated`` minus the allocation before the first run; on CPU the
kernel's peak-RSS counter (VmHWM, reset through ``/proc/self/clear_refs``) minus VmRSS before the first
run, with glibc's mmap threshold lowered so that large freed buffers return to the OS (without
clear_refs it falls back to ``ru_maxrss``, which cannot be reset: then the setup peak may hide part of
the figure and the JSON says so).

    .venv/bin/python benchmarks/bench_pkl.py                # CPU at T=512 (+ CUDA at T=2048 when available)
    .venv/bin/python benchmarks/bench_pkl.py --seq 2048     # the README's CPU figures
    .venv/bin/python benchmarks/bench_pkl.py --seq 2048 --device cpu --runs 3
    .venv/bin/python benchmarks/bench_pkl.py --smoke --out /tmp/pkl.json --allow-dirty

The parent takes the provenance when it starts, runs the children (they only measure) and writes the results
to benchmarks/results/pkl.json: per variant and device the spread of the timed runs (median, quartiles, IQR,
min, max, values), the peak memory and the loss, and the ratios of the medians. `--smoke`: V_s = V_t =
4,096, T = 128, 1 run, no warm-up (not a result).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import (  # noqa: E402
    begin,
    memory_baseline,
    memory_peak,
    parser,
    ratio,
    spread,
    write_results,
)
from xtalign.losses import PKLConfig, SparseProjection, TeacherTopK  # noqa: E402

VARIANTS = {"naive": "straightforward", "fast": "xtalign fast path"}


def parse_args() -> argparse.Namespace:
    ap = parser("pkl", __doc__)
    ap.add_argument("--seq", type=int, default=None, help="tokens T (default: 512 on CPU, 2048 on CUDA)")
    ap.add_argument("--vs", type=int, default=128_256, help="student vocabulary size")
    ap.add_argument("--vt", type=int, default=151_936, help="teacher vocabulary size")
    ap.add_argument("--teacher-k", type=int, default=64, help="teacher top-k per position")
    ap.add_argument("--w-k", type=int, default=4, help="non-zeros per row of W")
    ap.add_argument("--cap", type=int, default=8192, help="batch-global subset size cap")
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument(
        "--dtype", choices=["float32", "bfloat16"], default="float32", help="student logits dtype"
    )
    ap.add_argument("--runs", type=int, default=5, help="timed runs of each variant (their spread is reported)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument(
        "--device",
        choices=["auto", "cpu", "cuda"],
        default="auto",
        help="auto = CPU always, plus CUDA when available",
    )
    ap.add_argument("--child", choices=sorted(VARIANTS), help=argparse.SUPPRESS)
    ap.add_argument("--child-device", default="cpu", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.smoke and not args.child:
        args.vs, args.vt, args.seq, args.runs, args.warmup = 4096, 4096, args.seq or 128, 1, 0
    return args


# ------------------------------------------------------------------------------------------------ inputs
def make_inputs(args: argparse.Namespace, device: str, seq: int) -> dict[str, Any]:
    gen = torch.Generator(device=device).manual_seed(0)
    idx = torch.randint(0, args.vt, (args.vs, args.w_k), generator=gen, device=device)
    w = torch.rand(args.vs, args.w_k, generator=gen, device=device)
    proj = SparseProjection(indices=idx, weights=w / w.sum(1, keepdim=True), teacher_vocab_size=args.vt)
    # Teacher: a Zipf-like prior plus noise, so that top-k ids concentrate on frequent tokens like a
    # real model's; built 64 positions at a time (never a [T, V_t] tensor).
    prior = -1.1 * torch.log(torch.arange(1, args.vt + 1, device=device, dtype=torch.float32))  # [V_t]
    vals, ids, lses = [], [], []
    for i in range(0, seq, 64):
        lg = prior + 3.0 * torch.randn(min(64, seq - i), args.vt, generator=gen, device=device)  # [b, V_t]
        top = torch.topk(lg, args.teacher_k, dim=-1)
        vals.append(top.values)
        ids.append(top.indices.to(torch.int32))
        lses.append(torch.logsumexp(lg / args.temperature, dim=-1))
    teacher = TeacherTopK(
        logits=torch.cat(vals)[None],
        ids=torch.cat(ids)[None],
        logsumexp=torch.cat(lses)[None],
        vocab_size=args.vt,
        temperature=args.temperature,
    )
    dtype = torch.float32 if args.dtype == "float32" else torch.bfloat16
    z = (2.0 * torch.randn(1, seq, args.vs, generator=gen, device=device)).to(dtype).requires_grad_()
    return {
        "proj": proj,
        "teacher": teacher,
        "z": z,
        "sc": _chunks(seq, gen, device),
        "tc": _chunks(seq, gen, device),
    }


def _chunks(seq: int, gen: torch.Generator, device: str) -> torch.Tensor:
    """~85 % of positions start a new chunk (same chunk count on both sides); the last position has none."""
    n_chunks = max(1, int(0.85 * (seq - 1)))
    cuts = torch.randperm(seq - 2, generator=gen, device=device)[: n_chunks - 1] + 1
    starts = torch.zeros(seq - 1, dtype=torch.long, device=device)
    starts[cuts] = 1
    ids = torch.cumsum(starts, 0)
    return torch.cat([ids, torch.full((1,), -1, dtype=torch.long, device=device)])[None]  # [1, T]


# ----------------------------------------------------------------------------------------- the two P-KLs
def naive_pkl(
    z: torch.Tensor,
    proj: SparseProjection,
    teacher: TeacherTopK,
    sc: torch.Tensor,
    tc: torch.Tensor,
    temperature: float,
    cap: int,
    eps: float = 1e-10,
) -> torch.Tensor:
    """The straightforward P-KL (nemo aggregation, batch-global subset), written plainly."""
    v_s, v_t, dev = proj.student_vocab_size, teacher.vocab_size, z.device
    n_chunks = int(max(sc.max(), tc.max())) + 1
    s_ok, t_ok = sc[0] >= 0, tc[0] >= 0
    s_cnt = torch.bincount(sc[0][s_ok], minlength=n_chunks)
    t_cnt = torch.bincount(tc[0][t_ok], minlength=n_chunks)
    both = (s_cnt > 0) & (t_cnt > 0)  # chunks present on both sides; only their positions count
    s_ok &= both[sc[0].clamp_min(0)]
    t_ok &= both[tc[0].clamp_min(0)]
    lp, ids = teacher.logprobs()[0][t_ok], teacher.ids[0][t_ok].long()  # [Tt', K]
    best = torch.full((v_t,), float("-inf"), device=dev).scatter_reduce(
        0, ids.reshape(-1), lp.reshape(-1), "amax"
    )
    cols = torch.nonzero(best > float("-inf")).squeeze(1)
    if cols.shape[0] > cap:
        cols = torch.sort(cols[torch.topk(best[cols], cap).indices]).values
    m = cols.shape[0]
    inv = torch.full((v_t,), -1, dtype=torch.long, device=dev)
    inv[cols] = torch.arange(m, device=dev)
    col_of = inv[proj.indices.long()]  # [V_s, k]
    keep = (col_of >= 0) & (proj.weights > 0)
    rows = torch.arange(v_s, device=dev)[:, None].expand_as(col_of)
    w_t = torch.sparse_coo_tensor(torch.stack([col_of[keep], rows[keep]]), proj.weights[keep], (m, v_s))
    w_t = w_t.coalesce().to_sparse_csr()  # [M, V_s]
    p = torch.softmax(z[0].float() / temperature, dim=-1)  # [Ts, V_s] full fp32 student softmax
    q = torch.sparse.mm(w_t, p.t()).t()  # [Ts, M]
    fill = teacher.fill_logprob()[0][t_ok]  # [Tt']
    dense = fill[:, None].expand(lp.shape[0], m + 1).clone()
    dense.scatter_(1, torch.where(inv[ids] >= 0, inv[ids], m), lp)
    lt = torch.log_softmax(dense[:, :m], dim=-1)  # [Tt', M]
    q_sum = torch.zeros(n_chunks, m, device=dev).index_add(0, sc[0][s_ok], q[s_ok])  # [C, M]
    l_sum = torch.zeros(n_chunks, m, device=dev).index_add(0, tc[0][t_ok], lt)  # [C, M]
    qm = q_sum[both] / s_cnt[both, None] + eps
    log_q = torch.log(qm / qm.sum(-1, keepdim=True))
    lt_c = l_sum[both] / t_cnt[both, None]
    return (torch.exp(lt_c) * (lt_c - log_q)).sum(-1).mean() * temperature**2


def make_fast(proj: SparseProjection, temperature: float, cap: int) -> Any:
    loss = PKLConfig(temperature=temperature, subset="per_batch", aggregation="nemo", subset_cap=cap).build(
        proj
    )
    return loss.to(proj.indices.device)


# ------------------------------------------------------------------------------------------- measuring
def run_child(args: argparse.Namespace) -> dict[str, Any]:
    device, seq = args.child_device, args.seq
    data = make_inputs(args, device, seq)
    z, proj, teacher, sc, tc = data["z"], data["proj"], data["teacher"], data["sc"], data["tc"]
    if args.child == "naive":

        def step() -> torch.Tensor:
            return naive_pkl(z, proj, teacher, sc, tc, args.temperature, args.cap)
    else:
        fast = make_fast(proj, args.temperature, args.cap)

        def step() -> torch.Tensor:
            return fast(z, teacher, sc, tc)

    cuda = device.startswith("cuda")
    base, exact_rss = memory_baseline(cuda)
    times, loss_val = [], float("nan")
    for r in range(args.warmup + args.runs):
        z.grad = None
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        loss = step()
        loss.backward()
        if cuda:
            torch.cuda.synchronize()
        if r >= args.warmup:
            times.append(time.perf_counter() - t0)
        loss_val = float(loss.detach())
    peak = memory_peak(cuda, exact_rss) - base
    return {
        "variant": args.child,
        "device": device,
        "seq": seq,
        "times_ms": [1000 * t for t in times],
        "peak_mib": peak / 2**20,
        "peak_exact": cuda or exact_rss,
        "loss": loss_val,
    }


# ----------------------------------------------------------------------------------------------- driver
CHILD_OPTIONS = ("vs", "vt", "teacher_k", "w_k", "cap", "temperature", "dtype", "runs", "warmup")


def _spawn(args: argparse.Namespace, variant: str, device: str, seq: int) -> dict[str, Any]:
    """One variant in its own process (the parent's sizes passed on explicitly); the child's RESULT line."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", variant, "--child-device", device,
           "--seq", str(seq)]
    for name in CHILD_OPTIONS:
        cmd += ["--" + name.replace("_", "-"), str(getattr(args, name))]
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, check=False)
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    raise RuntimeError(f"{variant} on {device} failed:\n{out.stderr[-3000:]}")


def _hardware() -> dict[str, Any]:
    hw: dict[str, Any] = {"torch_threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        hw["gpu"] = torch.cuda.get_device_name(0)
    return hw


def _table(results: list[dict[str, Any]]) -> str:
    lines = [
        f"{'device':<6} {'T':>5} {'variant':<18} {'median ms':>10} {'min ms':>9} {'peak MiB':>9} {'loss':>12}"
    ]
    for r in results:
        lines.append(
            f"{r['device']:<6} {r['seq']:>5} {VARIANTS[r['variant']]:<18} {r['ms']['median']:>10.1f} "
            f"{r['ms']['min']:>9.1f} {r['peak_mib']:>9.0f} {r['loss']:>12.6f}"
        )
    return "\n".join(lines)


def main() -> int:
    args = parse_args()
    if args.child:
        warnings.filterwarnings("ignore", message=".*[Ss]parse.*")  # torch's beta/invariant-check notices
        args.seq = args.seq or 512
        print("RESULT " + json.dumps(run_child(args)), flush=True)
        return 0
    devices = ["cpu"] if args.device == "cpu" else ["cuda"] if args.device == "cuda" else ["cpu"]
    if args.device == "auto" and torch.cuda.is_available():
        devices.append("cuda")
    if "cuda" in devices and not torch.cuda.is_available():
        print("CUDA requested but not available", file=sys.stderr)
        return 2
    prov = begin(args, "bench_pkl.py")
    results, ratios, seqs = [], {}, {}
    for device in devices:
        seq = seqs[device] = args.seq or (2048 if device == "cuda" else 512)
        pair = {v: _spawn(args, v, device, seq) for v in ("naive", "fast")}
        for r in pair.values():
            r["ms"] = spread(r.pop("times_ms"))
        results.extend(pair.values())
        ratios[device] = {
            "time_naive_over_fast": ratio(pair["naive"]["ms"], pair["fast"]["ms"]),
            "memory_naive_over_fast": pair["naive"]["peak_mib"] / max(pair["fast"]["peak_mib"], 1e-9),
            "loss_rel_diff": abs(pair["naive"]["loss"] - pair["fast"]["loss"])
            / max(abs(pair["naive"]["loss"]), 1e-12),
        }
    print(_table(results))
    for device, r in ratios.items():
        print(
            f"{device}: straightforward / fast = {r['time_naive_over_fast']:.2f}x time, "
            f"{r['memory_naive_over_fast']:.2f}x peak memory (loss rel. diff {r['loss_rel_diff']:.1e})"
        )
    config = {k: getattr(args, k) for k in CHILD_OPTIONS} | {"devices": devices, "seq": seqs}
    write_results(args, "pkl", prov, {
        "config": config,
        "hardware": _hardware(),
        "peak_memory": "above inputs; CUDA max_memory_allocated, CPU VmHWM after clear_refs",
        "definitions": "ms: spread of the timed fwd+bwd runs (after the warm-up) of one child per variant and "
                       "device; ratios: of the medians",
        "results": results,
        "ratios": ratios,
    })
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
