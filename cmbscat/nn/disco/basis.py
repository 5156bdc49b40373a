"""The DISCO filter basis: piecewise-linear hats on a cap, isotropic or directional (:class:`HatFilterBasis`)."""

from __future__ import annotations

import math

import numpy as np

from cmbscat.errors import CmbscatError


def _monomial_exponents(degree: int) -> list[tuple[int, int]]:
    """Exponents ``(p, q)`` of the monomials ``x^p y^q`` of degree <= ``degree`` (1 or 2).

    The order is the columns of :func:`_monomials`: 1, x, y, x^2, xy, y^2.
    """
    return [(0, 0), (1, 0), (0, 1), (2, 0), (1, 1), (0, 2)][: {1: 3, 2: 6}[degree]]


def _monomials(theta: np.ndarray, bearing: np.ndarray, degree: int) -> np.ndarray:
    """Monomials of degree <= ``degree`` in ``(x, y) = theta (cos beta, sin beta)``, ``(n, J)``."""
    x, y = theta * np.cos(bearing), theta * np.sin(bearing)
    return np.stack([x**p * y**q for p, q in _monomial_exponents(degree)], axis=1)


class HatFilterBasis:
    """Piecewise-linear ("hat") filter basis on a cap of radius ``theta_cutoff``.

    ``kernel_shape = n`` (int): isotropic, ``n`` hats in geodesic distance with
    nodes ``r_j = j * h``, ``h = theta_cutoff / n``, ``j = 0 .. n-1``, each of
    half-width ``h`` (the last one vanishes at ``theta_cutoff``). Together they
    span every continuous piecewise-linear radial profile with knots at the
    nodes that vanishes at the cap's edge.

    ``kernel_shape = (n_r, n_phi)``: directional. The centre hat (``j = 0``) is
    isotropic (a bearing is undefined at distance 0); each other radial hat is
    multiplied by ``n_phi`` periodic hats in the bearing with nodes
    ``2 pi m / n_phi`` (``m = 0`` points north). ``n_basis = 1 + (n_r - 1) n_phi``,
    index ``k = 1 + (j - 1) n_phi + m``.

    Every basis function is divided by its analytic integral over the sphere,
    so ``integral psi_k dOmega = 1``: each basis response is a local weighted
    mean of the input, which keeps activations of order one.
    """

    def __init__(self, kernel_shape, theta_cutoff: float):
        if isinstance(kernel_shape, (int, np.integer)):
            n_r, n_phi = int(kernel_shape), 1
            self.isotropic = True
        else:
            shape = tuple(int(s) for s in kernel_shape)
            if len(shape) == 1:
                shape = (shape[0], 1)
            if len(shape) != 2:
                raise CmbscatError(f"kernel_shape must be an int or a pair (n_r, n_phi), got {kernel_shape!r}")
            n_r, n_phi = shape
            self.isotropic = n_phi == 1
        if n_r < 1 or n_phi < 1:
            raise CmbscatError(f"kernel_shape entries must be >= 1, got {kernel_shape!r}")
        if not self.isotropic and n_phi < 2:
            raise CmbscatError("a directional kernel needs n_phi >= 2")
        if not 0.0 < theta_cutoff < math.pi:
            raise CmbscatError(f"theta_cutoff must be in (0, pi) radians, got {theta_cutoff}")
        self.n_r, self.n_phi = n_r, n_phi
        self.theta_cutoff = float(theta_cutoff)
        self.h = self.theta_cutoff / n_r
        self.kernel_shape = n_r if self.isotropic else (n_r, n_phi)
        self._radial_integral = self._radial_integrals()

    @property
    def n_basis(self) -> int:
        return self.n_r if self.isotropic else 1 + (self.n_r - 1) * self.n_phi

    def _radial_integrals(self) -> np.ndarray:
        """``int_0^pi hat_j(theta) sin(theta) dtheta`` for each radial hat j (Gauss-Legendre, exact to rounding)."""
        x, w = np.polynomial.legendre.leggauss(32)
        out = np.zeros(self.n_r)
        for j in range(self.n_r):
            for lo, hi in ((max(0.0, (j - 1) * self.h), j * self.h), (j * self.h, (j + 1) * self.h)):
                if hi <= lo:
                    continue
                t = 0.5 * (hi - lo) * x + 0.5 * (hi + lo)
                out[j] += 0.5 * (hi - lo) * np.sum(w * self._hat(t, j) * np.sin(t))
        return out

    def _hat(self, theta: np.ndarray, j: int) -> np.ndarray:
        return np.clip(1.0 - np.abs(theta / self.h - j), 0.0, None) * (theta < self.theta_cutoff)

    def integrals_unnormalised(self) -> np.ndarray:
        """Analytic ``int psi_k dOmega`` (steradians) of the raw hats, ``(n_basis,)``."""
        if self.isotropic:
            return 2.0 * np.pi * self._radial_integral
        out = [2.0 * np.pi * self._radial_integral[0]]
        for j in range(1, self.n_r):
            out += [self._radial_integral[j] * 2.0 * np.pi / self.n_phi] * self.n_phi
        return np.asarray(out)

    def analytic_moments(self, degree: int, n_theta: int = 64, n_bearing: int = 1440) -> np.ndarray:
        """``int psi_k m_j dOmega`` for the monomials ``m_j`` of :func:`_monomials`, ``(n_basis, J)``.

        Tensor quadrature: Gauss-Legendre on each linear piece in theta, a uniform
        (spectrally accurate for the periodic, piecewise-linear bearing hats up to
        ~1e-7) rule in bearing.
        """
        x, w = np.polynomial.legendre.leggauss(n_theta)
        thetas, weights = [], []
        for j in range(self.n_r):
            lo, hi = j * self.h, (j + 1) * self.h
            thetas.append(0.5 * (hi - lo) * x + 0.5 * (hi + lo))
            weights.append(0.5 * (hi - lo) * w)
        theta = np.concatenate(thetas)
        w_theta = np.concatenate(weights) * np.sin(theta)
        bearing = (np.arange(n_bearing) + 0.5) * 2 * np.pi / n_bearing - np.pi
        tt, bb = np.meshgrid(theta, bearing, indexing="ij")
        w2 = np.repeat(w_theta * (2 * np.pi / n_bearing), n_bearing)
        values = self.dense_values(tt.ravel(), bb.ravel())  # (n_basis, n)
        mono = _monomials(tt.ravel(), bb.ravel(), degree)  # (n, J)
        return values @ (mono * w2[:, None])

    def sparse_values(self, theta: np.ndarray, bearing: np.ndarray):
        """Non-zero basis values at points ``(theta, bearing)`` (radians, 1-D arrays).

        Returns ``(k, point, value)``: basis index, index into the input arrays,
        and ``psi_k`` (normalised to unit integral) at that point. Each point
        with ``theta < theta_cutoff`` gives at most 2 (isotropic) or 4
        (directional) entries.
        """
        theta = np.asarray(theta, dtype=np.float64)
        bearing = np.asarray(bearing, dtype=np.float64)
        point = np.arange(theta.size)
        inside = theta < self.theta_cutoff
        u = theta / self.h
        j0 = np.floor(u).astype(np.int64)
        frac = u - j0
        radial = [(j0, 1.0 - frac), (j0 + 1, frac)]  # (radial hat index, value)
        ks, ps, vs = [], [], []
        for j, v in radial:
            ok = inside & (j < self.n_r) & (v > 0.0)
            if self.isotropic:
                ks.append(j[ok]); ps.append(point[ok]); vs.append(v[ok])
                continue
            centre = ok & (j == 0)
            ks.append(np.zeros(np.count_nonzero(centre), np.int64)); ps.append(point[centre]); vs.append(v[centre])
            ring = ok & (j > 0)
            b = np.mod(bearing[ring], 2.0 * np.pi) / (2.0 * np.pi / self.n_phi)
            m0 = np.floor(b).astype(np.int64)
            fb = b - m0
            for m, wb in ((m0 % self.n_phi, 1.0 - fb), ((m0 + 1) % self.n_phi, fb)):
                good = wb > 0.0
                ks.append((1 + (j[ring] - 1) * self.n_phi + m)[good])
                ps.append(point[ring][good])
                vs.append((v[ring] * wb)[good])
        k = np.concatenate(ks)
        p = np.concatenate(ps)
        val = np.concatenate(vs) / self.integrals_unnormalised()[k]
        return k, p, val

    def dense_values(self, theta: np.ndarray, bearing: np.ndarray | None = None) -> np.ndarray:
        """Normalised basis values ``(n_basis, n)`` at points (for checks and plots)."""
        theta = np.asarray(theta, dtype=np.float64).ravel()
        bearing = np.zeros_like(theta) if bearing is None else np.asarray(bearing, dtype=np.float64).ravel()
        k, p, v = self.sparse_values(theta, bearing)
        out = np.zeros((self.n_basis, theta.size))
        np.add.at(out, (k, p), v)
        return out

    def __repr__(self) -> str:
        return f"HatFilterBasis(kernel_shape={self.kernel_shape}, theta_cutoff={self.theta_cutoff:.6g})"
