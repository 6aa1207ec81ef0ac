"""The grain input pipeline: anchors follow the weight map, exact rotation, adaptive jitter,
seeded and restorable iterators, per-host sharding, and errors that name the culprit."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import chisquare

from piaug import augment, data, info
from piaug.data import input_pipeline as ip
from piaug.data import prepare
from piaug.errors import UserError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    dataset = data.load("synthetic", num_images=6, size=(128, 112), num_landmarks=4)
    cache = tmp_path_factory.mktemp("cache")
    return prepare.prepare(dataset, image_size=(96, 80), footprint="disk(3)", cache_dir=cache)


def _loader(source, transform, **kw):
    kw = {"global_batch_size": 2, "seed": 0, "process_index": 0, "process_count": 1} | kw
    return ip.make_loader(source.source, transform, **kw)


@pytest.mark.parametrize("kind", ["uniform", "exponential", "piecewise"])
def test_numpy_weights_equal_the_jax_weight_map(kind):
    iie = np.random.default_rng(0).uniform(0, 7, (20, 30)).astype(np.float32)
    iie[0, :5] = 0.0
    ours = ip.weights(iie, kind, gamma=0.3, d=2.5)
    np.testing.assert_allclose(ours, info.weight_map(iie, kind=kind, gamma=0.3, d=2.5), rtol=1e-6)


def test_sample_anchor_follows_the_weights():
    w = np.array([[0.0, 1.0, 2.0, 0.0], [4.0, 0.0, 1.0, 8.0]])
    rng = np.random.default_rng(0)
    n = 32000
    drawn = np.array([ip.sample_anchor(rng, w) for _ in range(n)])
    counts = np.zeros_like(w)
    np.add.at(counts, (drawn[:, 0], drawn[:, 1]), 1)
    expected = n * w / w.sum()
    assert counts[w == 0].sum() == 0  # zero weight is never drawn
    sigma = np.sqrt(expected * (1 - w / w.sum()))
    assert np.all(np.abs(counts - expected) <= 4 * sigma + 1e-9)


def test_sample_anchor_chi_square_goodness_of_fit():
    weights = np.arange(1.0, 21.0).reshape(4, 5) ** 1.5
    weights[1, 3] = 0.0
    rng = np.random.default_rng(1234)
    n = 20_000
    samples = np.array([ip.sample_anchor(rng, weights) for _ in range(n)])
    assert samples.shape == (n, 2) and samples.dtype == np.int64
    assert samples[:, 0].max() <= 3 and samples[:, 1].max() <= 4 and samples.min() >= 0
    counts = np.bincount(samples[:, 0] * 5 + samples[:, 1], minlength=20)
    flat = weights.ravel()
    assert counts[1 * 5 + 3] == 0  # the zero-weight cell is never drawn
    nonzero = flat > 0
    result = chisquare(counts[nonzero], n * flat[nonzero] / flat.sum())
    assert result.pvalue > 1e-3, result


def test_sample_anchor_gives_row_col_and_is_seeded():
    w = np.zeros((8, 8))
    w[7, 0] = 0.1  # one pixel: row 7, column 0
    assert ip.sample_anchor(np.random.default_rng(3), w).tolist() == [7, 0]
    w = np.random.default_rng(9).random((10, 12))
    draws = []
    for seed in (42, 42, 43):
        rng = np.random.default_rng(seed)
        draws.append([ip.sample_anchor(rng, w).tolist() for _ in range(16)])
    assert draws[0] == draws[1] and draws[0] != draws[2]


def test_anchor_groups_follow_the_weight_map_through_the_transform(source):
    ex = source.source[0]
    iie = ex["iie"]
    transform = ip.AnchorCrop(crop_size=24, anchors="exponential", gamma=2.0)
    rng = np.random.default_rng(1)
    groups = [transform.random_map(ex, rng)["group"] for _ in range(3000)]
    observed = np.bincount(groups, minlength=3) / len(groups)
    w = ip.weights(iie, "exponential", gamma=2.0)
    g = np.asarray(info.information_groups(iie, (2.0, 4.5)))
    expected = np.array([w[g == k].sum() for k in range(3)]) / w.sum()
    np.testing.assert_allclose(observed, expected, atol=0.03)
    uniform = ip.AnchorCrop(crop_size=24, anchors="uniform")
    groups = [uniform.random_map(ex, rng)["group"] for _ in range(3000)]
    np.testing.assert_allclose(
        np.bincount(groups, minlength=3) / 3000,
        np.bincount(g.ravel(), minlength=3) / g.size,
        atol=0.03,
    )
    piecewise = ip.AnchorCrop(crop_size=24, anchors="piecewise", d=4.0)
    for _ in range(300):
        out = piecewise.random_map(ex, rng)
        assert iie[tuple(out["anchor"])] >= 4.0


def test_crop_shows_the_anchor_exactly(source):
    still = augment.GroupJitter.uniform((1.0, 1.0), (1.0, 1.0))
    rng = np.random.default_rng(2)
    for order, tolerance in [(3, 1e-6), (1, 0.0)]:  # cubic: to float rounding; linear: exactly
        transform = ip.AnchorCrop(crop_size=24, jitter=still, order=order)
        for i in range(len(source)):
            ex = source.source[i]
            for _ in range(20):
                out = transform.random_map(ex, rng)
                r, c = out["anchor"]
                value = out["crop"][tuple(out["crop_anchor"])]
                assert abs(value - np.float32(ex["image"][r, c] / 255)) <= tolerance
                assert -20 <= out["angle"] <= 20
                assert out["scale"] == 1.0  # the paper's: no scaling


def test_scale_is_log_uniform_and_keeps_the_anchor(source):
    still = augment.GroupJitter.uniform((1.0, 1.0), (1.0, 1.0))
    transform = ip.AnchorCrop(crop_size=24, jitter=still, order=1, max_scale=1.25)
    rng = np.random.default_rng(3)
    ex = source.source[0]
    scales = []
    for _ in range(200):
        out = transform.random_map(ex, rng)
        scales.append(out["scale"])
        r, c = out["anchor"]
        assert out["crop"][tuple(out["crop_anchor"])] == np.float32(ex["image"][r, c] / 255)
    scales = np.log(scales) / np.log(1.25)
    assert scales.min() >= -1 and scales.max() <= 1 and scales.min() < -0.8 < 0.8 < scales.max()


def test_more_anchors_per_crop_show_their_image_pixels(source):
    """K anchors: the first is the one-anchor stream's; every other crop anchor shows the image
    pixel it is paired with (exactly at angle 0, linear interpolation, no jitter), and each is
    drawn by the weight map (piecewise: none below d)."""
    still = augment.GroupJitter.uniform((1.0, 1.0), (1.0, 1.0))
    common = dict(crop_size=24, jitter=still, order=1, anchors="piecewise", d=3.0)
    one = ip.AnchorCrop(max_rotation=0.0, **common)
    many = ip.AnchorCrop(max_rotation=0.0, anchors_per_crop=8, **common)
    rotated = ip.AnchorCrop(anchors_per_crop=8, **common)
    for i in range(len(source)):
        ex = source.source[i]
        first = one.random_map(ex, np.random.default_rng(i))
        out = many.random_map(ex, np.random.default_rng(i))
        assert out["anchor"].shape == out["crop_anchor"].shape == (8, 2)
        np.testing.assert_array_equal(out["anchor"][0], first["anchor"])
        np.testing.assert_array_equal(out["crop_anchor"][0], first["crop_anchor"])
        np.testing.assert_array_equal(out["crop"], first["crop"])
        rows, cols = out["anchor"].T
        np.testing.assert_array_equal(
            out["crop"][tuple(out["crop_anchor"].T)],
            (ex["image"][rows, cols] / 255).astype(np.float32),
        )
        assert np.all(ex["iie"][rows, cols] >= 3.0)
        assert np.all((out["crop_anchor"] >= 0) & (out["crop_anchor"] < 24))
        turned = rotated.random_map(ex, np.random.default_rng(i))  # nearest image pixel
        coords = augment.rotation_coordinates(
            turned["anchor"][0], turned["crop_anchor"][0], 24, turned["angle"]
        )
        shown = coords[:, turned["crop_anchor"][:, 0], turned["crop_anchor"][:, 1]].T
        assert np.abs(shown - turned["anchor"]).max() <= 0.5


def test_several_crops_per_image_stack_the_one_crop_stream(source):
    """M crops of an image: drawn one after the other from the same stream, so the first is
    the one-crop transform's; per-crop fields gain an axis of M; ``per_crop`` lays them out as
    M * B crops, each beside its own image."""
    common = dict(crop_size=24, order=1, anchors_per_crop=3)
    one = ip.AnchorCrop(**common)
    three = ip.AnchorCrop(crops_per_image=3, **common)
    ex = source.source[1]
    first = one.random_map(ex, np.random.default_rng(5))
    out = three.random_map(ex, np.random.default_rng(5))
    assert out["crop"].shape == (3, 24, 24) and out["anchor"].shape == (3, 3, 2)
    assert out["group"].shape == out["angle"].shape == (3,)
    np.testing.assert_array_equal(out["image"], ex["image"])
    for key in ("crop", "anchor", "crop_anchor", "group", "angle", "brightness"):
        np.testing.assert_array_equal(out[key][0], first[key])
    assert not np.array_equal(out["crop"][0], out["crop"][1])  # each crop draws its own
    batch = {k: np.stack([v, v]) for k, v in out.items() if k != "id"}
    batch["id"] = np.array(["a", "b"])
    flat = ip.per_crop(batch)
    assert flat["crop"].shape == (6, 24, 24) and flat["anchor"].shape == (6, 3, 2)
    assert list(flat["id"]) == ["a"] * 3 + ["b"] * 3
    np.testing.assert_array_equal(flat["image"][4], batch["image"][1])
    np.testing.assert_array_equal(flat["crop"][4], batch["crop"][1, 1])
    assert ip.per_crop(first) is first  # one crop per image: as it is


def test_batches_of_several_crops_per_image_come_through_the_loader(source):
    transform = ip.AnchorCrop(crop_size=24, crops_per_image=2, anchors_per_crop=4)
    batch = next(iter(_loader(source, transform)))
    assert batch["image"].shape == (2, 96, 80) and batch["crop"].shape == (2, 2, 24, 24)
    assert batch["anchor"].shape == batch["crop_anchor"].shape == (2, 2, 4, 2)


def test_the_anchor_group_picks_the_jitter_ranges(source):
    jitter = augment.GroupJitter(
        brightness=[(0.1, 0.2), (0.5, 0.6), (1.5, 1.6)], contrast=[(1, 1), (1, 1), (1, 1)]
    )
    rng = np.random.default_rng(3)
    for adaptive in (True, False):
        transform = ip.AnchorCrop(crop_size=24, anchors="uniform", jitter=jitter, adaptive=adaptive)
        seen = set()
        for i in range(60):
            out = transform.random_map(source.source[i % len(source)], rng)
            group = int(out["group"]) if adaptive else 1
            lo, hi = jitter.brightness[group]
            assert lo <= out["brightness"] <= hi
            seen.add(int(out["group"]))
        assert len(seen) >= 2  # the check above saw more than one group


def test_continuous_ranges_follow_the_anchor_iie(source):
    jitter = augment.GroupJitter(
        brightness=[(0.1, 0.2), (0.5, 0.6), (1.5, 1.6)],
        contrast=[(1, 1), (1, 1), (1, 1)],
        centers=[1.0, 3.0, 5.0],
    )
    transform = ip.AnchorCrop(crop_size=24, anchors="uniform", jitter=jitter, continuous=True)
    rng = np.random.default_rng(4)
    between = 0
    for i in range(60):
        element = source.source[i % len(source)]
        out = transform.random_map(element, rng)
        value = element["iie"][out["anchor"][0], out["anchor"][1]]
        lo, hi = jitter.ranges_at(float(value))[0]
        assert lo - 1e-6 <= out["brightness"] <= hi + 1e-6
        between += not any(np.allclose((lo, hi), r) for r in jitter.brightness)
    assert between > 10  # most anchors get ranges between two groups'


def test_batches_are_seeded_and_restorable(source):
    transform = ip.AnchorCrop(crop_size=24)
    it = iter(_loader(source, transform))
    first = [next(it) for _ in range(3)]
    assert first[0]["image"].shape == (2, 96, 80) and first[0]["image"].dtype == np.uint8
    assert first[0]["crop"].shape == (2, 24, 24) and first[0]["crop"].dtype == np.float32
    assert first[0]["anchor"].shape == (2, 2) and first[0]["group"].shape == (2,)
    state = it.get_state()
    after = [next(it) for _ in range(4)]  # crosses an epoch boundary (6 records, batch 2)

    again = iter(_loader(source, transform))
    _same(first, [next(again) for _ in range(3)])  # same seed, same stream
    restored = iter(_loader(source, transform))
    restored.set_state(state)
    _same(after, [next(restored) for _ in range(4)])
    other = iter(_loader(source, transform, seed=1))
    assert not np.array_equal(next(other)["crop"], first[0]["crop"])


@pytest.mark.slow
def test_worker_processes_are_seeded_and_restorable(source):
    transform = ip.AnchorCrop(crop_size=24)
    parallel = iter(_loader(source, transform, workers=2))
    first = [next(parallel) for _ in range(2)]
    state = parallel.get_state()
    after = [next(parallel) for _ in range(3)]
    again = iter(_loader(source, transform, workers=2))
    _same(first, [next(again) for _ in range(2)])
    restored = iter(_loader(source, transform, workers=2))
    restored.set_state(state)
    _same(after, [next(restored) for _ in range(3)])
    # Global batch j does not depend on the workers, nor on how the hosts use them.
    kw = {"global_batch_size": 4}
    single = iter(_loader(source, transform, **kw))
    reference = [next(single) for _ in range(5)]  # 20 examples: crosses three epochs of 6
    with_workers = iter(_loader(source, transform, workers=2, **kw))
    _same(reference, [next(with_workers) for _ in range(5)])
    hosts = [
        iter(_loader(source, transform, process_index=h, process_count=2, workers=w, **kw))
        for h, w in ((0, 2), (1, 0))
    ]
    for batch in reference:
        halves = [next(h) for h in hosts]
        joined = {k: np.concatenate([halves[0][k], halves[1][k]]) for k in batch}
        _same([batch], [joined])


def test_global_batches_do_not_depend_on_hosts_or_the_start(source):
    """Global batch j is the same on 1 host or split over 2, and a loader started at batch j
    (a resumed run) begins with it (with worker processes: the slow tier)."""
    transform = ip.AnchorCrop(crop_size=24)
    kw = {"global_batch_size": 4}
    single = iter(_loader(source, transform, **kw))
    reference = [next(single) for _ in range(5)]  # 20 examples: crosses three epochs of 6
    hosts = [
        iter(_loader(source, transform, process_index=h, process_count=2, **kw)) for h in (0, 1)
    ]
    for batch in reference:
        halves = [next(h) for h in hosts]
        joined = {k: np.concatenate([halves[0][k], halves[1][k]]) for k in batch}
        _same([batch], [joined])
    resumed = iter(_loader(source, transform, start_batch=3, **kw))
    _same(reference[3:], [next(resumed) for _ in range(2)])


def _same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_each_host_reads_its_own_records(source):
    transform = ip.AnchorCrop(crop_size=24)
    seen = []
    for index in range(2):
        loader = _loader(
            source,
            transform,
            global_batch_size=2,
            process_index=index,
            process_count=2,
            num_epochs=1,
        )
        ids = [i.decode() for batch in loader for i in batch["id"]]
        assert len(ids) == 3 and len(set(ids)) == 3  # batch 1 per host, 6 / 2 records
        seen.append(set(ids))
    assert not seen[0] & seen[1] and seen[0] | seen[1] == set(source.ids)


def test_loader_errors(source):
    transform = ip.AnchorCrop(crop_size=24)
    with pytest.raises(UserError, match="batch_size=3: must be a positive multiple of the 2"):
        _loader(source, transform, global_batch_size=3, process_count=2)
    with pytest.raises(UserError, match="batch_size=8 is larger than the 6 training images"):
        _loader(source, transform, global_batch_size=8)


def test_empty_weight_maps_and_big_crops_name_the_field(source):
    iie_max = source.metadata["iie_max"]
    ids = source.ids
    top = int(np.argmax(iie_max))
    ip.check_sampling(
        ip.AnchorCrop(anchors="piecewise", d=2.0, crop_size=24), iie_max, ids, (96, 80)
    )
    first_short = ids[1] if top == 0 else ids[0]  # every image but the top one falls short
    with pytest.raises(UserError, match=f"image '{first_short}'.*config.augment.d"):
        transform = ip.AnchorCrop(anchors="piecewise", d=max(iie_max) - 1e-3, crop_size=24)
        ip.check_sampling(transform, iie_max, ids, (96, 80))
    with pytest.raises(UserError, match="config.data.crop_size=90"):
        ip.check_sampling(ip.AnchorCrop(crop_size=90), iie_max, ids, (96, 80))


def test_ranges_file_errors_name_the_file(tmp_path):
    good = tmp_path / "augment.json"
    good.write_text(json.dumps({"groups": {"medium": {"brightness": [0.5, 2], "contrast": 0.3}}}))
    jitter = ip.load_jitter(good)
    np.testing.assert_allclose(jitter.contrast[2], [0.7, 1.3])
    with pytest.raises(UserError, match="missing.json does not exist"):
        ip.load_jitter(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(UserError, match="bad.json is not valid JSON"):
        ip.load_jitter(bad)
    bad.write_text(json.dumps({"ranges": {}}))
    with pytest.raises(UserError, match="bad.json has no 'groups'"):
        ip.load_jitter(bad)
    bad.write_text(json.dumps({"groups": {"medium": {"brightness": [2, 1], "contrast": 0.3}}}))
    with pytest.raises(UserError, match="bad.json: medium.brightness"):
        ip.load_jitter(bad)


@pytest.mark.slow
def test_global_batch_over_fake_devices(source):
    """Host batches become one array sharded over a ('data',) mesh of 2 CPU devices."""
    script = textwrap.dedent(
        """
        import numpy as np, jax
        from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
        from piaug.data import input_pipeline as ip
        mesh = Mesh(np.array(jax.devices()), ("data",))
        batch = {"crop": np.arange(4 * 3, dtype=np.float32).reshape(4, 3), "g": np.arange(4)}
        out = ip.to_global(batch, NamedSharding(mesh, P("data")))
        assert out["crop"].shape == (4, 3) and len(out["crop"].addressable_shards) == 2
        assert out["crop"].addressable_shards[1].data.shape == (2, 3)
        np.testing.assert_array_equal(np.asarray(out["crop"]), batch["crop"])
        try:
            ip.to_global({"crop": np.zeros((3, 2))}, NamedSharding(mesh, P("data")))
        except ip.UserError as e:
            assert "multiple of the device count" in str(e)
        else:
            raise AssertionError("an odd batch on 2 devices was accepted")
        print("ok")
        """
    )
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu"}
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={**__import__("os").environ, **env},
    )
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-2000:]


_SHARED_MEMORY_SCRIPT = """
import sys, time
import numpy as np
from piaug import train
from piaug.data import input_pipeline as ip

