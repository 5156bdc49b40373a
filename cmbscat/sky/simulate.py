"""The ``simulate`` stage: Gaussian and non-Gaussian (local f_NL or g_NL) CMB skies to HDF5.

Two kinds of file:

* one amplitude (the classifier's data): map ``i`` has label ``i % 2`` (0 Gaussian,
  1 non-Gaussian at the file's f_NL or g_NL) and seed ``seeds[i]``;
* per-map f_NL (``fnl_dist``, ``--fnl-dist SPEC``, local model only; the regression
  data of DESIGN.md "Estimating f_NL"): map ``i`` has its own f_NL_i drawn from the
  distribution (:mod:`cmbscat.sky.fnl_distribution`: from the map's seed, or ``V[i % K]``
  for a grid) and label ``int(f_NL_i != 0)``.

Every file stores ``/fnl`` (float64 (N,)), the f_NL each map was made with: 0 for
Gaussian maps and for g_NL files, the file's f_NL for the non-Gaussian maps of a
fixed-f_NL file (files made before ``/fnl`` existed: labels times attribute ``fnl``).

A map is a function of (seed, label, nside, lmax, ng_model, f_NL, g_NL) alone, so any
map can be regenerated without the others: ``simulate_sky(seed, label, nside, lmax, fnl)``
with the map's own f_NL (``/fnl[i]``) and label, or :func:`regenerate_map` from the
file's attributes. A non-Gaussian map at a given f_NL is the same whichever kind of
file it is in: the transfer function depends on the f_NL value only, never on the
realisation (:meth:`SkySimulator.local_model`). A map with f_NL 0 is the Gaussian map
of its seed. The non-Gaussian models are in :mod:`cmbscat.sky.nongaussian`; each has
one amplitude (f_NL for ``local``, g_NL for ``gnl``) and the other must be 0.

Observed skies (``--beam-fwhm``, ``--noise``, ``--hits``, ``--mask``, ``--apodize``;
:mod:`cmbscat.sky.observe`): ``/alm`` and ``/maps`` hold d = B * T + n, band-limited at
lmax, each map's noise drawn from its own seed; the file adds ``/mask`` (float32, the
apodized mask, 1 = observed), ``/mask_binary`` (uint8) and, with hits, ``/hits``, all
RING at nside, and the settings as attributes. The mask is not multiplied into the
maps. :func:`regenerate_map` remakes an observed map from the file alone.
"""

from __future__ import annotations

import math
import shlex
import sys
from collections import OrderedDict
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path

import h5py
import healpy as hp
import numpy as np
from tqdm import tqdm

from cmbscat import __version__
from cmbscat.errors import CmbscatError
from cmbscat.healpix import check_nside_lmax
from cmbscat.lock import OutputLock
from cmbscat.sky.fnl_distribution import FnlDistribution, fnl_labels
from cmbscat.sky.nongaussian import LocalFNL, LocalGNL
from cmbscat.sky.observe import Observation, ObservationConfig, ObservedMask
from cmbscat.sky.spectra import CL_SOURCE, gaussian_alm, planck2018_cl
from cmbscat.store import ItemWriter, Shard, file_sha256

STORE_CHOICES = ("alm", "maps", "both")
PIXEL_WINDOW_APPLIED = "with the beam: the HEALPix pixel window (data/healpix_pixel_window.npz) of nside"
OBSERVATION_FIELDS = ("beam_fwhm_arcmin", "noise_uk_arcmin", "hits", "mask", "apodize_deg")
NG_MODELS = ("local", "gnl")
DEFAULT_FNL = 1000.0  # the CLI's f_NL for --ng-model local when --fnl is not given


