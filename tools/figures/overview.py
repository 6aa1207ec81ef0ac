"""Render the README's overview figure: one synthetic radiograph, its IIE map, its information
groups and the entropy weight map with anchors drawn from it.

Usage: python -m tools.figures.overview [output.png]   (default: docs/overview.png)
"""

import sys
from pathlib import Path

import numpy as np
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure

from piaug import info, plots
from piaug.data import input_pipeline, synthetic
from tools import DOCS


def main(out: str | None = None) -> Path:
    path = Path(out) if out else DOCS / "overview.png"
    example = synthetic.SyntheticDataset(1, seed=0, size=(384, 384), num_landmarks=19)[0]
    image = example["image"]
    iie = np.asarray(info.entropy_map(image, info.disk(10)))
    groups = np.asarray(info.information_groups(iie, (2.0, 4.5)))
    weights = input_pipeline.weights(iie, "exponential", gamma=0.3)
    rng = np.random.default_rng(0)
    anchors = np.stack([input_pipeline.sample_anchor(rng, weights) for _ in range(300)])
    fig = Figure(figsize=(16, 4.4), layout="constrained")
    axes = fig.subplots(1, 4)
    axes[0].imshow(image, cmap="gray", vmin=0, vmax=255)
    axes[0].plot(*example["landmarks"].T, "o", ms=3, color="lime", mec="black", mew=0.4)
    axes[0].set_title("an X-ray-like image and its 19 landmarks")
    shown = axes[1].imshow(iie, cmap="magma")
    fig.colorbar(shown, ax=axes[1], shrink=0.8, label="bits")
    axes[1].set_title("image information entropy (IIE), disk(10)")
    axes[2].imshow(groups, cmap=ListedColormap(plots.GROUP_COLORS), vmin=-0.5, vmax=2.5)
    axes[2].set_title("groups: low < 2 <= medium < 4.5 <= high")
    axes[3].imshow(weights, cmap="viridis")
    axes[3].plot(anchors[:, 1], anchors[:, 0], ".", ms=2.5, color="white")
    axes[3].set_title("weight map IIE^0.3 and 300 anchors drawn")
    for ax in axes:
        ax.set_axis_off()
    fig.savefig(path, dpi=80)
    return path


if __name__ == "__main__":
    print(main(sys.argv[1] if len(sys.argv) > 1 else None))
