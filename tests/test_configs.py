"""The paper configs run the authors' procedure, and every option added for training from
scratch defaults to the paper's behaviour."""

import pytest
from conftest import load_config

from piaug import configure


def test_ceph_is_the_authors_schedule_window_and_matching():
    config = load_config("ceph")
    settings = configure.train_settings(config)
    assert settings.num_steps(150) == 82_500  # 400 epochs of 11 passes over 150 images
    assert round(settings.lr_decay_epochs * settings.steps_per_epoch(150)) == 10_312
    assert configure.loss(config).window_mode == "half_open"
    assert config.eval.upsample == "bilinear" and config.eval.combine == "product"
    assert config.eval.template_sampling == "cell"  # the authors' tester reads the cell
    assert config.data.image_size == (384, 384) and config.data.crop_size == 64
    model = configure.model(config)
    assert (model.norm, model.width, model.embedding) == ("none", 1.0, 16)
    loss = configure.loss(config)
    assert (loss.temperature, loss.clamp, loss.window) == (1.0, True, 9)


def test_hand_is_the_authors_hand_settings():
    config = load_config("hand")
    assert configure.loss(config).window == 6 and config.loss.window_mode == "half_open"
    assert config.train.epochs == 450 and config.train.lr_decay_epochs == 200
    assert config.train.epoch_passes == 6.0 and config.eval.upsample == "bilinear"


@pytest.mark.parametrize("name", ["demo", "test", "folder"])
def test_new_options_default_to_the_papers_behaviour(name):
    config = load_config(name)
    assert config.model.norm == "none" and config.train.warmup_steps == 0
    assert config.augment.crop_grid == 0 and config.augment.max_scale == 1.0
    assert config.augment.blur == 0.0 and config.augment.noise == 0.0
    assert config.eval.combine == "product" and config.loss.window_mode == "closed"
    assert config.train.epoch_passes == 1.0 and config.augment.anchors_per_crop == 1
    assert config.train.schedule == "step" and config.eval.template_sampling == "cell"
    transform = configure.baseline_anchor_crop(config)
    assert transform.anchors_per_crop == 1
    assert (transform.crop_grid, transform.max_scale, transform.blur, transform.noise) == (
        0,
        1.0,
        0.0,
        0.0,
    )


def test_the_cpu_preset_interpolates_the_templates_vectors():
    config = load_config("ceph", "cpu")
    assert config.eval.template_sampling == "bilinear" and config.eval.upsample == "bilinear"


def test_the_cpu_preset_of_volumes_crops_the_whole_grid_and_matches_strides_8_to_2():
    """configs/hn3d.py:cpu (64^3) and the demo: one crop of each volume, the whole grid, cut
    trilinearly, with the 2-D recipe's 64 anchors; matching by strides 8, 4, 2 with
    refinement. 2-D configs keep all five."""
    for config in (load_config("hn3d", "cpu"), load_config("demo3d")):
        assert tuple(config.data.image_size) == (64, 64, 64) and config.data.crop_size == 64
        assert config.augment.crops_per_image == 1 and config.augment.rotation_order == 1
        assert config.augment.anchors_per_crop == 64
        assert tuple(config.eval.scales) == (8, 4, 2) and config.eval.subpixel
        configure.match_settings(config)  # valid for the encoder's strides
    assert load_config("hn3d").data.crop_size == 64  # the accelerator config: 128^3, 64^3 crops
    assert tuple(load_config("ceph", "cpu").eval.scales) == ()
