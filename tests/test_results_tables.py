"""The result tables of README.md and docs/**/*.md are generated from the committed result files
(docs/results/*.json, written by the commands in docs/results/README.md, by the modules of
tools.results): a figure changed by hand, or a result file without its table, fails here."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tools.results import (
    RESULTS,
    collect_detectors,
    collect_runs,
    collect_seeds,
    landmark_errors,
    matching_scales,
    strip_augment,
    tables,
    template_policies,
    template_spread,
)

REPO = Path(__file__).resolve().parents[1]


def test_tables_equal_the_result_files():
    assert "demo" in tables.blocks((REPO / "README.md").read_text())
    for page in tables.PAGES:
        text = page.read_text()
        for name in tables.blocks(text):
            assert tables.render_one(tables.render(text), name) == tables.render_one(text, name), (
                f"{page.relative_to(REPO)}'s table {name!r} differs from docs/results: run "
                "python -m tools.results.tables"
            )


def test_every_table_has_its_block():
    found = [n for page in tables.PAGES for n in tables.blocks(page.read_text())]
    assert sorted(found) == sorted(tables.TABLES)  # each once
    assert tables.placement({page: tables.blocks(page.read_text()) for page in tables.PAGES}) == []


def test_the_pages_are_the_readme_and_every_docs_page():
    """A table may live in any page: README.md and every page under docs/, sub-folders too; a
    table in no page or in two is named."""
    assert tables.PAGES[0] == REPO / "README.md"
    assert REPO / "docs" / "from_scratch.md" in tables.PAGES
    assert REPO / "docs" / "results" / "README.md" in tables.PAGES
    assert tables.PAGES[1:] == sorted(tables.PAGES[1:])
    assert RESULTS == REPO / "docs" / "results"
    a, b = REPO / "README.md", REPO / "docs" / "x.md"
    problems = tables.placement({a: ["demo"], b: list(tables.TABLES)})
    assert problems == [f"table 'demo' is in 2 places: ['README.md', '{Path('docs/x.md')}']"]
    assert tables.placement({a: []})[0] == f"table {next(iter(tables.TABLES))!r} is in no page"


def test_a_changed_number_is_caught():
    text = (REPO / "README.md").read_text()
    demo = json.loads((RESULTS / "demo_results.json").read_text())
    figure = f"{demo['baseline']['mre_mm']:.2f}"
    block = tables.render_one(text, "demo")
    assert figure in block
    edited = text.replace(block, block.replace(figure, "0.01", 1))  # in the demo table only
    assert tables.render_one(tables.render(edited), "demo") != tables.render_one(edited, "demo")


def test_check_mode_exits_clean():
    out = subprocess.run(
        [sys.executable, "-m", "tools.results.tables", "--check"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_run_settings_read_the_estimate_patch_as_configure_does():
    """``collect_runs.overrides``: ``estimate.patch_size`` 0 means the crop size, so a run at
    32-pixel crops with 0 has the patches of a preset that sets 32, and one at 128 has not."""
    preset = collect_runs.preset_config("configs/ceph.py:cpu")
    assert preset["estimate"]["patch_size"] == 32 and preset["data"]["crop_size"] == 128

    def run(crop, patch):
        config = json.loads(json.dumps(preset))
        config["data"]["crop_size"], config["estimate"]["patch_size"] = crop, patch
        return collect_runs.overrides(config, preset)

    assert run(128, 32) == []
    assert run(32, 0) == ["data.crop_size=32"]
    assert run(128, 0) == ["estimate.patch_size=128"]


def test_probe_curves_name_their_template_when_the_run_set_one(tmp_path):
    """A run that set ``eval.template`` probed from that image, not from the typical one: its
    curve says so, and the entry records it."""
    preset = collect_runs.preset_config("configs/ceph.py:cpu")
    rows = [{"step": 10, "loss": 20.0, "samples_per_s": 2.0}, {"step": 10, "probe_mre_mm": 7.5}]
    for name, template in (("a", ""), ("b", "089")):
        config = json.loads(json.dumps(preset))
        config["eval"]["template"] = template
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps(config))
        (tmp_path / name / "metrics.jsonl").write_text("\n".join(map(json.dumps, rows)) + "\n")
    a, b = (collect_runs.collect(tmp_path / n, preset, "baseline") for n in "ab")
    assert (a["probe"]["template"], b["probe"]["template"]) == (None, "089")
    assert [collect_runs.curve_name(e) for e in (a, b)] == ["a", "b (probe template 089)"]
    assert b["overrides"] == ["eval.template=089"] and b["probe"]["mre_mm"] == [7.5]
    # RUN:ENCODER collects another encoder of a run; its curve names it
    assert collect_runs.run_and_encoder("runs/enc:piaug", "baseline") == (Path("runs/enc"), "piaug")
    assert collect_runs.run_and_encoder("runs/a:b", "baseline") == (Path("runs/a:b"), "baseline")
    assert collect_runs.curve_name(b | {"encoder": "piaug"}) == "b (piaug) (probe template 089)"
    # an evaluation under other settings (results.TAG.json) reports the settings it ran with
    entry = {"mre_mm": 4.0, "sdr": {}, "n_images": 1, "template": {"id": "075"}}
    entry["eval"] = {**preset["eval"], "template": "075", "template_sampling": "cell"}
    tagged = {"baseline": entry, "template_copy": {"mre_mm": 9.0}}
    (tmp_path / "b" / "results.template-075.json").write_text(json.dumps(tagged))
    c = collect_runs.collect(tmp_path / "b", preset, "baseline", "results.template-075.json")
    assert c["overrides"] == ["eval.template=075", "eval.template_sampling=cell"]
    assert c["mre_mm"] == 4.0 and c["template"] == "075"


def test_append_re_expresses_older_runs_when_the_preset_changed():
    """``collect_runs.append``: the preset went from 16 anchors and 1300 steps to 64 and 700;
    a run that kept the old preset's steps now overrides them, one that set 64 anchors no
    longer needs to, and a run that set 1 anchor keeps it. A file without the preset's fields
    cannot be appended to."""
    was = {"a": "a=16", "s": "s=1300", "lr": "lr=0.001"}
    now = {"a": "a=64", "s": "s=700", "lr": "lr=0.001"}
    assert collect_runs.rebase([], was, now) == ["a=16", "s=1300"]
    assert collect_runs.rebase(["a=64", "t=089"], was, now) == ["s=1300", "t=089"]
    assert collect_runs.rebase(["a=1", "s=700"], was, now) == ["a=1"]
    assert collect_runs.rebase(["lr=0.002"], was, was) == ["lr=0.002"]
    run = {"name": "old", "overrides": ["a=64"], "encoder": "baseline"}
    old = {"preset": "p", "encoder": "baseline", "command": "c0", "runs": [run]}
    new = {"preset": "p", "preset_values": now, "command": "c1", "runs": []}
    with pytest.raises(SystemExit, match="preset_values"):
        collect_runs.append(old, new)
    merged = collect_runs.append({**old, "preset_values": was}, new)
    assert merged["runs"][0]["overrides"] == ["s=1300"] and merged["preset_values"] == now
    assert merged["commands"] == ["c0", "c1"]


def test_collect_seeds_reads_a_seeds_other_results_file_and_refuses_mixed_templates(tmp_path):
    """``collect_seeds.gather``: seed 0's baseline is another run (``--baseline-runs``) and its
    rows are read from the evaluation with another template (``--results``); seed 1 from the
    runs' own ``results.json``. Rows of one seed with different templates are refused, and
    a name that matches two files of a run."""

    def entry(mre, template):
        out = {"mre_mm": mre, "std_mm": 1.0, "sdr": {}, "protocol": "grid", "n_images": 3}
        out |= {"per_landmark_mre_mm": [mre], "full_resolution": {"mre_mm": mre}}
        return out | ({"template": {"id": template}} if template else {})

    def write(folder, name, **rows):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(json.dumps({k: entry(*v) for k, v in rows.items()}))

    copy = (11.7, None)
    write(tmp_path / "enc", "results.json", template_copy=copy, baseline=(5.9, "089"))
    write(tmp_path / "enc", "results.t.c-32.json", template_copy=copy, baseline=(5.4, "075"))
    write(tmp_path / "seed_0" / "adaptive", "results.t.json", piaug=(5.6, "075"))
    write(tmp_path / "seed_0" / "adaptive", "results.json", piaug=(6.0, "075"))
    write(
        tmp_path / "seed_1" / "shared_baseline",
        "results.json",
        template_copy=copy,
        baseline=(6.1, "012"),
    )
    write(tmp_path / "seed_1" / "weightmap", "results.json", piaug=(6.2, "012"))
    seeds = collect_seeds.gather(
        tmp_path, ["0", "1"], {"0": str(tmp_path / "enc")}, {"0": "results.t*.json"}
    )
    assert {k: v["mre_mm"] for k, v in seeds["0"].items()} == {
        "template_copy": 11.7,
        "baseline": 5.4,
        "piaug": 5.6,
    }
    assert seeds["0"]["piaug"]["template"] == "075" and seeds["1"]["weightmap"]["mre_mm"] == 6.2
    with pytest.raises(SystemExit, match="different templates"):
        collect_seeds.gather(tmp_path, ["0"], {"0": str(tmp_path / "enc")}, {})
    with pytest.raises(SystemExit, match="names 2 files"):
        collect_seeds.gather(tmp_path, ["0"], {"0": str(tmp_path / "enc")}, {"0": "*.json"})
    # --pipeline-runs: one run's results.json gives every row
    write(
        tmp_path / "demo", "results.json", template_copy=copy, baseline=(9.0, "7"), piaug=(8.0, "7")
    )
    demo = {"1": str(tmp_path / "demo")}
    whole = collect_seeds.gather(tmp_path / "none", ["1"], demo, {}, whole=True)
    assert {k: v["mre_mm"] for k, v in whole["1"].items()} == {
        "template_copy": 11.7,
        "baseline": 9.0,
        "piaug": 8.0,
    }


def test_template_spread_ranks_the_chosen_template_among_all():
    """``template_spread.spread``: four templates' MREs; the chosen one is the second best."""
    out = template_spread.spread(np.array([5.0, 3.0, 7.0, 4.0]), ["a", "b", "c", "d"], "d")
    assert out["chosen_rank"] == 2 and out["chosen_mre_mm"] == 4.0
    assert out["best"] == {"id": "b", "mre_mm": 3.0} and out["worst"] == {"id": "c", "mre_mm": 7.0}
    assert out["quantiles_mm"]["0.5"] == 4.5 and out["mean_mm"] == 4.75
    assert out["mre_mm"] == {"a": 5.0, "b": 3.0, "c": 7.0, "d": 4.0}


