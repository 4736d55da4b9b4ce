"""The student's sampling loop against a bare `model.generate` on the same model and prompts; and what async
teachers buy an on-policy run on Ray.

    .venv/bin/python benchmarks/bench_generate.py          # -> benchmarks/results/bench_generate.json
    .venv/bin/python benchmarks/bench_generate.py --skip-ray

Generation: the real SmolLM2-135M-Instruct (zoo `smollm2-135m`, fp32 on CPU) continues B prompts of the
pinned corpus (or Botchan) by N new tokens, every row to the full N (no stop id, so both do the same work):
xtalign's `rollout.sampling.sample` (KV cache, one generator per row) against `model.generate(do_sample=True,
top_k=0, min_new_tokens=N)`; alternating, ≥ 5 repeats, new tokens per second (median and spread), target
≥ 0.90 of the bare loop. Ray: the tiny on-policy recipe (random models, every row a student sample) with
`backend: ray` sync against `ray.async: true` (the teachers score batch n while the student samples n+1),
≥ 3 repeats each; student tokens per second.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from common import begin, parser, ratio, spread, write_results  # noqa: E402

from xtalign.distill.rollout.sampling import SamplingConfig, sample  # noqa: E402


def _prompts(tok: Any, n: int, chars: int) -> list[np.ndarray]:
    from xtalign.distill.data.corpus import read_documents

    corpus = ROOT / "out" / "corpus" / "train.jsonl"
    docs = read_documents(str(corpus) if corpus.is_file() else "botchan")
    bos = tok.vocab.roles.get("bos")
    return [np.array(([bos] if bos is not None else []) + tok.encode(d[:chars]), np.int64) for d in docs[:n]]


def _ours(model: Any, prompts: list[np.ndarray], n: int, pad: int) -> float:
    t0 = time.perf_counter()
    out = sample(model, prompts, cfg=SamplingConfig(max_new_tokens=n), stop_ids=[], seeds=list(range(len(prompts))),
                 pad_id=pad)
    assert all(o.shape[0] == n for o in out)
    return time.perf_counter() - t0


def _bare(model: Any, prompts: list[np.ndarray], n: int, pad: int) -> float:
    width = max(p.shape[0] for p in prompts)
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for b, p in enumerate(prompts):
        ids[b, width - p.shape[0]:], mask[b, width - p.shape[0]:] = torch.as_tensor(p), 1
    t0 = time.perf_counter()
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, top_k=0, top_p=1.0, temperature=1.0,
                             max_new_tokens=n, min_new_tokens=n, pad_token_id=pad)
    assert out.shape[1] == width + n
    return time.perf_counter() - t0


def generation(args: Any) -> dict[str, Any]:
    from xtalign.distill.models.load import load_model

    loaded = load_model(model="smollm2-135m")
    model, tok = loaded.model.eval(), loaded.tokenizer
    prompts = _prompts(tok, args.batch_size, args.prompt_chars)
    pad = int(tok.vocab.roles.get("pad", tok.vocab.roles.get("eos", 0)))
    n = 4 if args.smoke else args.new_tokens
    _ours(model, prompts, 2, pad)
    _bare(model, prompts, 2, pad)
    tps: dict[str, list[float]] = {"xtalign": [], "bare_generate": []}
    for _ in range(1 if args.smoke else args.repeats):
        tps["xtalign"].append(n * len(prompts) / _ours(model, prompts, n, pad))
        tps["bare_generate"].append(n * len(prompts) / _bare(model, prompts, n, pad))
    figs = {k: spread(v) for k, v in tps.items()}
    return {"model": "smollm2-135m (fp32, CPU)", "batch_size": len(prompts), "new_tokens": n,
            "prompt_tokens": [int(p.shape[0]) for p in prompts], "new_tokens_per_s": figs,
            "xtalign_over_bare": ratio(figs["xtalign"], figs["bare_generate"]), "target": 0.90}


def _ray_run(cfg: Path, out: Path, async_teachers: bool) -> float:
    import json

    from tests.test_distill_engine import distill

    code = distill("--config", cfg, f"ray.async={str(async_teachers).lower()}", "--out", out, "--overwrite")
    assert code == 0
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    steady = rows[2:] or rows
    return sum(r["tokens"] - p["tokens"] for p, r in zip(steady, steady[1:], strict=False)) / max(
        1e-9, sum(r["step_s"] for r in steady[1:]))


def ray_async(args: Any) -> dict[str, Any]:
    from tests.test_distill_engine import fast_config

    runs: dict[str, list[float]] = {"sync": [], "async": []}
    steps = 4 if args.smoke else args.ray_steps
    with tempfile.TemporaryDirectory() as tmp:
        cfg = fast_config(Path(tmp), steps=steps, backend="ray", ray={"num_cpus": 4},
                          policy={"mode": "on", "max_new_tokens": 8, "prompt_chars": 64}, seq_len=64)
        for _ in range(1 if args.smoke else args.ray_repeats):
            for name in ("sync", "async"):
                runs[name].append(_ray_run(cfg, Path(tmp) / name, name == "async"))
    figs = {k: spread(v) for k, v in runs.items()}
    return {"config": "tests' tiny on-policy config (random mistral-v1 student <- random gpt2 teacher), one CPU "
                      "per actor", "steps": steps, "student_tokens_per_s": figs,
            "async_over_sync": ratio(figs["async"], figs["sync"])}


def main(argv: list[str] | None = None) -> int:
    p = parser("bench_generate", __doc__)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--prompt-chars", type=int, default=256)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--ray-steps", type=int, default=12)
    p.add_argument("--ray-repeats", type=int, default=3)
    p.add_argument("--skip-ray", action="store_true")
    args = p.parse_args(argv)
    prov = begin(args, "bench_generate")
    body: dict[str, Any] = {"generation": generation(args)}
    g = body["generation"]
    print(f"sampling: xtalign {g['new_tokens_per_s']['xtalign']['median']:,.1f} vs bare generate "
          f"{g['new_tokens_per_s']['bare_generate']['median']:,.1f} new tokens/s -> {g['xtalign_over_bare']:.2f} "
          "(target >= 0.90)")
    if not args.skip_ray:
        body["ray"] = ray_async(args)
        r = body["ray"]
        print(f"on-policy on Ray: sync {r['student_tokens_per_s']['sync']['median']:,.0f}, async "
              f"{r['student_tokens_per_s']['async']['median']:,.0f} student tokens/s -> {r['async_over_sync']:.2f}x")
    write_results(args, "bench_generate", prov, body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
