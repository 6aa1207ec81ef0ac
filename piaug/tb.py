"""TensorBoard event files of a run, written live without TensorFlow (tensorboardX).

``metrics.jsonl`` stays the source of truth; ``DIR/tb/STAGE/`` holds the same scalars for
TensorBoard (``tensorboard --logdir runs/``) and a few images: the info stage's IIE map and
groups, each training stage's first batch (the image with its anchors beside the crop with
its own, or the detector's image with its landmarks) and the probe's matches (predicted in
red, true in green) each time it runs. Only process 0 writes.

Scalars are grouped by their name: ``loss/...`` (the total and each scale's), ``psi/...``,
``grad_norm/...``, ``probe/...``, and ``train/`` for the rest (``lr``, ``samples_per_s``).
"""

from __future__ import annotations

import os
from pathlib import Path

import jax
import numpy as np

GREEN, RED, YELLOW = (40, 220, 40), (235, 50, 50), (250, 210, 0)
_GROUPS = ("loss", "psi", "grad_norm", "probe")
_SKIP = ("step", "time")


class Writer:
    """Scalars and images into ``folder`` (an event file of its own); a no-op on every
    process but 0. On a resume from step ``start`` TensorBoard drops the events after it
    (``purge_step``), as ``metrics.jsonl`` drops its rows."""

    def __init__(self, folder: Path, *, start: int = 0):
        self._writer = None
        if jax.process_index() != 0:
            return
        from tensorboardX import SummaryWriter

        Path(folder).mkdir(parents=True, exist_ok=True)
        self._writer = SummaryWriter(
            str(folder),
            purge_step=start + 1 if start > 0 else None,
            filename_suffix=f".{os.getpid()}.{start}",  # a resume never reuses a file's name
        )

    def scalars(self, row: dict, step: int) -> None:
        """Every number of ``row`` (a ``metrics.jsonl`` row) at ``step``."""
        if self._writer is None:
            return
        for key, value in row.items():
            if key in _SKIP or not isinstance(value, int | float) or isinstance(value, bool):
                continue
            group = next((g for g in _GROUPS if key.startswith(g)), "train")
            self._writer.add_scalar(f"{group}/{key}", float(value), int(step))

    def image(self, tag: str, rgb: np.ndarray, step: int) -> None:
        """An ``(H, W, 3)`` uint8 image."""
        if self._writer is not None:
            self._writer.add_image(tag, np.asarray(rgb, np.uint8), int(step), dataformats="HWC")

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