@dataclass(frozen=True)
class SimulationConfig:
    """Everything that defines a sims file's content (stored as its parameters).

    ``fnl`` is the amplitude of model ``local``, ``gnl`` that of model ``gnl``; the
    other model's amplitude must be 0. ``gnl`` comes after the older settings so that
    positional calls written before it existed keep their meaning, and a file written
    before it existed (no ``gnl`` in its record) matches a config with ``gnl`` = 0
    (:func:`simulation_defaults`).

    ``fnl_dist`` (last, for the same reasons; "" = none) is a per-map f_NL
    distribution SPEC (:meth:`FnlDistribution.parse`): map i is made with the local
    model at its own f_NL_i and labelled ``int(f_NL_i != 0)``. It needs
    ``ng_model="local"`` and ``fnl=0`` (there is no single f_NL), and lifts the rule
    that ``n_maps`` be even. A parseable SPEC is stored in canonical form
    (``uniform:0,100`` becomes ``uniform:0.0,100.0``), so equal distributions give
    equal records.

    The observation settings (last, default "none": :class:`ObservationConfig`, whose
    fields they are) make the stored skies observed ones, d = B * T + n, with a mask
    stored beside them (:func:`simulate`). At their defaults they are left out of the
    file's record (:func:`simulation_params`), so files without an observation are
    exactly what they were before these settings existed.
    """

    n_maps: int
    nside: int
    lmax: int
    fnl: float
    seed: int
    ng_model: str = "local"
    store: str = "both"
    gnl: float = 0.0
    fnl_dist: str = ""
    beam_fwhm_arcmin: float = 0.0
    noise_uk_arcmin: float = 0.0
    hits: str = ""
    mask: str = ""
    apodize_deg: float = 0.0

    def __post_init__(self):
        # one type per field, whatever the caller passed (a JSON config's 2000 is f_NL 2000.0)
        for name, kind in (("n_maps", int), ("nside", int), ("lmax", int), ("fnl", float), ("seed", int),
                           ("gnl", float)):
            value = getattr(self, name)
            if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
                object.__setattr__(self, name, kind(value))
        spec = "" if self.fnl_dist is None else str(self.fnl_dist).strip()
        if spec:
            try:
                spec = FnlDistribution.parse(spec).spec
            except CmbscatError:
                pass  # refused by validate, which names the problem
        object.__setattr__(self, "fnl_dist", spec)
        # the observation's own normal form (floats, canonical mask SPEC, "scan")
        observation = ObservationConfig(*(getattr(self, name) for name in OBSERVATION_FIELDS))
        for name in OBSERVATION_FIELDS:
            object.__setattr__(self, name, getattr(observation, name))

    @property
    def observation(self) -> ObservationConfig:
        """How the skies are observed (``is_trivial``: not at all)."""
        return ObservationConfig(*(getattr(self, name) for name in OBSERVATION_FIELDS))

    @property
    def distribution(self) -> FnlDistribution | None:
        """The per-map f_NL distribution, or None for a one-amplitude file."""
        return FnlDistribution.parse(self.fnl_dist) if self.fnl_dist else None

    def validate(self) -> None:
        if self.fnl_dist:
            if self.n_maps < 1:
                raise CmbscatError(f"--n-maps must be at least 1, got {self.n_maps}")
        elif self.n_maps < 2:
            raise CmbscatError(f"--n-maps must be at least 2 (one per class), got {self.n_maps}")
        elif self.n_maps % 2:
            raise CmbscatError(f"--n-maps must be even (half the maps of each class), got {self.n_maps}")
        check_nside_lmax(self.nside, self.lmax)
        check_ng_amplitudes(self.ng_model, self.fnl, self.gnl)
        if self.fnl_dist:
            check_fnl_dist(self.ng_model, self.fnl)
            FnlDistribution.parse(self.fnl_dist)  # a bad SPEC is refused in one line
        if self.store not in STORE_CHOICES:
            raise CmbscatError(f"--store must be one of {', '.join(STORE_CHOICES)}, got {self.store!r}")
        if not 0 <= self.seed < 2**63:
            raise CmbscatError(f"--seed must be in [0, 2^63), got {self.seed}")
        self.observation.validate()


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


def check_fnl_dist(ng_model: str, fnl: float) -> None:
    """Refuse (CmbscatError) a per-map f_NL distribution with model ``gnl`` or with a
    fixed f_NL (nonzero ``fnl``): each map's f_NL comes from the distribution alone."""
    if ng_model != "local":
        raise CmbscatError(f"--fnl-dist needs --ng-model local (per-map f_NL of the local model; "
                           f"got --ng-model {ng_model})")
    if fnl != 0:
        raise CmbscatError(f"--fnl {fnl} and --fnl-dist exclude each other: with --fnl-dist each "
                           "map's f_NL is drawn from the distribution")


