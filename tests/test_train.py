"""Pretraining and the stages after it, on the tiny config's run (in-process): checkpoints,
metrics and the probe, the estimate, evaluation (and re-evaluation), analysis, restoring
encoders. The slow tier: a non-finite loss stopping the run cleanly; through the command line,
the sharded step equals the single-device one, a 2-process run equals a 1-process run, a killed
or pre-empted run resumes to the same parameters, checkpoints move between device counts, and
benchmarks/gpu_check.sh runs at a tiny size."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import TEST_XLA_FLAGS, assert_drawn, load_config

from piaug import checkpoints, configure, losses, models, pipeline, train
from piaug.errors import UserError

REPO = Path(__file__).resolve().parents[1]

# Runs the CLI with a signal sent to itself (HOOK=SIGKILL or SIGTERM) just before the HOOK_AT-th
# step of this process.
HOOKED = textwrap.dedent(
    """
    import os, signal
    from absl import app
    from piaug import main, train

    at, hook = int(os.environ["HOOK_AT"]), os.environ["HOOK"]
    original, calls = train.device_batch, [0]

    def device_batch(batch, *args):
        calls[0] += 1
        if calls[0] == at:
            os.kill(os.getpid(), getattr(signal, hook))
        return original(batch, *args)

    train.device_batch = device_batch
    app.run(main.main, flags_parser=main.parse_flags)
    """
)


def _env(devices=1):
    """The environment of a subprocess on ``devices`` fake CPU devices; with one, the flags
    of the test session, so that the programs it compiled serve this one too."""
    env = dict(os.environ)
    env["XLA_FLAGS"] = TEST_XLA_FLAGS
    if devices > 1:
        env["XLA_FLAGS"] += f" --xla_force_host_platform_device_count={devices}"
    env["PYTHONPATH"] = str(REPO)
    return env


def _cli(workdir, *extra, devices=1, script=None, env_extra=None, check=True):
    """The CLI on configs/test.py, pretrain stage only unless ``extra`` names stages."""
    cmd = [sys.executable]
    cmd += ["-c", script] if script else ["-m", "piaug.main"]
    cmd += [f"--config={REPO / 'configs/test.py'}", f"--workdir={workdir}"]
    if not any(e.startswith("--config.stages=") for e in extra):
        extra += ("--config.stages=pretrain",)
    # No probe: these runs are compared by their losses and parameters, which it does not
    # touch, and compiling it would cost every run (the tiny run tests it).
    extra += ("--config.eval.every=0",)
    cmd += extra
    env = _env(devices) | (env_extra or {})
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    if check:
        assert out.returncode == 0, out.stderr[-3000:]
    return out


def _params(workdir, sub=""):
    model = configure.model(load_config("test"))
    variables = checkpoints.restore_encoders(Path(workdir) / sub / "checkpoints", model)
    return jax.device_get(variables)


def _assert_trees_close(a, b, **tol):
    leaves_a, tree_a = jax.tree.flatten(a)
    leaves_b, tree_b = jax.tree.flatten(b)
    assert tree_a == tree_b
    for x, y in zip(leaves_a, leaves_b, strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), **tol)


def _rows(workdir, key="loss"):
    """The rows of ``metrics.jsonl`` that hold ``key``: the training steps' by default, the
    probe's with ``probe_mre_mm``."""
    lines = (Path(workdir) / "metrics.jsonl").read_text().splitlines()
    return [row for row in map(json.loads, lines) if key in row]


@pytest.fixture(scope="module")
def cli_reference(tiny_run):
    """The baseline's 6 uninterrupted steps on one device, through the command line with the
    session's compiler flags (the tiny run's ``checkpoints/`` and ``metrics.jsonl``): what the
    runs on other layouts must reproduce."""
    return tiny_run


