"""Observed skies (``simulate --beam-fwhm --noise --hits --mask --apodize``): beam, noise
power and its modulation by hits, masks and their apodization, per-map reproducibility,
shards, files without an observation unchanged, refused inputs."""

import json
import math

import h5py
import healpy as hp
import numpy as np
import pytest

from cmbscat.errors import CmbscatError
from cmbscat.sky.fnl_distribution import fnl_rng
from cmbscat.sky.observe import (ARCMIN, MaskSpec, ObservationConfig, apodize_c1, beam_window,
                                 galactic_cut, map2alm_iter0, noise_rng, noise_sigma_map,
                                 pixel_area_arcmin2, regrade_hits, regrade_mask, scan_hits,
                                 source_centres, source_holes, white_noise_alm, white_noise_power)
from cmbscat.sky.pixel_window import pixel_window
from cmbscat.sky.simulate import (PIXEL_WINDOW_APPLIED, SimulationConfig, SkySimulator, regenerate_map,
                                  simulate, simulation_defaults)
from cmbscat.sky.source import open_source
from cmbscat.store import Shard, combine_shards

from conftest import assert_one_line_error, run_cli

NSIDE, LMAX = 16, 31
PLANCK_LIKE = dict(beam_fwhm_arcmin=60.0, noise_uk_arcmin=45.0, mask="galactic:20,sources:20:120",
                   apodize_deg=10.0)


def config(n=4, seed=3, **observation):
    return SimulationConfig(n_maps=n, nside=NSIDE, lmax=LMAX, fnl=30.0, seed=seed, **observation)


def read(path):
    with h5py.File(path, "r") as f:
        return {k: f[k][()] for k in f}, dict(f.attrs)


def write_fits(path, values):
    hp.write_map(str(path), np.asarray(values, dtype=np.float64), dtype=np.float64, overwrite=True)
    return path


def angle_to_nearest(nside, observed):
    """Brute force: angle (rad) from each pixel centre to the nearest masked pixel centre."""
    vec = np.array(hp.pix2vec(nside, np.arange(hp.nside2npix(nside)))).T
    cos = vec @ vec[~observed].T
    return np.arccos(np.clip(cos.max(axis=1), -1, 1))


# -- beam and noise --------------------------------------------------------------------------------

def test_beam_window_is_gauss_beam_and_is_applied_to_the_alm():
    fwhm = 90.0
    expected = hp.gauss_beam(math.radians(fwhm / 60), lmax=LMAX)
    assert beam_window(LMAX, fwhm).shape == (LMAX + 1,)
    assert np.allclose(beam_window(LMAX, fwhm), expected, rtol=1e-14, atol=0)
    assert np.array_equal(beam_window(LMAX, 0.0), np.ones(LMAX + 1))
    # with an nside, times the pixel window of that nside (shipped table): the observation's beam
    pixwin = pixel_window(NSIDE, LMAX)
    assert np.allclose(beam_window(LMAX, fwhm, NSIDE), expected * pixwin, rtol=1e-14, atol=0)
    alm = SkySimulator(NSIDE, LMAX).alm(7, 0)[0]
    observed = ObservationConfig(beam_fwhm_arcmin=fwhm).observe(alm, 7, NSIDE, LMAX)
    assert np.allclose(observed, hp.almxfl(alm, expected * pixwin), rtol=0, atol=1e-12)


def test_homogeneous_noise_has_the_stated_power():
    depth, lmax = 45.0, 127
    expected = (depth * math.pi / 180 / 60) ** 2        # uK^2 sr
    assert white_noise_power(depth) == pytest.approx(expected, rel=1e-12)
    cls = np.array([hp.alm2cl(white_noise_alm(lmax, depth, noise_rng(s))) for s in range(4)])
    ell = np.arange(lmax + 1)
    mode_mean = np.sum((2 * ell + 1) * cls.mean(0)) / np.sum(2 * ell + 1)   # sd 0.6 %
    assert abs(mode_mean / expected - 1) < 0.03
    assert abs(cls.mean() / expected - 1) < 0.05                            # mean over l (sd ~1 %)
    # the same through the configuration, with no sky: only the noise is there
    alm = ObservationConfig(noise_uk_arcmin=depth).observe(np.zeros(hp.Alm.getsize(lmax), complex), 5,
                                                           64, lmax)
    assert abs(np.mean(hp.alm2cl(alm)) / expected - 1) < 0.1


