"""Random-rotation augmentation: exact rotations of band-limited maps, and its use in training."""

import json

import healpy as hp
import numpy as np
import pytest

from cmbscat.errors import CmbscatError
from cmbscat.experiment.augment import RotationAugmenter, random_rotation_angles
from cmbscat.experiment.train import TrainConfig, train
from cmbscat.scattering.stage import scatter
from cmbscat.sky.simulate import SimulationConfig, simulate

NSIDE = 8


def band_limited_maps(rng, n, channels, nside=NSIDE):
    """(n, channels, npix) maps band-limited at 2 nside - 1 (random a_lm, m = 0 real)."""
    lmax = 2 * nside - 1
    ell, m = hp.Alm.getlm(lmax)
    out = []
    for _ in range(n * channels):
        alm = (rng.normal(size=ell.size) + 1j * rng.normal(size=ell.size)) / (1.0 + ell)
        alm[m == 0] = alm[m == 0].real
        out.append(hp.alm2map(alm, nside, lmax=lmax))
    return np.array(out).reshape(n, channels, -1)


def test_batched_analysis_is_the_fit_that_map2alm_iterations_converge_to():
    """The one-matrix-product analysis recovers band-limited maps' a_lm exactly, and on maps
    that are not band-limited agrees with healpy's map2alm after 10 Jacobi iterations."""
    from cmbscat.experiment.augment import MAP2ALM_ITER, alm_to_real

    rng = np.random.default_rng(4)
    lmax = 2 * NSIDE - 1
    ell, m = hp.Alm.getlm(lmax)
    alm = (rng.normal(size=ell.size) + 1j * rng.normal(size=ell.size)) / (1.0 + ell)
    alm[m == 0] = alm[m == 0].real
    band_limited = hp.alm2map(alm, NSIDE, lmax=lmax)[None, None]
    aug = RotationAugmenter(NSIDE)
    np.testing.assert_allclose(aug.to_coefficients(band_limited)[0, 0], alm_to_real(alm, lmax),
                               atol=1e-10 * np.abs(alm).max())
    noise = rng.normal(size=(2, 3, hp.nside2npix(NSIDE)))
    iterated = np.stack([[alm_to_real(hp.map2alm(c, lmax=lmax, mmax=lmax, iter=MAP2ALM_ITER,
                                                 use_weights=False), lmax) for c in sample]
                         for sample in noise])
    np.testing.assert_allclose(aug.to_coefficients(noise), iterated, atol=1e-8)


