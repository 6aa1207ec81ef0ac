"""The multi-scale pixel InfoNCE against hand-computed values."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from piaug import losses


def _row(*vectors):
    """A (1, 1, n, E) feature map: one image, one row of n cells."""
    return jnp.asarray([[vectors]], jnp.float32)


def _nce(image, crop, anchor, crop_anchor=(0, 0), **kw):
    kw = {"stride": 1} | kw
    loss, psi = losses.pixel_info_nce(
        image, crop, jnp.asarray([anchor]), jnp.asarray([crop_anchor]), **kw
    )
    return float(loss[0]), float(psi[0])


def test_whole_map_cross_entropy_with_clamped_cosines():
    # cosines with the query (1, 0): 1, 0, 1/sqrt(2), -1 (clamped to 0)
    image = _row([1.0, 0.0], [0.0, 2.0], [3.0, 3.0], [-5.0, 0.0])
    crop = _row([7.0, 0.0])
    loss, psi = _nce(image, crop, (0, 0))
    c = 1 / np.sqrt(2)
    assert loss == pytest.approx(-1 + np.log(np.e + 1 + np.exp(c) + 1), rel=1e-6)
    assert psi == pytest.approx(1.0)
    loss, psi = _nce(image, crop, (0, 2))  # the positive is the third cell
    assert loss == pytest.approx(-c + np.log(np.e + 1 + np.exp(c) + 1), rel=1e-6)
    assert psi == pytest.approx(c, rel=1e-6)
    unclamped, _ = _nce(image, crop, (0, 0), clamp=False)
    assert unclamped == pytest.approx(-1 + np.log(np.e + 1 + np.exp(c) + np.exp(-1)), rel=1e-6)
    cold, _ = _nce(image, crop, (0, 0), temperature=0.5)
    assert cold == pytest.approx(-2 + np.log(np.exp(2) + 1 + np.exp(2 * c) + 1), rel=1e-6)


def test_window_is_cut_at_the_borders():
    image = _row([1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [1.0, 0.0], [0.0, 1.0])
    crop = _row([1.0, 0.0])
    c = 1 / np.sqrt(2)
    loss, _ = _nce(image, crop, (0, 2), window=1)  # cells 1, 2, 3
    assert loss == pytest.approx(-c + np.log(1 + np.exp(c) + np.e), rel=1e-6)
    loss, _ = _nce(image, crop, (0, 0), window=1)  # cells 0, 1: the window ends at the border
    assert loss == pytest.approx(-1 + np.log(np.e + 1), rel=1e-6)
    loss, _ = _nce(image, crop, (0, 4), window=0)  # only the positive: loss 0
    assert loss == pytest.approx(0.0, abs=1e-6)


def test_window_is_square_in_two_dimensions():
    image = jnp.zeros((1, 5, 5, 2)).at[..., 1].set(1.0)  # every cosine 0 with the query (1, 0)
    crop = _row([1.0, 0.0])
    loss, psi = _nce(image, crop, (1, 1), window=1)  # 3 x 3 cells, all logits 0
    assert loss == pytest.approx(np.log(9), rel=1e-6) and psi == 0.0
    loss, _ = _nce(image, crop, (0, 4), window=2)  # rows 0-2, cols 2-4
    assert loss == pytest.approx(np.log(9), rel=1e-6)
    loss, _ = _nce(image, crop, (0, 4), window=None)
    assert loss == pytest.approx(np.log(25), rel=1e-6)


def test_half_open_window_is_the_authors():
    """[gt - w, gt + w): 2w cells a side, one fewer after the target than before it."""
    image = jnp.zeros((1, 7, 7, 2)).at[..., 1].set(1.0)  # every cosine 0 with the query
    crop = _row([1.0, 0.0])
    loss, _ = _nce(image, crop, (3, 3), window=2, window_mode="half_open")  # rows/cols 1..4
    assert loss == pytest.approx(np.log(16), rel=1e-6)
    loss, _ = _nce(image, crop, (3, 3), window=2)  # closed: rows/cols 1..5
    assert loss == pytest.approx(np.log(25), rel=1e-6)
    loss, _ = _nce(image, crop, (0, 6), window=2, window_mode="half_open")  # rows 0-1, cols 4-6
    assert loss == pytest.approx(np.log(6), rel=1e-6)
    # One row: a positive 1 at cell 2 and cosine 1/sqrt(2) at cells 0 and 4; the half-open
    # window of 2 holds cells 0..3, so cell 4 is no candidate.
    row = _row([1.0, 1.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0])
    c = 1 / np.sqrt(2)
    loss, _ = _nce(row, crop, (0, 2), window=2, window_mode="half_open")
    assert loss == pytest.approx(-1 + np.log(np.e + np.exp(c) + 2), rel=1e-6)
    loss, _ = _nce(row, crop, (0, 2), window=2)
    assert loss == pytest.approx(-1 + np.log(np.e + 2 * np.exp(c) + 2), rel=1e-6)
    with pytest.raises(ValueError, match="window_mode"):
        _nce(row, crop, (0, 2), window=2, window_mode="open")
    with pytest.raises(ValueError, match="window_mode='open'"):
        losses.LossSettings(window_mode="open")


def test_cells_come_from_the_stride_and_the_crop_position():
    image = jnp.zeros((1, 2, 3, 2)).at[0, 1, 2].set(jnp.asarray([1.0, 0.0]))
    image = image.at[0, 0, 0].set(jnp.asarray([0.0, 1.0]))
    crop = jnp.zeros((1, 2, 2, 2)).at[0, 1, 0].set(jnp.asarray([1.0, 0.0]))
    # anchor pixel (40, 70) at stride 32 is cell (1, 2); crop pixel (33, 5) is crop cell (1, 0)
    _, psi = _nce(image, crop, (40, 70), (33, 5), stride=32)
    assert psi == pytest.approx(1.0)
    # positions past the map (a crop anchor on the last pixel row) fall in the last cell
    _, psi = _nce(image, crop, (63, 95), (63, 0), stride=32)
    assert psi == pytest.approx(1.0)


def test_zero_vectors_have_finite_gradients():
    image = jnp.zeros((1, 2, 2, 3))
    crop = jnp.zeros((1, 1, 1, 3))

    def f(a, b):
        loss, _ = losses.pixel_info_nce(
            a, b, jnp.zeros((1, 2), jnp.int32), jnp.zeros((1, 2), jnp.int32), stride=1
        )
        return loss.sum()

    grads = jax.jit(jax.grad(f, argnums=(0, 1)))(image, crop)  # one program, not many eager ops
    assert all(np.isfinite(g).all() for g in grads)


def test_multiscale_sums_scales_and_matches_jit():
    rng = np.random.default_rng(0)
    strides = (32, 16, 8, 4, 2)
    image = [jnp.asarray(rng.normal(size=(3, 64 // s, 64 // s, 4)), jnp.float32) for s in strides]
    crop = [jnp.asarray(rng.normal(size=(3, 32 // s, 32 // s, 4)), jnp.float32) for s in strides]
    anchors = jnp.asarray(rng.integers(0, 64, (3, 2)))
    crop_anchors = jnp.asarray(rng.integers(0, 32, (3, 2)))
    # Jitted (one program each, not hundreds of eager ops): the sum of the per-scale losses.
    loss, psi = jax.jit(lambda *a: losses.multiscale_info_nce(*a, window=3))(
        image, crop, anchors, crop_anchors
    )
    assert loss.shape == psi.shape == (3, 5)
    for i, s in enumerate(strides):
        one, p = jax.jit(
            lambda *a, s=s, w=None if i == 0 else 3: losses.pixel_info_nce(*a, stride=s, window=w)
        )(image[i], crop[i], anchors, crop_anchors)
        np.testing.assert_allclose(loss[:, i], one, rtol=1e-6)
        np.testing.assert_allclose(psi[:, i], p, rtol=1e-6)
    eager, _ = losses.pixel_info_nce(image[0], crop[0], anchors, crop_anchors, stride=32)
    np.testing.assert_allclose(eager, loss[:, 0], rtol=1e-6)  # jitted as computed eagerly
    assert np.all((psi >= 0) & (psi <= 1))


def test_several_anchors_per_example_average_their_losses():
    """(B, K, 2) anchors: each is a query of its own; an example's loss and PSI are the means
    over its K anchors, each as the one-anchor loss computes it."""
    rng = np.random.default_rng(1)
    strides = (32, 16, 8, 4, 2)
    image = [jnp.asarray(rng.normal(size=(2, 64 // s, 64 // s, 4)), jnp.float32) for s in strides]
    crop = [jnp.asarray(rng.normal(size=(2, 32 // s, 32 // s, 4)), jnp.float32) for s in strides]
    anchors = rng.integers(0, 64, (2, 3, 2))
    crop_anchors = rng.integers(0, 32, (2, 3, 2))
    kw = dict(window=2, temperature=0.1, clamp=False, window_mode="half_open")
    run = jax.jit(lambda *a: losses.multiscale_info_nce(*a, **kw))
    loss, psi = run(image, crop, anchors, crop_anchors)
    assert loss.shape == psi.shape == (2, 5)
    each = [run(image, crop, anchors[:, k], crop_anchors[:, k]) for k in range(3)]
    np.testing.assert_allclose(loss, np.mean([e[0] for e in each], 0), rtol=1e-5)
    np.testing.assert_allclose(psi, np.mean([e[1] for e in each], 0), rtol=1e-5)
    assert not np.allclose(each[0][0], each[1][0])  # the anchors' losses differ
    with pytest.raises(ValueError, match="must match"):
        losses.multiscale_info_nce(image, crop, anchors, crop_anchors[:, :2])


def _full_map_reference():
    """``benchmarks/loss_window.py``'s ``full_map``: the loss by cosines over the whole map,
    masked to the window (CC2D's formulation)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parents[1] / "benchmarks" / "loss_window.py"
    spec = importlib.util.spec_from_file_location("loss_window", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.full_map


@pytest.mark.parametrize(
    "window_mode, clamp",
    [("closed", True), pytest.param("half_open", False, marks=pytest.mark.slow)],
)
def test_cut_windows_equal_the_masked_full_map(window_mode, clamp):
    """The windowed scales cut each target's window out of the padded map; loss and gradients
    equal the masked full map's, targets at the borders and corners included."""
    full_map = _full_map_reference()
    rng = np.random.default_rng(2)
    strides = (32, 16, 8, 4, 2)
    image = [jnp.asarray(rng.normal(size=(2, 64 // s, 48 // s, 4)), jnp.float32) for s in strides]
    crop = [jnp.asarray(rng.normal(size=(2, 32 // s, 32 // s, 4)), jnp.float32) for s in strides]
    anchors = np.stack([[0, 0], [63, 47], [0, 47], [30, 20]])[None].repeat(2, 0)
    anchors[1, 3] = rng.integers(0, 48, 2)
    crop_anchors = rng.integers(0, 32, (2, 4, 2))
    kw = dict(window=3, temperature=0.5, clamp=clamp, window_mode=window_mode)

    def total(fn):
        return jax.jit(
            jax.value_and_grad(
                lambda f, g: jnp.sum(jnp.asarray(fn(f, g, anchors, crop_anchors, **kw))), (0, 1)
            )
        )(image, crop)

    ours, ours_grads = total(lambda *a, **k: losses.multiscale_info_nce(*a, **k)[0])
    ref, ref_grads = total(full_map)
    np.testing.assert_allclose(ours, ref, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(ours_grads), jax.tree.leaves(ref_grads), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match=r"\(B, h, w, E\)"):
        losses.pixel_info_nce(
            jnp.zeros((2, 2, 4)),
            jnp.zeros((1, 2, 2, 4)),
            jnp.zeros((1, 2)),
            jnp.zeros((1, 2)),
            stride=1,
        )
    with pytest.raises(ValueError, match="anchors must be"):
        losses.pixel_info_nce(
            jnp.zeros((2, 2, 2, 4)),
            jnp.zeros((2, 2, 2, 4)),
            jnp.zeros((1, 2)),
            jnp.zeros((2, 2)),
            stride=1,
        )
    with pytest.raises(ValueError, match="one feature map per stride"):
        losses.multiscale_info_nce(
            [jnp.zeros((1, 2, 2, 4))], [], jnp.zeros((1, 2)), jnp.zeros((1, 2))
        )


def _brute_force_3d(image, crop, anchors, crop_anchors, stride, window, temperature, clamp):
    """One scale of the 3-D loss by loops in numpy: every cell's cosine with the query, the
    closed window as a mask over the whole map."""
    image, crop = np.asarray(image, np.float64), np.asarray(crop, np.float64)

    def unit(v):
        return v / np.sqrt(np.maximum((v * v).sum(-1, keepdims=True), 1e-6))

    out = []
    for b in range(image.shape[0]):
        t = np.minimum(np.asarray(anchors[b]) // stride, np.array(image.shape[1:4]) - 1)
        s = np.minimum(np.asarray(crop_anchors[b]) // stride, np.array(crop.shape[1:4]) - 1)
        sim = (unit(image[b]) * unit(crop[b][tuple(s)])).sum(-1)
        if clamp:
            sim = np.clip(sim, 0, 1)
        grid = np.stack(np.meshgrid(*map(np.arange, sim.shape), indexing="ij"), -1)
        mask = np.ones(sim.shape, bool) if window is None else (np.abs(grid - t) <= window).all(-1)
        logits = np.where(mask, sim / temperature, -np.inf)
        top = logits.max()
        out.append(top + np.log(np.exp(logits - top).sum()) - logits[tuple(t)])
    return np.array(out)


@pytest.mark.parametrize("window", [None, 1, 2])
def test_volume_loss_equals_brute_force_in_3d(window):
    rng = np.random.default_rng(5)
    image = jnp.asarray(rng.normal(size=(3, 4, 5, 6, 3)), jnp.float32)
    crop = jnp.asarray(rng.normal(size=(3, 2, 3, 2, 3)), jnp.float32)
    anchors = jnp.asarray([[0, 0, 0], [15, 19, 23], [7, 9, 10]])  # corners and inside
    crop_anchors = jnp.asarray([[0, 0, 0], [7, 11, 7], [3, 5, 2]])
    kw = dict(stride=4, window=window, temperature=0.3, clamp=False)
    loss, psi = losses.pixel_info_nce(image, crop, anchors, crop_anchors, **kw)
    expected = _brute_force_3d(image, crop, anchors, crop_anchors, **kw)
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    assert psi.shape == (3,)


def test_a_volume_of_one_slice_gives_the_two_d_loss():
    """With one slice (depth 1) the 3-D windows hold the 2-D windows' cells, so the loss and
    PSI equal the 2-D loss of the slice, with several anchors and both window modes."""
    rng = np.random.default_rng(6)
    strides = (8, 4, 2)
    image = [jnp.asarray(rng.normal(size=(2, 32 // s, 24 // s, 4)), jnp.float32) for s in strides]
    crop = [jnp.asarray(rng.normal(size=(2, 16 // s, 16 // s, 4)), jnp.float32) for s in strides]
    anchors = jnp.asarray(rng.integers(0, 24, (2, 3, 2)))
    crop_anchors = jnp.asarray(rng.integers(0, 16, (2, 3, 2)))
    with_depth = [f[:, None] for f in image], [f[:, None] for f in crop]
    zeros = jnp.zeros((2, 3, 1), anchors.dtype)
    for mode in losses.WINDOW_MODES:
        kw = dict(strides=strides, window=2, temperature=0.5, window_mode=mode)
        flat = losses.multiscale_info_nce(image, crop, anchors, crop_anchors, **kw)
        deep = losses.multiscale_info_nce(
            *with_depth,
            jnp.concatenate([zeros, anchors], -1),
            jnp.concatenate([zeros, crop_anchors], -1),
            **kw,
        )
        for a, b in zip(flat, deep, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-6)
