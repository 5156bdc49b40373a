"""DISCO convolutions on HEALPix: equivariance, scaling, and torch-harmonics side by side.

    python benchmarks/disco.py                       # everything (a few minutes on 2 cores)
    python benchmarks/disco.py --part equivariance   # or: scaling, build, torch-harmonics

Every figure printed is measured in this run; nothing is hard-coded. Timings are
medians of ``--repeats`` runs after one warm-up, with ``--threads`` torch threads
(default 1: the machine is shared, so compare ratios measured in the same run).
The torch-harmonics part needs ``torch_harmonics`` (torch 2.14); it is skipped
with a message when that is not importable.
"""

from __future__ import annotations

import os

# healpy's OpenMP transforms slow down by orders of magnitude when their threads compete
# with other jobs on a small machine; set before healpy / torch load their OpenMP runtime.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import math  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402

import healpy as hp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from cmbscat.nn.disco import (  # noqa: E402
    DEFAULT_CUTOFF_PIXELS,
    DiscoConvS2,
    DiscoConvTransposeS2,
    DiscoGeometry,
    disco_matrix,
    default_theta_cutoff,
)
from cmbscat.nn.disco import basis, cache, quadrature  # noqa: E402
from cmbscat.nn.equivariance import alm_norm2, equivariance_error, random_alm, random_rotation  # noqa: E402
from cmbscat.healpix import rotate_alm  # noqa: E402

warnings.filterwarnings("ignore", message=".*[Ss]parse.*")


