"""The paper's comparison methods (piaug.mixing): each operation against hand-computed values on
tiny tensors, their place in the loss and the step, determinism, the presets and the sweep."""

import functools
import os
import subprocess
import sys
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import TEST_XLA_FLAGS, load_config

from piaug import ablations, augment, configure, losses, mixing, models, train
from piaug.data import input_pipeline
from piaug.errors import UserError

REPO = Path(__file__).resolve().parents[1]


def test_zhu_extrapolates_the_positive_pair_and_interpolates_the_negatives():
    q = jnp.array([[1.0, 0.0]])
    cands = jnp.array([[[0.6, 0.8], [0.0, 1.0], [-1.0, 0.0]]])  # the positive first
    valid, positive = jnp.ones((1, 3), bool), jnp.array([0])
    draws = (1.5, 0.25, jnp.array([2, 0, 1]))  # lam, mu, the permutation of the cells
    sim = mixing.zhu_similarities(q, cands, valid, positive, draws)
    # q' = 1.5 q - 0.5 k = (1.2, -0.4); k' = 1.5 k - 0.5 q = (0.4, 1.2): q'.k' = 0.
    # Cell 1's partner is the positive: kept, q'.(0, 1) = -0.4. Cell 2's is cell 1:
    # n' = 0.25 (-1, 0) + 0.75 (0, 1) = (-0.25, 0.75), q'.n' = -0.3 - 0.3.
    np.testing.assert_allclose(sim, [[0.0, -0.4, -0.6]], atol=1e-6)
    off_map = mixing.zhu_similarities(q, cands, jnp.array([[True, False, True]]), positive, draws)
    np.testing.assert_allclose(off_map[0, 2], -1.2, atol=1e-6)  # partner off the map: n' = n
    lam, mu, perm = mixing.zhu_draws(jax.random.key(3), 50, pos_alpha=2.0, neg_alpha=1.6)
    assert 1.0 <= float(lam) <= 2.0 and 0.0 <= float(mu) <= 1.0
    assert sorted(np.asarray(perm).tolist()) == list(range(50))


