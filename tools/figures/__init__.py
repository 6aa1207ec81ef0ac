"""The documentation's figures, each written by ``python -m tools.figures.NAME [output.png]``:

* ``overview``: the README's overview figure (``docs/overview.png``);
* ``montage``: synthetic subjects with their landmarks (``docs/synthetic_montage.png``).
"""