def resolve_ng_amplitudes(ng_model: str, fnl: float | None, gnl: float | None,
                          fnl_dist: str = "") -> tuple[float, float]:
    """(fnl, gnl) for the CLI's options, None meaning "not given".

    Model ``local``: f_NL defaults to DEFAULT_FNL, g_NL to 0. Model ``gnl``: f_NL
    defaults to 0 (the local default must not leak into a g_NL file) and g_NL must be
    given, since no value is standard (studies/kurtosis_threshold.py gives the scale).
    With a per-map distribution ``fnl_dist`` (a SPEC, "" = none): f_NL is 0 and may not
    be given (even as 0), and the model must be ``local``.
    Other conflicts and non-finite values are left to :func:`check_ng_amplitudes`.
    """
    if fnl_dist:
        if ng_model != "local":
            check_fnl_dist(ng_model, 0.0)
        if fnl is not None:
            raise CmbscatError(f"--fnl {float(fnl)} and --fnl-dist exclude each other: with --fnl-dist "
                               "each map's f_NL is drawn from the distribution")
        return 0.0, float(0.0 if gnl is None else gnl)
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
    """Labels (int8) of a one-amplitude file: map i is Gaussian (0) for even i, non-Gaussian
    (1) for odd i."""
    return (np.arange(n_maps) % 2).astype(np.int8)


