"""The simulate stage: the two classes (local f_NL and g_NL models), determinism, resume,
sharding, refused inputs."""

import os
import signal
import subprocess
import sys
import time

import json

import h5py
import healpy as hp
import numpy as np
import pytest

from cmbscat.errors import CmbscatError
from cmbscat.sky.nongaussian import T_CMB_UK, LocalFNL, LocalGNL
from cmbscat.sky.simulate import (SimulationConfig, SkySimulator, map_labels, map_seeds,
                              resolve_ng_amplitudes, simulate, simulate_sky)
from cmbscat.sky.spectra import gaussian_alm, planck2018_cl
from cmbscat.store import combine_shards

from conftest import assert_one_line_error, run_cli

NSIDE, LMAX = 32, 63


def skewness(m):
    d = m - m.mean()
    return np.mean(d**3) / np.mean(d**2) ** 1.5


def excess_kurtosis(m):
    d = m - m.mean()
    return np.mean(d**4) / np.mean(d**2) ** 2 - 3


def binned(cl_rows, edges):
    return np.stack([cl_rows[:, lo:hi].mean(1) for lo, hi in zip(edges[:-1], edges[1:])], 1)


def assert_same_binned_spectrum(cls0, cls1):
    """Mean spectra of two ensembles (rows of alm2cl, lmax 127) agree bin by bin."""
    edges = np.array([2, 8, 16, 32, 48, 64, 80, 96, 112, 128])
    b0, b1 = binned(cls0, edges), binned(cls1, edges)
    se = np.sqrt(b0.var(0, ddof=1) / len(b0) + b1.var(0, ddof=1) / len(b1))
    z = (b1.mean(0) - b0.mean(0)) / se
    assert np.all(np.abs(z) < 4), z
    assert np.sum(z**2) < 30  # chi^2 with 9 dof: p ~ 4e-4


def detectable_without_transfer(sim, excess, n_maps):
    """Summed over l, how many standard errors (squared) a relative excess ``excess``
    (shape (lmax-1,), for l >= 2) would shift the mean spectrum of ``n_maps`` maps."""
    ell = np.arange(2, sim.lmax + 1)
    per_ell_noise = np.sqrt(2 / ((2 * ell + 1) * n_maps))
    return np.sum((excess / per_ell_noise) ** 2)


@pytest.fixture(scope="module")
def ensemble():
    """120 maps of each class at nside 64, lmax 127, f_NL = 3000 (large, so tests have power)."""
    nside, lmax, fnl, n = 64, 127, 3000.0, 120
    sim = SkySimulator(nside, lmax, fnl)
    seeds = map_seeds(11, 2 * n)
    out = {0: [], 1: []}
    for label in (0, 1):
        for s in seeds[label::2]:
            alm, _ = sim.alm(s, label)
            out[label].append((hp.alm2cl(alm), hp.alm2map(alm, nside, lmax=lmax)))
    return sim, {k: (np.array([c for c, _ in v]), np.array([m for _, m in v])) for k, v in out.items()}


def test_gaussian_mean_spectrum_is_the_input(ensemble):
    sim, data = ensemble
    cls = data[0][0]
    n, ell = len(cls), np.arange(2, sim.lmax + 1)
    z = (cls.mean(0)[2:] - sim.cl[2:]) / (sim.cl[2:] * np.sqrt(2 / ((2 * ell + 1) * n)))
    assert np.all(np.abs(z) < 4.5) and abs(np.mean(z**2) - 1) < 0.4


def test_classes_have_the_same_binned_spectrum(ensemble):
    sim, data = ensemble
    assert_same_binned_spectrum(data[0][0], data[1][0])


def test_without_the_transfer_function_the_spectra_would_differ(ensemble):
    """The rescaling is needed: the quadratic term's extra power is detectable here."""
    sim, data = ensemble
    excess = sim.non_gaussian.a**2 * sim.non_gaussian.quadratic_cl[2:] / sim.cl[2:]
    # summed over ell the expected shift is many standard errors
    assert detectable_without_transfer(sim, excess, len(data[1][0])) > 100