def main():
    global batches  # alive to the exit, as when a traceback holds fit's frame (Ctrl-C, SIGTERM)
    rng = np.random.default_rng(0)
    examples = [
        {"id": str(i), "image": rng.integers(0, 256, (512, 512), dtype=np.uint8),
         "landmarks": np.full((3, 2), 250.0, np.float32)}
        for i in range(40)
    ]
    loader = ip.make_loader(examples, ip.LandmarkAugment(), global_batch_size=2, seed=0,
                            workers=2, process_index=0, process_count=1)
    batches = iter(loader)
    held = [next(batches) for _ in range(3)][-1]
    time.sleep(2)  # the workers fill their prefetch buffers
    assert held["image"].shape == (2, 512, 512)
    if sys.argv[1] == "close":  # as fit ends: its last batch dropped, then the iterator closed
        del held
        train._close(batches)

if __name__ == "__main__":
    main()
"""


@pytest.mark.slow  # two interpreters with two worker processes each, about 10 s
def test_closed_workers_leave_no_shared_memory_behind(tmp_path):
    """Training ends with the input pipeline's workers stopped and every batch's shared memory
    freed: no "leaked shared_memory objects" warning at exit. Without the close (the
    control) grain leaves some to the resource tracker, which warns."""
    script = tmp_path / "loader.py"
    script.write_text(_SHARED_MEMORY_SCRIPT)

    def stderr(mode):
        done = subprocess.run(
            [sys.executable, str(script), mode],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stderr

    assert "leaked shared_memory" in stderr("leave")
    assert "leaked shared_memory" not in stderr("close")
