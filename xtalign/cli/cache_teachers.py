"""`xtalign cache-teachers`: run a config's teachers once over the batches its run would see and keep
their top-k outputs (safetensors shards + manifest), so many student runs can share one teacher pass."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

EXAMPLE = """example:
  xtalign cache-teachers --config distill/configs/gemma3-teacher-cpu.yaml --out out/cache
      # -> out/cache/gemma3-270m/{manifest.json, shard-*.safetensors, heldout_eval.json}
  xtalign distill --config distill/configs/gemma3-teacher-cpu.yaml --cache-teachers out/cache --out out/runs/g3
      # reads the cache instead of running Gemma-3 (refused if made for another teacher, data, k or temperature)
  xtalign cache-teachers --config distill/configs/gemma3-teacher-cpu.yaml backend=ray --out out/cache
      # the same cache, filled by the teachers' Ray actors
"""


def add_parser(sub: Any, verb: str) -> None:
    p = sub.add_parser(verb, help="fill a teacher cache without training", description=__doc__, epilog=EXAMPLE,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, as for `xtalign distill` "
                   "(backend=ray fills the cache from the teachers' Ray actors)")
    p.add_argument("--config", type=Path, required=True, help="run config (YAML)")
    p.add_argument("--out", type=Path, required=True, help="cache directory (one sub-directory per teacher)")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import json

    from xtalign.cli.common import usage_errors
    from xtalign.distill.config import config_to_dict, load_config
    from xtalign.distill.engine import fill_cache

    with usage_errors():
        cfg = load_config(args.config, list(args.overrides))
        if args.dry_run:
            print(json.dumps(config_to_dict(cfg), indent=2, sort_keys=True))
            return 0

        def tick(n: int, total: int) -> None:
            if sys.stderr.isatty():
                print(f"\rbatch {n}/{total}", end="", file=sys.stderr, flush=True)

        result = fill_cache(cfg, args.out, on_batch=tick)
    if sys.stderr.isatty():
        print(file=sys.stderr)
    for label, info in result["teachers"].items():
        bpb = info["heldout"]["bits_per_byte"] if info["heldout"] else float("nan")
        print(f"{label}: {info['forwards']} batches computed, {info['cache_hits']} already cached -> {info['dir']}"
              f"  (held-out {bpb:.4f} bits/byte)")
    print(f"{result['batches']} batches in {result['seconds']:.1f} s")
    return 0
