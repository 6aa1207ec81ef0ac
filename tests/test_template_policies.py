"""The label-free template policies of ``eval.template_policy`` (``piaug.templates``): each
chooses the best template on a set where it is known by construction."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from piaug import matching, template_scores, templates
from piaug.errors import UserError

STRIDES = (8, 4, 2)
SIZE = (64, 64)
BLOBS = [(16, 16), (16, 44), (40, 28), (48, 50), (30, 50), (50, 12)]
# image 1 is a clean copy of the shared features, image 4 the noisiest
NOISE = [1.0, 0.0, 0.8, 0.9, 2.0, 1.0]


def _blobs() -> np.ndarray:
    """A 64 x 64 image of Gaussian blobs (SIFT and the IIE maxima find them)."""
    r, c = np.mgrid[: SIZE[0], : SIZE[1]]
    image = sum(np.exp(-((r - y) ** 2 + (c - x) ** 2) / 8.0) for y, x in BLOBS)
    return image / image.max()


def _set():
    """Six aligned images: features per scale, each image the shared map plus its own noise."""
    rng = np.random.default_rng(0)
    n = len(NOISE)
    features = []
    for s in STRIDES:
        shape = (SIZE[0] // s, SIZE[1] // s, 16)
        base = rng.normal(size=shape)
        noisy = base[None] + np.asarray(NOISE).reshape(-1, 1, 1, 1) * rng.normal(size=(n, *shape))
        features.append(jnp.asarray(noisy, jnp.float32))
    blobs = _blobs()
    images = np.repeat((blobs * 255).astype(np.uint8)[None], n, axis=0)
    return features, [blobs] * n, images


@pytest.mark.parametrize("name", templates.POLICIES)
def test_each_policy_prefers_the_clean_image_and_puts_the_noisiest_last(name):
    features, iie, images = _set()
    policy = templates.TemplatePolicy(
        name=name, salient_points=6, salient_distance=6, border=0.1, candidates=0
    )
    index, scores, candidates, per_image = templates.choose(
        features,
        iie,
        np.ones(len(NOISE), bool),
        size=SIZE,
        policy=policy,
        settings=matching.MatchSettings(strides=STRIDES),
        images=images,
        per_image=True,
    )
    assert candidates.all() and per_image.shape == (len(NOISE),) * 2
    assert index == 1, scores
    assert int(np.argmin(scores)) == 4, scores
    assert np.isnan(np.diag(per_image)).all()


@pytest.mark.parametrize("name", templates.POLICIES)
def test_a_policy_scores_only_its_candidates(name):
    features, iie, images = _set()
    allowed = np.array([True, False, True, True, True, True])
    policy = templates.TemplatePolicy(name=name, salient_points=6, salient_distance=6)
    index, scores, _ = templates.choose(
        features,
        iie,
        allowed,
        size=SIZE,
        policy=policy,
        settings=matching.MatchSettings(strides=STRIDES),
        images=images,
    )
    assert index != 1 and np.isneginf(scores[1]) and np.isfinite(scores[allowed]).all()


def test_sift_points_are_strong_apart_and_inside():
    image = (_blobs() * 255).astype(np.uint8)
    points = template_scores.sift_points(image, count=10, min_distance=8.0, border=6)
    assert 3 <= len(points) <= 10
    assert ((points >= 6) & (points < 58)).all()
    gaps = np.hypot(*(points[:, None] - points[None]).transpose(2, 0, 1))
    assert (gaps[~np.eye(len(points), dtype=bool)] >= 8.0).all()
    # the strongest sit on blobs (weaker ones lie between them, at coarser scales)
    nearest = np.hypot(*(points[:, None] - np.asarray(BLOBS)[None]).transpose(2, 0, 1)).min(1)
    assert (nearest[:4] <= 1).all(), points
    assert len(template_scores.sift_points(image, count=2, min_distance=8.0, border=6)) == 2
    assert template_scores.sift_points(
        np.zeros(SIZE, np.uint8), count=4, min_distance=1, border=0
    ).shape == (0, 2)


def test_consensus_measures_pixels_from_the_other_candidates_median():
    # five candidates, four images' worth of two points each; candidate 2 predicts every point
    # 6 pixels lower, candidate 4 is not a candidate (NaN)
    truth = np.array([[10.0, 20.0], [30.0, 5.0]])
    votes = np.broadcast_to(truth, (5, 5, 2, 2)).copy()
    votes[2, :, :, 0] += 6.0
    votes[4] = np.nan
    scores, per_image = template_scores.consensus_distance(votes)
    np.testing.assert_allclose(scores[:4], [0.0, 0.0, -6.0, 0.0])
    assert np.isneginf(scores[4]) and np.isnan(per_image[4]).all()
    assert np.isnan(np.diag(per_image)).all()
    np.testing.assert_allclose(per_image[2, [0, 1, 3, 4]], -6.0)


def test_an_unknown_policy_and_scp_on_volumes_are_refused():
    with pytest.raises(UserError, match="eval.template_policy='best'"):
        templates.TemplatePolicy(name="best")
    policy = templates.TemplatePolicy.from_eval(
        {"template_policy": "scp", "salient_points": 4, "salient_distance": 2, "border": 0.0}
    )
    assert policy.name == "scp" and policy.candidates == 0
    volume = [jnp.zeros((2, 2, 2, 2, 3))]
    with pytest.raises(UserError, match="2-D images"):
        templates.policy_scores(
            policy,
            volume,
            [np.zeros((8, 8, 8))] * 2,
            None,
            np.ones(2, bool),
            size=(8, 8, 8),
            settings=matching.MatchSettings(strides=(4,)),
        )
    # a run that predates the field keeps the salient-point policy
    saved = {"salient_points": 4, "salient_distance": 2, "border": 0.0}
    assert templates.TemplatePolicy.from_eval(saved).name == "salient"


@pytest.mark.parametrize("field", ["template_policy", "template_set"])
def test_a_misspelt_policy_or_set_rule_is_a_config_error(field):
    from conftest import load_config

    from piaug import configure

    config = load_config("test")
    configure.match_settings(config)  # the defaults pass
    config.eval[field] = "nope"
    with pytest.raises(UserError, match=f"config.eval.{field}='nope': use one of"):
        configure.match_settings(config)


@pytest.mark.parametrize("name", ["salient", "consensus", "medoid"])
def test_the_policies_choose_among_volumes_too(name):
    """Volumes (``(N, d, h, w, E)`` maps): the clean volume is chosen, the noisiest last."""
    rng = np.random.default_rng(0)
    size, noise = (16, 16, 16), np.asarray(NOISE)
    features = []
    for s in STRIDES:
        shape = (*(n // s for n in size), 16)
        base = rng.normal(size=shape)
        noisy = base[None] + noise.reshape(-1, 1, 1, 1, 1) * rng.normal(size=(len(noise), *shape))
        features.append(jnp.asarray(noisy, jnp.float32))
    z, r, c = np.mgrid[:16, :16, :16]
    iie = sum(
        np.exp(-((z - a) ** 2 + (r - b) ** 2 + (c - d) ** 2) / 4.0)
        for a, b, d in [(4, 4, 4), (11, 5, 10), (6, 11, 7), (11, 11, 11)]
    )
    policy = templates.TemplatePolicy(
        name=name, salient_points=4, salient_distance=3, border=0.1, candidates=0
    )
    index, scores, _ = templates.choose(
        features,
        [iie] * len(noise),
        np.ones(len(noise), bool),
        size=size,
        policy=policy,
        settings=matching.MatchSettings(strides=STRIDES),
    )
    assert index == 1 and int(np.argmin(scores)) == 4, scores