def test_landmark_errors_summary_finds_a_match_on_another_landmark():
    """``landmark_errors.summary`` on two images of two landmarks 10 mm apart: landmark 1 is
    found exactly; landmark 2's match lands on landmark 1's true point in one image (nearest
    true landmark: 1 there), 2 mm off in the other; the copy is 3 mm to the right of the truth."""
    truth = np.array([[[0.0, 0.0], [10.0, 0.0]]] * 2)
    offset = np.array([[[0.0, 0.0], [-10.0, 0.0]], [[0.0, 0.0], [0.0, 2.0]]])
    copy_offset = np.full_like(truth, 0.0)
    copy_offset[..., 0] = 3.0
    errors = {
        "offset": offset,
        "copy_offset": copy_offset,
        "truth": truth,
    }
    first, second = landmark_errors.summary(errors)
    assert first["mre_mm"] == 0 and first["nearest_true_landmark_pct"] == {"1": 100.0}
    assert first["distance_to_copy_median_mm"] == 3.0 and first["corr_with_copy"] is None
    assert second["mre_mm"] == 6.0 and second["over_10mm_pct"] == 0.0
    assert second["nearest_true_landmark_pct"] == {"1": 50.0, "2": 50.0}
    assert second["mean_offset_mm"] == [-5.0, 1.0] and second["copy_mean_offset_mm"] == [3.0, 0.0]


