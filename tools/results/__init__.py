"""The result files of ``docs/results/`` and the tables made from them.

Each module runs as ``python -m tools.results.NAME`` from the repository root (the commands
behind every result file are in ``docs/results/README.md``):

* ``tables``: the generated tables of README.md and docs/**/*.md, from the result files;
* ``collect_runs``, ``collect_seeds``, ``collect_detectors``: training runs, seeds sweeps and
  detectors gathered into one result file;
* ``template_spread``, ``template_policies``, ``landmark_errors``, ``matching_scales``: a run's
  encoder matched again (every template, every policy, per landmark, per scale);
* ``strip_augment``: an estimate's ranges without its per-patch arrays (a ranges file).
"""

from tools import REPO

RESULTS = REPO / "docs" / "results"  # where every result file is read from and written to


def command(module: str, argv: list[str]) -> str:
    """The command line that ran ``module`` (``tools.results.NAME``) with ``argv``, as the
    result files record it."""
    return " ".join(["python -m", module, *argv])
