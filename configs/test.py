r"""A tiny synthetic config for tests: the whole run takes seconds.

python -m piaug.main --config=configs/test.py --workdir=/tmp/piaug_test
"""

import importlib.util
from pathlib import Path


def _demo():
    spec = importlib.util.spec_from_file_location("demo", Path(__file__).with_name("demo.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def get_config(arg=None):
    config = _demo().get_config(arg)
    config.data.num_images = 3
    config.data.size = (96, 80)
    config.data.num_landmarks = 5
    config.data.image_size = (64, 64)
    config.data.crop_size = 32
    config.data.workers = 0
    config.info.footprint = "disk(3)"
    config.info.num_figures = 2
    config.train.batch_size = 2
    return config
