"""Figures of volumes as orthogonal slices (``piaug.plots`` draws images; its figure functions
hand ``(D, H, W)`` arrays here).

A volume's point is ``(x, y, z)`` voxels = (column, row, slice) of the ``(D, H, W)`` array
(docs/volumes.md). Three views pass through a point: axial (the slice ``z``, axes x and y),
coronal (the row ``y``, axes x and z) and sagittal (the column ``x``, axes y and z), each drawn
in the proportions of the voxel ``spacing`` (x, y, z mm) when it is known. Points off a view's
plane are drawn projected onto it, fainter with their distance from it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure

VIEWS = ("axial", "coronal", "sagittal")
# Per view: the point axis it cuts (x 0, y 1, z 2) and the point axes drawn across and down.
_CUT = {"axial": 2, "coronal": 1, "sagittal": 0}
_AXES = {"axial": (0, 1), "coronal": (0, 2), "sagittal": (1, 2)}


def _subplots(rows: int, cols: int, figsize) -> tuple[Figure, np.ndarray]:
    fig = Figure(figsize=figsize, layout="constrained")
    return fig, fig.subplots(rows, cols, squeeze=False)


def view(volume, point, name: str) -> np.ndarray:
    """The slice of ``volume`` ``(D, H, W)`` named ``name`` (``VIEWS``) through ``point``
    (x, y, z voxels, rounded and clipped into the volume): rows down its second drawn axis."""
    volume = np.asarray(volume)
    cut = _CUT[name]
    n = volume.shape[2 - cut]  # the array axis of point axis `cut`
    index = int(np.clip(np.round(point[cut]), 0, n - 1))
    return np.take(volume, index, axis=2 - cut)


def show(ax, volume, point, name: str, spacing=None, **kwargs):
    """``ax.imshow`` of view ``name`` through ``point``: in the spacing's proportions, the
    slices (z) increasing upwards in the coronal and sagittal views (NIfTI's superior up)."""
    origin = "upper" if name == "axial" else "lower"
    return ax.imshow(
        view(volume, point, name), aspect=aspect(name, spacing), origin=origin, **kwargs
    )


def aspect(name: str, spacing=None) -> float:
    """``imshow``'s aspect for view ``name``: the drawn axes' spacing ratio (1 when unknown)."""
    if spacing is None or not np.isfinite(np.asarray(spacing, np.float64)).all():
        return 1.0
    across, down = _AXES[name]
    spacing = np.broadcast_to(np.asarray(spacing, np.float64), (3,))
    return float(spacing[down] / spacing[across])


def _mark(ax, points, name: str, centre, **style) -> None:
    """``points`` (N, 3) drawn on view ``name`` through ``centre``: those within a voxel of the
    plane solid, the others fainter with distance."""
    points = np.asarray(points, np.float64).reshape(-1, 3)
    across, down = _AXES[name]
    off = np.abs(points[:, _CUT[name]] - np.round(centre[_CUT[name]]))
    alpha = np.clip(1.0 - (off - 1.0) / 8.0, 0.25, 1.0)
    ax.scatter(points[:, across], points[:, down], alpha=alpha, **style)


def info_panel(image, iie, groups, landmarks, thresholds, path: Path, *, title="", spacing=None):
    """Image | IIE | information groups of a volume, as its axial, coronal and sagittal slices
    (rows) through the landmarks' centroid (the centre when unlabelled), landmarks marked."""
    from piaug import plots  # (the group colours and legend; plots imports this module)

    landmarks = np.asarray(landmarks, np.float64).reshape(-1, 3)
    labelled = landmarks[np.isfinite(landmarks).all(axis=1)]
    shape_xyz = np.asarray(np.shape(image)[::-1], np.float64)
    centre = labelled.mean(0) if len(labelled) else (shape_xyz - 1) / 2
    top = max(8.0, float(np.max(iie)))
    fig, axes = _subplots(3, 3, figsize=(11, 10.5))
    for row, name in enumerate(VIEWS):
        show(axes[row, 0], image, centre, name, spacing, cmap="gray", vmin=0, vmax=255)
        shown = show(axes[row, 1], iie, centre, name, spacing, cmap="magma", vmin=0, vmax=top)
        colours = ListedColormap(plots.GROUP_COLORS)
        show(axes[row, 2], groups, centre, name, spacing, cmap=colours, vmin=-0.5, vmax=2.5)
        for col, what in enumerate(("image", "IIE (bits)", "information groups")):
            ax = axes[row, col]
            _mark(ax, labelled, name, centre, s=14, c="#00e5ff", edgecolors="k", lw=0.5)
            ax.set_title(f"{what}, {name}", fontsize=9)
            ax.set_axis_off()
    fig.colorbar(shown, ax=axes[:, 1], shrink=0.6)
    plots.group_legend(axes[2, 2], thresholds)
    fig.suptitle(title)
    fig.savefig(path, dpi=80)
    return fig


def landmark_views(volume, pred, path: Path, *, true=None, title="", spacing=None, max_rows=16):
    """Each landmark's three orthogonal slices through its predicted point (a row each, the
    first ``max_rows``): the prediction a red cross, the truth (when given) a cyan dot, joined
    by a line when both lie near the plane."""
    pred = np.asarray(pred, np.float64).reshape(-1, 3)
    true = None if true is None else np.asarray(true, np.float64).reshape(-1, 3)
    rows = min(len(pred), int(max_rows))
    fig, axes = _subplots(rows, 3, figsize=(9, 2.9 * rows + 0.4))
    for i in range(rows):
        for col, name in enumerate(VIEWS):
            ax = axes[i, col]
            show(ax, volume, pred[i], name, spacing, cmap="gray", vmin=0, vmax=255)
            across, down = _AXES[name]
            if true is not None and np.isfinite(true[i]).all():
                ax.plot(
                    [true[i, across], pred[i, across]],
                    [true[i, down], pred[i, down]],
                    color="#ffd54f",
                    lw=0.8,
                )
                _mark(ax, true[i], name, pred[i], s=18, c="#00e5ff", edgecolors="k", lw=0.5)
            ax.scatter([pred[i, across]], [pred[i, down]], s=26, c="#ff1744", marker="x", lw=1.2)
            ax.set_title(f"landmark {i + 1}, {name}", fontsize=8)
            ax.set_axis_off()
    fig.suptitle(title, fontsize=9)
    fig.savefig(path, dpi=80)
    return fig


def middle(volume) -> np.ndarray:
    """The middle axial slice of a ``(D, H, W)`` volume (a 2-D stand-in for a figure that
    shows one picture of it)."""
    volume = np.asarray(volume)
    return volume[volume.shape[0] // 2]


def axial_batch(batch: dict) -> dict:
    """A training batch of volumes (``transforms.per_crop``'s: ``image`` ``(B, D, H, W)``,
    ``crop`` ``(B, C, C, C)``, ``anchor`` and ``crop_anchor`` ``(B[, K], 3)``) as one of images
    for ``plots.training_batch``: each volume's and crop's axial slice through its first anchor,
    the anchors' (row, col) on it (the others projected onto that slice)."""
    out = dict(batch)
    anchors = np.asarray(batch["anchor"])
    crop_anchors = np.asarray(batch["crop_anchor"])
    first = anchors.reshape(len(anchors), -1, 3)[:, 0]
    crop_first = crop_anchors.reshape(len(anchors), -1, 3)[:, 0]
    images, crops = np.asarray(batch["image"]), np.asarray(batch["crop"])
    out["image"] = np.stack([v[int(a[0])] for v, a in zip(images, first, strict=True)])
    out["crop"] = np.stack([c[int(a[0])] for c, a in zip(crops, crop_first, strict=True)])
    out["anchor"], out["crop_anchor"] = anchors[..., 1:], crop_anchors[..., 1:]
    return out
