"""The from-scratch presets (``piaug.recipes``): one definition that every dataset config takes,
the warning for the paper's setting from random weights, the step's memory before it runs
(``piaug.memory``) and the training steps' compiler options on the CPU."""

import json
import logging

import jax
import numpy as np
import pytest
from conftest import folder_config, load_config

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


@pytest.mark.slow  # 35 s: a dataset and a training of its own
def test_the_pretrain_stage_logs_the_warning_and_the_steps_memory(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    config = folder_config(tmp_path / "folder", images=3, labelled=3)
    config.data.cache_dir = str(tmp_path / "cache")
    config.train.steps, config.eval.every, config.stages = 2, 0, "info,pretrain"
    pipeline.run(config, tmp_path / "wd")
    assert "pretrain: folder: the encoders train from random weights" in caplog.text
    assert "pretrain: the compiled step needs" in caplog.text and "temporaries" in caplog.text


@pytest.mark.slow  # 25 s: the scratch preset's own compiled step
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


def test_step_memory_adds_up():
    mem = memory.StepMemory(arguments=10, outputs=8, aliased=6, temporaries=5)
    assert mem.peak == 10 + 8 - 6 + 5 and mem.as_dict()["peak"] == mem.peak
    assert memory.fits(memory.StepMemory(11 * 10**9, 0, 0, 10**9), 16)  # 12 GB: 75 % of 16
    assert not memory.fits(memory.StepMemory(11 * 10**9, 0, 0, 2 * 10**9), 16)
    assert "1.00 GB on the device" in memory.StepMemory(5 * 10**8, 0, 0, 5 * 10**8).describe()


@pytest.mark.slow  # 30 s: two compilations of the step
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


def test_the_training_steps_compiler_options_on_the_cpu(monkeypatch):
    from piaug import devices

    monkeypatch.delenv("XLA_FLAGS", raising=False)
    options = devices.step_compiler_options()
    assert list(options) == ["xla_cpu_experimental_ynn_fusion_type"]
    # YNNPACK for the reductions only (benchmarks/step_variants.py)
    assert options["xla_cpu_experimental_ynn_fusion_type"] == "LIBRARY_FUSION_TYPE_REDUCE"
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_experimental_ynn_fusion_type=invalid")
    assert devices.step_compiler_options() == {}  # the user's own setting wins
    gpu = [type("D", (), {"platform": "gpu"})()]
    monkeypatch.delenv("XLA_FLAGS")
    assert devices.step_compiler_options(gpu) == {}
