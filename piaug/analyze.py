"""The info statistics and the paper's analysis figures, from a run's saved artefacts.

Plain functions of arrays and of the run's JSON files; ``piaug.pipeline`` calls them in its
``info`` and ``analyze`` stages (drawing each figure whose inputs exist, skipping the others
with a log line) and writes the numbers they return to ``info_stats.json`` and
``analysis.json``:

* ``info_statistics``: the IIE histogram, the fraction of pixels per information group and the
  IIE at the landmarks, per image and overall (``info_stats.json``).
* Fig. 2 (``fig2_loss_vs_iie`` of ``pixel_losses``), ``figures/loss_vs_iie.png``: the
  per-pixel contrastive loss and PSI of each encoder against the anchor's IIE, groups marked.
  Anchors on a grid of ``stride`` pixels, each with an unaugmented crop centred on it
  (clipped inside).
* Fig. 3 (``fig3_sampling``), ``figures/sampling_probability.png``: for exponential weight
  maps of each gamma and the piecewise map at d, the density of the anchors' IIE, from the IIE
  histogram of ``info_stats.json``; landmark IIE marked.
* Fig. 6 (``fig6_mi_density``), ``figures/mi_density.png``: the density of the
  template-to-image MI per group, from ``augment.json``, targets marked.
* Fig. 7 (``fig7_footprints``), ``figures/footprints.png``: IIE maps of one image (original
  resolution) under each footprint.
* ``read_curve``: a ``metrics.jsonl``'s loss or probe curve (``figures/loss_curves.png``,
  ``figures/probe_curve.png``).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from piaug import estimate, info, losses, models, plots
from piaug.data import transforms

_BINS = np.linspace(0.0, 8.0, 33)  # IIE bins (bits) of Fig. 2
HIST_EDGES = np.linspace(0.0, 8.0, 81)  # IIE histogram bins of info_stats.json; 8 bits at most


def grid_anchors(size: tuple[int, ...], stride: int) -> np.ndarray:
    """``(A, 2)`` (row, col) anchors every ``stride`` pixels, offset by half a step (a
    volume's ``(A, 3)``, (slice, row, col))."""
    axes = [np.arange(stride // 2, n, stride) for n in size]
    return np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, len(size))


def centred_crops(image: np.ndarray, anchors: np.ndarray, crop: int):
    """Unaugmented ``crop`` x ``crop`` views containing each anchor, centred where the border
    allows: ``(A, crop, crop)`` float32 in [0, 1] and the anchors' positions in them (a
    volume's: cubic views)."""
    crops = estimate.patches(image[None], anchors[None], crop)[0]
    return crops.astype(np.float32) / 255.0, anchors - estimate.patch_corners(
        anchors, crop, image.shape
    )


def pixel_losses(
    nets: tuple[models.Encoder, models.Encoder],
    variables: dict,
    images,
    iie,
    *,
    crop_size: int,
    loss: losses.LossSettings,
    stride: int,
    chunk: int = 64,
) -> dict[str, np.ndarray]:
    """Per-anchor loss (sum over scales) and PSI (mean over scales) of an encoder pair
    (``nets``, ``variables`` as ``piaug.checkpoints.restore_encoders`` gives them), with the
    anchors' IIE: three flat arrays over the anchors of all ``images`` ``(N, H, W)``, anchors
    every ``stride`` pixels, each with an unaugmented ``crop_size`` crop centred on it (a crop
    as large as the image is the image itself: encoded once for all its anchors)."""
    net_image, net_crop = nets
    kw = dataclasses.asdict(loss)

    @jax.jit
    def run(variables, image, crops, anchors, crop_anchors):  # parameters: no baked constants
        feats = net_image.apply(variables["image"], image[None])
        crop_feats = net_crop.apply(variables["crop"], crops)
        feats, crop_feats = (
            [jnp.broadcast_to(f, (len(anchors), *f.shape[1:])) for f in maps]
            for maps in (feats, crop_feats)
        )
        loss, psi = losses.multiscale_info_nce(feats, crop_feats, anchors, crop_anchors, **kw)
        return loss.sum(1), psi.mean(1)

    anchors = grid_anchors(images.shape[1:], stride)
    whole = all(int(crop_size) >= n for n in images.shape[1:])
    out = {"iie": [], "loss": [], "psi": []}
    for image, m in zip(images, iie, strict=True):
        x = image.astype(np.float32) / 255.0
        if whole:  # every anchor's crop (centred_crops's) is the image, the anchor where it is
            crops, crop_anchors = x[None], anchors
        else:
            crops, crop_anchors = centred_crops(image, anchors, int(crop_size))
        for start in range(0, len(anchors), chunk):
            part = slice(start, start + chunk)
            n = len(anchors[part])
            pad = chunk - n  # one shape for every call
            padded = [
                np.concatenate([a[part], np.repeat(a[:1], pad, 0)])
                for a in ((anchors, crop_anchors) if whole else (crops, anchors, crop_anchors))
            ]
            loss_values, psi = run(variables, x, *([crops] if whole else []), *padded)
            out["loss"].append(np.asarray(loss_values)[:n])
            out["psi"].append(np.asarray(psi)[:n])
        out["iie"].append(m[tuple(anchors.T)])
    return {k: np.concatenate(v) for k, v in out.items()}


def binned(
    x: np.ndarray, y: np.ndarray, edges: np.ndarray = _BINS
) -> tuple[np.ndarray, np.ndarray]:
    """Mean of ``y`` in each bin of ``x`` (NaN where empty) and the counts."""
    index = np.clip(np.digitize(x, edges) - 1, 0, len(edges) - 2)
    count = np.bincount(index, minlength=len(edges) - 1)
    total = np.bincount(index, weights=y, minlength=len(edges) - 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan), count


def sampling_weights(centers, gammas, d: float) -> dict[str, np.ndarray]:
    """Fig. 3's weight maps evaluated at IIE ``centers``: label -> weight per bin."""
    out = {}
    for g in gammas:
        label = "uniform (gamma 0)" if g == 0 else f"IIE^{g:g}"
        out[label] = transforms.weights(np.asarray(centers), "exponential", gamma=float(g))
    out[f"1[IIE >= {d:g}]"] = transforms.weights(np.asarray(centers), "piecewise", d=d)
    return out


def read_rows(path: Path, key: str) -> list[dict]:
    """The rows of a ``metrics.jsonl`` that hold ``key`` (the probe's rows, ``probe_*``, are
    apart from the training rows); none when there is no such file."""
    if not Path(path).exists():
        return []
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    return [r for r in rows if key in r]


def read_curve(path: Path, key: str = "loss") -> tuple[list, list] | None:
    """``(steps, values)`` of ``key`` in a ``metrics.jsonl``, None when no row holds it."""
    rows = read_rows(path, key)
    return ([r["step"] for r in rows], [r[key] for r in rows]) if rows else None


def _spacing(spacing) -> float | list[float] | None:
    """An image's spacing for JSON: one number (images), one per axis (volumes), None if
    unknown."""
    spacing = np.asarray(spacing, np.float64)
    if not np.isfinite(spacing).all():
        return None
    return float(spacing) if spacing.ndim == 0 else spacing.tolist()


def _fractions(group_counts) -> dict[str, float]:
    total = max(1, int(np.sum(group_counts)))
    return {name: int(c) / total for name, c in zip(info.GROUP_NAMES, group_counts, strict=True)}


def nearest_cells(points: np.ndarray, shape: tuple[int, ...]) -> tuple[np.ndarray, ...]:
    """The index of the grid cell nearest each point (``(N, dims)`` as (x, y[, z])) of an
    array of ``shape``, clipped into it: ``array[nearest_cells(points, array.shape)]``."""
    cells = np.round(np.asarray(points)[:, ::-1]).astype(int)
    return tuple(np.clip(cells[:, a], 0, n - 1) for a, n in enumerate(shape))


def info_statistics(
    examples: Iterable[dict], thresholds: tuple[float, float]
) -> tuple[dict, np.ndarray]:
    """The statistics of ``info_stats.json`` over prepared examples (each with ``iie``,
    ``landmarks``, ``id``, ``original_size``, ``spacing``, in the training grid): the IIE
    histogram (``HIST_EDGES``, bits), the fraction of pixels per group, the IIE at the
    landmarks (per landmark and per group), per image; and the ``(N, L)`` IIE at the
    landmarks, unrounded (for the histogram figure)."""
    hist = np.zeros(len(HIST_EDGES) - 1, np.int64)
    group_counts = np.zeros(3, np.int64)
    per_image, landmark_iie = [], []
    for ex in examples:
        m = ex["iie"]
        g = np.asarray(info.information_groups(m, thresholds))
        hist += np.histogram(m, HIST_EDGES)[0]
        counts = np.bincount(g.ravel(), minlength=3)
        group_counts += counts
        points = ex["landmarks"].astype(np.float64)
        at_landmarks = None
        if np.isfinite(points).all():  # unlabelled images (NaN) have none
            at_landmarks = m[nearest_cells(points, m.shape)]
            landmark_iie.append(at_landmarks)
        per_image.append(
            {
                "id": ex["id"].decode() if isinstance(ex["id"], bytes) else str(ex["id"]),
                "original_size": ex["original_size"].tolist(),
                "spacing_mm": _spacing(ex["spacing"]),
                "mean_iie": float(m.mean()),
                "group_fraction": _fractions(counts),
                "landmark_iie": None if at_landmarks is None else at_landmarks.round(4).tolist(),
            }
        )
    landmark_stats = None
    if landmark_iie:
        landmark_iie = np.stack(landmark_iie)
        landmark_groups = np.asarray(info.information_groups(landmark_iie, thresholds))
        landmark_stats = {
            "mean": landmark_iie.mean(0).round(4).tolist(),
            "std": landmark_iie.std(0).round(4).tolist(),
            "overall_mean": float(landmark_iie.mean()),
            "group_fraction": _fractions(np.bincount(landmark_groups.ravel(), minlength=3)),
            "num_images": len(landmark_iie),
        }
    else:
        landmark_iie = np.zeros((0, 0))
    stats = {
        "num_images": len(per_image),
        "iie_histogram": {"bin_edges": HIST_EDGES.round(6).tolist(), "counts": hist.tolist()},
        "group_fraction": _fractions(group_counts),
        "landmark_iie": landmark_stats,  # over the labelled images; None when none is
        "per_image": per_image,
    }
    return stats, landmark_iie


def fig3_sampling(stats: dict, gammas, d: float, thresholds, path: Path, *, title: str) -> dict:
    """Fig. 3 from ``info_stats.json``'s histogram: the anchors' IIE density under each weight
    map (``sampling_weights``), landmark IIE marked. Returns the numbers behind it."""
    edges = np.asarray(stats["iie_histogram"]["bin_edges"])
    centers = (edges[:-1] + edges[1:]) / 2
    density = np.asarray(stats["iie_histogram"]["counts"], np.float64)
    weights = sampling_weights(centers, gammas, float(d))
    marks = [p["landmark_iie"] for p in stats["per_image"] if p["landmark_iie"] is not None]
    marks = np.asarray(marks) if marks else np.zeros((0, 0))
    plots.sampling_probability(centers, density, weights, marks, thresholds, path, title=title)
    return {
        "bin_centers": centers.round(4).tolist(),
        "probability": {
            k: (density * w / max((density * w).sum(), 1e-12)).round(6).tolist()
            for k, w in weights.items()
        },
    }


def fig6_mi_density(estimate_result: dict, path: Path) -> None:
    """Fig. 6 from ``augment.json``: the template-to-image MI per group, targets marked."""
    groups = estimate_result["groups"]
    plots.mi_density(
        {k: np.asarray(g["mi"]) for k, g in groups.items()},
        {k: g["target_mi"] for k, g in groups.items()},
        path,
        title=f"MI per group ({estimate_result['estimator']}, alpha_hat "
        f"{estimate_result['alpha']:g}, template {estimate_result['template']['id']})",
    )


def fig2_loss_vs_iie(per_encoder: dict[str, dict], thresholds, path: Path, *, title: str) -> dict:
    """Fig. 2 from each encoder's ``pixel_losses``: loss and PSI binned by the anchor's IIE,
    groups shaded. Returns the numbers behind it."""
    centers = (_BINS[:-1] + _BINS[1:]) / 2
    lines, out = {}, {}
    for name, per in per_encoder.items():
        loss, count = binned(per["iie"], per["loss"])
        psi, _ = binned(per["iie"], per["psi"])
        lines[name] = (loss, psi, count)
        groups = np.asarray(info.information_groups(per["iie"], thresholds))
        out[name] = {
            "loss": np.where(np.isnan(loss), None, loss.round(5)).tolist(),
            "psi": np.where(np.isnan(psi), None, psi.round(5)).tolist(),
            "count": count.tolist(),
            "group_mean_loss": {
                g: float(per["loss"][groups == i].mean()) if np.any(groups == i) else None
                for i, g in enumerate(info.GROUP_NAMES)
            },
        }
    plots.loss_vs_iie(centers, lines, thresholds, path, title=title)
    return {"bin_centers": centers.tolist(), "encoders": out}


def fig7_footprints(example: dict, footprints: dict[str, np.ndarray], path: Path) -> dict:
    """Fig. 7: IIE maps of one image at its original resolution under each footprint
    (``{spec: boolean array}``). Returns each map's mean and maximum."""
    image = example["image"]
    maps = {spec: np.asarray(info.entropy_map(image, fp)) for spec, fp in footprints.items()}
    plots.footprint_maps(
        example["image"],
        maps,
        path,
        title=f"{example['id']}: IIE at the original resolution {example['image'].shape}",
    )
    return {spec: {"mean": float(m.mean()), "max": float(m.max())} for spec, m in maps.items()}
