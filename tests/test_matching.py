"""One-shot matching (Eq. 4): template vectors, the product of clamped cosine maps, argmax,
sub-pixel refinement, salient points and the unsupervised template choice."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from piaug import matching
from piaug.template_scores import score_candidates

STRIDES = (8, 4, 2)
SIZE = (32, 48)


def _features(seed, n=2, noise=None, base=None):
    rng = np.random.default_rng(seed)
    out = []
    for i, s in enumerate(STRIDES):
        shape = (n, SIZE[0] // s, SIZE[1] // s, 6)
        f = rng.normal(size=shape) if base is None else base[i]
        if noise is not None:
            f = f + np.asarray(noise).reshape(-1, 1, 1, 1) * rng.normal(size=shape)
        out.append(jnp.asarray(f, jnp.float32))
    return out


def test_template_vectors_read_the_cells_of_the_points():
    feats = _features(0, n=1)
    points = jnp.asarray([[5, 9], [31, 47]])
    vectors = matching.template_vectors([f[0] for f in feats], points, strides=STRIDES)
    for f, v, s in zip(feats, vectors, STRIDES, strict=True):
        np.testing.assert_array_equal(v[0], f[0, 5 // s, 9 // s])
        np.testing.assert_array_equal(v[1], f[0, 31 // s, 47 // s])


def test_bilinear_template_vectors_are_the_maps_upsampled_bilinearly_at_the_points():
    """'bilinear' reads each map as jax.image.resize upsamples it to the grid, at every pixel
    (borders included), and at a cell's centre reads that cell."""
    feats = _features(3, n=1)
    rows, cols = np.meshgrid(np.arange(SIZE[0]), np.arange(SIZE[1]), indexing="ij")
    points = jnp.asarray(np.stack([rows.ravel(), cols.ravel()], -1))
    vectors = matching.template_vectors(
        [f[0] for f in feats], points, strides=STRIDES, sampling="bilinear"
    )
    for f, v, s in zip(feats, vectors, STRIDES, strict=True):
        up = jax.image.resize(f[0], (*SIZE, f.shape[-1]), method="bilinear")
        np.testing.assert_allclose(v, np.asarray(up).reshape(-1, f.shape[-1]), atol=1e-5)
        centres = jnp.asarray([[0, 0], [2, 3]]) * s + (s - 1) / 2
        at = matching.template_vectors([f[0]], centres, strides=[s], sampling="bilinear")[0]
        np.testing.assert_allclose(at, np.asarray(f[0])[[0, 2], [0, 3]], atol=1e-6)
    with pytest.raises(ValueError, match="sampling"):
        matching.template_vectors([f[0] for f in feats], points, sampling="nearest")


