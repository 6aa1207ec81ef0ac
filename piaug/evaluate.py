"""Landmark detection metrics (docs/design.md 1): radial errors in millimetres, the mean radial
error (MRE) and the successful detection rates (SDR, % of errors strictly below each radius).

Two protocols:

* ``grid``, the paper's: predictions and ground truth in the training grid (e.g. 384 x 384), the
  ground truth truncated as the authors did (``int(int(x) * 384 / width)``), errors scaled per
  axis by the grid's pixel size in millimetres (ceph: 0.625 mm in y, 0.504 mm in x).
* ``full``: predictions mapped back to original pixels (the inverse of the resize), errors
  against the original annotation with the original spacing.

Points are (x, y) = (col, row), as the datasets store landmarks (``piaug.matching`` works in
(row, col): flip its last axis). Volumes: (x, y, z) voxels, sizes (D, H, W), and a spacing per
axis (x, y, z); every function here takes either.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from piaug.data import prepare

RADII = (2.0, 2.5, 3.0, 4.0)
PROTOCOLS = ("grid", "full")


def grid_spacing(spacing, original_size, image_size) -> np.ndarray:
    """Millimetres per training-grid pixel, ``(N, 2)`` (x, y), for images of ``original_size``
    ``(N, 2)`` (height, width) and spacing ``(N,)`` mm per original pixel resized to
    ``image_size`` (height, width). Volumes: ``(N, 3)`` (x, y, z) from sizes ``(N, 3)``
    (D, H, W) and spacings ``(N, 3)`` (x, y, z)."""
    d = len(image_size)
    original = np.asarray(original_size, np.float64).reshape(-1, d)[:, ::-1]  # (x, y[, z])
    spacing = np.asarray(spacing, np.float64)
    spacing = spacing.reshape(-1, 1) if spacing.ndim <= 1 else spacing.reshape(-1, d)
    return spacing * original / np.asarray(image_size, np.float64)[::-1]


def to_original(points, original_size, image_size) -> np.ndarray:
    """Grid points ``(N, L, 2)`` (x, y) in original pixels: ``prepare.resize_points`` back from
    the grid to each image's ``original_size`` (height, width)."""
    return np.stack(
        [
            prepare.resize_points(p, image_size, size)
            for p, size in zip(np.asarray(points), np.asarray(original_size), strict=True)
        ]
    )


def radial_errors(pred, true, mm_per_pixel) -> np.ndarray:
    """``(N, L)`` errors in mm between ``(N, L, 2)`` points, with ``mm_per_pixel`` a scalar,
    ``(N,)`` or ``(N, 2)`` (x, y); volumes: ``(N, L, 3)`` points, ``(N, 3)`` (x, y, z)."""
    pred, true = np.asarray(pred, np.float64), np.asarray(true, np.float64)
    if pred.shape != true.shape or pred.ndim != 3 or pred.shape[-1] not in (2, 3):
        raise ValueError(
            f"need (N, L, 2) or (N, L, 3) predictions and truth, got {pred.shape}, {true.shape}"
        )
    scale = np.asarray(mm_per_pixel, np.float64)
    if scale.ndim == 1:
        scale = scale[:, None, None]
    elif scale.ndim == 2:
        scale = scale[:, None, :]
    return np.sqrt((((pred - true) * scale) ** 2).sum(-1))


def metrics(errors, *, radii: Sequence[float] = RADII, protocol: str = "grid", ids=None) -> dict:
    """MRE (mean over landmarks of the mean over images), SDR per radius (% strictly below),
    per-landmark MRE, the worst cases (their image by its id when ``ids`` are given, else by
    its index), as in docs/design.md 3's ``results.json``."""
    errors = np.asarray(errors, np.float64)
    if errors.ndim != 2 or errors.size == 0:
        raise ValueError(f"need (N, L) errors, got {errors.shape}")
    if not np.isfinite(errors).all():
        raise ValueError("errors hold NaN or inf: check the predictions and the spacing")
    per_landmark = errors.mean(0)
    worst = np.argsort(-errors, axis=None)[:5]
    return {
        "mre_mm": float(per_landmark.mean()),
        "std_mm": float(errors.std()),
        "sdr": {f"{r:.1f}": float(100.0 * (errors < r).mean()) for r in radii},
        "protocol": protocol,
        "n_images": int(errors.shape[0]),
        "per_landmark_mre_mm": per_landmark.round(4).tolist(),
        "per_image_mre_mm": errors.mean(1).round(4).tolist(),
        "worst": [
            {
                "image": int(i) if ids is None else str(ids[i]),
                "landmark": int(j),
                "error_mm": float(errors[i, j]),
            }
            for i, j in zip(*np.unravel_index(worst, errors.shape), strict=True)
        ],
    }


