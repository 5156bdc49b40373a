"""Per-map f_NL drawn from a distribution (``simulate --fnl-dist``): parsing, per-map values,
the maps they make, /fnl in every stage's output, and older files without /fnl."""

import shutil

import h5py
import healpy as hp
import numpy as np
import pytest

from cmbscat.errors import CmbscatError
from cmbscat.experiment.datasets import read_fnl
from cmbscat.scattering.stage import scatter
from cmbscat.sky.fnl_distribution import FnlDistribution, fnl_labels, fnl_rng
from cmbscat.sky.nongaussian import LocalFNL
from cmbscat.sky.simulate import (SimulationConfig, SkySimulator, map_parameters, map_seeds,
                                  regenerate_map, resolve_ng_amplitudes, simulate, simulate_sky,
                                  simulation_defaults)
from cmbscat.sky.source import open_source
from cmbscat.sky.spectra import planck2018_cl
from cmbscat.stats.stage import compute_stats
from cmbscat.store import Shard, combine_shards

from conftest import assert_one_line_error, run_cli

NSIDE, LMAX = 16, 31
SCATTER = dict(depth=1, J0=3, progress=False)


def config(n=6, spec="uniform:-50,150", seed=3, **kw):
    return SimulationConfig(n_maps=n, nside=NSIDE, lmax=LMAX, fnl=kw.pop("fnl", 0.0), seed=seed,
                            store=kw.pop("store", "both"), fnl_dist=spec, **kw)


