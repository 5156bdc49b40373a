"""The classical statistics of observed files (beam, noise, mask): what each reads, the
cubic statistic's zero mean on masked noisy Gaussian maps and its response to f_NL."""

import shutil

import h5py
import numpy as np
import pytest

from cmbscat.errors import CmbscatError
from cmbscat.sky.simulate import SimulationConfig, simulate
from cmbscat.sky.spectra import planck2018_cl
from cmbscat.stats.minkowski import MinkowskiFunctionals
from cmbscat.stats.observed import observed_sky
from cmbscat.stats.stage import compute_stats

from conftest import assert_one_line_error, run_cli

NSIDE, LMAX = 32, 63
OBSERVATION = dict(beam_fwhm_arcmin=120.0, noise_uk_arcmin=600.0, mask="galactic:20", apodize_deg=5.0)


@pytest.fixture(scope="module")
def observed(tmp_path_factory):
    """Masked, beamed, noisy maps: 120 at f_NL 1500 (half Gaussian) and their statistics."""
    root = tmp_path_factory.mktemp("observed")
    sims, stats = root / "sims.h5", root / "stats.h5"
    simulate(sims, SimulationConfig(n_maps=120, nside=NSIDE, lmax=LMAX, fnl=1500.0, seed=4, store="alm",
                                    **OBSERVATION), progress=False)
    compute_stats(sims, stats, progress=False, mean_field_maps=60)
    return sims, stats


def test_observed_sky_reads_the_file(observed):
    sims, _ = observed
    sky = observed_sky(sims, NSIDE, LMAX)
    assert sky.mask is not None and sky.mask.min() == 0 and sky.mask.max() == 1
    full = sky.fully_observed
    assert 0.4 < full.mean() < 0.66  # |b| > 20 deg is 66 % of the sky, less the 5 deg taper
    assert np.all(sky.noise_cl[:2] == 0) and sky.noise_cl[10] == pytest.approx((600.0 * np.pi / 10800) ** 2)
    import healpy as hp

    from cmbscat.sky.pixel_window import pixel_window

    np.testing.assert_allclose(sky.beam, hp.gauss_beam(np.radians(2.0), LMAX) * pixel_window(NSIDE, LMAX),
                               rtol=1e-12)


def test_a_file_simulated_without_the_pixel_window_is_refused(observed, tmp_path):
    sims, _ = observed
    old = tmp_path / "old.h5"
    shutil.copy(sims, old)
    with h5py.File(old, "r+") as f:
        f.attrs["pixel_window"] = "not applied"   # as files made before the window was applied
    with pytest.raises(CmbscatError, match="before the beam carried the HEALPix pixel window"):
        observed_sky(old, NSIDE, LMAX)


def test_noiseless_full_sky_file_has_no_observation(tmp_path):
    sims = tmp_path / "plain.h5"
    simulate(sims, SimulationConfig(n_maps=2, nside=16, lmax=31, fnl=0.0, seed=1, store="alm"), progress=False)
    assert observed_sky(sims, 16, 31) is None


def test_stats_file_records_the_observation(observed):
    _, stats = observed
    with h5py.File(stats, "r") as f:
        assert f.attrs["observation_mask"] == "galactic:20.0" or "galactic" in f.attrs["observation_mask"]
        assert "pseudo-C_l" in f.attrs["powspec_meaning"]
        assert np.all(np.isfinite(f["cubic"][()])) and f["minkowski"].shape == (120, 3, 13)


def test_cubic_statistic_has_zero_mean_on_masked_noisy_gaussian_maps_and_sees_fnl(observed):
    _, stats = observed
    with h5py.File(stats, "r") as f:
        s, labels = f["cubic"][()][:, 0], f["labels"][()]
    gauss, ng = s[labels == 0], s[labels == 1]
    assert abs(gauss.mean()) < 3 * gauss.std(ddof=1) / np.sqrt(gauss.size)
    assert (ng.mean() - gauss.mean()) / gauss.std(ddof=1) > 1.5  # positive f_NL: E[S] > 0


def test_minkowski_pixel_selection_of_the_whole_sky_is_the_full_sky():
    from cmbscat.sky.simulate import SkySimulator

    alm = SkySimulator(NSIDE, LMAX).alm(3, 0)[0]
    mf = MinkowskiFunctionals(NSIDE, LMAX)
    np.testing.assert_allclose(mf(alm, pixels=np.ones(12 * NSIDE**2, bool)), mf(alm), rtol=1e-12, atol=1e-15)


def test_mean_field_maps_refused_below_two(observed, tmp_path):
    sims, _ = observed
    proc = run_cli("stats", str(sims), str(tmp_path / "s.h5"), "--mean-field-maps", "1", "--no-progress")
    assert_one_line_error(proc, "--mean-field-maps")


def test_a_classical_model_is_held_to_its_training_observation(observed, tmp_path):
    """A classifier trained on noiseless full-sky statistics meets the observed file: refused
    in one line naming what differs, accepted with --force (and the metrics say what differed)."""
    from cmbscat.experiment.evaluate import evaluate
    from cmbscat.experiment.train import TrainConfig, train

    observed_sims, observed_stats = observed
    plain_sims, plain_stats = tmp_path / "plain.h5", tmp_path / "plain_stats.h5"
    simulate(plain_sims, SimulationConfig(n_maps=40, nside=NSIDE, lmax=LMAX, fnl=1500.0, seed=5, store="alm"),
             progress=False)
    compute_stats(plain_sims, plain_stats, progress=False)
    train(tmp_path / "run", TrainConfig(data=str(plain_stats), model="onepoint"), progress=False)
    assert evaluate(tmp_path / "run", plain_stats, tmp_path / "same", progress=False)  # same observation
    # a model saved before an entry joined the record (pixel_window) reads it as its default
    from cmbscat.experiment.datasets import observation_identity
    from cmbscat.experiment.evaluate import observation_mismatch

    older = {k: v for k, v in observation_identity(plain_stats).items() if k != "pixel_window"}
    assert observation_mismatch(tmp_path / "run", {"observation": older}, plain_stats) == ""
    assert_one_line_error(run_cli("evaluate", tmp_path / "run", observed_stats, "--out", tmp_path / "e",
                                  "--no-progress"), "observed otherwise", "beam_fwhm_arcmin", "--force")
    metrics = evaluate(tmp_path / "run", observed_stats, tmp_path / "forced", progress=False, force=True)
    assert "beam_fwhm_arcmin" in metrics["observation_differs"]
    # the library's predict holds a classical model to it too, and force gives the same scores
    from cmbscat.experiment.evaluate import predict

    with pytest.raises(CmbscatError, match="observed otherwise"):
        predict(tmp_path / "run", observed_stats, progress=False)
    forced_scores = np.load(tmp_path / "forced" / "scores.npy")
    np.testing.assert_array_equal(predict(tmp_path / "run", observed_stats, progress=False, force=True),
                                  forced_scores)
    # and a model trained on the observed statistics takes observed maps as they are
    train(tmp_path / "observed_run", TrainConfig(data=str(observed_stats), model="onepoint"), progress=False)
    assert "observation_differs" not in evaluate(tmp_path / "observed_run", observed_stats, tmp_path / "o",
                                                 progress=False)