def test_pixel_noise_with_uniform_hits_has_the_same_power():
    depth, nside, lmax = 45.0, 32, 63
    uniform = np.full(hp.nside2npix(nside), 7.0)
    sigma = noise_sigma_map(nside, depth, uniform)
    assert np.allclose(sigma, depth / math.sqrt(pixel_area_arcmin2(nside)))
    prepared = ObservationConfig(noise_uk_arcmin=depth, hits="scan").prepare(nside, lmax, hits=uniform)
    zero = np.zeros(hp.Alm.getsize(lmax), complex)
    cls = np.array([hp.alm2cl(prepared.observe(zero, s)) for s in range(6)])
    assert abs(cls[:, 2:].mean() / white_noise_power(depth) - 1) < 0.04


def test_pixel_noise_analysis_is_healpys_map2alm():
    m = np.random.default_rng(1).standard_normal(hp.nside2npix(NSIDE))
    expected = hp.map2alm(m, lmax=2 * NSIDE, mmax=2 * NSIDE, iter=0, use_weights=False)
    assert np.allclose(map2alm_iter0(m, 2 * NSIDE), expected, rtol=0, atol=1e-12 * np.abs(expected).max())


def test_inhomogeneous_noise_variance_follows_the_hits(tmp_path):
    nside, lmax = 32, 95
    # hits 1 in the north, 4 in the south, given at nside 16: regraded (summed) to nside 32
    z16 = hp.pix2vec(16, np.arange(hp.nside2npix(16)))[2]
    fits = write_fits(tmp_path / "hits.fits", np.where(z16 > 0, 1.0, 4.0))
    notes = []
    observation = ObservationConfig(noise_uk_arcmin=45.0, hits=str(fits))
    hits = observation.hit_map(nside, note=notes.append)
    assert len(notes) == 1 and "regraded to 32" in notes[0]
    assert hits.sum() == pytest.approx(np.where(z16 > 0, 1.0, 4.0).sum())   # summed, not averaged
    z = hp.pix2vec(nside, np.arange(hp.nside2npix(nside)))[2]
    sigma = noise_sigma_map(nside, 45.0, hits)
    low = hits == hits.min()
    assert np.allclose(sigma[low] / sigma[~low].max(), 2.0)                 # sigma ~ hits^-1/2
    prepared = observation.prepare(nside, lmax, hits=hits)
    zero = np.zeros(hp.Alm.getsize(lmax), complex)
    maps = np.array([hp.alm2map(prepared.observe(zero, s), nside, lmax=lmax) for s in range(12)])
    ratio = maps[:, z > 0.3].var() / maps[:, z < -0.3].var()
    assert 3.4 < ratio < 4.6, ratio


def test_noise_comes_from_each_maps_own_stream():
    first = noise_rng(5).standard_normal(4)
    assert np.array_equal(noise_rng(5).standard_normal(4), first)
    assert not np.array_equal(np.random.default_rng(5).standard_normal(4), first)
    assert not np.array_equal(fnl_rng(5).standard_normal(4), first)


# -- hits and masks ---------------------------------------------------------------------------------

def test_scan_hits_are_deepest_at_the_ecliptic_poles():
    hits = scan_hits(32)
    assert hits.min() == pytest.approx(1.0, abs=1e-3) and hits.max() == pytest.approx(10.0)
    north_ecliptic_pole = hp.ang2pix(32, 96.384, 29.811, lonlat=True)   # Galactic (l, b)
    assert hits[north_ecliptic_pole] == pytest.approx(10.0)
    # points given in ecliptic coordinates, rotated to Galactic the other way round
    to_galactic = hp.Rotator(coord=["E", "G"])
    for beta, expected in ((0.0, 1.0), (60.0, 2.0), (-60.0, 2.0)):
        vec = to_galactic(hp.ang2vec(123.0, beta, lonlat=True))
        assert hits[hp.vec2pix(32, *vec)] == pytest.approx(expected, rel=0.05)


def test_galactic_cut_removes_the_right_fraction():
    nside = 64
    for b0 in (10.0, 20.0, 45.0):
        observed = galactic_cut(nside, b0)
        assert abs(observed.mean() - (1 - math.sin(math.radians(b0)))) < 2 / (3 * nside)
        lat = hp.pix2ang(nside, np.arange(observed.size), lonlat=True)[1]
        assert np.all(np.abs(lat[~observed]) < b0) and np.all(np.abs(lat[observed]) >= b0)


