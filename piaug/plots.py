"""Figures drawn from saved arrays (never inside jit or the trainer): PNG files for people."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle

from piaug import volume_plots
from piaug.data import transforms


def _subplots(*args, **kwargs):
    """``(figure, axes)`` of a figure outside pyplot: no backend is chosen or changed (a
    notebook's stays inline), and nothing is kept once it is saved."""
    fig = Figure(figsize=kwargs.pop("figsize", None), layout="constrained")
    kwargs.pop("constrained_layout", None)
    return fig, fig.subplots(*args, **kwargs)


GROUP_COLORS = ("#3b4cc0", "#8fbc8f", "#d9534f")  # low, medium, high


def _aspect(image, original_size) -> float:
    """The ``imshow`` aspect that draws ``image`` (a resized copy) in the proportions of its
    ``original_size`` (height, width): a square training grid of a 1935 x 2400 radiograph is
    drawn 2400 tall for 1935 wide, not squashed."""
    if original_size is None:
        return 1.0
    h, w = np.shape(image)[:2]
    oh, ow = (float(v) for v in original_size)
    return (oh / ow) / (h / w)


def group_legend(ax, thresholds) -> None:
    """A legend of the three groups' colours and their IIE ranges."""
    low, high = thresholds
    names = (f"low (< {low:g} bits)", f"medium ({low:g}-{high:g})", f"high (>= {high:g})")
    handles = [Rectangle((0, 0), 1, 1, color=c) for c in GROUP_COLORS]
    ax.legend(handles, names, loc="upper center", bbox_to_anchor=(0.5, -0.02), ncol=3, fontsize=8)


def info_panel(
    image,
    iie,
    groups,
    landmarks,
    thresholds,
    path: Path,
    *,
    title: str = "",
    original_size=None,
    spacing=None,
) -> Figure:
    """Image | IIE map | information groups, landmarks marked on all three, in the proportions
    of ``original_size`` (height, width) when the arrays are a resized copy. A volume
    ``(D, H, W)`` is drawn as three orthogonal slices (``volume_plots.info_panel``; ``spacing``:
    its grid's voxel size, x, y, z mm)."""
    if np.ndim(image) == 3:
        return volume_plots.info_panel(
            image, iie, groups, landmarks, thresholds, path, title=title, spacing=spacing
        )
    aspect = _aspect(image, original_size)
    h, w = np.shape(image)[:2]
    panel_h = 4.2 * min(1.6, max(0.6, aspect * h / w))
    fig, axes = _subplots(1, 3, figsize=(13, panel_h + 0.9), constrained_layout=True)
    landmarks = np.asarray(landmarks)
    axes[0].imshow(image, cmap="gray", vmin=0, vmax=255, aspect=aspect)
    axes[0].set_title("image")
    shown = axes[1].imshow(
        iie, cmap="magma", vmin=0, vmax=max(8.0, float(np.max(iie))), aspect=aspect
    )
    axes[1].set_title("IIE (bits)")
    fig.colorbar(shown, ax=axes[1], shrink=0.8)
    axes[2].imshow(groups, cmap=ListedColormap(GROUP_COLORS), vmin=-0.5, vmax=2.5, aspect=aspect)
    axes[2].set_title("information groups")
    group_legend(axes[2], thresholds)
    for ax in axes:
        ax.scatter(landmarks[:, 0], landmarks[:, 1], s=14, c="#00e5ff", edgecolors="k", lw=0.5)
        ax.set_axis_off()
    fig.suptitle(title)
    fig.savefig(path, dpi=90)
    return fig


def iie_histogram(edges, counts, thresholds, landmark_iie, path: Path, *, title: str = "") -> None:
    """Distribution of IIE over all pixels (and at landmarks), group thresholds marked."""
    fig, ax = _subplots(figsize=(7, 4), constrained_layout=True)
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


def overlay(
    image, true, pred, path: Path, *, title: str = "", max_side: float = 7.0, spacing=None
) -> Figure:
    """Predicted (red crosses) against true (cyan dots) landmarks, joined by lines and
    numbered; (x, y) in ``image``'s pixels, drawn in its own proportions. A volume: each
    landmark's orthogonal slices through its prediction (``volume_plots.landmark_views``)."""
    if np.ndim(image) == 3:
        return volume_plots.landmark_views(
            image, pred, path, true=true, title=title, spacing=spacing
        )
    true, pred = np.asarray(true), np.asarray(pred)
    h, w = np.shape(image)[:2]
    scale = max_side / max(h, w)
    fig, ax = _subplots(figsize=(w * scale, h * scale + 0.5), constrained_layout=True)
    ax.imshow(image, cmap="gray", vmin=0, vmax=255)
    for (x0, y0), (x1, y1) in zip(true, pred, strict=True):
        ax.plot([x0, x1], [y0, y1], color="#ffd54f", lw=0.8)
    ax.scatter(true[:, 0], true[:, 1], s=16, c="#00e5ff", edgecolors="k", lw=0.5, label="true")
    ax.scatter(pred[:, 0], pred[:, 1], s=22, c="#ff1744", marker="x", lw=1.2, label="predicted")
    for i, (x, y) in enumerate(true, start=1):
        ax.annotate(
            str(i), (x, y), xytext=(4, 4), textcoords="offset points", fontsize=7, color="#00e5ff"
        )
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(title, fontsize=9)
    ax.axis("off")
    fig.savefig(path, dpi=110)
    return fig


def _finish(fig, ax, path: Path, xlabel: str, ylabel: str, title: str, *, outside=False) -> Figure:
    """Labels, title and legend of a one-panel figure (``outside``: to the right of the plot,
    clear of what is drawn in it); writes it and returns it."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    if outside:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    else:
        ax.legend(fontsize=8)
    fig.savefig(path, dpi=90)
    return fig


def _shade_groups(ax, thresholds, top: float = 8.0) -> None:
    """The low / medium / high IIE ranges as coloured bands behind a plot over IIE (bits)."""
    edges = [0.0, *thresholds, top]
    for (lo, hi), color, name in zip(
        zip(edges[:-1], edges[1:], strict=True),
        GROUP_COLORS,
        ("low", "medium", "high"),
        strict=True,
    ):
        ax.axvspan(lo, hi, color=color, alpha=0.12, lw=0)
        ax.text(
            (lo + hi) / 2,
            1.0,
            name,
            transform=ax.get_xaxis_transform(),
            ha="center",
            va="top",
            fontsize=8,
            color=color,
        )


def loss_vs_iie(centers, curves: dict, thresholds, path: Path, *, title: str = "") -> None:
    """Fig. 2: mean per-pixel loss and PSI against the anchor's IIE, one line per encoder.

    ``curves``: encoder name -> ``(loss, psi, count)`` per IIE bin (NaN where empty)."""
    fig, axes = _subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    for name, (loss, psi, _) in curves.items():
        axes[0].plot(centers, loss, marker=".", label=name)
        axes[1].plot(centers, psi, marker=".", label=name)
    for ax, label in zip(
        axes, ("InfoNCE loss (sum over scales)", "PSI (mean positive cosine)"), strict=True
    ):
        _shade_groups(ax, thresholds)
        ax.set_xlabel("IIE at the anchor (bits)")
        ax.set_ylabel(label)
        ax.legend()
    fig.suptitle(title)
    fig.savefig(path, dpi=90)


def sampling_probability(
    centers, density, weights: dict, landmark_iie, thresholds, path: Path, *, title: str = ""
) -> Figure:
    """Fig. 3: the probability that an anchor falls at each IIE, per weight map; landmark IIE
    marked. ``density``: the pixels' IIE density per bin; ``weights``: label -> weight per bin."""
    fig, ax = _subplots(figsize=(9, 4.2), constrained_layout=True)
    width = float(np.mean(np.diff(centers)))
    styles = ("-", "--", "-.", ":")
    for k, (label, w) in enumerate(weights.items()):
        p = np.asarray(density) * np.asarray(w)
        ax.plot(centers, p / max(p.sum() * width, 1e-12), styles[k % len(styles)], label=label)
    marks = np.ravel(landmark_iie)
    ax.plot(marks, np.zeros_like(marks), "|", color="k", ms=14, alpha=0.5, label="landmarks")
    _shade_groups(ax, thresholds)
    ax.set_ylim(top=ax.get_ylim()[1] * 1.12)  # room for the groups' names above the curves
    return _finish(fig, ax, path, "IIE (bits)", "sampling probability density", title, outside=True)


def mi_density(values: dict, targets: dict, path: Path, *, title: str = "") -> None:
    """Fig. 6: the density of template-to-image MI per information group, targets marked."""
    fig, ax = _subplots(figsize=(7, 4), constrained_layout=True)
    colors = dict(zip(("low", "medium", "high"), GROUP_COLORS, strict=True))
    top = max([float(np.max(v)) for v in values.values() if len(v)] + [1e-6])
    bins = np.linspace(0.0, top * 1.05, 40)
    for name, v in values.items():
        ax.hist(v, bins, density=True, histtype="step", lw=2, color=colors[name], label=name)
        if name in targets:
            ax.axvline(targets[name], color=colors[name], ls="--", lw=1)
    _finish(
        fig,
        ax,
        path,
        "MI between template and matched patches (nats); dashed: target",
        "density",
        title,
    )


def footprint_maps(image, maps: dict, path: Path, *, title: str = "") -> None:
    """Fig. 7: the image and its IIE map under each footprint (a volume's middle axial
    slice)."""
    if np.ndim(image) == 3:
        image = volume_plots.middle(image)
        maps = {spec: volume_plots.middle(m) for spec, m in maps.items()}
    fig, axes = _subplots(
        1, 1 + len(maps), figsize=(3.6 * (1 + len(maps)), 4.2), constrained_layout=True
    )
    axes[0].imshow(image, cmap="gray", vmin=0, vmax=255)
    axes[0].set_title("image")
    for ax, (spec, m) in zip(axes[1:], maps.items(), strict=True):
        shown = ax.imshow(m, cmap="magma", vmin=0, vmax=8)
        ax.set_title(f"IIE {spec}")
    fig.colorbar(shown, ax=axes[-1], shrink=0.8, label="bits")
    for ax in axes:
        ax.set_axis_off()
    fig.suptitle(title)
    fig.savefig(path, dpi=90)


def loss_curves(curves: dict, path: Path, *, title: str = "") -> Figure:
    """Training loss against step, one line per run: every logged step (faint) and a moving
    average over a twentieth of them."""
    fig, ax = _subplots(figsize=(7, 4), constrained_layout=True)
    for name, (steps, loss) in curves.items():
        steps, loss = np.asarray(steps), np.asarray(loss, np.float64)
        line = ax.plot(steps, loss, alpha=0.25)[0]
        k = max(1, len(loss) // 20)
        smooth = np.convolve(loss, np.ones(k) / k, mode="valid")
        ax.plot(steps[k - 1 :], smooth, color=line.get_color(), label=f"{name} (mean of {k})")
    return _finish(fig, ax, path, "step", "loss (sum over scales)", title)


def probe_curves(
    curves: dict, path: Path, *, title: str = "", reference: dict | None = None
) -> None:
    """The probe's one-shot MRE (mm) against the training step, one line per run;
    ``reference`` adds horizontal lines (e.g. ``{"template copied": 10.0}``)."""
    fig, ax = _subplots(figsize=(7, 4), constrained_layout=True)
    for name, (steps, mre) in curves.items():
        ax.plot(steps, mre, marker="o", markersize=3, label=name)
    for name, value in (reference or {}).items():
        ax.axhline(value, color="gray", linestyle="--", linewidth=1)
        ax.annotate(name, (0, value), xycoords=("axes fraction", "data"), va="bottom", fontsize=8)
    _finish(fig, ax, path, "step", "probe MRE (mm)", title)


def training_batch(batch: dict, path: Path, *, strides=(32, 16, 8, 4, 2), count: int = 4) -> None:
    """The data path by eye: for ``count`` examples of a training batch (the input pipeline's
    ``image``, ``crop``, ``anchor``, ``crop_anchor``, ...), the whole image with the anchor,
    the image around the anchor, and the augmented crop, each with the anchor's cell at every
    stride: the loss's positive at each scale is that cell, so both must show the same anatomy
    (the crop is rotated about the anchor and jittered in brightness and contrast). With several
    anchors per crop (``(B, K, 2)``) the first is drawn as above and the others as cyan dots,
    each at its place in the image and in the crop. With several crops per image the panels
    show crops, each beside its image. Volumes: the axial slices through each first anchor."""
    batch = transforms.per_crop(batch)
    if np.ndim(batch["image"]) == 4:  # volumes: axial slices through the anchors
        batch = volume_plots.axial_batch(batch)
    n = min(int(count), len(batch["anchor"]))
    crop_size = batch["crop"].shape[1]
    colors = colormaps["viridis"](np.linspace(0, 0.9, len(strides)))
    fig, axes = _subplots(n, 3, figsize=(10, 3.4 * n), constrained_layout=True, squeeze=False)
    for i in range(n):
        image, crop = np.asarray(batch["image"][i]), np.asarray(batch["crop"][i])
        anchors = np.asarray(batch["anchor"][i]).reshape(-1, 2)
        crop_anchors = np.asarray(batch["crop_anchor"][i]).reshape(-1, 2)
        (r, c), (cr, cc) = anchors[0], crop_anchors[0]
        axes[i, 0].imshow(image, cmap="gray", vmin=0, vmax=255)
        axes[i, 0].add_patch(
            Rectangle((c - cc, r - cr), crop_size, crop_size, fill=False, color="orange")
        )
        axes[i, 0].scatter([c], [r], s=20, c="red")
        axes[i, 0].set_title(f"image, anchor ({r}, {c})", fontsize=9)
        # The window the crop was cut from before its rotation about the anchor: the anchor
        # sits at the same place in both panels.
        top, left = r - cr, c - cc
        axes[i, 1].imshow(image, cmap="gray", vmin=0, vmax=255)
        axes[i, 1].set_xlim(left - 0.5, left + crop_size - 0.5)
        axes[i, 1].set_ylim(top + crop_size - 0.5, top - 0.5)
        axes[i, 1].set_title("the crop's window, unrotated", fontsize=9)
        axes[i, 2].imshow(crop, cmap="gray", vmin=0, vmax=1)
        extra = []
        for key, fmt in (
            ("group", "group {}"),
            ("angle", "{:.0f} deg"),
            ("brightness", "b {:.2f}"),
        ):
            if key in batch:  # (a volume's crop has three angles)
                values = np.asarray(batch[key][i]).ravel()
                values = [int(v) if key == "group" else float(v) for v in values]
                extra.append("/".join(fmt.format(v) for v in values))
        axes[i, 2].set_title("crop, " + ", ".join(extra), fontsize=9)
        for ax, (y, x) in ((axes[i, 1], (r, c)), (axes[i, 2], (cr, cc))):
            for s, color in zip(strides, colors, strict=True):
                ax.add_patch(
                    Rectangle(
                        ((x // s) * s - 0.5, (y // s) * s - 0.5), s, s, fill=False, color=color
                    )
                )
            ax.scatter([x], [y], s=20, c="red")
        axes[i, 0].scatter(anchors[1:, 1], anchors[1:, 0], s=6, c="cyan")
        axes[i, 2].scatter(crop_anchors[1:, 1], crop_anchors[1:, 0], s=6, c="cyan")
        for ax in axes[i]:
            ax.set_axis_off()
    handles = [
        Line2D([], [], color=col, label=f"cell at stride {s}")
        for s, col in zip(strides, colors, strict=True)
    ]
    fig.legend(handles=handles, loc="lower center", ncol=len(strides), fontsize=8)
    fig.savefig(path, dpi=80)


def landmarks(
    image, points, path: Path, *, title: str = "", max_side: float = 8.0, spacing=None
) -> None:
    """Landmarks ``(L, 2)`` (x, y) numbered on ``image`` at its own resolution and aspect (a
    volume's ``(L, 3)``: each landmark's orthogonal slices, ``volume_plots.landmark_views``)."""
    if np.ndim(image) == 3:
        volume_plots.landmark_views(image, points, path, title=title, spacing=spacing)
        return
    points = np.asarray(points)
    h, w = np.shape(image)[:2]
    scale = max_side / max(h, w)
    fig, ax = _subplots(figsize=(w * scale, h * scale + 0.4), constrained_layout=True)
    ax.imshow(image, cmap="gray", vmin=0, vmax=255)
    ax.scatter(points[:, 0], points[:, 1], s=18, c="#ff1744", edgecolors="k", lw=0.5)
    for i, (x, y) in enumerate(points, start=1):
        ax.annotate(
            str(i), (x, y), xytext=(3, 3), textcoords="offset points", fontsize=7, color="#ffd54f"
        )
    ax.set_title(title, fontsize=9)
    ax.axis("off")
    fig.savefig(path, dpi=100)
