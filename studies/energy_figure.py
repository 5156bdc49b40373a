"""Figure: the modulus moves wavelet energy from high to low multipoles.

    python studies/energy_figure.py [--lmax 1023] [--scales 6 9] [--out docs/scattering_energy.png]

For a Gaussian CMB sky f (Planck 2018 TT, uK, band-limited at lmax) and two wavelet
scales j, plots the angular power spectrum C_l of f * Psi_j (confined to
lam^(j-1) < l < lam^(j+1)) and of |f * Psi_j|. The modulus is computed on a grid of
nside = lmax + 1 (4x the pixels the band needs) and analysed with map2alm(iter=3) up
to l = 2 nside - 1, so the plotted spectrum of |f * Psi_j| is not limited by the
transform's own grid. Prints, for each scale, the fraction of the energy of
|f * Psi_j| (monopole excluded, and included) that lies below the wavelet's band, at
l <= lam^(j-1), and below lam^J0 = 32 (what S[j] keeps).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import healpy as hp
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from cmbscat.scattering.transform import Scattering  # noqa: E402
from cmbscat.sky.spectra import gaussian_alm, planck2018_cl  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lmax", type=int, default=1023)
    ap.add_argument("--scales", type=int, nargs="+", default=[6, 9])
    ap.add_argument("--J0", type=int, default=5)
    ap.add_argument("--seed", type=int, default=2021)
    ap.add_argument("--out", default="docs/scattering_energy.png")
    args = ap.parse_args()

    lmax = args.lmax
    sc = Scattering(lmax, depth=1, J0=args.J0)
    alm = gaussian_alm(planck2018_cl(lmax), np.random.default_rng(args.seed))
    nside_fine = lmax + 1
    lmax_fine = 2 * nside_fine - 1
    ell = np.arange(lmax_fine + 1)
    fig, axes = plt.subplots(1, len(args.scales), figsize=(5.5 * len(args.scales), 4.2), sharey=True)
    axes = np.atleast_1d(axes)
    print(f"lmax {lmax}, lam {sc.lam:g}, J0 {sc.J0}; modulus on nside {nside_fine}, "
          f"analysed to l = {lmax_fine} (iter=3)")
    print("Energy shares (sum of (2l+1) C_l); U_j = abs(f * Psi_j).\n")
    print("| j | band of f * Psi_j | f * Psi_j: share in band | U_j: share in l = 0 | "
          "U_j, l >= 1 part: below band (l <= lam^(j-1)) | in band | above band (l >= lam^(j+1)) | "
          "U_j: share at l < lam^J0 (kept by S[j]) |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    for ax, j in zip(axes, args.scales):
        band = sc.band(alm, lmax, j)
        lhi = sc.grid[j][1]
        m = np.abs(hp.alm2map(band, nside_fine, lmax=lhi, mmax=lhi))
        cl_mod = hp.anafast(m, lmax=lmax_fine, iter=3)
        cl_band = np.zeros(lmax_fine + 1)
        cl_band[: lhi + 1] = hp.alm2cl(band)
        energy = lambda cl, sel: float(np.sum(((2 * ell + 1) * cl)[sel]))  # noqa: E731
        lo = ell <= sc.lam ** (j - 1)
        frac_ex = energy(cl_mod, lo & (ell > 0)) / energy(cl_mod, ell > 0)
        hi = ell >= sc.lam ** (j + 1)
        total, total1 = energy(cl_mod, ell >= 0), energy(cl_mod, ell > 0)
        frac_mono = energy(cl_mod, ell == 0) / total
        frac_hi = energy(cl_mod, hi) / total1
        frac_out = energy(cl_mod, ell < sc.lam ** sc.J0) / total
        band_in = energy(cl_band, ~lo & ~hi) / energy(cl_band, ell >= 0)
        print(f"| {j} | {sc.lam ** (j - 1):g} < l < {sc.lam ** (j + 1):g} | {band_in:.3f} | {frac_mono:.3f} "
              f"| {frac_ex:.3f} | {1 - frac_ex - frac_hi:.3f} | {frac_hi:.3f} | {frac_out:.3f} |")
        d = (2 * ell + 1) / (4 * np.pi)  # energy (variance, uK^2) carried by each multipole
        x = ell + 1
        ax.loglog(x, d * cl_band, label=r"$f\star\Psi_j$", lw=1.2)
        ax.loglog(x, d * cl_mod, label=r"$|f\star\Psi_j|$", lw=1.2)
        ax.plot([1], [d[0] * cl_mod[0]], "o", color="C1", ms=5)
        for edge in (sc.lam ** (j - 1), sc.lam ** (j + 1)):
            ax.axvline(edge + 1, color="0.6", ls=":", lw=1)
        ax.axvspan(1, sc.lam ** sc.J0 + 1, color="C2", alpha=0.08,
                   label=rf"$\ell<\lambda^{{J_0}}$ (kept by $S$)")
        ax.set_title(rf"$j={j}$, band ${sc.lam ** (j - 1):g}<\ell<{sc.lam ** (j + 1):g}$: modulus puts "
                     f"{100 * frac_mono:.0f}% of its energy in $\\ell=0$ (dot),\n"
                     rf"{100 * frac_out:.0f}% at $\ell<{sc.lam ** sc.J0:g}$; "
                     rf"of the $\ell\geq1$ part, {100 * frac_ex:.0f}% below the band, "
                     rf"{100 * frac_hi:.0f}% above", fontsize=9)
        ax.set_xlabel(r"$\ell + 1$")
        ax.set_xlim(1, lmax_fine + 1)
    positive = [y[y > 0] for a in axes for y in (np.asarray(ln.get_ydata(), float) for ln in a.get_lines())
                if y.size > 2]
    top = max(p.max() for p in positive)
    axes[0].set_ylim(top * 1e-9, top * 3)
    axes[0].set_ylabel(r"$(2\ell+1)\,C_\ell/4\pi$  [$\mu$K$^2$ per multipole]")
    axes[0].legend(fontsize=8, loc="lower left")
    fig.suptitle(f"Gaussian CMB sky, lmax {lmax}: the modulus moves wavelet energy to low $\\ell$", fontsize=10)
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=130)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
