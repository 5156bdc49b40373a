"""Per-map f_NL drawn from a stated distribution (``cmbscat simulate --fnl-dist SPEC``).

A sims file made with a distribution gives map ``i`` its own local f_NL, f_NL_i
(dimensionless, the amplitude of :class:`cmbscat.sky.nongaussian.LocalFNL`), stores
it in ``/fnl`` and labels the map ``int(f_NL_i != 0)``. Three forms of SPEC:

``uniform:LO,HI``
    f_NL_i ~ U[LO, HI), LO < HI.
``normal:MU,SD``
    f_NL_i ~ N(MU, SD^2), SD > 0.
``grid:V1,V2,...,VK``
    f_NL_i = V[i % K]: every value equally often (exactly, when K divides the number
    of maps), for test sets binned by true f_NL. A 0 in the grid gives Gaussian maps.

The random forms draw f_NL_i from the map's own seed (``/seeds``), with a stream
separate from the one that draws the map's Gaussian a_lm
(``np.random.default_rng(seed)``, :class:`cmbscat.sky.simulate.SkySimulator`): the
generator of :func:`fnl_rng` is ``SeedSequence(seed, spawn_key=(FNL_SPAWN_KEY,))``,
whose entropy (the seed padded to four 32-bit words, then the key) no seed below
2^63 alone can reproduce. So f_NL_i is a function of seed_i alone (of i alone for a
grid): the same for any number of maps and any sharding, and any map can be
regenerated without the others.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from cmbscat.errors import CmbscatError

FNL_SPAWN_KEY = 0xF17  # spawn key of the per-map f_NL stream (fnl_rng)
FORMS = ("uniform", "normal", "grid")
SPEC_HELP = "uniform:LO,HI, normal:MU,SD or grid:V1,V2,..."


def fnl_rng(seed: int) -> np.random.Generator:
    """The generator that draws a map's f_NL from its seed (0 <= seed < 2^63).

    Separate from ``np.random.default_rng(seed)``, which draws the map's Gaussian a_lm.
    """
    return np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(FNL_SPAWN_KEY,)))


@dataclass(frozen=True)
class FnlDistribution:
    """A distribution of per-map f_NL, parsed from a SPEC string (:meth:`parse`).

    Attributes
    ----------
    form : ``"uniform"``, ``"normal"`` or ``"grid"``.
    params : the numbers of the SPEC, floats: (LO, HI), (MU, SD) or (V1, ..., VK).
    """

    form: str
    params: tuple[float, ...]

    @classmethod
    def parse(cls, spec: str) -> "FnlDistribution":
        """Parse ``uniform:LO,HI`` (LO < HI), ``normal:MU,SD`` (SD > 0) or ``grid:V1,V2,...``.

        Spaces around the parts are ignored and the form is case-insensitive; every
        number must be finite. A bad SPEC raises :class:`CmbscatError` with a one-line
        message naming the problem.
        """
        text = str(spec).strip()
        form, sep, rest = text.partition(":")
        form = form.strip().lower()
        if not sep or form not in FORMS:
            raise CmbscatError(f"--fnl-dist must be {SPEC_HELP}; got {text!r}")
        parts = [p.strip() for p in rest.split(",")]
        try:
            values = tuple(float(p) for p in parts)
        except ValueError:
            raise CmbscatError(f"--fnl-dist {text!r}: the values after '{form}:' must be numbers "
                               "separated by commas") from None
        bad = [p for p, v in zip(parts, values) if not math.isfinite(v)]
        if bad:
            raise CmbscatError(f"--fnl-dist {text!r}: values must be finite, got {bad[0]}")
        if form in ("uniform", "normal") and len(values) != 2:
            names = "LO,HI" if form == "uniform" else "MU,SD"
            raise CmbscatError(f"--fnl-dist {form}:{names} takes two numbers, got {len(values)} in {text!r}")
        if form == "uniform" and not values[0] < values[1]:
            raise CmbscatError(f"--fnl-dist uniform:LO,HI needs LO < HI, got {text!r}")
        if form == "normal" and not values[1] > 0:
            raise CmbscatError(f"--fnl-dist normal:MU,SD needs SD > 0, got {text!r}")
        return cls(form, values)

    @property
    def spec(self) -> str:
        """Canonical SPEC (floats by repr, which round-trips exactly): ``parse(d.spec) == d``."""
        return f"{self.form}:" + ",".join(repr(float(v)) for v in self.params)

    def __str__(self) -> str:
        return self.spec

    def value(self, index: int, seed: int) -> float:
        """f_NL (dimensionless) of map ``index`` whose seed is ``seed`` (0 <= seed < 2^63).

        The grid uses ``index`` only, the random forms ``seed`` only.
        """
        if self.form == "grid":
            return float(self.params[int(index) % len(self.params)])
        if not 0 <= int(seed) < 2**63:
            raise CmbscatError(f"a map's f_NL is drawn from its seed, which must be in [0, 2^63); "
                               f"got {seed}")
        rng = fnl_rng(seed)
        a, b = self.params
        return float(rng.uniform(a, b) if self.form == "uniform" else rng.normal(a, b))

    def values(self, seeds: np.ndarray) -> np.ndarray:
        """Each map's f_NL: float64, shape (N,), for the per-map seeds of a whole run.

        Parameters
        ----------
        seeds : int, shape (N,): map ``i``'s seed is ``seeds[i]`` (``/seeds``,
            :func:`cmbscat.sky.simulate.map_seeds`); ``i`` is the map's index in the
            file, which only the grid uses (f_NL_i = V[i % K]).

        Returns
        -------
        float64 (N,): ``[self.value(i, seeds[i]) for i in range(N)]``.
        """
        seeds = np.asarray(seeds).reshape(-1)
        return np.array([self.value(i, s) for i, s in enumerate(seeds)], dtype=np.float64)


def fnl_labels(fnl: np.ndarray) -> np.ndarray:
    """Labels (int8, same shape as ``fnl``) of maps with these f_NL: 1 (non-Gaussian) where
    f_NL != 0, else 0 (Gaussian)."""
    return (np.asarray(fnl) != 0).astype(np.int8)