def map_parameters(config: SimulationConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What defines each map of the file ``config`` describes, for the whole run.

    Returns
    -------
    seeds : int64 (n_maps,), :func:`map_seeds`.
    labels : int8 (n_maps,): :func:`map_labels`, or ``int(fnl != 0)`` with a distribution.
    fnl : float64 (n_maps,), the local f_NL each map is made with (dimensionless):
        drawn per map with a distribution (:meth:`FnlDistribution.values`); else
        ``labels * config.fnl`` for model ``local`` and 0 for model ``gnl``.
    """
    seeds = map_seeds(config.seed, config.n_maps)
    dist = config.distribution
    if dist is not None:
        fnl = dist.values(seeds)
        return seeds, fnl_labels(fnl), fnl
    labels = map_labels(config.n_maps)
    amplitude = config.fnl if config.ng_model == "local" else 0.0
    return seeds, labels, labels * np.float64(amplitude)


class SkySimulator:
    """Draws one sky (a_lm and map) of either class; geometry and spectra precomputed once.

    ``SkySimulator(nside, lmax, fnl)`` is the local model (as before g_NL existed);
    ``SkySimulator(nside, lmax, ng_model="gnl", gnl=g)`` the cubic one. The model's
    transform (:class:`LocalFNL` or :class:`LocalGNL`) is ``self.non_gaussian``. With
    the local model, :meth:`alm` and :meth:`sky` also take a map's own f_NL (per-map
    f_NL files): the transform at that value is :meth:`local_model`'s.
    """

    MODEL_CACHE = 16  # LocalFNL transforms kept, most recently used first (one per f_NL value)

    def __init__(self, nside: int, lmax: int, fnl: float = 0.0, ng_model: str = "local",
                 gnl: float = 0.0):
        check_ng_amplitudes(ng_model, fnl, gnl)
        self.nside, self.lmax, self.ng_model = nside, lmax, ng_model
        self.cl = planck2018_cl(lmax)
        if ng_model == "gnl":
            self.non_gaussian = LocalGNL(self.cl, nside, gnl)
        else:
            self.non_gaussian = LocalFNL(self.cl, nside, fnl)
        self._local_models: OrderedDict[float, LocalFNL] = OrderedDict()

    def local_model(self, fnl: float) -> LocalFNL:
        """The local model at f_NL ``fnl``: ``self.non_gaussian`` at its own f_NL, else
        :meth:`LocalFNL.with_fnl` of it (D_l computed once per simulator), cached for the
        last ``MODEL_CACHE`` values. The transfer function thus depends on the f_NL value
        alone (bitwise ``LocalFNL(cl, nside, fnl)``), never on a realisation; a grid's few
        values are each built once, a continuous draw costs one transfer function (a
        square root of lmax + 1 numbers) per map."""
        if self.ng_model != "local":
            raise ValueError("a per-map f_NL needs the local model (this simulator is g_NL)")
        fnl = float(fnl)
        if fnl == self.non_gaussian.fnl:
            return self.non_gaussian
        model = self._local_models.pop(fnl, None) or self.non_gaussian.with_fnl(fnl)
        self._local_models[fnl] = model
        while len(self._local_models) > self.MODEL_CACHE:
            self._local_models.popitem(last=False)
        return model

    def alm(self, seed: int, label: int, fnl: float | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """a_lm (complex128, healpy order, uK) of a sky, and the Gaussian map if one was made.

        Label 0: the Gaussian a_lm of ``seed`` (whatever ``fnl``). Label 1: the simulator's
        model, or with ``fnl`` given the local model at that f_NL (:meth:`local_model`).
        """
        g_alm = gaussian_alm(self.cl, np.random.default_rng(int(seed)))
        if label == 0:
            return g_alm, None
        model = self.non_gaussian if fnl is None else self.local_model(fnl)
        g_map = hp.alm2map(g_alm, self.nside, lmax=self.lmax)
        return model(g_alm, g_map), g_map

    def sky(self, seed: int, label: int, store: str = "both", fnl: float | None = None,
            observation: Observation | None = None) -> dict[str, np.ndarray]:
        """Arrays for one sims-file row: ``alm`` (complex64) and/or ``maps`` (float32, RING, uK).

        ``fnl``: the map's own f_NL (local model; see :meth:`alm`). ``observation``
        (prepared for this simulator's nside and lmax): the row holds the observed sky
        instead, beam applied and the map's noise added (:meth:`Observation.observe`);
        ``maps`` is then the synthesis of the observed a_lm, unmasked.
        """
        alm, _ = self.alm(seed, label, fnl)
        if observation is not None:
            alm = observation.observe(alm, seed)
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
    (the values are the file's attributes ``ng_model``, ``fnl``, ``gnl``). Map ``i`` of
    a per-map f_NL file (attribute ``fnl_dist``) is
    ``simulate_sky(seeds[i], int(f != 0), nside, lmax, f)`` with f its own f_NL
    (``/fnl[i]``, or ``FnlDistribution.parse(fnl_dist).value(i, seeds[i])``);
    :func:`regenerate_map` does all this from the file.
    """
    return SkySimulator(nside, lmax, fnl, ng_model, gnl).sky(seed, label, store)


def regenerate_map(path: str | Path, index: int, store: str | None = None) -> dict[str, np.ndarray]:
    """Map ``index`` of the cmbscat sims file ``path``, made again from its seed and the
    file's attributes alone (no other map is made): the arrays of its row, ``alm``
    (complex64) and/or ``maps`` (float32, RING, uK), for ``store`` (default: the file's).

    The map's f_NL is recomputed from attribute ``fnl_dist`` when the file has one (not
    read from ``/fnl``), so comparing with the stored row checks the whole recipe. An
    observed file's beam and noise come from its attributes, the noise's hit map from its
    ``/hits`` (no FITS file needed).
    """
    with h5py.File(path, "r") as f:
        attrs = dict(f.attrs)
        hits = np.asarray(f["hits"][()], dtype=np.float64) if "hits" in f else None
        n = int(f["labels"].shape[0])
        if not 0 <= index < n:
            raise CmbscatError(f"{path} has {n} maps; there is no map {index}")
        if "seeds" not in f:
            raise CmbscatError(f"{path} has no /seeds: its maps cannot be regenerated")
        seed = int(f["seeds"][index])
        label = int(f["labels"][index])
    try:
        nside, lmax = int(attrs["nside"]), int(attrs["lmax"])
        ng_model = str(attrs.get("ng_model", "local"))
        spec = str(attrs.get("fnl_dist", ""))
        store = str(store or attrs.get("store", "both"))
        fnl = 0.0 if spec else float(attrs.get("fnl", 0.0))
        gnl = float(attrs.get("gnl", 0.0))
        observation = ObservationConfig(
            float(attrs.get("beam_fwhm_arcmin", 0.0)), float(attrs.get("noise_uk_arcmin", 0.0)),
            str(attrs.get("hits", "")), str(attrs.get("mask", "")), float(attrs.get("apodize_deg", 0.0)))
    except (KeyError, TypeError, ValueError):
        raise CmbscatError(f"{path} lacks the attributes of a cmbscat sims file (nside, lmax, "
                           "ng_model, fnl, ...)") from None
    observed = {} if observation.is_trivial else {
        "observation": observation.prepare(nside, lmax, hits=hits, note=_note)}
    if spec:
        value = FnlDistribution.parse(spec).value(index, seed)
        return SkySimulator(nside, lmax, value).sky(seed, int(value != 0), store, **observed)
    return SkySimulator(nside, lmax, fnl, ng_model, gnl).sky(seed, label, store, **observed)


def _note(line: str) -> None:
    """Tell the user something they should know (a regraded map, masked pixels): one stderr line."""
    print(f"note: {line}", file=sys.stderr, flush=True)


def simulation_defaults() -> dict:
    """Defaults of SimulationConfig's optional settings: a file written before a setting
    existed, and so lacking it in its record, matches a config that leaves it at default."""
    return {f.name: f.default for f in fields(SimulationConfig) if f.default is not MISSING}


def simulation_params(config: SimulationConfig, shard: Shard | None = None) -> dict:
    """The parameters a sims file records (attribute ``cmbscat_params``): they define its content.

    A combined file of shards records the same as an unsharded one (``shard`` None).
    The observation settings are recorded only where they differ from their defaults
    (a file without an observation has the record it had before they existed), with
    the SHA-256 of each FITS file they name (``hits_sha256``, ``mask_sha256``), so a
    changed FITS file is not taken for the one a file was made with.
    """
    params = asdict(config)
    defaults = simulation_defaults()
    for name in OBSERVATION_FIELDS:
        if params[name] == defaults[name]:
            del params[name]
    for name, fits in config.observation.fits_files.items():
        params[f"{name}_sha256"] = file_sha256(fits)
    return {**params, "stage": "simulate", "shard": str(shard) if shard else None,
            "cl_source": CL_SOURCE}


def simulate(out_path: str | Path, config: SimulationConfig, shard: Shard | None = None,
             progress: bool = True) -> int:
    """Write (or resume, or find complete) the sims file ``out_path``.

    Returns the number of maps computed by this call (0 if the file was complete).

    With ``shard`` only maps ``shard.bounds(n_maps)`` are written, to ``out_path``
    itself; join shard files with :func:`cmbscat.store.combine_shards`. Holds
    ``out_path.lock`` while it works (:class:`cmbscat.lock.OutputLock`).

    With an observation (``config.observation`` not trivial) each row holds the observed
    sky (:meth:`SkySimulator.sky`), and the file the datasets of :func:`observation_datasets`
    (the mask, the hit map), built once before anything is written, so that a bad FITS
    file leaves nothing behind; they are the same in every shard.
    """
    config.validate()
    start, stop = shard.bounds(config.n_maps) if shard else (0, config.n_maps)
    with OutputLock(out_path):  # a second run on out_path is refused here, before any write
        observed, whole = {}, {}
        if not config.observation.is_trivial:
            observation, whole = prepare_observation(config)
            observed = {"observation": observation}
        writer = ItemWriter(out_path, simulation_params(config, shard), start, stop,
                            defaults=simulation_defaults())
        if writer.complete:
            return 0
        seeds, labels, fnl = map_parameters(config)
        simulator = SkySimulator(config.nside, config.lmax, config.fnl, config.ng_model, config.gnl)
        per_map = bool(config.fnl_dist)
        todo = writer.pending()
        for i in tqdm(todo, desc="simulate", unit="map", disable=not progress,
                      initial=(stop - start) - len(todo), total=stop - start):
            if per_map:
                writer.put(i, simulator.sky(seeds[i], labels[i], config.store, fnl=fnl[i], **observed))
            else:
                writer.put(i, simulator.sky(seeds[i], labels[i], config.store, **observed))
        writer.finalize(per_item={"labels": labels[start:stop], "seeds": seeds[start:stop],
                                  "fnl": fnl[start:stop]},
                        whole=whole, attrs=simulation_attrs(config))
        return len(todo)


def prepare_observation(config: SimulationConfig) -> tuple[Observation, dict[str, np.ndarray]]:
    """The observation of ``config``'s maps, ready to apply, and the file's whole datasets.

    Reads and regrades the FITS files once (a one-line note on stderr for each regrade
    and for pixels masked for lack of hits). Returns the prepared :class:`Observation`
    and :func:`observation_datasets` of the hit map and the mask.
    """
    observation = config.observation
    hits = observation.hit_map(config.nside, note=_note)
    mask = observation.build_mask(config.nside, hits, note=_note)
    return (observation.prepare(config.nside, config.lmax, hits=hits),
            observation_datasets(hits, mask))


def observation_datasets(hits: np.ndarray | None, mask: ObservedMask | None) -> dict[str, np.ndarray]:
    """The whole-file datasets of an observed sims file (each (npix,), RING, at ``nside``).

    ``/mask`` float32: the (apodized) mask, 1 = fully observed, 0 = masked; ``/mask_binary``
    uint8: 1 where ``/mask`` > 0. Both only with a mask (``--mask``, or pixels without
    hits). ``/hits`` float64: the hit map the noise was drawn with (regraded), only with
    ``--hits``. The mask is never multiplied into ``/alm`` or ``/maps``.
    """
    out = {}
    if mask is not None:
        out["mask"], out["mask_binary"] = mask.weights, mask.binary
    if hits is not None:
        out["hits"] = np.asarray(hits, dtype=np.float64)
    return out


def simulation_attrs(config: SimulationConfig) -> dict:
    """The sims file's descriptive attributes (DESIGN.md layout), ``regenerate`` included.

    ``ng_amplitude`` is the chosen model's amplitude (f_NL or g_NL); with a per-map
    f_NL distribution there is none, and ``ng_amplitude`` and ``fnl`` are NaN (each
    map's is in ``/fnl``; the SPEC in ``fnl_dist``, "" without one). ``regenerate`` is
    a command that rewrites the whole file (shards included) bitwise: floats are
    printed by repr, which round-trips exactly. An observed file adds its settings
    (:func:`observation_attrs`) and their options to ``regenerate``; a file without an
    observation has exactly the attributes it had before observations existed.
    """
    if config.fnl_dist:
        amplitude_flags = f"--fnl-dist {config.fnl_dist}"
        amplitude = fnl = math.nan
        labels = ("0 = Gaussian (f_NL = 0), 1 = non-Gaussian (local f_NL != 0, Sachs-Wolfe); "
                  f"each map's f_NL drawn from {config.fnl_dist}, stored in /fnl")
    else:
        amplitude_option, amplitude = (("--gnl", config.gnl) if config.ng_model == "gnl"
                                       else ("--fnl", config.fnl))
        amplitude_flags, fnl = f"{amplitude_option} {amplitude!r}", config.fnl
        meaning = "local g_NL" if config.ng_model == "gnl" else "local f_NL"
        labels = f"0 = Gaussian, 1 = non-Gaussian ({meaning}, Sachs-Wolfe)"
    attrs = {
        "nside": config.nside, "lmax": config.lmax, "ng_model": config.ng_model,
        "ng_amplitude": amplitude, "fnl": fnl, "gnl": config.gnl, "fnl_dist": config.fnl_dist,
        "seed": config.seed, "n_maps": config.n_maps, "store": config.store, "ordering": "RING",
        "cl_source": CL_SOURCE, "unit": "uK", "cmbscat_version": __version__,
        "label_meaning": labels,
        "fnl_meaning": "/fnl: the local f_NL each map was made with (0 for Gaussian maps and g_NL files)",
        "regenerate": (f"cmbscat simulate OUT.h5 --n-maps {config.n_maps} --nside {config.nside} "
                       f"--lmax {config.lmax} --ng-model {config.ng_model} "
                       f"{amplitude_flags} --seed {config.seed} --store {config.store}"),
        "kind": "sims",
    }
    if not config.observation.is_trivial:
        attrs.update(observation_attrs(config.observation, config.nside))
        attrs["regenerate"] += observation_flags(config.observation)
    return attrs


def observation_attrs(observation: ObservationConfig, nside: int) -> dict:
    """Attributes of an observed sims file at ``nside``: the settings, FITS hashes, and what they mean."""
    attrs = {name: getattr(observation, name) for name in OBSERVATION_FIELDS}
    for name, fits in observation.fits_files.items():
        attrs[f"{name}_sha256"] = file_sha256(fits)
    attrs["pixel_window"] = (f"{PIXEL_WINDOW_APPLIED} {nside}" if observation.beam_fwhm_arcmin > 0
                             else "none (no beam)")
    attrs["observation_meaning"] = (
        "/alm and /maps hold d = b_l T_lm + n_lm, band-limited at lmax: b_l the Gaussian beam "
        "(beam_fwhm_arcmin) times the HEALPix pixel window of nside (attribute pixel_window), n white noise of depth noise_uk_arcmin (uK arcmin), "
        "modulated by /hits when hits is set; the mask is NOT applied: /mask (float32, apodized "
        "with apodize_deg, 1 = fully observed) and /mask_binary (uint8, 1 = observed), RING")
    return attrs


def observation_flags(observation: ObservationConfig) -> str:
    """The ``cmbscat simulate`` options of an observation (" --beam-fwhm 5.0 ..."), defaults left out."""
    flags = ""
    for option, name in (("--beam-fwhm", "beam_fwhm_arcmin"), ("--noise", "noise_uk_arcmin"),
                         ("--hits", "hits"), ("--mask", "mask"), ("--apodize", "apodize_deg")):
        value = getattr(observation, name)
        if value:
            flags += f" {option} " + (repr(value) if isinstance(value, float) else shlex.quote(value))
    return flags
