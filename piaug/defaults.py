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
    """Every field of a config, with its default, for dataset ``dataset``: one helper per
    section below (``_data``, ``_info``, ...)."""
    config = ml_collections.ConfigDict()
    config.seed = 0
    # A comma-separated subset of pipeline.STAGES: info, pretrain, estimate, train, pseudo,
    # detector, evaluate, analyze (always run in that order).
    config.stages = "info,pretrain,estimate,train,evaluate,analyze"
    config.force = False  # redo stages whose outputs exist

    config.data = _data(dataset)
    config.info = _info()
    # The crop view (docs/design.md 1): anchor sampling and the anchor group's jitter (Eq. 5, 6).
    config.augment = _augment()
    # The CC2D encoders (docs/design.md 1): F on the whole image (RFB blocks), F' on the crop.
    config.model = _model()
    # The multi-scale pixel InfoNCE: the whole map at stride 32, +-window cells at 16..2.
    config.loss = _loss()
    # The paper's comparison methods (Table 2), for the train stage's encoders (the baseline's
    # pretrain stage never uses them): none | zhu | mochi | unmix (piaug.mixing).
    config.mixing = _mixing()
    config.train = _train()
    # The augmentation-intensity estimate (Eq. 10) with the baseline encoder -> augment.json.
    config.estimate = _estimate()
    # One-shot matching (Eq. 4) and MRE/SDR (docs/design.md 1).
    config.eval = _eval(dataset)
    # The landmark detector of CC2D's second stage (piaug.detector): the pseudo stage writes
    # one-shot pseudo-labels, the detector stage trains one detector per init into
    # detectors/NAME/, and evaluate adds a row per detector. Defaults: the authors' TPL.
    config.detector = _detector()
    # The paper's analysis figures (the analyze stage) from the run's artefacts.
    config.analyze = _analyze()
    if data.spec(dataset).dims == 3:
        _volumes(config)
    return config


def _volumes(config: ml_collections.ConfigDict) -> None:
    """The defaults that differ for a dataset of volumes (docs/volumes.md): a 3-entry grid
    (D, H, W), cubic crops, the paper's H&N IIE patch of 5 voxels (a ball of radius 2)."""
    config.data.image_size = (64, 64, 64)
    config.data.crop_size = 32
    config.info.footprint = "ball(2)"
    config.analyze.footprints = ("ball(1)", "ball(2)", "ball(4)")  # Fig. 7
    config.eval.salient_distance = 4  # grid voxels
    # Fig. 2's anchors: every 16 voxels (64 in a 64^3 grid, each with its own cubic crop) in
    # two volumes; every 8 would be 512 a volume.
    config.analyze.anchor_stride = 16
    config.analyze.num_images = 2


def _data(dataset: str) -> ml_collections.ConfigDict:
    """``config.data``: the dataset, its reader options, the training and crop sizes, the cache."""
    c = ml_collections.ConfigDict()
    c.name = dataset  # one of piaug.data.NAMES: ceph | hand | folder | synthetic
    c.dir = ""  # the dataset's folder (the synthetic set needs none)
    c.split = data.spec(dataset).train_split
    c.options = dataset_options(dataset)
    c.image_size = (384, 384)  # training size (height, width)
    c.crop_size = 64  # side of the crop view
    c.cache_dir = ""  # prepared datasets; default $PIAUG_CACHE or ~/.cache/piaug
    # Also keep the IIE maps at the original resolution in the cache (float32: 18.6 MB for a
    # 2400 x 1935 radiograph, 2.8 GB for ISBI's 150), so that another data.image_size reads
    # them instead of computing them again (1.5 minutes for those 150 on 2 cores).
    c.cache_original_iie = False
    c.workers = 2  # input pipeline worker processes (0: in the main process)
    return c


def _info() -> ml_collections.ConfigDict:
    """``config.info``: the IIE footprint, the information groups and their figures."""
    c = ml_collections.ConfigDict()
    c.footprint = "disk(10)"  # disk(r) | square(s) | ball(r) | cube(s)
    c.thresholds = (2.0, 4.5)  # low < t0 <= medium < t1 <= high, bits
    c.num_figures = 4  # image | IIE | groups panels written to figures/
    return c


