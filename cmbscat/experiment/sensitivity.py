"""One number per method: the non-Gaussian amplitude at which it reaches a target accuracy.

A scan gives, at each amplitude A (f_NL or g_NL), how many of n test maps a method
classifies right. A classifier that thresholds a statistic which separates the two
classes by d' standard deviations is right with probability Phi(d'/2), and d' grows
as a power of the amplitude (linearly for the optimal cubic statistic at small f_NL,
quadratically for a statistic even in the map). So the scan is fitted with

    accuracy(A) = Phi( Phi^-1(target) (A / A_target)^p ),

which equals ``target`` at A = A_target by construction, by maximising the binomial
likelihood of the counts over (A_target, p). The 68 % interval of A_target is the
profile-likelihood interval (2 Delta log L <= 1, p re-fitted at each A_target). When
the data do not bound A_target from above (a method at chance over the whole scan),
the result says so instead of extrapolating.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.optimize import brentq, minimize_scalar
from scipy.stats import norm

#: Range of the power p allowed in the fit (d' proportional to A^p).
P_RANGE = (0.25, 6.0)


def model_accuracy(amplitude: np.ndarray, a_target: float, p: float, target: float = 0.95) -> np.ndarray:
    """Phi(Phi^-1(target) (A / a_target)^p): the fitted accuracy curve at amplitudes A > 0."""
    return norm.cdf(norm.ppf(target) * (np.asarray(amplitude, float) / a_target) ** p)


def _log_likelihood(log_a: float, p: float, amplitudes, k, n, target) -> float:
    acc = np.clip(model_accuracy(amplitudes, math.exp(log_a), p, target), 1e-12, 1 - 1e-12)
    return float(np.sum(k * np.log(acc) + (n - k) * np.log1p(-acc)))


def _profile(log_a: float, amplitudes, k, n, target) -> tuple[float, float]:
    """max over p of the log-likelihood at A_target = exp(log_a); returns (log L, p)."""
    res = minimize_scalar(lambda log_p: -_log_likelihood(log_a, math.exp(log_p), amplitudes, k, n, target),
                          bounds=tuple(np.log(P_RANGE)), method="bounded", options={"xatol": 1e-4})
    return -float(res.fun), math.exp(float(res.x))


def _interval_edge(log_best: float, outward: np.ndarray, outward_profile: np.ndarray,
                   amplitudes, k, n, target, log_l_max: float) -> float | None:
    """log A_target where the profile log-likelihood falls 0.5 below its maximum.

    ``outward`` are grid points walked away from ``log_best`` (increasing distance) and
    ``outward_profile`` the profile log-likelihood already computed there; the first
    one below the threshold brackets the crossing, which is then solved for exactly
    (the interval may be narrower than the grid's spacing). None when the profile
    stays above the threshold over the whole grid (the data do not bound it).
    """
    threshold = log_l_max - 0.5
    below = np.flatnonzero(outward_profile < threshold)
    if below.size == 0:
        return None
    first = int(below[0])
    inner = log_best if first == 0 else outward[first - 1]
    return float(brentq(lambda x: _profile(x, amplitudes, k, n, target)[0] - threshold,
                        min(inner, outward[first]), max(inner, outward[first]), xtol=1e-6))


def amplitude_at_accuracy(amplitudes, n_correct, n_maps, target: float = 0.95) -> dict:
    """Fit a scan and return the amplitude where the method reaches ``target`` accuracy.

    amplitudes : (K,) positive scanned amplitudes; n_correct, n_maps : (K,) counts of
    correctly classified and of all test maps at each. Returns a dict with
    ``estimate`` (maximum likelihood A_target), ``interval68`` [low, high] (profile
    likelihood; ``high`` is ``inf`` when the scan does not bound it), ``p`` (fitted
    power), ``status``: ``"ok"`` (A_target inside the scanned range: an interpolation),
    ``"above scan"`` (beyond the largest amplitude: not reached, and not extrapolated)
    or ``"below scan"`` (reached before the smallest), and ``scan`` = (min, max).
    """
    a = np.asarray(amplitudes, dtype=np.float64)
    k = np.asarray(n_correct, dtype=np.float64)
    n = np.asarray(n_maps, dtype=np.float64)
    if a.size < 2 or np.any(a <= 0):
        raise ValueError("need at least two positive amplitudes")
    lo_scan, hi_scan = float(a.min()), float(a.max())
    # the profile log-likelihood on a grid of log A_target well beyond the scan both ways
    grid = np.linspace(math.log(lo_scan) - math.log(20), math.log(hi_scan) + math.log(20), 121)
    profile = np.array([_profile(g, a, k, n, target)[0] for g in grid])
    best = int(np.argmax(profile))
    # refine the maximum between its grid neighbours
    left, right = grid[max(best - 1, 0)], grid[min(best + 1, grid.size - 1)]
    res = minimize_scalar(lambda g: -_profile(g, a, k, n, target)[0], bounds=(left, right),
                          method="bounded", options={"xatol": 1e-5})
    log_best, log_l_max = float(res.x), -float(res.fun)
    p_best = _profile(log_best, a, k, n, target)[1]
    below, above = grid < log_best, grid > log_best
    log_low = _interval_edge(log_best, grid[below][::-1], profile[below][::-1], a, k, n, target, log_l_max)
    log_high = _interval_edge(log_best, grid[above], profile[above], a, k, n, target, log_l_max)
    low = math.exp(log_low) if log_low is not None else 0.0
    high = math.exp(log_high) if log_high is not None else math.inf
    estimate = math.exp(log_best)
    if estimate > hi_scan:
        status = "above scan"
    elif estimate < lo_scan:
        status = "below scan"
    else:
        status = "ok"
    return {"estimate": estimate, "interval68": [low, high], "p": p_best, "status": status,
            "target": target, "scan": [lo_scan, hi_scan]}


def describe(result: dict, digits: int = 2) -> str:
    """``"9.8 [8.9, 10.9]"``, ``"> 80 (not reached)"`` or ``"< 5"`` for a table cell."""
    lo_scan, hi_scan = result["scan"]
    if result["status"] == "above scan":
        return f"> {hi_scan:.{digits}g} (not reached)"
    if result["status"] == "below scan":
        return f"< {lo_scan:.{digits}g}"
    low, high = result["interval68"]
    high_text = "∞" if math.isinf(high) else f"{high:.{digits + 1}g}"
    return f"{result['estimate']:.{digits + 1}g} [{low:.{digits + 1}g}, {high_text}]"


def ratio(numerator: dict, denominator: dict) -> tuple[float, float, float] | None:
    """A_target of one method over another's, with a 68 % interval from their intervals
    combined in log space as independent; None unless both are ``"ok"`` and bounded."""
    if numerator["status"] != "ok" or denominator["status"] != "ok":
        return None
    spreads = []
    for r in (numerator, denominator):
        low, high = r["interval68"]
        if low <= 0 or math.isinf(high):
            return None
        spreads.append((math.log(r["estimate"] / low), math.log(high / r["estimate"])))
    value = numerator["estimate"] / denominator["estimate"]
    down = math.hypot(spreads[0][0], spreads[1][1])
    up = math.hypot(spreads[0][1], spreads[1][0])
    return value, value * math.exp(-down), value * math.exp(up)