def test_pretrain_writes_checkpoints_and_metrics(tiny_run, tiny_run_copy, tiny_config, logs):
    assert (tiny_run / "info_stats.json").exists() and (tiny_run / "config.json").exists()
    rows = _rows(tiny_run)
    assert [r["step"] for r in rows] == list(range(1, 7))
    probes = _rows(tiny_run, "probe_mre_mm")  # the template into 2 test images, every 3 steps
    assert [r["step"] for r in probes] == [0, 3, 6]
    for row in probes:
        assert np.isfinite(row["probe_mre_mm"]) and row["probe_copy_mre_mm"] > 0
        assert set(row) >= {f"probe_sdr_{r}" for r in ("2.0", "2.5", "3.0", "4.0")}
    assert probes[0]["probe_mre_mm"] != probes[-1]["probe_mre_mm"]  # the weights moved
    for key in (
        "loss",
        "loss_s32",
        "loss_s2",
        "psi_s32",
        "psi_s2",
        "grad_norm_image",
        "grad_norm_crop",
        "lr",
        "samples_per_s",
    ):
        assert all(np.isfinite(r[key]) for r in rows), key
    row = rows[0]
    assert row["loss"] == pytest.approx(sum(row[f"loss_s{s}"] for s in (32, 16, 8, 4, 2)))
    assert row["lr"] == pytest.approx(1e-4)
    steps = sorted(int(p.name) for p in (tiny_run / "checkpoints").iterdir() if p.name.isdigit())
    assert steps == [3, 6]  # every 3 steps, the last 2 kept
    params = _params(tiny_run)
    assert set(params) == {"image", "crop"} and "rfb0" in params["image"]["params"]
    tiny_config.stages = "pretrain"
    pipeline.run(tiny_config, tiny_run_copy)  # a finished run is skipped
    assert "already holds step 6 of 6" in logs.text


def test_tensorboard_holds_the_metrics_and_the_images(tiny_run):
    """DIR/tb/STAGE: the same scalars as metrics.jsonl, the info stage's panels, each training
    stage's first batch and the probe's matches, read back from the event files."""
    from piaug import tb

    assert sorted(p.name for p in (tiny_run / "tb").iterdir()) == ["info", "pretrain", "train"]
    for stage, sub in (("pretrain", ""), ("train", "piaug")):
        events = tb.read(tiny_run / "tb" / stage)
        rows = _rows(tiny_run / sub if sub else tiny_run)
        assert [s for s, _ in events["loss/loss"]] == [r["step"] for r in rows]
        np.testing.assert_allclose(
            [v for _, v in events["loss/loss"]], [r["loss"] for r in rows], rtol=1e-6
        )
        for tag in ("loss/loss_s2", "psi/psi_s32", "grad_norm/grad_norm_crop", "train/lr"):
            assert len(events[tag]) == len(rows), tag
        assert [s for s, _ in events["probe/probe_mre_mm"]] == [0, 3, 6]
        ((step, (height, width)),) = events["batch/first"]
        assert step == 1 and height == 64 and width == 64 + 4 + 32  # the image, then the crop
        assert [s for s, _ in events["probe/matches"]] == [0, 3, 6]
    info = tb.read(tiny_run / "tb" / "info")
    assert len(info) == 2 and all(v[0][1] == (64, 3 * 64 + 8) for v in info.values())


def test_evaluate_writes_results_for_both_protocols(tiny_run, tiny_run_copy, tiny_config, logs):
    results = json.loads((tiny_run / "results.json").read_text())
    assert set(results) == {"baseline", "piaug", "template_copy"}
    assert results["template_copy"]["n_images"] == 3
    assert results["piaug"]["template"] == results["baseline"]["template"]  # one template
    assert results["piaug"]["checkpoint"]["step"] == 6
    assert results["piaug"]["checkpoint"]["dir"] == str(tiny_run / "piaug" / "checkpoints")
    assert results["piaug"]["mre_mm"] != results["baseline"]["mre_mm"]  # two encoders
    baseline = results["baseline"]
    assert baseline["protocol"] == "grid 64x64" and baseline["n_images"] == 3
    assert baseline["full_resolution"]["protocol"] == "full resolution"
    assert np.isfinite(baseline["mre_mm"]) and set(baseline["sdr"]) == {"2.0", "2.5", "3.0", "4.0"}
    assert len(baseline["per_landmark_mre_mm"]) == 5
    assert baseline["template"]["chosen_by"] == "salient-point policy"
    assert baseline["template"]["id"].startswith("synthetic-0-")  # from the training split
    assert baseline["ids"] == [f"synthetic-1-{i:04d}" for i in range(3)]  # the test split
    assert all(w["image"] in baseline["ids"] for w in baseline["worst"])  # named by their ids
    assert len(list((tiny_run / "figures").glob("overlay_baseline_*.png"))) == 2
    from PIL import Image

    # drawn at the original 96 x 80 (height x width), not the 64 x 64 grid: taller than wide
    w, h = Image.open(next((tiny_run / "figures").glob("overlay_baseline_*.png"))).size
    assert w / h == pytest.approx((80 * 7 / 96) / (96 * 7 / 96 + 0.5), abs=0.02)
    assert len(list((tiny_run / "figures").glob("overlay_piaug_*.png"))) == 2
    tiny_config.stages = "evaluate"
    pipeline.run(tiny_config, tiny_run_copy)
    assert "holds ['baseline', 'piaug'], skipping" in logs.text
    assert re.search(rf"baseline +grid +{baseline['mre_mm']:.3f}", logs.text)  # its table, again


