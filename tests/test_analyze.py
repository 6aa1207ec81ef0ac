"""The analysis helpers (piaug.analyze); the figures themselves: tests/test_train.py."""

import numpy as np
import pytest
from conftest import assert_drawn

from piaug import analyze


def test_grid_anchors_and_centred_crops_keep_the_anchor():
    anchors = analyze.grid_anchors((20, 30), 8)
    assert anchors.tolist()[:4] == [[4, 4], [4, 12], [4, 20], [4, 28]] and len(anchors) == 8
    image = np.arange(20 * 30, dtype=np.float64).reshape(20, 30) % 256
    crops, where = analyze.centred_crops(image.astype(np.uint8), anchors, 10)
    assert crops.shape == (8, 10, 10) and crops.dtype == np.float32
    for crop, a, w in zip(crops, anchors, where, strict=True):
        assert crop[w[0], w[1]] == np.float32(image[a[0], a[1]] / 255.0)
    assert where[0].tolist() == [4, 4] and where[5].tolist() == [5, 5]  # clipped / centred


def test_binned_means_and_counts():
    x = np.array([0.1, 0.2, 3.0, 7.9, 8.0])
    y = np.array([1.0, 3.0, 5.0, 7.0, 9.0])
    mean, count = analyze.binned(x, y, np.array([0.0, 1.0, 4.0, 8.0]))
    np.testing.assert_allclose(mean, [2.0, 5.0, 8.0])  # 8.0 falls in the last bin
    assert count.tolist() == [2, 1, 2]
    mean, _ = analyze.binned(np.array([0.5]), np.array([1.0]), np.array([0.0, 1.0, 2.0]))
    assert np.isnan(mean[1])


def test_sampling_weights_of_fig_3():
    w = analyze.sampling_weights(np.array([1.0, 4.0]), (0.0, 0.5), 2.0)
    assert list(w) == ["uniform (gamma 0)", "IIE^0.5", "1[IIE >= 2]"]
    np.testing.assert_allclose(w["IIE^0.5"], [1.0, 2.0])
    np.testing.assert_allclose(w["1[IIE >= 2]"], [0.0, 1.0])


def test_info_statistics_by_hand():
    iie = np.array([[0.5, 1.0, 3.0], [4.0, 5.0, 7.5]], np.float32)  # groups 0 0 1 / 1 2 2
    example = {
        "iie": iie,
        "landmarks": np.array([[0.2, 0.1], [2.0, 1.0]], np.float32),  # (x, y): (0, 0), (2, 1)
        "id": b"a",
        "original_size": np.array([20, 30]),
        "spacing": np.float32(0.5),
    }
    other = dict(example, iie=iie + 0.25, id=b"b")
    stats, at_landmarks = analyze.info_statistics([example, other], (2.0, 4.5))
    np.testing.assert_array_equal(at_landmarks, [[0.5, 7.5], [0.75, 7.75]])
    assert stats["num_images"] == 2
    assert sum(stats["iie_histogram"]["counts"]) == 12
    assert stats["group_fraction"] == pytest.approx(
        {"low": 4 / 12, "medium": 4 / 12, "high": 4 / 12}
    )
    first = stats["per_image"][0]
    assert first["id"] == "a" and first["original_size"] == [20, 30] and first["spacing_mm"] == 0.5
    assert first["landmark_iie"] == [0.5, 7.5] and first["mean_iie"] == pytest.approx(iie.mean())
    assert stats["landmark_iie"]["mean"] == [0.625, 7.625]
    assert stats["landmark_iie"]["group_fraction"] == {"low": 0.5, "medium": 0.0, "high": 0.5}


