"""Small matplotlib figures (imported lazily by the CLI and figures/ scripts)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


def heatmap(matrix: Sequence[Sequence[float]], labels: Sequence[str], path: Path, *, title: str,
            cbar_label: str = "", fmt: str = "{:.2f}", col_labels: Sequence[str] | None = None) -> Path:
    """An annotated heatmap PNG (Agg backend, no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    m = np.asarray(matrix, dtype=float)
    cols = list(col_labels or labels)
    size = max(4.0, 0.75 * max(len(labels), len(cols)) + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size), dpi=110)
    im = ax.imshow(m, cmap="viridis", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(len(cols)), cols, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    small = len(labels) > 10
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            ax.text(j, i, fmt.format(m[i, j]), ha="center", va="center", fontsize=6 if small else 9,
                    color="black" if m[i, j] > 0.6 else "white")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label=cbar_label)
    ax.set_title(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