def truth_in_grid(landmarks_original, original_size, image_size) -> np.ndarray:
    """The authors' grid ground truth: original pixels truncated, scaled, truncated again."""
    d = len(image_size)
    original = np.asarray(original_size, np.float64).reshape(-1, 1, d)[..., ::-1]  # (w, h[, d])
    grid = np.asarray(image_size, np.float64)[::-1]
    return np.floor(np.floor(np.asarray(landmarks_original, np.float64)) * grid / original)


def truth(examples, image_size) -> dict:
    """The keyword arguments of ``evaluate`` for prepared examples (their original landmarks,
    spacing and size) in the grid ``image_size``."""
    return {
        "landmarks_original": np.stack([e["landmarks_original"] for e in examples]),
        "spacing": np.stack([np.asarray(e["spacing"], np.float64) for e in examples]),
        "original_size": np.stack([e["original_size"] for e in examples]),
        "image_size": tuple(int(s) for s in image_size),
        "ids": [e["id"].decode() if isinstance(e["id"], bytes) else str(e["id"]) for e in examples],
    }


def evaluate(
    pred_grid,
    *,
    landmarks_original,
    spacing,
    original_size,
    image_size,
    radii: Sequence[float] = RADII,
    ids=None,
) -> dict[str, dict]:
    """Both protocols for predictions ``(N, L, 2)`` (x, y) in the training grid.

    ``landmarks_original``: the truth in original pixels; ``spacing`` ``(N,)`` mm per original
    pixel; ``original_size`` ``(N, 2)`` (height, width); ``ids``: the images' ids (``worst``
    names them). Volumes: ``(N, L, 3)`` points, ``(N, 3)`` spacings (x, y, z) and sizes
    (D, H, W).
    Returns ``{"grid": metrics, "full": metrics}``.
    """
    pred_grid = np.asarray(pred_grid, np.float64)
    truth_grid = truth_in_grid(landmarks_original, original_size, image_size)
    grid = radial_errors(pred_grid, truth_grid, grid_spacing(spacing, original_size, image_size))
    full = radial_errors(
        to_original(pred_grid, original_size, image_size),
        landmarks_original,
        np.asarray(spacing, np.float64),
    )
    return {
        "grid": metrics(
            grid, radii=radii, protocol=f"grid {'x'.join(str(n) for n in image_size)}", ids=ids
        ),
        "full": metrics(full, radii=radii, protocol="full resolution", ids=ids),
    }


def template_copy(template_landmarks, truth: dict) -> dict[str, dict]:
    """What an encoder must beat: the template's landmarks ``(L, 2)`` (x, y in the grid)
    copied unmoved to every image of ``truth`` (``truth``'s dict), under both protocols."""
    n = len(truth["spacing"])
    copied = np.repeat(np.asarray(template_landmarks, np.float64)[None], n, axis=0)
    return evaluate(copied, **truth)


def table(results: dict[str, dict]) -> str:
    """A terminal table: one row per (encoder, protocol)."""
    radii = None
    rows = []
    width = max([7, *(len(name) for name in results)])
    for name, by_protocol in results.items():
        for protocol, m in by_protocol.items():
            radii = radii or list(m["sdr"])
            sdr = "  ".join(f"{m['sdr'][r]:6.2f}" for r in radii)
            rows.append(
                f"{name:<{width}} {protocol:<6} {m['mre_mm']:7.3f}  {sdr}  {m['n_images']:5d}"
            )
    head = f"{'encoder':<{width}} {'proto':<6} {'MRE mm':>7}  " + "  ".join(
        f"{'<' + r:>6}" for r in radii or []
    )
    return "\n".join([head + "  images", *rows])