def _training_batch_axes(batch, path, count):
    """The axes of ``plots.training_batch``'s figure (captured as it is saved to ``path``)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    from piaug import plots

    shown = []
    save = plt.Figure.savefig
    try:
        plt.Figure.savefig = lambda fig, *a, **k: shown.append(fig) or save(fig, *a, **k)
        plots.training_batch(batch, path, count=count)
    finally:
        plt.Figure.savefig = save
    return shown[0].axes


def test_training_batch_draws_every_anchor_of_a_crop(tmp_path):
    """With K anchors per crop, the figure draws the first with its cells and the K - 1 others
    as dots at their places in the image and in the crop."""
    rng = np.random.default_rng(0)
    batch = {
        "image": rng.integers(0, 256, (2, 64, 64), dtype=np.uint8),
        "crop": rng.uniform(0, 1, (2, 32, 32)).astype(np.float32),
        "anchor": rng.integers(0, 64, (2, 5, 2)),
        "crop_anchor": rng.integers(0, 32, (2, 5, 2)),
    }
    axes = _training_batch_axes(batch, tmp_path / "batch.png", count=2)
    dots = [c.get_offsets() for c in axes[0].collections]  # the image panel of example 0
    np.testing.assert_array_equal(dots[-1], batch["anchor"][0, 1:, ::-1])
    crop_dots = [c.get_offsets() for c in axes[2].collections]
    np.testing.assert_array_equal(crop_dots[-1], batch["crop_anchor"][0, 1:, ::-1])
    assert_drawn(tmp_path / "batch.png", np.round(axes[0].figure.get_size_inches() * 80))  # dpi 80


def test_training_batch_draws_each_crop_beside_its_image(tmp_path):
    """Several crops per image: one row per crop, its own image on the left."""
    rng = np.random.default_rng(1)
    batch = {
        "image": rng.integers(0, 256, (2, 64, 64), dtype=np.uint8),
        "crop": rng.uniform(0, 1, (2, 2, 32, 32)).astype(np.float32),
        "anchor": rng.integers(0, 64, (2, 2, 3, 2)),
        "crop_anchor": rng.integers(0, 32, (2, 2, 3, 2)),
    }
    axes = _training_batch_axes(batch, tmp_path / "batch.png", count=4)
    assert len(axes) == 12  # 4 crops x (image, window, crop)
    np.testing.assert_array_equal(axes[3].images[0].get_array(), batch["image"][0])  # crop 2
    np.testing.assert_array_equal(axes[5].images[0].get_array(), batch["crop"][0, 1])
    np.testing.assert_array_equal(axes[6].images[0].get_array(), batch["image"][1])
    dots = axes[5].collections[-1].get_offsets()
    np.testing.assert_array_equal(dots, batch["crop_anchor"][0, 1, 1:, ::-1])


def test_fig2_losses_with_crops_of_the_whole_image_equal_each_anchors_own_crop():
    """``pixel_losses`` with ``crop_size`` the image's side encodes the image once as every
    anchor's crop: the same losses as each anchor's ``centred_crops`` crop encoded apart."""
    import dataclasses

    import jax
    import jax.numpy as jnp
    from conftest import load_config

    from piaug import configure, losses

    config = load_config("test")
    model, loss = configure.model(config), configure.loss(config)
    nets = model.encoders()
    x0 = jnp.zeros((1, 32, 32), jnp.float32)
    variables = {
        name: net.init(jax.random.key(k), x0, train=False)
        for k, (name, net) in enumerate(zip(("image", "crop"), nets, strict=True))
    }
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (1, 32, 32)).astype(np.uint8)
    iie = rng.uniform(0, 5, (1, 32, 32)).astype(np.float32)
    got = analyze.pixel_losses(nets, variables, images, iie, crop_size=32, loss=loss, stride=8)
    anchors = analyze.grid_anchors((32, 32), 8)
    crops, where = analyze.centred_crops(images[0], anchors, 32)
    feats = nets[0].apply(variables["image"], images[:1].astype(np.float32) / 255.0)
    feats = [jnp.broadcast_to(f, (len(anchors), *f.shape[1:])) for f in feats]
    crop_feats = nets[1].apply(variables["crop"], crops)
    want, psi = losses.multiscale_info_nce(
        feats, crop_feats, anchors, where, **dataclasses.asdict(loss)
    )
    np.testing.assert_allclose(got["loss"], np.asarray(want.sum(1)), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got["psi"], np.asarray(psi.mean(1)), rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(got["iie"], iie[0][tuple(anchors.T)])
