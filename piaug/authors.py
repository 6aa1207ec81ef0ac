r"""The authors' CC2D-SSL checkpoints (PyTorch) as piaug encoders.

The code of the paper (IGU-Aug, after CC2D's SSL stage) saves the two encoders as two PyTorch
state dicts: the full-image encoder ``net`` (``non_local=True``) and the crop encoder
``net_patch``. Their layers map one to one onto ``piaug.models.Encoder``:

=====================================  =============================================
authors' key                           piaug (``params`` / ``batch_stats``)
=====================================  =============================================
``vgg.features.N.weight``/``bias``     ``vgg/features_N/kernel``/``bias``
``upK.conv.double_conv.{0,3}``         ``upK/ConvBN_{0,1}/Conv_0/kernel`` (see below)
``upK.conv.double_conv.{1,4}``         ``upK/ConvBN_{0,1}/BatchNorm_0``
``non_local_{5,4,3}.*``                ``rfb{0,1,2}/ConvBN_*`` (branch0, branch1..3,
                                       conv_cat, conv_res, in that order)
``trans_{5,4,3,2,1}``                  ``head{32,16,8,4,2}``
=====================================  =============================================

``up5``, ``trans_0`` (stride 1) and the VGG classifier are not used by the loss or the matching
and are not read. The decoder's convolutions have biases in the authors' code and none in piaug:
batch norm in training mode cancels a bias exactly, and in evaluation mode
``BN(conv(x) + b) = BN'(conv(x))`` with the running mean ``mean - b``, so each bias is folded
into its batch norm's mean. Torch's conv weights ``(out, in, kh, kw)`` become Flax kernels
``(kh, kw, in, out)``; torch's running variance is kept as it is (it only enters evaluation).

Convert a pair once, then use it as any baseline (``config.train.baseline``)::

    python -m piaug.authors --image=model_epoch_399.pth --crop=model_patch_epoch_399.pth \
        --out=runs/authors/checkpoints
    python -m piaug.main --config=configs/ceph.py --workdir=runs/authors \
        --config.data.dir=/path/to/ISBI2015 --config.train.baseline=runs/authors/checkpoints \
        --config.stages=evaluate

Reading ``.pth`` needs PyTorch; an ``.npz`` or ``.safetensors`` with the same keys does not.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
from absl import app, flags

from piaug import models, pretrained
from piaug.errors import UserError

HEADS = {32: "trans_5", 16: "trans_4", 8: "trans_3", 4: "trans_2", 2: "trans_1"}
RFBS = {"rfb0": "non_local_5", "rfb1": "non_local_4", "rfb2": "non_local_3"}
_RFB_ORDER = ["branch0.0"] + [f"branch{b}.{i}" for b in (1, 2, 3) for i in range(4)]
_RFB_ORDER += ["conv_cat", "conv_res"]  # piaug's ConvBN_0 .. ConvBN_14, in creation order
_EPS = 1e-5


def _strip(state: dict) -> dict:
    """Keys without a ``module.`` prefix (a DataParallel-wrapped model's)."""
    out = {}
    for key, value in state.items():
        while key.startswith("module."):
            key = key[len("module.") :]
        out[key] = np.asarray(value, np.float32)
    return out


def settings(state_dict: dict, *, source: str = "the state dict") -> models.ModelSettings:
    """The ``ModelSettings`` (embedding, width) of an authors' encoder state dict."""
    state = _strip(state_dict)
    for key in ("vgg.features.0.weight", "trans_5.weight"):
        if key not in state:
            found = ", ".join(list(state)[:5]) or "no keys"
            raise UserError(
                f"{source} has no {key} ({found}): an authors' CC2D-SSL encoder state dict "
                "(UNet_Pretrained) is needed"
            )
    width = state["vgg.features.0.weight"].shape[0] / 64
    return models.ModelSettings(embedding=int(state["trans_5.weight"].shape[0]), width=width)


def _kernel(weight: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(weight.transpose(2, 3, 1, 0))


def _conv_bn(state: dict, conv: str, bn: str, *, conv_bias: bool) -> tuple[dict, dict]:
    """A piaug ``ConvBN``'s params and batch stats from the authors' ``conv`` and ``bn``
    prefixes, the conv's bias (if any) folded into the running mean."""
    mean = state[f"{bn}.running_mean"]
    if conv_bias:
        mean = mean - state[f"{conv}.bias"]
    params = {
        "Conv_0": {"kernel": _kernel(state[f"{conv}.weight"])},
        "BatchNorm_0": {"scale": state[f"{bn}.weight"], "bias": state[f"{bn}.bias"]},
    }
    stats = {"BatchNorm_0": {"mean": mean, "var": state[f"{bn}.running_var"]}}
    return params, stats


def variables(state_dict: dict, *, rfb: bool, source: str = "the state dict") -> dict:
    """``{"params", "batch_stats"}`` of ``models.Encoder(rfb=rfb)`` from an authors' encoder
    state dict (the full-image encoder has ``rfb``; the crop encoder not). UserError, naming
    the key, for a missing or misshapen array."""
    state = _strip(state_dict)
    model = settings(state, source=source)
    params: dict = {"vgg": {}}
    stats: dict = {}
    try:
        for index, layer in models.torchvision_layers():
            if layer != "M":
                params["vgg"][f"features_{index}"] = {
                    "kernel": _kernel(state[f"vgg.features.{index}.weight"]),
                    "bias": state[f"vgg.features.{index}.bias"],
                }
        for k in (1, 2, 3, 4):
            name = f"up{k}"
            params[name], stats[name] = {}, {}
            for j, (conv, bn) in enumerate(((0, 1), (3, 4))):
                prefix = f"{name}.conv.double_conv"
                p, s = _conv_bn(state, f"{prefix}.{conv}", f"{prefix}.{bn}", conv_bias=True)
                params[name][f"ConvBN_{j}"], stats[name][f"ConvBN_{j}"] = p, s
        if rfb:
            for ours, theirs in RFBS.items():
                params[ours], stats[ours] = {}, {}
                for j, block in enumerate(_RFB_ORDER):
                    p, s = _conv_bn(
                        state, f"{theirs}.{block}.conv", f"{theirs}.{block}.bn", conv_bias=False
                    )
                    params[ours][f"ConvBN_{j}"], stats[ours][f"ConvBN_{j}"] = p, s
        for stride, theirs in HEADS.items():
            params[f"head{stride}"] = {
                "kernel": _kernel(state[f"{theirs}.weight"]),
                "bias": state[f"{theirs}.bias"],
            }
    except KeyError as e:
        what = "full-image encoder (net, non_local=True)" if rfb else "crop encoder (net_patch)"
        raise UserError(
            f"{source}: {e.args[0]} is missing: the authors' {what} is needed"
        ) from None
    _check_shapes(params, stats, model, rfb, source)
    return {"params": params, "batch_stats": stats}


def _check_shapes(params, stats, model: models.ModelSettings, rfb: bool, source: str) -> None:
    from piaug import checkpoints

    index = models.ENCODERS.index("image" if rfb else "crop")
    name = models.ENCODERS[index]
    wanted = checkpoints.encoder_shapes(model)
    found = checkpoints.shapes({"params": {name: params}, "batch_stats": {name: stats}})
    wanted = {k: v for k, v in wanted.items() if k.split("/")[1] == name}
    if found != wanted:
        diff = sorted(k for k in found.keys() | wanted.keys() if found.get(k) != wanted.get(k))
        details = "; ".join(f"{k}: {found.get(k)} vs {wanted.get(k)}" for k in diff[:3])
        raise UserError(f"{source}: {len(diff)} arrays do not fit piaug's encoder ({details})")


def convert(image: str | Path, crop: str | Path, out: str | Path, *, step: int = 0) -> Path:
    """Writes the authors' encoder pair (state dict files ``image`` and ``crop``) as a piaug
    checkpoint at ``step`` in the folder ``out`` (a ``checkpoints/`` folder that
    ``config.train.baseline`` and ``piaug.checkpoints.restore_encoders`` read). Returns ``out``;
    UserError if ``out`` already holds a checkpoint (nothing is overwritten)."""
    from piaug import checkpoints, layout

    out = Path(out)
    if layout.has_checkpoint(out):
        raise UserError(f"{out} already holds a checkpoint: give an empty or new folder")
    pair, found = {}, []
    for name, path, rfb in (("image", image, True), ("crop", crop, False)):
        state = pretrained.read_arrays(path, what="the authors' checkpoint")
        pair[name] = variables(state, rfb=rfb, source=str(path))
        found.append(settings(state, source=str(path)))
    if found[0] != found[1]:
        raise UserError(
            f"{image} and {crop} are encoders of different sizes ({found[0]} vs {found[1]}): "
            "give the net and net_patch of one training run"
        )
    tree = {
        "step": np.int32(step),
        "params": {k: v["params"] for k, v in pair.items()},
        "batch_stats": {k: v["batch_stats"] for k, v in pair.items()},
    }
    ckpt = checkpoints.Checkpoints(out)
    ckpt.save(int(step), tree, force=True)
    ckpt.close()
    model = found[0]
    print(
        f"wrote {out} (step {step}): embedding {model.embedding}, width {model.width:g}; use it "
        f"with --config.train.baseline={out} and the same config.model fields"
    )
    return out


_FLAGS = flags.FLAGS


def main(argv) -> int:
    del argv
    epoch = re.search(r"(\d+)", Path(_FLAGS.image).stem)
    step = _FLAGS.step if _FLAGS.step >= 0 else int(epoch[1]) if epoch else 0
    try:
        convert(_FLAGS.image, _FLAGS.crop, _FLAGS.out, step=step)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    flags.DEFINE_string("image", None, "the full-image encoder's state dict (net)", required=True)
    flags.DEFINE_string("crop", None, "the crop encoder's state dict (net_patch)", required=True)
    flags.DEFINE_string("out", None, "the checkpoints/ folder to write", required=True)
    flags.DEFINE_integer("step", -1, "the checkpoint's step (default: the number in --image)")
    app.run(main)
