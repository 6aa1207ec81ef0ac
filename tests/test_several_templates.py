"""Several templates (issue 34): fusing K predictions, choosing K templates as a set, and the
evaluate stage with ``eval.templates=K``; one template is today's one-shot matching exactly."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
from PIL import Image

from piaug import matching, pipeline
from piaug.errors import UserError
from piaug.templates import choose_set


def _three_templates():
    # K = 3 templates, N = 1 image, L = 2 landmarks, (row, col)
    points = np.array(
        [
            [[[10.0, 20.0], [5.0, 5.0]]],
            [[[12.0, 26.0], [7.0, 1.0]]],
            [[[30.0, 21.0], [6.0, 3.0]]],
        ]
    )
    scores = np.array([[[0.5, 0.2]], [[1.5, -1.0]], [[0.0, 0.6]]])
    return points, scores


def test_fusion_rules_against_hand_computed_values():
    points, scores = _three_templates()
    fused, s = matching.fuse(points, scores, "median")
    np.testing.assert_allclose(fused[0], [[12.0, 21.0], [6.0, 3.0]])
    np.testing.assert_allclose(s[0], [2.0 / 3, -0.2 / 3])
    fused, _ = matching.fuse(points, scores, "mean")
    np.testing.assert_allclose(fused[0], [[52 / 3, 67 / 3], [6.0, 3.0]])
    fused, s = matching.fuse(points, scores, "best")
    np.testing.assert_allclose(fused[0], [[12.0, 26.0], [6.0, 3.0]])
    np.testing.assert_allclose(s[0], [1.5, 0.6])
    # weights: landmark 1 (0.5, 1.5, 0) / 2; landmark 2 (0.2, 0, 0.6) / 0.8
    fused, s = matching.fuse(points, scores, "weighted")
    np.testing.assert_allclose(fused[0, 0], [0.25 * 10 + 0.75 * 12, 0.25 * 20 + 0.75 * 26])
    np.testing.assert_allclose(fused[0, 1], [0.25 * 5 + 0.75 * 6, 0.25 * 5 + 0.75 * 3])
    np.testing.assert_allclose(s[0], [0.25 * 0.5 + 0.75 * 1.5, 0.25 * 0.2 + 0.75 * 0.6])


def test_weighted_fusion_without_a_positive_score_is_the_mean_and_one_template_is_itself():
    points, scores = _three_templates()
    fused, _ = matching.fuse(points, -np.abs(scores) - 1, "weighted")
    np.testing.assert_allclose(fused, matching.fuse(points, scores, "mean")[0])
    one = points[:1].astype(np.int32)
    for rule in matching.FUSION:
        fused, s = matching.fuse(one, scores[:1], rule)
        assert fused.dtype == np.int32 and (fused == one[0]).all() and (s == scores[0]).all()
    with pytest.raises(ValueError, match="eval.fusion='vote'"):
        matching.fuse(points, scores, "vote")
    with pytest.raises(ValueError, match=r"points \(K, N, L, d\)"):
        matching.fuse(points[0], scores, "mean")


def test_a_bad_fusion_or_count_is_a_config_error():
    from conftest import load_config

    from piaug import configure

    config = load_config("test")
    config.eval.fusion = "vote"
    with pytest.raises(UserError, match="config.eval.fusion='vote': use one of"):
        configure.check(config)
    config.eval.fusion, config.eval.templates = "median", 0
    with pytest.raises(UserError, match="config.eval.templates=0: give 1 or more"):
        configure.check(config)


def test_choose_set_covers_the_images_the_first_template_matches_poorly():
    """Candidate 0 scores best on average; candidate 2 is its twin (strong where it is strong),
    candidate 1 is strong where 0 is weak: the set of two is (0, 1), of three adds 2 or 3."""
    strong, weak = 0.9, 0.1
    per_image = np.array(
        [
            [np.nan, strong, strong, strong, weak, weak],
            [weak, np.nan, weak, weak, strong, strong],
            [strong, strong, np.nan, strong, weak, weak],
            [0.5, 0.5, 0.5, np.nan, 0.5, 0.5],
        ]
    )
    per_image = np.vstack([per_image, np.full((2, 6), np.nan)])  # images 4, 5: not candidates
    scores = np.array([0.62, 0.3, 0.6, 0.5, -np.inf, -np.inf])
    assert choose_set(scores, per_image, 1) == [0]
    assert choose_set(scores, per_image, 2) == [0, 1]
    assert choose_set(scores, per_image, 2, first=3) == [3, 0]
    assert len(set(choose_set(scores, per_image, 4))) == 4
    with pytest.raises(UserError, match="eval.templates=5: only 4 candidate templates"):
        choose_set(scores, per_image, 5)
    # the top rule: the best-scored, whatever they cover; the first kept first
    assert choose_set(scores, per_image, 3, rule="top") == [0, 2, 3]
    assert choose_set(scores, per_image, 3, first=1, rule="top") == [1, 0, 2]
    assert choose_set(scores, per_image, 1, rule="top") == [0]
    with pytest.raises(UserError, match="eval.template_set='best'"):
        choose_set(scores, per_image, 2, rule="best")


def test_predict_from_several_templates_equals_one_template_when_they_agree():
    """K = 1 is ``predict`` itself; the same template twice gives ``predict``'s points under
    every rule (the features of the templates encoded in one batch, matched one by one)."""
    rng = np.random.default_rng(0)
    size = (32, 32)
    weights = rng.normal(size=(3, 4))

    def apply_fn(images):  # a stand-in encoder: 5 maps of the image's pixel features
        x = np.asarray(images)[..., None] * weights[0] + np.asarray(images)[..., None] ** 2
        maps = [x[:, ::s, ::s] @ weights[1:].T for s in matching.STRIDES]
        return [jax.numpy.asarray(m) for m in maps]

    images = rng.integers(0, 255, size=(3, *size), dtype=np.uint8)
    template_points = np.array([[4, 5], [20, 9], [30, 30]])
    settings = matching.MatchSettings(batch_size=2, combine="sum", upsample="bilinear")
    one = matching.predict(
        apply_fn, images[0], template_points, images, size=size, settings=settings
    )
    same = matching.predict_many(
        apply_fn, images[:1], template_points[None], images, size=size, settings=settings
    )
    np.testing.assert_array_equal(same, one)
    for rule in matching.FUSION:
        twice = matching.predict_many(
            apply_fn,
            images[[0, 0]],
            np.stack([template_points] * 2),
            images,
            size=size,
            settings=settings,
            fusion=rule,
        )
        np.testing.assert_allclose(twice, one, err_msg=rule)
    with pytest.raises(ValueError, match="2 template images for 1 sets"):
        matching.predict_many(apply_fn, images[:2], template_points[None], images, size=size)


@pytest.mark.slow
def test_evaluate_with_several_templates_and_one_template_as_before(tiny_run_copy, tiny_config):
    """``--config.stages=evaluate --config.eval.templates=2`` on a finished run: the run's
    template and one more, kept in templates-2.json, none of them evaluated, results in
    results.templates-2.json; the same call at K = 1 (forced) rewrites results.json with the
    same numbers."""
    before = json.loads((tiny_run_copy / "results.json").read_text())
    tiny_config.stages = "evaluate"
    tiny_config.eval.templates = 2
    pipeline.run(tiny_config, tiny_run_copy)
    results = json.loads((tiny_run_copy / "results.templates-2.json").read_text())
    kept = json.loads((tiny_run_copy / "templates-2.json").read_text())
    ids = results["baseline"]["template"]["ids"]
    assert ids == kept["ids"] and len(set(ids)) == 2
    assert ids[0] == before["baseline"]["template"]["id"]  # the run's own first
    assert results["baseline"]["template"]["fusion"] == "weighted"
    assert not set(ids) & set(results["baseline"]["ids"])
    assert results["template_copy"]["mre_mm"] != before["template_copy"]["mre_mm"]
    tiny_config.eval.templates, tiny_config.force = 1, True
    pipeline.run(tiny_config, tiny_run_copy)
    again = json.loads((tiny_run_copy / "results.json").read_text())
    for name in ("template_copy", "baseline", "piaug"):
        assert again[name]["mre_mm"] == before[name]["mre_mm"], name
        assert again[name]["per_image_mre_mm"] == before[name]["per_image_mre_mm"], name
    assert again["baseline"]["template"] == before["baseline"]["template"]
    tiny_config.eval.templates, tiny_config.eval.template = 3, "a,b"
    with pytest.raises(UserError, match="name 3 distinct images, comma-separated, or one"):
        pipeline.run(tiny_config, tiny_run_copy)


@pytest.mark.slow
def test_choose_templates_then_predict_from_the_filled_csv(tiny_run, tmp_path, capsys):
    """``predict --choose-templates=2`` writes to_annotate.csv (two images, columns empty) and
    will not overwrite it; filled in, ``--template-landmarks`` alone predicts from both, as the
    API does; one row of it is the one-template workflow."""
    import shutil

    from test_templates import _folder

    from piaug import api, layout, predict

    root = _folder(tmp_path / "mine")
    run = tmp_path / "run"
    shutil.copytree(tiny_run / layout.CHECKPOINTS, run / layout.CHECKPOINTS)
    shutil.copy(tiny_run / layout.CONFIG_FILE, run / layout.CONFIG_FILE)
    images, out = root / "images", tmp_path / "out"
    choose = [f"--run={run}", f"--images={images}", f"--out={out}", "--choose-templates=2"]
    assert predict.main(choose) == 2  # no results.json: the columns are unknown
    assert "--num-landmarks=L" in capsys.readouterr().err
    assert predict.main([*choose, "--num-landmarks=5"]) == 0
    sheet = out / "to_annotate.csv"
    lines = sheet.read_text().splitlines()
    assert lines[0] == "image," + ",".join(f"{k}_{a}" for k in range(1, 6) for a in "xy")
    names = [line.split(",")[0] for line in lines[1:]]
    assert len(set(names)) == 2 and all(line.endswith("," * 10) for line in lines[1:])
    assert predict.main([*choose, "--num-landmarks=5"]) == 2  # annotations are never replaced
    assert f"{sheet} exists" in capsys.readouterr().err
    pred = [f"--run={run}", f"--images={images}", f"--out={tmp_path / 'p'}", "--no-overlays"]
    assert predict.main([*pred, f"--template-landmarks={sheet}"]) == 2
    assert "line 2: " + names[0] + " has empty landmark columns: fill them in" in (
        capsys.readouterr().err
    )

    truth = {
        row.split(",")[0]: np.array(row.split(",")[1:], float).reshape(5, 2)
        for row in (root / "landmarks.csv").read_text().splitlines()[1:]
    }
    sheet.write_text(
        "\n".join([lines[0]] + [n + "," + ",".join(map(str, truth[n].ravel())) for n in names])
    )
    assert predict.main([*pred, f"--template-landmarks={sheet}"]) == 0
    written = (tmp_path / "p" / "landmarks.csv").read_text().splitlines()
    found = np.array([row.split(",")[1:11] for row in written[1:]], float).reshape(-1, 5, 2)
    encoder = api.load_encoder(run)
    ordered = sorted(truth, key=lambda n: int(n[1:-4]))
    pictures = [np.asarray(Image.open(images / n)) for n in ordered]
    expected, _ = encoder.landmarks(
        pictures, [np.asarray(Image.open(images / n)) for n in names], [truth[n] for n in names]
    )
    np.testing.assert_allclose(found, expected, atol=0.006)

    one = tmp_path / "one.csv"  # one row, no --template: the one-template workflow
    one.write_text("\n".join(sheet.read_text().splitlines()[:2]))
    assert predict.main([*pred, f"--template-landmarks={one}", f"--out={tmp_path / 'q'}"]) == 0
    alone, _ = encoder.landmarks(pictures, pictures[ordered.index(names[0])], truth[names[0]])
    written = (tmp_path / "q" / "landmarks.csv").read_text().splitlines()
    found = np.array([row.split(",")[1:11] for row in written[1:]], float).reshape(-1, 5, 2)
    np.testing.assert_allclose(found, alone, atol=0.006)


@pytest.mark.slow
def test_pseudo_labels_and_a_detector_from_two_templates(tiny_run, tmp_path):
    """CC2D-S2 from K = 2 templates on five training images, evaluated on the same split: the
    pseudo-labels of the first three are the two templates' matches fused (``predict_many``),
    into their own CSV; the detector trains on the pseudo-labelled images that are not
    templates, and is evaluated on the one image that is neither its own nor a template."""
    import csv

    from conftest import load_config

    from piaug import checkpoints, configure, layout, templates
    from piaug.data import landmarks

    config = load_config("test")
    config.stages = "pseudo,detector,evaluate"
    config.data.options.num_images = 5
    config.eval.split = "train"
    config.detector.encoders = str(tiny_run)
    config.detector.inits = ("random",)
    config.detector.images = 3
    config.detector.steps = 2
    config.detector.batch_size = 1
    config.detector.checkpoint_every = 2
    config.eval.templates = 2
    config.eval.template = "synthetic-0-0000,synthetic-0-0003"
    workdir = tmp_path / "det"
    pipeline.run(config, workdir)

    with (workdir / layout.PSEUDO_DIR / "baseline.templates-2.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert not (workdir / layout.PSEUDO_DIR / "baseline.csv").exists()
    pool, size = templates.ImagePool(config), configure.image_size(config)
    assert [r["image"] for r in rows] == pool.ids[:3]
    encoder = checkpoints.image_encoder(tiny_run / "checkpoints", configure.model(config))
    fused = matching.predict_many(
        encoder,
        pool.images[[0, 3]],
        np.stack([matching.template_cells(pool.examples[i]["landmarks"], size) for i in (0, 3)]),
        pool.images[:3],
        size=size,
        settings=configure.match_settings(config),
        fusion="weighted",
    )
    for row, example, points in zip(rows, pool.examples[:3], fused, strict=True):
        height, width = example["original_size"]
        expected = (points + 0.5) * [width / size[1], height / size[0]] - 0.5
        found = np.array([float(row[c]) for c in landmarks.columns(5)]).reshape(5, 2)
        np.testing.assert_allclose(found, expected, atol=1e-3)

    name = "detector_random_pseudo_baseline_templates-2"
    seen = json.loads((workdir / layout.DETECTORS / name / layout.DETECTOR_EXAMPLES).read_text())
    assert seen["templates"] == ["synthetic-0-0000", "synthetic-0-0003"]
    assert seen["ids"] == ["synthetic-0-0001", "synthetic-0-0002"] and seen["template"] is None
    results = json.loads((workdir / layout.RESULTS_FILE).read_text())
    assert results[name]["checkpoint"]["step"] == 2
    # the first three are the detector's, 0003 a template: only 0004 is left to evaluate it on
    assert results[name]["ids"] == ["synthetic-0-0004"]


@pytest.mark.slow  # compiles a step: the fast tier stays under 3 minutes
def test_the_detector_step_takes_one_of_k_templates_in_turn():
    """With two templates, step 0 appends the first and step 1 the second: each step equals
    the step given that template alone."""
    import functools

    import optax

    from piaug import detector

    net = detector.Detector(3, 0.0625, norm="batch")
    tx = optax.sgd(0.01)
    rng = np.random.default_rng(0)
    batch = {
        "image": rng.uniform(0, 1, (2, 64, 64)).astype(np.float32),
        "landmarks": rng.uniform(5, 58, (2, 3, 2)).astype(np.float32),
    }
    both = {
        "image": rng.uniform(0, 1, (2, 64, 64)).astype(np.float32),
        "landmarks": rng.uniform(5, 58, (2, 3, 2)).astype(np.float32),
    }
    state = detector.create_state(jax.random.key(0), net=net, tx=tx, image_size=(64, 64))
    step = functools.partial(detector.train_step, net=net, tx=tx, radius=6.0)
    for k in (0, 1):
        at = state.replace(step=state.step + k)
        _, turn = jax.jit(functools.partial(step, template=both))(at, batch)
        one = {"image": both["image"][k], "landmarks": both["landmarks"][k]}
        _, alone = jax.jit(functools.partial(step, template=one))(at, batch)
        other = {"image": both["image"][1 - k], "landmarks": both["landmarks"][1 - k]}
        _, wrong = jax.jit(functools.partial(step, template=other))(at, batch)
        assert float(turn["loss"]) == pytest.approx(float(alone["loss"]), rel=1e-6)
        assert float(turn["loss"]) != pytest.approx(float(wrong["loss"]), rel=1e-3)
