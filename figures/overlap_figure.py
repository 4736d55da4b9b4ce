"""Regenerate the X-Token guide's cross-tokenizer similarity figure and a larger zoo matrix.

    .venv/bin/python figures/overlap_figure.py                 # computes both, writes figures/*.png
    .venv/bin/python figures/overlap_figure.py --from out/overlap/overlap.json   # guide figure from a result
    .venv/bin/python figures/overlap_figure.py --zoo-from out/figures/overlap_zoo.json   # zoo figures from a result

Outputs: overlap_guide.png (the guide's set), overlap_zoo.png (the zoo in registry order) and
overlap_zoo_clustered.png (the zoo ordered by average-linkage hierarchical clustering on 1 − overlap, with
its dendrogram, so tokenizer families sit together).

The guide's six tokenizers are Mistral-NeMo (tekken), Qwen3, Llama-3.2, Gemma-3, OLMo2-SuperBPE and
gpt-oss (o200k-harmony); OLMo2-SuperBPE cannot be had offline, so the figure shows the other five.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from xtalign.overlap import compute_overlap
from xtalign.plots import heatmap
from xtalign.zoo import load_tokenizer

GUIDE_SET = ["tekken", "qwen3", "llama3", "gemma3", "gpt-oss"]
ZOO_SET = ["gpt2", "cl100k", "o200k", "llama2", "llama3", "qwen3", "tekken", "mistral-v3", "gemma3", "phi3",
           "smollm2", "falcon", "starcoder2", "deepseek-llm", "gpt-neox", "command-r", "claude-v1", "rwkv-world"]
HERE = Path(__file__).resolve().parent


def _result(names: list[str]) -> dict:
    return compute_overlap([load_tokenizer(n).vocab for n in names], metric="min").to_json()


def _plot(res: dict, path: Path, title: str) -> None:
    labels = [f"{n} ({s // 1000}k)" for n, s in zip(res["tokenizers"], res["sizes"], strict=True)]
    heatmap(res["matrix"], labels, path, title=title, cbar_label="|A∩B| / min(|A|,|B|)",
            col_labels=res["tokenizers"])


def cluster_order(matrix: list[list[float]]) -> tuple[list[int], np.ndarray]:
    """Leaf order of an average-linkage clustering on the distance 1 − overlap (symmetrised), and the linkage.

    Optimal leaf ordering puts the most similar neighbours next to each other inside each cluster.
    """
    from scipy.cluster.hierarchy import leaves_list, linkage, optimal_leaf_ordering
    from scipy.spatial.distance import squareform

    m = np.asarray(matrix, dtype=float)
    dist = np.clip(1.0 - (m + m.T) / 2.0, 0.0, 1.0)  # [N, N]
    np.fill_diagonal(dist, 0.0)
    condensed = squareform(dist, checks=False)
    link = optimal_leaf_ordering(linkage(condensed, method="average"), condensed)
    return [int(i) for i in leaves_list(link)], link


def _plot_clustered(res: dict, path: Path) -> None:
    """The zoo matrix in cluster order, a dendrogram above it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy.cluster.hierarchy import dendrogram

    order, link = cluster_order(res["matrix"])
    m = np.asarray(res["matrix"], dtype=float)[np.ix_(order, order)]
    names = [res["tokenizers"][i] for i in order]
    labels = [f"{n} ({res['sizes'][i] // 1000}k)" for n, i in zip(names, order, strict=True)]
    n = len(names)
    size = max(4.0, 0.62 * n + 2.5)
    fig = plt.figure(figsize=(size + 1.2, size + 1.6), dpi=85)
    grid = fig.add_gridspec(2, 2, height_ratios=[1.3, size], width_ratios=[size, 0.25], hspace=0.02, wspace=0.04)
    top, ax, cax = fig.add_subplot(grid[0, 0]), fig.add_subplot(grid[1, 0]), fig.add_subplot(grid[1, 1])
    dendrogram(link, ax=top, no_labels=True, color_threshold=0, above_threshold_color="0.3")
    top.set_xlim(0, 10 * n)
    top.axis("off")
    im = ax.imshow(m, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(n), names, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(n), labels, fontsize=8)
    for i in range(n):
        for j in range(n):
            ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=5.5 if n > 10 else 8,
                    color="black" if m[i, j] > 0.6 else "white")
    fig.colorbar(im, cax=cax, label="|A∩B| / min(|A|,|B|)")
    top.set_title(f"Canonical-byte overlap across {n} zoo tokenizers, ordered by hierarchical clustering\n"
                  "(average linkage on 1 − overlap; families sit together)", fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--from", dest="src", type=Path, help="overlap.json of the guide set (else computed)")
    ap.add_argument("--zoo-from", dest="zoo_src", type=Path, help="overlap_zoo.json of the zoo set (else computed)")
    ap.add_argument("--out-dir", type=Path, default=HERE)
    args = ap.parse_args(argv)
    guide = json.loads(args.src.read_text()) if args.src else _result(GUIDE_SET)
    _plot(guide, args.out_dir / "overlap_guide.png",
          "Cross-tokenizer similarity (exact canonical bytes)\nintersection / min vocabulary size")
    zoo = json.loads(args.zoo_src.read_text()) if args.zoo_src else _result(ZOO_SET)
    n_zoo = len(zoo["tokenizers"])
    _plot(zoo, args.out_dir / "overlap_zoo.png", f"Canonical-byte overlap across {n_zoo} zoo tokenizers")
    _plot_clustered(zoo, args.out_dir / "overlap_zoo_clustered.png")
    if not args.zoo_src:
        (args.out_dir.parent / "out" / "figures").mkdir(parents=True, exist_ok=True)
        (args.out_dir.parent / "out" / "figures" / "overlap_zoo.json").write_text(json.dumps(zoo, indent=1))
    print(f"wrote {args.out_dir / 'overlap_guide.png'}, {args.out_dir / 'overlap_zoo.png'} and "
          f"{args.out_dir / 'overlap_zoo_clustered.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
