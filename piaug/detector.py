"""The landmark detector of CC2D's second stage (TPL): its network, training and inference.

CC2D's detector (``UNet_Voting`` of the authors' ``cc2d-final``) is a VGG19 U-Net whose last
layer gives, per landmark, a heatmap and an x and a y offset map at the input's resolution;
its targets, loss and decoding (``targets``, ``loss``, ``decode``) are ``piaug.heatmaps``'
(importable from here too).

The network (``Detector``) shares its backbone and the first four decoder steps with the
full-image encoder (``piaug.models.unet``): so an encoder's checkpoint initialises the
detector's ``vgg`` and ``up1``..``up4`` (``CARRIED``; ``carry_over``), and a torchvision VGG19
file its backbone. The decoder normalises with batch norm as the encoder does (the authors' TPL
decoder uses instance norm), so that the pretrained decoder carries over with its statistics.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from piaug import models, tb, train
from piaug.data import input_pipeline
from piaug.data.transforms import LandmarkAugment
from piaug.errors import UserError, require
from piaug.heatmaps import DECODES, HEATMAP_LOSSES, decode, loss, targets
from piaug.train_step import TrainSettings, TrainState, learning_rate, optimizer

CARRIED = ("vgg", "up1", "up2", "up3", "up4")  # what an encoder's checkpoint initialises


class Detector(nn.Module):
    """``(B, H, W[, 1])`` in [0, 1] -> heatmap logits ``(B, H, W, L)`` and offsets
    ``(B, H, W, L, 2)`` (x, y, in units of the radius) for ``num_landmarks`` landmarks L."""

    num_landmarks: int
    width: float = 1.0
    dtype: jnp.dtype = jnp.float32
    norm: str = "none"

    @nn.compact
    def __call__(self, x, train: bool = False) -> tuple[jnp.ndarray, jnp.ndarray]:
        u4 = models.unet(x, self.width, self.dtype, self.norm, train)[-1]
        y = models.upsample2x(u4)  # the authors' up5: to full size, no skip
        c = models.channels(64, self.width)
        y = models.ConvBN(c, dtype=self.dtype, name="up5_0")(y, train)
        y = models.ConvBN(c, dtype=self.dtype, name="up5_1")(y, train)
        out = nn.Conv(3 * self.num_landmarks, (1, 1), dtype=self.dtype, name="head")(y)
        out = out.astype(jnp.float32)
        n = self.num_landmarks
        offsets = jnp.stack([out[..., n : 2 * n], out[..., 2 * n :]], axis=-1)
        return out[..., :n], offsets


@dataclasses.dataclass(frozen=True)
class DetectorSettings:
    """The detector's network and targets (``config.detector``'s fields of that name)."""

    radius: float = 0.05  # of the larger side of the image (the authors': 19 pixels at 384)
    heatmap_weight: float = 2.0  # of the focal term against the offsets' L1 (the authors': 2)
    heatmap_loss: str = "focal"  # focal (the authors', over all pixels) | balanced
    decode: str = "vote"

    def __post_init__(self):
        require(
            [
                ("radius", self.radius, 0 < self.radius < 1, "must be in (0, 1)"),
                ("heatmap_weight", self.heatmap_weight, self.heatmap_weight >= 0, ">= 0"),
                ("decode", self.decode, self.decode in DECODES, f"use one of {DECODES}"),
                (
                    "heatmap_loss",
                    self.heatmap_loss,
                    self.heatmap_loss in HEATMAP_LOSSES,
                    f"use one of {HEATMAP_LOSSES}",
                ),
            ]
        )

    def radius_px(self, image_size) -> float:
        """The disk's radius in pixels of ``image_size`` (the authors: ``int(max * 0.05)``)."""
        return float(max(1, int(max(image_size) * self.radius)))


def carry_over(variables: dict, encoder: dict, *, source: str) -> dict:
    """The detector's ``variables`` (``params``, ``batch_stats``) with ``CARRIED`` taken from
    a full-image encoder's; UserError naming ``source`` when they do not fit (another width or
    normalisation)."""
    out = {}
    for kind in ("params", "batch_stats"):
        mine, theirs = dict(variables.get(kind, {})), encoder.get(kind, {})
        for name in CARRIED:
            if name not in theirs:
                if name in mine and jax.tree.leaves(mine[name]):
                    raise UserError(f"{source}: the encoder has no {kind}/{name} to carry over")
                continue
            want = jax.tree.map(np.shape, mine.get(name))
            got = jax.tree.map(np.shape, theirs[name])
            if want != got:
                raise UserError(
                    f"{source}: the encoder's {kind}/{name} does not fit the detector (another "
                    "config.model.width or config.model.norm?): the detector needs the "
                    "encoder's model settings"
                )
            mine[name] = theirs[name]
        out[kind] = mine
    return out


def init_variables(net: Detector, key: jax.Array, image_size) -> dict:
    variables = net.init(key, jnp.zeros((1, *image_size), jnp.float32), train=False)
    return {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}