def _augment() -> ml_collections.ConfigDict:
    """``config.augment``: the crop view: anchors, each group's jitter, rotation, scale."""
    c = ml_collections.ConfigDict()
    c.anchors = "exponential"  # uniform | exponential (IIE^gamma) | piecewise
    c.gamma = 0.3
    c.d = 2.0  # piecewise: anchors where IIE >= d
    c.adaptive = True  # the anchor's group picks the jitter ranges
    # Without adaptive: the group whose ranges every anchor gets (the paper's "+ estimated"
    # row of Table 3 uses medium's; its Table 2 comparators use high's)
    c.fixed_group = "medium"
    c.continuous = False  # ranges interpolated in the anchor's IIE (per pixel)
    c.estimated = True  # the train stage uses the estimate stage's augment.json
    c.brightness = (0.85, 1.15)  # every group's, unless estimated or ranges_file
    c.contrast = (0.75, 1.25)
    c.ranges_file = ""  # an augment.json to use instead (ranges per group)
    c.max_rotation = 20.0  # degrees
    c.rotation_order = 3  # spline order of the rotation (3: cubic)
    # The crop also scaled about its anchor by a factor log-uniform in [1/max_scale, max_scale]:
    # 1 is the paper's (none); e.g. 1.25 for training from scratch across subjects' sizes.
    c.max_scale = 1.0
    # Crop corners on multiples of crop_grid pixels (32: the crop's cells are the image's at
    # every stride, so the positive cell shows the same anatomy); 0 is the paper's (anywhere).
    c.crop_grid = 0
    # The crop blurred (sigma up to `blur` px) and noised (std up to `noise`) after the jitter:
    # 0 is the paper's; they hide the pixel texture a crop shares with its own image.
    c.blur = 0.0
    c.noise = 0.0
    # Anchors per crop: 1 is the paper's; K > 1 draws K - 1 more inside the crop by the same
    # weight map, so each forward pass of the encoders trains K queries (loss: their mean).
    c.anchors_per_crop = 1
    # Crops per image: 1 is the paper's; M > 1 cuts M crops of each image (own anchors,
    # rotation, jitter), so a step runs the image encoder once for M crops (train.batch_size
    # stays the number of images).
    c.crops_per_image = 1
    return c


def _model() -> ml_collections.ConfigDict:
    """``config.model``: the two encoders."""
    c = ml_collections.ConfigDict()
    c.embedding = 16
    c.width = 1.0  # channel multiplier (1: VGG19's; ImageNet weights need 1)
    c.dtype = "float32"  # compute dtype: float32 | bfloat16 (mixed precision)
    c.pretrained = ""  # torchvision vgg19 state dict (.pth, .npz, .safetensors)
    # The backbone's normalisation after each conv: none (the paper's VGG19) | batch
    # (torchvision's vgg19_bn layout) | group; for training from scratch.
    c.norm = "none"
    return c


def _loss() -> ml_collections.ConfigDict:
    """``config.loss``: the multi-scale pixel InfoNCE."""
    c = ml_collections.ConfigDict()
    c.temperature = 1.0
    c.window = 9
    c.clamp = True  # cosines clamped to [0, 1] before the softmax
    # The window's cells: closed |d| <= window (2 window + 1 a side) | half_open
    # -window <= d < window (2 window a side, the authors' code: the paper configs use it).
    c.window_mode = "closed"
    return c


def _mixing() -> ml_collections.ConfigDict:
    """``config.mixing``: the comparison methods' settings."""
    c = ml_collections.ConfigDict()
    c.method = "none"
    c.pos_alpha = 2.0  # zhu: positive extrapolation lam = 1 + Beta(a, a)
    c.neg_alpha = 1.6  # zhu: negative interpolation mu ~ Beta(a, a)
    c.hard = 32  # mochi: the N hardest window negatives
    c.synthetic = 16  # mochi: s mixes of two hard negatives
    c.harder = 16  # mochi: s' mixes of the query and a hard negative
    c.harder_max = 0.5  # mochi: the query's share in those, U(0, harder_max)
    c.warmup = 0.0  # mochi: no synthetic negatives in this fraction of the steps
    c.alpha = 1.0  # unmix: lam ~ Beta(alpha, alpha)
    c.mixup_prob = 0.5  # unmix: Mixup with this probability, else CutMix
    return c