def test_sources_make_n_holes_of_the_right_area():
    nside, n, radius = 64, 12, 180.0
    observed = source_holes(nside, n, radius)
    centres = source_centres(n)
    assert np.array_equal(source_centres(5), centres[:5])         # the first n of N are the same
    area = 2 * math.pi * (1 - math.cos(radius * ARCMIN)) / hp.nside2pixarea(nside)   # ~34 pixels
    assert abs((~observed).sum() / (n * area) - 1) < 0.1
    vec = np.array(hp.pix2vec(nside, np.arange(observed.size))).T
    angle = np.arccos(np.clip(vec @ centres.T, -1, 1))               # (npix, n)
    assert np.all(observed[angle.min(1) > radius * ARCMIN + hp.nside2resol(nside)])
    assert not np.any(observed[angle.min(1) < radius * ARCMIN])
    # each hole holds at least the pixel of its centre, however small
    tiny = source_holes(16, n, 1.0)
    assert (~tiny).sum() == len(set(hp.vec2pix(16, *centres.T)))


def test_apodization_is_c1_of_the_distance_to_the_mask():
    nside, apo = 32, 10.0
    for spec in ("galactic:30", "sources:6:600", "galactic:20,sources:30:200"):
        observed = MaskSpec.parse(spec).observed(nside)
        w = apodize_c1(observed, apo)
        theta = angle_to_nearest(nside, observed)
        x = np.minimum(np.sqrt((1 - np.cos(theta)) / (1 - math.cos(math.radians(apo)))), 1)
        assert np.allclose(w, x - np.sin(2 * np.pi * x) / (2 * np.pi), atol=1e-12), spec
        assert np.all(w[~observed] == 0) and np.all(w[observed] > 0)
        assert np.all(w[theta >= math.radians(apo)] == 1) and np.any((w < 1) & observed)
        order = np.argsort(theta, kind="stable")
        assert np.all(np.diff(w[order]) >= -1e-12)                   # monotone in the distance


def test_mask_specs_parse_to_canonical_form():
    assert MaskSpec.parse("Galactic:20, sources:200").spec == "galactic:20.0,sources:200:30.0"
    assert MaskSpec.parse("sources:5:45").spec == "sources:5:45.0"
    assert config(mask="galactic:20,sources:200") == config(mask="sources:200:30,galactic:20.0")
    assert ObservationConfig(hits="SCAN").hits == "scan"


def test_user_fits_mask_is_regraded_and_bad_pixels_are_masked(tmp_path):
    fine = np.ones(hp.nside2npix(32))
    fine[hp.ang2pix(32, 40.0, 50.0, lonlat=True)] = 0.0       # one fine pixel masked
    fine[hp.ang2pix(32, 200.0, -30.0, lonlat=True)] = np.nan  # bad pixels count as masked
    fine[hp.ang2pix(32, 100.0, 10.0, lonlat=True)] = hp.UNSEEN
    fits = write_fits(tmp_path / "mask.fits", fine)
    notes = []
    mask = ObservationConfig(mask=str(fits)).build_mask(NSIDE, note=notes.append)
    assert len(notes) == 1 and "nside 32 regraded to 16" in notes[0]
    assert mask.weights.dtype == np.float32 and mask.binary.dtype == np.uint8
    for lon, lat in ((40.0, 50.0), (200.0, -30.0), (100.0, 10.0)):   # the coarse parent is masked
        assert mask.binary[hp.ang2pix(NSIDE, lon, lat, lonlat=True)] == 0
    assert mask.binary.sum() == mask.binary.size - 3
    # upgrading copies, and hits keep their total either way
    assert np.array_equal(regrade_mask(mask.weights.astype(float), 32)[hp.ang2pix(32, 40.0, 50.0, lonlat=True)], 0)
    hits = scan_hits(NSIDE)
    assert regrade_hits(hits, 32).sum() == pytest.approx(hits.sum())


def test_zero_hit_pixels_are_masked(tmp_path):
    hits = np.ones(hp.nside2npix(NSIDE))
    hits[:40] = 0.0
    fits = write_fits(tmp_path / "hits.fits", hits)
    notes = []
    observation = ObservationConfig(noise_uk_arcmin=10.0, hits=str(fits))
    mask = observation.build_mask(NSIDE, observation.hit_map(NSIDE), note=notes.append)
    assert np.array_equal(mask.binary, (hits > 0).astype(np.uint8))
    assert len(notes) == 1 and "40 observed pixels have no hits" in notes[0]


# -- the sims file -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def observed_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("observed") / "obs.h5"
    simulate(path, config(n=4, hits="scan", **PLANCK_LIKE), progress=False)
    return path


