"""piaug against a PyTorch model laid out as the authors' CC2D-SSL code (the twin in
benchmarks/torch_reference.py), with shared weights: the features in evaluation and training
mode, the loss with the authors' half-open window, the bilinear matching maps, and the loading
of an authors' checkpoint (decoder conv biases folded into the batch-norm means).

Skipped where torch is not installed (torch is not a piaug dependency)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from piaug import authors, checkpoints, layout, losses, matching, models
from piaug.errors import UserError

torch = pytest.importorskip(
    "torch", reason="the PyTorch twin needs torch: pip install -e '.[test,torch]'"
)
# The slow tier: with torch installed they add about 40 s of CPU, which the fast tier has not.
pytestmark = pytest.mark.slow

WIDTH, EMBEDDING, SIZE, CROP = 0.125, 8, 64, 32


def _twin_module():
    path = Path(__file__).parents[1] / "benchmarks" / "torch_reference.py"
    spec = importlib.util.spec_from_file_location("torch_reference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _randomised(net, seed):
    """Random BN scales, shifts and running stats and random conv biases, so that every
    mapped tensor (and the folding of the decoder biases) matters."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                n = module.num_features
                module.weight.copy_(0.5 + torch.rand(n, generator=gen))
                module.bias.copy_(0.2 * torch.randn(n, generator=gen))
                module.running_mean.copy_(0.3 * torch.randn(n, generator=gen))
                module.running_var.copy_(0.5 + torch.rand(n, generator=gen))
            elif isinstance(module, torch.nn.Conv2d) and module.bias is not None:
                module.bias.copy_(0.1 * torch.randn(module.bias.shape, generator=gen))
    return net


@pytest.fixture(scope="module")
def twins():
    module = _twin_module()
    torch.manual_seed(0)
    nets = {
        "image": _randomised(module.Encoder(WIDTH, EMBEDDING, rfb=True), 1),
        "crop": _randomised(module.Encoder(WIDTH, EMBEDDING, rfb=False), 2),
    }
    ours = {
        name: authors.variables(
            {k: v.numpy() for k, v in net.state_dict().items()}, rfb=name == "image"
        )
        for name, net in nets.items()
    }
    return module, nets, ours


def _inputs():
    rng = np.random.default_rng(0)
    return (
        rng.uniform(0, 1, (2, SIZE, SIZE)).astype(np.float32),
        rng.uniform(0, 1, (2, CROP, CROP)).astype(np.float32),
    )


def _torch_features(net, x, train):
    net.train(train)
    with torch.no_grad():
        return [f.permute(0, 2, 3, 1).numpy() for f in net(torch.from_numpy(x)[:, None])]


def _piaug_features(variables, x, rfb, train):
    net = models.Encoder(EMBEDDING, WIDTH, rfb=rfb)
    if train:
        out, _ = net.apply(variables, jnp.asarray(x), train=True, mutable=["batch_stats"])
        return [np.asarray(f) for f in out]
    return [np.asarray(f) for f in net.apply(variables, jnp.asarray(x), train=False)]


def test_the_authors_layout_is_read_with_its_sizes(twins):
    _, nets, _ = twins
    state = {k: v.numpy() for k, v in nets["image"].state_dict().items()}
    assert authors.settings(state) == models.ModelSettings(embedding=EMBEDDING, width=WIDTH)


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("name", ["image", "crop"])
def test_features_match_the_twin_with_shared_weights(twins, name, train):
    _, nets, ours = twins
    x = _inputs()[0] if name == "image" else _inputs()[1]
    theirs = _torch_features(nets[name], x, train)
    mine = _piaug_features(ours[name], x, name == "image", train)
    for a, b in zip(mine, theirs, strict=True):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-4 * np.abs(b).max())


@pytest.mark.parametrize("half_open", [False, True], ids=["closed", "half_open"])
def test_loss_matches_the_twin(twins, half_open):
    module, nets, ours = twins
    image, crop = _inputs()
    anchors = np.array([[5, 60], [40, 22]])
    crop_anchors = np.array([[3, 30], [17, 8]])
    theirs = module.info_nce(
        [
            torch.from_numpy(f).permute(0, 3, 1, 2)
            for f in _torch_features(nets["image"], image, True)
        ],
        [
            torch.from_numpy(f).permute(0, 3, 1, 2)
            for f in _torch_features(nets["crop"], crop, True)
        ],
        torch.from_numpy(anchors),
        torch.from_numpy(crop_anchors),
        window=2,
        half_open=half_open,
    )
    per_example, _ = losses.multiscale_info_nce(
        _piaug_features(ours["image"], image, True, True),
        _piaug_features(ours["crop"], crop, False, True),
        jnp.asarray(anchors),
        jnp.asarray(crop_anchors),
        window=2,
        window_mode="half_open" if half_open else "closed",
    )
    np.testing.assert_allclose(float(per_example.mean(0).sum()), float(theirs), rtol=1e-5)


