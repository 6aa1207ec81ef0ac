"""ImageNet weights for the VGG19 backbone, from a torchvision state dict the user supplies.

CC2D starts its encoder from torchvision's ImageNet-trained ``vgg19``. Nothing is downloaded at
run time (training machines are often offline): fetch torchvision's file ``vgg19-dcbb9e9d.pth``
yourself (https://download.pytorch.org/models/vgg19-dcbb9e9d.pth, or the copy torchvision keeps
in ``~/.cache/torch/hub/checkpoints/``) and point the run at it. Reading a ``.pth`` needs PyTorch;
without it, use an ``.npz`` or ``.safetensors`` file with the same keys (``features.0.weight``,
``features.0.bias``, ...), made once on a machine with torch::

    import numpy as np, torch
    sd = torch.load("vgg19-dcbb9e9d.pth", map_location="cpu", weights_only=True)
    np.savez("vgg19.npz", **{k: v.numpy() for k, v in sd.items() if k.startswith("features.")})

Only ``features`` is used (the classifier is skipped). The weights only fit the backbone at
``config.model.width=1``: torchvision's ``vgg19`` for ``config.model.norm='none'`` (the paper's),
its ``vgg19_bn`` (``vgg19_bn-c79401a0.pth``; batch norm scales, shifts and running statistics
too) for ``config.model.norm='batch'``; ``vgg16`` fits neither.
Torch's ``(out, in, kh, kw)`` conv weights become Flax's ``(kh, kw, in, out)`` kernels; both
frameworks compute a cross-correlation, so no kernel flip is needed.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from flax.core import freeze, unfreeze
from flax.core.frozen_dict import FrozenDict

from piaug import models
from piaug.errors import UserError

EXTENSIONS = (".pth", ".pt", ".npz", ".safetensors")
NEEDED = "a torchvision vgg19 (configuration E, no batch norm) state dict is needed"
_WRAPPERS = ("module.", "vgg.")  # prefixes of wrapped models, stripped before "features."
_FEATURE = re.compile(r"(?:features\.)?(\d+)\.(weight|bias|running_mean|running_var)")


def _feature_key(key: str) -> str | None:
    """``features.N.weight``/``bias`` for a backbone key (with or without ``features.``, after
    ``module.``/``vgg.`` prefixes), None for any other key (the classifier)."""
    while key.startswith(_WRAPPERS):
        key = key.split(".", 1)[1]
    match = _FEATURE.fullmatch(key)
    return f"features.{match[1]}.{match[2]}" if match else None


def read_arrays(path: str | Path, *, what: str = "pretrained weights") -> dict[str, np.ndarray]:
    """Every array of a state dict in a ``.pth``/``.pt`` (needs PyTorch), ``.npz`` or
    ``.safetensors`` file, as float32 numpy arrays keyed as in the file (non-array entries of a
    ``.pth``, e.g. ``num_batches_tracked`` counters, are kept as arrays too). ``what`` names the
    file in the errors."""
    path = Path(path)
    suffix = path.suffix.lower()
    if not path.is_file():
        raise UserError(f"{what} {path} not found: give the path of the file")
    if suffix not in EXTENSIONS:
        raise UserError(
            f"{what} {path}: unknown extension {suffix or '(none)'!r}; "
            f"use one of {', '.join(EXTENSIONS)}"
        )
    if suffix in (".pth", ".pt"):
        try:
            import torch  # noqa: F401
        except ImportError:
            raise UserError(
                f"reading {path} needs PyTorch: install torch, or convert the file to .npz or "
                ".safetensors on a machine with torch (see the docstring of piaug.pretrained)"
            ) from None
    try:
        return _read(path, suffix)
    except Exception as err:  # whatever the reader raises for a file it cannot parse
        raise UserError(f"cannot read {what} {path}: {err}") from err


def load_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """The backbone entries of a torchvision vgg19 state dict in a ``.pth``/``.pt``, ``.npz`` or
    ``.safetensors`` file, keyed ``features.N.weight`` (``(out, in, 3, 3)``) and
    ``features.N.bias`` (``(out,)``); other keys (``classifier.*``) are not kept."""
    if not Path(path).is_file():
        raise UserError(f"pretrained weights {path} not found: give the path to vgg19-dcbb9e9d.pth")
    arrays = read_arrays(path)
    state = {_feature_key(k): v for k, v in arrays.items() if _feature_key(k)}
    if not state:
        found = ", ".join(list(arrays)[:5]) or "no keys"
        raise UserError(f"pretrained weights {path} has no features.N.weight ({found}); {NEEDED}")
    return state


def _read(path: Path, suffix: str) -> dict[str, np.ndarray]:
    if suffix == ".npz":
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    if suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(path, framework="np") as f:
            return {k: f.get_tensor(k) for k in f.keys()}
    import torch

    loaded = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(loaded, dict):
        raise ValueError(f"expected a state dict, found a {type(loaded).__name__}")
    if "state_dict" in loaded and isinstance(loaded["state_dict"], dict):
        loaded = loaded["state_dict"]  # a training checkpoint that wraps the state dict
    return {str(k): v.float().numpy() for k, v in loaded.items() if isinstance(v, torch.Tensor)}


def vgg_params(state_dict, *, source: str = "the state dict") -> dict:
    """The Flax params of ``models.VGGFeatures(width=1)`` from a torchvision vgg19 state dict:
    ``{"features_0": {"kernel": (3, 3, 3, 64), "bias": (64,)}, ...}``, float32. ``source`` names
    the state dict in the error messages."""
    return vgg_variables(state_dict, batch_norm=False, source=source)["params"]


def vgg_variables(state_dict, *, batch_norm: bool, source: str = "the state dict") -> dict:
    """``{"params", "batch_stats"}`` of ``models.VGGFeatures(width=1, norm=...)`` from a
    torchvision ``vgg19`` (``batch_norm=False``; no batch stats) or ``vgg19_bn`` state dict
    (each conv ``features.N`` followed by its batch norm ``features.{N+1}``)."""
    state = {}
    for key, value in state_dict.items():
        if name := _feature_key(key):
            state[name] = value
    needed = (
        "a torchvision vgg19_bn state dict is needed (config.model.norm='batch')"
        if batch_norm
        else NEEDED
    )
    has_bn = any("running_mean" in k for k in state)

    def get(key, shape):
        if key not in state:
            hint = ""
            if has_bn != batch_norm:
                hint = (
                    " (it looks like vgg19_bn, which has batch norm: set config.model.norm=batch)"
                    if has_bn
                    else " (it looks like vgg19, without batch norm: set config.model.norm=none)"
                )
            raise UserError(f"{source}: {key} is missing{hint}; {needed}")
        found = tuple(np.shape(state[key]))
        if found != shape:
            raise UserError(f"{source}: {key} has shape {found}, expected {shape}; {needed}")
        return np.asarray(state[key], np.float32)

    params, stats, cin = {}, {}, 3
    for index, layer in models.torchvision_layers(batch_norm):
        if layer == "M":
            continue
        weight = get(f"features.{index}.weight", (layer, cin, 3, 3))
        params[f"features_{index}"] = {
            "kernel": np.ascontiguousarray(weight.transpose(2, 3, 1, 0)),
            "bias": get(f"features.{index}.bias", (layer,)),
        }
        if batch_norm:
            bn = f"features.{index + 1}"
            params[f"features_{index + 1}"] = {
                "scale": get(f"{bn}.weight", (layer,)),
                "bias": get(f"{bn}.bias", (layer,)),
            }
            stats[f"features_{index + 1}"] = {
                "mean": get(f"{bn}.running_mean", (layer,)),
                "var": get(f"{bn}.running_var", (layer,)),
            }
        cin = layer
    return {"params": params, "batch_stats": stats}


def load_backbone(params, path: str | Path):
    """A copy of an encoder's ``params`` (``Encoder.init(...)["params"]``, a dict or FrozenDict
    with a ``"vgg"`` entry) whose backbone holds the ImageNet weights read from ``path``
    (float32 numpy arrays); the other leaves are the same objects. The backbone must be at
    width 1."""
    return place_backbone(params, vgg_params(load_state_dict(path), source=str(path)), path)


def place_backbone(params, vgg: dict, path: str | Path):
    """``load_backbone`` with the weights already converted (``vgg_params``), so one file read
    serves several encoders; ``path`` names them in the errors."""
    tree = unfreeze(params)
    if "vgg" not in tree:
        raise UserError(
            f"no 'vgg' backbone in the params to load {path} into: pass the encoder's "
            "init(...)['params'], not the whole variables"
        )
    for name, layer in vgg.items():
        for part, value in layer.items():
            have = tree["vgg"].get(name, {}).get(part)
            if have is None or tuple(have.shape) != value.shape:
                shape = "none" if have is None else tuple(have.shape)
                raise UserError(
                    f"the backbone's {name}/{part} has shape {shape} but {path} gives "
                    f"{value.shape}: ImageNet weights need config.model.width=1"
                )
    tree["vgg"] = vgg
    return freeze(tree) if isinstance(params, FrozenDict) else tree
