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
    config.data.name = "synthetic"
    config.data.dir = ""  # dataset folder (unused by the synthetic set)
    config.data.split = "train"
    config.data.num_images = 32
    config.data.size = (768, 768)  # original resolution (height, width) of the synthetic images
    config.data.num_landmarks = 19

    config.info = ml_collections.ConfigDict()
    config.info.footprint = "disk(10)"  # disk(r) | square(s) | ball(r) | cube(s)
    config.info.thresholds = (2.0, 4.5)  # low < t0 <= medium < t1 <= high, bits
    config.info.batch_size = 8  # images of one shape whose IIE maps are computed together
    config.info.num_figures = 4  # image | IIE | groups panels written to figures/
    config.info.save_maps = True  # iie_maps.npz (float16) in the workdir
    return config
