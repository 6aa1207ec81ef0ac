"""The landmark detector (CC2D's second stage): its targets, loss and decoding against
hand-computed values, the encoder's weights carried into it, its augmentation, and the
pseudo / detector / evaluate stages on the tiny run's encoders."""

import csv
import json
import math
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import load_config, write_dicom
from PIL import Image

from piaug import (
    checkpoints,
    configure,
    detector,
    layout,
    matching,
    models,
    pipeline,
    tb,
    templates,
    train,
)
from piaug.data import landmarks
from piaug.data.input_pipeline import LandmarkAugment
from piaug.errors import UserError
from piaug.stages import detectors

REPO = Path(__file__).resolve().parents[1]


def test_targets_are_a_disk_of_ones_with_offsets_to_the_landmark():
    heat, offsets = detector.targets(jnp.array([[2.0, 1.0]]), (5, 6), 1.5)
    assert heat.shape == (5, 6, 1) and offsets.shape == (5, 6, 1, 2)
    expected = np.zeros((5, 6))
    expected[0:3, 1:4] = 1  # the 3 x 3 pixels around (x 2, y 1): the diagonals are sqrt 2 < 1.5
    np.testing.assert_array_equal(heat[..., 0], expected)
    # pixel (row 0, col 1) -> the landmark is +1 in x and +1 in y away, over the radius
    np.testing.assert_allclose(offsets[0, 1, 0], [1 / 1.5, 1 / 1.5], rtol=1e-6)
    np.testing.assert_allclose(offsets[2, 3, 0], [-1 / 1.5, -1 / 1.5], rtol=1e-6)
    np.testing.assert_array_equal(offsets[4, 5, 0], [0.0, 0.0])  # outside: 0


def test_loss_is_the_authors_focal_term_plus_the_l1_inside_the_disks():
    logits = jnp.array([0.0, 0.0, math.log(3.0)]).reshape(1, 1, 3, 1)  # p = 0.5, 0.5, 0.75
    heat = jnp.array([1.0, 0.0, 1.0]).reshape(1, 1, 3, 1)
    pred = jnp.array([[0.5, 0.0], [9.0, 9.0], [0.0, -0.25]]).reshape(1, 1, 3, 1, 2)
    target = jnp.array([[0.25, 0.0], [0.0, 0.0], [0.0, 0.25]]).reshape(1, 1, 3, 1, 2)
    out = detector.loss(logits, pred, heat, target, heatmap_weight=2.0)
    focal = [
        -0.5 * math.log(0.5),  # t = 1, p = 0.5: -(1 - p) log p
        -0.5 * math.log(0.5),  # t = 0, p = 0.5: -p log(1 - p)
        -0.25 * math.log(0.75),  # t = 1, p = 0.75
    ]
    offset = (0.25 + 0.5) / 2  # |0.5 - 0.25| + |-0.25 - 0.25| over the 2 pixels inside
    np.testing.assert_allclose(out["loss_heatmap"], np.mean(focal), rtol=1e-6)
    np.testing.assert_allclose(out["loss_offset"], offset, rtol=1e-6)
    np.testing.assert_allclose(out["loss"], offset + 2 * np.mean(focal), rtol=1e-6)
    balanced = detector.loss(logits, pred, heat, target, heatmap_loss="balanced")
    expected = 0.5 * ((focal[0] + focal[2]) / 2 + focal[1])  # inside and outside apart
    np.testing.assert_allclose(balanced["loss_heatmap"], expected, rtol=1e-6)


@pytest.mark.parametrize("method", detector.DECODES)
def test_a_point_encoded_then_decoded_comes_back(method):
    rng = np.random.default_rng(0)
    size, radius = (48, 40), 4.0
    points = np.concatenate(
        [rng.uniform(0, [39, 47], (5, 2)), [[0.2, 0.3], [39.0, 47.0]]]  # corners too
    ).astype(np.float32)
    heat, offsets = jax.vmap(lambda p: detector.targets(p, size, radius))(jnp.asarray(points)[None])
    logits = jnp.where(heat > 0, 4.0, -4.0)
    found, confidence = detector.decode(logits, offsets, radius=radius, method=method)
    assert found.shape == (1, 7, 2) and confidence.shape == (1, 7)
    np.testing.assert_array_less(np.abs(np.asarray(found[0]) - points), 0.5)
    np.testing.assert_allclose(confidence, jax.nn.sigmoid(4.0), rtol=1e-6)


