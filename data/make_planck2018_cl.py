"""Regenerate ``planck2018_lensed_tt.txt``: the Planck 2018 best-fit lensed TT spectrum.

Run once by a maintainer (needs the optional extra ``camb``: ``pip install camb``)::

    python data/make_planck2018_cl.py

Cosmology: Planck 2018 TT,TE,EE+lowE+lensing best fit (Planck 2018 VI, Table 2,
column 5): H0 = 67.32, omega_b h^2 = 0.022383, omega_c h^2 = 0.12011,
tau = 0.0543, ln(1e10 A_s) = 3.0448, n_s = 0.96605, one massive neutrino of
0.06 eV. The table holds C_ell (not D_ell) in uK^2 for ell = 0..LMAX_TABLE,
with C_0 = C_1 = 0 (monopole and dipole are not part of the CMB anisotropy model).
"""

from pathlib import Path

import camb
import numpy as np

LMAX_TABLE = 4000          # covers nside 1024 (3 nside - 1 = 3071) with margin
LMAX_CAMB = LMAX_TABLE + 500  # CAMB's lensed C_ell lose accuracy near its lmax

OUT = Path(__file__).with_name("planck2018_lensed_tt.txt")


def main():
    pars = camb.set_params(
        H0=67.32, ombh2=0.022383, omch2=0.12011, mnu=0.06, omk=0.0, tau=0.0543,
        As=np.exp(3.0448) * 1e-10, ns=0.96605,
        lmax=LMAX_CAMB, lens_potential_accuracy=1,
    )
    results = camb.get_results(pars)
    cl = results.get_lensed_scalar_cls(lmax=LMAX_CAMB, CMB_unit="muK", raw_cl=True)[:, 0]
    ell = np.arange(LMAX_TABLE + 1)
    cl = cl[: LMAX_TABLE + 1].copy()
    cl[:2] = 0.0
    header = (
        "Planck 2018 best-fit lensed TT power spectrum from CAMB "
        f"{camb.__version__}; regenerate with data/make_planck2018_cl.py\n"
        "columns: ell, C_ell [uK^2] (raw C_ell, not ell(ell+1)C_ell/2pi)"
    )
    np.savetxt(OUT, np.column_stack([ell, cl]), fmt=["%d", "%.10e"], header=header)
    print(f"wrote {OUT} (ell 0..{LMAX_TABLE})")


if __name__ == "__main__":
    main()
