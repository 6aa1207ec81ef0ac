"""Render a 2 x 4 montage of synthetic subjects (seed 0, 384 x 384) with their landmarks.

Usage: python -m tools.figures.montage [output.png]   (default: docs/synthetic_montage.png)
"""

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from piaug.data import synthetic  # noqa: E402
from tools import DOCS  # noqa: E402


def main(out: str | None = None) -> Path:
    path = Path(out) if out else DOCS / "synthetic_montage.png"
    ds = synthetic.SyntheticDataset(8, seed=0, size=(384, 384), num_landmarks=19)
    fig, axes = plt.subplots(2, 4, figsize=(16, 8.6), dpi=100)
    colors = plt.get_cmap("tab20")
    for i, ax in enumerate(axes.ravel()):
        ex = ds[i]
        ax.imshow(ex["image"], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        for k, (x, y) in enumerate(ex["landmarks"]):
            ax.plot(x, y, "o", ms=3.5, color=colors(k % 20), mec="black", mew=0.4)
            ax.text(x + 4, y - 4, str(k + 1), color=colors(k % 20), fontsize=6.5)
        ax.set_title(f"{ex['id']}  ({ex['spacing']:.3f} mm/px)", fontsize=10)
        ax.set_axis_off()
    fig.suptitle("piaug synthetic cephalogram-like images (seed 0, 384 x 384, 19 landmarks)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


if __name__ == "__main__":
    print(main(sys.argv[1] if len(sys.argv) > 1 else None))