def test_observed_file_layout_and_every_map_regenerates(observed_file):
    data, attrs = read(observed_file)
    npix = hp.nside2npix(NSIDE)
    assert data["mask"].dtype == np.float32 and data["mask"].shape == (npix,)
    assert data["mask_binary"].dtype == np.uint8 and np.array_equal(data["mask_binary"], data["mask"] > 0)
    assert data["hits"].shape == (npix,) and np.array_equal(data["hits"], scan_hits(NSIDE))
    assert attrs["beam_fwhm_arcmin"] == 60.0 and attrs["noise_uk_arcmin"] == 45.0
    assert attrs["mask"] == "galactic:20.0,sources:20:120.0" and attrs["hits"] == "scan"
    assert attrs["apodize_deg"] == 10.0 and attrs["pixel_window"] == f"{PIXEL_WINDOW_APPLIED} {NSIDE}"
    assert attrs["regenerate"].endswith(" --beam-fwhm 60.0 --noise 45.0 --hits scan "
                                        "--mask galactic:20.0,sources:20:120.0 --apodize 10.0")
    params = json.loads(attrs["cmbscat_params"])
    assert params["mask"] == attrs["mask"] and params["apodize_deg"] == 10.0
    sim = SkySimulator(NSIDE, LMAX, 30.0)
    prepared = config(hits="scan", **PLANCK_LIKE).observation.prepare(NSIDE, LMAX)
    for i in range(4):
        # the stored row is the observed sky: beam applied, the map's own noise added, no mask
        truth = sim.alm(data["seeds"][i], data["labels"][i])[0]
        expected = prepared.observe(truth, data["seeds"][i]).astype(np.complex64)
        assert np.array_equal(data["alm"][i], expected)
        again = regenerate_map(observed_file, i)
        assert np.array_equal(again["alm"], data["alm"][i]) and np.array_equal(again["maps"], data["maps"][i])
    source = open_source(observed_file)
    assert np.array_equal(source.mask, data["mask"]) and source.mask_binary.dtype == bool


def test_sharded_observed_file_equals_the_unsharded_one(observed_file, tmp_path):
    parts = [tmp_path / f"s{k}.h5" for k in range(3)]
    for k, part in enumerate(parts):
        simulate(part, config(n=4, hits="scan", **PLANCK_LIKE), shard=Shard(k, 3), progress=False)
    # every shard holds the same mask and hit map
    assert all(np.array_equal(read(p)[0]["mask"], read(parts[0])[0]["mask"]) for p in parts)
    combine_shards(tmp_path / "all.h5", parts)
    whole, combined = read(observed_file)[0], read(tmp_path / "all.h5")[0]
    assert sorted(whole) == sorted(combined)
    assert all(np.array_equal(whole[k], combined[k]) for k in whole)
    with h5py.File(tmp_path / "all.h5") as f, h5py.File(observed_file) as g:
        assert f["alm"].is_virtual and not f["mask"].is_virtual
        assert f.attrs["content_sha256"] == g.attrs["content_sha256"]


def test_files_without_an_observation_are_unchanged(tmp_path):
    """The record, the attributes and the content of a file made before observations existed
    (hashes taken from that code; all-Gaussian maps draw from NumPy's generator alone)."""
    path = tmp_path / "g.h5"
    cfg = SimulationConfig(2, NSIDE, LMAX, 0.0, 3, store="alm", fnl_dist="grid:0")
    assert cfg.observation.is_trivial
    simulate(path, cfg, progress=False)
    data, attrs = read(path)
    assert sorted(data) == ["alm", "fnl", "labels", "seeds"]
    assert attrs["content_sha256"] == "608be9c992d3443ce0a30032e6acf8a5cabc746e8dfc82edd16f24e85c95f28b"
    assert attrs["cmbscat_params"] == (
        '{"cl_source": "Planck 2018 best-fit lensed TT (CAMB), data/planck2018_lensed_tt.txt", '
        '"fnl": 0.0, "fnl_dist": "grid:0.0", "gnl": 0.0, "lmax": 31, "n_maps": 2, "ng_model": "local", '
        '"nside": 16, "seed": 3, "shard": null, "stage": "simulate", "store": "alm"}')
    assert sorted(attrs) == [
        "cl_source", "cmbscat_params", "cmbscat_version", "content_sha256", "fnl", "fnl_dist",
        "fnl_meaning", "gnl", "item_start", "item_stop", "kind", "label_meaning", "lmax", "n_maps",
        "ng_amplitude", "ng_model", "nside", "ordering", "per_item_datasets", "regenerate", "seed",
        "store", "unit"]
    assert open_source(path).mask is None
    assert all(simulation_defaults()[k] in ("", 0.0) for k in ("hits", "mask", "apodize_deg"))