def test_voting_outvotes_a_lone_confident_pixel():
    """A sharp false peak loses to the many pixels voting for the landmark."""
    size, radius = (32, 32), 4.0
    heat, offsets = detector.targets(jnp.array([[10.0, 20.0]]), size, radius)
    logits = jnp.where(heat > 0, 2.0, -6.0).at[3, 3, 0].set(8.0)  # a false, sharper peak
    vote, _ = detector.decode(logits[None], offsets[None], radius=radius, method="vote")
    peak, _ = detector.decode(logits[None], offsets[None], radius=radius, method="peak")
    np.testing.assert_allclose(vote[0, 0], [10.0, 20.0], atol=1e-4)
    np.testing.assert_allclose(peak[0, 0], [3.0, 3.0], atol=1e-4)  # the peak has no offset


def _random_variables(net, size=(64, 64), seed=1, channels=()) -> dict:
    """``net``'s ``params`` and ``batch_stats``, random numbers of their shapes (no init to
    run or compile: only the names and shapes matter here)."""
    shapes = jax.eval_shape(
        lambda k: net.init(k, jnp.zeros((1, *size, *channels)), train=False), jax.random.key(0)
    )
    rng = np.random.default_rng(seed)
    v = jax.tree.map(lambda x: rng.standard_normal(x.shape).astype(np.float32), shapes)
    return {"params": v["params"], "batch_stats": v["batch_stats"]}


def _encoder_variables(width, norm="batch"):
    return _random_variables(models.Encoder(8, width, rfb=True, norm=norm))


def test_an_encoder_initialises_the_detectors_backbone_and_decoder():
    net = detector.Detector(3, width=0.0625, norm="batch")
    fresh = _random_variables(net, seed=0)
    encoder = _encoder_variables(0.0625)
    carried = detector.carry_over(fresh, encoder, source="enc")
    for kind in ("params", "batch_stats"):
        for name in detector.CARRIED:
            jax.tree.map(np.testing.assert_array_equal, carried[kind][name], encoder[kind][name])
        for name in set(fresh[kind]) - set(detector.CARRIED):  # up5, head: the detector's own
            jax.tree.map(np.testing.assert_array_equal, carried[kind][name], fresh[kind][name])
    with pytest.raises(UserError, match="enc: the encoder's params/vgg does not fit"):
        detector.carry_over(fresh, _encoder_variables(0.125), source="enc")


def test_the_augmentation_moves_the_landmarks_with_the_image():
    image = np.zeros((64, 96), np.uint8)
    points = np.array([[70.0, 20.0], [10.0, 40.0], [50.0, 50.0]], np.float32)
    for x, y in points.astype(int):
        image[y, x] = 255
    element = {"id": "a", "image": image, "landmarks": points}
    plain = LandmarkAugment().random_map(element, np.random.default_rng(0))
    np.testing.assert_array_equal(plain["image"], image / 255.0)  # the defaults change nothing
    np.testing.assert_array_equal(plain["landmarks"], points)
    transform = LandmarkAugment(max_rotation=30, max_scale=1.3, max_shift=0.1)
    for seed in range(4):
        out = transform.random_map(element, np.random.default_rng(seed))
        for x, y in out["landmarks"]:
            if 1 <= x <= 94 and 1 <= y <= 62:  # still inside: the dot went there
                r, c = round(float(y)), round(float(x))
                assert out["image"][r - 1 : r + 2, c - 1 : c + 2].max() > 0.3


def test_detector_settings_and_config_errors(tiny_config):
    with pytest.raises(ValueError, match="decode"):
        detector.DetectorSettings(decode="argmax")
    assert detector.DetectorSettings().radius_px((384, 384)) == 19  # the authors' radius
    for field, value, message in [
        ("inits", ("random", "vgg"), "config.detector.inits"),
        ("labels", "gold", "config.detector.labels"),
        ("pseudo_from", "crop", "config.detector.pseudo_from"),
        ("images", -1, "config.detector.images"),
        ("encoders", "/nonexistent", "config.detector.encoders"),
        ("radius", 2.0, "config.detector.radius"),
        ("max_scale", 0.5, "config.detector"),
        ("batch_size", 0, "config.detector.batch_size"),
    ]:
        config = tiny_config.copy_and_resolve_references()
        config.detector[field] = value
        with pytest.raises(UserError, match=message):
            configure.check(config)
    config = tiny_config.copy_and_resolve_references()
    config.detector.inits = ("random, piaug",)  # as --config.detector.inits=random,piaug gives
    assert configure.detector_inits(config) == ["random", "piaug"]


