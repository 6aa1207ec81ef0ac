r"""The reference for benchmarks/train_step.py: the same two encoders, loss and optimizers in
eager PyTorch (the CC2D authors' framework), timed at the same settings.

PyTorch is not a piaug dependency; run this with any Python that has ``torch`` and ``numpy``:

python benchmarks/torch_reference.py --image-size 384 --crop-size 64 --batch 8 --width-mult 1
python benchmarks/torch_reference.py --image-size 192 --crop-size 64 --batch 4 --width-mult 0.25
python benchmarks/train_step.py --config configs/ceph.py:cpu --torch   # both, alternating

Prints one JSON line (``samples_per_s``, ``params``, ``peak_rss_mb``) to set against
train_step.py's on the same machine. The architecture follows piaug/models.py layer for layer
(VGG19 features, U-Net decoder with aligned-corner bilinear upsampling, RFB blocks on the
full-image encoder, 1x1 heads; ``--norm batch`` as ``model.norm=batch``) and the loss
piaug/losses.py (cosines, clamped or not, over a temperature, the whole map at stride 32, +-9
cells at the finer strides; several anchors per crop, several crops per image); one Adam per
encoder with weight decay 1e-4. ``--dims 3``: the same network and loss on volumes (3x3x3
convolutions, 2x2x2 pools, trilinear upsampling, the RFB's 1xk and kx1 pairs as three
convolutions of k along one axis each, a one-channel first convolution), as piaug's
``ModelSettings(dims=3)``.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

VGG19 = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M"]
VGG19 += [512, 512, 512, 512, "M", 512, 512, 512, 512, "M"]
STRIDES = (32, 16, 8, 4, 2)


def ch(c, width):
    return max(1, int(round(c * width)))


DIMS = 2  # set by build_step: the layers below are 2-D or 3-D


def conv(*args, **kwargs):
    return (nn.Conv2d if DIMS == 2 else nn.Conv3d)(*args, **kwargs)


def batch_norm(c):
    return (nn.BatchNorm2d if DIMS == 2 else nn.BatchNorm3d)(c)


class VGGFeatures(nn.Module):
    """torchvision's vgg19 ``features`` (conv with bias, ReLU, max-pools), returning the five
    pools; held as ``vgg.features`` like the authors' ``MyVgg``; ``norm="batch"`` adds a batch
    norm after each conv (``vgg19_bn``, piaug's ``model.norm=batch``)."""

    def __init__(self, width, norm="none"):
        super().__init__()
        layers, c_in = [], 3 if DIMS == 2 else 1
        for v in VGG19:
            if v == "M":
                layers.append((nn.MaxPool2d if DIMS == 2 else nn.MaxPool3d)(2, 2))
            else:
                layers.append(conv(c_in, ch(v, width), 3, padding=1))
                if norm == "batch":
                    layers.append(batch_norm(ch(v, width)))
                layers.append(nn.ReLU(inplace=True))
                c_in = ch(v, width)
        self.features = nn.Sequential(*layers)

    def forward(self, x):
        pools = []
        for layer in self.features:
            x = layer(x)
            if isinstance(layer, nn.MaxPool2d | nn.MaxPool3d):
                pools.append(x)
        return pools


class DoubleConv(nn.Module):
    """Two (3x3 conv with bias, BN, ReLU), as ``double_conv.{0,1,2,3,4,5}``."""

    def __init__(self, c_in, c_out):
        super().__init__()
        self.double_conv = nn.Sequential(
            conv(c_in, c_out, 3, padding=1),
            batch_norm(c_out),
            nn.ReLU(inplace=True),
            conv(c_out, c_out, 3, padding=1),
            batch_norm(c_out),
            nn.ReLU(inplace=True),
        )

    def forward(self, x):
        return self.double_conv(x)


class Up(nn.Module):
    def __init__(self, c_in, c_out):
        super().__init__()
        self.conv = DoubleConv(c_in, c_out)

    def forward(self, x, skip):
        mode = "bilinear" if DIMS == 2 else "trilinear"
        x = F.interpolate(x, scale_factor=2, mode=mode, align_corners=True)
        return self.conv(torch.cat([skip, x], dim=1))


class BasicConv2d(nn.Module):
    """Conv (no bias) and BN, no ReLU."""

    def __init__(self, c_in, c_out, kernel, dilation=1):
        super().__init__()
        if isinstance(kernel, int):
            kernel = (kernel,) * DIMS
        padding = tuple(dilation * (k - 1) // 2 for k in kernel)
        self.conv = conv(c_in, c_out, kernel, padding=padding, dilation=dilation, bias=False)
        self.bn = batch_norm(c_out)

    def forward(self, x):
        return self.bn(self.conv(x))


class RFB(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.branch0 = nn.Sequential(BasicConv2d(c, c, 1))
        for b, k in ((1, 3), (2, 5), (3, 7)):
            along = [  # k along one axis each, the last axis first: (1, k), (k, 1) in 2-D
                tuple(k if a == axis else 1 for a in range(DIMS)) for axis in reversed(range(DIMS))
            ]
            branch = nn.Sequential(
                BasicConv2d(c, c, 1),
                *(BasicConv2d(c, c, kernel) for kernel in along),
                BasicConv2d(c, c, 3, dilation=k),
            )
            setattr(self, f"branch{b}", branch)
        self.conv_cat = BasicConv2d(4 * c, c, 3)
        self.conv_res = BasicConv2d(c, c, 1)

    def forward(self, x):
        branches = [getattr(self, f"branch{b}")(x) for b in range(4)]
        return F.relu(self.conv_cat(torch.cat(branches, dim=1)) + self.conv_res(x))


class Encoder(nn.Module):
    """The CC2D encoder with the authors' module names (``vgg.features.N``,
    ``upK.conv.double_conv.N``, ``non_local_{5,4,3}``, ``trans_{5..1}``), so that its
    ``state_dict()`` is laid out as an authors' checkpoint (less ``up5``/``trans_0``, which
    nothing uses)."""

    def __init__(self, width, embedding=16, rfb=True, norm="none"):
        super().__init__()
        self.vgg = VGGFeatures(width, norm)
        c = lambda n: ch(n, width)  # noqa: E731
        self.up1 = Up(c(512) + c(512), c(256))
        self.up2 = Up(c(256) + c(256), c(128))
        self.up3 = Up(c(128) + c(128), c(64))
        self.up4 = Up(c(64) + c(64), c(128))
        widths = [c(512), c(256), c(128), c(64), c(128)]
        self.rfb = rfb
        if rfb:
            for level, w in zip((5, 4, 3), widths[:3], strict=True):
                setattr(self, f"non_local_{level}", RFB(w))
        for level, w in zip((5, 4, 3, 2, 1), widths, strict=True):
            setattr(self, f"trans_{level}", conv(w, embedding, 1))

    def forward(self, x):
        if DIMS == 2:
            x = x.expand(-1, 3, -1, -1)
        f0, f1, f2, f3, f4 = self.vgg(x)
        u1 = self.up1(f4, f3)
        u2 = self.up2(u1, f2)
        u3 = self.up3(u2, f1)
        u4 = self.up4(u3, f0)
        inputs = [f4, u1, u2, u3, u4]
        if self.rfb:
            inputs[:3] = [
                getattr(self, f"non_local_{level}")(y)
                for level, y in zip((5, 4, 3), inputs[:3], strict=True)
            ]
        return [getattr(self, f"trans_{5 - i}")(y) for i, y in enumerate(inputs)]


def info_nce(
    feats,
    crop_feats,
    anchors,
    crop_anchors,
    window=9,
    half_open=False,
    temperature=1.0,
    clamp=True,
    crops_per_image=1,
):
    """The multi-scale InfoNCE: cosines (clamped to [0, 1] with ``clamp``) over
    ``temperature``, the whole map at stride 32, the window about the target at the finer ones
    (``half_open``: [gt - w, gt + w) as the authors' loss, else |d| <= w as piaug's default).
    ``anchors`` and ``crop_anchors`` are ``(N, 2)`` or ``(N, A, 2)`` for N crops (A anchors
    each), crop n of image ``n // crops_per_image``; the mean over crops and anchors."""
    if anchors.ndim == 2:
        anchors, crop_anchors = anchors[:, None], crop_anchors[:, None]
    n, a, d = anchors.shape
    crops = torch.arange(n)
    images = crops // crops_per_image
    total = 0.0
    hi = window if half_open else window + 1
    for i, (f, g, s) in enumerate(zip(feats, crop_feats, STRIDES, strict=True)):
        size = f.shape[2:]
        target = torch.minimum(anchors // s, torch.tensor(size) - 1)  # (N, A, d)
        source = torch.minimum(crop_anchors // s, torch.tensor(g.shape[2:]) - 1)
        query = g.movedim(1, -1)[(crops[:, None], *source.unbind(-1))]  # (N, A, E)
        f = F.normalize(f, dim=1, eps=1e-3)[images]  # (N, E, h, w)
        sim = torch.einsum("nae,ne...->na...", F.normalize(query, dim=-1, eps=1e-3), f)
        if clamp:
            sim = sim.clamp(0, 1)
        sim = sim / temperature
        positive = sim[(crops[:, None], torch.arange(a)[None], *target.unbind(-1))]
        if i > 0:
            inside = torch.ones(sim.shape, dtype=torch.bool)
            for k, m in enumerate(size):
                shape = [1, 1] + [1] * d
                shape[2 + k] = m
                delta = torch.arange(m).reshape(shape) - target[..., k].reshape(n, a, *[1] * d)
                inside &= (delta >= -window) & (delta < hi)
            sim = sim.masked_fill(~inside, float("-inf"))
        total = total + (torch.logsumexp(sim.flatten(2), dim=2) - positive).mean()
    return total


def build_step(args):
    """One training step of both encoders at ``args``' settings on a fixed random batch, as a
    function returning the loss."""
    global DIMS
    DIMS = args.dims
    torch.manual_seed(0)
    net = Encoder(args.width_mult, args.embedding, rfb=True, norm=args.norm)
    net_crop = Encoder(args.width_mult, args.embedding, rfb=False, norm=args.norm)
    opts = [torch.optim.Adam(n.parameters(), lr=1e-4, weight_decay=1e-4) for n in (net, net_crop)]
    rng = np.random.default_rng(0)
    s, c, b, m = args.image_size, args.crop_size, args.batch, args.crops_per_image
    d = args.dims
    image = torch.from_numpy(rng.integers(0, 256, (b, 1, *(s,) * d), dtype=np.uint8))
    crop = torch.from_numpy(rng.uniform(0, 1, (b * m, 1, *(c,) * d)).astype(np.float32))
    anchors = torch.from_numpy(rng.integers(0, s, (b * m, args.anchors, d)))
    crop_anchors = torch.from_numpy(rng.integers(0, c, (b * m, args.anchors, d)))
    loss_args = {
        "window": args.window,
        "half_open": args.half_open,
        "temperature": args.temperature,
        "clamp": not args.no_clamp,
        "crops_per_image": m,
    }

    def step():
        for opt in opts:
            opt.zero_grad(set_to_none=True)
        feats, crop_feats = net(image.float() / 255), net_crop(crop)
        loss = info_nce(feats, crop_feats, anchors, crop_anchors, **loss_args)
        loss.backward()
        for opt in opts:
            opt.step()
        return float(loss.detach())

    step.params = sum(p.numel() for n in (net, net_crop) for p in n.parameters())
    return step


def parser():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--image-size", type=int, default=384)
    p.add_argument("--dims", type=int, default=2, choices=(2, 3), help="3: volumes")
    p.add_argument("--crop-size", type=int, default=64)
    p.add_argument("--batch", type=int, default=8, help="images")
    p.add_argument("--width-mult", type=float, default=1.0)
    p.add_argument("--norm", default="none", choices=["none", "batch"])
    p.add_argument("--embedding", type=int, default=16)
    p.add_argument("--anchors", type=int, default=1, help="anchors per crop")
    p.add_argument("--crops-per-image", type=int, default=1)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--no-clamp", action="store_true", help="unclamped cosines")
    p.add_argument("--window", type=int, default=9)
    p.add_argument("--half-open", action="store_true")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument(
        "--serve",
        action="store_true",
        help="for train_step.py --torch: after one warm-up step, read a count N per stdin "
        "line, run N steps, print their seconds per step",
    )
    return p


def serve(step) -> None:
    print(json.dumps({"ready": True, "params": step.params}), flush=True)
    for line in sys.stdin:
        count = int(line)
        start = time.perf_counter()
        for _ in range(count):
            step()
        print(json.dumps({"step_s": (time.perf_counter() - start) / count}), flush=True)


def main():
    args = parser().parse_args()
    step = build_step(args)
    step()  # warm-up
    if args.serve:
        serve(step)
        return
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    per_step = (time.perf_counter() - start) / args.steps
    print(
        json.dumps(
            {
                "benchmark": "torch_reference",
                "torch": torch.__version__,
                "threads": torch.get_num_threads(),
                "image_size": args.image_size,
                "crop_size": args.crop_size,
                "batch": args.batch,
                "width_mult": args.width_mult,
                "norm": args.norm,
                "embedding": args.embedding,
                "anchors": args.anchors,
                "crops_per_image": args.crops_per_image,
                "samples_per_s": round(args.batch / per_step, 3),
                "step_s": round(per_step, 4),
                "params": step.params,
                "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
