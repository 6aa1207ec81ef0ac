r"""A trained model's weights for PyTorch users: ``python -m piaug.export``.

    python -m piaug.export --run=runs/ceph --model=baseline --out=encoder.safetensors
    python -m piaug.export --run=runs/ceph --model=detector_random --out=detector.npz

An encoder's file holds its full-image encoder (the one that one-shot matching uses; the crop
encoder only serves pretraining). Writes a flat state dict (``.npz`` or ``.safetensors``) in
PyTorch's layouts: convolution
weights ``(out, in, kh, kw)``, batch norms as ``weight``, ``bias``, ``running_mean``,
``running_var``. The backbone takes torchvision's names (``features.0.weight``, ...,
``vgg19`` or ``vgg19_bn`` by ``config.model.norm``), so at ``config.model.width=1``
``torchvision.models.vgg19_bn().features`` loads it with ``load_state_dict(..., strict=False)``
after stripping the ``features.`` prefix as torchvision expects; every other layer keeps its
Flax path, dots for slashes (``up1.ConvBN_0.Conv_0.weight``, ``rfb0...``, ``head32.weight``;
the detector's ``up5_0...``, ``head.weight``: 3 x L channels, heatmaps then x then y offsets).
``from_state_dict`` reads such a file back into Flax variables.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax
import numpy as np

from piaug.errors import UserError

FORMATS = (".npz", ".safetensors")


def _name(path: tuple[str, ...]) -> str:
    """A module's Flax path as a PyTorch prefix: ``vgg/features_N`` -> ``features.N``."""
    if len(path) == 2 and path[0] == "vgg" and path[1].startswith("features_"):
        return "features." + path[1].split("_")[1]
    return ".".join(path)


def _modules(tree: dict, prefix=()) -> dict[tuple[str, ...], dict]:
    """``{module path: {leaf name: array}}`` of a nested dict of arrays."""
    out: dict = {}
    for key, value in tree.items():
        if isinstance(value, dict) or hasattr(value, "items"):
            out |= _modules(dict(value), (*prefix, key))
        else:
            out.setdefault(prefix, {})[key] = value
    return out


def to_state_dict(variables: dict) -> dict[str, np.ndarray]:
    """PyTorch names and layouts of Flax ``{"params", "batch_stats"}`` (one model's)."""
    params = _modules(jax.device_get(dict(variables["params"])))
    stats = _modules(jax.device_get(dict(variables.get("batch_stats", {}))))
    out = {}
    for path, leaves in params.items():
        name = _name(path)
        if "kernel" in leaves:  # a convolution: (kh, kw, in, out) -> (out, in, kh, kw)
            out[f"{name}.weight"] = np.asarray(leaves["kernel"]).transpose(3, 2, 0, 1)
            if "bias" in leaves:
                out[f"{name}.bias"] = np.asarray(leaves["bias"])
        elif "scale" in leaves:  # a batch or group norm
            out[f"{name}.weight"] = np.asarray(leaves["scale"])
            out[f"{name}.bias"] = np.asarray(leaves["bias"])
            if path in stats:
                out[f"{name}.running_mean"] = np.asarray(stats[path]["mean"])
                out[f"{name}.running_var"] = np.asarray(stats[path]["var"])
        else:
            raise ValueError(f"{'/'.join(path)}: a layer of unknown kind ({sorted(leaves)})")
    return {k: np.ascontiguousarray(v, np.float32) for k, v in out.items()}


def from_state_dict(state: dict[str, np.ndarray], like: dict) -> dict:
    """Flax ``{"params", "batch_stats"}`` shaped as ``like`` from ``to_state_dict``'s names."""
    params = _modules(dict(like["params"]))
    stats = _modules(dict(like.get("batch_stats", {})))

    def nest(flat: dict) -> dict:
        tree: dict = {}
        for path, leaves in flat.items():
            node = tree
            for key in path:
                node = node.setdefault(key, {})
            node.update(leaves)
        return tree

    new_params, new_stats = {}, {}
    for path, leaves in params.items():
        name = _name(path)
        if "kernel" in leaves:
            got = {"kernel": np.asarray(state[f"{name}.weight"]).transpose(2, 3, 1, 0)}
            if "bias" in leaves:
                got["bias"] = np.asarray(state[f"{name}.bias"])
        else:
            got = {"scale": state[f"{name}.weight"], "bias": state[f"{name}.bias"]}
            if path in stats:
                new_stats[path] = {
                    "mean": state[f"{name}.running_mean"],
                    "var": state[f"{name}.running_var"],
                }
        new_params[path] = got
    return {"params": nest(new_params), "batch_stats": nest(new_stats)}


def write(path: Path, state: dict[str, np.ndarray]) -> None:
    path = Path(path)
    if path.suffix not in FORMATS:
        raise UserError(f"--out={path}: give a file ending in {' or '.join(FORMATS)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".npz":
        np.savez(path, **state)
    else:
        from safetensors.numpy import save_file

        save_file(state, str(path))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m piaug.export", description=__doc__)
    parser.add_argument("--run", required=True, help="the --workdir of a trained piaug run")
    parser.add_argument(
        "--model", default="baseline", help="baseline | piaug (encoders) | detector_... (detectors)"
    )
    parser.add_argument("--out", required=True, help="FILE.npz or FILE.safetensors")
    args = parser.parse_args(argv)
    from piaug import api, checkpoints

    try:
        if args.model.startswith("detector"):
            model = api.load_detector(args.run, args.model)
            variables = model.variables
        else:
            model = api.load_encoder(args.run, args.model)
            settings = checkpoints.model_settings(model.config)
            variables = checkpoints.restore_encoders(model.checkpoint, settings)["image"]
        state = to_state_dict(variables)
        write(Path(args.out), state)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"export: {model.name} of {args.run}, {len(state)} tensors -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
