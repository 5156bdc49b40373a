"""The ``simulate`` stage: Gaussian and local-f_NL non-Gaussian CMB skies to HDF5.

Map ``i`` of a file has label ``i % 2`` (0 Gaussian, 1 non-Gaussian) and seed
``seeds[i]``; it is a function of (seed, label, nside, lmax, fnl) alone, so any
map can be regenerated without the others (:func:`simulate_sky`).
"""

from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path

import healpy as hp
import numpy as np
from tqdm import tqdm

from cmbscat import __version__
from cmbscat.errors import CmbscatError
from cmbscat.healpix import check_nside_lmax
from cmbscat.sky.nongaussian import LocalFNL
from cmbscat.sky.spectra import CL_SOURCE, gaussian_alm, planck2018_cl
from cmbscat.store import ItemWriter, Shard

STORE_CHOICES = ("alm", "maps", "both")
NG_MODELS = ("local",)


@dataclass(frozen=True)
class SimulationConfig:
    """Everything that defines a sims file's content (stored as its parameters)."""

    n_maps: int
    nside: int
    lmax: int
    fnl: float
    seed: int
    ng_model: str = "local"
    store: str = "both"

    def __post_init__(self):
        # one type per field, whatever the caller passed (a JSON config's 2000 is f_NL 2000.0)
        for name, kind in (("n_maps", int), ("nside", int), ("lmax", int), ("fnl", float), ("seed", int)):
            value = getattr(self, name)
            if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
                object.__setattr__(self, name, kind(value))

    def validate(self) -> None:
        if self.n_maps < 2:
            raise CmbscatError(f"--n-maps must be at least 2 (one per class), got {self.n_maps}")
        if self.n_maps % 2:
            raise CmbscatError(f"--n-maps must be even (half the maps of each class), got {self.n_maps}")
        check_nside_lmax(self.nside, self.lmax)
        if self.ng_model not in NG_MODELS:
            raise CmbscatError(f"unknown --ng-model {self.ng_model!r}; choose from {', '.join(NG_MODELS)}")
        if self.store not in STORE_CHOICES:
            raise CmbscatError(f"--store must be one of {', '.join(STORE_CHOICES)}, got {self.store!r}")
        if not 0 <= self.seed < 2**63:
            raise CmbscatError(f"--seed must be in [0, 2^63), got {self.seed}")


def map_seeds(seed: int, n_maps: int) -> np.ndarray:
    """Per-map seeds (int64, shape (n_maps,)) derived from the run seed by NumPy's SeedSequence."""
    state = np.random.SeedSequence(seed).generate_state(n_maps, dtype=np.uint64)
    return (state >> np.uint64(1)).astype(np.int64)


def map_labels(n_maps: int) -> np.ndarray:
    """Labels (int8): map i is Gaussian (0) for even i, non-Gaussian (1) for odd i."""
    return (np.arange(n_maps) % 2).astype(np.int8)


class SkySimulator:
    """Draws one sky (a_lm and map) of either class; geometry and spectra precomputed once."""

    def __init__(self, nside: int, lmax: int, fnl: float):
        self.nside, self.lmax = nside, lmax
        self.cl = planck2018_cl(lmax)
        self.local_fnl = LocalFNL(self.cl, nside, fnl)

    def alm(self, seed: int, label: int) -> tuple[np.ndarray, np.ndarray | None]:
        """a_lm (complex128, healpy order, uK) of a sky, and the Gaussian map if one was made."""
        g_alm = gaussian_alm(self.cl, np.random.default_rng(int(seed)))
        if label == 0:
            return g_alm, None
        g_map = hp.alm2map(g_alm, self.nside, lmax=self.lmax)
        return self.local_fnl(g_alm, g_map), g_map

    def sky(self, seed: int, label: int, store: str = "both") -> dict[str, np.ndarray]:
        """Arrays for one sims-file row: ``alm`` (complex64) and/or ``maps`` (float32, RING, uK)."""
        alm, _ = self.alm(seed, label)
        out = {}
        if store in ("alm", "both"):
            out["alm"] = alm.astype(np.complex64)
        if store in ("maps", "both"):
            out["maps"] = hp.alm2map(alm, self.nside, lmax=self.lmax).astype(np.float32)
        return out


def simulate_sky(seed: int, label: int, nside: int, lmax: int, fnl: float,
                 store: str = "both") -> dict[str, np.ndarray]:
    """Regenerate one map from its seed and label (same arrays as a sims-file row)."""
    return SkySimulator(nside, lmax, fnl).sky(seed, label, store)


def simulation_defaults() -> dict:
    """Defaults of SimulationConfig's optional settings: a file written before a setting
    existed, and so lacking it in its record, matches a config that leaves it at default."""
    return {f.name: f.default for f in fields(SimulationConfig) if f.default is not MISSING}


def simulation_params(config: SimulationConfig, shard: Shard | None = None) -> dict:
    """The parameters a sims file records (attribute ``cmbscat_params``): they define its content.

    A combined file of shards records the same as an unsharded one (``shard`` None).
    """
    return {**asdict(config), "stage": "simulate", "shard": str(shard) if shard else None,
            "cl_source": CL_SOURCE}


def simulate(out_path: str | Path, config: SimulationConfig, shard: Shard | None = None,
             progress: bool = True) -> int:
    """Write (or resume, or find complete) the sims file ``out_path``.

    Returns the number of maps computed by this call (0 if the file was complete).

    With ``shard`` only maps ``shard.bounds(n_maps)`` are written, to ``out_path``
    itself; join shard files with :func:`cmbscat.store.combine_shards`.
    """
    config.validate()
    start, stop = shard.bounds(config.n_maps) if shard else (0, config.n_maps)
    writer = ItemWriter(out_path, simulation_params(config, shard), start, stop,
                        defaults=simulation_defaults())
    if writer.complete:
        return 0
    seeds, labels = map_seeds(config.seed, config.n_maps), map_labels(config.n_maps)
    simulator = SkySimulator(config.nside, config.lmax, config.fnl)
    todo = writer.pending()
    for i in tqdm(todo, desc="simulate", unit="map", disable=not progress,
                  initial=(stop - start) - len(todo), total=stop - start):
        writer.put(i, simulator.sky(seeds[i], labels[i], config.store))
    attrs = {
        "nside": config.nside, "lmax": config.lmax, "ng_model": config.ng_model,
        "ng_amplitude": config.fnl, "fnl": config.fnl, "seed": config.seed,
        "n_maps": config.n_maps, "store": config.store, "ordering": "RING",
        "cl_source": CL_SOURCE, "unit": "uK", "cmbscat_version": __version__,
        "label_meaning": "0 = Gaussian, 1 = non-Gaussian (local f_NL, Sachs-Wolfe)",
        "regenerate": (f"cmbscat simulate OUT.h5 --n-maps {config.n_maps} --nside {config.nside} "
                       f"--lmax {config.lmax} --fnl {config.fnl} --seed {config.seed} "
                       f"--store {config.store}"),
        "kind": "sims",
    }
    writer.finalize(per_item={"labels": labels[start:stop], "seeds": seeds[start:stop]}, attrs=attrs)
    return len(todo)