def test_matching_scales_row_on_hand_made_offsets():
    """``matching_scales.row``: two images, two landmarks, errors 0, 3, 5 and 1 mm."""
    offset = np.array([[[0.0, 0.0], [3.0, 0.0]], [[3.0, 4.0], [0.0, -1.0]]])
    row = matching_scales.row(offset)
    assert row["mre_mm"] == 2.25 and row["per_landmark_mre_mm"] == [2.5, 2.0]
    assert row["sdr_2mm_pct"] == 50.0 and row["sdr_4mm_pct"] == 75.0


def test_strip_augment_caps_the_upper_ends_and_the_file_loads_as_ranges(tmp_path):
    """``strip_augment --max-brightness/--max-contrast``: upper ends above the cap come down to
    it, ends below stay, low ends stay; the caps are recorded and the file reads as
    ``config.augment.ranges_file``; a cap under a low end is refused."""
    group = {"target_mi": 1.0, "mi_mean": 1.0, "num_points": 4, "iie_mean": 3.0, "mi": [1, 2]}
    source = {
        "template": {"id": "001"},
        "encoder": "runs/x/checkpoints",
        "num_images": 3,
        "patch_size": 32,
        "groups": {
            "low": {**group, "brightness": [0.5, 2.0], "contrast": [0.3, 1.1], "iie_mean": 1.0},
            "medium": {**group, "brightness": [0.6, 1.1], "contrast": [0.4, 2.5]},
            "high": {**group, "brightness": [0.7, 1.5], "contrast": [0.5, 1.7], "iie_mean": 5.0},
        },
    }
    (tmp_path / "augment.json").write_text(json.dumps(source))
    out = tmp_path / "capped.json"
    strip_augment.main(
        [str(tmp_path / "augment.json"), str(out), "--max-brightness=1.15", "--max-contrast=1.25"]
    )
    capped = json.loads(out.read_text())
    assert capped["capped"] == {"brightness": 1.15, "contrast": 1.25}
    got = {g: (v["brightness"], v["contrast"]) for g, v in capped["groups"].items()}
    assert got == {
        "low": ([0.5, 1.15], [0.3, 1.1]),
        "medium": ([0.6, 1.1], [0.4, 1.25]),
        "high": ([0.7, 1.15], [0.5, 1.25]),
    }
    assert "mi" not in capped["groups"]["low"]

    from piaug.data import input_pipeline

    jitter = input_pipeline.load_jitter(out)
    assert np.allclose(np.asarray(jitter.brightness)[:, 1], [1.15, 1.1, 1.15])
    with pytest.raises(SystemExit, match="--max-contrast=0.2 is not above the low end 0.3"):
        strip_augment.main([str(tmp_path / "augment.json"), str(out), "--max-contrast=0.2"])