def test_non_gaussian_maps_have_negative_skewness(ensemble):
    sim, data = ensemble
    skew_g = np.array([skewness(m) for m in data[0][1]])
    skew_ng = np.array([skewness(m) for m in data[1][1]])
    assert abs(skew_g.mean()) < 4 * skew_g.std() / np.sqrt(len(skew_g))
    # Sachs-Wolfe: T = g - a g^2 with a = 3 f_NL / T_CMB > 0 gives <T^3> < 0
    assert skew_ng.mean() < -10 * skew_ng.std() / np.sqrt(len(skew_ng))
    assert np.mean(skew_ng < 0) > 0.9
    predicted = -6 * (3 * 3000 / T_CMB_UK) * np.sqrt(sim.non_gaussian.sigma2)
    assert 0.3 < skew_ng.mean() / predicted < 1.5


GNL = 3e6  # large (excess kurtosis ~0.35 against a one-map scatter ~0.06), so tests have power


@pytest.fixture(scope="module")
def gnl_ensemble(ensemble):
    """120 g_NL maps at nside 64, lmax 127, g_NL = 3e6, and the 120 Gaussian maps of ``ensemble``
    (the Gaussian class does not depend on the model)."""
    gaussian_sim, data = ensemble
    sim = SkySimulator(gaussian_sim.nside, gaussian_sim.lmax, ng_model="gnl", gnl=GNL)
    cls, maps = [], []
    for s in map_seeds(12, 240)[1::2]:
        alm, _ = sim.alm(s, 1)
        cls.append(hp.alm2cl(alm))
        maps.append(hp.alm2map(alm, sim.nside, lmax=sim.lmax))
    return sim, {0: data[0], 1: (np.array(cls), np.array(maps))}


def test_gnl_classes_have_the_same_binned_spectrum(gnl_ensemble):
    sim, data = gnl_ensemble
    assert_same_binned_spectrum(data[0][0], data[1][0])


def test_gnl_without_the_transfer_function_the_spectra_would_differ(gnl_ensemble):
    """T = (1 + 3 b sigma^2) g + b h has (1 + 3 b sigma^2)^2 C_l + b^2 H_l: detectable here."""
    sim, data = gnl_ensemble
    ng = sim.non_gaussian
    assert isinstance(ng, LocalGNL) and ng.b == 9 * GNL / T_CMB_UK**2
    excess = (ng.linear**2 - 1) + ng.b**2 * ng.cubic_cl[2:] / sim.cl[2:]
    assert detectable_without_transfer(sim, excess, len(data[1][0])) > 100
    # the rescaling is O(b) (5 % here), not O(b^2) as for local: it undoes the linear factor,
    # up to the b^2 H_l term (< 0.3 % here)
    assert np.all(np.abs(ng.transfer[2:] - 1) > 0.04)
    assert np.all(np.abs(ng.transfer[2:] * ng.linear - 1) < 0.005)


def test_gnl_maps_have_positive_kurtosis_and_no_skewness(gnl_ensemble):
    sim, data = gnl_ensemble
    ng = sim.non_gaussian
    kurt_g = np.array([excess_kurtosis(m) for m in data[0][1]])
    kurt_ng = np.array([excess_kurtosis(m) for m in data[1][1]])
    skew_ng = np.array([skewness(m) for m in data[1][1]])
    assert abs(kurt_g.mean()) < 4 * kurt_g.std() / np.sqrt(len(kurt_g))
    # T = g + b g^3 is odd in g: no skewness, positive kurtosis for g_NL > 0
    assert abs(skew_ng.mean()) < 4 * skew_ng.std() / np.sqrt(len(skew_ng))
    assert kurt_ng.mean() > 10 * kurt_ng.std() / np.sqrt(len(kurt_ng))
    assert np.mean(kurt_ng > 0) > 0.9
    # first order: 24 b sigma^2 times the fraction of <h^2> below lmax (~0.78 here)
    assert 0.7 * 24 * ng.b * ng.sigma2 < ng.excess_kurtosis < 24 * ng.b * ng.sigma2
    assert 0.85 < kurt_ng.mean() / ng.excess_kurtosis < 1.2, kurt_ng.mean() / ng.excess_kurtosis


def test_gnl_zero_is_gaussian():
    cl = planck2018_cl(LMAX)
    alm = gaussian_alm(cl, np.random.default_rng(1))
    model = LocalGNL(cl, NSIDE, 0.0)
    assert model.excess_kurtosis == 0 and np.allclose(model(alm)[3:], alm[3:])


def test_fnl_zero_is_gaussian():
    cl = planck2018_cl(LMAX)
    alm = gaussian_alm(cl, np.random.default_rng(1))
    assert np.allclose(LocalFNL(cl, NSIDE, 0.0)(alm)[3:], alm[3:])


