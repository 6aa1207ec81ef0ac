"""Tests for piaug.pretrained: torchvision vgg19 state dicts (.npz, .safetensors, .pth) converted
to the Flax backbone, checked against a numpy convolution, and the errors a user can meet."""

import functools
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.core import freeze
from flax.core.frozen_dict import FrozenDict
from safetensors.numpy import save_file

from piaug import models, pretrained
from piaug.errors import UserError

CONVS = [(i, c) for i, c in models.torchvision_layers() if c != "M"]
# torchvision's vgg19 classifier: Linear(25088, 4096), ReLU, Dropout, Linear(4096, 4096), ...
CLASSIFIER = {0: (4096, 25088), 3: (4096, 4096), 6: (1000, 4096)}


def torchvision_state(seed: int = 0) -> dict[str, np.ndarray]:
    """A state dict with the keys and shapes of torchvision's ``vgg19().state_dict()``: seeded
    random convolutions (He scale, so activations stay O(1)) and a zero classifier, in uint8 to
    keep the files small (the loader does not read it)."""
    rng = np.random.default_rng(seed)
    state, cin = {}, 3
    for index, cout in CONVS:
        weight = rng.standard_normal((cout, cin, 3, 3), dtype=np.float32)
        weight *= np.float32(np.sqrt(2.0 / (9 * cin)))
        state[f"features.{index}.weight"] = weight
        state[f"features.{index}.bias"] = rng.standard_normal(cout, dtype=np.float32) / 10
        cin = cout
    for index, shape in CLASSIFIER.items():
        state[f"classifier.{index}.weight"] = np.zeros(shape, np.uint8)
        state[f"classifier.{index}.bias"] = np.zeros(shape[0], np.uint8)
    return state


@pytest.fixture(scope="module")
def state():
    return torchvision_state()


@pytest.fixture(scope="module")
def files(state, tmp_path_factory):
    folder = tmp_path_factory.mktemp("vgg19")
    np.savez(folder / "vgg19.npz", **state)
    save_file(state, str(folder / "vgg19.safetensors"))
    return {"npz": folder / "vgg19.npz", "safetensors": folder / "vgg19.safetensors"}


@functools.cache
def encoder_params(width: float) -> dict:
    """The full-image encoder's params as shapes only (a real init at width 1 takes ~20 s)."""
    full, _ = models.encoders(width=width)
    init = lambda: full.init(jax.random.key(0), jnp.zeros((1, 32, 32)))  # noqa: E731
    return jax.eval_shape(init)["params"]


def check_converted(params, state):
    assert all(v.dtype == np.float32 for k, v in state.items() if k.startswith("features."))
    assert list(params) == [f"features_{i}" for i, _ in CONVS]
    for index, _ in CONVS:
        layer = params[f"features_{index}"]
        assert layer["kernel"].dtype == np.float32 and layer["bias"].dtype == np.float32
        weight = state[f"features.{index}.weight"]
        assert np.array_equal(layer["kernel"], weight.transpose(2, 3, 1, 0)), index
        assert np.array_equal(layer["bias"], state[f"features.{index}.bias"]), index


@pytest.mark.parametrize("fmt", ["npz", "safetensors"])
def test_load_and_convert(fmt, files, state):
    loaded = pretrained.load_state_dict(files[fmt])
    assert sorted(loaded) == sorted(k for k in state if k.startswith("features."))
    params = pretrained.vgg_params(loaded)
    check_converted(params, state)
    expected = jax.eval_shape(
        lambda: models.VGGFeatures(width=1).init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    )["params"]
    assert jax.tree.map(np.shape, params) == jax.tree.map(np.shape, dict(expected))


def test_prefixes_and_bare_keys(state):
    features = {k: v for k, v in state.items() if k.startswith("features.")}
    wrapped = {f"module.vgg.{k}": v for k, v in state.items()}
    # as from vgg19().features.state_dict(): "0.weight", ...
    bare = {k.removeprefix("features."): v for k, v in features.items()}
    for variant in (wrapped, bare):
        check_converted(pretrained.vgg_params(variant), state)


def conv3x3_relu(x, weight, bias):
    """Torch's Conv2d(padding=1) (a cross-correlation) + ReLU on (H, W, in) with an
    (out, in, 3, 3) weight, in plain numpy."""
    h, w, _ = x.shape
    xp = np.pad(x, ((1, 1), (1, 1), (0, 0)))
    out = np.broadcast_to(bias, (h, w, len(bias))).astype(np.float64)
    for i in range(3):
        for j in range(3):
            out = out + xp[i : i + h, j : j + w] @ weight[:, :, i, j].T.astype(np.float64)
    return np.maximum(out, 0)