DETECTORS = ["detector_random_pseudo_baseline", "detector_baseline_pseudo_baseline"]


@pytest.fixture(scope="module")
def detector_run(tiny_run, tmp_path_factory):
    """On the tiny run's encoders: pseudo-labels of 2 training images, a detector from random
    weights and one from the baseline (3 steps each), evaluated on the test split."""
    config = load_config("test")
    config.stages = "pseudo,detector,evaluate"
    config.detector.encoders = str(tiny_run)
    config.detector.inits = ("random", "baseline")
    config.detector.images = 2
    config.detector.steps = 3
    config.detector.batch_size = 1
    config.detector.checkpoint_every = 3
    workdir = tmp_path_factory.mktemp("detectors") / "det"
    pipeline.run(config, workdir)
    return workdir


def _assert_pseudo_labels_are_the_matches(tiny_run, template, rows):
    """The pseudo-labels' values: the baseline encoder's one-shot matches of the template into
    the first training images, each mapped back to its own pixels (pixel centres aligned)."""
    config = load_config("test")
    pool, size = templates.ImagePool(config), configure.image_size(config)
    assert [r["image"] for r in rows] == pool.ids[: len(rows)]  # config.detector.images first
    source = pool.examples[pool.ids.index(template)]
    encoder = checkpoints.image_encoder(tiny_run / "checkpoints", configure.model(config))
    grid = matching.predict(
        encoder,
        source["image"],
        matching.template_cells(source["landmarks"], size),
        pool.images[: len(rows)],
        size=size,
        settings=configure.match_settings(config),
    )
    for row, example, points in zip(rows, pool.examples, grid, strict=False):
        height, width = example["original_size"]  # 96 x 80 images matched in a 64 x 64 grid
        expected = (points + 0.5) * [width / size[1], height / size[0]] - 0.5
        found = np.array([float(row[c]) for c in landmarks.columns(5)]).reshape(5, 2)
        np.testing.assert_allclose(found, expected, atol=1e-3)
        assert (found >= -0.5).all() and (found <= [width - 0.5, height - 0.5]).all()


