"""Shared helpers of bench_engine.py, bench_teacher_memory.py, bench_ray.py and bench_data.py (not a script).

Every one of those scripts is run as `.venv/bin/python benchmarks/<name>.py` (add `--smoke --out PATH
--allow-dirty` for the quick run the tests make) and:

- takes its provenance when it STARTS (`begin`: a dirty git tree is refused with exit 2 unless
  `--allow-dirty`, and then the diff's sha256 is recorded);
- writes `benchmarks/results/<name>.json` by default (`write_results`), holding every figure it prints
  together with its spread (`spread`: median, quartiles, IQR, min, max and the values themselves);
- times phases with `PhaseClock`, which synchronises a CUDA device before it reads the clock.

The engine side of bench_engine.py and bench_ray.py goes through the engine's public path: `build_run`
+ `steps_only_loop` (the engine's `Loop` with its evals and checkpoints left out), rows read back from the
run's `metrics.jsonl`. `FullLogitsTeacher` is the best plain-PyTorch full-logits teacher forward, the
baseline both bench_engine.py and bench_teacher_memory.py measure against the sliced `TeacherWorker`.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import sys
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "benchmarks" / "results"

if TYPE_CHECKING:
    import numpy as np
    import torch

    from xtalign.distill.build import RunParts
    from xtalign.distill.config import DistillConfig
    from xtalign.distill.data.batch import Batch
    from xtalign.distill.loop import Loop
    from xtalign.distill.protocols import TeacherAnswer, TeacherSource
    from xtalign.distill.teacher.worker import TeacherWorker
    from xtalign.losses import TeacherTopK

__all__ = ["RESULTS_DIR", "ROOT", "FullLogitsTeacher", "PhaseClock", "begin", "engine_rows", "load_average",
           "memory_baseline", "memory_peak", "parser", "ratio", "spread", "step_figures", "steps_only_loop", "sync",
           "write_results"]


# --- arguments, provenance, results ---------------------------------------------------------------------


def parser(name: str, doc: str | None) -> argparse.ArgumentParser:
    """The arguments every benchmark shares: `--out` (default benchmarks/results/<name>.json), `--allow-dirty`,
    `--smoke` (a short run for the tests; its numbers are not results)."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=RESULTS_DIR / f"{name}.json", help="results JSON (default: %(default)s)")
    p.add_argument("--allow-dirty", action="store_true",
                   help="run on a working tree with uncommitted changes (the diff's sha256 is recorded)")
    p.add_argument("--smoke", action="store_true", help="a short run to check the script (not a measurement)")
    return p


def load_average() -> float:
    """The 1-minute load average (other work on the same cores lowers every throughput figure)."""
    return round(os.getloadavg()[0], 2)