def test_forward_matches_numpy_cross_correlation(state):
    params = pretrained.vgg_params(state)
    x = np.random.default_rng(1).random((32, 32, 3), dtype=np.float32)
    pools = models.VGGFeatures(width=1).apply({"params": params}, x[None])
    assert [p.shape[1:] for p in pools] == [(16, 16, 64), (8, 8, 128), (4, 4, 256)] + [
        (2, 2, 512),
        (1, 1, 512),
    ]
    y = conv3x3_relu(x, state["features.0.weight"], state["features.0.bias"])
    y = conv3x3_relu(y, state["features.2.weight"], state["features.2.bias"])
    expected = y.reshape(16, 2, 16, 2, 64).max(axis=(1, 3))
    np.testing.assert_allclose(np.asarray(pools[0][0]), expected, rtol=1e-4, atol=1e-4)


def test_load_backbone_replaces_only_vgg(files, state):
    params = encoder_params(1.0)
    loaded = pretrained.load_backbone(params, files["npz"])
    assert isinstance(loaded, dict) and set(loaded) == set(params)
    check_converted(loaded["vgg"], state)
    for name in params:
        if name != "vgg":
            same = jax.tree.map(lambda a, b: a is b, loaded[name], params[name])
            assert all(jax.tree.leaves(same)), name
    assert all(isinstance(v, jax.ShapeDtypeStruct) for v in jax.tree.leaves(params["vgg"]))

    frozen = pretrained.load_backbone(freeze(params), files["safetensors"])
    assert isinstance(frozen, FrozenDict)
    check_converted(frozen["vgg"], state)


def test_crop_encoder_takes_the_weights_too(files, state):
    _, crop = models.encoders(width=1.0)
    params = jax.eval_shape(lambda: crop.init(jax.random.key(0), jnp.zeros((1, 32, 32))))
    check_converted(pretrained.load_backbone(params["params"], files["npz"])["vgg"], state)


def test_missing_key(state):
    broken = {k: v for k, v in state.items() if k != "features.34.weight"}
    with pytest.raises(UserError, match="features.34.weight is missing") as err:
        pretrained.vgg_params(broken, source="my_vgg.npz")
    assert "my_vgg.npz" in str(err.value) and "no batch norm" in str(err.value)


def vgg19_bn_state(seed: int = 0) -> dict[str, np.ndarray]:
    """torchvision's ``vgg19_bn().state_dict()`` layout (conv, BatchNorm, ReLU per layer, so
    the indices move), seeded random values."""
    rng = np.random.default_rng(seed)
    bn, index, cin = {}, 0, 3
    for item in models.VGG19:
        if item == "M":
            index += 1
            continue
        bn[f"features.{index}.weight"] = rng.standard_normal((item, cin, 3, 3), np.float32)
        bn[f"features.{index}.bias"] = rng.standard_normal(item, np.float32)
        for part in ("weight", "bias", "running_mean", "running_var"):
            bn[f"features.{index + 1}.{part}"] = rng.uniform(0.5, 1.5, item).astype(np.float32)
        index, cin = index + 3, item
    return bn


def test_vgg19_bn_loads_into_the_batch_norm_backbone_only():
    bn = vgg19_bn_state()
    with pytest.raises(UserError, match="features.2.weight is missing .*vgg19_bn.*norm=batch"):
        pretrained.vgg_params(bn)
    loaded = pretrained.vgg_variables(bn, batch_norm=True)
    expected = jax.eval_shape(
        lambda: models.VGGFeatures(width=1, norm="batch").init(
            jax.random.key(0), jnp.zeros((1, 32, 32, 3))
        )
    )
    for kind in ("params", "batch_stats"):
        assert jax.tree.map(np.shape, loaded[kind]) == jax.tree.map(
            lambda s: s.shape, dict(expected[kind])
        ), kind
    assert np.array_equal(loaded["params"]["features_1"]["scale"], bn["features.1.weight"])
    assert np.array_equal(
        loaded["batch_stats"]["features_50"]["var"], bn["features.50.running_var"]
    )
    assert np.array_equal(
        loaded["params"]["features_49"]["kernel"], bn["features.49.weight"].transpose(2, 3, 1, 0)
    )
    with pytest.raises(UserError, match="looks like vgg19, without batch norm.*norm=none"):
        pretrained.vgg_variables(torchvision_state(), batch_norm=True)