def rgb(image: np.ndarray) -> np.ndarray:
    """A gray image (uint8, or float in [0, 1]) as ``(H, W, 3)`` uint8."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        image = np.rint(np.clip(image, 0.0, 1.0) * 255).astype(np.uint8)
    return np.repeat(image[..., None], 3, axis=-1)


def mark(canvas: np.ndarray, points_rc, color, radius: int = 2) -> np.ndarray:
    """``canvas`` with a plus of ``radius`` at each (row, col) of ``points_rc`` (off-canvas
    parts are skipped)."""
    out = canvas.copy()
    h, w = out.shape[:2]
    for r, c in np.rint(np.asarray(points_rc, np.float64).reshape(-1, 2)).astype(int):
        for d in range(-radius, radius + 1):
            for rr, cc in ((r + d, c), (r, c + d)):
                if 0 <= rr < h and 0 <= cc < w:
                    out[rr, cc] = color
    return out


def side_by_side(*panels: np.ndarray) -> np.ndarray:
    """Panels ``(H_i, W_i, 3)`` left to right, top-aligned, on black, 4 px apart."""
    height = max(p.shape[0] for p in panels)
    padded = [np.pad(p, ((0, height - p.shape[0]), (0, 4), (0, 0))) for p in panels]
    return np.concatenate(padded, axis=1)[:, :-4]


def _flat(image, points) -> tuple[np.ndarray, np.ndarray]:
    """``image`` and ``points`` (N, ndim) in array order (row, col[, ...]) as one picture: a
    volume's axial slice through the first finite point (else its middle), the points' rows
    and columns on it."""
    image, points = np.asarray(image), np.asarray(points, np.float64).reshape(-1, np.ndim(image))
    if image.ndim == 2:
        return image, points
    finite = points[np.isfinite(points).all(1)]
    k = int(np.clip(np.round(finite[0, 0]), 0, len(image) - 1)) if len(finite) else len(image) // 2
    return image[k], points[:, 1:]


def anchor_panel(batch: dict) -> np.ndarray:
    """The encoders' first example: its image with the crop's anchors (yellow, the first
    green), beside the crop with the same points (``train.BATCH_KEYS``'s fields; with several
    crops per image, the first crop; a volume's axial slices through the first anchor)."""
    image, crop = batch["image"][0], batch["crop"][0]
    anchors, crop_anchors = batch["anchor"][0], batch["crop_anchor"][0]
    if crop.ndim > np.ndim(image):  # (M, C, C[, C]): the first crop of the image
        crop, anchors, crop_anchors = crop[0], anchors[0], crop_anchors[0]
    image, anchors = _flat(image, anchors)
    crop, crop_anchors = _flat(crop, crop_anchors)
    image = mark(rgb(image), anchors[1:], YELLOW, 1)
    crop = mark(rgb(crop), crop_anchors[1:], YELLOW, 1)
    return side_by_side(mark(image, anchors[:1], GREEN), mark(crop, crop_anchors[:1], GREEN))


def landmark_panel(batch: dict) -> np.ndarray:
    """The detector's first example: its (augmented) image with its landmarks (x, y)."""
    points = np.asarray(batch["landmarks"][0], np.float64)[:, ::-1]
    return mark(rgb(batch["image"][0]), points[np.isfinite(points).all(1)], GREEN)


def matches_panel(image: np.ndarray, predicted_xy, true_xy) -> np.ndarray:
    """``image`` with true landmarks (green) and predicted ones (red), (x, y[, z]); a volume's
    axial slice through the first true landmark."""
    true_xy = np.asarray(true_xy, np.float64)
    both = np.concatenate([true_xy, np.asarray(predicted_xy, np.float64)])[:, ::-1]
    flat, both = _flat(image, both)  # (the slice through the first true landmark)
    return mark(mark(rgb(flat), both[: len(true_xy)], GREEN), both[len(true_xy) :], RED)


def colour_map(values: np.ndarray, vmin: float | None = None, vmax: float | None = None):
    """``values`` ``(H, W)`` through matplotlib's viridis, as ``(H, W, 3)`` uint8."""
    from matplotlib import colormaps

    values = np.asarray(values, np.float64)
    lo = np.nanmin(values) if vmin is None else vmin
    hi = np.nanmax(values) if vmax is None else vmax
    scaled = (values - lo) / (hi - lo) if hi > lo else np.zeros_like(values)
    return (colormaps["viridis"](np.clip(scaled, 0, 1))[..., :3] * 255).astype(np.uint8)


def read(folder: Path) -> dict[str, list[tuple[int, object]]]:
    """The events of ``folder``'s event files, ``{tag: [(step, value), ...]}``: a scalar's
    float, an image's ``(height, width)``. Events after a ``purge_step`` marker replace those
    at or after its step, as TensorBoard shows them. For checks and notebooks; TensorBoard
    itself reads the folder as it is."""
    import struct

    from tensorboardX.proto import event_pb2

    found: dict[str, list[tuple[int, object]]] = {}
    for path in sorted(Path(folder).glob("events.out.tfevents.*")):
        data, at = path.read_bytes(), 0
        while at + 12 <= len(data):
            (length,) = struct.unpack("<Q", data[at : at + 8])
            record = data[at + 12 : at + 12 + length]
            at += 12 + length + 4  # length, its crc, the record, its crc
            event = event_pb2.Event.FromString(record)
            if event.HasField("session_log") and event.session_log.status == 1:  # START
                for tag in found:
                    found[tag] = [e for e in found[tag] if e[0] < event.step]
                continue
            for value in event.summary.value:
                if value.HasField("image"):
                    item = (value.image.height, value.image.width)
                else:
                    item = float(value.simple_value)
                found.setdefault(value.tag, []).append((int(event.step), item))
    return found