def test_seeds_and_labels():
    seeds = map_seeds(5, 10)
    assert seeds.dtype == np.int64 and np.all(seeds >= 0) and len(set(seeds)) == 10
    assert np.array_equal(map_seeds(5, 4), seeds[:4])
    assert list(map_labels(6)) == [0, 1, 0, 1, 0, 1]


def make(path, n=6, **kw):
    config = SimulationConfig(n_maps=n, nside=NSIDE, lmax=LMAX, fnl=kw.pop("fnl", 1000.0),
                              seed=kw.pop("seed", 3), store=kw.pop("store", "both"),
                              ng_model=kw.pop("ng_model", "local"), gnl=kw.pop("gnl", 0.0))
    return simulate(path, config, progress=False, **kw)


def read(path):
    with h5py.File(path, "r") as f:
        return {k: f[k][()] for k in f}, dict(f.attrs)


def test_file_layout_and_regeneration_from_seed(tmp_path):
    make(tmp_path / "s.h5")
    data, attrs = read(tmp_path / "s.h5")
    assert data["labels"].dtype == np.int8 and list(data["labels"]) == [0, 1] * 3
    assert data["seeds"].dtype == np.int64
    assert data["maps"].shape == (6, hp.nside2npix(NSIDE)) and data["maps"].dtype == np.float32
    assert data["alm"].shape == (6, hp.Alm.getsize(LMAX)) and np.iscomplexobj(data["alm"])
    for key in ("nside", "lmax", "ng_model", "ng_amplitude", "cl_source", "unit", "cmbscat_version"):
        assert key in attrs
    assert attrs["unit"] == "uK" and attrs["nside"] == NSIDE and attrs["lmax"] == LMAX
    assert attrs["ng_model"] == "local" and attrs["ng_amplitude"] == attrs["fnl"] == 1000.0
    assert attrs["gnl"] == 0.0 and "f_NL" in attrs["label_meaning"]
    assert attrs["regenerate"] == (f"cmbscat simulate OUT.h5 --n-maps 6 --nside {NSIDE} --lmax {LMAX} "
                                   "--ng-model local --fnl 1000.0 --seed 3 --store both")
    # any map from its seed alone, bitwise
    row = simulate_sky(data["seeds"][3], data["labels"][3], NSIDE, LMAX, 1000.0)
    assert np.array_equal(row["maps"], data["maps"][3]) and np.array_equal(row["alm"], data["alm"][3])
    # the map is the synthesis of the stored a_lm
    assert np.allclose(hp.alm2map(data["alm"][3].astype(complex), NSIDE, lmax=LMAX), data["maps"][3],
                       atol=1e-3)


def test_gnl_file_records_its_model_and_regenerates(tmp_path):
    make(tmp_path / "g.h5", n=4, fnl=0.0, ng_model="gnl", gnl=GNL)
    data, attrs = read(tmp_path / "g.h5")
    assert attrs["ng_model"] == "gnl" and attrs["ng_amplitude"] == attrs["gnl"] == GNL
    assert attrs["fnl"] == 0.0 and "g_NL" in attrs["label_meaning"]
    row = simulate_sky(data["seeds"][1], 1, NSIDE, LMAX, ng_model="gnl", gnl=GNL)
    assert np.array_equal(row["alm"], data["alm"][1]) and np.array_equal(row["maps"], data["maps"][1])
    # the recorded command rewrites the file bitwise
    command = attrs["regenerate"].split()
    assert command[:3] == ["cmbscat", "simulate", "OUT.h5"]
    run_cli("simulate", "again.h5", *command[3:], "--no-progress", cwd=tmp_path, check=True)
    again, _ = read(tmp_path / "again.h5")
    assert all(np.array_equal(data[k], again[k]) for k in data)


def test_file_without_gnl_in_its_record_still_matches(tmp_path):
    """A file written before g_NL existed lacks the key; the same run finds it complete."""
    make(tmp_path / "s.h5", n=2)
    with h5py.File(tmp_path / "s.h5", "r+") as f:
        params = json.loads(f.attrs["cmbscat_params"])
        del params["gnl"]
        f.attrs["cmbscat_params"] = json.dumps(params, sort_keys=True)
    assert make(tmp_path / "s.h5", n=2) == 0
    with pytest.raises(CmbscatError, match="gnl"):
        make(tmp_path / "s.h5", n=2, fnl=0.0, ng_model="gnl", gnl=GNL)


