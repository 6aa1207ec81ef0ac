"""Figures drawn from saved arrays (never inside jit or the trainer): PNG files for people."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402

GROUP_COLORS = ("#3b4cc0", "#8fbc8f", "#d9534f")  # low, medium, high


def info_panel(image, iie, groups, landmarks, thresholds, path: Path, *, title: str = "") -> None:
    """Image | IIE map | information groups, landmarks marked on all three."""
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.6), constrained_layout=True)
    landmarks = np.asarray(landmarks)
    axes[0].imshow(image, cmap="gray", vmin=0, vmax=255)
    axes[0].set_title("image")
    shown = axes[1].imshow(iie, cmap="magma", vmin=0, vmax=max(8.0, float(np.max(iie))))
    axes[1].set_title("IIE (bits)")
    fig.colorbar(shown, ax=axes[1], shrink=0.8)
    axes[2].imshow(groups, cmap=ListedColormap(GROUP_COLORS), vmin=-0.5, vmax=2.5)
    low, high = thresholds
    axes[2].set_title(f"groups: low < {low:g} <= medium < {high:g} <= high")
    for ax in axes:
        ax.scatter(landmarks[:, 0], landmarks[:, 1], s=14, c="#00e5ff", edgecolors="k", lw=0.5)
        ax.set_axis_off()
    fig.suptitle(title)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def iie_histogram(edges, counts, thresholds, landmark_iie, path: Path, *, title: str = "") -> None:
    """Distribution of IIE over all pixels (and at landmarks), group thresholds marked."""
    fig, ax = plt.subplots(figsize=(7, 4), constrained_layout=True)
    widths = np.diff(edges)
    density = np.asarray(counts) / max(1, np.sum(counts)) / widths
    ax.bar(edges[:-1], density, widths, align="edge", color="0.6", label="all pixels")
    if landmark_iie is not None and np.size(landmark_iie):
        ax.hist(
            np.ravel(landmark_iie),
            edges,
            density=True,
            histtype="step",
            lw=2,
            color="#d9534f",
            label="landmarks",
        )
    for t in thresholds:
        ax.axvline(t, color="k", ls="--", lw=1)
    ax.set_xlabel("IIE (bits)")
    ax.set_ylabel("density")
    ax.set_title(title)
    ax.legend()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def overlay(image, true, pred, path: Path, *, title: str = "") -> None:
    """Predicted (red crosses) against true (cyan dots) landmarks, joined by lines; (x, y)."""
    true, pred = np.asarray(true), np.asarray(pred)
    fig, ax = plt.subplots(figsize=(6, 6), constrained_layout=True)
    ax.imshow(image, cmap="gray", vmin=0, vmax=255)
    for (x0, y0), (x1, y1) in zip(true, pred, strict=True):
        ax.plot([x0, x1], [y0, y1], color="#ffd54f", lw=0.8)
    ax.scatter(true[:, 0], true[:, 1], s=16, c="#00e5ff", edgecolors="k", lw=0.5, label="true")
    ax.scatter(pred[:, 0], pred[:, 1], s=22, c="#ff1744", marker="x", lw=1.2, label="predicted")
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(title, fontsize=9)
    ax.axis("off")
    fig.savefig(path, dpi=110)
    plt.close(fig)
