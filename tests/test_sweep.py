"""launch/sweep.py and the ablation presets (piaug.ablations)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TEST_XLA_FLAGS

from piaug import ablations

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from configs import ceph as ceph_config  # noqa: E402
from launch import sweep  # noqa: E402


def test_presets_express_the_papers_ablations():
    c = ceph_config.get_config("cpu,gamma_0.1")
    assert c.data.image_size == (192, 192) and c.augment.gamma == 0.1
    assert c.augment.anchors == "exponential" and not c.augment.estimated
    assert "estimate" not in c.stages  # Table 1: the weight map with the default jitter
    c = ceph_config.get_config("d_3.7")
    assert (c.augment.anchors, c.augment.d) == ("piecewise", 3.7)
    c = ceph_config.get_config("estimated")
    assert c.augment.estimated and not c.augment.adaptive
    assert ceph_config.get_config("adaptive").to_dict() == ceph_config.get_config().to_dict()
    assert ceph_config.get_config("alpha_1.5").estimate.alpha == 1.5
    assert ceph_config.get_config("footprint_128").info.footprint == "disk(128)"
    assert ceph_config.get_config("continuous").augment.continuous
    assert ceph_config.get_config("baseline").stages == "info,pretrain,evaluate,analyze"
    assert isinstance(ceph_config.get_config("gamma_0").augment.gamma, float)
    with pytest.raises(ValueError, match="unknown preset 'gamma'"):
        ceph_config.get_config("gamma")
    assert len(ablations.SWEEPS["table1_gamma"]) == 6 and len(ablations.SWEEPS["fig5_alpha"]) == 8


def test_print_lists_the_baseline_then_every_preset(tmp_path, capsys):
    assert (
        sweep.main(
            [
                "--config=configs/ceph.py:cpu",
                "--sweep=table1_d",
                f"--root={tmp_path}",
                "--print",
                "--",
                "--config.data.dir=/data/isbi",
            ]
        )
        == 0
    )
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 6
    assert (
        "--config=configs/ceph.py:cpu " in lines[0]
        and "--config.stages=info,pretrain,evaluate" in lines[0]
    )
    assert f"--config=configs/ceph.py:cpu,d_1 --workdir={tmp_path / 'd_1'}" in lines[1]
    assert all(
        f"--config.train.baseline={tmp_path / 'shared_baseline' / 'checkpoints'}" in x
        for x in lines[1:]
    )
    assert all(x.endswith("--config.data.dir=/data/isbi") for x in lines)
    assert not any(tmp_path.iterdir())


def test_an_existing_baseline_replaces_the_shared_one(tmp_path, capsys):
    (tmp_path / "ckpt").mkdir()
    args = ["--config=configs/test.py", "--sweep=continuous", f"--root={tmp_path / 'r'}"]
    assert sweep.main([*args, f"--baseline={tmp_path / 'ckpt'}", "--print"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and all(
        f"--config.train.baseline={tmp_path / 'ckpt'}" in x for x in lines
    )
    with pytest.raises(SystemExit):
        sweep.main([*args, f"--baseline={tmp_path / 'nope'}", "--print"])
    assert "is not a folder of checkpoints" in capsys.readouterr().err


def test_unknown_preset_of_a_sweep_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit):
        sweep.main(
            [
                "--config=configs/test.py",
                "--sweep=table3",
                f"--root={tmp_path}",
                "--presets=gamma_0.1",
                "--print",
            ]
        )
    assert "not in sweep table3" in capsys.readouterr().err


@pytest.mark.slow
def test_a_sweep_runs_and_gathers_its_table(tmp_path):
    """Table 2 on the tiny config: the shared baseline, then Un-mix with the high group's
    estimated ranges (the method whose step reads more of the batch), training its encoders
    with its method, the template the shared baseline's (the other methods' steps are
    test_mixing's)."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env["XLA_FLAGS"] = TEST_XLA_FLAGS  # the session's: its compiled programs serve the sweep
    out = subprocess.run(
        [
            sys.executable,
            str(REPO / "launch/sweep.py"),
            f"--config={REPO / 'configs/test.py'}",
            "--sweep=table2",
            "--presets=unmix_high",
            f"--root={tmp_path}",
            "--",
            "--config.mixing.hard=8",
            "--config.mixing.synthetic=4",
            "--config.mixing.harder=4",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    shared = json.loads((tmp_path / "shared_baseline" / "results.json").read_text())
    for method in ("unmix",):
        run = tmp_path / f"{method}_high"
        assert f"comparison method {method} (config.mixing)" in out.stderr
        config = json.loads((run / "config.json").read_text())
        assert config["mixing"]["method"] == method and config["augment"]["fixed_group"] == "high"
        assert not (run / "checkpoints").exists()  # the shared baseline
        assert (run / "augment.json").exists()  # the estimate gave the ranges
        results = json.loads((run / "results.json").read_text())
        assert results["piaug"]["template"] == shared["baseline"]["template"]
    assert "(high's for every anchor)" in out.stderr
    table = (tmp_path / "table2.md").read_text()
    assert "| unmix_high | piaug |" in table
    rows = (tmp_path / "table2.csv").read_text().splitlines()
    assert rows[0].startswith("run,encoder,mre_mm,sdr_2.0") and len(rows) == 2
    assert f"{results['piaug']['mre_mm']:.3f}".rstrip("0") in rows[1]


def test_gather_marks_unfinished_runs(tmp_path):
    rows = sweep.gather(tmp_path, ["a"])
    assert rows == [{"run": "a", "encoder": "(not finished)"}]
