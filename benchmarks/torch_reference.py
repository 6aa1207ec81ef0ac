r"""The reference for benchmarks/train_step.py: the same two encoders, loss and optimizers in
eager PyTorch (the CC2D authors' framework), timed at the same settings.

PyTorch is not a piaug dependency; run this with any Python that has ``torch`` and ``numpy``:

python benchmarks/torch_reference.py --image-size 384 --crop-size 64 --batch 8 --width-mult 1
python benchmarks/torch_reference.py --image-size 192 --crop-size 64 --batch 4 --width-mult 0.25

Prints one JSON line (``samples_per_s``, ``params``, ``peak_rss_mb``) to set against
train_step.py's on the same machine. The architecture follows piaug/models.py layer for layer
(VGG19 features, U-Net decoder with aligned-corner bilinear upsampling, RFB blocks on the
full-image encoder, 1x1 heads) and the loss piaug/losses.py (clamped cosine, whole map at
stride 32, +-9 cells at the finer strides); one Adam per encoder with weight decay 1e-4.
"""

from __future__ import annotations

import argparse
import json
import resource
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


class VGGFeatures(nn.Module):
    """torchvision's vgg19 ``features`` (conv with bias, ReLU, max-pools), returning the five
    pools; held as ``vgg.features`` like the authors' ``MyVgg``."""

    def __init__(self, width):
        super().__init__()
        layers, c_in = [], 3
        for v in VGG19:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(c_in, ch(v, width), 3, padding=1), nn.ReLU(inplace=True)]
                c_in = ch(v, width)
        self.features = nn.Sequential(*layers)

    def forward(self, x):
        pools = []
        for layer in self.features:
            x = layer(x)
            if isinstance(layer, nn.MaxPool2d):
                pools.append(x)
        return pools


class DoubleConv(nn.Module):
    """Two (3x3 conv with bias, BN, ReLU), as ``double_conv.{0,1,2,3,4,5}``."""

    def __init__(self, c_in, c_out):
        super().__init__()
        self.double_conv = nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, padding=1),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True),
            nn.Conv2d(c_out, c_out, 3, padding=1),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True),
        )

    def forward(self, x):
        return self.double_conv(x)


class Up(nn.Module):
    def __init__(self, c_in, c_out):
        super().__init__()
        self.conv = DoubleConv(c_in, c_out)

    def forward(self, x, skip):
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        return self.conv(torch.cat([skip, x], dim=1))


class BasicConv2d(nn.Module):
    """Conv (no bias) and BN, no ReLU."""

    def __init__(self, c_in, c_out, kernel, dilation=1):
        super().__init__()
        if isinstance(kernel, int):
            kernel = (kernel, kernel)
        padding = tuple(dilation * (k - 1) // 2 for k in kernel)
        self.conv = nn.Conv2d(c_in, c_out, kernel, padding=padding, dilation=dilation, bias=False)
        self.bn = nn.BatchNorm2d(c_out)

    def forward(self, x):
        return self.bn(self.conv(x))


class RFB(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.branch0 = nn.Sequential(BasicConv2d(c, c, 1))
        for b, k in ((1, 3), (2, 5), (3, 7)):
            branch = nn.Sequential(
                BasicConv2d(c, c, 1),
                BasicConv2d(c, c, (1, k)),
                BasicConv2d(c, c, (k, 1)),
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

    def __init__(self, width, embedding=16, rfb=True):
        super().__init__()
        self.vgg = VGGFeatures(width)
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
            setattr(self, f"trans_{level}", nn.Conv2d(w, embedding, 1))

    def forward(self, x):
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


def info_nce(feats, crop_feats, anchors, crop_anchors, window=9, half_open=False):
    """The clamped-cosine multi-scale InfoNCE; ``half_open`` windows [gt - w, gt + w) as the
    authors' loss, else |d| <= w as piaug's default."""
    total = 0.0
    b = torch.arange(anchors.shape[0])
    hi = window if half_open else window + 1
    for i, (f, g, s) in enumerate(zip(feats, crop_feats, STRIDES, strict=True)):
        h, w = f.shape[2:]
        target = torch.minimum(anchors // s, torch.tensor([h - 1, w - 1]))
        source = torch.minimum(crop_anchors // s, torch.tensor([g.shape[2] - 1, g.shape[3] - 1]))
        query = g[b, :, source[:, 0], source[:, 1]]  # (B, E)
        sim = F.cosine_similarity(f, query[:, :, None, None], dim=1, eps=1e-3).clamp(0, 1)
        positive = sim[b, target[:, 0], target[:, 1]]
        if i > 0:
            dr = torch.arange(h)[None, :, None] - target[:, 0, None, None]
            dc = torch.arange(w)[None, None, :] - target[:, 1, None, None]
            inside = (dr >= -window) & (dr < hi) & (dc >= -window) & (dc < hi)
            sim = sim.masked_fill(~inside, float("-inf"))
        total = total + (torch.logsumexp(sim.flatten(1), dim=1) - positive).mean()
    return total


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=384)
    parser.add_argument("--crop-size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--width-mult", type=float, default=1.0)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()

    torch.manual_seed(0)
    net, net_crop = Encoder(args.width_mult), Encoder(args.width_mult, rfb=False)
    opts = [torch.optim.Adam(n.parameters(), lr=1e-4, weight_decay=1e-4) for n in (net, net_crop)]
    rng = np.random.default_rng(0)
    s, c, b = args.image_size, args.crop_size, args.batch
    image = torch.from_numpy(rng.integers(0, 256, (b, 1, s, s), dtype=np.uint8))
    crop = torch.from_numpy(rng.uniform(0, 1, (b, 1, c, c)).astype(np.float32))
    anchors = torch.from_numpy(rng.integers(0, s, (b, 2)))
    crop_anchors = torch.from_numpy(rng.integers(0, c, (b, 2)))

    def step():
        for opt in opts:
            opt.zero_grad(set_to_none=True)
        loss = info_nce(net(image.float() / 255), net_crop(crop), anchors, crop_anchors)
        loss.backward()
        for opt in opts:
            opt.step()
        return float(loss)

    step()  # warm-up
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    per_step = (time.perf_counter() - start) / args.steps
    params = sum(p.numel() for n in (net, net_crop) for p in n.parameters())
    print(
        json.dumps(
            {
                "benchmark": "torch_reference",
                "torch": torch.__version__,
                "threads": torch.get_num_threads(),
                "image_size": s,
                "crop_size": c,
                "batch": b,
                "width_mult": args.width_mult,
                "samples_per_s": round(b / per_step, 3),
                "step_s": round(per_step, 4),
                "params": params,
                "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