def test_determinism(tmp_path):
    make(tmp_path / "a.h5")
    make(tmp_path / "b.h5")
    a, _ = read(tmp_path / "a.h5")
    b, _ = read(tmp_path / "b.h5")
    assert all(np.array_equal(a[k], b[k]) for k in a)
    make(tmp_path / "c.h5", seed=4)
    assert not np.array_equal(read(tmp_path / "c.h5")[0]["maps"], a["maps"])


def test_resume_after_interrupt_recomputes_nothing(tmp_path, monkeypatch):
    make(tmp_path / "ref.h5", n=8)
    calls = []
    original = SkySimulator.sky

    def flaky(self, seed, label, store="both"):
        calls.append(seed)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return original(self, seed, label, store)

    monkeypatch.setattr(SkySimulator, "sky", flaky)
    with pytest.raises(KeyboardInterrupt):
        make(tmp_path / "s.h5", n=8)
    assert not (tmp_path / "s.h5").exists()           # no half-written output
    assert len(list((tmp_path / "s.h5.partial").glob("item*.npz"))) == 4
    calls.clear()
    assert make(tmp_path / "s.h5", n=8) == 4
    assert len(calls) == 4                              # only the missing maps
    assert not (tmp_path / "s.h5.partial").exists()
    ref, s = read(tmp_path / "ref.h5")[0], read(tmp_path / "s.h5")[0]
    assert all(np.array_equal(ref[k], s[k]) for k in ref)
    calls.clear()
    assert make(tmp_path / "s.h5", n=8) == 0 and not calls   # complete: nothing to do


def test_resume_after_kill(tmp_path):
    """SIGKILL a real run midway; the same command then finishes it, bitwise as a clean run."""
    args = [sys.executable, "-m", "cmbscat", "simulate", "s.h5", "--n-maps", "60", "--nside", "128",
            "--lmax", "255", "--store", "maps", "--no-progress"]
    proc = subprocess.Popen(args, cwd=tmp_path, stderr=subprocess.DEVNULL)
    partial = tmp_path / "s.h5.partial"
    deadline = time.time() + 60
    while time.time() < deadline and len(list(partial.glob("item*.npz"))) < 10:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = len(list(partial.glob("item*.npz")))
    assert 10 <= done < 60 and not (tmp_path / "s.h5").exists()
    resumed = run_cli(*args[3:], cwd=tmp_path, check=True)
    assert f"({60 - done} maps computed now)" in resumed.stderr
    with h5py.File(tmp_path / "s.h5") as f:
        maps, labels, seeds = f["maps"][[0, 31, 59]], f["labels"][()], f["seeds"][()]
    for row, i in enumerate([0, 31, 59]):
        ref = simulate_sky(seeds[i], labels[i], 128, 255, 1000.0, store="maps")["maps"]
        assert np.array_equal(maps[row], ref)


def test_shards_combine_to_the_whole(tmp_path):
    config = SimulationConfig(n_maps=6, nside=NSIDE, lmax=LMAX, fnl=1000.0, seed=3)
    from cmbscat.store import Shard
    parts = []
    for k in range(3):
        parts.append(tmp_path / "shards" / f"s{k}.h5")
        simulate(parts[-1], config, shard=Shard(k, 3), progress=False)
    assert combine_shards(tmp_path / "all.h5", parts[::-1]) == 6
    make(tmp_path / "whole.h5")
    whole, combined = read(tmp_path / "whole.h5")[0], read(tmp_path / "all.h5")[0]
    assert all(np.array_equal(whole[k], combined[k]) for k in whole)
    with h5py.File(tmp_path / "all.h5") as f:
        assert f["maps"].is_virtual
    with pytest.raises(CmbscatError, match="missing"):
        combine_shards(tmp_path / "bad.h5", parts[:2])


def test_memory_does_not_grow_with_the_number_of_maps(tmp_path):
    def peak_mb(n):
        code = ("import resource, cmbscat.sky.simulate as s;"
                f"s.simulate('m{n}.h5', s.SimulationConfig({n}, 128, 255, 1000.0, 0, store='maps'),"
                " progress=False);"
                "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)")
        out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                             text=True, check=True)
        return float(out.stdout)

    small, large = peak_mb(4), peak_mb(64)
    # holding 64 maps would add 64 * 0.75 MB = 48 MB
    assert large - small < 15, (small, large)


