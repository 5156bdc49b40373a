"""Response calibration of an f_NL estimator on simulations with known f_NL.

A trained estimator's mean need not respond to f_NL with unit slope: the hybrid
ensemble of the fifth f_NL run over-responds by about 2 points at |f_NL| = 40
(docs/fnl_regression.md). Measured on calibration maps that play no other part,
the response

    E[mu | f] = r(f) = f + c_0 + sum_{k odd, k <= degree} c_k (f / scale)^k

is fitted by ordinary least squares of (mu - f) on the calibration maps, and each
estimate is then read through its inverse: f_hat = r^-1(mu), with the error carried
through the slope, sigma_hat = sigma / r'(f_hat). The odd powers follow an
estimator that is odd in the map (``--sign-flip``), whose bias is odd in f; the
constant lets the calibration maps say so rather than assume it.

Paired fit: given an unbiased reference estimator's estimates g of the same maps (the
cubic statistic's S / F), the fit is of (mu - g) instead: E[mu - g | f] = r(f) - f
still, while the part of mu - f that the map's own realisation puts into both
estimators cancels, so the same maps fit the response more precisely (by a third for
the hybrid ensemble against S / F, docs/fnl_regression.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["ResponseCalibration"]


@dataclass(frozen=True)
class ResponseCalibration:
    """The fitted response r(f) of an estimator's mean to the true f_NL.

    Attributes
    ----------
    coefficients : tuple of float
        (c_0, c_1, c_3, ..., c_degree), in units of f_NL.
    errors : tuple of float
        Their standard errors (ordinary least squares, residual variance from the fit).
    scale : float
        f_NL unit of the polynomial's variable x = f / scale.
    domain : (float, float)
        Interval of true f_NL on which r is required to increase (and inverted on);
        estimates whose mean lies outside r(domain) are continued linearly.
    n_maps : int
        Calibration maps the fit used.
    against : str
        What the estimates were compared with: ``"truth"`` (mu - f) or ``"reference"``
        (mu - g, a reference estimator's estimates of the same maps; the paired fit).
    """

    coefficients: tuple[float, ...]
    errors: tuple[float, ...]
    scale: float
    domain: tuple[float, float]
    n_maps: int
    against: str = "truth"

    @property
    def degree(self) -> int:
        """Highest odd power of the polynomial."""
        return 2 * (len(self.coefficients) - 1) - 1

    @staticmethod
    def _design(fnl: np.ndarray, degree: int, scale: float) -> np.ndarray:
        x = np.asarray(fnl, dtype=np.float64) / scale
        return np.stack([np.ones_like(x)] + [x ** k for k in range(1, degree + 1, 2)], axis=-1)

    @classmethod
    def fit(cls, true: np.ndarray, mean: np.ndarray, degree: int = 5, scale: float | None = None,
            domain: tuple[float, float] | None = None,
            reference: np.ndarray | None = None) -> "ResponseCalibration":
        """Least-squares fit of (mean - true), or of (mean - reference), on the calibration maps.

        Parameters
        ----------
        true, mean : (n,) array
            True f_NL of each calibration map and the estimator's mean on it.
        degree : int
            Highest odd power (1, 3, 5, ...).
        scale : float, optional
            x = f / scale; default the largest |true|.
        domain : (float, float), optional
            Where r must increase and is inverted; default the calibration maps' range of
            true f_NL (the fit says nothing beyond it: there r continues by its tangent).
        reference : (n,) array, optional
            An unbiased estimator's estimates of the same maps (E[reference | f] = f): the
            paired fit, of (mean - reference), whose residuals lack the maps' own scatter
            about f that both estimators share.

        Raises
        ------
        ValueError
            Too few maps for the polynomial, or a fitted r that does not increase on ``domain``
            (then it has no inverse there and nothing can be corrected).
        """
        true = np.asarray(true, dtype=np.float64)
        mean = np.asarray(mean, dtype=np.float64)
        if degree < 1 or degree % 2 == 0:
            raise ValueError(f"degree must be odd and >= 1, got {degree}")
        n_terms = (degree + 1) // 2 + 1
        if true.shape != mean.shape or true.ndim != 1 or true.size <= n_terms:
            raise ValueError(f"need more than {n_terms} calibration maps with a mean each, "
                             f"got {true.shape} and {mean.shape}")
        baseline = true if reference is None else np.asarray(reference, dtype=np.float64)
        if baseline.shape != true.shape:
            raise ValueError(f"the reference's estimates have shape {baseline.shape}, the maps {true.shape}")
        scale = float(scale if scale is not None else np.abs(true).max())
        if domain is None:
            domain = (float(true.min()), float(true.max()))
        design = cls._design(true, degree, scale)
        coefficients, *_ = np.linalg.lstsq(design, mean - baseline, rcond=None)
        residual = mean - baseline - design @ coefficients
        covariance = np.linalg.inv(design.T @ design) * residual.var(ddof=n_terms)
        calibration = cls(tuple(map(float, coefficients)), tuple(map(float, np.sqrt(np.diag(covariance)))),
                          scale, (float(domain[0]), float(domain[1])), int(true.size),
                          "truth" if reference is None else "reference")
        grid = calibration._grid()
        if not np.all(np.diff(calibration.response(grid)) > 0):
            raise ValueError(f"the fitted response does not increase on f_NL in {domain}: "
                             "it has no inverse there")
        return calibration

    def _grid(self, n: int = 20001) -> np.ndarray:
        return np.linspace(self.domain[0], self.domain[1], n)

    def bias(self, fnl: np.ndarray) -> np.ndarray:
        """r(f) - f: the estimator's expected bias at true f_NL ``fnl``."""
        return self._design(fnl, self.degree, self.scale) @ np.asarray(self.coefficients)

    def response(self, fnl: np.ndarray) -> np.ndarray:
        """r(f): the estimator's expected mean at true f_NL ``fnl``."""
        return np.asarray(fnl, dtype=np.float64) + self.bias(fnl)

    def slope(self, fnl: np.ndarray) -> np.ndarray:
        """r'(f)."""
        x = np.asarray(fnl, dtype=np.float64) / self.scale
        odd = self.coefficients[1:]
        return 1.0 + sum(c * k * x ** (k - 1) for c, k in zip(odd, range(1, self.degree + 1, 2))) / self.scale

    def apply(self, mean: np.ndarray, sigma: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Corrected estimates: f_hat = r^-1(mean) and sigma / r'(f_hat), same shapes.

        Inside r(domain) the inverse is read off a fine grid and polished by two Newton
        steps (to float rounding); outside it r is continued by its tangent at the end.
        """
        mean = np.asarray(mean, dtype=np.float64)
        grid = self._grid()
        values = self.response(grid)
        fnl = np.interp(mean, values, grid)
        lo, hi = mean < values[0], mean > values[-1]
        fnl[lo] = grid[0] + (mean[lo] - values[0]) / self.slope(grid[0])
        fnl[hi] = grid[-1] + (mean[hi] - values[-1]) / self.slope(grid[-1])
        inside = ~(lo | hi)
        for _ in range(2):
            fnl[inside] -= (self.response(fnl[inside]) - mean[inside]) / self.slope(fnl[inside])
        slope = self.slope(np.clip(fnl, *self.domain))  # outside: the tangent's, at the end
        return fnl, np.asarray(sigma, dtype=np.float64) / slope

    def to_dict(self) -> dict:
        """JSON-ready record (``from_dict`` reads it back)."""
        return {"model": "E[mu | f] = f + c0 + sum_k c_k (f / scale)^k, k odd",
                "degree": self.degree, "coefficients": list(self.coefficients),
                "errors": list(self.errors), "scale": self.scale, "domain": list(self.domain),
                "n_maps": self.n_maps, "against": self.against}

    @classmethod
    def from_dict(cls, record: dict) -> "ResponseCalibration":
        """The calibration ``to_dict`` wrote (records before the paired fit: against the truth)."""
        return cls(tuple(record["coefficients"]), tuple(record["errors"]), float(record["scale"]),
                   tuple(record["domain"]), int(record["n_maps"]), record.get("against", "truth"))
