"""The `cmbscat stats` stage and the classical models that read it; files from other programs;
non-finite input refused everywhere."""

import h5py
import numpy as np
import pytest

from cmbscat.experiment.datasets import classical_features
from cmbscat.experiment.evaluate import evaluate
from cmbscat.experiment.train import TrainConfig, train
from cmbscat.sky.simulate import SimulationConfig, simulate
from cmbscat.stats.stage import compute_stats
from cmbscat.stats.summary import STATISTICS
from cmbscat.store import Shard, combine_shards

from conftest import assert_one_line_error, run_cli

NSIDE, LMAX = 16, 31


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("stats")
    out = {}
    for split, n, seed in (("train", 40, 1), ("test", 40, 2)):
        out[split] = root / f"sims_{split}.h5"
        simulate(out[split], SimulationConfig(n, NSIDE, LMAX, 3000.0, seed, store="alm"), progress=False)
        out[f"stats_{split}"] = root / f"stats_{split}.h5"
        compute_stats(out[split], out[f"stats_{split}"], progress=False)
    return out


def test_layout_and_values_equal_the_statistics_computed_from_the_sims(files):
    with h5py.File(files["stats_test"], "r") as f:
        assert f["powspec"].shape[0] == f["onepoint"].shape[0] == f["cubic"].shape[0] == 40
        assert f["minkowski"].shape == (40, 3, f["thresholds"].shape[0])
        assert f.attrs["kind"] == "stats" and f.attrs["lmax"] == LMAX and f.attrs["nside"] == NSIDE
        with h5py.File(files["test"], "r") as s:
            assert f.attrs["source"].endswith(s.attrs["content_sha256"])
            assert np.array_equal(f["labels"][()], s["labels"][()])
    for kind in STATISTICS:
        # equal to rounding: ducc0's SIMD paths depend on the arrays' memory alignment
        cached = classical_features(files["stats_test"], kind, progress=False)
        on_the_fly = classical_features(files["test"], kind, progress=False)
        assert np.allclose(cached, on_the_fly, rtol=1e-12, atol=1e-12 * np.abs(cached).max()), kind


def test_shards_combine_to_the_whole(files, tmp_path):
    parts = [tmp_path / f"part{k}.h5" for k in range(2)]
    for k, part in enumerate(parts):
        compute_stats(files["test"], part, shard=Shard(k, 2), progress=False)
    combine_shards(tmp_path / "all.h5", parts)
    with h5py.File(tmp_path / "all.h5", "r") as a, h5py.File(files["stats_test"], "r") as b:
        assert sorted(a) == sorted(b)
        for name in b:  # equal to rounding (ducc0's SIMD paths depend on memory alignment)
            assert np.allclose(a[name][()], b[name][()], rtol=1e-12, atol=0), name


def test_cubic_statistic_beats_one_point_statistics_at_the_same_maps(files, tmp_path):
    """At f_NL 3000, lmax 31 the optimal statistic must separate the classes at least as well."""
    results = {}
    for model in ("cubic", "onepoint", "minkowski", "powspec"):
        train(tmp_path / model, TrainConfig(data=str(files["stats_train"]), model=model), progress=False)
        results[model] = evaluate(tmp_path / model, files["stats_test"], progress=False)
    assert results["cubic"]["auc"] >= results["onepoint"]["auc"] - 0.02
    assert results["cubic"]["accuracy"] > 0.75
    assert abs(results["powspec"]["accuracy"] - 0.5) < 3 * 0.5 / np.sqrt(40)


def test_cubic_statistic_is_blind_to_the_gnl_model(tmp_path):
    """g_NL has no bispectrum: S has the same mean in both classes and a classifier on it sits
    at chance, while the kurtosis sees the maps. (S is odd in the map and so is T(g); only its
    width grows with g_NL, which a single threshold barely uses: a few points at most here.)"""
    paths = {}
    for split, seed in (("train", 5), ("test", 6)):
        paths[split] = tmp_path / f"{split}.h5"
        simulate(paths[split], SimulationConfig(200, NSIDE, LMAX, 0.0, seed, ng_model="gnl", gnl=1e7,
                                                store="alm"), progress=False)
    cubic = classical_features(paths["train"], "cubic", progress=False)[:, 0]
    labels = np.arange(200) % 2
    g, ng = cubic[labels == 0], cubic[labels == 1]
    assert abs(ng.mean() - g.mean()) < 3 * np.hypot(g.std(), ng.std()) / np.sqrt(100)
    results = {}
    for model in ("cubic", "onepoint"):
        train(tmp_path / model, TrainConfig(data=str(paths["train"]), model=model), progress=False)
        results[model] = evaluate(tmp_path / model, paths["test"], progress=False)
    assert abs(results["cubic"]["accuracy"] - 0.5) < 3 * 0.5 / np.sqrt(200), results["cubic"]
    assert results["onepoint"]["accuracy"] > 0.8, results["onepoint"]