def test_evaluation_settings_may_change_on_a_finished_run(tiny_run_copy, tiny_config, logs):
    """eval.* on a call that only evaluates: the encoders are evaluated again under the new
    settings, into a results file named by them; results.json and config.json stay."""
    kept = {n: (tiny_run_copy / n).read_bytes() for n in ("results.json", "config.json")}
    tiny_config.stages = "evaluate"
    tiny_config.eval.upsample = "bilinear"
    tiny_config.eval.subpixel = True
    pipeline.run(tiny_config, tiny_run_copy)
    tagged = tiny_run_copy / "results.subpixel-True.upsample-bilinear.json"
    assert f"results in {tagged}" in logs.text
    results = json.loads(tagged.read_text())
    assert set(results) == {"baseline", "piaug", "template_copy"}
    assert results["piaug"]["eval"]["upsample"] == "bilinear"
    before = json.loads(kept["results.json"])
    assert results["piaug"]["template"] == before["piaug"]["template"]  # the run's template
    assert (
        "chosen earlier and kept in" in logs.text and "delete the file to choose again" in logs.text
    )
    assert results["template_copy"] == before["template_copy"]
    assert {n: (tiny_run_copy / n).read_bytes() for n in kept} == kept
    assert len(list((tiny_run_copy / "figures" / tagged.stem[8:]).glob("overlay_*.png"))) == 4
    # Elsewhere eval.* still locks the run: training with other settings is refused.
    tiny_config.stages = "evaluate,analyze"
    with pytest.raises(UserError, match="eval.upsample: 'nearest' -> 'bilinear'.*stages=evaluate"):
        pipeline.run(tiny_config, tiny_run_copy)


def test_a_run_older_than_an_eval_field_is_evaluated_again_into_its_own_results(
    tiny_run_copy, tiny_config, logs
):
    """A config.json from before eval.search_radius and eval.scales: evaluated again at their
    defaults (what its evaluation did), the results are the run's own ``results.json``, not a
    file tagged by fields it merely lacked, and config.json records the defaults."""
    path = tiny_run_copy / "config.json"
    saved = json.loads(path.read_text())
    for field in ("search_radius", "scales"):
        saved["eval"].pop(field)
    path.write_text(json.dumps(saved))
    (tiny_run_copy / "results.json").unlink()
    tiny_config.stages = "evaluate"
    pipeline.run(tiny_config, tiny_run_copy)
    assert "predates the config fields eval.search_radius, eval.scales" in logs.text
    assert "its evaluation had their defaults" in logs.text
    assert (tiny_run_copy / "results.json").exists()
    assert not list(tiny_run_copy.glob("results.*.json"))
    recorded = json.loads(path.read_text())["eval"]
    assert recorded["search_radius"] == 0.0 and recorded["scales"] == []


