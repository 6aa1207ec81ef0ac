"""Watching an encoder learn: one-shot matching on a small fixed probe during training.

Every ``eval.every`` steps of ``pretrain`` and ``train``, the full-image encoder's current
weights match the landmarks of one template into a few images of the eval split at the
training grid (the evaluate stage's procedure, on fewer images); the MRE and SDRs go into
``metrics.jsonl`` (``probe_mre_mm``, ``probe_sdr_2.0``, ...), and the analyze stage draws them
(``figures/probe_curve.png``). The labels serve only to monitor: nothing in training reads them.

The probe is the same for every encoder of a run, so the baseline's and piaug's curves can be
set side by side: its template is ``eval.template`` if set, else the typical image of the
training split by its labels (``typical``: the landmark configuration closest to all others;
the policy's template is chosen later, with a trained encoder, and a first image may be an
outlier: ISBI's 001 copied to the other training images is 16 mm off, the typical one 9 mm).
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Sequence

import jax
import numpy as np

from piaug import checkpoints, evaluate, matching, models


@dataclasses.dataclass
class Probe:
    """One-shot matching of ``template`` into ``targets`` (prepared examples, as
    ``piaug.data.prepare`` writes them: ``image``, ``landmarks`` in the grid, and the
    original landmarks, spacing and size) with the weights given at each call."""

    net: models.Encoder
    template: dict
    targets: Sequence[dict]
    size: tuple[int, int]
    settings: matching.MatchSettings = matching.MatchSettings()  # the evaluate stage's

    def __post_init__(self):
        self.size = tuple(int(s) for s in self.size)
        self._points = matching.template_cells(self.template["landmarks"], self.size)
        self._images = np.stack([e["image"] for e in self.targets])
        self._truth = evaluate.truth(self.targets, self.size)
        copied = evaluate.template_copy(self.template["landmarks"], self._truth)
        self.copy_mre_mm = copied["grid"]["mre_mm"]
        self._apply = checkpoints.jitted_apply(self.net)  # the evaluate stage's programs

    def __call__(self, params, batch_stats) -> dict[str, float]:
        """``probe_mre_mm``, ``probe_sdr_{r}`` (%), ``probe_copy_mre_mm`` (the template's
        landmarks copied unmoved: what an encoder must beat) and ``probe_s`` (the probe's
        time) for the full-image encoder with ``params`` and ``batch_stats``."""
        start = time.perf_counter()
        # On the host first: the probe then runs on this process's first device, whatever
        # mesh (or processes) the training state spans.
        variables = jax.device_get({"params": params, "batch_stats": batch_stats})
        pred = matching.predict(
            functools.partial(self._apply, variables),
            np.asarray(self.template["image"]),
            self._points,
            self._images,
            size=self.size,
            settings=self.settings,
        )
        self._first = pred[0]
        row = _row(pred, self._truth)
        row["probe_copy_mre_mm"] = self.copy_mre_mm
        row["probe_s"] = time.perf_counter() - start
        return row

    def panel(self) -> np.ndarray:
        """The first target with its true landmarks and the last call's matches
        (``piaug.tb.matches_panel``)."""
        return _panel(self.targets[0], self._first)


def _panel(target: dict, predicted: np.ndarray) -> np.ndarray:
    from piaug import tb

    return tb.matches_panel(target["image"], predicted, target["landmarks"])


def _row(pred: np.ndarray, truth: dict) -> dict[str, float]:
    """``probe_mre_mm`` and ``probe_sdr_{r}`` of grid predictions (grid protocol)."""
    grid = evaluate.evaluate(pred, **truth)["grid"]
    return {"probe_mre_mm": grid["mre_mm"]} | {f"probe_sdr_{r}": v for r, v in grid["sdr"].items()}


def typical(landmarks: np.ndarray) -> int:
    """The index of the image whose landmarks ``(N, L, 2)`` (one grid) are closest, in mean
    distance, to those of all the others (the medoid): the template a copy serves best."""
    points = np.asarray(landmarks, np.float64)
    distance = np.sqrt(((points[:, None] - points[None]) ** 2).sum(-1)).mean(-1)  # (N, N)
    return int(np.argmin(distance.sum(1)))


def choose(ids: Sequence[str], template_id: str, count: int) -> list[int]:
    """Indices of the probe's targets: the first ``count`` of ``ids`` other than the
    template's (the split's order is fixed, so the probe is the same in every run)."""
    return [i for i, name in enumerate(ids) if name != template_id][: max(0, int(count))]


@dataclasses.dataclass
class DetectorProbe:
    """The detector's learning monitor: its landmarks of ``targets`` (prepared examples it
    does not train on) with the weights given at each call: ``probe_mre_mm`` and the SDRs."""

    net: object  # piaug.detector.Detector
    settings: object  # piaug.detector.DetectorSettings
    targets: Sequence[dict]
    size: tuple[int, int]
    batch_size: int = 8

    def __post_init__(self):
        self.size = tuple(int(s) for s in self.size)
        self._images = np.stack([e["image"] for e in self.targets])
        self._truth = evaluate.truth(self.targets, self.size)

    def __call__(self, params, batch_stats) -> dict[str, float]:
        from piaug import detector

        start = time.perf_counter()
        variables = jax.device_get({"params": params, "batch_stats": batch_stats})
        pred, _ = detector.predict(
            self.net, variables, self._images, settings=self.settings, batch_size=self.batch_size
        )
        self._first = pred[0]
        row = _row(pred, self._truth)
        row["probe_s"] = time.perf_counter() - start
        return row

    def panel(self) -> np.ndarray:
        """The first target with its true landmarks and the last call's (``Probe.panel``)."""
        return _panel(self.targets[0], self._first)
