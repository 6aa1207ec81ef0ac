"""The command line on configs/test.py: the files it writes, skipping, and bad configs."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds

from piaug import pipeline
from piaug.data import prepare

REPO = Path(__file__).resolve().parents[1]


def run_cli(workdir, *overrides, check=True, config="configs/test.py"):
    """The CLI; the info stage only unless the overrides name stages (tests/test_train.py
    runs the pretrain stage)."""
    cmd = [sys.executable, "-m", "piaug.main", f"--config={config}", f"--workdir={workdir}"]
    if not any(o.startswith("--config.stages=") for o in overrides):
        overrides += ("--config.stages=info",)
    result = subprocess.run(
        cmd + list(overrides), cwd=REPO, capture_output=True, text=True, timeout=300
    )
    if check and result.returncode != 0:
        raise AssertionError(f"{cmd} failed:\n{result.stderr[-3000:]}")
    return result


@pytest.fixture(scope="module")
def info_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("run") / "wd"
    result = run_cli(workdir)
    return workdir, result


def test_info_stage_writes_its_files(info_run):
    workdir, result = info_run
    config = json.loads((workdir / "config.json").read_text())
    assert config["data"]["name"] == "synthetic" and config["info"]["footprint"] == "disk(3)"

    stats = json.loads((workdir / "info_stats.json").read_text())
    assert stats["num_images"] == 3 and stats["units"] == "bits"
    counts = np.asarray(stats["iie_histogram"]["counts"])
    assert counts.sum() == 3 * 64 * 64
    assert len(stats["iie_histogram"]["bin_edges"]) == len(counts) + 1
    fractions = stats["group_fraction"]
    assert set(fractions) == {"low", "medium", "high"}
    assert sum(fractions.values()) == pytest.approx(1.0)
    assert all(0 < v < 1 for v in fractions.values())
    assert len(stats["landmark_iie"]["mean"]) == 5
    assert [len(im["landmark_iie"]) for im in stats["per_image"]] == [5, 5, 5]

    # The stats describe the prepared dataset: the IIE at a landmark is the map's value there.
    source = tfds.builder_from_directory(stats["prepared"]).as_data_source(prepare.TFDS_SPLIT)
    assert [source[i]["id"].decode() for i in range(3)] == [im["id"] for im in stats["per_image"]]
    first = source[0]["iie"]
    assert first.shape == (64, 64) and 0 <= first.min() and first.max() <= 8
    assert stats["per_image"][0]["mean_iie"] == pytest.approx(first.mean(), abs=1e-5)
    cols, rows = np.round(source[0]["landmarks"]).astype(int).T
    np.testing.assert_allclose(stats["per_image"][0]["landmark_iie"], first[rows, cols], atol=1e-4)

    figures = sorted(p.name for p in (workdir / "figures").glob("*.png"))
    assert figures == [
        "iie_histogram.png",
        "info_synthetic-0-0000.png",
        "info_synthetic-0-0001.png",
    ]
    assert all((workdir / "figures" / f).stat().st_size > 5000 for f in figures)
    assert "IIE disk(3)" in result.stderr and "img/s" in result.stderr  # the progress bar


def test_rerun_skips_and_keeps_results(info_run):
    workdir, _ = info_run
    stats = workdir / "info_stats.json"
    before = stats.stat().st_mtime_ns
    result = run_cli(workdir)
    assert "skipping" in result.stderr
    assert stats.stat().st_mtime_ns == before


def test_different_config_in_same_workdir_is_an_error(info_run):
    workdir, _ = info_run
    result = run_cli(workdir, "--config.data.options.num_images=4", check=False)
    assert result.returncode != 0
    assert (
        "different config" in result.stderr and "data.options.num_images: 3 -> 4" in result.stderr
    )


def test_unknown_key_is_an_error(tmp_path):
    result = run_cli(tmp_path / "wd", "--config.data.bogus=1", check=False)
    assert result.returncode != 0
    assert "unknown config field in --config.data.bogus" in result.stderr
    assert not (tmp_path / "wd").exists()


@pytest.mark.parametrize(
    "override, message",
    [
        ("--config.stages=info,fit", "config.stages='info,fit'"),
        ("--config.estimate.alpha=0", "config.estimate.alpha=0.0: need alpha_hat > 0"),
        ("--config.estimate.estimator=kde", "config.estimate.estimator='kde'"),
        ("--config.estimate.patch_size=500", "config.estimate.patch_size=500"),
        ("--config.train.baseline=/nope/checkpoints", "config.train.baseline='/nope/checkpoints'"),
        (
            "--config.analyze.footprints=('disk(3)','ring(2)')",
            "config.analyze.footprints='ring(2)'",
        ),
        ("--config.info.footprint=ring(3)", "config.info.footprint='ring(3)'"),
        ("--config.data.name=cifar", "unknown dataset 'cifar'"),
        ("--config.loss.temperature=0", "config.loss.temperature=0.0: must be positive"),
        ("--config.model.dtype=int8", "config.model.dtype='int8'"),
        ("--config.eval.upsample=cubic", "config.eval.upsample='cubic'"),
        (
            "--config.augment.continuous=True --config.augment.estimated=False",
            "config.augment.continuous=True interpolates estimated ranges",
        ),
        ("--config.model.pretrained=/nope/vgg19.pth", "config.model.pretrained='/nope/vgg19.pth'"),
    ],
)
def test_bad_values_are_errors_that_write_nothing(tmp_path, override, message):
    result = run_cli(tmp_path / "wd", *override.split(), check=False)
    assert result.returncode != 0 and message in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "wd").exists()


def test_foreign_non_empty_workdir_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    result = run_cli(tmp_path, check=False)
    assert result.returncode != 0 and "not empty and has no config.json" in result.stderr
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_synthetic_is_a_dataset_like_the_others():
    from piaug import data

    train = data.load("synthetic", num_images=2, size=(64, 64), num_landmarks=3)
    test = data.load("synthetic", split="test", num_images=2, size=(64, 64), num_landmarks=3)
    assert len(train) == 2 and train[1]["landmarks"].shape == (3, 2)
    assert not np.array_equal(train[0]["image"], test[0]["image"])
    with pytest.raises(ValueError, match="unknown options"):
        data.load("synthetic", colour=True)
    with pytest.raises(ValueError, match="split"):
        data.load("synthetic", split="val")


def test_config_seed_draws_the_synthetic_set():
    config = _test_config()
    config.seed = 5
    dataset = pipeline.load_dataset(config)
    assert dataset[0]["id"] == "synthetic-5-0000"
    other = pipeline.load_dataset(_test_config())
    assert not np.array_equal(dataset[0]["image"], other[0]["image"])


def test_3d_footprint_on_images_is_a_user_error(tmp_path):
    result = run_cli(tmp_path / "wd", "--config.info.footprint=ball(2)", check=False)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "config.info.footprint='ball(2)' is 3-D but image 'synthetic-0-0000' is 2-D" in (
        result.stderr
    )
    assert not (tmp_path / "wd").exists()


def test_a_missing_dataset_folder_prints_the_download_instructions(tmp_path):
    missing = tmp_path / "ISBI2015"
    result = run_cli(
        tmp_path / "wd", f"--config.data.dir={missing}", check=False, config="configs/ceph.py"
    )
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert f"{missing} does not exist" in result.stderr and "figshare" in result.stderr
    assert not (tmp_path / "wd").exists()


def test_data_prep_builds_the_prepared_dataset_once(tmp_path):
    cmd = [sys.executable, "data_prep/build.py", "--config=configs/test.py"]
    env = {**os.environ, "PIAUG_CACHE": str(tmp_path)}
    first = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "3 examples of synthetic (train) at " + str(tmp_path) in first.stdout
    assert "prepare synthetic: IIE disk(3)" in first.stderr  # the progress bar
    again = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert again.returncode == 0 and "prepare synthetic" not in again.stderr
    assert "Downloading and preparing" not in again.stdout  # TFDS's line for a build
    assert again.stdout.splitlines()[-1] == first.stdout.splitlines()[-1]


def test_the_prepared_builders_carry_download_instructions():
    from piaug.data import ceph, hand, prepare

    assert prepare.PiaugCeph.MANUAL_DOWNLOAD_INSTRUCTIONS == ceph.DOWNLOAD_INSTRUCTIONS
    assert prepare.PiaugHand.MANUAL_DOWNLOAD_INSTRUCTIONS == hand.DOWNLOAD_INSTRUCTIONS
    assert "all.csv" in hand.DOWNLOAD_INSTRUCTIONS and "RawImage" in ceph.DOWNLOAD_INSTRUCTIONS


def test_another_datasets_options_point_to_its_config(tmp_path):
    config = _test_config()
    config.data.name, config.data.dir = "ceph", str(tmp_path)
    with pytest.raises(pipeline.UserError, match="num_images.*start from configs/ceph.py"):
        pipeline.load_dataset(config)


def _test_config():
    spec = importlib.util.spec_from_file_location("test_config", REPO / "configs" / "test.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()
