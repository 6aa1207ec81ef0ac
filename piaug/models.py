"""The CC2D encoder in Flax linen (docs/design.md 1): VGG19 features, a U-Net decoder, RFB blocks
and 1x1 projection heads giving an embedding at strides 32, 16, 8, 4 and 2.

``Encoder(rfb=True)`` is the full-image encoder F, ``Encoder(rfb=False)`` the crop encoder F'
(the two do not share weights). ``width`` scales every channel count for small CPU configs; at
``width=1`` the backbone has the layout of torchvision's ``vgg19().features`` (the converter in
``piaug.pretrained`` loads its ImageNet weights, whose keys name the layers here: ``features_0``
is torchvision's ``features.0``).

``norm`` adds a normalisation after every backbone convolution, for training from scratch
(a plain VGG19 hardly learns from random weights): ``none`` is the paper's (and torchvision's
``vgg19``), ``batch`` torchvision's ``vgg19_bn`` layout (conv ``features_N``, batch norm
``features_{N+1}``, so its ImageNet file loads too), ``group`` a group norm of
``group_count(channels)`` groups (no batch statistics).

Inputs are grayscale in [0, 1], ``(B, H, W)`` or ``(B, H, W, 1)``, standing for the same image
in the three channels VGG expects (no ImageNet mean/std, as in CC2D): the first convolution
(``GrayConv``) applies its kernel summed over those channels to the one. H and W must be
multiples of 32.

Volumes (``dims=3``, docs/volumes.md): the same network with every kernel, pool and upsampling
in three dimensions, ``(B, D, H, W[, 1])`` in, ``(B, D/s, H/s, W/s, E)`` out; 3x3 kernels become
3x3x3, the RFB's 1xk and kx1 convolutions one along each of the three axes, and the first
convolution takes the one gray channel (no ImageNet weights exist for it).
"""

from __future__ import annotations

import dataclasses
import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from piaug.errors import require

# VGG configuration E: channels of the 3x3 convolutions, "M" a 2x2 max-pool.
VGG19 = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M")
VGG19 += (512, 512, 512, 512, "M")
STRIDES = (32, 16, 8, 4, 2)  # of the five outputs, coarse to fine
NORMS = ("none", "batch", "group")  # the backbone's normalisation after each conv
ENCODERS = ("image", "crop")  # F (the whole image, RFB blocks) and F' (the augmented crop)


def channels(c: int, width: float) -> int:
    return max(1, int(round(c * width)))


def upsample_matrix(n: int) -> np.ndarray:
    """(2n, n) linear interpolation weights of a x2 upsampling with aligned corners."""
    out = 2 * n
    if n == 1:
        return np.ones((out, 1), np.float32)
    pos = np.arange(out) * (n - 1) / (out - 1)
    lo = np.minimum(np.floor(pos).astype(int), n - 2)
    frac = pos - lo
    m = np.zeros((out, n), np.float64)
    m[np.arange(out), lo] = 1 - frac
    m[np.arange(out), lo + 1] += frac
    return m.astype(np.float32)


def upsample2x(x: jnp.ndarray) -> jnp.ndarray:
    """Bilinear x2 upsampling of ``(B, H, W, C)`` with aligned corners (PyTorch's
    ``align_corners=True``), as small matrix products, one per axis (trilinear for
    ``(B, D, H, W, C)``)."""
    letters = "dhw"[-(x.ndim - 2) :]
    mats = [jnp.asarray(upsample_matrix(n), x.dtype) for n in x.shape[1:-1]]
    spec = ",".join(f"{a.upper()}{a}" for a in letters)
    return jnp.einsum(f"{spec},b{letters}c->b{letters.upper()}c", *mats, x)


@jax.custom_vjp
def max_pool2x2(x: jnp.ndarray) -> jnp.ndarray:
    """2 x 2 max-pool of ``(B, H, W, C)`` with stride 2 (H and W even; 2 x 2 x 2 of
    ``(B, D, H, W, C)``), as ``nn.max_pool`` with the same gradient (the first maximum of each
    window in row-major order takes it, as XLA's select-and-scatter and PyTorch do), computed
    without the window reductions and index arrays that XLA's CPU backend builds for the
    gradient of ``reduce_window`` (docs/performance.md)."""
    return _windows(x).max(axis=tuple(range(2, x.ndim * 2 - 2, 2)))