def test_the_from_scratch_loss_matches_the_twin(twins):
    """The cpu preset's loss: temperature 0.1, no clamp, 3 anchors in each of 2 crops of every
    image (the image's features serve both its crops)."""
    module, nets, ours = twins
    image, _ = _inputs()
    rng = np.random.default_rng(1)
    crops = rng.uniform(0, 1, (4, CROP, CROP)).astype(np.float32)  # crop n of image n // 2
    anchors = rng.integers(0, SIZE, (4, 3, 2))
    crop_anchors = rng.integers(0, CROP, (4, 3, 2))
    image_feats = _torch_features(nets["image"], image, True)
    crop_feats = _torch_features(nets["crop"], crops, True)
    _assert_two_crop_losses_match(module, image_feats, crop_feats, anchors, crop_anchors, 2)


def test_bilinear_matching_maps_match_the_authors_upsampling(twins):
    """The authors' tester: cosine maps upsampled by F.interpolate(bilinear,
    align_corners=False), multiplied over scales."""
    _, nets, ours = twins
    image = _inputs()[0]
    theirs = _torch_features(nets["image"], image, False)
    points = np.array([[10, 12], [40, 50]])
    vectors = matching.template_vectors([f[0] for f in theirs], points)
    mine = matching.similarity(
        [jnp.asarray(f[1:]) for f in theirs], vectors, size=(SIZE, SIZE), upsample="bilinear"
    )
    product = 1.0
    for f, v in zip(theirs, vectors, strict=True):
        q = torch.from_numpy(f[1:]).permute(0, 3, 1, 2)  # (1, E, h, w)
        t = torch.from_numpy(np.asarray(v))[:, :, None, None]  # (L, E, 1, 1)
        cos = _cosine(q, t).clamp(0, 1)  # (L, h, w)
        up = torch.nn.functional.interpolate(
            cos[None], size=(SIZE, SIZE), mode="bilinear", align_corners=False
        )[0]
        product = product * up
    np.testing.assert_allclose(np.asarray(mine)[0], product.numpy(), rtol=1e-4, atol=1e-6)


def _cosine(q, t):  # of every template vector with every cell
    return torch.nn.functional.cosine_similarity(q, t, dim=1, eps=1e-3)


def test_an_authors_checkpoint_pair_converts_and_restores(twins, tmp_path):
    _, nets, _ = twins
    files = {}
    for name, net in nets.items():
        files[name] = tmp_path / f"{name}.pth"
        torch.save(net.state_dict(), files[name])
    out = authors.convert(files["image"], files["crop"], tmp_path / "checkpoints", step=399)
    assert layout.latest_step(out) == 399
    restored = checkpoints.restore_encoders(
        out, models.ModelSettings(embedding=EMBEDDING, width=WIDTH)
    )
    image = _inputs()[0]
    theirs = _torch_features(nets["image"], image, False)
    mine = _piaug_features(restored["image"], image, True, False)
    for a, b in zip(mine, theirs, strict=True):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-4 * np.abs(b).max())
    with pytest.raises(UserError, match="already holds a checkpoint"):
        authors.convert(files["image"], files["crop"], out)
    with pytest.raises(UserError, match="non_local_5.*missing.*full-image"):
        authors.convert(files["crop"], files["crop"], tmp_path / "other")


def test_the_volume_loss_matches_the_twin(twins):
    """The 3-D loss (cubic windows, several anchors, two crops per volume) against the twin's
    on the same random maps."""
    module = twins[0]
    rng = np.random.default_rng(3)
    strides = (32, 16, 8, 4, 2)
    image = [rng.normal(size=(2, 64 // s, 64 // s, 32 // s, 4)).astype(np.float32) for s in strides]
    crop = [rng.normal(size=(4, 32 // s, 32 // s, 32 // s, 4)).astype(np.float32) for s in strides]
    anchors = rng.integers(0, 32, (4, 3, 3))
    crop_anchors = rng.integers(0, 32, (4, 3, 3))
    _assert_two_crop_losses_match(module, image, crop, anchors, crop_anchors, 1)


def _assert_two_crop_losses_match(module, image, crop, anchors, crop_anchors, window):
    """The twin's loss (channels first, two crops of each image) equals piaug's (each image's
    maps repeated beside its crops): ``image``, ``crop`` channel-last maps of any number of
    axes, unclamped at temperature 0.1."""

    def first(f):  # (B, ..., C) -> (B, C, ...)
        return torch.from_numpy(f).permute(0, f.ndim - 1, *range(1, f.ndim - 1))

    theirs = module.info_nce(
        [first(f) for f in image],
        [first(f) for f in crop],
        torch.from_numpy(anchors),
        torch.from_numpy(crop_anchors),
        window=window,
        temperature=0.1,
        clamp=False,
        crops_per_image=2,
    )
    per_example, _ = losses.multiscale_info_nce(
        [jnp.repeat(jnp.asarray(f), 2, axis=0) for f in image],
        [jnp.asarray(f) for f in crop],
        jnp.asarray(anchors),
        jnp.asarray(crop_anchors),
        window=window,
        temperature=0.1,
        clamp=False,
    )
    np.testing.assert_allclose(float(per_example.mean(0).sum()), float(theirs), rtol=1e-5)
