"""The pipeline on configs/test.py and the checks of the config edge: the files the info stage
writes, skipping, and bad configs refused before anything is written (in-process, through
``piaug.pipeline.run`` and ``piaug.configure.check``); the command line's own errors in a
subprocess."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds
from conftest import assert_drawn, folder_config, load_config, truncated_folder
from PIL import Image

from piaug import ablations, configure, data, defaults, devices, layout, pipeline
from piaug.data import prepare
from piaug.errors import UserError
from piaug.stages import training

REPO = Path(__file__).resolve().parents[1]
SHARED_CEPH = REPO.parent / "shared" / "data" / "isbi2015_ceph_train"


def run_cli(workdir, *overrides, config="configs/test.py", env=None):
    """The command line, info stage only unless the overrides name stages."""
    cmd = [sys.executable, "-m", "piaug.main", f"--config={config}", f"--workdir={workdir}"]
    if not any(o.startswith("--config.stages=") for o in overrides):
        overrides += ("--config.stages=info",)
    return subprocess.run(
        cmd + list(overrides), cwd=REPO, capture_output=True, text=True, timeout=300, env=env
    )


def test_info_stage_writes_its_files(tiny_run):
    config = json.loads((tiny_run / "config.json").read_text())
    assert config["data"]["name"] == "synthetic" and config["info"]["footprint"] == "disk(3)"

    stats = json.loads((tiny_run / "info_stats.json").read_text())
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

    figures = sorted(p.name for p in (tiny_run / "figures").glob("info_*.png"))
    assert figures == ["info_synthetic-0-0000.png", "info_synthetic-0-0001.png"]
    for name in [*figures, "iie_histogram.png"]:
        assert_drawn(tiny_run / "figures" / name)


def test_info_stage_shows_its_progress(tiny_config, tmp_path, capfd):
    tiny_config.stages = "info"
    pipeline.run(tiny_config, tmp_path / "wd")
    err = capfd.readouterr().err
    assert "info: statistics" in err and "img/s" in err  # the progress bar, with its rate


def test_rerun_skips_and_keeps_results(tiny_run_copy, tiny_config, logs):
    stats = tiny_run_copy / "info_stats.json"
    before = stats.stat().st_mtime_ns
    tiny_config.stages = "info"
    pipeline.run(tiny_config, tiny_run_copy)
    assert "info_stats.json exists, skipping" in logs.text
    assert stats.stat().st_mtime_ns == before


def test_different_config_in_same_workdir_is_an_error(tiny_run, tiny_config):
    tiny_config.data.options.num_images = 4
    tiny_config.stages = "info"
    with pytest.raises(UserError, match="different config .*data.options.num_images: 3 -> 4"):
        pipeline.run(tiny_config, tiny_run)


def test_a_run_of_an_older_piaug_resumes_and_records_the_fields_it_lacked(
    tiny_run_copy, tiny_config, logs
):
    """A config.json written before a field existed (here the detector's): the field takes this
    call's value and is recorded, rather than the run being refused; changed fields still are."""
    path = tiny_run_copy / "config.json"
    saved = json.loads(path.read_text())
    saved.pop("detector")
    saved["info"].pop("num_figures")
    path.write_text(json.dumps(saved))
    tiny_config.stages = "info"
    pipeline.run(tiny_config, tiny_run_copy)
    assert "predates the config fields detector.*, info.num_figures:" in logs.text
    recorded = json.loads(path.read_text())
    assert recorded["detector"]["steps"] == tiny_config.detector.steps
    assert recorded["info"]["num_figures"] == tiny_config.info.num_figures
    tiny_config.info.num_figures += 1
    with pytest.raises(UserError, match="different config .*info.num_figures"):
        pipeline.run(tiny_config, tiny_run_copy)


def test_the_log_names_the_devices_and_warns_of_a_long_cpu_training(tiny_run, logs):
    from types import SimpleNamespace

    log = (tiny_run.parent / "run.log").read_text()
    for stage in ("info", "pretrain", "estimate", "train", "evaluate"):
        assert f"{stage}: on cpu, 1 process(es)" in log
    assert "meant for an accelerator" not in log  # the tiny config trains in seconds
    gpus = [SimpleNamespace(platform="gpu", device_kind="NVIDIA H100 80GB HBM3")] * 2
    assert devices.describe_devices(gpus) == "2 x NVIDIA H100 80GB HBM3 (gpu)"
    tpus = [SimpleNamespace(platform="tpu", device_kind="TPU v4")] * 8
    assert devices.describe_devices(tpus) == "8 x TPU v4 (tpu)"
    cpus = [SimpleNamespace(platform="cpu", device_kind="cpu")] * 4
    assert devices.describe_devices(cpus) == "4 x cpu"
    paper = load_config("ceph")
    hours = devices.cpu_hours(paper, 82_500, platform="cpu")
    assert 1000 < hours < 1300  # 48.9 s a step, the README's measured case (a)
    assert devices.cpu_hours(paper, 82_500, platform="gpu") is None
    assert devices.cpu_hours(load_config("ceph", "cpu"), 1300, platform="cpu") < 2
    training.warn_if_slow_on_cpu("pretrain", hours, 82_500)
    assert (
        "pretrain: this config is meant for an accelerator: its 82500 steps would take about"
        in logs.text
    )
    assert " days on a 2-core laptop CPU" in logs.text


def test_a_failed_first_stage_leaves_no_workdir(tmp_path, logs):
    """A truncated image stops the info stage of a new run: no config.json, no empty folder
    is left (the next call starts clean); an existing run's files are never removed."""
    root = truncated_folder(tmp_path / "mine")
    config = load_config("folder")
    config.data.dir, config.data.options.spacing = str(root), 0.1
    config.data.image_size, config.data.crop_size = (32, 32), 16
    config.info.footprint, config.stages = "disk(2)", "info"
    config.data.cache_dir = str(tmp_path / "cache")
    with pytest.raises(UserError, match="cannot decode image .*c1.png"):
        pipeline.run(config, tmp_path / "run")
    assert (
        not (tmp_path / "run").exists() and "the run stopped before it made anything" in logs.text
    )
    assert [p.name for p in (tmp_path / "cache").rglob("*")] == [prepare.DIGESTS_FILE]
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text(json.dumps(configure.as_dict(config)))
    with pytest.raises(UserError):  # a run that existed before the call keeps its files
        pipeline.run(config, tmp_path / "run")
    assert (tmp_path / "run" / "config.json").exists()


def test_command_line_errors_are_one_line(tmp_path):
    """An unknown field and a value of the wrong type: one line each, no traceback, no
    workdir (the only errors the command line itself raises; the others are the config
    edge's, tested in-process below)."""
    for override, message in [
        ("--config.data.bogus=1", "unknown config field in --config.data.bogus (no field 'bogus'"),
        (
            "--config.trian.steps=3",
            "in --config.trian.steps (no field 'trian' in config; did you mean 'train'?)",
        ),
        ("--config.train.steps=five", "--config.train.steps=five: invalid literal for int()"),
    ]:
        result = run_cli(tmp_path / "wd", override)
        assert result.returncode != 0 and message in result.stderr, result.stderr[-2000:]
        assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
        assert not (tmp_path / "wd").exists()


def test_an_unknown_nested_field_names_only_its_override_in_plain_text(tmp_path):
    """Among several good overrides, the one with a misspelt nested field is named alone, with
    the group it is missing from and the suggestion, without Python's escapes."""
    good = ("--config.data.dir=D", "--config.stages=evaluate", "--config.train.steps=2")
    result = run_cli(tmp_path / "wd", good[0], good[1], "--config.eval.tempate=005", good[2])
    error = result.stderr.strip()
    assert result.returncode != 0 and len(error.splitlines()) == 1, result.stderr[-2000:]
    assert error.startswith(
        "error: unknown config field in --config.eval.tempate (no field 'tempate' in "
        "config.eval; did you mean 'template'?)"
    ), error
    assert not any(o.split("=")[0] in error for o in good), error
    assert "\\" not in error and '"' not in error, error  # no repr's escapes or quotes
    assert not (tmp_path / "wd").exists()


def test_a_pipeline_error_is_printed_once_without_backend_chatter(tmp_path):
    result = run_cli(tmp_path / "wd", "--config.data.dir=/nonexistent", config="configs/ceph.py")
    assert result.returncode != 0 and result.stderr.count("does not exist") == 1, result.stderr
    assert result.stderr.count("Get it from") == 1  # the download instructions, once
    assert "Unable to initialize backend" not in result.stderr


BAD_VALUES = [
    ({"stages": "info,fit"}, "config.stages='info,fit'"),
    ({"estimate.alpha": 0.0}, "config.estimate.alpha=0.0: need alpha_hat > 0"),
    ({"estimate.estimator": "kde"}, "config.estimate.estimator='kde'"),
    ({"estimate.patch_size": 500}, "config.estimate.patch_size=500"),
    ({"train.baseline": "/nope/checkpoints"}, "config.train.baseline='/nope/checkpoints'"),
    ({"analyze.footprints": ("disk(3)", "ring(2)")}, "config.analyze.footprints='ring(2)'"),
    ({"info.footprint": "ring(3)"}, "config.info.footprint='ring(3)'"),
    ({"info.thresholds": (4.5, 2.0)}, "config.info.thresholds=(4.5, 2.0): need two numbers"),
    ({"data.name": "cifar"}, "unknown dataset 'cifar'"),
    ({"data.image_size": (4, 64)}, "config.data.image_size=(4, 64)"),
    ({"data.crop_size": 65}, "config.data.crop_size=65"),
    ({"loss.temperature": 0.0}, "config.loss.temperature=0.0: must be positive"),
    ({"model.dtype": "int8"}, "config.model.dtype='int8'"),
    ({"model.width": 0.0}, "config.model.width=0.0: must be positive"),
    ({"train.lr_decay": 1.5}, "config.train.lr_decay=1.5: must be in (0, 1]"),
    ({"train.batch_size": 4}, "config.train.batch_size=4 is larger than the 3 training images"),
    ({"eval.upsample": "cubic"}, "config.eval.upsample='cubic'"),
    ({"eval.template_sampling": "nearest"}, "config.eval.template_sampling='nearest'"),
    (
        {"augment.continuous": True, "augment.estimated": False},
        "config.augment.continuous=True interpolates estimated ranges",
    ),
    ({"augment.anchors": "gauss"}, "config.augment.anchors='gauss'"),
    ({"augment.anchors_per_crop": 0}, "config.augment.anchors_per_crop=0"),
    ({"augment.crops_per_image": 0}, "config.augment.crops_per_image=0"),
    ({"augment.crop_grid": -1}, "config.augment.crop_grid=-1"),
    ({"augment.max_scale": 0.5}, "config.augment.max_scale=0.5"),
    ({"model.pretrained": "/nope/vgg19.pth"}, "config.model.pretrained='/nope/vgg19.pth'"),
    ({"info.footprint": "ball(2)"}, "config.info.footprint='ball(2)' is 3-D but image"),
]


@pytest.mark.parametrize("fields, message", BAD_VALUES)
def test_bad_values_are_errors_that_write_nothing(tiny_config, tmp_path, fields, message):
    for key, value in fields.items():
        ablations.set_field(tiny_config, key, value)
    tiny_config.stages = fields.get("stages", ",".join(pipeline.STAGES))
    with pytest.raises(UserError) as error:
        pipeline.run(tiny_config, tmp_path / "wd")
    assert message in str(error.value)
    assert not (tmp_path / "wd").exists()


def test_a_batch_the_devices_cannot_split_is_refused(tiny_config, monkeypatch):
    monkeypatch.setattr(configure.jax, "device_count", lambda: 4)
    tiny_config.train.batch_size = 2
    with pytest.raises(UserError, match="batch_size=2 does not split over the 4 devices"):
        configure.check(tiny_config)
    tiny_config.train.batch_size = 4  # the detector's batch, when the detector trains
    with pytest.raises(UserError, match="detector.batch_size=3 does not split over the 4"):
        configure.check(tiny_config, ["detector"])
    configure.check(tiny_config, ["info"])


def test_the_evaluation_split_is_checked_before_anything_trains(tmp_path):
    """A folder whose csv has no test rows: evaluate on 'test' is refused before pretraining
    (it used to train both encoders and then fail); without evaluate the run may go on."""
    root = tmp_path / "mine"
    (root / "images").mkdir(parents=True)
    rows = ["image,1_x,1_y,split"]
    for i in range(3):
        pixels = np.random.default_rng(i).integers(0, 255, (64, 64), dtype=np.uint8)
        Image.fromarray(pixels).save(root / "images" / f"c{i}.png")
        rows.append(f"c{i}.png,{10 + i},{20 + i},train")
    (root / "landmarks.csv").write_text("\n".join(rows) + "\n")
    config = load_config("folder")
    config.data.dir, config.data.split, config.eval.split = str(root), "train", "test"
    config.data.options.spacing = 0.1
    config.train.batch_size = 2
    with pytest.raises(UserError, match="config.eval.split='test' cannot be evaluated"):
        pipeline.run(config, tmp_path / "wd")
    assert not (tmp_path / "wd").exists()
    configure.check(config, ["info", "pretrain"])  # no evaluate: fine


@pytest.mark.skipif(not SHARED_CEPH.is_dir(), reason=f"no {SHARED_CEPH} (CI's shared data)")
def test_the_readmes_ceph_command_on_a_train_only_folder_stops_before_training(tmp_path):
    config = load_config("ceph")
    config.data.dir = str(SHARED_CEPH)
    with pytest.raises(UserError, match="config.eval.split='test'.*150 images"):
        pipeline.run(config, tmp_path / "wd")
    assert not (tmp_path / "wd").exists()


def test_foreign_non_empty_workdir_is_refused(tiny_config, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    tiny_config.stages = "info"
    with pytest.raises(UserError, match="not empty and has no config.json"):
        pipeline.run(tiny_config, tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_synthetic_is_a_dataset_like_the_others():
    train = data.load("synthetic", num_images=2, size=(64, 64), num_landmarks=3)
    test = data.load("synthetic", split="test", num_images=2, size=(64, 64), num_landmarks=3)
    assert len(train) == 2 and train[1]["landmarks"].shape == (3, 2)
    assert not np.array_equal(train[0]["image"], test[0]["image"])
    with pytest.raises(ValueError, match="unknown options"):
        data.load("synthetic", colour=True)
    with pytest.raises(ValueError, match="split"):
        data.load("synthetic", split="val")


def test_config_seed_draws_the_synthetic_set(tiny_config):
    tiny_config.seed = 5
    dataset = configure.load_dataset(tiny_config)
    assert dataset[0]["id"] == "synthetic-5-0000"
    other = configure.load_dataset(load_config("test"))
    assert not np.array_equal(dataset[0]["image"], other[0]["image"])


def test_a_missing_dataset_folder_prints_the_download_instructions(tmp_path):
    missing = tmp_path / "ISBI2015"
    config = load_config("ceph")
    config.data.dir = str(missing)
    with pytest.raises(UserError) as error:
        pipeline.run(config, tmp_path / "wd")
    assert f"{missing} does not exist" in str(error.value) and "figshare" in str(error.value)
    assert not (tmp_path / "wd").exists()


@pytest.mark.slow
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


def test_every_dataset_is_declared_once(tmp_path):
    """The registry: each reader's spec makes its config options, default splits and TFDS
    builder; an unregistered name is refused by name, never built as another dataset."""
    from piaug.data import ceph, hand

    for name, spec in data.DATASETS.items():
        config = defaults.base_config(name)
        options = config.data.options.to_dict()
        assert options == spec.defaults, name
        assert (config.data.split, config.eval.split) == (spec.train_split, spec.eval_split)
        builder = prepare.builder_class(name)
        assert builder.__doc__ == spec.description and builder is prepare.builder_class(name)
    assert prepare.builder_class("ceph").MANUAL_DOWNLOAD_INSTRUCTIONS == ceph.DOWNLOAD_INSTRUCTIONS
    assert prepare.builder_class("hand").MANUAL_DOWNLOAD_INSTRUCTIONS == hand.DOWNLOAD_INSTRUCTIONS
    assert prepare.builder_class("ceph").__name__ == "PiaugCeph"
    assert "all.csv" in hand.DOWNLOAD_INSTRUCTIONS and "RawImage" in ceph.DOWNLOAD_INSTRUCTIONS

    class Unregistered:  # a reader nobody registered
        name, num_landmarks, ids, options, report, source_files = "mine", 1, ["a"], {}, [], []

        def __len__(self):
            return 1

    with pytest.raises(UserError, match="unknown dataset 'mine'"):
        prepare.prepare(Unregistered(), image_size=(32, 32), cache_dir=tmp_path)


def test_another_datasets_options_point_to_its_config(tiny_config, tmp_path):
    tiny_config.data.name, tiny_config.data.dir = "ceph", str(tmp_path)
    with pytest.raises(UserError, match="num_images.*start from configs/ceph.py"):
        configure.load_dataset(tiny_config)


def test_layout_names_every_file_of_a_run(tiny_run):
    files = {p.name for p in tiny_run.iterdir()}
    for name in (
        layout.CONFIG_FILE,
        layout.INFO_FILE,
        layout.TEMPLATE_FILE,
        layout.ESTIMATE_FILE,
        layout.RESULTS_FILE,
        layout.ANALYSIS_FILE,
        layout.METRICS_FILE,
        layout.CHECKPOINTS,
        layout.PIAUG_DIR,
        layout.FIGURES,
    ):
        assert name in files, name
    assert set(layout.trained_encoders(tiny_run)) == {"baseline", "piaug"}


@pytest.mark.slow  # 35 s: its own dataset and compiled programs
def test_unlabelled_images_pretrain_and_are_left_out_of_evaluation(tmp_path):
    """A folder of five images, two without landmarks: all five pretrain; the template is a
    labelled one, and only the other labelled images are evaluated and probed."""
    # c3 has a row of empty landmarks, c4 no row
    config = folder_config(tmp_path / "mine", images=5, labelled=3, empty=1)
    config.stages = "info,pretrain,evaluate"
    workdir = tmp_path / "wd"
    pipeline.run(config, workdir)
    stats = json.loads((workdir / layout.INFO_FILE).read_text())
    assert stats["num_images"] == 5 and stats["landmark_iie"]["num_images"] == 3
    assert [p["landmark_iie"] is None for p in stats["per_image"]] == [False] * 3 + [True] * 2
    template = json.loads((workdir / layout.TEMPLATE_FILE).read_text())["id"]
    results = json.loads((workdir / layout.RESULTS_FILE).read_text())
    assert template in {"c0", "c1", "c2"}
    assert sorted(results["baseline"]["ids"] + [template]) == ["c0", "c1", "c2"]
    probes = [json.loads(r) for r in (workdir / layout.METRICS_FILE).read_text().splitlines()]
    assert any("probe_mre_mm" in r for r in probes)  # watched on the labelled images
