r"""ISBI 2015 cephalometric radiographs (19 landmarks, 0.1 mm per pixel), the paper's settings.

python -m piaug.main --config=configs/ceph.py --workdir=runs/ceph \
    --config.data.dir=/path/to/ISBI2015

The paper's settings, as the authors' code runs them: 384 x 384, 64 x 64 crops, batch 8,
400 epochs of 11 passes over the 150 training images (82,500 steps; their data loader lists
each image 11 times), the learning rate x0.8 every 50 epochs, the half-open loss window
[gt - 9, gt + 9) of their loss, exponential weight map gamma 0.3, groups at 2 and 4.5 bits,
alpha_hat 1, IIE over a disk of radius 10; one-shot matching with bilinear upsampling of the
similarity maps (their tester's), evaluated on Test1 + Test2 (``--config.eval.split=test``).

The folder holds the challenge release (RawImage/ + AnnotationsByMD/), the jpg + csv layout
(images/ + senior.csv, junior.csv) or the Kaggle mirror (cepha400/ + train_senior.csv, ...);
see piaug/data/ceph.py. Ground truth is the mean of the doctors present
(--config.data.options.annotation=senior|junior to pick one).

Presets (``--config=configs/ceph.py:NAME[,NAME...]``, applied in order):

* ``cpu``: a recipe for training from scratch on a 2-core CPU (no ImageNet weights), about 12
  minutes of steps per encoder alone (1.05 s a step; 11.2 minutes an encoder as the whole
  preset ran, every stage from info to analyze in 24.5):
  192 x 192, encoders at a quarter of VGG19's width with batch norm in the backbone, 700 steps of 4
  images with two 128 x 128 crops each and 64 anchors per crop (lr 1e-3 after a 50-step
  warm-up, then a cosine to 0), CC2D's later loss (temperature 0.1, no clamp, 64-d embedding)
  matched by the sum of the scales' cosines with bilinear upsampling, from the template's
  vectors interpolated at its landmarks (``eval.template_sampling``), crops on a 32-pixel
  grid, scaled (up to 1.25x), blurred and noised; the estimate's MI patches 32 pixels (the
  paper's 64 at 384). docs/from_scratch.md records how it was found and what it reaches. The
  detector (CC2D's second stage) at the same size and width: 2000 steps of 4 images with lr
  1e-3 (warm-up, cosine), rotated, scaled, shifted and jittered, the heatmap term balanced
  between the disks and the rest. CC2D-S2 (``detector.labels=pseudo``, the template added to
  every batch) within 30 minutes: ``--config.detector.batch_size=3
  --config.detector.steps=1900`` (3 images and the template a step, as the authors' batch: 25
  minutes as run).
* the ablations of ``piaug.ablations`` (e.g. ``gamma_0.1``, ``d_3.7``, ``estimated``,
  ``alpha_1.5``, ``footprint_32``, ``continuous``); ``launch/sweep.py`` runs whole sweeps.
"""

from piaug import ablations, defaults


def cpu(config):
    config.data.image_size = (192, 192)
    config.model.width = 0.25
    config.model.norm = "batch"
    config.model.embedding = 64
    config.loss.temperature = 0.1
    config.loss.clamp = False
    config.train.steps = 700
    config.train.batch_size = 4  # images; two crops of each (augment.crops_per_image)
    config.train.lr = 1e-3
    config.train.warmup_steps = 50
    config.train.schedule = "cosine"
    config.train.checkpoint_every = 100
    config.augment.crop_grid = 32
    config.augment.max_scale = 1.25
    config.augment.blur = 1.5
    config.augment.noise = 0.05
    config.augment.anchors_per_crop = 64
    config.augment.crops_per_image = 2
    config.data.crop_size = 128
    config.estimate.patch_size = 32  # the paper's 64-pixel patches at 384, scaled to 192
    config.eval.combine = "sum"
    config.eval.upsample = "bilinear"
    config.eval.template_sampling = "bilinear"
    config.eval.every = 100
    # The detector (stages pseudo, detector) at the same size and width: 2000 steps of 4
    # images (lr 1e-3 after 50 warm-up steps, cosine to 0), rotated (up to 10 degrees),
    # scaled (1.1x), shifted (5 %) and jittered (0.8-1.2), since it trains from scratch; the
    # heatmap term balanced between the disks and the rest (the authors' mean over all pixels
    # had the probe at 23 mm after 1500 steps, the balanced one at 2.3 after 500).
    config.detector.heatmap_loss = "balanced"
    config.detector.batch_size = 4
    config.detector.steps = 2000
    config.detector.lr = 1e-3
    config.detector.warmup_steps = 50
    config.detector.schedule = "cosine"
    config.detector.checkpoint_every = 200
    config.detector.max_rotation = 10.0
    config.detector.max_scale = 1.1
    config.detector.max_shift = 0.05
    config.detector.brightness = (0.8, 1.2)
    config.detector.contrast = (0.8, 1.2)


def get_config(arg=None):
    config = defaults.base_config("ceph")
    config.augment.gamma = 0.3
    config.train.epoch_passes = 11.0  # the authors' ceph_ssl datasets: num_repeat=10, 11 passes
    config.loss.window_mode = "half_open"
    config.eval.upsample = "bilinear"
    return ablations.apply(config, arg, {"cpu": cpu})
