"""The install extras resolve: `pip install '.[cuda]'` and `'.[tpu]'` ask for JAX's accelerator
extras at piaug's JAX pin, and the package index holds a version of every package those extras
pin (the plugin, libtpu). A full `pip install --dry-run '.[cuda,tpu]'` does the same in about
45 s; this reads the installed JAX's own metadata and asks the index once per package."""

import importlib.metadata
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]


def _extras() -> dict[str, list[Requirement]]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return {
        name: [Requirement(r) for r in project["optional-dependencies"][name]]
        for name in ("cuda", "tpu")
    }


def test_the_extras_ask_for_jax_at_piaugs_pin():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pin = next(Requirement(r) for r in project["dependencies"] if r.startswith("jax>"))
    for name, extra in (("cuda", "cuda12"), ("tpu", "tpu")):
        (req,) = _extras()[name]
        assert req.name == "jax" and req.extras == {extra} and req.specifier == pin.specifier
    assert importlib.metadata.version("jax") in pin.specifier  # the JAX installed is pinned


@pytest.mark.slow  # asks the package index, a second or two per package
def test_the_index_holds_what_the_accelerator_extras_pin():
    wanted = {}
    for text in importlib.metadata.requires("jax"):
        req = Requirement(text)
        if req.marker and any(req.marker.evaluate({"extra": e}) for e in ("cuda12", "tpu")):
            if req.name not in ("jax", "jaxlib", "requests"):
                wanted[req.name] = req.specifier
    assert {"jax-cuda12-plugin", "libtpu"} <= set(wanted), wanted
    for name, specifier in wanted.items():
        out = subprocess.run(
            [sys.executable, "-m", "pip", "index", "versions", name],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if out.returncode != 0 and re.search(r"Connection|Temporary failure|timed out", out.stderr):
            pytest.skip(f"the package index cannot be reached: {out.stderr.strip()[-300:]}")
        assert out.returncode == 0, out.stderr[-2000:]
        line = next(x for x in out.stdout.splitlines() if x.startswith("Available versions:"))
        versions = [v.strip() for v in line.split(":", 1)[1].split(",")]
        assert any(v in specifier for v in versions), (name, str(specifier), versions[:5])