def begin(args: argparse.Namespace, script: str) -> dict[str, Any]:
    """Provenance as of the start of the run, with the load average; a dirty tree without --allow-dirty exits 2,
    and so does a --smoke run that would write into benchmarks/results/ (those files hold full runs)."""
    from xtalign.provenance import DirtyTreeError, start_provenance

    if args.smoke and Path(args.out).resolve().parent == RESULTS_DIR.resolve():
        print(f"{script}: --smoke writes no committed results; give --out PATH outside {_rel(str(RESULTS_DIR))}/",
              file=sys.stderr)
        raise SystemExit(2)
    try:
        record = start_provenance(allow_dirty=bool(args.allow_dirty))
    except DirtyTreeError as exc:
        print(f"{script}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    record["load_average_1min_start"] = load_average()
    return record


def _plain(value: Any) -> Any:
    return str(value) if isinstance(value, Path) else value


def write_results(args: argparse.Namespace, benchmark: str, prov: dict[str, Any], body: Mapping[str, Any]) -> Path:
    """`body` under `args.out` with the benchmark's name, its exact command and arguments, the provenance taken
    at the start and the load average at the end."""
    from xtalign.io import dump_json

    record = {"benchmark": benchmark, "smoke": bool(args.smoke),
              "command": " ".join([".venv/bin/python", *(_rel(a) for a in sys.argv)]),
              "arguments": {k: _plain(v) for k, v in vars(args).items()}, "provenance": prov, **body,
              "finished": datetime.now(UTC).isoformat(timespec="seconds"), "load_average_1min_end": load_average()}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    dump_json(out, record)
    print(f"wrote {out}")
    return out


def _rel(arg: str) -> str:
    """An absolute path under the repository written relative to it (the command as typed at the root)."""
    path = Path(arg)
    if path.is_absolute() and path.is_relative_to(ROOT):
        return str(path.relative_to(ROOT))
    return arg


# --- statistics -----------------------------------------------------------------------------------------


def spread(values: Sequence[float]) -> dict[str, Any]:
    """Median, quartiles (inclusive method), IQR, min, max, n and the values (rounded to 6 significant digits)."""
    xs = [float(v) for v in values]
    if not xs:
        raise ValueError("spread of no values")
    q1, _, q3 = statistics.quantiles(xs, n=4, method="inclusive") if len(xs) > 1 else (xs[0], xs[0], xs[0])
    return {"median": statistics.median(xs), "q1": q1, "q3": q3, "iqr": q3 - q1, "min": min(xs), "max": max(xs),
            "n": len(xs), "values": [float(f"{x:.6g}") for x in xs]}


def ratio(num: Mapping[str, Any], den: Mapping[str, Any]) -> float:
    """Ratio of two `spread`s' medians."""
    return float(num["median"]) / float(den["median"]) if den["median"] else float("nan")


# --- peak memory in one process ---------------------------------------------------------------------------


def _rss_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    """Return freed memory to the OS and reset the kernel's peak-RSS counter (VmHWM); False where refused."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def memory_baseline(cuda: bool) -> tuple[int, bool]:
    """Bytes in use now (CUDA: allocated, peak stats reset; CPU: VmRSS after resetting VmHWM) and whether the
    peak read later is exact (False on a CPU where VmHWM cannot be reset: `memory_peak` falls back to ru_maxrss)."""
    if cuda:
        import torch

        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated(), True
    exact = _reset_peak_rss()
    return (_rss_kib("VmRSS") or 0) * 1024, exact


def memory_peak(cuda: bool, exact: bool) -> int:
    """Peak bytes since `memory_baseline` (absolute: subtract the baseline)."""
    if cuda:
        import torch

        return torch.cuda.max_memory_allocated()
    import resource

    hwm = _rss_kib("VmHWM") if exact else None
    return hwm * 1024 if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# --- the C heap ------------------------------------------------------------------------------------------

HEAP_MMAP_THRESHOLD = 1 << 30  # bytes: every tensor a benchmark makes on the CPU stays in the heap
HEAP_TRIM_THRESHOLD = (1 << 31) - 1  # bytes (mallopt takes an int): freed heap is kept for the next step
HEAP_ARENAS = 1  # every thread allocates from that one heap (a thread's own arena maps requests over 64 MiB afresh)


def pin_heap() -> dict[str, Any]:
    """Fix glibc malloc's mmap and trim thresholds for this process, so that loops compared in it get one policy.

    Left alone, glibc maps a request over 32 MiB (one 256 x 50,257 fp32 logits slice is 51 MiB) freshly and unmaps it
    on free, so each such tensor costs a minor fault per 4 KiB page, unless the heap by chance holds a free chunk that
    big: the same teacher forward then took 0.07 s in one loop and 0.13 s in the other. Pinned (and with one arena, as
    a thread's own arena would still map its large requests), large buffers come from the heap and are reused once
    the heap has grown to a step's peak. Where there is no glibc, nothing changes (`applied` False)."""
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        applied = all(libc.mallopt(option, value) == 1 for option, value in  # M_MMAP_THRESHOLD, M_TRIM_THRESHOLD,
                      ((-3, HEAP_MMAP_THRESHOLD), (-1, HEAP_TRIM_THRESHOLD), (-8, HEAP_ARENAS)))  # M_ARENA_MAX
    except (OSError, AttributeError):
        applied = False
    return {"policy": "pinned", "applied": applied, "mmap_threshold": HEAP_MMAP_THRESHOLD,
            "trim_threshold": HEAP_TRIM_THRESHOLD, "arenas": HEAP_ARENAS}


def minor_faults() -> int:
    """Minor page faults of this process so far (every thread): fresh pages touched."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


# --- timing ---------------------------------------------------------------------------------------------


def sync(device: str | torch.device) -> None:
    """Wait for the device's queued work (CUDA), so a clock read after it measures that work."""
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


class PhaseClock:
    """Seconds per phase of one step: `lap(phase)` charges the time since the previous lap (or `start`) to
    `phase`, after synchronising `device`."""

    def __init__(self, device: str | torch.device) -> None:
        self.device = device
        self.parts: dict[str, float] = {}
        self._t0 = self._last = time.perf_counter()

    def start(self) -> None:
        sync(self.device)
        self.parts = {}
        self._t0 = self._last = time.perf_counter()

    def lap(self, phase: str) -> None:
        sync(self.device)
        now = time.perf_counter()
        self.parts[phase] = self.parts.get(phase, 0.0) + now - self._last
        self._last = now

    @property
    def total(self) -> float:
        return self._last - self._t0


def step_figures(rows: Sequence[Mapping[str, Any]], warmup: int, phases: Sequence[str]) -> dict[str, Any]:
    """One run's figures from its step rows (`tokens` this step, `step_s`, `time` per phase, `loss`), the first
    `warmup` steps left out: median student tokens/s over the steps and the median seconds of each phase."""
    kept = rows[warmup:]
    if not kept:
        raise ValueError(f"{len(rows)} steps leave nothing after {warmup} warm-up steps; raise --steps")
    tps = [r["tokens"] / r["step_s"] for r in kept]
    return {"tokens_per_s": statistics.median(tps), "step_s": statistics.median(r["step_s"] for r in kept),
            "time": {k: statistics.median(r["time"].get(k, 0.0) for r in kept) for k in phases},
            "losses": [round(float(r["loss"]), 6) for r in rows], "steps_timed": len(kept)}


# --- the engine, driven through its public path -----------------------------------------------------------


@functools.cache
def _steps_only_class() -> type[Loop]:
    from xtalign.distill.loop import Loop

    class StepsOnlyLoop(Loop):
        """The engine's loop with its evals and checkpoints left out: only training steps run."""

        def _eval_student(self) -> dict[str, Any]:
            return {}

        def _eval_teachers(self) -> None:
            return None

        def checkpoint(self) -> Path:
            return self.run_dir

    return StepsOnlyLoop


def steps_only_loop(parts: RunParts, run_dir: Path) -> Loop:
    """The engine's `Loop` over `parts`, writing `run_dir/metrics.jsonl`, with evals and checkpoints off (the
    class is made on first use, so that importing this module does not import torch)."""
    from xtalign.distill.metrics import Sinks

    return _steps_only_class()(parts, run_dir, Sinks(run_dir, []))


class _SyncedSource:
    """A teacher source whose `submit` returns once the device has finished the forward (CUDA), so the
    engine's teacher / student split is real on a GPU as it is in the bare loop; the same everywhere else."""

    def __init__(self, inner: TeacherSource, device: str) -> None:
        self._inner, self._device = inner, device

    def submit(self, batch: Batch) -> TeacherAnswer:
        answer = self._inner.submit(batch)
        sync(self._device)
        return answer

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def engine_rows(cfg: DistillConfig, run_dir: Path) -> list[dict[str, Any]]:
    """Train `cfg` for `cfg.steps` steps through `build_run` + the engine's loop; the step rows of its
    metrics.jsonl, each with `tokens` made per-step (the file counts them cumulatively)."""
    from xtalign.distill.build import build_run

    run_dir.mkdir(parents=True, exist_ok=True)
    parts = build_run(cfg, run_dir)
    try:
        if cfg.device == "cuda" and cfg.backend == "local":
            parts.sources = [_SyncedSource(s, "cuda") for s in parts.sources]  # type: ignore[misc]
        steps_only_loop(parts, run_dir).run()
    finally:
        parts.close()
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    seen = 0
    for r in rows:
        r["tokens"], seen = r["tokens"] - seen, r["tokens"]
    return rows


# --- the full-logits baseline teacher ---------------------------------------------------------------------


class FullLogitsTeacher:
    """The best plain-PyTorch full-logits teacher forward over `worker`'s model: the body's hidden states, ONE
    ``[B·T, V]`` fp32 logits tensor from the LM head, soft-capped in place where the model caps (Gemma:
    ``cap·tanh(z/cap)``, as `TeacherWorker` does), top-k and the target's logit read from it, then divided by
    the temperature in place (only when T != 1) and reduced to its logsumexp in place (max, subtract, exp,
    sum): no second full-size buffer. Same inputs and output as `TeacherWorker.forward`."""

    def __init__(self, worker: TeacherWorker) -> None:
        self.w = worker

    def _hidden(self, ids: np.ndarray, lengths: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        import torch

        dev = self.w.device
        b, t = ids.shape
        tids = torch.as_tensor(ids, dtype=torch.long, device=dev).clamp_min(0)  # [B, T]
        mask = torch.arange(t, device=dev)[None, :] < torch.as_tensor(lengths, device=dev)[:, None]  # [B, T]
        out = self.w.body(input_ids=tids, attention_mask=mask.long(), use_cache=False)
        hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]  # [B, T, H]
        return hidden.masked_fill(~mask.unsqueeze(-1), 0.0).reshape(b * t, -1), mask.reshape(-1)

    def _full_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        import torch

        z = self.w.head(hidden)  # [N, V]: the one full-size buffer (fp32 where the weights are)
        if z.dtype != torch.float32:  # a bf16 head (GPU): upcast once, as TeacherWorker does per slice
            z = z.float()
        if self.w.softcap is not None:
            z.div_(self.w.softcap).tanh_().mul_(self.w.softcap)
        return z

    def forward(self, ids: np.ndarray, lengths: np.ndarray, targets: np.ndarray) -> TeacherTopK:
        """ids/targets ``[B, T]`` (-1 padded / -100 ignored), lengths ``[B]`` → `TeacherTopK` on the device."""
        import torch

        from xtalign.losses import TeacherTopK

        w, (b, t) = self.w, ids.shape
        with torch.no_grad():
            hidden, mask = self._hidden(ids, lengths)
            tgt = torch.as_tensor(targets, dtype=torch.long, device=w.device).reshape(-1)  # [N]
            tgt = torch.where(mask, tgt, -100)
            z = self._full_logits(hidden)  # [N, V]
            top = torch.topk(z, w.top_k, dim=-1)  # [N, K] raw logits
            picked = z.gather(-1, tgt.clamp_min(0).unsqueeze(-1)).squeeze(-1)  # [N]
            if w.temperature != 1.0:
                z.div_(w.temperature)
                picked = picked / w.temperature
            peak = z.amax(-1, keepdim=True)  # [N, 1]
            lse = z.sub_(peak).exp_().sum(-1).log_() + peak.squeeze(-1)  # [N]; z is spent
            tlp = torch.where(tgt >= 0, picked - lse, 0.0)
        return TeacherTopK(logits=top.values.to(torch.bfloat16).reshape(b, t, -1),
                           ids=top.indices.to(torch.int32).reshape(b, t, -1), logsumexp=lse.reshape(b, t),
                           vocab_size=w.loaded.rows, temperature=w.temperature, target_logprob=tlp.reshape(b, t))
