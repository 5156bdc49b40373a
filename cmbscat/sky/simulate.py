"""The ``simulate`` stage: Gaussian and non-Gaussian (local f_NL or g_NL) CMB skies to HDF5.

Map ``i`` of a file has label ``i % 2`` (0 Gaussian, 1 non-Gaussian) and seed
``seeds[i]``; it is a function of (seed, label, nside, lmax, ng_model, fnl, gnl)
alone, so any map can be regenerated without the others (:func:`simulate_sky`).
The non-Gaussian models are in :mod:`cmbscat.sky.nongaussian`; each has one
amplitude (f_NL for ``local``, g_NL for ``gnl``) and the other must be 0.
"""

from __future__ import annotations

import math
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path

import healpy as hp
import numpy as np
from tqdm import tqdm

from cmbscat import __version__
from cmbscat.errors import CmbscatError
from cmbscat.healpix import check_nside_lmax
from cmbscat.lock import OutputLock
from cmbscat.sky.nongaussian import LocalFNL, LocalGNL
from cmbscat.sky.spectra import CL_SOURCE, gaussian_alm, planck2018_cl
from cmbscat.store import ItemWriter, Shard

STORE_CHOICES = ("alm", "maps", "both")
NG_MODELS = ("local", "gnl")
DEFAULT_FNL = 1000.0  # the CLI's f_NL for --ng-model local when --fnl is not given


@dataclass(frozen=True)
class SimulationConfig:
    """Everything that defines a sims file's content (stored as its parameters).

    ``fnl`` is the amplitude of model ``local``, ``gnl`` that of model ``gnl``; the
    other model's amplitude must be 0. ``gnl`` comes last so that positional calls
    written before it existed keep their meaning, and a file written before it existed
    (no ``gnl`` in its record) matches a config with ``gnl`` = 0 (:func:`simulation_defaults`).
    """

    n_maps: int
    nside: int
    lmax: int
    fnl: float
    seed: int
    ng_model: str = "local"
    store: str = "both"
    gnl: float = 0.0

    def __post_init__(self):
        # one type per field, whatever the caller passed (a JSON config's 2000 is f_NL 2000.0)
        for name, kind in (("n_maps", int), ("nside", int), ("lmax", int), ("fnl", float), ("seed", int),
                           ("gnl", float)):
            value = getattr(self, name)
            if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
                object.__setattr__(self, name, kind(value))

    def validate(self) -> None:
        if self.n_maps < 2:
            raise CmbscatError(f"--n-maps must be at least 2 (one per class), got {self.n_maps}")
        if self.n_maps % 2:
            raise CmbscatError(f"--n-maps must be even (half the maps of each class), got {self.n_maps}")
        check_nside_lmax(self.nside, self.lmax)
        check_ng_amplitudes(self.ng_model, self.fnl, self.gnl)
        if self.store not in STORE_CHOICES:
            raise CmbscatError(f"--store must be one of {', '.join(STORE_CHOICES)}, got {self.store!r}")
        if not 0 <= self.seed < 2**63:
            raise CmbscatError(f"--seed must be in [0, 2^63), got {self.seed}")


def check_ng_amplitudes(ng_model: str, fnl: float, gnl: float) -> None:
    """Refuse (CmbscatError) an unknown model, a non-finite amplitude, or a nonzero
    amplitude of the model not chosen (it would be silently ignored)."""
    if ng_model not in NG_MODELS:
        raise CmbscatError(f"unknown --ng-model {ng_model!r}; choose from {', '.join(NG_MODELS)}")
    for option, value in (("--fnl", fnl), ("--gnl", gnl)):
        if not math.isfinite(value):
            raise CmbscatError(f"{option} must be a finite number, got {value}")
    if ng_model == "local" and gnl != 0:
        raise CmbscatError(f"--gnl {gnl} needs --ng-model gnl (--ng-model local uses --fnl only)")
    if ng_model == "gnl" and fnl != 0:
        raise CmbscatError(f"--fnl {fnl} needs --ng-model local (--ng-model gnl uses --gnl only; "
                           "one model per file)")


def resolve_ng_amplitudes(ng_model: str, fnl: float | None, gnl: float | None) -> tuple[float, float]:
    """(fnl, gnl) for the CLI's options, None meaning "not given".

    Model ``local``: f_NL defaults to DEFAULT_FNL, g_NL to 0. Model ``gnl``: f_NL
    defaults to 0 (the local default must not leak into a g_NL file) and g_NL must be
    given, since no value is standard (benchmarks/kurtosis_threshold.py gives the scale).
    Conflicts and non-finite values are left to :func:`check_ng_amplitudes`.
    """
    if ng_model == "gnl" and gnl is None:
        raise CmbscatError("--ng-model gnl needs --gnl G, the g_NL of the non-Gaussian class")
    if fnl is None:
        fnl = DEFAULT_FNL if ng_model == "local" else 0.0
    return float(fnl), float(0.0 if gnl is None else gnl)


def map_seeds(seed: int, n_maps: int) -> np.ndarray:
    """Per-map seeds (int64, shape (n_maps,)) derived from the run seed by NumPy's SeedSequence."""
    state = np.random.SeedSequence(seed).generate_state(n_maps, dtype=np.uint64)
    return (state >> np.uint64(1)).astype(np.int64)


