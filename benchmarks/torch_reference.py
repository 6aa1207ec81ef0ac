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


def conv_bn(c_in, c_out, kernel=3, dilation=1, relu=True):
    if isinstance(kernel, int):
        kernel = (kernel, kernel)
    padding = tuple(dilation * (k - 1) // 2 for k in kernel)
    layers = [
        nn.Conv2d(c_in, c_out, kernel, padding=padding, dilation=dilation, bias=False),
        nn.BatchNorm2d(c_out),
    ]
    return nn.Sequential(*layers, *([nn.ReLU(inplace=True)] if relu else []))


class Up(nn.Module):
    def __init__(self, c_in, c_out):
        super().__init__()
        self.conv = nn.Sequential(conv_bn(c_in, c_out), conv_bn(c_out, c_out))

    def forward(self, x, skip):
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        return self.conv(torch.cat([skip, x], dim=1))


class RFB(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.branches = nn.ModuleList([conv_bn(c, c, 1, relu=False)])
        for k in (3, 5, 7):
            self.branches.append(
                nn.Sequential(
                    conv_bn(c, c, 1, relu=False),
                    conv_bn(c, c, (1, k), relu=False),
                    conv_bn(c, c, (k, 1), relu=False),
                    conv_bn(c, c, 3, dilation=k, relu=False),
                )
            )
        self.fuse = conv_bn(4 * c, c, 3, relu=False)
        self.residual = conv_bn(c, c, 1, relu=False)

    def forward(self, x):
        fused = self.fuse(torch.cat([b(x) for b in self.branches], dim=1))
        return F.relu(fused + self.residual(x))


class Encoder(nn.Module):
    def __init__(self, width, embedding=16, rfb=True):
        super().__init__()
        self.vgg = VGGFeatures(width)
        c = lambda n: ch(n, width)  # noqa: E731
        self.up1 = Up(c(512) + c(512), c(256))
        self.up2 = Up(c(256) + c(256), c(128))
        self.up3 = Up(c(128) + c(128), c(64))
        self.up4 = Up(c(64) + c(64), c(128))
        widths = [c(512), c(256), c(128), c(64), c(128)]
        self.rfb = nn.ModuleList([RFB(w) for w in widths[:3]]) if rfb else None
        self.heads = nn.ModuleList([nn.Conv2d(w, embedding, 1) for w in widths])

    def forward(self, x):
        x = x.expand(-1, 3, -1, -1)
        f0, f1, f2, f3, f4 = self.vgg(x)
        u1 = self.up1(f4, f3)
        u2 = self.up2(u1, f2)
        u3 = self.up3(u2, f1)
        u4 = self.up4(u3, f0)
        inputs = [f4, u1, u2, u3, u4]
        if self.rfb is not None:
            inputs[:3] = [block(y) for block, y in zip(self.rfb, inputs[:3], strict=True)]
        return [head(y) for head, y in zip(self.heads, inputs, strict=True)]


def info_nce(feats, crop_feats, anchors, crop_anchors, window=9):
    total = 0.0
    b = torch.arange(anchors.shape[0])
    for i, (f, g, s) in enumerate(zip(feats, crop_feats, STRIDES, strict=True)):
        h, w = f.shape[2:]
        target = torch.minimum(anchors // s, torch.tensor([h - 1, w - 1]))
        source = torch.minimum(crop_anchors // s, torch.tensor([g.shape[2] - 1, g.shape[3] - 1]))
        query = g[b, :, source[:, 0], source[:, 1]]  # (B, E)
        sim = F.cosine_similarity(f, query[:, :, None, None], dim=1, eps=1e-3).clamp(0, 1)
        positive = sim[b, target[:, 0], target[:, 1]]
        if i > 0:
            rows = torch.arange(h)[None, :, None]
            cols = torch.arange(w)[None, None, :]
            inside = ((rows - target[:, 0, None, None]).abs() <= window) & (
                (cols - target[:, 1, None, None]).abs() <= window
            )
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
