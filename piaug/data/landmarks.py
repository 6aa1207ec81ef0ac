"""Landmark CSV files that piaug writes and reads back: predictions, pseudo-labels, ``predict``.

The folder format's columns (``piaug.data.folder``): leading columns (``image``; ``model,
image`` for ``predictions.csv``), then ``1_x, 1_y, ..., L_x, L_y`` in pixels, and for
``predict`` the confidence of each landmark, ``1_conf, ..., L_conf``. Files are written whole,
then renamed into place, so a stopped run never leaves half a file.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from piaug.errors import UserError


def columns(num_landmarks: int, dims: int = 2) -> list[str]:
    """The folder format's landmark columns: ``1_x, 1_y, ..., L_x, L_y`` (volumes, ``dims``
    3: ``1_x, 1_y, 1_z, ...``)."""
    axes = "xyz"[:dims]
    return [f"{i}_{a}" for i in range(1, num_landmarks + 1) for a in axes]


def write_csv(
    path: Path,
    rows: Sequence[tuple[dict, np.ndarray]],
    *,
    decimals: int = 3,
    confidence: Sequence[np.ndarray] | None = None,
) -> None:
    """A CSV of ``(leading columns, (L, 2) points)`` rows: the leading columns (e.g. model,
    image), then ``1_x, 1_y, ...`` with ``decimals`` decimals, then with ``confidence`` (one
    ``(L,)`` per row) ``1_conf, ...`` with 4 decimals. Volumes' ``(L, 3)`` points: ``1_x,
    1_y, 1_z, ...``."""
    lead = list(rows[0][0]) if rows else []
    count = len(rows[0][1]) if rows else 0
    dims = np.shape(rows[0][1])[-1] if rows else 2
    header = lead + columns(count, dims)
    if confidence is not None:
        header += [f"{i}_conf" for i in range(1, count + 1)]
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(header)
        for k, (first, points) in enumerate(rows):
            row = list(first.values()) + [f"{v:.{decimals}f}" for v in np.ravel(points)]
            if confidence is not None:
                row += [f"{v:.4f}" for v in np.ravel(confidence[k])]
            out.writerow(row)
    tmp.replace(path)


def read_csv(path: Path, num_landmarks: int) -> dict[str, np.ndarray]:
    """``{image id: (L, 2)}`` of a CSV that ``write_csv`` wrote with an ``image`` column;
    UserError naming the file when it is missing or malformed."""
    try:
        with Path(path).open(newline="") as f:
            rows = list(csv.DictReader(f))
    except FileNotFoundError:
        raise UserError(f"{path} does not exist: run the pseudo stage first") from None
    names = columns(num_landmarks)
    try:
        return {r["image"]: np.array([float(r[c]) for c in names]).reshape(-1, 2) for r in rows}
    except (KeyError, ValueError, TypeError) as e:
        raise UserError(
            f"{path}: not a labels file of {num_landmarks} landmarks ({e}); delete it and run "
            "the pseudo stage again"
        ) from None


def read_predictions(path: Path) -> dict[str, list]:
    """``{model: [(image id, (L, 2)), ...]}`` of a ``predictions.csv`` (empty if none; a
    volumes' file with ``*_z`` columns: ``(L, 3)``)."""
    if not path.exists():
        return {}
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    dims = 3 if any(str(k).endswith("_z") for k in reader.fieldnames or ()) else 2
    out: dict[str, list] = {}
    for r in rows:
        values = [float(v) for k, v in r.items() if k not in ("model", "image")]
        out.setdefault(r["model"], []).append((r["image"], np.reshape(values, (-1, dims))))
    return out
