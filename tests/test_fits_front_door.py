"""A user's HEALPix FITS map through the masked-map path (issue 13, part 3): scatter and stats
of MAP.fits with --mask/--apodize/--beam-fwhm/--noise as for an observed sims file, NESTED and
UNSEEN input, a map above the model's nside, evaluate's per-map score, probability and
false-alarm probability, and the bad inputs refused in one line.

The maps are written in uK with TUNIT1 = 'uK' (a map without a unit is refused). The masked
sims were not refitted for a monopole and dipole on the cut sky, so the comparisons of a
masked FITS map with its sims map read it with --keep-dipole (the default fit on the cut sky
takes up a part of the CMB's low multipoles: test_the_default_removes_the_cut_sky_fit); the
unit and the removal themselves are tested in test_own_map.py."""

import json

import h5py
import healpy as hp
import numpy as np
import pytest
from astropy.io import fits
from click.testing import CliRunner

from cmbscat.cli import main
from cmbscat.experiment import datasets
from cmbscat.experiment.evaluate import evaluate, false_alarm_probability, predict
from cmbscat.experiment.train import TrainConfig, train
from cmbscat.scattering.stage import scatter
from cmbscat.sky.fits_map import fits_reading
from cmbscat.sky.observe import ObservationConfig
from cmbscat.sky.pixel_window import pixel_window
from cmbscat.sky.simulate import SimulationConfig, simulate
from cmbscat.sky.source import comparable_observations, open_source
from cmbscat.stats.stage import compute_stats

from conftest import assert_one_line_error, run_cli

NSIDE, LMAX, J0 = 32, 63, 3
OBSERVED = dict(noise_uk_arcmin=30.0, beam_fwhm_arcmin=60.0, mask="galactic:20", apodize_deg=5.0)
SCATTER = ["--depth", "1", "--J0", str(J0), "--lmax", str(LMAX), "--no-progress"]
DECLARED = ["--apodize", "5", "--beam-fwhm", "60", "--noise", "30"]  # with --mask MASK.fits
KEEP = "--keep-dipole"  # compared with the masked sims map, which was not refitted on the cut sky
INDEX = 1  # the test map written as FITS (a non-Gaussian one: map i has label i % 2)