def test_collect_detectors_compares_on_the_detectors_own_images(tmp_path):
    """A detector evaluated on two images; the encoders of a reference run on three: the
    encoders' figure is the mean of their per-image MREs on the detector's two."""
    run = tmp_path / "det"
    folder = run / "detectors" / "detector_random"
    (folder / "checkpoints" / "10").mkdir(parents=True)
    config = collect_detectors.preset_config("configs/test.py")
    config["detector"]["steps"] = 10
    (run / "config.json").write_text(json.dumps(config))
    seen = {"init": "random", "labels": "true", "ids": ["a"], "template": None}
    (folder / "examples.json").write_text(json.dumps(seen))
    rows = [{"step": 10, "loss": 1.0, "samples_per_s": 2.0}, {"step": 10, "probe_mre_mm": 3.0}]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    entry = {"mre_mm": 2.0, "sdr": {}, "full_resolution": {"mre_mm": 2.1}, "n_images": 2}
    entry |= {"ids": ["b", "c"], "per_image_mre_mm": [1.0, 3.0], "per_landmark_mre_mm": [2.0]}
    (run / "results.json").write_text(json.dumps({"detector_random": entry}))
    reference = {
        "baseline": {
            "ids": ["a", "b", "c"],
            "per_image_mre_mm": [9.0, 4.0, 6.0],
            "template": {"id": "t"},
        }
    }
    interpolated = {  # an evaluation with other settings, as its entry records them
        "baseline": {
            "ids": ["b", "c"],
            "per_image_mre_mm": [2.0, 3.0],
            "template": {"id": "u"},
            "eval": {"template_sampling": "bilinear"},
        }
    }
    (run / "results.template-u.json").write_text(json.dumps(interpolated))
    references = [reference, collect_detectors.reference_results(f"{run}=results.template-*")]
    preset = collect_detectors.preset_config("configs/test.py")
    (d,) = collect_detectors.collect(run, preset, references)
    assert d["overrides"] == ["detector.steps=10"] and d["steps"] == 10
    assert d["minutes"] == pytest.approx(10 * 3 / 2.0 / 60, abs=0.01)  # batch 3, 2 samples/s
    assert d["encoders_on_same_images"] == {
        "baseline (template t)": 5.0,  # (4 + 6) / 2, not 9
        "baseline (template u, interpolated)": 2.5,
    }
    assert d["probe"]["mre_mm"] == [3.0]


