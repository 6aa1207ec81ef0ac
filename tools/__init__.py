"""The project's research tooling, beside the ``piaug`` package and not installed with it.

Run from the repository root (``python -m tools.results.tables``; the tests import it the same
way, ``pythonpath = ["."]`` in pyproject.toml):

* ``tools.results``: the scripts that gather runs into the result files of ``docs/results/``
  and write the tables of the pages from them;
* ``tools.figures``: the figures of the documentation (``docs/overview.png``,
  ``docs/synthetic_montage.png``).
"""

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]  # the repository root: tools/ sits in it
DOCS = REPO / "docs"