def test_wrong_shape(state):
    gray = dict(state, **{"features.0.weight": state["features.0.weight"][:, :1]})
    with pytest.raises(UserError, match=r"features.0.weight has shape \(64, 1, 3, 3\)") as err:
        pretrained.vgg_params(gray)
    assert "expected (64, 3, 3, 3)" in str(err.value) and "vgg19" in str(err.value)


def test_narrow_encoder_is_refused(files):
    with pytest.raises(UserError, match="config.model.width=1") as err:
        pretrained.load_backbone(encoder_params(0.25), files["npz"])
    assert "features_0/kernel" in str(err.value) and str(files["npz"]) in str(err.value)
    with pytest.raises(UserError, match="no 'vgg' backbone"):
        pretrained.load_backbone({"params": encoder_params(1.0)}, files["npz"])


def test_file_errors(tmp_path, monkeypatch):
    missing = tmp_path / "vgg19-dcbb9e9d.pth"
    with pytest.raises(UserError, match="not found") as err:
        pretrained.load_state_dict(missing)
    assert str(missing) in str(err.value)

    unknown = tmp_path / "vgg19.h5"
    unknown.write_bytes(b"\x89HDF")
    with pytest.raises(UserError, match="unknown extension '.h5'") as err:
        pretrained.load_state_dict(unknown)
    assert str(unknown) in str(err.value) and ".safetensors" in str(err.value)

    for name in ("garbage.npz", "garbage.safetensors"):
        (tmp_path / name).write_bytes(b"not an archive")
        with pytest.raises(UserError, match="cannot read pretrained weights") as err:
            pretrained.load_state_dict(tmp_path / name)
        assert str(tmp_path / name) in str(err.value)

    np.savez(tmp_path / "other.npz", **{"encoder.conv.kernel": np.zeros(3)})
    with pytest.raises(UserError, match=r"no features.N.weight \(encoder.conv.kernel\)"):
        pretrained.load_state_dict(tmp_path / "other.npz")

    missing.write_bytes(b"PK")
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch raises ImportError
    with pytest.raises(UserError, match="needs PyTorch") as err:
        pretrained.load_state_dict(missing)
    assert str(missing) in str(err.value) and ".npz" in str(err.value)


def test_pth_with_torch(tmp_path, state):
    torch = pytest.importorskip("torch")
    small = {
        "module.features.0.weight": torch.from_numpy(state["features.0.weight"]),
        "module.features.0.bias": torch.from_numpy(state["features.0.bias"]).half(),
        "module.classifier.6.bias": torch.zeros(1000),
    }
    torch.save(small, tmp_path / "vgg19.pth")
    loaded = pretrained.load_state_dict(tmp_path / "vgg19.pth")
    assert sorted(loaded) == ["features.0.bias", "features.0.weight"]
    np.testing.assert_array_equal(loaded["features.0.weight"], state["features.0.weight"])
    assert loaded["features.0.bias"].dtype == np.float32


def test_training_starts_both_backbones_from_the_file(files, state):
    """``model.pretrained``: the train state's two encoders get the converted weights."""
    from piaug import train

    full, crop = models.encoders(width=1.0)
    params = {}
    for name, net, size in (("image", full, 64), ("crop", crop, 32)):
        shapes = jax.eval_shape(
            lambda n=net, s=size: n.init(jax.random.key(0), jnp.zeros((1, s, s)))
        )
        params[name] = jax.tree.map(lambda s: np.ones(s.shape, s.dtype), shapes["params"])
    start = train.TrainState(step=np.int32(0), params=params, batch_stats={}, opt_state={})
    loaded = train.with_pretrained_backbone(start, str(files["npz"]))
    expected = pretrained.vgg_params(state)
    for name in train.ENCODERS:
        got = loaded.params[name]
        np.testing.assert_array_equal(
            got["vgg"]["features_0"]["kernel"], expected["features_0"]["kernel"]
        )
        np.testing.assert_array_equal(
            got["vgg"]["features_34"]["bias"], expected["features_34"]["bias"]
        )
        np.testing.assert_array_equal(got["head32"]["kernel"], 1.0)  # the rest is untouched