def test_quarter_turn_about_the_pole_permutes_ring_pixels():
    """A rotation by pi/2 about z maps every RING pixel onto a pixel of its own ring, shifted by
    a quarter of the ring: an independent check of the harmonic-space rotation."""
    maps = band_limited_maps(np.random.default_rng(1), 1, 2)
    aug = RotationAugmenter(NSIDE)
    rotated = aug.rotate(aug.to_coefficients(maps), np.array([[np.pi / 2, 0.0, 0.0]]))[0]
    shifted = np.empty_like(maps[0])
    start = 0
    for ring in range(1, 4 * NSIDE):
        n = 4 * min(ring, NSIDE, 4 * NSIDE - ring)
        idx = np.arange(start, start + n)
        shifted[:, idx] = maps[0][:, np.roll(idx, n // 4)]
        start += n
    other = np.empty_like(shifted)
    start = 0
    for ring in range(1, 4 * NSIDE):
        n = 4 * min(ring, NSIDE, 4 * NSIDE - ring)
        idx = np.arange(start, start + n)
        other[:, idx] = maps[0][:, np.roll(idx, -(n // 4))]
        start += n
    scale = np.abs(maps).max()
    best = min(np.abs(rotated - shifted).max(), np.abs(rotated - other).max())
    assert best < 1e-6 * scale
    assert np.abs(rotated - maps[0]).max() > 0.1 * scale  # it did rotate


def test_rotation_equals_healpy_rotate_alm_then_alm2map():
    """Ground truth: healpy's own rotate_alm (Wigner matrices) and alm2map, for random angles,
    against the precomputed factorisation Z(phi) P Z(theta) P^-1 Z(psi) (float64, and the
    float32 torch path used in training)."""
    import torch

    maps = band_limited_maps(np.random.default_rng(5), 3, 2)
    aug = RotationAugmenter(NSIDE)
    coef = aug.to_coefficients(maps)
    angles = random_rotation_angles(np.random.default_rng(6), 3)
    lmax = 2 * NSIDE - 1
    expected = np.empty_like(maps)
    for b in range(3):
        for c in range(2):
            alm = hp.map2alm(maps[b, c], lmax=lmax, iter=10, use_weights=False)
            hp.rotate_alm(alm, *angles[b], lmax=lmax, mmax=lmax)
            expected[b, c] = hp.alm2map(alm, NSIDE, lmax=lmax)
    scale = np.abs(expected).max()
    as64 = aug.rotate_tensor(torch.as_tensor(coef), torch.as_tensor(angles)).numpy()
    assert np.abs(as64 - expected).max() < 1e-10 * scale
    as32 = aug.rotate_tensor(torch.as_tensor(coef, dtype=torch.float32), torch.as_tensor(angles)).numpy()
    assert np.abs(as32 - expected).max() < 1e-5 * scale


def test_rotation_then_inverse_is_identity_and_angles_are_uniform():
    maps = band_limited_maps(np.random.default_rng(2), 2, 3)
    aug = RotationAugmenter(NSIDE)
    angles = random_rotation_angles(np.random.default_rng(3), 2)
    once = aug.rotate(aug.to_coefficients(maps), angles)
    inverse = np.stack([-angles[:, 2], -angles[:, 1], -angles[:, 0]], axis=1)
    back = aug.rotate(aug.to_coefficients(once), inverse)
    assert np.abs(back - maps).max() < 1e-6 * np.abs(maps).max()  # float32 output
    many = random_rotation_angles(np.random.default_rng(4), 20000)
    assert abs(np.cos(many[:, 1]).mean()) < 0.02 and abs(many[:, 0].mean() - np.pi) < 0.05


@pytest.fixture(scope="module")
def scattering_file(tmp_path_factory):
    root = tmp_path_factory.mktemp("aug")
    simulate(root / "sims.h5", SimulationConfig(40, 16, 31, 2000.0, 5, store="alm"), progress=False)
    scatter(root / "sims.h5", root / "scat.h5", depth=1, J0=3, odd=True, progress=False)
    return root / "scat.h5"


def test_augmented_training_is_the_hybrid_default_and_reproducible(scattering_file, tmp_path):
    config = TrainConfig(data=str(scattering_file), model="hybrid", epochs=2, batch_size=8)
    a = train(tmp_path / "a", config, device="cpu", progress=False)
    b = train(tmp_path / "b", config, device="cpu", progress=False)
    recorded = json.loads((tmp_path / "a" / "config.json").read_text())
    assert recorded["augment"] is True
    assert a["val_loss"] == b["val_loss"]  # rotations drawn from (seed, epoch) only
    plain = train(tmp_path / "c", TrainConfig(data=str(scattering_file), model="hybrid", epochs=2,
                                              batch_size=8, augment=False), device="cpu", progress=False)
    assert plain["val_loss"] != a["val_loss"]


def test_old_run_without_the_setting_counts_as_not_augmented(scattering_file, tmp_path):
    """A run folder written before --augment existed trained without it: today's default
    (on for the hybrid) must not take it for current."""
    config = TrainConfig(data=str(scattering_file), model="hybrid", epochs=1, batch_size=8, augment=False)
    train(tmp_path / "old", config, device="cpu", progress=False)
    record_path = tmp_path / "old" / "config.json"
    record = json.loads(record_path.read_text())
    del record["augment"]
    record_path.write_text(json.dumps(record))
    train(tmp_path / "old", config, device="cpu", progress=False)  # same settings: found
    with pytest.raises(CmbscatError, match="augment"):
        train(tmp_path / "old", TrainConfig(data=str(scattering_file), model="hybrid", epochs=1,
                                            batch_size=8), device="cpu", progress=False)


def test_augment_is_refused_for_models_whose_inputs_it_does_not_fit(tmp_path, scattering_file):
    with pytest.raises(CmbscatError, match="hybrid"):
        TrainConfig(data=str(scattering_file), model="baseline", augment=True).resolved().validate()
    assert TrainConfig(data="x", model="baseline").resolved().augment is False


def test_even_channel_ablation_and_map_subset(scattering_file, tmp_path):
    """--channels even trains on the S[p] channels of an odd file and evaluates the same way;
    --max-maps uses the first N maps only."""
    from cmbscat.experiment.evaluate import evaluate

    config = TrainConfig(data=str(scattering_file), model="hybrid", epochs=1, batch_size=8,
                         augment=False, channels="even", max_maps=20)
    summary = train(tmp_path / "even", config, device="cpu", progress=False)
    assert summary["n_train"] + summary["n_val"] == 20
    import torch

    saved = torch.load(tmp_path / "even" / "model.pt", weights_only=False)
    assert saved["in_channels"] == len(saved["meta"]["paths"]) and saved["meta"]["odd_pairs"] == []
    metrics = evaluate(tmp_path / "even", scattering_file, progress=False)
    assert metrics["n"] == 40
    with pytest.raises(CmbscatError, match="max-maps 41"):
        train(tmp_path / "big", TrainConfig(data=str(scattering_file), model="hybrid", max_maps=41),
              device="cpu", progress=False)
