"""piaug.authors without torch: an authors' CC2D-SSL state dict (as numpy arrays, the layout
of their UNet_Pretrained) made from known piaug variables is read back into them, the decoder
conv biases folded into the batch-norm means; errors name the missing key. The comparison with
a PyTorch model itself is tests/test_torch_twin.py (skipped without torch)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from piaug import authors, checkpoints, layout, models
from piaug.errors import UserError

WIDTH, EMBEDDING = 0.0625, 4


def _piaug(rfb, seed):
    net = models.Encoder(EMBEDDING, WIDTH, rfb=rfb)
    variables = jax.eval_shape(lambda: net.init(jax.random.key(0), jnp.zeros((1, 32, 32))))
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: rng.standard_normal(s.shape).astype(np.float32), variables)


def _theirs(variables, rfb, seed):
    """The authors' keys for ``variables``, with random decoder conv biases ``b`` (and the
    running means ``mean + b``, so that their evaluation equals piaug's)."""
    rng = np.random.default_rng(seed)
    p, s = variables["params"], variables["batch_stats"]
    out = {}

    def torch_kernel(k):
        return np.ascontiguousarray(np.asarray(k).transpose(3, 2, 0, 1))

    for name, layer in p["vgg"].items():
        index = name.split("_")[1]
        out[f"vgg.features.{index}.weight"] = torch_kernel(layer["kernel"])
        out[f"vgg.features.{index}.bias"] = np.asarray(layer["bias"])

    def conv_bn(ours_p, ours_s, conv, bn, bias):
        out[f"{conv}.weight"] = torch_kernel(ours_p["Conv_0"]["kernel"])
        mean = np.asarray(ours_s["BatchNorm_0"]["mean"])
        if bias:
            b = rng.standard_normal(mean.shape).astype(np.float32)
            out[f"{conv}.bias"] = b
            mean = mean + b
        out[f"{bn}.weight"] = np.asarray(ours_p["BatchNorm_0"]["scale"])
        out[f"{bn}.bias"] = np.asarray(ours_p["BatchNorm_0"]["bias"])
        out[f"{bn}.running_mean"] = mean
        out[f"{bn}.running_var"] = np.asarray(ours_s["BatchNorm_0"]["var"])
        out[f"{bn}.num_batches_tracked"] = np.asarray(7.0, np.float32)

    for k in (1, 2, 3, 4):
        for j, (c, b) in enumerate(((0, 1), (3, 4))):
            prefix = f"up{k}.conv.double_conv"
            conv_bn(
                p[f"up{k}"][f"ConvBN_{j}"],
                s[f"up{k}"][f"ConvBN_{j}"],
                f"{prefix}.{c}",
                f"{prefix}.{b}",
                True,
            )
    if rfb:
        for ours, theirs in authors.RFBS.items():
            for j, block in enumerate(authors._RFB_ORDER):
                conv_bn(
                    p[ours][f"ConvBN_{j}"],
                    s[ours][f"ConvBN_{j}"],
                    f"{theirs}.{block}.conv",
                    f"{theirs}.{block}.bn",
                    False,
                )
    for stride, theirs in authors.HEADS.items():
        out[f"{theirs}.weight"] = torch_kernel(p[f"head{stride}"]["kernel"])
        out[f"{theirs}.bias"] = np.asarray(p[f"head{stride}"]["bias"])
    out["up5.conv.double_conv.0.weight"] = np.zeros((1,), np.float32)  # unused: not read
    out["trans_0.weight"] = np.zeros((1,), np.float32)
    return {f"module.{k}": v for k, v in out.items()}  # as saved from DataParallel


@pytest.mark.parametrize("rfb", [True, False], ids=["image", "crop"])
def test_an_authors_state_dict_reads_back_with_the_biases_folded(rfb):
    ours = _piaug(rfb, seed=1)
    state = _theirs(ours, rfb, seed=2)
    assert authors.settings(state) == models.ModelSettings(embedding=EMBEDDING, width=WIDTH)
    got = authors.variables(state, rfb=rfb)
    for kind in ("params", "batch_stats"):
        want, have = jax.tree.leaves_with_path(ours[kind]), jax.tree.leaves_with_path(got[kind])
        flat_want = {jax.tree_util.keystr(k): v for k, v in want}
        flat_have = {jax.tree_util.keystr(k): v for k, v in have}
        assert flat_want.keys() == flat_have.keys(), kind
        for key, value in flat_want.items():
            np.testing.assert_allclose(flat_have[key], value, rtol=0, atol=1e-6, err_msg=key)


def test_missing_or_foreign_keys_are_named(tmp_path):
    crop = _theirs(_piaug(False, 1), False, 2)
    with pytest.raises(UserError, match=r"non_local_5\.branch0\.0\.\S+ is missing.*full-image"):
        authors.variables(crop, rfb=True, source="net.pth")
    broken = {k: v for k, v in crop.items() if "up3.conv.double_conv.4.running_var" not in k}
    with pytest.raises(
        UserError, match="net_patch.npz: up3.conv.double_conv.4.running_var is missing"
    ):
        authors.variables(broken, rfb=False, source="net_patch.npz")
    with pytest.raises(UserError, match="no vgg.features.0.weight.*UNet_Pretrained"):
        authors.settings({"features.0.weight": np.zeros((64, 3, 3, 3))})


def test_a_pair_converts_to_a_checkpoint_that_restores(tmp_path):
    image, crop = _piaug(True, 1), _piaug(False, 3)
    np.savez(tmp_path / "net.npz", **_theirs(image, True, 2))
    np.savez(tmp_path / "net_patch.npz", **_theirs(crop, False, 4))
    out = authors.convert(tmp_path / "net.npz", tmp_path / "net_patch.npz", tmp_path / "ck", step=5)
    assert layout.latest_step(out) == 5
    restored = checkpoints.restore_encoders(out, models.ModelSettings(EMBEDDING, WIDTH))
    np.testing.assert_allclose(
        restored["crop"]["batch_stats"]["up1"]["ConvBN_0"]["BatchNorm_0"]["mean"],
        crop["batch_stats"]["up1"]["ConvBN_0"]["BatchNorm_0"]["mean"],
        atol=1e-6,
    )
    with pytest.raises(UserError, match="already holds a checkpoint"):
        authors.convert(tmp_path / "net.npz", tmp_path / "net_patch.npz", out)
