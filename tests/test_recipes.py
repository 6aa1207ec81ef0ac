"""The from-scratch presets (``piaug.recipes``): one definition that every dataset config takes,
the warning for the paper's setting from random weights, and the step's memory before it
runs (``piaug.memory``)."""

import json
import logging

import jax
import numpy as np
import pytest
from conftest import load_config

from piaug import configure, memory, pipeline, recipes

# configs/ceph.py's own cpu preset before it moved to piaug.recipes (the runs in
# docs/from_scratch.md and docs/results/ used these values).
CEPH_CPU = {
    "data.image_size": (192, 192),
    "data.crop_size": 128,
    "model.width": 0.25,
    "model.norm": "batch",
    "model.embedding": 64,
    "loss.temperature": 0.1,
    "loss.clamp": False,
    "train.steps": 700,
    "train.batch_size": 4,
    "train.lr": 1e-3,
    "train.warmup_steps": 50,
    "train.schedule": "cosine",
    "train.checkpoint_every": 100,
    "augment.crop_grid": 32,
    "augment.max_scale": 1.25,
    "augment.blur": 1.5,
    "augment.noise": 0.05,
    "augment.anchors_per_crop": 64,
    "augment.crops_per_image": 2,
    "estimate.patch_size": 32,
    "eval.combine": "sum",
    "eval.upsample": "bilinear",
    "eval.template_sampling": "bilinear",
    "eval.every": 100,
    "detector.heatmap_loss": "balanced",
    "detector.batch_size": 4,
    "detector.steps": 2000,
    "detector.lr": 1e-3,
    "detector.warmup_steps": 50,
    "detector.schedule": "cosine",
    "detector.checkpoint_every": 200,
    "detector.max_rotation": 10.0,
    "detector.max_scale": 1.1,
    "detector.max_shift": 0.05,
    "detector.brightness": (0.8, 1.2),
    "detector.contrast": (0.8, 1.2),
}


def _get(config, key):
    node = config
    for part in key.split("."):
        node = node[part]
    return tuple(node) if isinstance(node, (list, tuple)) else node


def test_ceph_cpu_is_the_preset_that_was_measured():
    config = load_config("ceph", "cpu")
    assert {k: _get(config, k) for k in CEPH_CPU} == CEPH_CPU
    # the dataset's own settings stay
    assert config.augment.gamma == 0.3 and config.loss.window_mode == "half_open"
    assert config.train.epoch_passes == 11.0


@pytest.mark.parametrize("name", ["ceph", "hand", "folder"])
def test_every_config_takes_cpu_and_scratch_from_one_definition(name):
    paper = load_config(name)
    for preset, size, crop, patch, width in [
        ("cpu", (192, 192), 128, 32, 0.25),
        ("scratch", (384, 384), 256, 64, 1.0),
    ]:
        config = load_config(name, preset)
        for key, value in {**recipes.FROM_SCRATCH, **recipes.DETECTOR_FROM_SCRATCH}.items():
            assert _get(config, key) == value, (name, preset, key)
        assert tuple(config.data.image_size) == size and config.data.crop_size == crop
        assert config.estimate.patch_size == patch and config.model.width == width
        # what belongs to the dataset is the config's own
        assert config.augment.gamma == paper.augment.gamma
        assert config.loss.window == paper.loss.window
        assert config.train.epochs == paper.train.epochs
        assert config.data.options.to_dict() == paper.data.options.to_dict()
        configure.model(config), configure.loss(config), configure.train_settings(config)
    scratch = load_config(name, "scratch")
    assert scratch.train.steps == 0 and scratch.train.batch_size == 8  # the config's epochs
    assert load_config(name, "cpu").train.steps == 700


def test_presets_combine_with_the_ablations():
    config = load_config("hand", "cpu,gamma_0.1")
    assert config.augment.gamma == 0.1 and config.model.norm == "batch"
    with pytest.raises(ValueError, match="unknown preset 'cpus'.*cpu, scratch"):
        load_config("folder", "cpus")