# --- training --------------------------------------------------------------------------------

NAME = "detector"  # the model's key in the train state (``piaug.train_step.TrainState``)
BATCH_KEYS = ("image", "landmarks")


def create_state(key: jax.Array, *, net: Detector, tx, image_size) -> TrainState:
    v = init_variables(net, key, image_size)
    return TrainState(
        jnp.zeros((), jnp.int32),
        {NAME: v["params"]},
        {NAME: v["batch_stats"]},
        {NAME: tx.init(v["params"])},
    )


def train_step(
    state: TrainState,
    batch: dict,
    *,
    net: Detector,
    tx,
    radius: float,
    heatmap_weight: float = 2.0,
    heatmap_loss: str = "focal",
    template: dict | None = None,
) -> tuple[TrainState, dict]:
    """One step of the detector: ``batch`` ``image`` float32 ``(B, H, W)`` in [0, 1] and
    ``landmarks`` ``(B, L, 2)`` (x, y); ``template`` (``image`` ``(H, W)`` and ``landmarks``
    ``(L, 2)``, or K of each) is appended to every batch when given (the authors' one-shot
    template with its true labels, beside the pseudo-labelled images; of K templates one a
    step, in turn, so that a step costs what it costs with one). Metrics: ``loss``,
    ``loss_heatmap``, ``loss_offset``, ``grad_norm``."""
    images, points = batch["image"].astype(jnp.float32), batch["landmarks"]
    if template is not None:
        fixed = jnp.asarray(template["image"], jnp.float32).reshape(-1, *images.shape[1:])
        at = jnp.asarray(template["landmarks"], points.dtype).reshape(-1, *points.shape[1:])
        turn = state.step % fixed.shape[0]  # K templates: one a step, in turn
        fixed = jax.lax.dynamic_index_in_dim(fixed, turn, keepdims=True)
        at = jax.lax.dynamic_index_in_dim(at, turn, keepdims=True)
        images, points = jnp.concatenate([images, fixed]), jnp.concatenate([points, at])
    size = images.shape[1:3]
    heat, offsets = jax.vmap(lambda p: targets(p, size, radius))(points)

    def loss_fn(params):
        (logits, pred), new = net.apply(
            {"params": params, "batch_stats": state.batch_stats[NAME]},
            images,
            train=True,
            mutable=["batch_stats"],
        )
        parts = loss(
            logits, pred, heat, offsets, heatmap_weight=heatmap_weight, heatmap_loss=heatmap_loss
        )
        return parts["loss"], (parts, new["batch_stats"])

    grads, (parts, stats) = jax.grad(loss_fn, has_aux=True)(state.params[NAME])
    updates, opt_state = tx.update(grads, state.opt_state[NAME], state.params[NAME])
    params = optax.apply_updates(state.params[NAME], updates)
    new_state = state.replace(
        step=state.step + 1,
        params={NAME: params},
        batch_stats={NAME: stats},
        opt_state={NAME: opt_state},
    )
    return new_state, {**parts, "grad_norm": optax.tree_utils.tree_norm(grads)}


def fit(
    workdir,
    examples: Sequence[dict],
    *,
    net: Detector,
    settings: DetectorSettings,
    train_settings: TrainSettings,
    image_size: tuple[int, int],
    augmentation: LandmarkAugment | None = None,
    template: dict | None = None,
    initialize: Callable[[dict], dict] | None = None,
    seed: int = 0,
    workers: int = 0,
    desc: str = "detector",
    probe: Callable[[dict, dict], dict] | None = None,
    probe_every: int = 0,
    tensorboard: Path | None = None,
) -> TrainState:
    """Trains ``net`` on ``examples`` (``id``, ``image`` uint8 ``(H, W)``, ``landmarks``
    ``(L, 2)`` x, y in that grid) into ``workdir`` (``checkpoints/``, ``metrics.jsonl``) with
    ``piaug.train.fit`` (resume, checkpoints, the NaN stop, data parallel). ``initialize``
    turns the fresh (random) ``{"params", "batch_stats"}`` into those to start from (e.g.
    ``carry_over`` of an encoder's); None keeps them. ``tensorboard``: a folder for
    TensorBoard's copy of the rows and images (``piaug.tb``)."""
    examples = [
        {
            "id": str(e["id"]),
            "image": np.asarray(e["image"], np.uint8),
            "landmarks": np.asarray(e["landmarks"], np.float32),
        }
        for e in examples
    ]
    image_size = tuple(int(s) for s in image_size)
    per_epoch = train_settings.steps_per_epoch(len(examples))
    tx = optimizer(train_settings, per_epoch)
    radius = settings.radius_px(image_size)
    fixed = None
    if template is not None:  # one template (H, W) or K (K, H, W), in every batch
        image = np.asarray(template["image"], np.float32) / 255.0
        image = image.reshape(-1, *image.shape[-2:])
        points = np.asarray(template["landmarks"], np.float32)
        fixed = {"image": image, "landmarks": points.reshape(len(image), *points.shape[-2:])}

    def start(state):
        variables = {"params": state.params[NAME], "batch_stats": state.batch_stats[NAME]}
        variables = initialize(variables)
        return state.replace(
            params={NAME: variables["params"]},
            batch_stats={NAME: variables["batch_stats"]},
            opt_state={NAME: tx.init(variables["params"])},
        )

    transform = augmentation or LandmarkAugment()
    return train.fit(
        workdir,
        init=functools.partial(create_state, net=net, tx=tx, image_size=image_size),
        initialize=None if initialize is None else start,
        step=functools.partial(
            train_step,
            net=net,
            tx=tx,
            radius=radius,
            heatmap_weight=settings.heatmap_weight,
            heatmap_loss=settings.heatmap_loss,
            template=fixed,
        ),
        loader=lambda start: input_pipeline.make_loader(
            examples,
            transform,
            global_batch_size=int(train_settings.batch_size),
            seed=int(seed),
            workers=int(workers),
            start_batch=start,
        ),
        batch_keys=BATCH_KEYS,
        settings=train_settings,
        total=train_settings.num_steps(len(examples)),
        schedule=learning_rate(train_settings, per_epoch),
        seed=seed,
        desc=desc,
        probe=probe,
        probe_every=probe_every,
        probe_model=NAME,
        tensorboard=tensorboard,
        panel=tb.landmark_panel,
    )