@pytest.mark.parametrize("args, fragment", [
    (["--nside", "48"], "power of two"),
    (["--nside", "32", "--lmax", "96"], "3*nside-1"),
    (["--n-maps", "1"], "at least 2"),
    (["--n-maps", "5"], "even"),
    (["--shard", "3/3"], "--shard"),
])
def test_bad_input_is_refused_in_one_line(tmp_path, args, fragment):
    proc = run_cli("simulate", tmp_path / "x.h5", "--no-progress", *args)
    assert_one_line_error(proc, fragment)
    assert not (tmp_path / "x.h5").exists()


@pytest.mark.parametrize("args, fragment", [
    (["--fnl", "nan"], "--fnl must be a finite number"),
    (["--ng-model", "gnl", "--gnl", "inf"], "--gnl must be a finite number"),
    (["--ng-model", "gnl"], "needs --gnl"),
    (["--ng-model", "gnl", "--gnl", "1e5", "--fnl", "1000"], "--fnl 1000.0 needs --ng-model local"),
])
def test_bad_amplitudes_are_refused_in_one_line(tmp_path, args, fragment):
    proc = run_cli("simulate", tmp_path / "y.h5", "--n-maps", "2", "--no-progress", *args)
    assert_one_line_error(proc, fragment)
    assert not list(tmp_path.iterdir())   # nothing written, not even a partial folder


@pytest.mark.parametrize("ng_model, fnl, gnl, fragment", [
    ("local", float("nan"), 0.0, "--fnl"),
    ("local", float("-inf"), 0.0, "--fnl"),
    ("gnl", 0.0, float("nan"), "--gnl"),
    ("gnl", 0.0, float("inf"), "--gnl"),
    ("local", 1000.0, 1e5, "--gnl 100000.0 needs --ng-model gnl"),
    ("gnl", 50.0, 1e5, "--fnl 50.0 needs --ng-model local"),
    ("equilateral", 0.0, 0.0, "unknown --ng-model"),
])
def test_config_refuses_bad_amplitudes(ng_model, fnl, gnl, fragment):
    config = SimulationConfig(n_maps=2, nside=NSIDE, lmax=LMAX, fnl=fnl, seed=0, ng_model=ng_model, gnl=gnl)
    with pytest.raises(CmbscatError, match=fragment):
        config.validate()
    if ng_model in ("local", "gnl"):
        with pytest.raises(CmbscatError, match=fragment):
            SkySimulator(NSIDE, LMAX, fnl, ng_model, gnl)


def test_cli_amplitude_defaults():
    """--fnl's 1000 is the local model's default only; g_NL has no default."""
    assert resolve_ng_amplitudes("local", None, None) == (1000.0, 0.0)
    assert resolve_ng_amplitudes("local", 5.0, None) == (5.0, 0.0)
    assert resolve_ng_amplitudes("gnl", None, 2e5) == (0.0, 2e5)
    assert resolve_ng_amplitudes("gnl", 7.0, 2e5) == (7.0, 2e5)  # refused later, by validate
    with pytest.raises(CmbscatError, match="needs --gnl"):
        resolve_ng_amplitudes("gnl", None, None)


def test_existing_output_with_other_parameters_is_refused(tmp_path):
    run_cli("simulate", "s.h5", "--n-maps", "2", "--nside", "16", "--lmax", "31", cwd=tmp_path,
            check=True)
    again = run_cli("simulate", "s.h5", "--n-maps", "2", "--nside", "16", "--lmax", "31",
                    cwd=tmp_path, check=True)
    assert "already complete" in again.stderr
    proc = run_cli("simulate", "s.h5", "--n-maps", "2", "--nside", "16", "--lmax", "30",
                   cwd=tmp_path)
    assert_one_line_error(proc, "different parameters", "lmax")
    (tmp_path / "junk.h5").write_text("not hdf5")
    assert_one_line_error(run_cli("simulate", "junk.h5", cwd=tmp_path), "not a readable HDF5")


def test_unwritable_path_is_refused(tmp_path):
    (tmp_path / "afile").write_text("")
    assert_one_line_error(run_cli("simulate", tmp_path / "afile" / "x.h5"), "not a folder")
    assert_one_line_error(run_cli("simulate", "/proc/cmbscat/x.h5"), "cannot write")
