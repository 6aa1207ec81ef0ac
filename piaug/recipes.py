"""Training from random weights: the presets ``cpu`` and ``scratch`` that every dataset config
takes (``--config=configs/hand.py:cpu``), defined once here (docs/from_scratch.md).

The paper's configs start from ImageNet weights (``model.pretrained``). From random weights its
plain VGG19 and clamped temperature-1 loss did not learn here (ISBI Test1+2: 11.19 mm, worse
than the template copied, 10.65). What made learning work, found on the ISBI images at 192 x 192
on a 2-core CPU, is ``FROM_SCRATCH``: batch norm in the backbone, the unclamped loss at
temperature 0.1 with a 64-d embedding, 64 anchors in each of two crops of every image, crops
two thirds of the image on a 32-pixel grid (scaled up to 1.25x, blurred, noised), Adam at 1e-3
after a warm-up then a cosine to 0, matching by the sum of the scales' cosines from the
template's interpolated vectors. ``DETECTOR_FROM_SCRATCH`` does the same for the second stage's
detector.

* ``cpu``: the recipe at half the config's image size (192 x 192 for the paper's 384), a quarter
  of VGG19's width, 700 steps of 4 images: an encoder in about 12 minutes on 2 cores.
* ``scratch``: the recipe at the config's own size and full width, batch 8 and the authors'
  schedule length (the config's epochs), for accelerators (no run of it measured yet).

What stays the dataset's (each config's): the image size, spacing, window, weight-map gamma,
schedule length. ``from_scratch_warning`` names the failure when a config starts from random
weights without normalisation; the pretrain stage logs it.
"""

from __future__ import annotations

import math

# The ingredients of learning from random weights (docs/from_scratch.md records each one's
# measured effect).
FROM_SCRATCH = {
    "model.norm": "batch",
    "model.embedding": 64,
    "loss.temperature": 0.1,
    "loss.clamp": False,
    "augment.anchors_per_crop": 64,
    "augment.crops_per_image": 2,
    "augment.crop_grid": 32,
    "augment.max_scale": 1.25,
    "augment.blur": 1.5,
    "augment.noise": 0.05,
    "train.lr": 1e-3,
    "train.schedule": "cosine",
    "eval.combine": "sum",
    "eval.upsample": "bilinear",
    "eval.template_sampling": "bilinear",
}

# The detector (stages pseudo, detector) from random weights: rotated (up to 10 degrees), scaled
# (1.1x), shifted (5 %) and jittered (0.8-1.2); the heatmap term balanced between the disks and
# the rest (the authors' mean over all pixels had the probe at 23 mm after 1500 steps, the
# balanced one at 2.3 after 500); Adam 1e-3 after a warm-up, cosine to 0.
DETECTOR_FROM_SCRATCH = {
    "detector.heatmap_loss": "balanced",
    "detector.lr": 1e-3,
    "detector.schedule": "cosine",
    "detector.max_rotation": 10.0,
    "detector.max_scale": 1.1,
    "detector.max_shift": 0.05,
    "detector.brightness": (0.8, 1.2),
    "detector.contrast": (0.8, 1.2),
}

CPU = {
    "model.width": 0.25,
    "train.steps": 700,
    "train.batch_size": 4,  # images; two crops of each (augment.crops_per_image)
    "train.warmup_steps": 50,
    "train.checkpoint_every": 100,
    "eval.every": 100,
    "detector.batch_size": 4,
    "detector.steps": 2000,
    "detector.warmup_steps": 50,
    "detector.checkpoint_every": 200,
}

# Volumes on a 2-core CPU (``cpu`` on a 3-D config; docs/volumes.md measured each part on the
# synthetic volumes): the 3-D step costs about 27/9 of a 2-D one per voxel, so an eighth of
# VGG19's width and 2 volumes a step; FROM_SCRATCH's 64 anchors a crop (each anchor's window of
# negatives a cube, 19^3 cells at the default loss.window) cost a whole-volume step 0.79 s
# against 0.77 for 16, and gave the tuning volumes' baseline 10.5 mm against 11.9 (16 were
# chosen with two 32^3 crops a volume, where 64 cost 1.2 s a step against 0.72). Each crop is
# the whole volume (``cpu`` sets
# ``data.crop_size`` to the grid: the coarse maps of a 32^3 crop at a 64^3 grid have one cell),
# one crop a volume, cut by trilinear rather than cubic interpolation (0.05 s against 0.13 a
# 64^3 crop, on the step's cores). Matching combines strides 8, 4 and 2 only (at 64^3 the
# stride-32 and 16 maps have 2 and 4 cells a side and pulled the peaks off: 11.4 against
# 12.8 mm on the tuning volumes) and refines each peak. A step of about 1.0 s in the pipeline.
CPU_VOLUMES = {
    "model.width": 0.125,
    "train.batch_size": 2,
    "augment.crops_per_image": 1,
    "augment.rotation_order": 1,
    "eval.scales": (8, 4, 2),
    "eval.subpixel": True,
    "detector.batch_size": 2,
}