def test_collect_runs_append_keeps_the_files_runs_and_replaces_a_rerun():
    """``--append``: runs whose folders are gone stay in the file, a run collected again
    replaces its entry, the commands accumulate; another preset is refused."""
    old = {
        "preset": "configs/ceph.py:cpu",
        "encoder": "baseline",
        "preset_values": {},
        "command": "first",
        "runs": [
            {"name": "b", "mre_mm": 1.0, "overrides": []},
            {"name": "a", "mre_mm": 2.0, "overrides": []},
        ],
    }
    new = {
        "preset": "configs/ceph.py:cpu",
        "encoder": "baseline",
        "preset_values": {},
        "command": "second",
        "runs": [{"name": "c", "encoder": "baseline"}, {"name": "b", "encoder": "baseline"}],
    }
    merged = collect_runs.append(old, new)
    assert [r["name"] for r in merged["runs"]] == ["a", "b", "c"]
    assert "mre_mm" not in merged["runs"][1]  # b is the new entry
    assert merged["commands"] == ["first", "second"] and merged["command"] == "second"
    with pytest.raises(SystemExit, match="configs/hand.py"):
        collect_runs.append(old, {**new, "preset": "configs/hand.py"})


def test_template_spread_reuses_an_earlier_files_mres_and_checks_the_chosen(tmp_path):
    """``template_spread.reused``: a run's entry of an earlier file (found by its folder and
    encoder, whatever results file it named) summarised against the template of the run's
    results file now; an MRE that disagrees with the results file is refused. ``agreement``
    adds the rank correlation of every two entries."""
    run = tmp_path / "runs" / "a"
    run.mkdir(parents=True)
    mre = {"t1": 5.0, "t2": 3.0, "t3": 7.0}
    earlier = {
        "command": "c",
        f"{run}=results.old*.json": template_spread.spread(
            np.array([5.0, 3.0, 7.0]), list(mre), "t1"
        ),
        f"{run}:piaug": template_spread.spread(np.array([4.0, 2.0, 9.0]), list(mre), "t1"),
    }
    (tmp_path / "old.json").write_text(json.dumps(earlier))
    (run / "results.new.json").write_text(
        json.dumps({"baseline": {"template": {"id": "t2"}, "mre_mm": 3.0}})
    )
    out = template_spread.reused(str(tmp_path / "old.json"), run, "baseline", "results.new.json")
    assert out["chosen"] == "t2" and out["chosen_rank"] == 1 and out["mre_mm"] == mre
    (run / "results.json").write_text(
        json.dumps({"piaug": {"template": {"id": "t2"}, "mre_mm": 2.5}})
    )
    with pytest.raises(SystemExit, match="!= the results file's 2.5"):
        template_spread.reused(str(tmp_path / "old.json"), run, "piaug", "")
    with pytest.raises(SystemExit, match="0 entries"):
        template_spread.reused(str(tmp_path / "old.json"), tmp_path / "other", "baseline", "")
    template_spread.agreement(earlier)
    assert earlier["spearman_between_entries"] == {
        f"{run}=results.old*.json | {run}:piaug": pytest.approx(1.0)
    }