# --- inference -------------------------------------------------------------------------------


@functools.cache
def _apply(net: Detector):
    return jax.jit(functools.partial(net.apply, train=False))


def predict(
    net: Detector,
    variables: dict,
    images: np.ndarray,
    *,
    settings: DetectorSettings,
    batch_size: int = 8,
) -> tuple[np.ndarray, np.ndarray]:
    """Landmarks ``(N, L, 2)`` (x, y in pixels of the images' grid) and confidences
    ``(N, L)`` of ``images`` ``(N, H, W)`` uint8 by the detector with ``variables``."""
    images = np.asarray(images)
    radius = settings.radius_px(images.shape[1:3])
    apply = _apply(net)
    points, confidence = [], []
    for start in range(0, len(images), batch_size):
        chunk = np.asarray(images[start : start + batch_size], np.float32) / 255.0
        pad = batch_size - len(chunk)
        if pad:  # one shape for every batch: one compiled program
            chunk = np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]), np.float32)])
        logits, offsets = apply(variables, chunk)
        p, c = decode(logits, offsets, radius=radius, method=settings.decode)
        points.append(np.asarray(p)[: len(chunk) - pad])
        confidence.append(np.asarray(c)[: len(chunk) - pad])
    return np.concatenate(points), np.concatenate(confidence)


def saved_num_landmarks(ckpt_dir) -> int:
    """The number of landmarks of the detector saved in ``ckpt_dir`` (from its head's shape:
    three channels per landmark)."""
    from piaug.checkpoints import Checkpoints, shapes

    checkpoints = Checkpoints(ckpt_dir)
    try:
        if checkpoints.latest_step() is None:
            raise UserError(f"{ckpt_dir} holds no checkpoint: run the detector stage first")
        saved = shapes(checkpoints.metadata())
    finally:
        checkpoints.close()
    head = saved.get(f"params/{NAME}/head/kernel")
    if head is None:
        raise UserError(f"{ckpt_dir}: not a detector's checkpoint (no params/{NAME}/head)")
    return int(head[-1]) // 3


def restore(ckpt_dir, net: Detector, image_size, *, step: int | None = None) -> dict:
    """The detector's ``params`` and ``batch_stats`` of the checkpoint in ``ckpt_dir`` (its
    latest step, or ``step``), on one device; UserError when it holds none, or another
    detector's (other landmarks, width or normalisation)."""
    from piaug.checkpoints import Checkpoints, shapes

    abstract = jax.eval_shape(
        functools.partial(init_variables, net, image_size=tuple(image_size)), jax.random.key(0)
    )
    wanted = {"params": {NAME: abstract["params"]}, "batch_stats": {NAME: abstract["batch_stats"]}}
    checkpoints = Checkpoints(ckpt_dir)
    try:
        if checkpoints.latest_step() is None:
            raise UserError(f"{ckpt_dir} holds no checkpoint: run the detector stage first")
        step = checkpoints.latest_step() if step is None else step
        saved = {
            k: v for k, v in shapes(checkpoints.metadata(step)).items() if k.split("/")[0] in wanted
        }
        if saved != shapes(wanted):
            raise UserError(
                f"{ckpt_dir}: its checkpoint does not fit this detector (another number of "
                "landmarks, config.model.width or config.model.norm)"
            )
        state = checkpoints.restore_part(wanted, step)
    finally:
        checkpoints.close()
    return {"params": state["params"][NAME], "batch_stats": state["batch_stats"][NAME]}
