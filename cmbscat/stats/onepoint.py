"""One-point statistics of a full-resolution map: skewness and excess kurtosis."""

from __future__ import annotations

import numpy as np


def one_point_statistics(sky_map: np.ndarray) -> np.ndarray:
    """(skewness, excess kurtosis) of a map's pixel values; shape (2,)."""
    d = np.asarray(sky_map, dtype=np.float64)
    d = d - d.mean()
    var = np.mean(d * d)
    return np.array([np.mean(d**3) / var**1.5, np.mean(d**4) / var**2 - 3.0])