def _train() -> ml_collections.ConfigDict:
    """``config.train``: the encoders' optimisation (``piaug.train.TrainSettings``)."""
    c = ml_collections.ConfigDict()
    c.batch_size = 8  # global: split across hosts and devices
    c.epochs = 400
    # Passes over the training images in one epoch: the authors' data loaders list each image
    # several times (ceph 11, hand 6), so their "400 epochs" are 400 x 11 passes.
    c.epoch_passes = 1.0
    c.steps = 0  # if > 0, the number of steps (instead of epochs)
    c.lr = 1e-4  # Adam, one per encoder
    c.weight_decay = 1e-4  # added to the gradient, as PyTorch's Adam does
    c.lr_decay = 0.8  # the learning rate times lr_decay every lr_decay_epochs
    c.lr_decay_epochs = 50
    c.warmup_steps = 0  # linear warm-up of the learning rate from 0
    c.schedule = "step"  # step (x lr_decay every lr_decay_epochs) | cosine (to 0)
    c.checkpoint_every = 500  # steps
    c.keep_checkpoints = 2
    c.log_every = 10  # steps between metrics.jsonl rows
    # An existing baseline's checkpoints/ folder (same model and image size): the pretrain
    # stage then trains nothing, and estimate and evaluate use it.
    c.baseline = ""
    return c


def _estimate() -> ml_collections.ConfigDict:
    """``config.estimate``: the augmentation-intensity estimate."""
    c = ml_collections.ConfigDict()
    c.num_points = 16  # key points per information group in the template
    c.patch_size = 0  # side of the MI patches; 0: config.data.crop_size
    c.alpha = 1.0  # alpha_hat: the target is alpha_hat x the mean MI
    c.max_steps = 100  # most steps of +0.03 brightness / +0.04 contrast
    c.estimator = "joint"  # joint (Eq. 3) | count_vector (the authors' release)
    return c


def _eval(dataset: str) -> ml_collections.ConfigDict:
    """``config.eval``: one-shot matching, the template choice and the learning monitor (probe)."""
    c = ml_collections.ConfigDict()
    c.split = data.spec(dataset).eval_split
    c.template = ""  # an image id of data.split; "" chooses one without labels
    # Several templates (docs/templates.md): each matched into every image, the predictions
    # fused per landmark by `fusion` (weighted: the mean weighted by the peaks' scores | median
    # | mean | best: the most confident template's; weighted was best at K = 2, 3 and 5 over
    # three ceph baselines). `template` may then list K ids, comma-separated; else the single
    # choice and K - 1 more chosen to cover the images (templates.choose_set).
    c.templates = 1
    c.fusion = "weighted"
    # The label-free template choice (templates.POLICIES, docs/templates.md): salient (IIE
    # maxima matched most confidently into the others) | scp (SCP's: SIFT key points, each
    # scale's best cosine) | consensus (the template whose predictions lie nearest the
    # other candidates' median) | medoid (the feature-space medoid, no matching).
    c.template_policy = "salient"
    # K templates as a set (templates.choose_set): top (the K best-scored) | cover (each image
    # matched well by one member: facility location over the per-image scores).
    c.template_set = "cover"
    c.salient_points = 32  # per candidate template, IIE maxima ...
    c.salient_distance = 10  # ... this many grid pixels apart
    c.border = 0.1  # ... outside this fraction of the grid at each side
    # Candidates scored (evenly spaced among the labelled images; 0: all). Each is matched into
    # every image, so the cost grows with candidates x images: 32 keeps the hand set's 550
    # images near a minute on a laptop CPU where all of them take about 15.
    c.template_candidates = 32
    c.upsample = "nearest"  # nearest | bilinear: similarity maps to the grid
    c.subpixel = False  # parabolic refinement of each peak
    # The template's vector at each landmark: cell (the cell that holds it, the authors') |
    # bilinear (each map interpolated at the landmark; the template choice and the estimate's
    # key points keep the cell's).
    c.template_sampling = "cell"
    # How the scales' cosine maps combine: product (of cosines clamped to [0, 1], CC2D's) |
    # sum (unclamped; for encoders trained with loss.clamp=False).
    c.combine = "product"
    # Seek each landmark within this many grid pixels (voxels) of where the template has it:
    # a prior for images that lie roughly alike in their grid. 0: the whole image (the
    # paper's; on the 3-D demo's volumes 4 voxels brought both encoders ahead of the copy on
    # every seed, on the MNI case not, docs/volumes.md).
    c.search_radius = 0.0
    # The encoder's scales whose cosine maps are combined, by stride (e.g. (8, 4, 2)); (): all
    # five (the paper's). A 64^3 volume's stride-32 and 16 maps have 2 and 4 cells a side: on
    # the 3-D demo's volumes they pulled the peaks off (docs/volumes.md).
    c.scales = ()
    c.batch_size = 8
    c.num_overlays = 4  # figures/overlay_*.png of predicted vs true landmarks
    # The learning monitor (piaug.probe): every `every` training steps (0: never), one-shot
    # matching of the template (eval.template, else the split's typical image by its labels)
    # into the first probe_images images of eval.split; probe_mre_mm in metrics.jsonl.
    c.every = 500
    c.probe_images = 16
    return c