@pytest.mark.slow  # compiles: the fast tier stays under 3 minutes
def test_a_runs_encoders_are_restored_from_its_folder_alone(tiny_run):
    """No config, no configs/ import: the run's config.json says how to build the encoders."""
    encoders = checkpoints.run_encoders(tiny_run)
    assert set(encoders) == {"baseline", "piaug"}
    images = np.random.default_rng(0).uniform(0, 1, (8, 64, 64)).astype(np.float32)
    maps = encoders["piaug"](images)
    assert [m.shape for m in maps] == [(8, 64 // s, 64 // s, 8) for s in (32, 16, 8, 4, 2)]
    model = models.ModelSettings(embedding=8, width=0.0625)  # configs/test.py's
    variables = checkpoints.restore_encoders(tiny_run / "piaug" / "checkpoints", model)
    assert set(variables) == {"image", "crop"} and "rfb0" in variables["image"]["params"]
    _assert_trees_close(encoders["piaug"].args[0], variables["image"], rtol=0, atol=0)
    assert not np.allclose(maps[0], encoders["baseline"](images)[0])  # two encoder pairs
    with pytest.raises(UserError, match="does not fit this config's encoders"):
        checkpoints.restore_encoders(tiny_run / "checkpoints", models.ModelSettings(width=0.125))


def test_estimate_feeds_the_train_stage(tiny_run):
    est = json.loads((tiny_run / "augment.json").read_text())
    template = json.loads((tiny_run / "template.json").read_text())
    assert est["template"] == template and template["chosen_by"] == "salient-point policy"
    assert "medium" in est["groups"] and est["estimator"] == "joint"
    medium = est["groups"]["medium"]
    assert medium["target_mi"] == pytest.approx(medium["mi_mean"])  # alpha_hat 1
    assert 0 <= medium["brightness"][0] <= 1 <= medium["brightness"][1]
    assert len(medium["mi"]) == medium["num_points"] * (medium["num_images"] - 1)
    rows = _rows(tiny_run / "piaug")
    assert [r["step"] for r in rows] == list(range(1, 7))
    # Other anchors and ranges than the baseline's, from the same initialisation and images:
    # another loss at every step (not the rows: their wall-clock samples_per_s always differ).
    baseline = _rows(tiny_run)
    for mine, theirs in zip(rows, baseline, strict=True):
        assert mine["loss"] != pytest.approx(theirs["loss"], rel=1e-5), mine["step"]


def test_an_existing_baseline_is_used_not_trained(tiny_run, tiny_config, tmp_path, logs):
    tiny_config.train.baseline = str(tiny_run / "checkpoints")
    tiny_config.stages = "info,pretrain,estimate"
    pipeline.run(tiny_config, tmp_path / "wd")
    assert "using the baseline in" in logs.text
    assert not (tmp_path / "wd" / "checkpoints").exists()
    mine = json.loads((tmp_path / "wd" / "augment.json").read_text())
    theirs = json.loads((tiny_run / "augment.json").read_text())
    assert mine["groups"] == theirs["groups"]  # the same encoder, template and key points


def test_a_baseline_of_another_model_is_refused(tiny_run, tiny_config, tmp_path):
    tiny_config.train.baseline = str(tiny_run / "checkpoints")
    tiny_config.model.width = 0.125
    tiny_config.stages = "estimate"
    with pytest.raises(UserError, match="its checkpoint does not fit") as error:
        pipeline.run(tiny_config, tmp_path / "wd")
    assert str(tiny_run / "checkpoints") in str(error.value)


def test_analyze_draws_the_figures(tiny_run):
    summary = json.loads((tiny_run / "analysis.json").read_text())
    assert {"fig2", "fig3", "fig7"} <= set(summary)
    assert set(summary["fig2"]["encoders"]) == {"baseline", "piaug"}
    counts = summary["fig2"]["encoders"]["piaug"]["count"]
    assert sum(counts) == 3 * 8 * 8  # 3 images, anchors every 8 px of 64 x 64
    probability = summary["fig3"]["probability"]
    assert sum(probability["IIE^0.3"]) == pytest.approx(1.0, abs=1e-4)
    figures = ("loss_vs_iie", "sampling_probability", "mi_density", "footprints", "loss_curves")
    figures += ("probe_curve", "training_batch_baseline", "training_batch_piaug")
    for name in figures:
        assert_drawn(tiny_run / "figures" / f"{name}.png")


@pytest.mark.slow  # compiles the train step in this process: ~18 s of the fast tier
def test_non_finite_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(
    tiny_config, tmp_path, monkeypatch
):
    original, calls = train.device_batch, [0]

    def device_batch(batch, *args):  # NaN crops in the 5th batch
        calls[0] += 1
        if calls[0] == 5:
            batch = dict(batch, crop=np.full_like(batch["crop"], np.nan))
        return original(batch, *args)

    monkeypatch.setattr(train, "device_batch", device_batch)
    tiny_config.stages = "pretrain"
    tiny_config.eval.every = 0  # no probe: its rows and its compiling are not this test's
    with pytest.raises(train.TrainingStopped) as error:
        pipeline.run(tiny_config, tmp_path)
    assert "non-finite loss or gradient at step 5" in str(error.value)
    assert "the last good checkpoint is step 3" in str(error.value)
    steps = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert steps == [3]
    assert [r["step"] for r in _rows(tmp_path)] == [1, 2, 3, 4]

    def interrupted(batch, *args):  # Ctrl-C at the second step after resuming
        calls[0] += 1
        if calls[0] == 7:
            raise KeyboardInterrupt
        return original(batch, *args)

    monkeypatch.setattr(train, "device_batch", interrupted)
    with pytest.raises(train.TrainingStopped) as error:
        pipeline.run(tiny_config, tmp_path)  # resumes from step 3
    assert "pretrain: interrupted (Ctrl-C) after step 4 of 6; the last checkpoint is step 3" in str(
        error.value
    )
    assert "run the same command again to resume from it" in str(error.value)


def test_train_without_an_estimate_says_what_to_do(tiny_config, tmp_path):
    tiny_config.stages = "train"
    with pytest.raises(UserError, match="augment.json does not exist: run the estimate stage"):
        pipeline.run(tiny_config, tmp_path / "wd")
    assert not (tmp_path / "wd" / "piaug" / "checkpoints").exists()


def test_settings_name_their_field():
    with pytest.raises(ValueError, match="lr_decay=1.5: must be in"):
        train.TrainSettings(lr_decay=1.5)
    with pytest.raises(ValueError, match="window=-1"):
        losses.LossSettings(window=-1)
    assert train.TrainSettings(batch_size=4, epochs=2).num_steps(10) == 5
    assert train.TrainSettings(steps=7).num_steps(10) == 7
    # The authors' epoch: 11 passes over the 150 ceph images, so 400 epochs of batch 8 are
    # 82,500 steps and the decay every 50 epochs comes every 10,312.5 -> 10,312 steps.
    paper = train.TrainSettings(epoch_passes=11)
    assert paper.num_steps(150) == 82_500 and paper.steps_per_epoch(150) == 206.25
    schedule = train.learning_rate(paper, paper.steps_per_epoch(150))
    assert float(schedule(10_311)) == pytest.approx(1e-4)
    assert float(schedule(10_312)) == pytest.approx(8e-5)
    with pytest.raises(ValueError, match="epoch_passes=0"):
        train.TrainSettings(epoch_passes=0)


def test_warmup_rises_linearly_then_the_decay_applies():
    cfg = train.TrainSettings(lr=1e-3, warmup_steps=4, lr_decay=0.5, lr_decay_epochs=1)
    schedule = train.learning_rate(cfg, per_epoch=6)  # decay every 6 steps
    got = [float(schedule(s)) for s in range(8)]
    np.testing.assert_allclose(got, [2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3, 1e-3, 5e-4, 5e-4], rtol=1e-6)
    assert float(train.learning_rate(train.TrainSettings(), 10)(0)) == pytest.approx(1e-4)
    with pytest.raises(ValueError, match="warmup_steps=-1"):
        train.TrainSettings(warmup_steps=-1)


def test_cosine_schedule_falls_to_zero_at_the_last_step():
    """After the warm-up, lr * (1 + cos(pi t / T)) / 2 with t counted from the warm-up's end
    and T the steps left; 0 at the last step, whether steps or epochs set the length."""
    cfg = train.TrainSettings(lr=1e-3, warmup_steps=2, steps=10, schedule="cosine")
    schedule = train.learning_rate(cfg, per_epoch=3)
    got = [float(schedule(s)) for s in range(11)]
    want = [5e-4, 1e-3] + [1e-3 * (1 + np.cos(np.pi * t / 8)) / 2 for t in range(9)]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-12)
    by_epochs = train.TrainSettings(lr=1e-3, epochs=2, schedule="cosine")  # 2 x 3 = 6 steps
    np.testing.assert_allclose(float(train.learning_rate(by_epochs, 3)(6)), 0.0, atol=1e-12)
    with pytest.raises(ValueError, match="schedule='linear'"):
        train.TrainSettings(schedule="linear")


@pytest.mark.slow
def test_several_crops_per_image_equal_their_images_repeated():
    """M crops per image: one image-encoder pass for M crops gives the loss, the metrics, the
    batch statistics and the update of the step on M copies of each image, one crop each
    (small stand-in encoders with batch norm, five maps at the encoders' strides: the pairing
    is train_step's, whatever the network)."""
    import functools

    import flax.linen as nn
    import optax

    from piaug.data import input_pipeline

    class Tiny(nn.Module):
        @nn.compact
        def __call__(self, x, train: bool = False):
            x = nn.Conv(4, (3, 3))(x[..., None])
            x = nn.relu(nn.BatchNorm(use_running_average=not train)(x))
            return [nn.Conv(8, (1, 1))(nn.avg_pool(x, (s, s), (s, s))) for s in models.STRIDES]

    nets = (Tiny(), Tiny())
    txs = {n: optax.sgd(0.1) for n in train.ENCODERS}  # see the sharded test: SGD, not Adam
    rng = np.random.default_rng(0)
    batch = {
        "image": rng.integers(0, 256, (2, 64, 64), dtype=np.uint8),
        "crop": rng.uniform(0, 1, (2, 3, 32, 32)).astype(np.float32),
        "anchor": rng.integers(0, 64, (2, 3, 4, 2)).astype(np.int32),
        "crop_anchor": rng.integers(0, 32, (2, 3, 4, 2)).astype(np.int32),
    }
    state = train.create_state(
        jax.random.key(0), nets=nets, txs=txs, image_size=(64, 64), crop_size=32
    )
    step = jax.jit(functools.partial(train.train_step, nets=nets, txs=txs, window=2))
    ours = jax.device_get(step(state, batch))
    flat = input_pipeline.per_crop(batch)
    assert flat["crop"].shape == (6, 32, 32)
    theirs = jax.device_get(step(state, flat))
    assert ours[1]["loss"] > 0 and ours[1]["grad_norm_image"] > 0
    for x, y in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
    # Pairing a crop with another image's maps gives another loss: the check can fail.
    swapped = dict(flat, image=flat["image"][::-1])
    assert abs(float(step(state, swapped)[1]["loss"]) - float(ours[1]["loss"])) > 1e-3


@pytest.mark.slow
def test_sharded_step_equals_single_device_step():
    script = textwrap.dedent(
        """
        import functools, sys
        import jax, numpy as np, optax
        from jax.sharding import NamedSharding, PartitionSpec
        sys.path.insert(0, ".")
        from configs import test as test_config
        from piaug import configure, train

        config = test_config.get_config()
        nets = configure.model(config).encoders()
        # SGD: Adam divides each gradient entry by its own size, so an entry whose gradient is
        # at round-off level (some are 1e-9 here) moves by up to the learning rate whichever
        # way the sums were ordered; SGD keeps the comparison about the gradients, the batch
        # statistics and the update.
        txs = {n: optax.sgd(0.01) for n in train.ENCODERS}
        rng = np.random.default_rng(0)
        batch = {
            "image": rng.integers(0, 256, (4, 64, 64), dtype=np.uint8),
            "crop": rng.uniform(0, 1, (4, 32, 32)).astype(np.float32),
            "anchor": rng.integers(0, 64, (4, 2)).astype(np.int32),
            "crop_anchor": rng.integers(0, 32, (4, 2)).astype(np.int32),
        }
        init = jax.jit(functools.partial(
            train.create_state, nets=nets, txs=txs, image_size=(64, 64), crop_size=32))
        state0 = jax.device_get(init(jax.random.key(0)))  # host copy: each mesh donates its own
        results = []
        for n in (1, 4):  # (2 devices: test_two_devices_equal_one_and_restore_on_one)
            mesh = train.make_mesh(jax.devices()[:n])
            state = jax.device_put(state0, NamedSharding(mesh, PartitionSpec()))
            step = train.compile_step(mesh, nets=nets, txs=txs, window=2)
            state, metrics = step(state, train.device_batch(batch, mesh))
            assert state.params["image"]["head32"]["kernel"].sharding.mesh.size == n
            results.append(jax.device_get((state.params, state.batch_stats, metrics)))
        moved = jax.tree.leaves(jax.tree.map(lambda a, b: np.abs(a - b).max(),
                                             results[0][0], state0.params))
        assert max(moved) > 1e-3  # the step changed the parameters
        for other in results[1:]:
            for x, y in zip(jax.tree.leaves(results[0]), jax.tree.leaves(other), strict=True):
                np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5)
        assert int(state.step) == 1
        print("EQUAL", results[0][2]["loss"])
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        env=_env(4),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0 and "EQUAL" in out.stdout, out.stderr[-3000:]


@pytest.mark.slow
def test_two_devices_equal_one_and_restore_on_one(cli_reference, tmp_path):
    _cli(tmp_path, devices=2)
    _assert_same_run(tmp_path, cli_reference)  # written on 2 devices, restored here on 1


def _assert_same_run(workdir, reference):
    """Six Adam steps on another layout: the same losses and parameters, up to the order of
    float32 sums (Adam moves an entry whose gradient is at round-off level by up to the
    learning rate, 1e-4, per step, so parameters are compared to a few learning rates)."""
    losses = [r["loss"] for r in _rows(workdir)]
    np.testing.assert_allclose(losses, [r["loss"] for r in _rows(reference)], rtol=1e-4)
    _assert_trees_close(_params(workdir), _params(reference), rtol=0, atol=6e-4)


def _free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_equal_one_process(cli_reference, tmp_path):
    """launch/multi_gpu.sh with PROCESSES=2: two processes joined by jax.distributed on
    localhost (CPU collectives), one device each."""
    env = _env(1) | {"PROCESSES": "2", "PORT": str(_free_port())}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    cmd = ["bash", "launch/multi_gpu.sh", "configs/test.py", str(tmp_path)]
    out = subprocess.run(
        cmd + ["--config.stages=pretrain"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "process 1 of 2" in out.stderr and "process 0 of 2" in out.stderr
    assert [r["step"] for r in _rows(tmp_path)] == list(range(1, 7))  # one writer
    _assert_same_run(tmp_path, cli_reference)


@pytest.mark.slow
def test_killed_and_preempted_runs_resume_to_the_same_parameters(cli_reference, tmp_path):
    # SIGKILL before step 6: steps 1-5 ran; the checkpoint of step 3 is saved unless the kill
    # caught its background write (then the run starts over, which must end the same).
    out = _cli(tmp_path, script=HOOKED, env_extra={"HOOK_AT": "6", "HOOK": "SIGKILL"}, check=False)
    assert out.returncode == -signal.SIGKILL
    saved = checkpoints.Checkpoints(tmp_path / "checkpoints")
    latest = saved.latest_step()
    saved.close()
    assert latest in (None, 3)
    # SIGTERM during the first step of the resumed run: it finishes that step, saves, exits.
    out = _cli(tmp_path, script=HOOKED, env_extra={"HOOK_AT": "1", "HOOK": "SIGTERM"}, check=False)
    saved = (latest or 0) + 1
    assert out.returncode == 1, out.stderr[-3000:]
    assert f"SIGTERM: saved step {saved} of 6" in out.stderr, out.stderr[-3000:]
    _cli(tmp_path)  # resumes after the saved step and finishes
    _assert_trees_close(_params(tmp_path), _params(cli_reference), rtol=0, atol=0)
    rows, expected = _rows(tmp_path), _rows(cli_reference)
    assert [r["step"] for r in rows] == list(range(1, 7))  # no step logged twice
    np.testing.assert_allclose([r["loss"] for r in rows], [r["loss"] for r in expected])


@pytest.mark.slow
def test_the_gpu_check_runs_at_a_tiny_size():
    """benchmarks/gpu_check.sh, made tiny: one JSON line per measurement (devices, the train
    step in bfloat16 (float32 too at full size), the entropy benchmark, the detector's step,
    the scratch preset's step, and a step's memory before it runs: the scratch preset's on a
    GPU, the tiny config's here)."""
    env = _env() | {"PIAUG_GPU_CHECK_TINY": "1", "PYTHON": sys.executable}
    out = subprocess.run(
        ["bash", "benchmarks/gpu_check.sh"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    lines = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert lines[0]["benchmark"] == "devices" and lines[0]["platform"] == "cpu"
    steps = [line for line in lines if line.get("benchmark") == "train_step"]
    assert [s["dtype"] for s in steps] == ["bfloat16", "float32"]  # (tiny: no float32 twin)
    scratch = steps[1]  # the scratch preset, its width and batch made tiny
    assert scratch["config"] == "configs/test.py:scratch" and scratch["norm"] == "batch"
    assert (scratch["width_mult"], scratch["batch"], scratch["crops_per_image"]) == (0.0625, 2, 2)
    memory = [line for line in lines if "peak_gb" in line]
    assert [m["config"] for m in memory] == ["configs/test.py"]
    assert all(m["peak_gb"] > 0 and m["temporaries_gb"] > 0 for m in memory)
    assert all(s["samples_per_s"] > 0 for s in steps)
    assert any("ratio_skimage_over_piaug" in line for line in lines)
    (detect,) = [line for line in lines if line.get("benchmark") == "detector_step"]
    assert detect["samples_per_s"] > 0 and detect["step_vs_vgg19_features"] > 0


@pytest.mark.slow
def test_volume_step_on_two_devices_equals_one():
    """The train step on volumes (cubic crops, two crops per volume, several anchors): the
    same parameters, batch statistics and metrics on one and on two devices (small stand-in
    encoders with 3-D convolutions and batch norm, five maps at the encoders' strides, as in
    the several-crops test: the sharding is train_step's; the 3-D encoders themselves are
    tested in tests/test_models.py)."""
    script = textwrap.dedent(
        """
        import functools
        import flax.linen as nn
        import jax, numpy as np, optax
        from jax.sharding import NamedSharding, PartitionSpec
        from piaug import models, train

        class Tiny(nn.Module):
            @nn.compact
            def __call__(self, x, train: bool = False):
                x = models.VolumeConv(4, (3, 3, 3))(x[..., None])
                x = nn.relu(nn.BatchNorm(use_running_average=not train)(x))
                b, d, h, w, c = x.shape
                pools = [  # s x s x s means: a reshape (reduce_window is slow at -O0)
                    x.reshape(b, d // s, s, h // s, s, w // s, s, c).mean((2, 4, 6))
                    for s in models.STRIDES
                ]
                return [models.VolumeConv(8, (1, 1, 1))(p) for p in pools]

        nets = (Tiny(), Tiny())
        txs = {n: optax.sgd(0.01) for n in train.ENCODERS}  # see the 2-D test: SGD
        rng = np.random.default_rng(0)
        batch = {
            "image": rng.integers(0, 256, (4, 32, 64, 32), dtype=np.uint8),
            "crop": rng.uniform(0, 1, (4, 2, 32, 32, 32)).astype(np.float32),
            "anchor": rng.integers(0, 32, (4, 2, 3, 3)).astype(np.int32),
            "crop_anchor": rng.integers(0, 32, (4, 2, 3, 3)).astype(np.int32),
        }
        init = jax.jit(functools.partial(
            train.create_state, nets=nets, txs=txs, image_size=(32, 64, 32), crop_size=32))
        state0 = jax.device_get(init(jax.random.key(0)))
        results = []
        for n in (1, 2):
            mesh = train.make_mesh(jax.devices()[:n])
            state = jax.device_put(state0, NamedSharding(mesh, PartitionSpec()))
            step = train.compile_step(mesh, nets=nets, txs=txs, window=1)
            state, metrics = step(state, train.device_batch(batch, mesh))
            results.append(jax.device_get((state.params, state.batch_stats, metrics)))
        assert np.isfinite(results[0][2]["loss"]) and results[0][2]["loss"] > 0
        moved = jax.tree.leaves(jax.tree.map(lambda a, b: np.abs(a - b).max(),
                                             results[0][0], state0.params))
        assert max(moved) > 1e-4  # the step changed the parameters
        for x, y in zip(jax.tree.leaves(results[0]), jax.tree.leaves(results[1]), strict=True):
            np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5)
        print("EQUAL", results[0][2]["loss"])
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        env=_env(2),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0 and "EQUAL" in out.stdout, out.stderr[-3000:]