SCRATCH = {
    "model.width": 1.0,
    "train.steps": 0,  # the config's epochs: the authors' schedule length
    "train.batch_size": 8,  # images (the paper's batch); two crops of each
    "train.warmup_steps": 1000,
    "eval.every": 1000,
    "detector.warmup_steps": 500,
}

GRID = 32  # image sides are multiples of this (the encoder's coarsest stride)
CROP_FRACTION = 2 / 3  # crop side / image side (128 at 192: 64-pixel crops learnt slower)


def _round_to_grid(n: float) -> int:
    return max(GRID, int(round(n / GRID)) * GRID)


def _set(config, overrides: dict) -> None:
    from piaug import ablations  # noqa: PLC0415 (ablations imports this module)

    for key, value in overrides.items():
        ablations.set_field(config, key, value)


def _sizes(config, scale: float) -> None:
    """The image size times ``scale`` (each side a multiple of 32), crops two thirds of its
    smaller side, and the estimate's MI patches scaled with the image (the paper's 64 at 384
    are 32 at 192)."""
    paper_patch = int(config.estimate.patch_size) or int(config.data.crop_size)
    size = tuple(_round_to_grid(s * scale) for s in config.data.image_size)
    config.data.image_size = size
    config.data.crop_size = _round_to_grid(CROP_FRACTION * min(size))
    config.estimate.patch_size = max(8, int(round(paper_patch * scale)))


def cpu(config) -> None:
    """The from-scratch recipe for a 2-core CPU: half the image size, a quarter of the width,
    700 steps of 4 images (configs/ceph.py:cpu: 192 x 192, an encoder in about 12 minutes).
    Volumes: ``CPU_VOLUMES`` besides, and crops of the whole grid (configs/hn3d.py:cpu: 64^3,
    about 11 minutes an encoder)."""
    _set(config, FROM_SCRATCH)
    _set(config, DETECTOR_FROM_SCRATCH)
    _set(config, CPU)
    _sizes(config, 0.5)
    if len(config.data.image_size) == 3:
        _set(config, CPU_VOLUMES)
        config.data.crop_size = min(config.data.image_size)


def scratch(config) -> None:
    """The from-scratch recipe at the config's image size and full width, for accelerators
    without ImageNet weights: batch 8 images (two crops each), the config's epochs, a 1000-step
    warm-up then a cosine to 0."""
    _set(config, FROM_SCRATCH)
    _set(config, DETECTOR_FROM_SCRATCH)
    _set(config, SCRATCH)
    _sizes(config, 1.0)


PRESETS = {"cpu": cpu, "scratch": scratch}


def from_scratch_warning(config) -> str | None:
    """The warning for a config that trains the encoders on real images from random weights
    with the paper's plain VGG19 (``model.norm=none``), else None. The synthetic set is
    exempt: the demo's plain encoders learn it (they beat the template copied)."""
    if config.model.pretrained or config.model.norm != "none" or config.data.name == "synthetic":
        return None
    loss = (
        "the clamped temperature-1 loss"
        if config.loss.clamp and math.isclose(config.loss.temperature, 1.0)
        else f"loss.temperature={config.loss.temperature:g}, loss.clamp={config.loss.clamp}"
    )
    return (
        f"{config.data.name}: the encoders train from random weights (model.pretrained is "
        f"empty) with the paper's VGG19 without normalisation (model.norm=none) and {loss}. "
        "From random weights the paper's VGG19 and loss did not learn here (ISBI Test1+2: "
        "11.19 mm, worse than the template copied, 10.65; docs/from_scratch.md). Give ImageNet "
        "weights (--config.model.pretrained=vgg19.pth) or use the from-scratch recipe: the "
        "preset 'scratch' on an accelerator (--config=configs/NAME.py:scratch), 'cpu' on a "
        "laptop (--config=configs/NAME.py:cpu)."
    )