def invoke(*args):
    """The CLI in this process: (exit code, stdout, stderr)."""
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Observed sims (train 16 maps, test 8; galactic:20 cut, 5 deg apodization, 60' beam,
    30 uK' noise), their scattering files, and FITS files made from test map INDEX: RING,
    NESTED, with UNSEEN/NaN pixels, at nside 64 (the same sky observed at nside 64: the
    pixel window of 64 in place of 32's); the test file's binary mask as FITS at nside 32
    and, NESTED, at nside 64."""
    root = tmp_path_factory.mktemp("front_door")
    out = {"root": root}
    for name, n, seed in (("train", 16, 1), ("test", 8, 2)):
        out[name] = root / f"{name}.h5"
        simulate(out[name], SimulationConfig(n, NSIDE, LMAX, 2000.0, seed, store="both", **OBSERVED),
                 progress=False)
        out[f"{name}_scat"] = root / f"{name}_scat.h5"
        scatter(out[name], out[f"{name}_scat"], depth=1, J0=J0, progress=False)
    with h5py.File(out["test"], "r") as f:
        sky = f["maps"][INDEX].astype(np.float64)
        binary = f["mask_binary"][()].astype(np.float64)
        alm = f["alm"][INDEX].astype(np.complex128)
    out["sky"] = sky
    for name, values, nest in (("ring", sky, False), ("nested", hp.reorder(sky, r2n=True), True),
                               ("mask32", binary, False),
                               ("mask64", hp.reorder(hp.ud_grade(binary, 64), r2n=True), True),
                               ("ring64", hp.alm2map(hp.almxfl(alm, pixel_window(64, LMAX) / pixel_window(NSIDE, LMAX)),
                                                     64, lmax=LMAX), False)):
        out[name] = root / f"{name}.fits"
        unit = {} if name.startswith("mask") else {"column_units": "uK"}
        hp.write_map(str(out[name]), values, nest=nest, dtype=np.float64, **unit)
    # invalid pixels in the observed sky: a disc of UNSEEN near the north pole, two NaN
    holes = hp.query_disc(NSIDE, hp.ang2vec(0.3, 1.0), np.radians(8.0))
    unseen = sky.copy()
    unseen[holes] = hp.UNSEEN
    unseen[[100, 5000]] = np.nan
    out["holes"] = np.concatenate([holes, [100, 5000]])
    out["unseen"] = root / "unseen.fits"
    hp.write_map(str(out["unseen"]), unseen, dtype=np.float64, column_units="uK")
    return out


@pytest.fixture(scope="module")
def hybrid_run(files, tmp_path_factory):
    """The hybrid trained 2 epochs on the training sims, evaluated on the test sims (its
    metrics.json names the test file: the default reference)."""
    run_dir = tmp_path_factory.mktemp("runs") / "hybrid"
    train(run_dir, TrainConfig(data=str(files["train_scat"]), model="hybrid", epochs=2, batch_size=4),
          device="cpu", progress=False)
    evaluate(run_dir, files["test_scat"], device="cpu", progress=False)
    return run_dir


def _scatter_fits(files, name, out, *extra):
    code, stdout, stderr = invoke("scatter", files[name], out, *SCATTER, *extra)
    assert code == 0, stderr
    return stderr


def test_fits_map_scatters_as_the_same_map_of_the_sims_file(files):
    out = files["root"] / "ring_scat.h5"
    stderr = _scatter_fits(files, "ring", out, "--mask", files["mask64"], *DECLARED, KEEP)
    # the mask at nside 64 (NESTED) is regraded, with one note, to the very mask of the sims
    notes = [line for line in stderr.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and "nside 64 regraded to 32" in notes[0], stderr
    with h5py.File(out, "r") as a, h5py.File(files["test_scat"], "r") as b:
        x, y = a["coeffs"][0], b["coeffs"][INDEX]
        assert np.allclose(x, y, rtol=1e-5, atol=1e-6 * np.abs(y).max())
        assert np.array_equal(a["weight"][()], b["weight"][()])
        assert a["labels"][()].tolist() == [-1] and np.isnan(a["fnl"][()]).all()
        attrs = dict(a.attrs)
    assert attrs["map_nside"] == NSIDE and attrs["map_ordering"] == "RING" and attrs["masked"]
    assert attrs["input"] == "fits" and attrs["source_nside"] == NSIDE
    fits_id, sims_id = datasets.observation_identity(out), datasets.observation_identity(files["test_scat"])
    assert fits_id["mask"] == str(files["mask64"]) and fits_id["mask_sha256"]  # named as given
    assert fits_id["mask_content_sha256"] == sims_id["mask_content_sha256"]  # the same weights
    assert {k: fits_id[k] for k in ("beam_fwhm_arcmin", "noise_uk_arcmin", "apodize_deg")} == \
        {"beam_fwhm_arcmin": 60.0, "noise_uk_arcmin": 30.0, "apodize_deg": 5.0}
    a, b = comparable_observations(fits_id, sims_id)
    assert a == b  # what evaluate compares


def test_the_default_removes_the_cut_sky_fit(files):
    """Without --keep-dipole the monopole and dipole fitted on the observed pixels are
    removed, and recorded: healpy's fit on those pixels of the sky (a few uK here, taken
    from the CMB's low multipoles on the cut sky)."""
    out = files["root"] / "ring_removed_scat.h5"
    stderr = _scatter_fits(files, "ring", out, "--mask", files["mask64"], *DECLARED)
    assert "fitted on its" in stderr and "unmasked pixels and removed" in stderr
    observed = open_source(files["ring"], observation=ObservationConfig(mask=str(files["mask64"])),
                           note=lambda line: None).mask_binary
    monopole, dipole = hp.fit_dipole(np.where(observed, files["sky"], hp.UNSEEN))
    with h5py.File(out, "r") as a, h5py.File(files["test_scat"], "r") as b:
        assert a.attrs["monopole_uK"] == pytest.approx(monopole, rel=1e-9, abs=1e-9)
        assert np.allclose(a.attrs["dipole_vector_uK"], dipole, rtol=1e-9, atol=1e-9)
        assert a.attrs["dipole_fit_pixels"] == int(observed.sum())
        assert not np.allclose(a["coeffs"][0], b["coeffs"][INDEX], rtol=1e-5, atol=1e-6 * np.abs(b["coeffs"][INDEX]).max())


def test_nested_input_gives_the_same_as_ring(files):
    ring, nested = files["root"] / "ring32_scat.h5", files["root"] / "nested_scat.h5"
    _scatter_fits(files, "ring", ring, "--mask", files["mask32"], *DECLARED)
    _scatter_fits(files, "nested", nested, "--mask", files["mask32"], *DECLARED)
    with h5py.File(ring, "r") as a, h5py.File(nested, "r") as b:
        assert np.array_equal(a["coeffs"][()], b["coeffs"][()])
        assert b.attrs["map_ordering"] == "NESTED"
    with fits_reading(remove_dipole=False):
        source = open_source(files["nested"], observation=ObservationConfig(mask=str(files["mask32"])))
    assert np.array_equal(source.fits_map[source.mask_binary], files["sky"][source.mask_binary])


def test_unseen_and_nan_pixels_end_up_masked(files):
    notes = []
    observation = ObservationConfig(60.0, 30.0, "", str(files["mask32"]), 5.0)
    with fits_reading(remove_dipole=False):  # w d is compared with the sims' sky below
        source = open_source(files["unseen"], observation=observation, note=notes.append)
    holes = files["holes"]
    assert len(notes) == 1 and f"{holes.size} of {hp.nside2npix(NSIDE)} pixels" in notes[0]
    assert np.all(source.mask[holes] == 0) and not source.mask_binary[holes].any()
    assert np.all(np.isfinite(source.fits_map)) and np.all(source.fits_map[holes] == 0)
    # the taper runs away from the holes as from the cut: their observed neighbours are
    # down-weighted against the clean map's mask, and no weight anywhere is raised
    with fits_reading(remove_dipole=False):
        clean = open_source(files["ring"], observation=observation)
    neighbours = np.setdiff1d(hp.get_all_neighbours(NSIDE, holes).ravel(), holes)
    neighbours = neighbours[clean.mask[neighbours] > 0]
    assert neighbours.size > 10 and np.all(source.mask[neighbours] < clean.mask[neighbours])
    assert np.all(source.mask <= clean.mask)
    assert source.observation["mask_content_sha256"] != clean.observation["mask_content_sha256"]
    # w d is analysed as for the clean map, with the holes at zero weight
    expected = hp.map2alm(source.mask * np.where(source.mask_binary, files["sky"], 0.0), lmax=LMAX, iter=3,
                          use_weights=False)
    assert np.allclose(source.masked_alm(0, LMAX), expected, atol=1e-9 * np.abs(expected).max())
    # and through the CLI: the one note, then the output
    code, _, stderr = invoke("scatter", files["unseen"], files["root"] / "unseen_scat.h5", *SCATTER,
                             "--mask", files["mask32"], *DECLARED)
    assert code == 0 and "NaN, infinite or UNSEEN; masked" in stderr, stderr


def test_a_map_above_the_models_nside_is_brought_down_in_harmonic_space(files):
    """The map at nside 64 analysed at nside 32: the sims file's mask and weight exactly, the
    coefficients within 0.5 % (the zero-filled edge rings where the taper is near 0;
    ud_grade's pixel window would cost ~4 % here)."""
    out = files["root"] / "ring64_scat.h5"
    stderr = _scatter_fits(files, "ring64", out, "--mask", files["mask32"], *DECLARED, "--nside", NSIDE, KEEP)
    assert "nside 64 brought to 32 in harmonic space" in stderr
    with h5py.File(out, "r") as a, h5py.File(files["test_scat"], "r") as b:
        x, y = a["coeffs"][0], b["coeffs"][INDEX]
        assert np.linalg.norm(x - y) < 5e-3 * np.linalg.norm(y)
        assert np.array_equal(a["weight"][()], b["weight"][()])
        assert a.attrs["map_nside"] == 64 and a.attrs["source_nside"] == NSIDE
        assert a.attrs["mask_content_sha256"] == b.attrs["mask_content_sha256"]


def test_stats_of_a_fits_map_are_those_of_the_sims_map(files, tmp_path):
    """At lmax = 3 nside - 1 both read the pixels as they are: every observed statistic, the
    cubic with its mean field from Gaussian maps of the declared beam, noise and mask."""
    sims = tmp_path / "sims95.h5"
    simulate(sims, SimulationConfig(2, NSIDE, 3 * NSIDE - 1, 2000.0, 5, store="both", **OBSERVED),
             progress=False)
    with h5py.File(sims, "r") as f:
        hp.write_map(str(tmp_path / "map95.fits"), f["maps"][1].astype(np.float64), dtype=np.float64,
                     column_units="uK")
    compute_stats(sims, tmp_path / "sims_stats.h5", progress=False, mean_field_maps=4)
    code, _, stderr = invoke("stats", tmp_path / "map95.fits", tmp_path / "fits_stats.h5", "--mask",
                             files["mask32"], *DECLARED, "--mean-field-maps", 4, KEEP, "--no-progress")
    assert code == 0, stderr
    with h5py.File(tmp_path / "fits_stats.h5", "r") as a, h5py.File(tmp_path / "sims_stats.h5", "r") as b:
        for name in ("powspec", "onepoint", "cubic", "minkowski"):
            assert np.allclose(a[name][0], b[name][1], rtol=1e-5, atol=1e-6 * np.abs(b[name][1]).max()), name
        assert a["labels"][()].tolist() == [-1] and np.isnan(a["fnl"][0])
        assert a.attrs["observation_beam_fwhm_arcmin"] == 60.0 and a.attrs["observation_apodize_deg"] == 5.0
        assert a.attrs["observation_mask_content_sha256"]


def test_evaluate_scores_a_fits_map_with_its_false_alarm_probability(files, hybrid_run, tmp_path):
    data = files["root"] / "ring_scat.h5"
    if not data.exists():
        _scatter_fits(files, "ring", data, "--mask", files["mask64"], *DECLARED, KEEP)
    proc = run_cli("evaluate", hybrid_run, data, "--out", tmp_path / "scores", "--device", "cpu",
                   "--no-progress")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("map 0: one-sided p = ")
    assert "the fraction of Gaussian reference maps scoring >= it" in lines[0]
    assert "(logit; sigmoid " in lines[0] and ": a score, not a calibrated probability" in lines[0]
    result = json.loads((tmp_path / "scores" / "scores.json").read_text())
    assert result["reference"] == str(files["test_scat"])  # from the run's metrics.json
    row = result["maps"][0]
    # the hand count over the reference's Gaussian maps
    ref_logits = predict(hybrid_run, files["test_scat"], device="cpu", progress=False)
    gaussian = ref_logits[datasets.read_labels(files["test_scat"]) == 0]
    k = int(np.sum(gaussian >= row["score"]))
    assert row["n_gaussian_at_or_above"] == k and result["n_reference_gaussian"] == gaussian.size == 4
    assert row["p_value"] == pytest.approx((1 + k) / (1 + gaussian.size))
    assert result["p_value_floor"] == pytest.approx(1 / 5)
    assert row["probability"] == pytest.approx(1 / (1 + np.exp(-row["score"])))
    assert f"{row['score']:+.4f}" in lines[0] and f"{row['p_value']:.4g}" in lines[0]
    assert f"the map counted: {k} of {gaussian.size}; floor" in lines[0]
    logit = predict(hybrid_run, data, device="cpu", progress=False)
    assert row["score"] == pytest.approx(float(logit[0]), abs=1e-9)
    assert (hybrid_run / "metrics.json").exists()  # the run's own evaluation is left alone
    # an explicit --reference gives the same; a run folder without metrics.json asks for one
    code, stdout, stderr = invoke("evaluate", hybrid_run, data, "--reference", files["test_scat"],
                                  "--out", tmp_path / "explicit", "--device", "cpu", "--no-progress")
    assert code == 0 and stdout.strip() == lines[0], stderr
    p, counts = false_alarm_probability(np.array([np.inf, -np.inf]), gaussian)
    assert p.tolist() == [pytest.approx(0.2), 1.0] and counts.tolist() == [0, 4]


def test_evaluate_without_a_reference_asks_for_one(files, hybrid_run, tmp_path):
    import shutil

    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.pt"):
        shutil.copy(hybrid_run / name, bare / name)
    assert_one_line_error(run_cli("evaluate", bare, files["root"] / "ring_scat.h5", "--no-progress"),
                          "--reference")


def test_a_run_trained_on_another_observation_is_refused_unless_forced(files, hybrid_run, tmp_path):
    other = tmp_path / "other_beam.h5"
    code, _, stderr = invoke("scatter", files["ring"], other, *SCATTER, "--mask", files["mask32"],
                             "--apodize", "5", "--beam-fwhm", "30", "--noise", "30")
    assert code == 0, stderr
    assert_one_line_error(run_cli("evaluate", hybrid_run, other, "--out", tmp_path / "e", "--no-progress"),
                          "beam_fwhm_arcmin", "--force")
    assert not (tmp_path / "e" / "scores.json").exists()
    code, stdout, stderr = invoke("evaluate", hybrid_run, other, "--out", tmp_path / "f", "--force",
                                  "--device", "cpu", "--no-progress")
    assert code == 0 and stdout.startswith("map 0: one-sided p = "), stderr
    result = json.loads((tmp_path / "f" / "scores.json").read_text())
    assert "beam_fwhm_arcmin" in result["observation_differs"]


def test_an_fnl_estimator_prints_fnl_and_sigma(files, tmp_path):
    """The anchor estimator (nothing fitted) on the statistics of a FITS map."""
    sims = tmp_path / "sims.h5"
    simulate(sims, SimulationConfig(6, NSIDE, LMAX, 2000.0, 7, store="alm"), progress=False)
    compute_stats(sims, tmp_path / "stats.h5", progress=False)
    train(tmp_path / "anchor", TrainConfig(data=str(tmp_path / "stats.h5"), model="cubic_fisher",
                                           target="fnl"), device="cpu", progress=False)
    fits_stats = tmp_path / "fits_stats.h5"
    code, _, stderr = invoke("stats", files["ring"], fits_stats, "--lmax", LMAX, "--no-progress")
    assert code == 0, stderr
    code, stdout, stderr = invoke("evaluate", tmp_path / "anchor", fits_stats, "--no-progress")
    assert code == 0, stderr
    result = json.loads((tmp_path / "anchor" / "scores.json").read_text())
    row = result["maps"][0]
    assert result["target"] == "fnl" and np.isfinite(row["fnl"]) and row["sigma_fnl"] > 0
    assert stdout.strip() == f"map 0: f_NL = {row['fnl']:.4g} +/- {row['sigma_fnl']:.3g} (1 sigma)"


def test_bad_fits_input_is_refused_in_one_line(files, tmp_path):
    not_healpix = tmp_path / "not_healpix.fits"
    fits.BinTableHDU.from_columns([fits.Column(name="T", format="D", array=np.arange(1000.0))]
                                  ).writeto(not_healpix)
    zero_mask = tmp_path / "zero_mask.fits"
    hp.write_map(str(zero_mask), np.zeros(hp.nside2npix(16)), dtype=np.float32)
    all_unseen = tmp_path / "all_unseen.fits"
    hp.write_map(str(all_unseen), np.full(hp.nside2npix(NSIDE), hp.UNSEEN), dtype=np.float32, column_units="uK")
    ring = files["ring"]
    cases = [
        ((not_healpix,), "not a readable HEALPix map"),
        ((ring, "--mask", zero_mask), "is all zero"),
        ((all_unseen,), "no valid pixel"),
        ((ring, "--noise", "-1"), "--noise must be a finite number >= 0"),
        ((ring, "--beam-fwhm", "-5"), "--beam-fwhm must be a finite number >= 0"),
        ((ring, "--nside", "64"), "below the analysis --nside 64"),
        ((ring, "--apodize", "5"), "--apodize needs --mask"),
        ((files["test"], "--mask", files["mask32"]), "is a sims file"),
    ]
    for command in ("scatter", "stats"):
        for (source, *options), message in cases:
            out = tmp_path / f"{command}.h5"
            code, stdout, stderr = invoke(command, source, out, *options, "--no-progress")
            lines = [line for line in stderr.splitlines() if line.strip()]
            assert code != 0 and len(lines) == 1 and lines[0].startswith("Error: "), (command, stderr)
            assert message in lines[0] and not stdout, (message, lines[0])
            assert not list(tmp_path.glob("*.h5*")), (command, source, options)  # nothing written
    # a real process: no traceback, one line
    assert_one_line_error(run_cli("scatter", not_healpix, tmp_path / "x.h5"), "not a readable HEALPix map")
