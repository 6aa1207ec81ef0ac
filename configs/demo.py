r"""The built-in synthetic default: X-ray-like images, no download needed.

python -m piaug.main --config=configs/demo.py --workdir=runs/demo
"""

from piaug import defaults


def get_config(arg=None):
    del arg
    return defaults.base_config("synthetic")
