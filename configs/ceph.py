r"""ISBI 2015 cephalometric radiographs (19 landmarks, 0.1 mm per pixel), the paper's settings.

python -m piaug.main --config=configs/ceph.py --workdir=runs/ceph \
    --config.data.dir=/path/to/ISBI2015

The folder holds the challenge release (RawImage/ + AnnotationsByMD/), the jpg + csv layout
(images/ + senior.csv, junior.csv) or the Kaggle mirror (cepha400/ + train_senior.csv, ...);
see piaug/data/ceph.py. Ground truth is the mean of the doctors present
(--config.data.options.annotation=senior|junior to pick one).
"""

from piaug import defaults


def get_config(arg=None):
    del arg
    config = defaults.base_config("ceph")
    config.augment.gamma = 0.3
    return config