def test_model_needing_the_map_refuses_a_scattering_file(files, tmp_path):
    scat = tmp_path / "scat.h5"
    run_cli("scatter", files["test"], scat, "--depth", "1", "--J0", "3", "--no-progress", check=True)
    for model in ("cubic", "minkowski", "onepoint", "baseline"):
        assert_one_line_error(run_cli("train", scat, tmp_path / f"r_{model}", "--model", model),
                              "is a scattering file")
        assert not (tmp_path / f"r_{model}").exists()
    assert_one_line_error(run_cli("stats", scat, tmp_path / "s.h5"), "is a scattering file")
    assert not (tmp_path / "s.h5").exists()


def _foreign_sims(path, alm=None, n=8, drop=()):
    """A sims file in the DESIGN.md layout, written with h5py alone (no cmbscat attributes)."""
    from cmbscat.sky.simulate import SkySimulator, map_seeds

    sim = SkySimulator(NSIDE, LMAX, 3000.0)
    seeds = map_seeds(99, n)
    labels = (np.arange(n) % 2).astype(np.int8)
    if alm is None:
        alm = np.stack([sim.alm(s, lab)[0] for s, lab in zip(seeds, labels)])
    with h5py.File(path, "w") as f:
        f["labels"], f["seeds"] = labels, seeds
        if "alm" not in drop:
            f["alm"] = alm
        attrs = {"nside": NSIDE, "lmax": LMAX, "ng_model": "local", "ng_amplitude": 3000.0,
                 "cl_source": "Planck 2018", "unit": "uK", "cmbscat_version": "other"}
        f.attrs.update(attrs)
    return path


def test_a_sims_file_from_another_program_is_accepted_by_every_stage(tmp_path):
    sims = _foreign_sims(tmp_path / "foreign.h5")
    run_cli("scatter", sims, tmp_path / "scat.h5", "--depth", "1", "--J0", "3", "--no-progress", check=True)
    run_cli("stats", sims, tmp_path / "stats.h5", "--no-progress", check=True)
    for model in ("onepoint", "cubic", "minkowski", "powspec"):
        run_cli("train", sims, tmp_path / model, "--model", model, "--no-progress", check=True)
        run_cli("evaluate", tmp_path / model, sims, "--no-progress", check=True)
        run_cli("evaluate", tmp_path / model, tmp_path / "stats.h5", "--no-progress", check=True)
    run_cli("train", sims, tmp_path / "base", "--model", "baseline", "--epochs", "1", "--batch-size", "4",
            "--baseline-nside", "4", "--baseline-lmax", "7", "--no-progress", "--device", "cpu", check=True)
    run_cli("train", tmp_path / "scat.h5", tmp_path / "hyb", "--model", "hybrid", "--epochs", "1",
            "--batch-size", "4", "--no-progress", "--device", "cpu", check=True)


def test_non_finite_input_is_refused_by_every_stage(tmp_path):
    from cmbscat.sky.simulate import SkySimulator, map_seeds

    sim = SkySimulator(NSIDE, LMAX, 3000.0)
    alm = np.stack([sim.alm(s, i % 2)[0] for i, s in enumerate(map_seeds(7, 8))])
    alm[5, 10] = np.nan
    sims = _foreign_sims(tmp_path / "nan.h5", alm=alm)
    cases = [("scatter", sims, tmp_path / "o1.h5", "--depth", "1", "--J0", "3"),
             ("stats", sims, tmp_path / "o2.h5"),
             ("train", sims, tmp_path / "o3", "--model", "onepoint"),
             ("train", sims, tmp_path / "o4", "--model", "baseline", "--baseline-nside", "4",
              "--baseline-lmax", "7")]
    for args in cases:
        assert_one_line_error(run_cli(*args, "--no-progress"), "map 5", "non-finite")
    # a refused train writes no run folder; a refused per-map stage no output file
    assert not any((tmp_path / name).exists() for name in ("o1.h5", "o2.h5", "o3", "o4",
                                                           "o1.h5.partial", "o2.h5.partial"))


@pytest.mark.parametrize("args, fragment", [
    (["scatter", "S", "O", "--lam", "nan"], "--lam must be a finite number"),
    (["scatter", "S", "O", "--oversample", "inf"], "--oversample must be a finite number"),
    (["train", "S", "O", "--model", "onepoint", "--lr", "nan"], "--lr must be a finite number"),
    (["train", "S", "O", "--model", "onepoint", "--val-fraction", "nan"], "--val-fraction must be"),
])
def test_non_finite_options_are_refused(files, tmp_path, args, fragment):
    args = [files["train"] if a == "S" else tmp_path / "out" if a == "O" else a for a in args]
    assert_one_line_error(run_cli(*args), fragment)
    assert not (tmp_path / "out").exists()


def test_sims_file_without_maps_or_alm_is_refused(tmp_path):
    sims = _foreign_sims(tmp_path / "empty.h5", drop=("alm",))
    for args in (("scatter", sims, tmp_path / "o.h5"), ("stats", sims, tmp_path / "o.h5"),
                 ("train", sims, tmp_path / "r", "--model", "onepoint")):
        assert_one_line_error(run_cli(*args), "no /alm and no /maps")
    assert not (tmp_path / "o.h5").exists() and not (tmp_path / "r").exists()