def test_pseudo_labels_train_detectors_that_evaluate_on_unseen_images(tiny_run, detector_run):
    template = json.loads((tiny_run / layout.TEMPLATE_FILE).read_text())["id"]
    with (detector_run / layout.PSEUDO_DIR / "baseline.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and list(rows[0]) == ["image"] + landmarks.columns(5)
    _assert_pseudo_labels_are_the_matches(tiny_run, template, rows)
    results = json.loads((detector_run / layout.RESULTS_FILE).read_text())
    for name in DETECTORS:
        folder = detector_run / layout.DETECTORS / name
        seen = json.loads((folder / layout.DETECTOR_EXAMPLES).read_text())
        assert seen["template"] == template and template not in seen["ids"]
        entry = results[name]
        assert entry["split"] == "test" and entry["checkpoint"]["step"] == 3
        assert len(entry["per_image_mre_mm"]) == len(entry["ids"]) == entry["n_images"]
        events = tb.read(detector_run / layout.TENSORBOARD / name)  # TensorBoard's copy
        lines = (folder / layout.METRICS_FILE).read_text().splitlines()
        logged = [r for r in map(json.loads, lines) if "loss" in r]
        assert [(s, pytest.approx(v)) for s, v in events["loss/loss"]] == [
            (r["step"], r["loss"]) for r in logged
        ]
        assert events["batch/first"] == [(1, (64, 64))]  # the image with its landmarks
        assert [s for s, _ in events["probe/matches"]] == [
            s for s, _ in events["probe/probe_mre_mm"]
        ]
    # the encoders of the other run are evaluated here too, on the same images
    assert results["baseline"]["ids"] == results[DETECTORS[0]]["ids"]
    with (detector_run / layout.PREDICTIONS_FILE).open() as f:
        predicted = list(csv.DictReader(f))
    assert {r["model"] for r in predicted} == {"baseline", "piaug", *DETECTORS}
    assert {r["image"] for r in predicted} == set(results["baseline"]["ids"])


@pytest.fixture(scope="module")
def new_images(tmp_path_factory):
    """A folder of three synthetic images of different sizes and a corrupt one; the first
    image's true landmarks as a folder-format CSV."""
    from PIL import Image

    from piaug import data

    root = tmp_path_factory.mktemp("new_images")
    folder = root / "images"
    folder.mkdir()
    truth = {}
    for i, size in enumerate([(96, 80), (120, 90), (80, 100)]):
        ex = data.spec("synthetic").load(
            None, split="test", num_images=1, size=size, num_landmarks=5, seed=i
        )[0]
        Image.fromarray(ex["image"]).save(folder / f"case{i}.png")
        truth[f"case{i}"] = np.asarray(ex["landmarks"], np.float64)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    header = ",".join(["image", *landmarks.columns(5)])
    values = ",".join(f"{v:.3f}" for v in truth["case0"].ravel())
    (root / "case0.csv").write_text(f"{header}\ncase0.png,{values}\n")
    return root, truth


def _predict(capsys, *args):
    """``python -m piaug.predict ARGS``, in this process: (exit status, stdout, stderr)."""
    from piaug import predict

    capsys.readouterr()
    status = predict.main(list(args))
    out = capsys.readouterr()
    return status, out.out, out.err


def test_predict_with_a_detector_writes_every_readable_image(
    detector_run, new_images, tmp_path, capsys
):
    root, truth = new_images
    out = tmp_path / "out"
    status, stdout, stderr = _predict(
        capsys,
        f"--run={detector_run}",
        f"--images={root / 'images'}",
        f"--out={out}",
        f"--model={DETECTORS[0]}",
    )
    assert status == 1, stderr  # one image could not be read ...
    assert "broken.png" in stderr  # ... and is named
    with (out / "landmarks.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["image"] for r in rows] == ["case0.png", "case1.png", "case2.png"]
    assert list(rows[0]) == ["image", *landmarks.columns(5)] + [f"{i}_conf" for i in range(1, 6)]
    assert all(0 <= float(r["3_conf"]) <= 1 for r in rows)
    assert sorted(p.name for p in (out / "overlays").iterdir()) == [
        "case0.png",
        "case1.png",
        "case2.png",
    ]
    # the run holds two detectors: without --model the choice is asked for
    again, _, again_err = _predict(
        capsys, f"--run={detector_run}", f"--images={root / 'images'}", f"--out={out}"
    )
    assert again == 2 and "holds 2 detectors" in again_err


def test_predict_one_shot_from_a_template_the_user_annotated(
    tiny_run, new_images, tmp_path, capsys
):
    root, truth = new_images
    out = tmp_path / "out"
    # case0 as a PNG and as a 16-bit DICOM whose own window (0 to 255) gives the same pixels
    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(root / "images" / "case0.png", images / "case0.png")
    pixels = np.asarray(Image.open(images / "case0.png").convert("L"), np.uint16)
    write_dicom(images / "case0_dicom.dcm", pixels, WindowCenter=127.5, WindowWidth=255)
    status, stdout, stderr = _predict(
        capsys,
        f"--run={tiny_run}",
        f"--images={images}",
        f"--out={out}",
        f"--template={root / 'images' / 'case0.png'}",
        f"--template-landmarks={root / 'case0.csv'}",
        "--no-overlays",
    )
    assert status == 0, stderr
    with (out / "landmarks.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["image"] for r in rows] == ["case0.png", "case0_dicom.dcm"]
    found = [np.array([float(r[c]) for c in landmarks.columns(5)]).reshape(5, 2) for r in rows]
    # the template matched into itself: its own points, to the grid's resolution (64 of 80-96)
    np.testing.assert_array_less(np.abs(found[0] - truth["case0"]), 2.0)
    np.testing.assert_array_equal(found[1], found[0])
    assert not (out / "overlays").exists()


def test_predict_chooses_the_image_to_annotate(tiny_run, new_images, capsys):
    root, _ = new_images
    status, stdout, stderr = _predict(
        capsys, f"--run={tiny_run}", f"--images={root / 'images'}", "--choose-template"
    )
    assert status == 0, stderr
    assert re.search(r"annotate case[012]\.png \(score", stdout)


def test_the_readmes_api_snippet_runs(tiny_run, new_images, monkeypatch):
    """The Python snippet of the README, on the tiny run and the new images."""
    root, truth = new_images
    text = (REPO / "README.md").read_text()
    snippet = re.search(r"<!-- api-snippet -->\s*```python\n(.*?)```", text, re.S).group(1)
    monkeypatch.chdir(root)
    snippet = snippet.replace("runs/demo", str(tiny_run))
    scope = {}
    exec(compile(snippet, "README.md", "exec"), scope)  # noqa: S102
    assert scope["points"].shape == (2, 5, 2) and scope["confidence"].shape == (2, 5)


@pytest.mark.slow  # compiles a step: the fast tier stays under 3 minutes
def test_true_labels_hold_out_the_detectors_images(tiny_run, tiny_config, tmp_path):
    """Few-shot on the first of the 3 training images, of a pool of the first 2: evaluated on
    the third alone (the pool's other image is left out too)."""
    config = tiny_config
    config.stages = "detector,evaluate"
    config.eval.split = "train"
    config.detector.labels = "true"
    config.detector.images = 2
    config.detector.labeled = 1
    config.detector.steps = 2
    config.detector.batch_size = 2
    with pytest.raises(UserError, match="config.detector.batch_size=2 is larger than the 1"):
        pipeline.run(config, tmp_path / "too_large")
    config.detector.batch_size = 1
    config.detector.decode = "peak"
    workdir = tmp_path / "sup"
    pipeline.run(config, workdir)
    results = json.loads((workdir / layout.RESULTS_FILE).read_text())
    assert list(results) == ["detector_random"]  # no encoder here, none named
    seen = json.loads(
        (workdir / layout.DETECTORS / "detector_random" / layout.DETECTOR_EXAMPLES).read_text()
    )
    assert len(seen["ids"]) == 1 and len(seen["reserved"]) == 2 and seen["template"] is None
    assert results["detector_random"]["n_images"] == 1
    assert results["detector_random"]["ids"][0] not in seen["reserved"]
    assert results["detector_random"]["detector"]["trained_on"] == 1
    metrics = (workdir / layout.DETECTORS / "detector_random" / layout.METRICS_FILE).read_text()
    assert "probe_mre_mm" in metrics  # the probe watched it on the held-out image


def test_export_gives_torchvision_names_and_reads_back(tmp_path):
    """A full-width batch-norm encoder: its backbone under torchvision's vgg19_bn names (the
    converter that reads torchvision files takes them back exactly), the rest by Flax path,
    and the whole file read back into the same variables."""
    from piaug import export, pretrained

    variables = _random_variables(models.Encoder(8, 1.0, rfb=True, norm="batch"), (32, 32))
    v = variables
    state = export.to_state_dict(variables)
    assert state["features.0.weight"].shape == (64, 3, 3, 3)  # torch's (out, in, kh, kw)
    assert "features.1.running_var" in state and "head32.weight" in state
    backbone = pretrained.vgg_variables(state, batch_norm=True, source="export")
    jax.tree.map(np.testing.assert_array_equal, backbone["params"], dict(v["params"]["vgg"]))
    jax.tree.map(
        np.testing.assert_array_equal, backbone["batch_stats"], dict(v["batch_stats"]["vgg"])
    )
    path = tmp_path / "encoder.safetensors"
    export.write(path, state)
    back = export.from_state_dict(pretrained.read_arrays(path), variables)
    jax.tree.map(np.testing.assert_array_equal, back, jax.tree.map(np.asarray, variables))
    with pytest.raises(UserError, match="npz or .safetensors"):
        export.write(tmp_path / "encoder.pth", state)


def test_export_a_runs_detector(detector_run, tmp_path, capsys):
    from piaug import export

    out = tmp_path / "detector.npz"
    status = export.main([f"--run={detector_run}", f"--model={DETECTORS[1]}", f"--out={out}"])
    assert status == 0, capsys.readouterr().err
    with np.load(out) as f:
        assert f["head.weight"].shape[:2] == (15, 4)  # 3 x 5 landmarks, from 64 x 0.0625 channels


def test_imagenet_weights_initialise_the_detectors_backbone(tmp_path, tiny_config):
    """detector.inits=imagenet: a torchvision vgg19_bn file (here random numbers under its
    names) becomes the detector's backbone with its running statistics; the decoder stays."""
    from piaug import export

    vgg = models.VGGFeatures(1.0, norm="batch")
    backbone = _random_variables(vgg, (32, 32), seed=3, channels=(3,))
    state = export.to_state_dict(
        {"params": {"vgg": backbone["params"]}, "batch_stats": {"vgg": backbone["batch_stats"]}}
    )
    path = tmp_path / "vgg19_bn.npz"
    export.write(path, state)
    config = tiny_config
    config.model.width, config.model.norm, config.model.pretrained = 1.0, "batch", str(path)
    fresh = _random_variables(detector.Detector(5, 1.0, norm="batch"), seed=0)
    start = detectors.initializer(config, "imagenet", {})(fresh)
    jax.tree.map(np.testing.assert_array_equal, start["params"]["vgg"], backbone["params"])
    jax.tree.map(
        np.testing.assert_array_equal, start["batch_stats"]["vgg"], backbone["batch_stats"]
    )
    jax.tree.map(np.testing.assert_array_equal, start["params"]["up1"], fresh["params"]["up1"])


@pytest.mark.slow
def test_sharded_detector_step_equals_single_device_step():
    """The detector's step (with the template appended to a sharded batch) on meshes of 1, 2
    and 4 devices: the same parameters, statistics and metrics."""
    script = textwrap.dedent(
        """
        import functools
        import jax, numpy as np, optax
        from jax.sharding import NamedSharding, PartitionSpec
        from piaug import detector, train

        net = detector.Detector(3, 0.0625, norm="batch")
        tx = optax.sgd(0.01)  # SGD: see test_train's sharded test
        rng = np.random.default_rng(0)
        batch = {
            "image": rng.uniform(0, 1, (4, 64, 64)).astype(np.float32),
            "landmarks": rng.uniform(5, 58, (4, 3, 2)).astype(np.float32),
        }
        template = {"image": batch["image"][0], "landmarks": batch["landmarks"][0]}
        create = functools.partial(detector.create_state, net=net, tx=tx, image_size=(64, 64))
        init = jax.jit(create)
        state0 = jax.device_get(init(jax.random.key(0)))
        start = jax.tree.leaves(state0.params)
        results = []
        for n in (1, 2, 4):
            mesh = train.make_mesh(jax.devices()[:n])
            state = jax.device_put(state0, NamedSharding(mesh, PartitionSpec()))
            step = train.compile_step(
                mesh, detector.train_step, net=net, tx=tx, radius=6.0,
                heatmap_loss="balanced", template=template,
            )
            state, metrics = step(state, train.device_batch(batch, mesh, detector.BATCH_KEYS))
            results.append(jax.device_get((state.params, state.batch_stats, metrics)))
            moved = [not np.array_equal(a, b) for a, b in zip(start, jax.tree.leaves(state.params))]
            assert all(moved), f"{n} devices: {moved.count(False)} tensors kept their values"
        for other in results[1:]:
            for x, y in zip(jax.tree.leaves(results[0]), jax.tree.leaves(other), strict=True):
                np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5)
        print("EQUAL", results[0][2]["loss"])
        """
    )
    env = dict(os.environ)
    env["XLA_FLAGS"] = env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
    env["PYTHONPATH"] = str(REPO)
    out = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0 and "EQUAL" in out.stdout, out.stderr[-3000:]


@pytest.mark.slow  # compiles a step: the fast tier stays under 3 minutes
def test_a_resumed_detector_equals_one_trained_straight(tmp_path):
    """4 steps at once, or 2 then 2 more from the checkpoint: the same weights (the batches
    are a function of the seed and the step; the template is appended to each)."""
    rng = np.random.default_rng(0)
    examples = [
        {
            "id": str(i),
            "image": rng.integers(0, 256, (64, 64), dtype=np.uint8),
            "landmarks": rng.uniform(5, 58, (3, 2)).astype(np.float32),
        }
        for i in range(4)
    ]
    net = detector.Detector(3, 0.0625, norm="batch")
    settings = detector.DetectorSettings(heatmap_loss="balanced")

    def fit(folder, steps):
        cfg = train.TrainSettings(batch_size=2, steps=steps, lr=1e-3, checkpoint_every=2)
        augment = LandmarkAugment(max_rotation=10, brightness=(0.8, 1.2))
        detector.fit(
            folder,
            examples,
            net=net,
            settings=settings,
            train_settings=cfg,
            image_size=(64, 64),
            augmentation=augment,
            template=examples[0],
            seed=3,
        )
        return detector.restore(folder / "checkpoints", net, (64, 64))

    straight = fit(tmp_path / "a", 4)
    halfway = fit(tmp_path / "b", 2)
    resumed = fit(tmp_path / "b", 4)
    jax.tree.map(np.testing.assert_array_equal, straight, resumed)
    # the steps moved the weights: from the initialisation (fit's seed) to step 2, and on to 4
    start = detector.init_variables(net, jax.random.key(3), (64, 64))["params"]
    for before, after in [(start, halfway["params"]), (halfway["params"], resumed["params"])]:
        pairs = zip(jax.tree.leaves(before), jax.tree.leaves(after), strict=True)
        assert all(not np.array_equal(a, b) for a, b in pairs)
    rows = [json.loads(r) for r in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [2, 4]  # each call logs its last step
