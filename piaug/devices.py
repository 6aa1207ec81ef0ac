"""The devices a run uses, in words, and what a training would cost on a laptop CPU (the warning
before a config meant for an accelerator starts on the CPU)."""

from __future__ import annotations

import os

import jax
import numpy as np


def describe_devices(devices=None) -> str:
    """The devices in words: ``cpu`` (``4 x cpu`` for several), ``2 x NVIDIA H100 80GB HBM3
    (gpu)``, ``8 x TPU v4 (tpu)``."""
    devices = jax.devices() if devices is None else devices
    kinds: dict[str, int] = {}
    for d in devices:
        kinds[d.device_kind] = kinds.get(d.device_kind, 0) + 1
    platform = devices[0].platform
    if platform == "cpu":
        return "cpu" if len(devices) == 1 else f"{len(devices)} x cpu"
    return ", ".join(f"{n} x {kind} ({platform})" for kind, n in kinds.items())


# The encoders' train step measured on a 2-core laptop CPU (docs/performance.md, case (a)):
# 48.9 s for batch 8 of 384 x 384 images with 64 x 64 crops at full width. Its cost scales with
# the pixels of a step and the square of the width (case (b), 192 x 192, batch 4, width 0.25,
# predicted 0.38 s, measured 0.39 s).
_CPU_STEP_S, _CPU_STEP_PIXELS = 48.9, 8 * (384 * 384 + 64 * 64)
# Volumes (docs/performance.md): 0.690 s for batch 2 of 64^3 volumes with one 64^3 crop each
# at width 0.125, 64 anchors a crop (train_step_3d_whole.jsonl, the cpu recipe's setting; in
# the pipeline 0.80-0.83 s), scaled the same way (voxels, width squared). (Two 32^3 crops a
# volume measured 0.54-0.72 s, where this scaling says 0.43.)
_CPU_STEP_3D_S, _CPU_STEP_3D_VOXELS, _CPU_STEP_3D_WIDTH = 0.690, 2 * (64**3 + 64**3), 0.125


def cpu_hours(config, steps: int, platform: str | None = None) -> float | None:
    """The hours that ``steps`` encoder steps of ``config`` would take on a 2-core laptop CPU,
    scaled from the measured step; None when JAX runs on an accelerator."""
    if (platform or jax.devices()[0].platform) != "cpu":
        return None
    size = [int(s) for s in config.data.image_size]
    crop = int(config.data.crop_size)
    crops = max(1, int(config.augment.crops_per_image))
    pixels = int(config.train.batch_size) * (np.prod(size) + crops * crop ** len(size))
    width = float(config.model.width)
    if len(size) == 3:
        scale = _CPU_STEP_3D_S / _CPU_STEP_3D_VOXELS / _CPU_STEP_3D_WIDTH**2
    else:
        scale = _CPU_STEP_S / _CPU_STEP_PIXELS
    return float(steps * scale * pixels * width**2 / 3600)


# XLA's CPU compiler options for the training steps: YNNPACK (XLA's CPU kernel library) for the
# reductions only; convolutions run on Eigen and the elementwise operations and dots in XLA's own
# emitters, since YNNPACK's per-operation cost outweighed its speed on the step's many small
# elementwise operations (the optimizer's, the ReLUs'). Against XLA's defaults in one run: the
# 192 x 192 step 1.05x, the cpu preset's 1.17x (benchmarks/step_variants.py,
# docs/performance.md). A user's own setting in XLA_FLAGS wins.
_YNN = "xla_cpu_experimental_ynn_fusion_type"
_YNN_TYPES = ("REDUCE",)
CPU_STEP_OPTIONS = {_YNN: ",".join(f"LIBRARY_FUSION_TYPE_{t}" for t in _YNN_TYPES)}


def step_compiler_options(devices=None) -> dict:
    """``compiler_options`` for compiling a training step on ``devices`` (default: all):
    ``CPU_STEP_OPTIONS`` on the CPU unless XLA_FLAGS sets them, none elsewhere."""
    devices = jax.devices() if devices is None else devices
    if devices[0].platform != "cpu" or _YNN in os.environ.get("XLA_FLAGS", ""):
        return {}
    return dict(CPU_STEP_OPTIONS)