def _windows(x):
    """``(B, n1, ..., C)`` -> ``(B, n1 / 2, 2, n2 / 2, 2, ..., C)``."""
    shape = [x.shape[0]]
    for n in x.shape[1:-1]:
        shape += [n // 2, 2]
    return x.reshape(*shape, x.shape[-1])


def _max_pool_fwd(x):
    y = max_pool2x2(x)
    return y, (x, y)


def _max_pool_bwd(res, g):
    x, y = res
    windows = _windows(x)
    spatial = x.ndim - 2
    taken = jnp.zeros(y.shape, bool)
    grads = []
    for offset in itertools.product(range(2), repeat=spatial):  # row-major order
        index = (slice(None),) + sum(((slice(None), o) for o in offset), ())
        first = (windows[index] == y) & ~taken
        taken = taken | first
        grads.append(jnp.where(first, g, jnp.zeros_like(g)))
    # (2,) * spatial offsets, stacked then moved next to their axes
    stacked = jnp.stack(grads, axis=-1).reshape(*y.shape, *(2,) * spatial)
    order = [0]
    for k in range(spatial):
        order += [1 + k, y.ndim + k]
    order.append(y.ndim - 1)
    return (stacked.transpose(order).reshape(x.shape),)


max_pool2x2.defvjp(_max_pool_fwd, _max_pool_bwd)


def group_count(c: int) -> int:
    """Groups of the ``group`` norm for ``c`` channels: 32 as is usual, fewer when ``c`` is
    small (the largest power of two dividing ``c`` and at most ``c // 2``, at least 1)."""
    g = 32
    while g > 1 and (c % g or c // g < 2):
        g //= 2
    return g


class VGGFeatures(nn.Module):
    """VGG19 (configuration E): the outputs of its five max-pools (64 channels at stride 2,
    128 at 4, 256 at 8, 512 at 16, 512 at 32, times ``width``); ``norm`` after each conv."""

    width: float = 1.0
    dtype: jnp.dtype = jnp.float32
    norm: str = "none"

    @nn.compact
    def __call__(self, x, train: bool = False):
        pools = []
        kernel = (3,) * (x.ndim - 2)
        for index, layer in torchvision_layers(self.norm == "batch"):
            if layer == "M":
                x = max_pool2x2(x)
                pools.append(x)
                continue
            c = channels(layer, self.width)
            if index == 0 and x.shape[-1] == 1 and x.ndim == 4:  # a gray image: see GrayConv
                x = GrayConv(c, dtype=self.dtype, name="features_0")(x)
            else:
                x = conv(c, kernel, dtype=self.dtype, name=f"features_{index}")(x)
            if self.norm == "batch":
                x = nn.BatchNorm(
                    use_running_average=not train,
                    momentum=0.9,
                    epsilon=1e-5,
                    dtype=self.dtype,
                    name=f"features_{index + 1}",
                )(x)
            elif self.norm == "group":
                x = nn.GroupNorm(group_count(c), dtype=self.dtype, name=f"norm_{index}")(x)
            x = nn.relu(x)
        return pools


class GrayConv(nn.Module):
    """VGG's first 3x3 convolution (3 input channels: its parameters are ``nn.Conv``'s, so
    ImageNet weights load) on a gray ``(B, H, W, 1)`` image that stands for the same image in
    all three channels: one channel convolved with the kernel summed over its inputs, the same
    output (to float rounding) for a third of the input and of its kernel gradient's work."""

    features: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        kernel = self.param(
            "kernel", nn.initializers.lecun_normal(), (3, 3, 3, self.features), jnp.float32
        )
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,), jnp.float32)
        y = jax.lax.conv_general_dilated(
            x.astype(self.dtype),
            kernel.sum(axis=2, keepdims=True).astype(self.dtype),
            (1, 1),
            "SAME",
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
        return y + bias.astype(self.dtype)


class VolumeConv(nn.Module):
    """A 3-D convolution with ``nn.Conv``'s parameters (``kernel`` ``(kd, kh, kw, I, O)``,
    ``bias``; the same initial values), stride 1, odd kernel sizes and SAME padding, computed as
    one 2-D convolution over the volume's slices: the ``kd`` depth taps of each slice are laid
    side by side in the channels (``kd * I``), the slices folded into the batch. On this CPU,
    XLA's own 3-D convolution took 3.7 to 11.0 times as long per operation
    (``benchmarks/conv_layers.py --dims 3``, docs/performance.md)."""

    features: int
    kernel_size: tuple[int, int, int]
    kernel_dilation: int = 1
    use_bias: bool = True
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        kd, kh, kw = self.kernel_size
        b, d, h, w, c = x.shape
        kernel = self.param(
            "kernel", nn.initializers.lecun_normal(), (kd, kh, kw, c, self.features), jnp.float32
        )
        r = int(self.kernel_dilation)
        x = x.astype(self.dtype)
        if kd == 1:
            slices, k2 = x.reshape(b * d, h, w, c), kernel[0]
        else:
            half = (kd - 1) * r // 2
            padded = jnp.pad(x, ((0, 0), (half, half), (0, 0), (0, 0), (0, 0)))
            taps = [padded[:, i * r : i * r + d] for i in range(kd)]
            slices = jnp.concatenate(taps, axis=-1).reshape(b * d, h, w, kd * c)
            k2 = kernel.transpose(1, 2, 0, 3, 4).reshape(kh, kw, kd * c, self.features)
        y = jax.lax.conv_general_dilated(
            slices,
            k2.astype(self.dtype),
            (1, 1),
            [((kh - 1) * r // 2,) * 2, ((kw - 1) * r // 2,) * 2],
            rhs_dilation=(r, r),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        ).reshape(b, d, h, w, self.features)
        if self.use_bias:
            bias = self.param("bias", nn.initializers.zeros_init(), (self.features,), jnp.float32)
            y = y + bias.astype(self.dtype)
        return y


def conv(features: int, kernel: tuple[int, ...], **kwargs) -> nn.Module:
    """``nn.Conv`` for images (a 2-entry ``kernel``), ``VolumeConv`` for volumes (3 entries):
    the same parameters either way."""
    if len(kernel) == 3:
        dilation = kwargs.pop("kernel_dilation", 1)
        return VolumeConv(features, tuple(kernel), kernel_dilation=dilation, **kwargs)
    return nn.Conv(features, kernel, **kwargs)


def torchvision_layers(batch_norm: bool = False) -> list[tuple[int, int | str]]:
    """VGG19's layers as (index in torchvision's ``features``, channels or "M"); each conv
    there is followed by a ReLU that takes an index of its own (and, in ``vgg19_bn``, by a
    batch norm before it)."""
    layers, index = [], 0
    for item in VGG19:
        layers.append((index, item))
        index += 1 if item == "M" else 3 if batch_norm else 2
    return layers


class ConvBN(nn.Module):
    """Convolution (no bias), batch norm (PyTorch's momentum 0.1, eps 1e-5), optional ReLU;
    ``kernel`` None: 3 along every spatial axis of the input."""

    features: int
    kernel: tuple[int, ...] | None = None
    dilation: int = 1
    relu: bool = True
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool):
        x = conv(
            self.features,
            (3,) * (x.ndim - 2) if self.kernel is None else self.kernel,
            kernel_dilation=self.dilation,
            use_bias=False,
            dtype=self.dtype,
            name="Conv_0",  # nn.Conv's own name here, for volumes too
        )(x)
        x = nn.BatchNorm(
            use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=self.dtype
        )(x)
        return nn.relu(x) if self.relu else x


class Up(nn.Module):
    """U-Net decoder step: bilinear x2, concatenated skip, two 3x3 conv-BN-ReLU."""

    features: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, skip, train: bool):
        x = jnp.concatenate([skip, upsample2x(x)], axis=-1)
        x = ConvBN(self.features, dtype=self.dtype)(x, train)
        return ConvBN(self.features, dtype=self.dtype)(x, train)


class RFB(nn.Module):
    """Receptive field block (CC2D's "non_local"): four branches of growing dilation
    (1; 1x3, 3x1, 3x3 dilated 3; 1x5, 5x1, 3x3 dilated 5; 1x7, 7x1, 3x3 dilated 7), concatenated
    and fused by a 3x3 conv, plus a 1x1 residual, then ReLU. Every conv is conv + BN. In 3-D
    each 1xk, kx1 pair is three convolutions of k along one axis each (the last axis first)."""

    features: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool):
        def conv(y, kernel, dilation=1):
            return ConvBN(self.features, kernel, dilation, relu=False, dtype=self.dtype)(y, train)

        spatial = x.ndim - 2
        one, three = (1,) * spatial, (3,) * spatial
        branches = [conv(x, one)]
        for k in (3, 5, 7):
            y = conv(x, one)
            for axis in reversed(range(spatial)):
                y = conv(y, tuple(k if a == axis else 1 for a in range(spatial)))
            branches.append(conv(y, three, dilation=k))
        fused = conv(jnp.concatenate(branches, axis=-1), three)
        return nn.relu(fused + conv(x, one))


