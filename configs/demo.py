r"""The built-in synthetic default: X-ray-like images, no download needed.

python -m piaug.main --config=configs/demo.py --workdir=runs/demo
"""

import ml_collections


def get_config(arg=None):
    del arg
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.stages = "info"  # comma-separated subset of piaug.pipeline.STAGES, run in order
    config.force = False  # redo stages whose outputs exist

    config.data = ml_collections.ConfigDict()
    config.data.name = "synthetic"  # ceph | hand | folder | synthetic
    config.data.dir = ""  # dataset folder (unused by the synthetic set)
    config.data.split = "train"
    config.data.num_images = 32  # synthetic only
    config.data.size = (768, 768)  # synthetic only: original resolution (height, width)
    config.data.num_landmarks = 19  # synthetic only
    config.data.image_size = (384, 384)  # training size (height, width)
    config.data.crop_size = 64  # side of the crop view
    config.data.cache_dir = ""  # prepared datasets; default $PIAUG_CACHE or ~/.cache/piaug
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
    config.augment.brightness = (0.85, 1.15)  # every group's ranges unless ranges_file is set
    config.augment.contrast = (0.75, 1.25)
    config.augment.ranges_file = ""  # augment.json of the estimate stage: ranges per group
    config.augment.max_rotation = 20.0  # degrees
    config.augment.rotation_order = 3  # spline order of the rotation (3: cubic)

    config.train = ml_collections.ConfigDict()
    config.train.batch_size = 8  # global: split across hosts and devices
    return config
