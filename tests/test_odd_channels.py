"""Odd scattering channels C[j1, j2] = ((f * Psi_j1) |f * Psi_j2|^q) * Phi: definition,
oddness, equivariance, the stage's file layout and old files' readability."""

import h5py
import healpy as hp
import numpy as np
import pytest
from click.testing import CliRunner

from cmbscat.cli import main
from cmbscat.errors import CmbscatError
from cmbscat.healpix import rotate_alm
from cmbscat.scattering.transform import SCALING_BAND, Scattering, alm_weights, odd_pairs
from cmbscat.sky.spectra import gaussian_alm, planck2018_cl

LMAX = 127


@pytest.fixture(scope="module")
def cmb_alm():
    return gaussian_alm(planck2018_cl(LMAX), np.random.default_rng(17))


def test_pairs_cover_every_lower_band():
    assert odd_pairs([3, 4, 5]) == [(-1, 3), (-1, 4), (-1, 5), (3, 4), (3, 5), (4, 5)]
    assert odd_pairs([3, 4, 5], {3: 15, 4: 31, 5: 31}) == [(-1, 3), (-1, 4), (-1, 5), (3, 4), (3, 5)]
    sc = Scattering(LMAX, depth=2, J0=4, odd=True)
    n_scales = len(sc.scales)
    # at the band limit the two top wavelets end at the same l (127): that pair is left out
    assert sc.grid[6][1] == sc.grid[7][1] == LMAX and (6, 7) not in sc.odd_pairs
    assert len(sc.odd_pairs) == n_scales * (n_scales + 1) // 2 - 1 and (5, 7) in sc.odd_pairs
    assert sc.n_channels == len(sc.paths) + len(sc.odd_pairs)
    assert sc.channel_names()[len(sc.paths)] == f"C[phi,{sc.scales[0]}]"
    assert list(sc.order()).count(-1) == len(sc.odd_pairs)
    assert sc.odd_pairs_array().shape == (len(sc.odd_pairs), 2)
    assert Scattering(LMAX, depth=2, J0=4).odd_pairs_array().shape == (0, 2)
    with pytest.raises(CmbscatError, match="odd-power"):
        Scattering(LMAX, odd=True, odd_power=3)


@pytest.mark.parametrize("q", [1, 2])
def test_matches_direct_full_resolution_definition(q, cmb_alm):
    """The multiresolution channels equal the product formed on one fine grid (nside 256,
    4x the band), band-limited to l < lam^J0 -- up to the modulus grids' aliasing."""
    sc = Scattering(LMAX, depth=1, J0=4, odd=True, odd_power=q, oversample=2.0)
    got = sc.forward_alm(cmb_alm)[len(sc.paths):]
    nside_fine = 256
    def band_map(j):
        if j == SCALING_BAND:
            return hp.alm2map(sc._lowpass(cmb_alm, LMAX), nside_fine, lmax=sc.lmax_out)
        return hp.alm2map(sc.band(cmb_alm, LMAX, j), nside_fine, lmax=sc.grid[j][1])
    expected = []
    for j1, j2 in sc.odd_pairs:
        product = band_map(j1) * np.abs(band_map(j2)) ** q
        alm = hp.map2alm(product, lmax=sc.lmax_out, iter=3, use_weights=False)
        expected.append(hp.almxfl(alm, sc.phi))
    expected = np.array(expected)
    w = alm_weights(sc.lmax_out)
    d2, n2 = np.sum(w * np.abs(got - expected) ** 2, 1), np.sum(w * np.abs(expected) ** 2, 1)
    # |.| is not band-limited (both grids alias it); |.|^2 is, to 2 lhi_j2, and what is
    # left is the coarse product grids' map2alm(iter=0) quadrature (~1e-3)
    assert np.sqrt(d2.sum() / n2.sum()) < (1e-2 if q == 1 else 3e-3)
    assert np.sqrt(d2 / n2).max() < (5e-2 if q == 1 else 5e-3), np.sqrt(d2 / n2)


@pytest.mark.parametrize("q", [1, 2])
def test_odd_in_f_and_homogeneous(q, cmb_alm):
    sc = Scattering(LMAX, depth=2, J0=4, odd=True, odd_power=q)
    n = len(sc.paths)
    a, b = sc.forward_alm(cmb_alm), sc.forward_alm(-cmb_alm)
    assert np.array_equal(b[n:], -a[n:])          # exactly odd
    assert np.array_equal(b[1:n], a[1:n])         # the S[p], p != (), exactly even
    assert np.array_equal(b[0], -a[0])            # S[()] is linear
    assert np.abs(a[n:]).max() > 0
    c = sc.forward_alm(2.5 * cmb_alm)
    assert np.allclose(c[n:], 2.5 ** (1 + q) * a[n:], rtol=1e-9, atol=1e-12 * np.abs(a[n:]).max())