def _detector() -> ml_collections.ConfigDict:
    """``config.detector``: the second stage's detectors: labels, training, augmentation."""
    c = ml_collections.ConfigDict()
    # One detector per init: random | baseline | piaug (that encoder's backbone and decoder)
    # | imagenet (config.model.pretrained's backbone).
    c.inits = ("random",)
    # pseudo: the one-shot pseudo-labels of detector.pseudo_from's encoder, the template with
    # its true labels in every batch (CC2D-S2) | true: the true labels (supervised, few-shot).
    c.labels = "pseudo"
    c.pseudo_from = "baseline"  # baseline | piaug
    c.images = 0  # the first N images of data.split train it (0: all of them)
    c.labeled = 0  # labels=true: the first K of those (0: all N)
    # A run folder whose encoders (and template.json) the detectors use; '' for this run's.
    c.encoders = ""
    c.radius = 0.05  # of the larger side (19 pixels at 384)
    c.heatmap_weight = 2.0  # focal term against the offsets' L1
    # focal: the authors' term, averaged over every pixel | balanced: averaged over the disks'
    # pixels and the others apart (faster from scratch)
    c.heatmap_loss = "focal"
    c.decode = "vote"  # vote (the authors') | peak (heatmap maximum + offset)
    # Optimisation (piaug.train.TrainSettings's fields): Adam 3e-4, x0.1 every 30 of 90
    # epochs of 10 passes, 3 images a step (and the template, with pseudo-labels).
    c.batch_size = 3
    c.epochs = 90
    c.epoch_passes = 10.0
    c.steps = 0
    c.lr = 3e-4
    c.weight_decay = 1e-4
    c.lr_decay = 0.1
    c.lr_decay_epochs = 30
    c.warmup_steps = 0
    c.schedule = "step"
    c.checkpoint_every = 500
    c.keep_checkpoints = 2
    c.log_every = 10
    # Augmentation (input_pipeline.LandmarkAugment; the authors' TPL has none).
    c.max_rotation = 0.0  # degrees
    c.max_scale = 1.0
    c.max_shift = 0.0  # of each side
    c.brightness = (1.0, 1.0)
    c.contrast = (1.0, 1.0)
    return c


def _analyze() -> ml_collections.ConfigDict:
    """``config.analyze``: the analyze stage's figures."""
    c = ml_collections.ConfigDict()
    c.num_images = 4  # Fig. 2: images whose per-pixel loss is measured
    c.anchor_stride = 8  # Fig. 2: anchors on a grid of this step (grid pixels)
    c.gammas = (0.0, 0.01, 0.1, 0.3, 0.5, 1.0)  # Fig. 3 weight maps
    c.footprints = ("disk(10)", "disk(32)", "disk(128)")  # Fig. 7
    return c