def unet(x, width: float, dtype, norm: str, train: bool, dims: int = 2) -> list[jnp.ndarray]:
    """The U-Net that the encoders and the detector share, called inside a compact module
    (its submodules ``vgg``, ``up1``..``up4`` become that module's): grayscale
    ``(B, H, W[, 1])`` in [0, 1] (``dims=3``: ``(B, D, H, W[, 1])``) -> ``[f4, u1, u2, u3, u4]``,
    the backbone's stride-32 output and the decoder's at strides 16, 8, 4 and 2 (256, 128, 64,
    128 channels times ``width``)."""
    what = "images (B, H, W[, 1])" if dims == 2 else "volumes (B, D, H, W[, 1])"
    if x.ndim == dims + 1:
        x = x[..., None]
    if x.ndim != dims + 2 or x.shape[-1] != 1:
        raise ValueError(f"expected grayscale {what}, got shape {x.shape}")
    if any(n % 32 for n in x.shape[1:-1]):
        raise ValueError(f"the spatial sizes must be multiples of 32, got {x.shape[1:-1]}")
    x = x.astype(dtype)  # gray: VGG's first convolution stands for its three channels
    f0, f1, f2, f3, f4 = VGGFeatures(width, dtype, norm, name="vgg")(x, train)
    u1 = Up(channels(256, width), dtype, name="up1")(f4, f3, train)
    u2 = Up(channels(128, width), dtype, name="up2")(u1, f2, train)
    u3 = Up(channels(64, width), dtype, name="up3")(u2, f1, train)
    u4 = Up(channels(128, width), dtype, name="up4")(u3, f0, train)
    return [f4, u1, u2, u3, u4]