@pytest.mark.parametrize("q,bound", [(1, 2e-2), (2, 1e-2)])
def test_rotation_equivariance_of_odd_channels(q, bound, cmb_alm):
    """||C(Rf) - R C(f)|| / ||C(f)|| over the odd channels, rotations exact in harmonic space.

    At this small lmax (127) the modulus grids are coarse; at lmax 1023 the errors are
    smaller (benchmarks/scatter_equivariance.py). |.|^2 is band-limited, |.| is not."""
    sc = Scattering(LMAX, depth=2, J0=4, odd=True, odd_power=q)
    n, w = len(sc.paths), alm_weights(sc.lmax_out)
    s = sc.forward_alm(cmb_alm)[n:]
    rng = np.random.default_rng(5)
    for _ in range(2):
        angles = rng.uniform(0, 2 * np.pi), np.arccos(rng.uniform(-1, 1)), rng.uniform(0, 2 * np.pi)
        s_rot = sc.forward_alm(rotate_alm(cmb_alm, LMAX, *angles))[n:]
        rot_s = np.stack([rotate_alm(c, sc.lmax_out, *angles) for c in s])
        err = np.sqrt(np.sum(w * np.abs(s_rot - rot_s) ** 2) / np.sum(w * np.abs(rot_s) ** 2))
        assert err < bound
        assert np.sqrt(np.sum(w * np.abs(s_rot - s) ** 2) / np.sum(w * np.abs(s) ** 2)) > 0.1


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_stage_writes_odd_channels_and_their_description(tmp_path):
    sims = tmp_path / "sims.h5"
    assert run("simulate", sims, "--n-maps", 2, "--nside", 16, "--lmax", 31, "--seed", 4,
               "--no-progress").exit_code == 0
    even, odd = tmp_path / "even.h5", tmp_path / "odd.h5"
    common = ["--depth", 2, "--J0", 3, "--no-progress"]
    assert run("scatter", sims, even, *common).exit_code == 0
    r = run("scatter", sims, odd, *common, "--odd", "--odd-power", 2)
    assert r.exit_code == 0, r.output
    sc = Scattering(31, nside=16, depth=2, J0=3, odd=True, odd_power=2)
    with h5py.File(even, "r") as e, h5py.File(odd, "r") as o, h5py.File(sims, "r") as s:
        assert "odd_pairs" not in e and not e.attrs["odd"]
        assert o["coeffs"].shape == (2, sc.n_channels, hp.nside2npix(sc.nside_out))
        assert np.array_equal(o["odd_pairs"][()], sc.odd_pairs_array())
        assert o.attrs["odd_power"] == 2 and list(o.attrs["channel_names"]) == sc.channel_names()
        n = len(sc.paths)
        assert np.array_equal(o["coeffs"][:, :n], e["coeffs"][()])   # even part unchanged
        expected = sc(s["alm"][1].astype(np.complex128))
        assert np.allclose(o["coeffs"][1], expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())
    # asking for other odd settings on an existing output is refused, not silently reused
    r = run("scatter", sims, odd, *common, "--odd", "--odd-power", 1)
    assert r.exit_code != 0 and "odd_power" in r.output
    r = run("scatter", sims, odd, *common, "--odd-power", 3)
    assert r.exit_code != 0 and "--odd-power must be 1 or 2" in r.output


def test_models_read_files_with_and_without_odd_channels(tmp_path):
    from cmbscat.experiment.datasets import scattering_inputs

    sims = tmp_path / "sims.h5"
    run("simulate", sims, "--n-maps", 2, "--nside", 16, "--lmax", 31, "--no-progress")
    for flag, k in (([], 0), (["--odd"], 9)):  # scales 2..5; (4, 5) both end at l = 31
        out = tmp_path / f"scat{k}.h5"
        assert run("scatter", sims, out, "--depth", 1, "--J0", 2, "--no-progress", *flag).exit_code == 0
        x, meta = scattering_inputs(out)
        assert len(meta["odd_pairs"]) == k and x.shape[1] == len(meta["paths"]) + k
