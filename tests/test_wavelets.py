"""Scale-discretised axisymmetric wavelets: tiling, supports, shapes, lambda != 2."""

import numpy as np
import pytest

from cmbscat.errors import CmbscatError
from cmbscat.scattering.wavelets import axisym_kernels, k_lam, kappa_lam, n_scales, support

CASES = [(1023, 2.0, 5), (1023, 2.0, 0), (127, 2.0, 3), (100, 1.5, 2), (63, 3.0, 1),
         (200, 2.5, 4), (31, 2.0, 5), (10, 1.2, 0)]


@pytest.mark.parametrize("lmax,lam,J0", CASES)
def test_tiling_identity(lmax, lam, J0):
    phi, psi = axisym_kernels(lmax, lam, J0)
    total = phi ** 2 + np.sum(psi ** 2, axis=0)
    assert np.max(np.abs(total - 1.0)) < 1e-12


@pytest.mark.parametrize("lmax,lam,J0", CASES)
def test_shapes_and_J(lmax, lam, J0):
    phi, psi = axisym_kernels(lmax, lam, J0)
    J = n_scales(lmax, lam)
    assert lam ** J >= lmax + 1 - 1e-9 and (J == 0 or lam ** (J - 1) < lmax + 1)
    assert phi.shape == (lmax + 1,)
    assert psi.shape == (J - J0 + 1, lmax + 1)


def test_J_exact_powers():
    assert n_scales(1023, 2.0) == 10
    assert n_scales(1024, 2.0) == 11
    assert n_scales(80, 3.0) == 4 and n_scales(81, 3.0) == 5


@pytest.mark.parametrize("lmax,lam,J0", CASES)
def test_supports(lmax, lam, J0):
    phi, psi = axisym_kernels(lmax, lam, J0)
    ell = np.arange(lmax + 1)
    # scaling function: 1 for l <= lam^(J0-1), 0 for l >= lam^J0, in [0, 1] between
    assert np.all(phi[ell >= lam ** J0 - 1e-9] == 0.0)
    assert np.allclose(phi[ell <= lam ** (J0 - 1) + 1e-9], 1.0, atol=1e-15)
    assert np.all((phi >= 0) & (phi <= 1))
    for i, row in enumerate(psi):
        j = J0 + i
        outside = (ell <= lam ** (j - 1) + 1e-9) | (ell >= lam ** (j + 1) - 1e-9)
        assert np.all(row[outside] == 0.0), f"wavelet {j} leaks outside its band"
        inside = ~outside
        if inside.any():  # nonzero on its band, except where k underflows at the edges
            assert np.count_nonzero(row[inside]) >= max(1, 0.9 * inside.sum() - 1)


def test_wavelet_profile_peak_and_dilation():
    # kappa peaks at t = 1 (l = lam^j) and row j is row j-1 dilated by lam
    t = np.linspace(0.3, 2.5, 2001)
    assert abs(t[np.argmax(kappa_lam(t, 2.0))] - 1.0) < 0.1
    _, psi = axisym_kernels(1023, 2.0, 0)
    assert np.allclose(psi[6][::2][:256], psi[5][:256], atol=1e-14)
    assert np.argmax(psi[8]) in range(200, 320)


def test_k_lam_limits_and_monotone():
    t = np.linspace(0, 1.2, 1000)
    for lam in (1.5, 2.0, 3.0):
        k = k_lam(t, lam)
        assert np.all(k[t <= 1 / lam] == 1.0) and np.all(k[t >= 1] == 0.0)
        assert np.all(np.diff(k) <= 1e-15)


def test_bad_parameters():
    with pytest.raises(CmbscatError, match="J0"):
        axisym_kernels(127, 2.0, 8)
    with pytest.raises(CmbscatError, match="J0"):
        axisym_kernels(127, 2.0, -1)
    with pytest.raises(CmbscatError, match="lam"):
        axisym_kernels(127, 1.0, 0)


def test_support_helper():
    assert support(np.array([0, 0, 1.0, 2.0, 0])) == (2, 3)
    assert support(np.zeros(4)) == (-1, -1)
