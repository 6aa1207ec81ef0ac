"""The template choice that the pipeline, ``predict --choose-template`` and the API share
(``piaug.templates``): on the same folder they choose the same image, with the same scores."""

import json
import re
import shutil

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import load_config
from PIL import Image
from test_matching import SIZE, STRIDES, _features

from piaug import api, data, defaults, layout, matching, template_scores, templates


def _folder(root, count=6):
    """``count`` labelled synthetic images of two sizes, in the folder format."""
    (root / "images").mkdir(parents=True)
    rows = ["image," + ",".join(f"{k}_{a}" for k in range(1, 6) for a in "xy")]
    for i in range(count):
        size = [(96, 80), (110, 90)][i % 2]
        ex = data.spec("synthetic").load(
            None, split="train", num_images=1, size=size, num_landmarks=5, seed=10 + i
        )[0]
        Image.fromarray(ex["image"]).save(root / "images" / f"c{i}.png")
        rows.append(f"c{i}.png," + ",".join(f"{v:.2f}" for v in ex["landmarks"].ravel()))
    (root / "landmarks.csv").write_text("\n".join(rows) + "\n")
    return root


def test_predict_chooses_the_pipelines_template_on_the_same_folder(tiny_run, tmp_path, capsys):
    """Four candidates of six images (``eval.template_candidates``, spread over them): the
    pipeline's choice on the prepared folder and ``predict --choose-template`` on its image
    files name the same image, and the API's scores are the pipeline's."""
    from piaug import predict

    root = _folder(tmp_path / "mine")
    run = tmp_path / "run"  # the tiny run's encoder, its config asking for 4 candidates
    shutil.copytree(tiny_run / layout.CHECKPOINTS, run / layout.CHECKPOINTS)
    saved = json.loads((tiny_run / layout.CONFIG_FILE).read_text())
    saved["eval"]["template_candidates"] = 4
    (run / layout.CONFIG_FILE).write_text(json.dumps(saved))

    config = load_config("test")
    config.data.name, config.data.dir = "folder", str(root)
    config.data.split = config.eval.split = "all"
    config.data.options = defaults.dataset_options("folder")
    config.data.options.spacing = 0.1
    config.eval.template_candidates = 4
    pool = templates.ImagePool(config)
    encoder = api.load_encoder(run)
    index, chosen = templates.choose_template(
        config, tmp_path, pool, lambda: encoder.features(pool.images), run, save=False
    )
    assert chosen["chosen_by"] == "salient-point policy"

    capsys.readouterr()
    assert predict.main([f"--run={run}", f"--images={root / 'images'}", "--choose-template"]) == 0
    out = capsys.readouterr().out
    said = re.search(r"annotate (\S+) \(score ([-0-9.]+), 4 of 6 images scored\)", out)
    assert said, "predict names the image and how many were scored"
    assert said.group(1) == f"{pool.ids[index]}.png"
    assert float(said.group(2)) == np.round(chosen["score"], 4)

    _, pipeline_scores, candidates = templates.choose(
        encoder.features(pool.images),
        [e["iie"] for e in pool.examples],
        pool.labelled,
        size=encoder.image_size,
        policy=templates.TemplatePolicy.from_eval(config.eval),
        settings=matching.MatchSettings.from_eval(config.eval),
    )
    images = [np.asarray(Image.open(root / "images" / f"{k}.png")) for k in pool.ids]
    api_index, api_scores = encoder.choose_template(images)
    assert api_index == index and candidates.sum() == 4
    np.testing.assert_allclose(api_scores, pipeline_scores, rtol=1e-5)

    # another policy: predict --template-policy, the API's policy= and the pipeline's config
    # field choose the same image with the same scores
    config.eval.template_policy = "medoid"
    medoid_index, chosen = templates.choose_template(
        config, tmp_path, pool, lambda: encoder.features(pool.images), run, save=False
    )
    assert chosen["chosen_by"] == "medoid policy"
    api_index, api_scores = encoder.choose_template(images, policy="medoid")
    assert api_index == medoid_index and np.isfinite(api_scores).sum() == 4
    capsys.readouterr()
    argv = [f"--run={run}", f"--images={root / 'images'}", "--choose-template"]
    assert predict.main([*argv, "--template-policy=medoid"]) == 0
    said = re.search(r"annotate (\S+) \(score ([-0-9.]+)", capsys.readouterr().out)
    assert said.group(1) == f"{pool.ids[medoid_index]}.png"
    assert float(said.group(2)) == np.round(chosen["score"], 4)


def test_spread_and_the_policy_read_a_saved_eval_section():
    policy = templates.TemplatePolicy.from_eval(
        {"salient_points": 3, "salient_distance": 2, "border": 0.25}
    )
    assert policy.candidates == 0  # a run from before template_candidates: every image
    iie = np.zeros((16, 16))
    iie[[2, 5, 8, 9], [8, 5, 8, 11]] = [9.0, 4.0, 3.0, 2.0]
    # (2, 8) is in the border (4 pixels); (8, 8) and (9, 11) are 2 or more apart
    assert policy.points(iie, (16, 16)).tolist() == [[5, 5], [8, 8], [9, 11]]


def test_salient_points_are_strong_apart_and_inside():
    iie = np.zeros((40, 40))
    for (r, c), v in {(10, 10): 5.0, (12, 12): 4.0, (30, 25): 3.0, (1, 20): 6.0}.items():
        iie[r, c] = v
    points = template_scores.salient_points(iie, count=5, min_distance=5, border=3)
    # (1, 20) is in the border, (12, 12) too close to the stronger (10, 10)
    assert points.tolist() == [[10, 10], [30, 25]]
    assert template_scores.salient_points(iie, count=1, min_distance=5, border=3).tolist() == [
        [10, 10]
    ]


def test_the_typical_image_is_chosen_as_template():
    base = _features(2, n=1)
    noise = [1.0, 0.0, 0.6, 0.8]  # image 1 is the clean one, the others are noisy copies
    feats = [jnp.asarray(np.repeat(np.asarray(b), 4, axis=0)) for b in base]
    feats = _features(3, n=4, noise=noise, base=feats)
    points = [np.asarray([[4, 4], [16, 30], [26, 10]])] * 4
    settings = matching.MatchSettings(strides=STRIDES)
    chosen, scores = template_scores.score_candidates(feats, points, size=SIZE, settings=settings)
    assert chosen == 1 and scores.shape == (4,) and scores[1] == scores.max()
    with pytest.raises(ValueError, match="no candidate"):
        template_scores.score_candidates(
            feats, [np.zeros((0, 2), int)] * 4, size=SIZE, settings=settings
        )


def test_template_candidates_are_spread_over_the_labelled_images():
    labelled = np.array([True, False, True, True, True, False, True, True])
    # the labelled are 0, 2, 3, 4, 6, 7: the first, the middle (rounded) and the last
    assert np.flatnonzero(templates.spread(labelled, 3)).tolist() == [0, 3, 7]
    assert (templates.spread(labelled, 0) == labelled).all()
    assert (templates.spread(labelled, 99) == labelled).all()