def test_predict_matches_with_the_sampling_it_is_given():
    """``predict`` with a sampling is template_vectors with that sampling, then match_all."""
    from piaug.models import STRIDES as FIVE

    size = (64, 96)
    rng = np.random.default_rng(4)
    images = rng.integers(0, 256, size=(3, *size), dtype=np.uint8)
    weights = jnp.asarray(rng.normal(size=(len(FIVE), 6)), jnp.float32)

    def apply(x):  # a stand-in encoder: each scale a pooled image, lifted to 6 channels
        out = []
        for i, s in enumerate(FIVE):
            pooled = jax.image.resize(x, (x.shape[0], size[0] // s, size[1] // s), "linear")
            out.append(jnp.sin(3 * pooled[..., None] * weights[i]))
        return out

    points = np.asarray([[5, 9], [40, 33], [13, 82]])
    got = {}
    for sampling in matching.SAMPLING:
        settings = matching.MatchSettings(
            upsample="bilinear", combine="sum", sampling=sampling, batch_size=2
        )
        got[sampling] = matching.predict(
            apply, images[0], points, images[1:], size=size, settings=settings
        )
        template = [f[0] for f in apply(images[:1].astype(np.float32) / 255.0)]
        vectors = matching.template_vectors(template, points, sampling=sampling)
        features = [np.asarray(f) for f in apply(images[1:].astype(np.float32) / 255.0)]
        want = matching.match_all(features, vectors, size=size, settings=settings)
        np.testing.assert_array_equal(got[sampling], want[..., ::-1])
    assert not np.array_equal(got["cell"], got["bilinear"])


@pytest.mark.parametrize("combine", matching.COMBINE)
def test_similarity_is_each_cells_cosine_with_each_template(combine):
    """The contraction of unit vectors equals the cosine of every cell with every template
    (with its norm floor), scale by scale, upsampled and combined."""
    from piaug import losses

    feats = _features(7, n=3)
    feats[0] = feats[0].at[0, 0, 0].set(0.0)  # a zero vector: the floor, not a NaN
    templates = [jnp.asarray(np.random.default_rng(8).normal(size=(4, 6)), jnp.float32)] * 3
    got = matching.similarity(feats, templates, size=SIZE, strides=STRIDES, combine=combine)
    want = None
    for f, t, s in zip(feats, templates, STRIDES, strict=True):
        cos = np.asarray(losses.cosine(f[:, None], t[None, :, None, None, :]))
        cos = np.clip(cos, 0, 1) if combine == "product" else cos
        cos = cos.repeat(s, axis=-2).repeat(s, axis=-1)
        want = cos if want is None else (want * cos if combine == "product" else want + cos)
    assert got.shape == (3, 4, *SIZE) and np.isfinite(np.asarray(got)).all()
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-5)


def test_a_point_matched_into_its_own_image_is_found():
    feats = _features(1)
    points = jnp.asarray([[5, 9], [20, 33], [30, 1]])
    templates = matching.template_vectors([f[1] for f in feats], points, strides=STRIDES)
    run = jax.jit(functools.partial(matching.match, size=SIZE, strides=STRIDES))
    peaks, scores = run(feats, templates)
    assert peaks.shape == (2, 3, 2) and scores.shape == (2, 3)
    # nearest upsampling: the product is 1 on the finest cell of the point; argmax takes its
    # first pixel
    np.testing.assert_array_equal(peaks[1], (np.asarray(points) // 2) * 2)
    np.testing.assert_allclose(scores[1], 1.0, rtol=1e-5)
    assert np.all(scores[0] < 1.0)
    # jitted: eager, each operation is compiled on its own (seconds)
    maps = jax.jit(functools.partial(matching.similarity, size=SIZE, strides=STRIDES))(
        feats, templates
    )
    assert maps.shape == (2, 3, *SIZE) and float(maps.min()) >= 0.0
    bilinear, _ = matching.match_jit(
        feats, templates, size=SIZE, strides=STRIDES, upsample="bilinear"
    )
    assert np.abs(np.asarray(bilinear[1]) - np.asarray(points)).max() <= 2
    with pytest.raises(ValueError, match="upsample"):
        matching.similarity(feats, templates, size=SIZE, strides=STRIDES, upsample="cubic")


def test_matching_at_the_finest_stride_equals_matching_at_full_size():
    rng = np.random.default_rng(7)
    size = (64, 96)
    strides = (32, 16, 8, 4, 2)
    feats = [
        jnp.asarray(rng.normal(size=(3, size[0] // s, size[1] // s, 4)), jnp.float32)
        for s in strides
    ]
    feats[0] = jnp.abs(feats[0])  # ties: many positive coarse cells, clamped fine ones
    points = jnp.asarray(rng.integers(0, 64, (9, 2)))
    templates = matching.template_vectors([f[0] for f in feats], points, strides=strides)
    kw = {"size": size, "strides": strides}
    peaks, scores = matching.match_jit(feats, templates, **kw)
    maps = jax.jit(functools.partial(matching.similarity, **kw))(feats, templates)  # full size
    flat = np.asarray(maps).reshape(3, 9, -1)
    arg = flat.argmax(-1)
    np.testing.assert_array_equal(peaks, np.stack([arg // size[1], arg % size[1]], -1))
    np.testing.assert_array_equal(scores, flat.max(-1))


def test_match_all_goes_in_batches_over_the_scales_it_is_given():
    feats = _features(3)
    points = jnp.asarray([[5, 9], [20, 33]])
    templates = matching.template_vectors([f[0] for f in feats], points, strides=STRIDES)
    # stride 4 alone, one image a batch
    settings = matching.MatchSettings(strides=(4,), combine="sum", batch_size=1)
    found = matching.match_all([np.asarray(feats[1])], [templates[1]], size=SIZE, settings=settings)
    whole, _ = matching.match([feats[1]], [templates[1]], size=SIZE, strides=(4,), combine="sum")
    np.testing.assert_array_equal(found, whole)
    np.testing.assert_array_equal(found[0], (np.asarray(points) // 4) * 4)  # the template


def test_refine_finds_the_vertex_of_a_parabola():
    rows, cols = np.meshgrid(np.arange(10), np.arange(12), indexing="ij")
    maps = jnp.asarray(-((rows - 3.3) ** 2) - (cols - 5.8) ** 2, jnp.float32)[None]
    got = matching.refine(maps, jnp.asarray([[3, 6]]))
    np.testing.assert_allclose(got, [[3.3, 5.8]], atol=1e-5)
    at_border = matching.refine(maps, jnp.asarray([[0, 6]]))
    assert float(at_border[0, 0]) == 0.0  # no neighbour above: no shift


def test_match_settings_come_from_the_eval_section_and_check_their_fields():
    cfg = {"upsample": "bilinear", "combine": "sum", "subpixel": 1, "template_sampling": "bilinear"}
    settings = matching.MatchSettings.from_eval(cfg | {"batch_size": 3})
    assert settings == matching.MatchSettings("bilinear", "sum", True, "bilinear", batch_size=3)
    # a run's config.json from before a field existed: its default
    assert matching.MatchSettings.from_eval({}) == matching.MatchSettings()
    # the template choice's fast path whatever the evaluation's
    scoring = settings.scoring()
    assert (scoring.upsample, scoring.subpixel, scoring.sampling) == ("nearest", False, "cell")
    assert (scoring.combine, scoring.batch_size) == ("sum", 3)
    for field, bad in (("upsample", "cubic"), ("combine", "max"), ("template_sampling", "x")):
        with pytest.raises(ValueError, match=f"eval.{field}={bad!r}: use one of"):
            matching.MatchSettings.from_eval({field: bad})
    with pytest.raises(ValueError, match="eval.batch_size=0: use 1 or more"):
        matching.MatchSettings(batch_size=0)


def test_the_config_edge_names_a_bad_matching_field(tiny_config):
    from piaug import configure
    from piaug.errors import UserError

    tiny_config.eval.combine = "max"
    with pytest.raises(
        UserError, match=r"config\.eval\.combine='max': use one of \('product', 'sum'\)"
    ):
        configure.check(tiny_config)


def test_template_cells_round_swap_and_clip():
    landmarks = np.array([[3.4, 7.6], [-2.0, 40.2], [95.0, 0.5]])  # (x, y)
    cells = matching.template_cells(landmarks, (40, 96))
    assert cells.dtype == np.int64
    assert cells.tolist() == [[8, 3], [39, 0], [0, 95]]  # (row, col), inside the grid


def test_volume_matching_equals_brute_force_and_finds_a_shifted_copy():
    """3-D one-shot matching: the combined map's peak (nearest upsampling, product of the
    clamped cosines over scales) equals a brute-force numpy search, on the fast path (maps at
    the finest stride) and at full size; a query whose maps are the template's shifted by whole
    coarse cells finds each landmark shifted by as much."""
    rng = np.random.default_rng(0)
    strides, size = (4, 2), (8, 12, 16)
    template = [rng.normal(size=(*(n // s for n in size), 6)).astype(np.float32) for s in strides]
    points = np.array([[0, 0, 0], [5, 7, 9], [7, 11, 15], [2, 8, 3]])  # (slice, row, col)
    vectors = matching.template_vectors(template, points, strides=strides)
    shift = (1, 1, 2)  # cells of the coarse map (stride 4): voxels (4, 4, 8)
    query = [
        np.roll(f, tuple(c * strides[0] // s for c in shift), axis=(0, 1, 2))
        for f, s in zip(template, strides, strict=True)
    ]
    batch = [np.stack([q, t]) for q, t in zip(query, template, strict=True)]
    found, scores = matching.match(batch, vectors, size=size, strides=strides)
    slow, _ = matching.match(batch, vectors, size=size, strides=strides, subpixel=True)

    def brute(maps):
        total = 1.0
        for f, t, s in zip(maps, vectors, strides, strict=True):
            f = f / np.linalg.norm(f, axis=-1, keepdims=True)
            t = np.asarray(t) / np.linalg.norm(t, axis=-1, keepdims=True)
            sim = np.clip(np.einsum("dhwe,le->ldhw", f, t), 0, 1)
            total = total * sim.repeat(s, 1).repeat(s, 2).repeat(s, 3)
        return np.stack(np.unravel_index(total.reshape(len(t), -1).argmax(-1), size), -1)

    for b, maps in enumerate([query, template]):
        np.testing.assert_array_equal(found[b], brute(maps))
        assert np.abs(np.asarray(slow[b]) - brute(maps)).max() <= 1  # parabola: within a voxel
    np.testing.assert_array_equal(found[1] // 2, points // 2)  # itself: its own cells
    moved = points + np.array(shift) * strides[0]
    inside = (moved < np.array(size)).all(-1)
    np.testing.assert_array_equal(found[0][inside] // 2, moved[inside] // 2)


def test_volume_template_vectors_are_trilinear_and_refine_finds_the_vertex():
    from scipy import ndimage

    rng = np.random.default_rng(1)
    f = rng.normal(size=(4, 5, 6, 3)).astype(np.float32)
    points = np.array([[3.0, 5.0, 7.0], [0.0, 0.0, 0.0], [6.5, 8.5, 10.5]])
    (ours,) = matching.template_vectors([f], points, strides=(2,), sampling="bilinear")
    cells = np.clip((points + 0.5) / 2 - 0.5, 0, np.array(f.shape[:3]) - 1)
    ref = np.stack([ndimage.map_coordinates(f[..., e], cells.T, order=1) for e in range(3)], -1)
    np.testing.assert_allclose(ours, ref, atol=1e-5)
    # a paraboloid peaking at (2.3, 4.8, 3.6): the refined peak is its vertex
    grid = np.stack(np.meshgrid(*map(np.arange, (6, 8, 7)), indexing="ij"), -1)
    vertex = np.array([2.3, 4.8, 3.6])
    maps = -((grid - vertex) ** 2).sum(-1)[None]
    peak = np.array([[2, 5, 4]])
    np.testing.assert_allclose(
        matching.refine(jnp.asarray(maps), jnp.asarray(peak)), [vertex], atol=1e-5
    )


@pytest.mark.parametrize("size", [(32, 48), (8, 12, 16)])
def test_a_search_radius_keeps_each_peak_near_the_templates_landmark(size):
    """``eval.search_radius``: each landmark's peak is the best point within the radius of
    where the template has it (a brute-force search over those points of the same combined
    map), on the fast path and at full size, in 2-D and 3-D; without centres it is an error."""
    rng = np.random.default_rng(1)
    strides = (4, 2)
    feats = [rng.normal(size=(2, *(n // s for n in size), 6)).astype(np.float32) for s in strides]
    centres = np.stack([rng.integers(0, n, 5) for n in size], -1)  # (L, d) pixels
    vectors = matching.template_vectors([f[0] for f in feats], centres, strides=strides)
    grid = np.stack(np.meshgrid(*(np.arange(n) for n in size), indexing="ij"), -1)
    for upsample, radius in (("nearest", 3.0), ("bilinear", 5.5)):
        kw = {"size": size, "strides": strides, "upsample": upsample, "combine": "sum"}
        found, scores = matching.match(feats, vectors, radius=radius, centres=centres, **kw)
        maps = np.asarray(matching.similarity(feats, vectors, **kw))  # (B, L, *size)
        for b in range(2):
            for k, c in enumerate(centres):
                near = ((grid - c) ** 2).sum(-1) <= radius**2
                if upsample == "nearest":  # the fast path: a cell is its first pixel
                    near &= (grid % strides[-1] == 0).all(-1)
                best = np.where(near, maps[b, k], -np.inf)
                assert tuple(found[b, k]) == np.unravel_index(best.argmax(), size)
                assert scores[b, k] == pytest.approx(best.max(), abs=1e-5)
        whole, _ = matching.match(feats, vectors, **kw)
        far = np.sqrt(((np.asarray(whole) - centres) ** 2).sum(-1)) > radius
        assert far.any()  # the radius changed some peaks
        # refined: finite next to the -inf outside the radius, each peak moved within its cell
        refined, _ = matching.match(
            feats, vectors, radius=radius, centres=centres, subpixel=True, **kw
        )
        assert np.isfinite(refined).all()
        assert np.abs(np.asarray(refined) - np.asarray(found)).max() <= strides[-1]
    settings = matching.MatchSettings(radius=3.0)
    with pytest.raises(ValueError, match="centres"):
        matching.match_all(feats, vectors, size=size, settings=settings)
    with pytest.raises(ValueError, match="eval.search_radius"):
        matching.MatchSettings(radius=-1.0)
    assert settings.scoring().radius == 0.0  # the template choice scores the whole image


def test_scales_match_only_the_maps_of_those_strides():
    """``eval.scales``: ``match_all`` and the template choice combine the chosen strides' maps
    only (the same peaks as matching those maps alone); the choice's scoring uses every scale;
    a stride the encoder lacks, or one given twice, is an error naming the field."""
    feats = [np.asarray(f) for f in _features(4, n=3)]
    points = np.asarray([[5, 9], [20, 33], [12, 2]])
    vectors = matching.template_vectors([f[0] for f in feats], points, strides=STRIDES)
    picked = matching.MatchSettings(strides=STRIDES, combine="sum", upsample="bilinear")
    picked = dataclasses.replace(picked, scales=(4, 2))
    found = matching.match_all(feats, vectors, size=SIZE, settings=picked)
    alone = dataclasses.replace(picked, strides=(4, 2), scales=())
    expected = matching.match_all(feats[1:], vectors[1:], size=SIZE, settings=alone)
    np.testing.assert_array_equal(found, expected)
    every = matching.match_all(
        feats, vectors, size=SIZE, settings=dataclasses.replace(picked, scales=())
    )
    assert picked.scoring().scales == () and not np.array_equal(every, found)
    index, scores = score_candidates(feats, [points] * 3, size=SIZE, settings=picked)
    ref_index, ref_scores = score_candidates(feats[1:], [points] * 3, size=SIZE, settings=alone)
    assert index == ref_index
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-5)
    assert matching.MatchSettings.from_eval({"scales": [8, 4, 2]}).scales == (8, 4, 2)
    for bad in ((64,), (4, 4), "x"):
        with pytest.raises(ValueError, match=r"eval.scales=.*give distinct strides"):
            matching.MatchSettings(scales=bad)