def test_over_templates_compares_rows_template_by_template(monkeypatch):
    """``tables.over_templates``: each row's mean over templates per seed, and piaug's
    difference from the baseline on the same templates with how many templates it wins."""

    def entry(*values):
        return {"mre_mm": dict(zip(("t1", "t2", "t3", "t4"), values, strict=True))}

    data = {
        "command": "c",
        "runs/enc=results.x*.json": entry(5.0, 6.0, 7.0, 8.0),
        "runs/enc:piaug=results.x*.json": entry(4.0, 5.0, 8.0, 7.0),
        "runs/cpu5/seed_0/weightmap:piaug": entry(5.0, 6.0, 7.0, 8.0),
        "runs/cpu5/seed_1/shared_baseline": entry(6.0, 6.0, 6.0, 6.0),
        "runs/cpu5/seed_1/adaptive:piaug": entry(5.0, 5.0, 5.0, 5.0),
        "runs/cpu5/seed_1/weightmap:piaug": entry(7.0, 7.0, 7.0, 7.0),
        "spearman_between_entries": {"a | b": 0.5},
    }
    monkeypatch.setattr(tables, "_load", lambda name: data)
    lines = tables.over_templates().splitlines()
    assert lines[0].startswith("| mean over the 150 templates (mm) | seed 0 | seed 1 |")
    assert lines[2].endswith("| 6.50 | 6.00 | 6.25 +- 0.35 |")  # the baseline
    assert "| 6.00 | 5.00 | 5.50 +- 0.71 |" in lines[4]  # piaug
    assert lines[6].endswith("| -0.50 (3 of 4 better) | -1.00 (4 of 4 better) | -0.75 +- 0.35 |")
    assert "+0.00 (0 of 4 better) | +1.00 (0 of 4 better)" in lines[5]  # the weight map


def test_template_policies_score_round_trips_and_judge_against_the_spread():
    """``template_policies``: three candidates of four points; candidate 0's points come back
    where they began, 1's one pixel off, 2's ten (none consistent: no affine fit, last); each
    policy's choice is looked up in the spread, with its rank and the correlation of its
    scores with the MREs."""
    n, p = 3, 4
    points = np.array([[[10, 10], [20, 30], [40, 15], [25, 45]]] * n)
    forward = np.repeat(points[:, None], n, axis=1) + 1  # every match one pixel down-right
    back = np.repeat(points[:, None], n, axis=1).copy()
    back[1] += [1, 0]
    back[2] += [10, 0]
    m = {
        "ids": np.array(["a", "b", "c"]),
        "points": points,
        "valid": np.ones((n, p), bool),
        "forward": forward,
        "back": back,
        "score": np.array([0.9, 0.5, 0.7])[:, None, None] * np.ones((n, n, p)),
    }
    scores = template_policies.policies(m)
    np.testing.assert_allclose(scores["cycle_within_2"], [1, 1, 0])
    np.testing.assert_allclose(scores["cycle_error"], [0, -1, -10])
    np.testing.assert_allclose(scores["confidence"], [0.9, 0.5, 0.7])
    np.testing.assert_allclose(scores["affine_residual"], [0, 0, -np.inf], atol=1e-9)
    spread = {"mre_mm": {"a": 4.0, "b": 5.0, "c": 6.0}}
    judged = template_policies.judge(scores, ["a", "b", "c"], spread)
    assert judged["cycle_error"]["all"] == {"id": "a", "mre_mm": 4.0, "rank": 1}
    assert judged["cycle_error"]["spearman_with_mre"] == pytest.approx(1.0)
    assert judged["confidence"]["spearman_with_mre"] == pytest.approx(0.5)


def test_several_templates_scores_a_set_on_the_images_outside_it():
    """``several_templates.mre``: the members' fused predictions, scored on the other images
    only, in mm (row-first points against x-first truth, per-image spacing)."""
    from tools.results import several_templates

    truth = np.zeros((4, 1, 2))  # (N, L, 2) x, y
    spacing = np.array([[1.0, 1.0], [1.0, 1.0], [2.0, 2.0], [1.0, 1.0]])
    points = np.zeros((3, 4, 1, 2))  # (T, N, L, 2) row, col
    points[0, :, 0] = [0.0, 3.0]  # template 0: 3 px off in x everywhere
    points[1, :, 0] = [4.0, 0.0]  # template 1: 4 px off in y
    points[2, :, 0] = [100.0, 100.0]  # template 2: far off, but an outlier of three
    scores = np.ones((3, 4, 1))
    # template 0 alone, on images 1, 2, 3: 3, 6 (2 mm pixels), 3 mm
    assert several_templates.mre(points, scores, [0], "median", truth, spacing) == 4.0
    # the median of the three on image 3 only (the others are members): (3, 4) -> 5 mm
    assert several_templates.mre(points, scores, [0, 1, 2], "median", truth, spacing) == 5.0
    # two members: the mean of (0, 3) and (4, 0) is (2, 1.5) -> 2.5 px, images 2 (x2) and 3
    assert several_templates.mre(points, scores, [0, 1], "mean", truth, spacing) == 3.75
