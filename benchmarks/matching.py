r"""One-shot matching's similarity maps: piaug's contraction of unit vectors against the
broadcast cosine (piaug's before 2026-11-29, and the way CC2D's tester computes it).

python benchmarks/matching.py                          # evaluation: 8 images, 19 landmarks
python benchmarks/matching.py --images 1 --templates 512   # many templates into one image

Prints one JSON line. ``piaug_s`` is one jitted ``piaug.matching.match`` (the cpu preset's
setting: 192 x 192, 64-d, nearest upsampling, the scales' cosines summed) of ``--templates``
template vectors into ``--images`` images; ``broadcast_s``, measured in the same run, the same
peaks from cosine maps formed by broadcasting each template against every cell,
``(B, L, h, w, E)`` at once. ``speedup`` is their ratio; ``same_peaks`` whether both found
every peak at the same pixel, ``max_score_diff`` the largest difference of the peak scores
(float rounding).
"""

from __future__ import annotations

import argparse
import json

import jax
import jax.numpy as jnp
import numpy as np
from loss_window import _time  # beside this script

from piaug import losses, matching, models


def broadcast_match(query_features, templates, *, size, combine="sum"):
    """The peaks ``(B, L, 2)`` and scores of the summed (or multiplied, clamped) cosine maps
    with nearest upsampling, each map by broadcasting: the reference."""
    total = None
    for f, t, s in zip(query_features, templates, models.STRIDES, strict=True):
        sim = losses.cosine(f[:, None], t[None, :, None, None, :])  # (B, L, h, w)
        if combine == "product":
            sim = jnp.clip(sim, 0.0, 1.0)
        sim = jnp.repeat(jnp.repeat(sim, s, axis=-2), s, axis=-1)[..., : size[0], : size[1]]
        total = sim if total is None else (total * sim if combine == "product" else total + sim)
    *lead, h, w = total.shape
    flat = total.reshape(*lead, h * w)
    arg = jnp.argmax(flat, axis=-1)
    return jnp.stack([arg // w, arg % w], axis=-1), jnp.max(flat, axis=-1)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--image-size", type=int, default=192)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--templates", type=int, default=19)
    parser.add_argument("--embedding", type=int, default=64)
    parser.add_argument("--combine", default="sum", choices=matching.COMBINE)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    size = (args.image_size, args.image_size)
    features = [
        jnp.asarray(
            rng.normal(
                size=(args.images, args.image_size // s, args.image_size // s, args.embedding)
            ),
            jnp.float32,
        )
        for s in models.STRIDES
    ]
    templates = [
        jnp.asarray(rng.normal(size=(args.templates, args.embedding)), jnp.float32)
        for _ in models.STRIDES
    ]
    ours = jax.jit(lambda f, t: matching.match(f, t, size=size, combine=args.combine))
    ref = jax.jit(lambda f, t: broadcast_match(f, t, size=size, combine=args.combine))
    piaug_s, (peaks, scores) = _time(ours, (features, templates), args.repeats)
    broadcast_s, (ref_peaks, ref_scores) = _time(ref, (features, templates), args.repeats)
    print(
        json.dumps(
            {
                "benchmark": "matching",
                **vars(args),
                "piaug_s": round(piaug_s, 4),
                "broadcast_s": round(broadcast_s, 4),
                "speedup": round(broadcast_s / piaug_s, 1),
                "same_peaks": bool(jnp.all(peaks == ref_peaks)),
                "max_score_diff": float(jnp.abs(scores - ref_scores).max()),
                "devices": str(jax.devices()[0].platform),
            }
        )
    )


if __name__ == "__main__":
    main()