def read(path):
    with h5py.File(path, "r") as f:
        return {k: f[k][()] for k in f}, dict(f.attrs)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A uniform-f_NL sims file (5 maps), its scattering and statistics files."""
    root = tmp_path_factory.mktemp("fnl_dist")
    out = {"sims": root / "sims.h5", "scat": root / "scat.h5", "stats": root / "stats.h5"}
    simulate(out["sims"], config(n=5), progress=False)
    scatter(out["sims"], out["scat"], **SCATTER)
    compute_stats(out["sims"], out["stats"], progress=False)
    return out


# -- the distribution --------------------------------------------------------------------------

@pytest.mark.parametrize("spec, form, params, canonical", [
    ("uniform:0,100", "uniform", (0.0, 100.0), "uniform:0.0,100.0"),
    ("  Uniform: -5e1 , 5e1 ", "uniform", (-50.0, 50.0), "uniform:-50.0,50.0"),
    ("normal:10,2.5", "normal", (10.0, 2.5), "normal:10.0,2.5"),
    ("grid:0,10,20,30", "grid", (0.0, 10.0, 20.0, 30.0), "grid:0.0,10.0,20.0,30.0"),
    ("grid:7", "grid", (7.0,), "grid:7.0"),
])
def test_parse_and_canonical_spec(spec, form, params, canonical):
    dist = FnlDistribution.parse(spec)
    assert (dist.form, dist.params, dist.spec, str(dist)) == (form, params, canonical, canonical)
    assert FnlDistribution.parse(dist.spec) == dist


@pytest.mark.parametrize("spec, fragment", [
    ("", "must be uniform:LO,HI"),
    ("uniform", "must be uniform:LO,HI"),
    ("beta:1,2", "must be uniform:LO,HI"),
    ("uniform:1", "takes two numbers"),
    ("normal:1,2,3", "takes two numbers"),
    ("uniform:2,1", "LO < HI"),
    ("uniform:1,1", "LO < HI"),
    ("normal:0,0", "SD > 0"),
    ("normal:0,-1", "SD > 0"),
    ("grid:", "must be numbers"),
    ("grid:1,x,3", "must be numbers"),
    ("uniform:0,inf", "finite"),
    ("grid:nan", "finite"),
])
def test_bad_specs_are_refused(spec, fragment):
    with pytest.raises(CmbscatError, match=fragment) as err:
        FnlDistribution.parse(spec)
    assert "\n" not in str(err.value)


def test_values_are_functions_of_each_maps_seed_alone():
    seeds = map_seeds(9, 40)
    for spec in ("uniform:-100,100", "normal:0,30"):
        dist = FnlDistribution.parse(spec)
        values = dist.values(seeds)
        assert values.dtype == np.float64 and values.shape == (40,)
        assert np.array_equal(dist.values(seeds[::-1]), values[::-1])  # order does not matter
        assert np.array_equal(dist.values(seeds[:7]), values[:7])      # nor the number of maps
        assert [dist.value(i, s) for i, s in enumerate(seeds)] == list(values)
        assert len(set(values)) == 40
    # a stream separate from the one that draws the map's Gaussian a_lm
    assert fnl_rng(5).random() != np.random.default_rng(5).random()
    with pytest.raises(CmbscatError, match="seed"):
        FnlDistribution.parse("uniform:0,1").value(0, -1)


def test_uniform_and_normal_values_follow_their_distribution():
    seeds = map_seeds(1, 400)
    u = FnlDistribution.parse("uniform:-20,60").values(seeds)
    assert u.min() >= -20 and u.max() < 60 and u.min() < -15 and u.max() > 55
    assert abs(u.mean() - 20) < 4 * 80 / np.sqrt(12 * 400)
    g = FnlDistribution.parse("normal:5,10").values(seeds)
    assert abs(g.mean() - 5) < 4 * 10 / np.sqrt(400) and 0.85 < g.std() / 10 < 1.15


def test_grid_is_balanced_by_index():
    seeds = map_seeds(2, 12)
    values = FnlDistribution.parse("grid:0,25,50").values(seeds)
    assert list(values) == [0, 25, 50] * 4
    assert list(fnl_labels(values)) == [0, 1, 1] * 4
    assert np.array_equal(FnlDistribution.parse("grid:0,25,50").values(map_seeds(7, 12)), values)


# -- the configuration ---------------------------------------------------------------------------

def test_config_records_the_canonical_spec_and_old_records_match():
    assert config(spec="uniform:0,100").fnl_dist == "uniform:0.0,100.0"
    assert config(spec="uniform:0,100") == config(spec="uniform:0.0, 1e2")
    assert simulation_defaults()["fnl_dist"] == ""
    assert SimulationConfig(2, NSIDE, LMAX, 1000.0, 0).distribution is None
    config(n=3).validate()  # an odd number of maps is fine with a distribution


@pytest.mark.parametrize("kw, fragment", [
    (dict(spec="uniform:1,0"), "LO < HI"),
    (dict(fnl=1000.0), "exclude each other"),
    (dict(ng_model="gnl", gnl=1e5), "needs --ng-model local"),
    (dict(n=0), "at least 1"),
])
def test_config_refusals(kw, fragment):
    with pytest.raises(CmbscatError, match=fragment):
        config(**kw).validate()


def test_cli_amplitudes_with_a_distribution():
    assert resolve_ng_amplitudes("local", None, None, "grid:0,1") == (0.0, 0.0)
    with pytest.raises(CmbscatError, match="exclude each other"):
        resolve_ng_amplitudes("local", 0.0, None, "grid:0,1")    # explicit --fnl, even 0
    with pytest.raises(CmbscatError, match="needs --ng-model local"):
        resolve_ng_amplitudes("gnl", None, 1e5, "grid:0,1")


# -- the maps ----------------------------------------------------------------------------------

def test_with_fnl_is_the_fresh_model_sharing_d_l():
    cl = planck2018_cl(LMAX)
    base = LocalFNL(cl, NSIDE, 0.0)
    other = base.with_fnl(300.0)
    fresh = LocalFNL(cl, NSIDE, 300.0)
    assert other.quadratic_cl is base.quadratic_cl and base.fnl == 0.0
    assert np.array_equal(other.transfer, fresh.transfer) and other.a == fresh.a
    alm = SkySimulator(NSIDE, LMAX).alm(4, 0)[0]
    assert np.array_equal(other(alm), fresh(alm))


def test_one_field_at_several_fnl_and_the_antithetic_identity():
    """A passed quadratic_alm gives the same a_lm as the model's own; and the map of -g at
    -f is exactly minus the map of g at f (studies/fnl_anchor_bias.py relies on it)."""
    cl = planck2018_cl(LMAX)
    model, mirrored = LocalFNL(cl, NSIDE, 300.0), LocalFNL(cl, NSIDE, -300.0)
    g_alm = SkySimulator(NSIDE, LMAX).alm(4, 0)[0]
    g_map = hp.alm2map(g_alm, NSIDE, lmax=LMAX)
    q_alm = model.quadratic_alm(g_map)
    assert np.array_equal(model(g_alm, quadratic_alm=q_alm), model(g_alm, g_map))
    assert np.array_equal(mirrored.quadratic_alm(-g_map), q_alm)
    assert np.allclose(mirrored(-g_alm, -g_map), -model(g_alm, g_map), rtol=0, atol=1e-12 * np.abs(g_alm).max())


def test_simulator_builds_one_model_per_value_and_keeps_few():
    sim = SkySimulator(NSIDE, LMAX, 0.0)
    assert sim.local_model(20.0) is sim.local_model(20.0)
    assert sim.local_model(0.0) is sim.non_gaussian
    for v in range(100):
        sim.local_model(float(v) + 0.5)
    assert len(sim._local_models) <= sim.MODEL_CACHE
    with pytest.raises(ValueError):
        SkySimulator(NSIDE, LMAX, ng_model="gnl", gnl=1e5).local_model(1.0)


def test_file_layout_and_every_map_regenerates_at_its_own_fnl(files):
    data, attrs = read(files["sims"])
    seeds, labels, fnl = map_parameters(config(n=5))
    assert data["fnl"].dtype == np.float64 and np.array_equal(data["fnl"], fnl)
    assert np.array_equal(data["labels"], labels) and np.all(labels == 1)
    assert np.array_equal(data["seeds"], seeds)
    assert attrs["fnl_dist"] == "uniform:-50.0,150.0" and np.isnan(attrs["fnl"])
    assert np.isnan(attrs["ng_amplitude"]) and "/fnl" in attrs["label_meaning"]
    assert "--fnl-dist uniform:-50.0,150.0" in attrs["regenerate"] and "--fnl " not in attrs["regenerate"]
    for i in range(5):
        # the same map as a fixed-f_NL file at that value would hold: one transfer function per value
        row = simulate_sky(seeds[i], 1, NSIDE, LMAX, fnl[i])
        assert np.array_equal(row["alm"], data["alm"][i]) and np.array_equal(row["maps"], data["maps"][i])
        again = regenerate_map(files["sims"], i)
        assert np.array_equal(again["alm"], data["alm"][i]) and np.array_equal(again["maps"], data["maps"][i])


def test_fnl_zero_maps_are_the_gaussian_maps_of_their_seed(tmp_path):
    simulate(tmp_path / "grid.h5", config(n=4, spec="grid:0,500"), progress=False)
    simulate(tmp_path / "fixed.h5", SimulationConfig(4, NSIDE, LMAX, 500.0, 3), progress=False)
    grid, attrs = read(tmp_path / "grid.h5")
    fixed, _ = read(tmp_path / "fixed.h5")
    assert list(grid["fnl"]) == [0, 500, 0, 500] and list(grid["labels"]) == [0, 1, 0, 1]
    # the same seeds, labels, f_NL: the grid file is bitwise the fixed one (/fnl included)
    for name in ("alm", "maps", "labels", "seeds", "fnl"):
        assert np.array_equal(grid[name], fixed[name]), name
    gaussian = SkySimulator(NSIDE, LMAX).alm(grid["seeds"][2], 0)[0]
    assert np.array_equal(grid["alm"][2], gaussian.astype(np.complex64))
    assert regenerate_map(tmp_path / "grid.h5", 2, store="alm")["alm"].tobytes() == grid["alm"][2].tobytes()


def test_fixed_and_gnl_files_record_fnl(tmp_path):
    simulate(tmp_path / "f.h5", SimulationConfig(4, NSIDE, LMAX, 700.0, 1, store="alm"), progress=False)
    simulate(tmp_path / "g.h5", SimulationConfig(2, NSIDE, LMAX, 0.0, 1, ng_model="gnl", gnl=1e5,
                                                 store="alm"), progress=False)
    (f, fa), (g, ga) = read(tmp_path / "f.h5"), read(tmp_path / "g.h5")
    assert list(f["fnl"]) == [0, 700, 0, 700] and fa["fnl_dist"] == "" and fa["fnl"] == 700
    assert list(g["fnl"]) == [0, 0] and ga["fnl_dist"] == "" and ga["fnl"] == 0
    assert np.array_equal(regenerate_map(tmp_path / "g.h5", 1)["alm"], g["alm"][1])


def test_shards_combine_to_the_unsharded_file(files, tmp_path):
    parts = [tmp_path / f"s{k}.h5" for k in range(2)]
    for k, part in enumerate(parts):
        simulate(part, config(n=5), shard=Shard(k, 2), progress=False)
    combine_shards(tmp_path / "all.h5", parts)
    whole, combined = read(files["sims"])[0], read(tmp_path / "all.h5")[0]
    assert sorted(whole) == sorted(combined) and "fnl" in combined
    assert all(np.array_equal(whole[k], combined[k]) for k in whole)
    with h5py.File(tmp_path / "all.h5") as f, h5py.File(files["sims"]) as g:
        assert f["fnl"].is_virtual and f.attrs["content_sha256"] == g.attrs["content_sha256"]


# -- the downstream stages and older files ------------------------------------------------------

def test_scatter_and_stats_carry_fnl(files, tmp_path):
    fnl = read(files["sims"])[0]["fnl"]
    for name in ("sims", "scat", "stats"):
        assert np.array_equal(read_fnl(files[name]), fnl), name
    parts = [tmp_path / f"c{k}.h5" for k in range(2)]
    for k, part in enumerate(parts):
        scatter(files["sims"], part, shard=Shard(k, 2), **SCATTER)
    combine_shards(tmp_path / "scat.h5", parts)
    assert np.array_equal(read_fnl(tmp_path / "scat.h5"), fnl)
    assert np.array_equal(open_source(files["sims"]).fnl, fnl)


def _drop_fnl(src, dst):
    shutil.copy(src, dst)
    with h5py.File(dst, "r+") as f:
        del f["fnl"]
    return dst


def test_older_files_without_fnl(tmp_path):
    old = tmp_path / "old.h5"
    simulate(old, SimulationConfig(4, NSIDE, LMAX, 800.0, 2, store="alm"), progress=False)
    _drop_fnl(old, old.with_suffix(".tmp.h5")).replace(old)
    assert list(read_fnl(old)) == [0, 800, 0, 800]
    assert list(open_source(old).fnl) == [0, 800, 0, 800]
    # its scattering file gets the recovered /fnl; an older scattering file has none: refused
    scatter(old, tmp_path / "scat.h5", **SCATTER)
    assert list(read_fnl(tmp_path / "scat.h5")) == [0, 800, 0, 800]
    _drop_fnl(tmp_path / "scat.h5", tmp_path / "scat_old.h5")
    with pytest.raises(CmbscatError, match="has no /fnl .made before per-map f_NL existed.; rerun"):
        read_fnl(tmp_path / "scat_old.h5")
    # a sims file whose attributes do not say: NaN for the stages, refused by read_fnl
    with h5py.File(old, "r+") as f:
        del f.attrs["fnl"], f.attrs["ng_amplitude"]
    assert np.isnan(open_source(old).fnl).all()
    with pytest.raises(CmbscatError, match="no /fnl and no ng_model/fnl"):
        read_fnl(old)


def test_fits_maps_have_unknown_fnl(files, tmp_path):
    m = hp.alm2map(read(files["sims"])[0]["alm"][0].astype(complex), NSIDE, lmax=LMAX)
    hp.write_map(str(tmp_path / "m.fits"), m, dtype=np.float64, column_units="uK")
    source = open_source(tmp_path / "m.fits")
    assert source.fnl.shape == (1,) and np.isnan(source.fnl).all()
    compute_stats(tmp_path / "m.fits", tmp_path / "stats.h5", progress=False)
    assert np.isnan(read_fnl(tmp_path / "stats.h5")).all()


# -- the command line ----------------------------------------------------------------------------

@pytest.mark.parametrize("args, fragment", [
    (["--fnl-dist", "uniform:5,1"], "LO < HI"),
    (["--fnl-dist", "lognormal:1,2"], "--fnl-dist must be"),
    (["--fnl-dist", ""], "--fnl-dist must be"),
    (["--fnl-dist", "grid:0,10", "--fnl", "10"], "exclude each other"),
    (["--fnl-dist", "grid:0,10", "--ng-model", "gnl", "--gnl", "1e5"], "needs --ng-model local"),
])
def test_cli_refuses_in_one_line(tmp_path, args, fragment):
    proc = run_cli("simulate", tmp_path / "x.h5", "--n-maps", "2", "--no-progress", *args)
    assert_one_line_error(proc, fragment)
    assert not list(tmp_path.iterdir())


def test_cli_writes_and_the_recorded_command_rewrites_bitwise(tmp_path):
    common = ["--nside", NSIDE, "--lmax", LMAX, "--seed", 4, "--store", "alm", "--no-progress"]
    run_cli("simulate", "a.h5", "--n-maps", 3, "--fnl-dist", "normal:0, 40", *common, cwd=tmp_path,
            check=True)
    data, attrs = read(tmp_path / "a.h5")
    assert attrs["fnl_dist"] == "normal:0.0,40.0" and data["fnl"].shape == (3,)
    command = attrs["regenerate"].split()
    run_cli("simulate", "b.h5", *command[3:], "--no-progress", cwd=tmp_path, check=True)
    again, _ = read(tmp_path / "b.h5")
    assert all(np.array_equal(data[k], again[k]) for k in data)
    help_text = run_cli("simulate", "--help").stdout
    assert "uniform:LO,HI" in help_text and "grid:V1,V2" in help_text and "f_NL != 0" in help_text
