r"""Your own landmark data: a folder with images/ and landmarks.csv (see README, "Your own data").

python -m piaug.main --config=configs/folder.py --workdir=runs/mine \
    --config.data.dir=/path/to/folder --config.data.options.spacing=0.1

The spacing (mm per pixel) comes from a spacing_mm column of landmarks.csv, from
--config.data.options.spacing for every image, or from a DICOM image's header. Images of more
than 8 bits and DICOM files are windowed to 8 bits (--config.data.options.window, percentiles).
"""

from piaug import ablations, defaults


def get_config(arg=None):
    return ablations.apply(defaults.base_config("folder"), arg)