def map_labels(n_maps: int) -> np.ndarray:
    """Labels (int8): map i is Gaussian (0) for even i, non-Gaussian (1) for odd i."""
    return (np.arange(n_maps) % 2).astype(np.int8)


class SkySimulator:
    """Draws one sky (a_lm and map) of either class; geometry and spectra precomputed once.

    ``SkySimulator(nside, lmax, fnl)`` is the local model (as before g_NL existed);
    ``SkySimulator(nside, lmax, ng_model="gnl", gnl=g)`` the cubic one. The model's
    transform (:class:`LocalFNL` or :class:`LocalGNL`) is ``self.non_gaussian``.
    """

    def __init__(self, nside: int, lmax: int, fnl: float = 0.0, ng_model: str = "local",
                 gnl: float = 0.0):
        check_ng_amplitudes(ng_model, fnl, gnl)
        self.nside, self.lmax, self.ng_model = nside, lmax, ng_model
        self.cl = planck2018_cl(lmax)
        if ng_model == "gnl":
            self.non_gaussian = LocalGNL(self.cl, nside, gnl)
        else:
            self.non_gaussian = LocalFNL(self.cl, nside, fnl)

    def alm(self, seed: int, label: int) -> tuple[np.ndarray, np.ndarray | None]:
        """a_lm (complex128, healpy order, uK) of a sky, and the Gaussian map if one was made."""
        g_alm = gaussian_alm(self.cl, np.random.default_rng(int(seed)))
        if label == 0:
            return g_alm, None
        g_map = hp.alm2map(g_alm, self.nside, lmax=self.lmax)
        return self.non_gaussian(g_alm, g_map), g_map

    def sky(self, seed: int, label: int, store: str = "both") -> dict[str, np.ndarray]:
        """Arrays for one sims-file row: ``alm`` (complex64) and/or ``maps`` (float32, RING, uK)."""
        alm, _ = self.alm(seed, label)
        out = {}
        if store in ("alm", "both"):
            out["alm"] = alm.astype(np.complex64)
        if store in ("maps", "both"):
            out["maps"] = hp.alm2map(alm, self.nside, lmax=self.lmax).astype(np.float32)
        return out


def simulate_sky(seed: int, label: int, nside: int, lmax: int, fnl: float = 0.0,
                 store: str = "both", ng_model: str = "local", gnl: float = 0.0) -> dict[str, np.ndarray]:
    """Regenerate one map from its seed and label (same arrays as a sims-file row).

    ``simulate_sky(seed, label, nside, lmax, fnl)`` for a local-model file;
    ``simulate_sky(seed, label, nside, lmax, ng_model="gnl", gnl=g)`` for a g_NL file
    (the values are the file's attributes ``ng_model``, ``fnl``, ``gnl``).
    """
    return SkySimulator(nside, lmax, fnl, ng_model, gnl).sky(seed, label, store)


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
    itself; join shard files with :func:`cmbscat.store.combine_shards`. Holds
    ``out_path.lock`` while it works (:class:`cmbscat.lock.OutputLock`).
    """
    config.validate()
    start, stop = shard.bounds(config.n_maps) if shard else (0, config.n_maps)
    with OutputLock(out_path):  # a second run on out_path is refused here, before any write
        writer = ItemWriter(out_path, simulation_params(config, shard), start, stop,
                            defaults=simulation_defaults())
        if writer.complete:
            return 0
        seeds, labels = map_seeds(config.seed, config.n_maps), map_labels(config.n_maps)
        simulator = SkySimulator(config.nside, config.lmax, config.fnl, config.ng_model, config.gnl)
        todo = writer.pending()
        for i in tqdm(todo, desc="simulate", unit="map", disable=not progress,
                      initial=(stop - start) - len(todo), total=stop - start):
            writer.put(i, simulator.sky(seeds[i], labels[i], config.store))
        writer.finalize(per_item={"labels": labels[start:stop], "seeds": seeds[start:stop]},
                        attrs=simulation_attrs(config))
        return len(todo)


def simulation_attrs(config: SimulationConfig) -> dict:
    """The sims file's descriptive attributes (DESIGN.md layout), ``regenerate`` included.

    ``ng_amplitude`` is the chosen model's amplitude (f_NL or g_NL); ``regenerate`` is
    a command that rewrites the whole file (shards included) bitwise: floats are
    printed by repr, which round-trips exactly.
    """
    amplitude_option, amplitude = ("--gnl", config.gnl) if config.ng_model == "gnl" else ("--fnl", config.fnl)
    meaning = "local g_NL" if config.ng_model == "gnl" else "local f_NL"
    return {
        "nside": config.nside, "lmax": config.lmax, "ng_model": config.ng_model,
        "ng_amplitude": amplitude, "fnl": config.fnl, "gnl": config.gnl, "seed": config.seed,
        "n_maps": config.n_maps, "store": config.store, "ordering": "RING",
        "cl_source": CL_SOURCE, "unit": "uK", "cmbscat_version": __version__,
        "label_meaning": f"0 = Gaussian, 1 = non-Gaussian ({meaning}, Sachs-Wolfe)",
        "regenerate": (f"cmbscat simulate OUT.h5 --n-maps {config.n_maps} --nside {config.nside} "
                       f"--lmax {config.lmax} --ng-model {config.ng_model} "
                       f"{amplitude_option} {amplitude!r} --seed {config.seed} --store {config.store}"),
        "kind": "sims",
    }
