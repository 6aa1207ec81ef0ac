"""The fields every config shares, and each dataset's reader options (configs/*.py build on it).

A config is ``base_config(dataset)`` plus its own changes; the reader options of ``dataset`` (its
registry entry's defaults) live in ``config.data.options`` and are passed to ``piaug.data.load``
as keyword arguments (a field left at None uses the reader's default).
"""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict

from piaug import data


def dataset_options(name: str) -> ml_collections.ConfigDict:
    """``config.data.options`` of dataset ``name``: its reader's options and defaults, from
    the dataset registry (``piaug.data.DATASETS``)."""
    spec = data.spec(name)
    options = ml_collections.ConfigDict()
    for key, value in spec.defaults.items():
        options[key] = config_dict.placeholder(spec.option_types[key]) if value is None else value
    return options


def base_config(dataset: str = "synthetic") -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0
    # A comma-separated subset of pipeline.STAGES: info, pretrain, estimate, train, pseudo,
    # detector, evaluate, analyze (always run in that order).
    config.stages = "info,pretrain,estimate,train,evaluate,analyze"
    config.force = False  # redo stages whose outputs exist

    config.data = ml_collections.ConfigDict()
    config.data.name = dataset  # one of piaug.data.NAMES: ceph | hand | folder | synthetic
    config.data.dir = ""  # the dataset's folder (the synthetic set needs none)
    config.data.split = data.spec(dataset).train_split
    config.data.options = dataset_options(dataset)
    config.data.image_size = (384, 384)  # training size (height, width)
    config.data.crop_size = 64  # side of the crop view
    config.data.cache_dir = ""  # prepared datasets; default $PIAUG_CACHE or ~/.cache/piaug
    # Also keep the IIE maps at the original resolution in the cache (float32: 18.6 MB for a
    # 2400 x 1935 radiograph, 2.8 GB for ISBI's 150), so that another data.image_size reads
    # them instead of computing them again (1.5 minutes for those 150 on 2 cores).
    config.data.cache_original_iie = False
    config.data.workers = 2  # input pipeline worker processes (0: in the main process)

    config.info = ml_collections.ConfigDict()
    config.info.footprint = "disk(10)"  # disk(r) | square(s) | ball(r) | cube(s)
    config.info.thresholds = (2.0, 4.5)  # low < t0 <= medium < t1 <= high, bits
    config.info.num_figures = 4  # image | IIE | groups panels written to figures/

    # The crop view (DESIGN.md 1): anchor sampling and the anchor group's jitter (Eq. 5, 6).
    config.augment = ml_collections.ConfigDict()
    config.augment.anchors = "exponential"  # uniform | exponential (IIE^gamma) | piecewise
    config.augment.gamma = 0.3
    config.augment.d = 2.0  # piecewise: anchors where IIE >= d
    config.augment.adaptive = True  # the anchor's group picks the jitter ranges
    # Without adaptive: the group whose ranges every anchor gets (the paper's "+ estimated"
    # row of Table 3 uses medium's; its Table 2 comparators use high's)
    config.augment.fixed_group = "medium"
    config.augment.continuous = False  # ranges interpolated in the anchor's IIE (per pixel)
    config.augment.estimated = True  # the train stage uses the estimate stage's augment.json
    config.augment.brightness = (0.85, 1.15)  # every group's, unless estimated or ranges_file
    config.augment.contrast = (0.75, 1.25)
    config.augment.ranges_file = ""  # an augment.json to use instead (ranges per group)
    config.augment.max_rotation = 20.0  # degrees
    config.augment.rotation_order = 3  # spline order of the rotation (3: cubic)
    # The crop also scaled about its anchor by a factor log-uniform in [1/max_scale, max_scale]:
    # 1 is the paper's (none); e.g. 1.25 for training from scratch across subjects' sizes.
    config.augment.max_scale = 1.0
    # Crop corners on multiples of crop_grid pixels (32: the crop's cells are the image's at
    # every stride, so the positive cell shows the same anatomy); 0 is the paper's (anywhere).
    config.augment.crop_grid = 0
    # The crop blurred (sigma up to `blur` px) and noised (std up to `noise`) after the jitter:
    # 0 is the paper's; they hide the pixel texture a crop shares with its own image.
    config.augment.blur = 0.0
    config.augment.noise = 0.0
    # Anchors per crop: 1 is the paper's; K > 1 draws K - 1 more inside the crop by the same
    # weight map, so each forward pass of the encoders trains K queries (loss: their mean).
    config.augment.anchors_per_crop = 1
    # Crops per image: 1 is the paper's; M > 1 cuts M crops of each image (own anchors,
    # rotation, jitter), so a step runs the image encoder once for M crops (train.batch_size
    # stays the number of images).
    config.augment.crops_per_image = 1

    # The CC2D encoders (DESIGN.md 1): F on the whole image (RFB blocks), F' on the crop.
    config.model = ml_collections.ConfigDict()
    config.model.embedding = 16
    config.model.width = 1.0  # channel multiplier (1: VGG19's; ImageNet weights need 1)
    config.model.dtype = "float32"  # compute dtype: float32 | bfloat16 (mixed precision)
    config.model.pretrained = ""  # torchvision vgg19 state dict (.pth, .npz, .safetensors)
    # The backbone's normalisation after each conv: none (the paper's VGG19) | batch
    # (torchvision's vgg19_bn layout) | group; for training from scratch.
    config.model.norm = "none"

    # The multi-scale pixel InfoNCE: the whole map at stride 32, +-window cells at 16..2.
    config.loss = ml_collections.ConfigDict()
    config.loss.temperature = 1.0
    config.loss.window = 9
    config.loss.clamp = True  # cosines clamped to [0, 1] before the softmax
    # The window's cells: closed |d| <= window (2 window + 1 a side) | half_open
    # -window <= d < window (2 window a side, the authors' code: the paper configs use it).
    config.loss.window_mode = "closed"

    # The paper's comparison methods (Table 2), for the train stage's encoders (the baseline's
    # pretrain stage never uses them): none | zhu | mochi | unmix (piaug.mixing).
    config.mixing = ml_collections.ConfigDict()
    config.mixing.method = "none"
    config.mixing.pos_alpha = 2.0  # zhu: positive extrapolation lam = 1 + Beta(a, a)
    config.mixing.neg_alpha = 1.6  # zhu: negative interpolation mu ~ Beta(a, a)
    config.mixing.hard = 32  # mochi: the N hardest window negatives
    config.mixing.synthetic = 16  # mochi: s mixes of two hard negatives
    config.mixing.harder = 16  # mochi: s' mixes of the query and a hard negative
    config.mixing.harder_max = 0.5  # mochi: the query's share in those, U(0, harder_max)
    config.mixing.warmup = 0.0  # mochi: no synthetic negatives in this fraction of the steps
    config.mixing.alpha = 1.0  # unmix: lam ~ Beta(alpha, alpha)
    config.mixing.mixup_prob = 0.5  # unmix: Mixup with this probability, else CutMix

    config.train = ml_collections.ConfigDict()
    config.train.batch_size = 8  # global: split across hosts and devices
    config.train.epochs = 400
    # Passes over the training images in one epoch: the authors' data loaders list each image
    # several times (ceph 11, hand 6), so their "400 epochs" are 400 x 11 passes.
    config.train.epoch_passes = 1.0
    config.train.steps = 0  # if > 0, the number of steps (instead of epochs)
    config.train.lr = 1e-4  # Adam, one per encoder
    config.train.weight_decay = 1e-4  # added to the gradient, as PyTorch's Adam does
    config.train.lr_decay = 0.8  # the learning rate times lr_decay every lr_decay_epochs
    config.train.lr_decay_epochs = 50
    config.train.warmup_steps = 0  # linear warm-up of the learning rate from 0
    config.train.schedule = "step"  # step (x lr_decay every lr_decay_epochs) | cosine (to 0)
    config.train.checkpoint_every = 500  # steps
    config.train.keep_checkpoints = 2
    config.train.log_every = 10  # steps between metrics.jsonl rows
    # An existing baseline's checkpoints/ folder (same model and image size): the pretrain
    # stage then trains nothing, and estimate and evaluate use it.
    config.train.baseline = ""

    # The augmentation-intensity estimate (Eq. 10) with the baseline encoder -> augment.json.
    config.estimate = ml_collections.ConfigDict()
    config.estimate.num_points = 16  # key points per information group in the template
    config.estimate.patch_size = 0  # side of the MI patches; 0: config.data.crop_size
    config.estimate.alpha = 1.0  # alpha_hat: the target is alpha_hat x the mean MI
    config.estimate.max_steps = 100  # most steps of +0.03 brightness / +0.04 contrast
    config.estimate.estimator = "joint"  # joint (Eq. 3) | count_vector (the authors' release)

    # One-shot matching (Eq. 4) and MRE/SDR (DESIGN.md 1).
    config.eval = ml_collections.ConfigDict()
    config.eval.split = data.spec(dataset).eval_split
    config.eval.template = ""  # an image id of data.split; "" chooses one without labels
    config.eval.salient_points = 32  # per candidate template, IIE maxima ...
    config.eval.salient_distance = 10  # ... this many grid pixels apart
    config.eval.border = 0.1  # ... outside this fraction of the grid at each side
    # Candidates scored (evenly spaced among the labelled images; 0: all). Each is matched into
    # every image, so the cost grows with candidates x images: 32 keeps the hand set's 550
    # images near a minute on a laptop CPU where all of them take about 15.
    config.eval.template_candidates = 32
    config.eval.upsample = "nearest"  # nearest | bilinear: similarity maps to the grid
    config.eval.subpixel = False  # parabolic refinement of each peak
    # The template's vector at each landmark: cell (the cell that holds it, the authors') |
    # bilinear (each map interpolated at the landmark; the template choice and the estimate's
    # key points keep the cell's).
    config.eval.template_sampling = "cell"
    # How the scales' cosine maps combine: product (of cosines clamped to [0, 1], CC2D's) |
    # sum (unclamped; for encoders trained with loss.clamp=False).
    config.eval.combine = "product"
    config.eval.batch_size = 8
    config.eval.num_overlays = 4  # figures/overlay_*.png of predicted vs true landmarks
    # The learning monitor (piaug.probe): every `every` training steps (0: never), one-shot
    # matching of the template (eval.template, else the split's typical image by its labels)
    # into the first probe_images images of eval.split; probe_mre_mm in metrics.jsonl.
    config.eval.every = 500
    config.eval.probe_images = 16

    # The landmark detector of CC2D's second stage (piaug.detector): the pseudo stage writes
    # one-shot pseudo-labels, the detector stage trains one detector per init into
    # detectors/NAME/, and evaluate adds a row per detector. Defaults: the authors' TPL.
    config.detector = ml_collections.ConfigDict()
    # One detector per init: random | baseline | piaug (that encoder's backbone and decoder)
    # | imagenet (config.model.pretrained's backbone).
    config.detector.inits = ("random",)
    # pseudo: the one-shot pseudo-labels of detector.pseudo_from's encoder, the template with
    # its true labels in every batch (CC2D-S2) | true: the true labels (supervised, few-shot).
    config.detector.labels = "pseudo"
    config.detector.pseudo_from = "baseline"  # baseline | piaug
    config.detector.images = 0  # the first N images of data.split train it (0: all of them)
    config.detector.labeled = 0  # labels=true: the first K of those (0: all N)
    # A run folder whose encoders (and template.json) the detectors use; '' for this run's.
    config.detector.encoders = ""
    config.detector.radius = 0.05  # of the larger side (19 pixels at 384)
    config.detector.heatmap_weight = 2.0  # focal term against the offsets' L1
    # focal: the authors' term, averaged over every pixel | balanced: averaged over the disks'
    # pixels and the others apart (faster from scratch)
    config.detector.heatmap_loss = "focal"
    config.detector.decode = "vote"  # vote (the authors') | peak (heatmap maximum + offset)
    # Optimisation (piaug.train.TrainSettings's fields): Adam 3e-4, x0.1 every 30 of 90
    # epochs of 10 passes, 3 images a step (and the template, with pseudo-labels).
    config.detector.batch_size = 3
    config.detector.epochs = 90
    config.detector.epoch_passes = 10.0
    config.detector.steps = 0
    config.detector.lr = 3e-4
    config.detector.weight_decay = 1e-4
    config.detector.lr_decay = 0.1
    config.detector.lr_decay_epochs = 30
    config.detector.warmup_steps = 0
    config.detector.schedule = "step"
    config.detector.checkpoint_every = 500
    config.detector.keep_checkpoints = 2
    config.detector.log_every = 10
    # Augmentation (input_pipeline.LandmarkAugment; the authors' TPL has none).
    config.detector.max_rotation = 0.0  # degrees
    config.detector.max_scale = 1.0
    config.detector.max_shift = 0.0  # of each side
    config.detector.brightness = (1.0, 1.0)
    config.detector.contrast = (1.0, 1.0)

    # The paper's analysis figures (the analyze stage) from the run's artefacts.
    config.analyze = ml_collections.ConfigDict()
    config.analyze.num_images = 4  # Fig. 2: images whose per-pixel loss is measured
    config.analyze.anchor_stride = 8  # Fig. 2: anchors on a grid of this step (grid pixels)
    config.analyze.gammas = (0.0, 0.01, 0.1, 0.3, 0.5, 1.0)  # Fig. 3 weight maps
    config.analyze.footprints = ("disk(10)", "disk(32)", "disk(128)")  # Fig. 7
    return config