def test_a_changed_fits_mask_is_not_reused(tmp_path):
    fits = write_fits(tmp_path / "mask.fits", galactic_cut(NSIDE, 30.0).astype(float))
    cfg = config(n=2, mask=str(fits), apodize_deg=5.0)
    simulate(tmp_path / "m.h5", cfg, progress=False)
    assert "mask_sha256" in json.loads(read(tmp_path / "m.h5")[1]["cmbscat_params"])
    assert simulate(tmp_path / "m.h5", cfg, progress=False) == 0       # same file: complete
    write_fits(fits, galactic_cut(NSIDE, 10.0).astype(float))
    with pytest.raises(CmbscatError, match="different parameters .*mask_sha256"):
        simulate(tmp_path / "m.h5", cfg, progress=False)


def test_cli_writes_an_observed_file_and_its_command_rewrites_it(tmp_path):
    common = ["--n-maps", 2, "--nside", NSIDE, "--lmax", LMAX, "--seed", 4, "--store", "alm", "--no-progress"]
    run_cli("simulate", "a.h5", *common, "--beam-fwhm", 30, "--noise", 20, "--hits", "scan",
            "--mask", "galactic:15,sources:10", "--apodize", 4, cwd=tmp_path, check=True)
    data, attrs = read(tmp_path / "a.h5")
    command = attrs["regenerate"].split()
    run_cli("simulate", "b.h5", *command[3:], "--no-progress", cwd=tmp_path, check=True)
    again, _ = read(tmp_path / "b.h5")
    assert sorted(again) == sorted(data) and all(np.array_equal(data[k], again[k]) for k in data)
    help_text = " ".join(run_cli("simulate", "--help").stdout.split())
    for fragment in ("--beam-fwhm ARCMIN", "--noise UK_ARCMIN", "--hits FITS|scan", "--mask SPEC|FITS",
                     "--apodize DEG", "galactic:DEG", "sources:N[:RADIUS_ARCMIN]"):
        assert fragment in help_text, fragment


def test_cli_regrades_a_mask_of_another_nside_with_a_note(tmp_path):
    fits = write_fits(tmp_path / "mask.fits", galactic_cut(32, 20.0).astype(float))
    proc = run_cli("simulate", "x.h5", "--n-maps", 2, "--nside", NSIDE, "--lmax", LMAX, "--store", "alm",
                   "--mask", fits, "--no-progress", cwd=tmp_path, check=True)
    notes = [line for line in proc.stderr.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and "nside 32 regraded to 16" in notes[0]


@pytest.fixture
def fits_inputs(tmp_path):
    npix = hp.nside2npix(NSIDE)
    negative = np.ones(npix)
    negative[3] = -1.0
    return {"negative_hits": write_fits(tmp_path / "neg.fits", negative),
            "zero_mask": write_fits(tmp_path / "zero.fits", np.zeros(npix)),
            "big_mask": write_fits(tmp_path / "big.fits", np.full(npix, 2.0)),
            "not_fits": tmp_path / "junk.fits"}


@pytest.mark.parametrize("args, fragment", [
    (["--beam-fwhm", "-5"], "--beam-fwhm must be a finite number >= 0"),
    (["--noise", "-1"], "--noise must be a finite number >= 0"),
    (["--noise", "nan"], "--noise must be a finite number >= 0"),
    (["--hits", "scan"], "--hits needs --noise"),
    (["--noise", "10", "--hits", "nowhere.fits"], "--hits must be 'scan' or an existing"),
    (["--noise", "10", "--hits", "{negative_hits}"], "has negative values"),
    (["--mask", "halo:3"], "unknown --mask"),
    (["--mask", "galactic:95"], "0 < DEG < 90"),
    (["--mask", "galactic:x"], "needs numbers"),
    (["--mask", "galactic:20,galactic:30"], "gives galactic twice"),
    (["--mask", "sources:0"], "N >= 1"),
    (["--mask", "galactic:20,stars:3"], "unknown --mask part"),
    (["--mask", "{zero_mask}"], "all zero"),
    (["--mask", "{big_mask}"], "values must be in [0, 1]"),
    (["--mask", "{not_fits}"], "not a readable HEALPix FITS map"),
    (["--apodize", "2"], "--apodize needs --mask"),
    (["--mask", "galactic:20", "--apodize", "-2"], "--apodize must be"),
])
def test_bad_observation_input_is_refused_in_one_line(tmp_path, fits_inputs, args, fragment):
    fits_inputs["not_fits"].write_text("SIMPLE  = nonsense")
    args = [a.format(**fits_inputs) for a in args]
    out = tmp_path / "out"
    proc = run_cli("simulate", out / "x.h5", "--n-maps", 2, "--nside", NSIDE, "--lmax", LMAX,
                   "--no-progress", *args)
    assert_one_line_error(proc, fragment)
    assert not out.exists()   # nothing written, not even a partial folder