def timed(fn, repeats: int) -> float:
    """Shortest wall time (s) of ``fn()`` over ``repeats`` runs after one warm-up.

    The minimum, not the median: on a shared machine other jobs only ever add time.
    """
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    line = lambda cells: "| " + " | ".join(c.rjust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    print(line(header))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print(line(r))
    print(flush=True)


# ---------------------------------------------------------------- equivariance


def equivariance_part(nsides, rotations: int) -> None:
    print(f"## Equivariance: relative error ||a(layer(Rf)) - R a(layer(f))|| / ||a(layer(f))||, "
          f"harmonic band l <= lmax_out, mean ± std over {rotations} random rotations\n")
    print("1 -> 4 channels, random weights (seed 0), float64; inputs: flat spectrum a_lm (1 <= l <= lmax); "
          f"default cap {DEFAULT_CUTOFF_PIXELS} pixels of the coarser grid; 3 radial hats.\n")
    rows = []
    cases = []
    for n in nsides:
        cases += [
            ("isotropic 3", n, n, n, 3, "moment2", "conv"),
            ("isotropic 3, nodal", n, n, n, 3, "nodal", "conv"),
            ("isotropic 3, none", n, n, n, 3, "none", "conv"),
        ] + ([("isotropic 3", n, n, 32, 3, "moment2", "conv")] if n != 32 else []) + [
            ("directional (3, 4)", n, n, n, (3, 4), "moment2", "conv"),
        ] + ([("directional (3, 4)", n, n, 32, (3, 4), "moment2", "conv")] if n != 32 else []) + [
            ("down isotropic 3", n, n // 2, n // 2, 3, "moment2", "conv"),
            ("up isotropic 3", n // 2, n, n // 2, 3, "moment2", "transposed"),
        ]
    for name, n_in, n_out, lmax, kernel_shape, norm, kind in cases:
        torch.manual_seed(0)
        cls = DiscoConvS2 if kind == "conv" else DiscoConvTransposeS2
        layer = cls(1, 4, n_in, n_out, kernel_shape, bias=False, normalization=norm)
        lmax_out = min(lmax, n_out, n_in)
        mean, std = equivariance_error(layer, n_in, n_out, lmax=lmax, lmax_out=lmax_out, n_rotations=rotations)
        rows.append([name, str(n_in), str(n_out), str(lmax), f"{mean:.2e} ± {std:.1e}"])
    table(["layer", "nside_in", "nside_out", "lmax", "equivariance error"], rows)


# ----------------------------------------------------------------------- build


def _moment_corrected_lapack(row, val, k, theta, bearing, moments, degree, n_rows, rcond=1e-8, max_l1=quadrature.MAX_L1):
    """The build's moment correction as first written, for comparison: (n_rows, J, J) Gram
    arrays from 21 bincounts, solved by one batched ``numpy.linalg.inv`` (LAPACK per matrix)."""
    m = basis._monomials(theta, bearing, degree)
    n_mono = m.shape[1]
    gram = np.zeros((n_rows, n_mono, n_mono))
    for a in range(n_mono):
        for b in range(a, n_mono):
            gram[:, a, b] = gram[:, b, a] = np.bincount(row, weights=val * m[:, a] * m[:, b], minlength=n_rows)
    target = np.zeros((n_rows, n_mono))
    row_basis = np.zeros(n_rows, dtype=np.int64)
    row_basis[row] = k
    target[:] = moments[row_basis]
    # Solve with the Gram matrix scaled to unit diagonal and a tiny ridge; rows where
    # the system is near-singular give huge weights and are caught by the guard below.
    diag = np.sqrt(np.clip(np.einsum("rjj->rj", gram), 1e-300, None))
    unit = gram / diag[:, :, None] / diag[:, None, :] + rcond * np.eye(n_mono)
    good = np.all(np.isfinite(unit), axis=(1, 2)) & (diag[:, 0] > 0)
    coef = np.zeros((n_rows, n_mono))
    rhs = target[good] / diag[good]
    regularised = unit[good]
    exact = regularised - rcond * np.eye(n_mono)
    # One batched inverse serves the solve and both refinement steps (the matrices do not change).
    inverse = np.linalg.inv(regularised)
    del regularised
    scaled = np.einsum("rij,rj->ri", inverse, rhs)
    for _ in range(2):  # iterative refinement removes the ridge's bias on well-conditioned rows
        scaled += np.einsum("rij,rj->ri", inverse, rhs - np.einsum("rij,rj->ri", exact, scaled))
    # Rows where the (near-singular) system could not meet the moments fall back below.
    residual = np.abs(np.einsum("rij,rj->ri", exact, scaled) - rhs).max(axis=1)
    scaled[residual > 1e-10 * np.abs(rhs).max(axis=1)] = np.nan
    coef[good] = scaled / diag[good]
    good &= np.all(np.isfinite(coef), axis=1)
    coef[~good] = 0.0
    corrected = val * np.einsum("ij,ij->i", coef[row], m)
    # Guard: a correction that needs large negative weights (total variation > max_l1
    # times the integral) amplifies pixel noise more than it removes quadrature bias.
    l1 = np.bincount(row, weights=np.abs(corrected), minlength=n_rows)
    good &= l1 <= max_l1
    fallback = ~good[row]
    corrected[fallback] = quadrature._nodal(row, val, n_rows)[fallback]
    return corrected


def build_part(nside: int, kernel_shapes=(3, (3, 4))) -> None:
    """Fresh build time of the sparse DISCO tensor, library vs the batched-LAPACK reference."""
    print(f"## Build of the sparse tensor at nside {nside} (fresh, no cache)\n")
    library = quadrature._moment_corrected
    rows = []
    for kernel_shape in kernel_shapes:
        geometry = DiscoGeometry(nside, nside, kernel_shape, default_theta_cutoff(nside, nside), "moment2")
        times, matrices = {}, {}
        for name, solver in (("batched LAPACK (reference)", _moment_corrected_lapack), ("library", library)):
            quadrature._moment_corrected = solver
            try:
                t0 = time.perf_counter()
                matrices[name] = quadrature.build_disco_matrix(geometry)
                times[name] = time.perf_counter() - t0
            finally:
                quadrature._moment_corrected = library
        ref, new = matrices.values()
        diff = abs(ref - new).max() / abs(ref).max()
        t_ref, t_new = times.values()
        rows.append([str(kernel_shape), f"{new.nnz / hp.nside2npix(nside):.1f}", f"{t_ref:.1f}",
                     f"{t_new:.1f}", f"{t_new / t_ref:.2f}", f"{diff:.1e}"])
    table(["kernel_shape", "nnz/pix", "reference s", "library s", "ratio", "max rel. difference"], rows)
    print()


# --------------------------------------------------------------------- scaling


def buffer_bytes(layer: torch.nn.Module) -> int:
    return sum(b.numel() * b.element_size() for b in layer.buffers())


def scaling_part(nsides, repeats: int, batch: int = 4, channels: int = 16, kernel_shape=3) -> None:
    """Time and memory per pixel against nside, for two input layouts.

    "(B, C, npix)": a contiguous tensor, as a network's first layer receives it; the
    layer first transposes it to pixel-major order, a memory-bound copy. "pixel-major":
    a (B, C, npix) view of a (npix, B, C) buffer, which is what a DISCO layer outputs
    and therefore what every later layer receives (elementwise layers keep the layout).
    Forward+backward is ``layer(x).backward(g)`` with a fixed upstream gradient ``g``.
    """
    print(f"## Scaling: batch {batch}, {channels} -> {channels} channels, kernel_shape={kernel_shape}, "
          f"float32, {torch.get_num_threads()} torch thread(s), best of {repeats}\n")
    layouts = {"(B, C, npix)": lambda npix: torch.randn(batch, channels, npix),
               "pixel-major": lambda npix: torch.randn(npix, batch, channels).permute(1, 2, 0)}
    rows, per_pixel = [], {name: [] for name in layouts}
    for n in nsides:
        npix = hp.nside2npix(n)
        theta = default_theta_cutoff(n, n)
        cache._cached_matrix.cache_clear()  # time a fresh build, not the in-memory cache
        t0 = time.perf_counter()
        disco_matrix(DiscoGeometry(n, n, kernel_shape, theta, "moment2"))  # cached for the layer below
        build = time.perf_counter() - t0
        layer = DiscoConvS2(channels, channels, n, n, kernel_shape)
        mem = buffer_bytes(layer)
        nnz = layer.psi_val.numel()
        for name, make_input in layouts.items():
            x = make_input(npix)
            with torch.no_grad():
                fwd = timed(lambda: layer(x), repeats)
            xg = x.detach().requires_grad_()
            # A fixed upstream gradient in the layer's output layout: this times the layer's
            # forward and backward, not a loss function's own memory-bound passes.
            upstream = torch.randn(npix, batch, channels).permute(1, 2, 0)

            def fwd_bwd():
                layer.zero_grad(set_to_none=True)
                xg.grad = None
                layer(xg).backward(upstream)

            fb = timed(fwd_bwd, repeats)
            per_pixel[name].append((fwd / npix, fb / npix, mem / npix))
            rows.append([str(n), str(npix), name, f"{build:.2f}", f"{nnz / npix:.1f}", f"{mem / 2**20:.1f}",
                         f"{fwd * 1e3:.1f}", f"{fb * 1e3:.1f}",
                         f"{fwd / npix * 1e9:.0f}", f"{fb / npix * 1e9:.0f}", f"{mem / npix:.0f}"])
    table(["nside", "npix", "input layout", "build s", "nnz/pix", "sparse MiB", "fwd ms", "fwd+bwd ms",
           "fwd ns/pix", "f+b ns/pix", "bytes/pix"], rows)
    for name, values in per_pixel.items():
        arr = np.array(values)
        spread = arr.max(axis=0) / arr.min(axis=0)
        print(f"per-pixel spread max/min over nside {list(nsides)}, {name} input: forward {spread[0]:.2f}x, "
              f"forward+backward {spread[1]:.2f}x, memory {spread[2]:.2f}x (target: within 1.5x)", flush=True)
    print()


# ------------------------------------------------------------ torch-harmonics


def equiangular_shape(nside: int) -> tuple[int, int]:
    """Equiangular (nlat, nlon = 2 (nlat - 1)) grid with about 12 nside^2 points."""
    nlat = int(round(math.sqrt(6 * nside * nside))) + 1
    return nlat, 2 * (nlat - 1)


def th_equivariance_error(layer, nlat, nlon, lmax, rotations, seed=0):
    """The measurement of :func:`cmbscat.nn.equivariance.equivariance_error` on an equiangular grid.

    torch-harmonics' orthonormal real SHT with the Condon-Shortley phase uses
    healpy's a_lm convention (checked against scipy's Y_lm), so healpy rotates them.
    """
    import torch_harmonics as th

    rng = np.random.default_rng(seed)
    sht = th.RealSHT(nlat, nlon, lmax=lmax + 1, mmax=lmax + 1, grid="equiangular").double()
    isht = th.InverseRealSHT(nlat, nlon, lmax=lmax + 1, mmax=lmax + 1, grid="equiangular").double()
    ell, m = hp.Alm.getlm(lmax)

    def to_grid(alm):
        c = torch.zeros(lmax + 1, lmax + 1, dtype=torch.complex128)
        c[ell, m] = torch.from_numpy(alm)
        return isht(c)

    def to_alm(grid):
        return sht(grid)[..., ell, m].numpy()

    layer = layer.double()
    alm = random_alm(lmax, rng)
    with torch.no_grad():
        ref = to_alm(layer(to_grid(alm)[None, None])[0])
        errors = []
        for _ in range(rotations):
            angles = random_rotation(rng)
            got = to_alm(layer(to_grid(rotate_alm(alm, lmax, *angles))[None, None])[0])
            num = sum(alm_norm2(g - rotate_alm(r, lmax, *angles), lmax) for g, r in zip(got, ref))
            den = sum(alm_norm2(r, lmax) for r in ref)
            errors.append(math.sqrt(num / den))
    return float(np.mean(errors))


def torch_harmonics_part(nsides, rotations: int, repeats: int, batch: int = 4, channels: int = 16) -> None:
    try:
        import torch_harmonics as th
    except Exception as exc:  # noqa: BLE001 - any import failure means: skip
        print(f"## torch-harmonics: skipped ({type(exc).__name__}: {exc}); "
              "install torch==2.14.1 and torch-harmonics to run this part\n")
        return
    print(f"## Side by side with torch-harmonics {th.__version__} DiscreteContinuousConvS2 "
          f"(torch {torch.__version__}, {torch.get_num_threads()} thread(s))\n")
    print("Ours: defaults (kernel_shape=3: hats at 0, rc/3, 2rc/3; moment2; rc = 2.5 pixels). Theirs: "
          "their defaults, and the same 3 hats (their kernel_shape=5) with our rc; nodal normalisation "
          "(their default). Equiangular grid with about the same number of points. Forward: batch 4, "
          "16 -> 16 channels, float32. Equivariance: 1 -> 4 channels, float64, lmax = nside, "
          f"{rotations} rotations, the same measurement on both grids (an identity layer gives 1e-15).\n")
    rows = []
    for n in nsides:
        nlat, nlon = equiangular_shape(n)
        ours_cutoff = default_theta_cutoff(n, n)
        ours = DiscoConvS2(channels, channels, n, n, 3)
        x_hp = torch.randn(batch, channels, hp.nside2npix(n))
        x_eq = torch.randn(batch, channels, nlat, nlon)
        with torch.no_grad():
            t_ours = timed(lambda: ours(x_hp), repeats)
        torch.manual_seed(0)
        e_ours = equivariance_error(DiscoConvS2(1, 4, n, n, 3, bias=False), n, n, lmax=n, n_rotations=rotations)[0]
        configs = (("th defaults: kernel_shape=3 (2 hats), th cutoff", 3, None),
                   ("same 3 hats (th kernel_shape=5), our cutoff", 5, ours_cutoff))
        for label, th_kernel, cutoff in configs:
            theirs = th.DiscreteContinuousConvS2(channels, channels, (nlat, nlon), (nlat, nlon), th_kernel,
                                                 theta_cutoff=cutoff)
            with torch.no_grad():
                t_th = timed(lambda: theirs(x_eq), repeats)
            torch.manual_seed(0)
            small = th.DiscreteContinuousConvS2(1, 4, (nlat, nlon), (nlat, nlon), th_kernel, theta_cutoff=cutoff,
                                                bias=False)
            e_th = th_equivariance_error(small, nlat, nlon, n, rotations)
            rows.append([str(n), f"{nlat}x{nlon}", label, f"{theirs.theta_cutoff:.4f}", f"{ours_cutoff:.4f}",
                         f"{t_ours * 1e3:.1f}", f"{t_th * 1e3:.1f}", f"{t_ours / t_th:.2f}",
                         f"{e_ours:.2e}", f"{e_th:.2e}", f"{e_ours / e_th:.2f}"])
    table(["nside", "th grid", "torch-harmonics layer", "th rc", "our rc", "our fwd ms", "th fwd ms",
           "time ratio ours/th", "our equiv", "th equiv", "equiv ratio ours/th"], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["all", "equivariance", "scaling", "build", "torch-harmonics"], default="all")
    parser.add_argument("--rotations", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--build-nside", type=int, default=256, help="nside of the build part")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"# DISCO benchmark (torch {torch.__version__}, healpy {hp.__version__}, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')})\n")
    t0 = time.perf_counter()
    if args.part in ("all", "equivariance"):
        equivariance_part((32, 64, 128), args.rotations)
    if args.part in ("all", "scaling"):
        scaling_part((32, 64, 128, 256), args.repeats)
    if args.part in ("all", "build"):
        build_part(args.build_nside)
    if args.part in ("all", "torch-harmonics"):
        torch_harmonics_part((32, 64), args.rotations, args.repeats)
    print(f"total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