def _mochi_case():
    q = jnp.array([[1.0, 0.0]])
    # the positive, then negatives of cosine 1, 0 and -1 (the last off the map)
    cands = jnp.array([[[0.8, 0.6], [1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]])
    return q, cands, jnp.array([[True, True, True, False]]), jnp.array([0])


@pytest.mark.slow  # compiles: the fast tier stays under 3 minutes
def test_mochi_mixes_the_hardest_negatives_detached():
    q, cands, valid, positive = _mochi_case()
    draws = {
        "i": jnp.array([[0]]),  # the hardest (1, 0) ...
        "j": jnp.array([[1]]),  # ... with the second hardest (0, 1), a = 0.5
        "a": jnp.array([[[0.5]]]),
        "h": jnp.array([[1]]),  # the query with (0, 1), b = 0.4
        "b": jnp.array([[[0.4]]]),
        "count": 2,
    }
    sim, ok = mixing.mochi_negatives(q, cands, valid, positive, draws)
    # normalise(0.5 (1, 0) + 0.5 (0, 1)) . q = 1 / sqrt 2; normalise(0.4, 0.6) . q = 0.4 / |.|
    np.testing.assert_allclose(sim, [[2**-0.5, 0.4 / np.hypot(0.4, 0.6)]], rtol=1e-6)
    assert ok.tolist() == [[True, True]]
    third = dict(draws, i=jnp.array([[2]]), h=jnp.array([[2]]), count=3)  # the off-map cell
    assert mixing.mochi_negatives(q, cands, valid, positive, third)[1].tolist() == [[False, False]]
    grad_c, grad_q = jax.grad(
        lambda c, x: mixing.mochi_negatives(x, c, valid, positive, draws)[0].sum(), argnums=(0, 1)
    )(cands, q)
    assert float(jnp.abs(grad_c).max()) == 0.0  # detached: no gradient into the negatives
    assert float(jnp.abs(grad_q).max()) > 0.0  # ... the query's flows
    d = mixing.mochi_draws(jax.random.key(0), 5, 100, hard=32, synthetic=16, harder=8)
    assert d["i"].shape == (5, 16) and d["h"].shape == (5, 8) and int(d["i"].max()) < 32
    assert float(d["b"].max()) <= 0.5


@pytest.mark.slow  # compiles: the fast tier stays under 3 minutes
def test_mochi_adds_denominator_terms_once_active():
    rng = np.random.default_rng(0)
    feats = jnp.asarray(rng.normal(size=(2, 8, 8, 4)), jnp.float32)
    crop = jnp.asarray(rng.normal(size=(2, 4, 4, 4)), jnp.float32)
    anchors, crop_anchors = jnp.array([[3, 4], [7, 0]]), jnp.array([[1, 2], [0, 3]])
    mix, key = mixing.MixSettings(method="mochi", hard=6, synthetic=3, harder=2), jax.random.key(1)
    kw = dict(stride=1, window=2, mix=mix, key=key)
    plain, psi = losses.pixel_info_nce(feats, crop, anchors, crop_anchors, stride=1, window=2)
    before, psi_before = losses.pixel_info_nce(
        feats, crop, anchors, crop_anchors, active=False, **kw
    )
    after, psi_after = losses.pixel_info_nce(feats, crop, anchors, crop_anchors, active=True, **kw)
    np.testing.assert_allclose(before, plain, rtol=1e-6)
    np.testing.assert_allclose(psi_after, psi, rtol=1e-6)  # the positive is untouched
    # by hand: the window's logits, then the synthetic negatives' (clamped), in the denominator
    b = jnp.arange(2)
    query = crop[b, crop_anchors[:, 0], crop_anchors[:, 1]]
    cands, valid, positive = losses._candidates(feats, anchors, 2, "closed")
    sim = jnp.clip(losses.cosine(cands, query[:, None]), 0, 1)
    draws = mixing.mochi_draws(key, 2, cands.shape[1], hard=6, synthetic=3, harder=2)
    extra, ok = mixing.mochi_negatives(query, cands, valid, positive, draws)
    logits = jnp.concatenate(
        [jnp.where(valid, sim, -jnp.inf), jnp.where(ok, extra.clip(0, 1), -jnp.inf)], 1
    )
    expected = jax.nn.logsumexp(logits, axis=-1) - sim[b, positive]
    np.testing.assert_allclose(after, expected, rtol=1e-5)
    assert bool(jnp.all(after > plain))  # more negatives, a larger loss


def test_zhu_in_the_loss_uses_the_transformed_similarities():
    rng = np.random.default_rng(1)
    feats = jnp.asarray(rng.normal(size=(2, 4, 4, 3)), jnp.float32)
    crop = jnp.asarray(rng.normal(size=(2, 4, 4, 3)), jnp.float32)
    anchors = crop_anchors = jnp.array([[1, 2], [3, 0]])
    mix, key = mixing.MixSettings(method="zhu"), jax.random.key(2)
    loss, _ = losses.pixel_info_nce(feats, crop, anchors, crop_anchors, stride=1, mix=mix, key=key)
    query = crop[jnp.arange(2), crop_anchors[:, 0], crop_anchors[:, 1]]
    cands, valid, positive = losses._candidates(feats, anchors, None, "closed")
    draws = mixing.zhu_draws(key, 16, pos_alpha=2.0, neg_alpha=1.6)
    sim = jnp.clip(mixing.zhu_similarities(query, cands, valid, positive, draws), 0, 1)
    expected = jax.nn.logsumexp(sim, axis=-1) - sim[jnp.arange(2), positive]
    np.testing.assert_allclose(loss, expected, rtol=1e-5)


def test_unmix_mixes_each_crop_with_the_reversed_batch():
    crops = jnp.asarray(np.random.default_rng(2).uniform(size=(3, 8, 8)), jnp.float32)
    mixed, lam = mixing.unmix_crops(crops, (0.3, True, jnp.array([0, 0])))
    np.testing.assert_allclose(mixed, 0.3 * crops + 0.7 * crops[::-1], rtol=1e-6)
    assert float(lam) == pytest.approx(0.3)
    # CutMix with lam 0.75: a box of side 2 floor(8 sqrt(0.25) / 2) = 4 about (4, 4): rows and
    # columns 2..5, a quarter of the crop from the reversed batch.
    mixed, lam = mixing.unmix_crops(crops, (0.75, False, jnp.array([4, 4])))
    assert float(lam) == pytest.approx(0.75)
    np.testing.assert_array_equal(mixed[:, 2:6, 2:6], crops[::-1][:, 2:6, 2:6])
    outside = np.ones((8, 8), bool)
    outside[2:6, 2:6] = False
    np.testing.assert_array_equal(np.asarray(mixed)[:, outside], np.asarray(crops)[:, outside])
    # A box at the corner is cut at the crop's edges, and lam follows what is left.
    mixed, lam = mixing.unmix_crops(crops, (0.75, False, jnp.array([0, 0])))
    assert float(lam) == pytest.approx(1 - 4 / 64)


@pytest.mark.parametrize("per_crop", [1, 3])
def test_partner_points_follow_the_reversed_crops_rotation(per_crop):
    rng = np.random.default_rng(per_crop)
    n, size, shape = 4, 16, (40, 50)
    anchors = rng.integers(0, 40, (n, per_crop, 2))
    crop_anchors = rng.integers(0, size, (n, per_crop, 2))
    angle, scale = rng.uniform(-30, 30, n), rng.uniform(0.8, 1.25, n)
    squeeze = (lambda x: x[:, 0]) if per_crop == 1 else (lambda x: x)
    points, ok = mixing.partner_points(
        jnp.asarray(squeeze(crop_anchors)),
        jnp.asarray(squeeze(anchors)),
        jnp.asarray(angle, jnp.float32),
        jnp.asarray(scale, jnp.float32),
        shape,
    )
    points, ok = np.asarray(points).reshape(n, per_crop, 2), np.asarray(ok).reshape(n, per_crop)
    for i in range(n):
        r = n - 1 - i
        coords = augment.rotation_coordinates(
            anchors[r, 0], crop_anchors[r, 0], size, angle[r], scale[r]
        )
        for k in range(per_crop):
            where = np.rint(coords[:, crop_anchors[i, k, 0], crop_anchors[i, k, 1]])
            inside = (where >= 0).all() and where[0] < shape[0] and where[1] < shape[1]
            assert ok[i, k] == inside
            if inside:
                np.testing.assert_array_equal(points[i, k], where)


class _Tiny(nn.Module):
    """A stand-in encoder: five maps at the encoders' strides (its batch norm always uses the
    running statistics, so a forward pass does not depend on the batch)."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.relu(nn.BatchNorm(use_running_average=True)(nn.Conv(4, (3, 3))(x[..., None])))
        return [nn.Conv(8, (1, 1))(nn.avg_pool(x, (s, s), (s, s))) for s in models.STRIDES]


def _step_setup(per_crop: int = 1):
    """Stand-in encoders, SGD, a batch of 4 with ``per_crop`` anchors per crop, a state
    (also the device-count test's, in its subprocess)."""
    nets = (_Tiny(), _Tiny())
    txs = {n: optax.sgd(0.1) for n in train.ENCODERS}
    rng = np.random.default_rng(0)
    anchors = (4, per_crop, 2) if per_crop > 1 else (4, 2)
    batch = {
        "image": rng.integers(0, 256, (4, 64, 64), dtype=np.uint8),
        "crop": rng.uniform(0, 1, (4, 32, 32)).astype(np.float32),
        "anchor": rng.integers(0, 64, anchors).astype(np.int32),
        "crop_anchor": rng.integers(0, 32, anchors).astype(np.int32),
        "angle": rng.uniform(-20, 20, 4).astype(np.float32),
        "scale": rng.uniform(0.9, 1.1, 4).astype(np.float32),
    }
    state = train.create_state(
        jax.random.key(0), nets=nets, txs=txs, image_size=(64, 64), crop_size=32
    )
    return nets, txs, batch, state


@pytest.mark.slow  # compiles a step: the fast tier stays under 3 minutes
def test_unmix_loss_weights_the_two_sources_by_lam():
    nets, txs, batch, state = _step_setup()
    mix, seed = mixing.MixSettings(method="unmix"), 5
    step = jax.jit(
        functools.partial(train.train_step, nets=nets, txs=txs, window=2, mix=mix, seed=seed)
    )
    metrics = step(state, batch)[1]
    # by hand: the step's draws, the mixed crops, and the three terms
    draws = mixing.unmix_draws(mixing.step_key(seed, state.step), 32)
    mixed, lam = mixing.unmix_crops(jnp.asarray(batch["crop"]), draws)
    image = jnp.asarray(batch["image"], jnp.float32) / 255.0

    def apply(name, x):
        variables = {"params": state.params[name], "batch_stats": state.batch_stats[name]}
        return nets[train.ENCODERS.index(name)].apply(variables, x)

    feats = apply("image", image)
    own, mixed_feats = apply("crop", jnp.asarray(batch["crop"])), apply("crop", mixed)
    partner, ok = mixing.partner_points(
        jnp.asarray(batch["crop_anchor"]),
        jnp.asarray(batch["anchor"]),
        jnp.asarray(batch["angle"]),
        jnp.asarray(batch["scale"]),
        (64, 64),
    )
    nce = functools.partial(losses.multiscale_info_nce, window=2)
    a, c = jnp.asarray(batch["anchor"]), jnp.asarray(batch["crop_anchor"])
    clean = nce(feats, own, a, c)[0]
    with_self = nce(feats, mixed_feats, a, c)[0]
    with_partner = nce([f[::-1] for f in feats], mixed_feats, partner, c, weights=ok)[0]
    expected = (clean + lam * with_self + (1 - lam) * with_partner).mean(0).sum()
    assert 0 < float(lam) < 1
    np.testing.assert_allclose(metrics["loss"], expected, rtol=1e-5)
    assert float(metrics["loss"]) > float(clean.mean(0).sum())


@pytest.mark.slow  # compiles a step: the fast tier stays under 3 minutes
def test_the_losss_draws_are_a_function_of_seed_and_step():
    rng = np.random.default_rng(4)
    feats = [
        jnp.asarray(rng.normal(size=(2, 64 // s, 64 // s, 4)), jnp.float32) for s in models.STRIDES
    ]
    crop = [
        jnp.asarray(rng.normal(size=(2, 32 // s, 32 // s, 4)), jnp.float32) for s in models.STRIDES
    ]
    a = jnp.asarray(rng.integers(0, 64, (2, 3, 2)))
    c = jnp.asarray(rng.integers(0, 32, (2, 3, 2)))

    @functools.partial(jax.jit, static_argnums=0)
    def loss(method, seed, step):
        mix = mixing.MixSettings(method=method, hard=8, synthetic=4, harder=4)
        key = mixing.step_key(seed, step)
        return losses.multiscale_info_nce(feats, crop, a, c, window=2, mix=mix, key=key)[0]

    for method in ("zhu", "mochi"):
        first = loss(method, 0, 3)
        np.testing.assert_array_equal(loss(method, 0, 3), first)
        for other in (loss(method, 1, 3), loss(method, 0, 4)):
            assert float(jnp.abs(other - first).max()) > 1e-6


def test_settings_presets_and_the_sweep():
    with pytest.raises(ValueError, match="method='mixup'"):
        mixing.MixSettings(method="mixup")
    config = load_config()
    config.mixing.method = "cutmix"
    with pytest.raises(UserError, match="config.mixing.method='cutmix'"):
        configure.check(config)
    config = load_config()
    config.augment.fixed_group = "highest"
    with pytest.raises(UserError, match="config.augment.fixed_group='highest'"):
        configure.check(config)
    sys.path.insert(0, str(REPO))
    from configs import ceph

    c = ceph.get_config("cpu,mochi,high_ranges")
    assert c.mixing.method == "mochi" and c.augment.anchors == "uniform"
    assert c.augment.estimated and not c.augment.adaptive and c.augment.fixed_group == "high"
    assert "estimate" in c.stages and "estimate" not in ceph.get_config("zhu").stages
    assert ablations.PRESETS["unmix_high"] == {
        **ablations.PRESETS["unmix"],
        **ablations.HIGH_RANGES,
    }
    assert list(ablations.SWEEPS["table2"]) == [
        "baseline",
        "zhu_high",
        "mochi_high",
        "unmix_high",
        "adaptive",
    ]


def test_a_fixed_group_gives_every_anchor_its_ranges():
    jitter = augment.GroupJitter(
        brightness=[(1.0, 1.0), (1.0, 1.0), (1.5, 1.5)], contrast=[(1.0, 1.0)] * 3
    )
    image = np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)
    element = {"id": "x", "image": image, "iie": np.zeros((64, 64), np.float32)}  # all low
    for group, factor in (("medium", 1.0), ("high", 1.5)):
        transform = input_pipeline.AnchorCrop(
            crop_size=16,
            anchors="uniform",
            jitter=jitter,
            adaptive=False,
            fixed_group=augment.GROUPS.index(group),
        )
        out = transform.random_map(element, np.random.default_rng(0))
        assert out["group"] == 0 and out["brightness"] == pytest.approx(factor)


@pytest.mark.slow
def test_the_comparison_methods_draw_by_seed_and_step_on_any_device_count():
    script = """
import sys
import jax, numpy as np
from jax.sharding import NamedSharding, PartitionSpec
sys.path.insert(0, ".")
sys.path.insert(0, "tests")
from test_mixing import _step_setup
from piaug import mixing, train

nets, txs, batch, state0 = _step_setup(per_crop=3)
state0 = jax.device_get(state0)
keys = train.BATCH_KEYS + train.UNMIX_KEYS
for method in ("mochi", "unmix"):  # Zhu's draws are the same kind as MoCHi's (per step)
    mix = mixing.MixSettings(method=method, hard=8, synthetic=4, harder=4)
    results, steps = [], {}
    for n in (1, 2):
        mesh = train.make_mesh(jax.devices()[:n])
        state = jax.device_put(state0, NamedSharding(mesh, PartitionSpec()))
        steps[n] = train.compile_step(mesh, nets=nets, txs=txs, window=2, mix=mix, seed=3)
        state, metrics = steps[n](state, train.device_batch(batch, mesh, keys))
        results.append(jax.device_get((state.params, metrics)))
    for x, y in zip(jax.tree.leaves(results[0]), jax.tree.leaves(results[1]), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5)
    if method != "unmix":  # the draws follow the seed and the step (the loss's: fast tier)
        print("EQUAL", method, results[0][1]["loss"])
        continue
    mesh = train.make_mesh(jax.devices()[:1])
    step = train.compile_step(mesh, nets=nets, txs=txs, window=2, mix=mix, seed=4)
    later = state0.replace(step=np.int32(5))
    for other_state, other in ((state0, step), (later, steps[1])):  # (steps[1]: seed 3)
        other_state = jax.device_put(other_state, NamedSharding(mesh, PartitionSpec()))
        loss = other(other_state, train.device_batch(batch, mesh, keys))[1]["loss"]
        assert abs(float(loss) - float(results[0][1]["loss"])) > 1e-6, method
    print("EQUAL", method, results[0][1]["loss"])
"""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env["XLA_FLAGS"] = TEST_XLA_FLAGS + " --xla_force_host_platform_device_count=2"
    out = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0 and out.stdout.count("EQUAL") == 2, out.stderr[-3000:]