def test_the_paper_config_from_random_weights_is_warned_about():
    for name in ("ceph", "hand", "folder"):
        message = recipes.from_scratch_warning(load_config(name))
        assert "11.19 mm" in message and "'scratch'" in message and "'cpu'" in message
        assert "model.norm=none" in message and "clamped temperature-1 loss" in message
        assert recipes.from_scratch_warning(load_config(name, "cpu")) is None
        assert recipes.from_scratch_warning(load_config(name, "scratch")) is None
    with_weights = load_config("ceph")
    with_weights.model.pretrained = "vgg19.pth"
    assert recipes.from_scratch_warning(with_weights) is None
    assert recipes.from_scratch_warning(load_config("demo")) is None  # the synthetic set learns


def _folder_config(root, tmp_path):
    """configs/test.py on a folder of three synthetic images (the folder reader's)."""
    from PIL import Image

    from piaug import data, defaults

    (root / "images").mkdir(parents=True)
    synthetic = data.load(
        "synthetic", None, split="train", num_images=3, size=(96, 80), num_landmarks=5, seed=0
    )
    rows = ["image," + ",".join(f"{k}_{a}" for k in range(1, 6) for a in "xy")]
    for i in range(3):
        ex = synthetic[i]
        Image.fromarray(ex["image"]).save(root / "images" / f"c{i}.png")
        rows.append(f"c{i}.png," + ",".join(f"{v:.2f}" for v in ex["landmarks"].ravel()))
    (root / "landmarks.csv").write_text("\n".join(rows) + "\n")
    config = load_config("test")
    config.data.name, config.data.dir = "folder", str(root)
    config.data.split = config.eval.split = "all"
    config.data.options = defaults.dataset_options("folder")
    config.data.options.spacing = 0.1
    config.data.cache_dir = str(tmp_path / "cache")
    config.train.steps = 2
    config.eval.every = 0
    config.stages = "info,pretrain"
    return config


def test_the_pretrain_stage_logs_the_warning_and_the_steps_memory(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    config = _folder_config(tmp_path / "folder", tmp_path)
    pipeline.run(config, tmp_path / "wd")
    assert "pretrain: folder: the encoders train from random weights" in caplog.text
    assert "pretrain: the compiled step needs" in caplog.text and "temporaries" in caplog.text
    caplog.clear()
    config.model.norm, config.stages, config.force = "batch", "pretrain", True
    pipeline.run(config, tmp_path / "wd2")
    assert "train from random weights" not in caplog.text


def test_the_scratch_recipe_trains_at_a_tiny_size(tmp_path):
    config = load_config("test", "scratch")
    assert config.model.norm == "batch" and config.augment.crops_per_image == 2
    config.model.width, config.train.steps, config.train.batch_size = 0.0625, 3, 2
    config.augment.anchors_per_crop, config.eval.every = 4, 0
    config.data.cache_dir = str(tmp_path / "cache")
    config.stages = "info,pretrain"
    pipeline.run(config, tmp_path / "wd")
    rows = [
        json.loads(line) for line in (tmp_path / "wd" / "metrics.jsonl").read_text().splitlines()
    ]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert len(losses) == 3 and np.all(np.isfinite(losses))


def test_memory_before_the_step_runs(tiny_config):
    tiny_config.augment.crops_per_image, tiny_config.augment.anchors_per_crop = 2, 3
    two, four = memory.encoder_step(tiny_config, 2), memory.encoder_step(tiny_config, 4)
    assert two.temporaries > 0 and four.temporaries > two.temporaries
    # The arguments are the state and the batch, byte for byte.
    init, _, _ = memory.encoder_program(tiny_config)
    state = jax.eval_shape(init, jax.random.key(0))

    def nbytes(tree):
        return sum(np.prod(x.shape) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))

    batch = memory.encoder_batch(tiny_config, 2)
    assert batch["crop"].shape == (2, 2, 32, 32) and batch["anchor"].shape == (2, 2, 3, 2)
    assert two.arguments == nbytes(state) + nbytes(batch)
    assert two.peak == two.arguments + two.outputs - two.aliased + two.temporaries
    assert two.aliased > 0  # the state is donated
    assert memory.fits(two, 16) and not memory.fits(
        memory.StepMemory(arguments=15 * 10**9, outputs=0, aliased=0, temporaries=10**9), 16
    )
