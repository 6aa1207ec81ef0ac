"""The CC2D encoder: layout, parameter counts, output strides, aligned-corner upsampling."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from scipy import ndimage

from piaug import models


def _init(net, shape):
    return jax.eval_shape(lambda: net.init(jax.random.key(0), jnp.zeros(shape), train=False))


def test_parameter_counts_at_full_width():
    full, crop = models.encoders(width=1.0)
    v_full, v_crop = _init(full, (1, 64, 64)), _init(crop, (1, 64, 64))
    assert models.num_params(v_full["params"]["vgg"]) == 20_024_384  # VGG19's convolutions
    assert models.num_params(v_crop["params"]["vgg"]) == 20_024_384
    assert models.num_params(v_full["params"]) == 57_954_960  # with the decoder, RFB, heads
    assert models.num_params(v_crop["params"]) == 24_209_808
    kernels = {k: v["kernel"].shape for k, v in v_full["params"]["vgg"].items()}
    assert kernels["features_0"] == (3, 3, 3, 64) and kernels["features_34"] == (3, 3, 512, 512)
    assert "rfb0" in v_full["params"] and "rfb0" not in v_crop["params"]


def test_outputs_at_the_five_strides():
    full, crop = models.encoders(width=0.0625, embedding=8)
    x = jax.random.uniform(jax.random.key(1), (2, 64, 96))
    # shapes only (eval_shape): tests/test_train.py runs the encoders for real
    out, variables = jax.eval_shape(lambda: full.init_with_output(jax.random.key(0), x))
    sizes = [(2, 3), (4, 6), (8, 12), (16, 24), (32, 48)]  # strides 32, 16, 8, 4, 2
    assert [o.shape for o in out] == [(2, h, w, 8) for h, w in sizes]
    assert set(variables) == {"params", "batch_stats"}
    out = jax.eval_shape(
        lambda v: full.apply(v, x[..., None], train=True, mutable=["batch_stats"]), variables
    )
    assert len(out[0]) == 5 and "batch_stats" in out[1]
    out = jax.eval_shape(lambda: crop.init_with_output(jax.random.key(0), x[:, :32, :32])[0])
    assert [o.shape[1:3] for o in out] == [(1, 1), (2, 2), (4, 4), (8, 8), (16, 16)]


def _conv_dtypes(net, variables, x) -> dict[str, set]:
    """``{each convolution's path: the dtypes of its outputs}`` in ``net``'s forward pass
    (shapes only)."""
    is_conv = lambda module, _: isinstance(module, (nn.Conv, models.GrayConv))  # noqa: E731
    _, state = jax.eval_shape(
        lambda v: net.apply(v, x, capture_intermediates=is_conv, mutable=["intermediates"]),
        variables,
    )
    dtypes = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(state["intermediates"]):
        dtypes.setdefault(jax.tree_util.keystr(path[:-2]), set()).add(leaf.dtype)  # ...__call__, i
    return dtypes


@pytest.mark.parametrize("norm", models.NORMS)
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
def test_mixed_precision_keeps_float32_params_and_outputs(dtype, norm):
    """bfloat16 compute: every convolution runs (its output is) in bfloat16, while the
    parameters and the returned embeddings stay float32; float32 runs in float32."""
    x = jnp.zeros((1, 32, 32))
    full = models.Encoder(embedding=4, width=0.0625, dtype=dtype, norm=norm)
    out, variables = jax.eval_shape(full.init_with_output, jax.random.key(0), x)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables["params"]))
    assert all(o.dtype == jnp.float32 for o in out)
    convs = _conv_dtypes(full, variables, x)
    params = jax.tree_util.tree_leaves_with_path(variables["params"])
    kernels = {jax.tree_util.keystr(path[:-1]) for path, _ in params if path[-1].key == "kernel"}
    assert set(convs) == kernels and len(kernels) > 70  # every convolution was seen
    assert all(seen == {jnp.dtype(dtype)} for seen in convs.values()), convs


def test_bad_inputs_raise():
    net = models.Encoder(width=0.0625)
    with pytest.raises(ValueError, match="multiples of 32"):
        jax.eval_shape(lambda: net.init(jax.random.key(0), jnp.zeros((1, 48, 64))))
    with pytest.raises(ValueError, match="grayscale"):
        jax.eval_shape(lambda: net.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3))))


@pytest.mark.parametrize("n", [1, 2, 5])
def test_upsampling_aligns_corners_as_pytorch(n):
    x = np.random.default_rng(n).normal(size=(1, n, n + 2, 3)).astype(np.float32)
    ours = np.asarray(models.upsample2x(jnp.asarray(x)))
    # grid_mode=False maps the first and last samples onto each other: align_corners=True
    ref = ndimage.zoom(x, (1, 2, 2, 1), order=1, grid_mode=False, mode="nearest")
    np.testing.assert_allclose(ours, ref, atol=1e-5)
    assert ours.shape == (1, 2 * n, 2 * n + 4, 3)


def test_batch_norm_backbone_has_the_vgg19_bn_layout():
    full, crop = models.encoders(width=1.0, norm="batch")
    variables = _init(full, (1, 64, 64))
    vgg, stats = variables["params"]["vgg"], variables["batch_stats"]["vgg"]
    # torchvision's vgg19_bn: conv features.N, BatchNorm features.N+1, ReLU N+2, pools between.
    assert vgg["features_0"]["kernel"].shape == (3, 3, 3, 64)
    assert vgg["features_1"]["scale"].shape == (64,) and stats["features_1"]["mean"].shape == (64,)
    assert vgg["features_49"]["kernel"].shape == (3, 3, 512, 512) and "features_50" in stats
    assert models.num_params(vgg) == 20_024_384 + 2 * 5_504  # + a scale and shift per channel
    assert models.num_params(_init(crop, (1, 64, 64))["params"]["vgg"]) == 20_035_392


def test_group_norm_backbone_has_no_batch_statistics():
    full = models.Encoder(embedding=8, width=0.125, norm="group")
    variables = _init(full, (1, 64, 64))
    assert "vgg" not in variables["batch_stats"]
    assert variables["params"]["vgg"]["norm_0"]["scale"].shape == (8,)
    assert [models.group_count(c) for c in (1, 4, 8, 16, 64, 512, 24)] == [1, 2, 4, 8, 32, 32, 8]


@pytest.mark.slow  # compiling the backbone twice: about 13 s of the fast tier
@pytest.mark.parametrize("norm", ["batch", "group"])
def test_normalised_backbones_run_and_normalise(norm):
    """The backbone run for real at a tiny width (the whole encoder's shapes: eval_shape):
    finite pools; batch norm's running statistics move in training mode."""
    vgg = models.VGGFeatures(width=0.0625, norm=norm)
    x = jax.random.uniform(jax.random.key(1), (2, 32, 32, 3))
    variables = vgg.init(jax.random.key(0), x)
    pools, updates = vgg.apply(variables, x, train=True, mutable=["batch_stats"])
    assert [p.shape[1] for p in pools] == [16, 8, 4, 2, 1]
    assert all(np.isfinite(np.asarray(p)).all() for p in pools)
    if norm == "batch":
        before = variables["batch_stats"]["features_1"]["mean"]
        assert not np.allclose(updates["batch_stats"]["features_1"]["mean"], before)
    net = models.Encoder(embedding=4, width=0.0625, norm=norm)
    out = jax.eval_shape(lambda: net.init_with_output(jax.random.key(0), x[..., 0])[0])
    assert [o.shape[1] for o in out] == [1, 2, 4, 8, 16]
    with pytest.raises(ValueError, match="norm='layer'"):
        models.ModelSettings(norm="layer")


@pytest.mark.parametrize("shape", [(2, 8, 6, 3), (2, 4, 6, 8, 3)])
def test_max_pool_equals_flax_with_its_gradient_in_2d_and_3d(shape):
    """Values and gradients bit-equal to ``nn.max_pool`` (window 2 on every spatial axis),
    ties included: the first maximum of a window in row-major order takes the gradient."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.integers(0, 3, shape).astype(np.float32))  # many ties
    g = jnp.asarray(rng.normal(size=(shape[0], *(n // 2 for n in shape[1:-1]), shape[-1])))
    window = (2,) * (len(shape) - 2)

    def theirs(y):
        return nn.max_pool(y, window, strides=window)

    ours_out, ours_vjp = jax.vjp(models.max_pool2x2, x)
    ref_out, ref_vjp = jax.vjp(theirs, x)
    np.testing.assert_array_equal(ours_out, ref_out)
    np.testing.assert_array_equal(ours_vjp(g)[0], ref_vjp(g)[0])


def test_upsampling_in_3d_is_trilinear_with_aligned_corners():
    x = np.random.default_rng(3).normal(size=(1, 2, 3, 4, 2)).astype(np.float32)
    ours = np.asarray(models.upsample2x(jnp.asarray(x)))
    ref = ndimage.zoom(x, (1, 2, 2, 2, 1), order=1, grid_mode=False, mode="nearest")
    np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_volume_encoders_give_the_five_strides_in_3d():
    settings = models.ModelSettings(embedding=4, width=0.0625, norm="batch", dims=3)
    full, crop = settings.encoders()
    x = jnp.zeros((2, 32, 64, 32))  # (B, D, H, W)
    out, variables = jax.eval_shape(lambda: full.init_with_output(jax.random.key(0), x))
    sizes = [(1, 2, 1), (2, 4, 2), (4, 8, 4), (8, 16, 8), (16, 32, 16)]
    assert [o.shape for o in out] == [(2, *s, 4) for s in sizes]
    vgg = variables["params"]["vgg"]
    assert vgg["features_0"]["kernel"].shape == (3, 3, 3, 1, 4)  # the one gray channel
    assert vgg["features_3"]["kernel"].shape == (3, 3, 3, 4, 4)
    rfb = variables["params"]["rfb0"]
    assert [rfb[f"ConvBN_{i}"]["Conv_0"]["kernel"].shape[:3] for i in (2, 3, 4, 5)] == [
        (1, 1, 3),
        (1, 3, 1),
        (3, 1, 1),
        (3, 3, 3),
    ]
    out = jax.eval_shape(lambda: crop.init_with_output(jax.random.key(0), x[:, :32, :32])[0])
    assert [o.shape[1:4] for o in out][-1] == (16, 16, 16)
    with pytest.raises(ValueError, match=r"volumes \(B, D, H, W\[, 1\]\)"):
        jax.eval_shape(lambda: full.init(jax.random.key(0), jnp.zeros((2, 32, 32))))
    with pytest.raises(ValueError, match="dims=4"):
        models.ModelSettings(dims=4)


@pytest.mark.parametrize(
    ("kernel", "dilation"),
    [
        ((3, 3, 3), 1),
        ((1, 1, 3), 1),
        ((1, 3, 1), 1),
        ((3, 1, 1), 1),
        ((3, 3, 3), 3),
        ((1, 1, 1), 1),
    ],
)
def test_volume_convolution_equals_flax_3d_convolution(kernel, dilation):
    """``VolumeConv`` (the depth taps side by side in the channels, one 2-D convolution over
    the slices) gives ``nn.Conv``'s output and gradients from the same parameters."""
    x = jax.random.normal(jax.random.key(0), (2, 5, 6, 4, 3))
    ours = models.VolumeConv(4, kernel, kernel_dilation=dilation)
    theirs = nn.Conv(4, kernel, kernel_dilation=dilation)
    params = ours.init(jax.random.key(1), x)
    ref_params = theirs.init(jax.random.key(1), x)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ref_params), strict=True):
        np.testing.assert_array_equal(a, b)  # the same initial values
    params = {"params": {"kernel": params["params"]["kernel"], "bias": jnp.arange(4.0)}}

    def loss(net, p, y):
        return jnp.sum(jnp.sin(net.apply(p, y)))

    np.testing.assert_allclose(ours.apply(params, x), theirs.apply(params, x), atol=1e-5)
    g_ours = jax.grad(lambda p, y: loss(ours, p, y), argnums=(0, 1))(params, x)
    g_ref = jax.grad(lambda p, y: loss(theirs, p, y), argnums=(0, 1))(params, x)
    for a, b in zip(jax.tree.leaves(g_ours), jax.tree.leaves(g_ref), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-5)
