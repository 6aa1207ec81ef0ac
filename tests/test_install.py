"""The install extras resolve: `pip install '.[cuda]'` and `'.[tpu]'` would get JAX's
accelerator wheels at piaug's pinned JAX version (a dry run against the package index)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # asks the package index: about 40 s
def test_the_accelerator_extras_resolve(tmp_path):
    report = tmp_path / "report.json"
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--dry-run",
            "--quiet",
            "--ignore-installed",
            "--report",
            str(report),
            f"{REPO}[cuda,tpu]",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if out.returncode != 0 and any(
        s in out.stderr for s in ("NewConnectionError", "ConnectTimeout", "Temporary failure")
    ):
        pytest.skip(f"the package index cannot be reached: {out.stderr.strip()[-300:]}")
    assert out.returncode == 0, out.stderr[-3000:]
    found = {
        i["metadata"]["name"].lower(): i["metadata"]["version"]
        for i in json.loads(report.read_text())["install"]
    }
    assert found["jax"] == found["jaxlib"] and found["jax"].startswith("0.10.")
    assert found["jax-cuda12-plugin"] == found["jax"]  # the GPU build of the same JAX
    assert "libtpu" in found