class Encoder(nn.Module):
    """The CC2D encoder: ``(B, H, W[, 1])`` in [0, 1] -> five ``(B, H/s, W/s, embedding)`` maps
    for the strides ``STRIDES`` (32 first). ``rfb`` adds the RFB blocks before the three coarsest
    heads (the full-image encoder); the embeddings are not normalised (the loss takes cosines)."""

    embedding: int = 16
    width: float = 1.0
    rfb: bool = True
    dtype: jnp.dtype = jnp.float32
    norm: str = "none"
    dims: int = 2  # 3: volumes (B, D, H, W[, 1]) -> (B, D/s, H/s, W/s, E)

    @nn.compact
    def __call__(self, x, train: bool = False) -> list[jnp.ndarray]:
        inputs = unet(x, self.width, self.dtype, self.norm, train, self.dims)
        if self.rfb:
            for i in range(3):
                inputs[i] = RFB(inputs[i].shape[-1], self.dtype, name=f"rfb{i}")(inputs[i], train)
        heads = []
        one = (1,) * self.dims
        for i, y in enumerate(inputs):
            head = conv(self.embedding, one, dtype=self.dtype, name=f"head{STRIDES[i]}")
            heads.append(head(y).astype(jnp.float32))
        return heads


def encoders(
    *,
    embedding: int = 16,
    width: float = 1.0,
    dtype: str = "float32",
    norm: str = "none",
    dims: int = 2,
) -> tuple[Encoder, Encoder]:
    """The full-image encoder F (with RFB blocks) and the crop encoder F' (without)."""
    dt = jnp.dtype(dtype)
    return (
        Encoder(embedding, width, rfb=True, dtype=dt, norm=norm, dims=dims),
        Encoder(embedding, width, rfb=False, dtype=dt, norm=norm, dims=dims),
    )


DTYPES = ("float32", "bfloat16", "float16")


@dataclasses.dataclass(frozen=True)
class ModelSettings:
    """What fixes the encoders' parameters: all a checkpoint needs to be restored
    (``piaug.checkpoints.restore_encoders``). ValueError, naming the field, for bad values."""

    embedding: int = 16
    width: float = 1.0  # channel multiplier (1: VGG19's)
    dtype: str = "float32"  # compute dtype; the parameters are float32 whatever it is
    norm: str = "none"  # the backbone's normalisation: none (the paper's) | batch | group
    dims: int = 2  # 2: images; 3: volumes

    def __post_init__(self):
        require(
            [
                ("dims", self.dims, self.dims in (2, 3), "use 2 (images) or 3 (volumes)"),
                ("norm", self.norm, self.norm in NORMS, f"use one of {', '.join(NORMS)}"),
                ("dtype", self.dtype, self.dtype in DTYPES, f"use one of {', '.join(DTYPES)}"),
                ("width", self.width, self.width > 0, "must be positive"),
                ("embedding", self.embedding, self.embedding >= 1, "must be at least 1"),
            ]
        )

    def encoders(self) -> tuple[Encoder, Encoder]:
        """The full-image encoder F and the crop encoder F'."""
        return encoders(
            embedding=int(self.embedding),
            width=float(self.width),
            dtype=self.dtype,
            norm=self.norm,
            dims=int(self.dims),
        )


def num_params(params) -> int:
    return int(sum(np.size(x) for x in jax.tree.leaves(params)))
