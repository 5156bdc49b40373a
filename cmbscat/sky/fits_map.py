"""A user's HEALPix FITS map as an observed map: the front door for real data.

``cmbscat scatter MAP.fits OUT.h5 --mask MASK.fits --apodize DEG --beam-fwhm ARCMIN
--noise UK_ARCMIN`` (and ``cmbscat stats``) send a cosmologist's map (e.g. Planck SMICA)
down the same masked-map path as the maps of an observed sims file
(:meth:`cmbscat.sky.source.Source.masked_alm`, the observed statistics of
:mod:`cmbscat.stats.observed`). :func:`open_fits_map` does, in order:

1. Read the first field with healpy (float64). The header's ``ORDERING``
   decides RING or NESTED, and NESTED is converted to RING; a header without it is read
   as RING, with a note. A column whose length is not 12 nside^2 (nside a power of two)
   is refused.
2. The unit: the header's ``TUNIT1`` (K_CMB, mK_CMB or uK_CMB in any common spelling:
   :func:`parse_unit`) or the unit declared with ``--unit`` (:func:`fits_reading`), which
   wins, with a note, over a header that says otherwise. The pixels are converted to uK,
   the unit of the simulations (a Planck map comes in K_CMB: read as uK it would be a
   million times too faint). A header without a unit, or with one that is not a CMB
   temperature (Jy/sr, K_RJ, ...), is refused in one line unless ``--unit`` says it.
3. Pixels that are NaN, infinite or UNSEEN (:func:`cmbscat.sky.observe.bad_pixels`) have
   no value: they are masked (added to the mask; one note says how many). A map with no
   valid pixel is refused.
4. The analysis nside N is the model's (``nside``, the nside of its training sims; default
   the map's own). A map below N is refused: it holds no multipole above 3 nside - 1 of
   its own, and inventing them would not be a measurement.
5. The mask is built at N as ``cmbscat simulate`` builds one
   (:meth:`~cmbscat.sky.observe.ObservationConfig.build_mask`): a FITS mask of another
   nside is regraded with a note (:func:`~cmbscat.sky.observe.regrade_mask`: a coarse pixel
   takes its smallest fine weight, so a partly masked pixel is masked); the map's invalid
   pixels, taken to N the same way, are masked before the C1 apodization (``apodize_deg``),
   so that the taper runs away from them too. For a map without invalid pixels the weights
   are bitwise those a sims file made with the same mask stores, and the two observation
   records' ``mask_content_sha256`` agree (:func:`~cmbscat.sky.source.comparable_observations`).
   An all-zero mask, or one that leaves nothing observed, is refused.
6. The monopole and the dipole are fitted by least squares on the unmasked pixels (valid,
   and where the mask at N, taken to the map's nside, is > 0), at the map's own nside,
   and subtracted (:func:`remove_monopole_dipole`, healpy's ``fit_dipole``; one note gives
   both amplitudes): the simulations have l = 0, 1 set to zero, and a map's offset or
   dipole (a 50 uK offset made a Gaussian map a 46-sigma f_NL "detection") is no part of
   what they model. On the full sky the fit of a map without them is at the level of the
   HEALPix quadrature (~0.01 uK at nside 32). On a cut sky it also takes up the part of
   the CMB's low multipoles that looks like a monopole and a dipole there (~3 uK and
   ~10 uK for |b| < 20 deg at nside 32, against a map rms of 60 uK), which the masked
   simulations keep: ``--keep-dipole`` uses a map whose full-sky l = 0, 1 are already
   zero as it is.
7. The map at N: the pixels where the mask is 0 are set to 0 (their values, the Galaxy's
   for a real map, never enter w d, and no NaN survives). A map at a higher nside is
   brought to N in harmonic space: the a_lm up to 3N - 1 (all the grid at N holds) of that
   zero-filled map at its own nside (``map2alm``, 3 iterations), synthesised at N. Not
   ``healpy.ud_grade``: averaging the fine pixels multiplies the spectrum by the pixel
   window of N (0.95 at l = N, 0.82 at l = 2N, measured), a beam that the model's training
   maps never had. Not an analysis at the map's own nside: the mask, its content hash, the
   networks' pooling weight and the statistics' pixel grid are the model's at N, and at N
   the map takes the training maps' path step by step. The zero-filled edge rings at N
   within a few pixels of the mask, where an apodized weight is close to 0 (it rises as
   x^3 from the edge): in the tests (nside 64 to 32, lmax 63, 5 deg apodization) the
   scattering coefficients are within 0.1 % of those of the same sky simulated at N,
   against 4 % through ``ud_grade``.
8. From here on the map is a stored /maps map of an observed sims file at N: the networks
   read w d (``map2alm`` to the analysis lmax); the statistics at lmax = 3N - 1 read the
   pixels as they are and at a lower lmax band-limit the (zero-filled) map first, as they
   do a sims file's /maps.

The map is unlabelled (label -1, seed -1, f_NL NaN). The unit read, the factor applied and
the monopole and dipole removed are recorded with the rest of the reading
(:data:`FITS_INFO_KEYS`) in the stage's output. Its observation record
(:func:`~cmbscat.sky.source.observation_record`: beam, noise, hits, mask SPEC, apodization,
the SHA-256 of the FITS files named, the mask weights' content hash) is built as an
observed sims file's, and the stages copy it into their outputs, so that
``cmbscat evaluate`` can hold it against a model's training observation. With a declared
beam the map is taken to carry the HEALPix pixel window of its own nside besides the beam,
as the simulations carry that of theirs (:mod:`cmbscat.sky.observe`): step 5 then exchanges
the one for the other (w_l(N) / w_l(map nside), :mod:`cmbscat.sky.pixel_window`), so the
declared beam is the instrument's alone.
"""

from __future__ import annotations

import re
import sys
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import healpy as hp
import numpy as np

from cmbscat.errors import CmbscatError
from cmbscat.healpix import synthesis
from cmbscat.sky.observe import ObservationConfig, bad_pixels, regrade_mask
from cmbscat.sky.pixel_window import pixel_window
from cmbscat.sky.source import INPUT_MAP2ALM_ITER, OBSERVATION_DEFAULTS, Source, observation_record

Note = Callable[[str], None]

#: What :attr:`Source.fits_info` holds for a FITS map (the stages record it as attributes).
FITS_INFO_KEYS = ("map_nside", "map_ordering", "map_invalid_pixels", "analysis_nside", "map_regrade",
                  "map_unit", "unit", "unit_from", "unit_factor_to_uK", "monopole_dipole",
                  "monopole_uK", "dipole_uK", "dipole_vector_uK", "dipole_fit_pixels")

#: The CMB temperature units a map may come in, and the factor that takes each to uK (the
#: unit of the simulations). Thermodynamic units only: K_RJ (Rayleigh-Jeans) and
#: intensities (Jy/sr) need a frequency to convert and are refused.
UNIT_FACTORS = {"K_CMB": 1e6, "mK_CMB": 1e3, "uK_CMB": 1.0}
_UNIT_PREFIXES = {"": "K_CMB", "m": "mK_CMB", "milli": "mK_CMB",
                  "u": "uK_CMB", "mu": "uK_CMB", "micro": "uK_CMB"}
_UNIT_PATTERN = re.compile(r"(micro|milli|mu|m|u)?(?:k|kelvin)(?:cmb|thermo|thermodynamic)?")
_UNIT_CHOICES = "uK_CMB (or K_CMB, mK_CMB)"


def parse_unit(text: str) -> str | None:
    """The CMB temperature unit ``text`` names, as a key of :data:`UNIT_FACTORS`, or None.

    Case-insensitive, ignoring spaces, ``_``, ``-`` and brackets, with u, mu, micro, the
    micro sign or the Greek mu for micro and m or milli for milli: ``K``, ``Kcmb``,
    ``K_CMB``, ``KCMB`` are K_CMB; ``mK``, ``mK_CMB`` mK_CMB; ``uK``, ``muK``, ``microK``,
    ``uK_CMB``, ``μK`` uK_CMB. Anything else (``Jy/sr``, ``K_RJ``, ``""``) is None.
    """
    cleaned = re.sub(r"[\s_\-()\[\]]", "", str(text).replace("\u00b5", "u").replace("\u03bc", "u")).lower()
    found = _UNIT_PATTERN.fullmatch(cleaned)
    return _UNIT_PREFIXES[found.group(1) or ""] if found else None


@dataclass(frozen=True)
class FitsReading:
    """How FITS maps are read where no argument says it (:func:`fits_reading`).

    unit : the unit declared on the command line (``--unit``; a key of :data:`UNIT_FACTORS`),
        "" to read it from the header.
    remove_dipole : fit and subtract the monopole and dipole (False: ``--keep-dipole``).
    """

    unit: str = ""
    remove_dipole: bool = True

    @property
    def is_default(self) -> bool:
        return self == FitsReading()


_READING: ContextVar[FitsReading] = ContextVar("cmbscat_fits_reading", default=FitsReading())


@contextmanager
def fits_reading(unit: str | None = None, remove_dipole: bool = True) -> Iterator[FitsReading]:
    """Within the block, FITS maps are read with this ``unit`` (``--unit``: any spelling
    :func:`parse_unit` reads; None or "": from the header) and with their monopole and
    dipole removed or not: how ``cmbscat scatter --unit`` / ``--keep-dipole`` (and
    ``stats``, ``evaluate``) reach :func:`open_fits_map` through the stages. An unknown
    unit is refused in one line."""
    canonical = ""
    if unit:
        canonical = parse_unit(unit)
        if canonical is None:
            raise CmbscatError(f"--unit {unit!r} is not a CMB temperature unit; give {_UNIT_CHOICES}")
    token = _READING.set(FitsReading(canonical, bool(remove_dipole)))
    try:
        yield _READING.get()
    finally:
        _READING.reset(token)


def current_reading() -> FitsReading:
    """The :class:`FitsReading` in force (:func:`fits_reading`; default: from the header, removed)."""
    return _READING.get()


def stderr_note(line: str) -> None:
    """Tell the user what was done to their map (one ``note:`` line on stderr)."""
    print(f"note: {line}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class UserMap:
    """A HEALPix FITS map as read (:func:`read_user_map`).

    values : float64 (npix,), RING, as stored (NaN / UNSEEN kept).
    nside : its HEALPix nside (a power of two).
    ordering : the header's ORDERING ("RING" or "NESTED"), "" when the header has none.
    invalid : bool (npix,), RING: NaN, infinite or UNSEEN pixels.
    unit : the header's TUNIT1 (the unit of the first field) as written, "" when it has none.
    """

    values: np.ndarray
    nside: int
    ordering: str
    invalid: np.ndarray
    unit: str = ""


def _is_power_of_two(n: int) -> bool:
    return n >= 1 and (n & (n - 1)) == 0


def read_user_map(path: str | Path) -> UserMap:
    """Read the first field of the HEALPix FITS map ``path`` as RING (:class:`UserMap`).

    healpy converts a NESTED map (header ``ORDERING``) to RING. One-line error for a file
    healpy cannot read as a HEALPix map (e.g. a column whose length is not 12 nside^2) and
    for an nside that is not a power of two.
    """
    try:
        values, header = hp.read_map(str(path), field=0, dtype=np.float64, h=True)
    except Exception as exc:  # astropy/healpy raise many types for a bad FITS file
        raise CmbscatError(f"{path} is a FITS file but not a readable HEALPix map ({exc})") from None
    values = np.asarray(values, dtype=np.float64)
    nside = int(hp.npix2nside(values.size))
    if not _is_power_of_two(nside):
        raise CmbscatError(f"{path} has nside {nside}, not a power of two: not a HEALPix map cmbscat reads")
    cards = dict(header)
    ordering = str(cards.get("ORDERING", "")).strip().upper()
    unit = str(cards.get("TUNIT1", "") or "").strip()
    return UserMap(values, nside, ordering, bad_pixels(values), unit)


def map_unit(path: str | Path, header_unit: str, declared: str = "") -> tuple[str, str, list[str]]:
    """(unit, where it came from, notes) of a map whose header says ``header_unit`` (TUNIT1,
    "" for none) and for which ``--unit`` declared ``declared`` (a key of
    :data:`UNIT_FACTORS`, "" for none): the declared unit wins, with a note if the header
    says another; otherwise the header's, refused in one line when it is missing or not a
    CMB temperature unit."""
    read = parse_unit(header_unit) if header_unit else None
    if declared:
        notes = []
        if header_unit and read != declared:
            notes.append(f"{path}: its header's unit {header_unit!r} (TUNIT1) overridden by --unit {declared}")
        return declared, "--unit", notes
    if not header_unit:
        raise CmbscatError(f"{path} has no unit in its header (TUNIT1); give --unit {_UNIT_CHOICES}, "
                           "the temperature unit of its pixels")
    if read is None:
        raise CmbscatError(f"{path}: unit {header_unit!r} is not a CMB temperature unit; give --unit "
                           f"{_UNIT_CHOICES} if the map is one")
    return read, "header", []


def remove_monopole_dipole(values: np.ndarray, fit: np.ndarray) -> tuple[np.ndarray, float, np.ndarray]:
    """``values`` (float64 (npix,), RING) less the monopole and dipole fitted by least squares
    on the pixels where ``fit`` (bool (npix,)) is True (healpy's ``fit_dipole``):
    (values - m - d . n(p), m, d), d (3,) in the unit of ``values``. The fit is linear, so a
    map plus any monopole and dipole gives the same result up to rounding."""
    nside = hp.npix2nside(values.size)
    monopole, dipole = hp.fit_dipole(np.where(fit, values, hp.UNSEEN), nest=False, bad=hp.UNSEEN)
    out = np.array(values, dtype=np.float64, copy=True)
    step = 1 << 20  # pixel directions in blocks: bounded memory at nside 2048 and above
    for lo in range(0, values.size, step):
        x, y, z = hp.pix2vec(nside, np.arange(lo, min(lo + step, values.size)))
        out[lo:lo + step] -= monopole + dipole[0] * x + dipole[1] * y + dipole[2] * z
    return out, float(monopole), np.asarray(dipole, dtype=np.float64)


def open_fits_map(path: str | Path, observation: ObservationConfig | None = None,
                  nside: int | None = None, note: Note | None = None, unit: str | None = None,
                  remove_dipole: bool | None = None) -> Source:
    """The FITS map ``path`` as a one-map :class:`~cmbscat.sky.source.Source` at the
    analysis nside (module docstring: what is done, in order, and why).

    Parameters
    ----------
    observation : the map's declared observation (beam FWHM in arcmin, white-noise depth in
        uK arcmin, hits, mask SPEC or FITS path, apodization in degrees); None: none.
    nside : analysis nside N (a power of two, at most the map's); None: the map's own.
    note : receives each one-line note (the unit converted, the monopole and dipole
        removed, invalid pixels masked, a mask or the map regraded, no ORDERING keyword);
        default: stderr.
    unit : the map's unit (``--unit``, any spelling :func:`parse_unit` reads), overriding
        its header's TUNIT1; None: that of :func:`fits_reading` in force ("" there: the
        header's, which must then name a CMB temperature unit).
    remove_dipole : fit and subtract the monopole and dipole on the unmasked pixels; None:
        that of :func:`fits_reading` in force (default True).

    Returns a Source with ``fits_map`` float64 (npix(N),), RING, uK, 0 where the mask is
    0; ``mask`` float32 weights and ``mask_binary`` at N (None when every pixel is valid
    and no mask is declared); ``hits`` at N (with ``--hits``); ``observation`` the record;
    ``fits_info`` (:data:`FITS_INFO_KEYS`). Bad input is refused in one line, and then
    nothing is noted (the notes are told once every check has passed).
    """
    path = Path(path)
    tell = stderr_note if note is None else note
    notes: list[str] = []  # told only once every check has passed: a refusal stays one line
    note = notes.append
    reading = current_reading()
    if unit:
        declared = parse_unit(unit)
        if declared is None:
            raise CmbscatError(f"--unit {unit!r} is not a CMB temperature unit; give {_UNIT_CHOICES}")
    else:
        declared = reading.unit
    remove_dipole = reading.remove_dipole if remove_dipole is None else bool(remove_dipole)
    observation = ObservationConfig() if observation is None else observation
    observation.validate()  # negative beam / noise, unknown SPEC, missing files: one line first
    user = read_user_map(path)
    unit_used, unit_from, unit_notes = map_unit(path, user.unit, declared)
    factor = UNIT_FACTORS[unit_used]
    if user.invalid.all():
        raise CmbscatError(f"{path} has no valid pixel: all {user.values.size} are NaN, infinite or UNSEEN")
    n_side = user.nside if nside is None else int(nside)
    if not _is_power_of_two(n_side):
        raise CmbscatError(f"--nside must be a power of two, got {nside}")
    if n_side > user.nside:
        raise CmbscatError(f"{path} has nside {user.nside}, below the analysis --nside {n_side} (the "
                           f"model's): it holds no multipole above {3 * user.nside - 1} to analyse there")
    if not user.ordering:
        note(f"{path} has no ORDERING keyword; read as RING")
    for line in unit_notes:
        note(line)
    # in uK, the simulations' unit; invalid pixels (found in the values as stored) keep no value
    values = np.where(user.invalid, 0.0, user.values * factor) if factor != 1.0 else user.values
    if factor != 1.0:
        note(f"{path}: unit {user.unit or unit_used!r} ({'TUNIT1' if unit_from == 'header' else '--unit'}): "
             f"pixels multiplied by {factor:g} to uK, the unit of the simulations")
    n_invalid = int(user.invalid.sum())
    coverage = None
    if n_invalid:
        note(f"{path}: {n_invalid} of {user.values.size} pixels are NaN, infinite or UNSEEN; masked")
        # at N a pixel with any invalid fine pixel is masked (regrade_mask takes the smallest)
        coverage = regrade_mask((~user.invalid).astype(np.float64), n_side)
    hits = observation.hit_map(n_side, note)
    mask = observation.build_mask(n_side, hits, note, coverage=coverage)
    observed = None if mask is None else mask.binary != 0
    # the map's pixels that enter the analysis, at its own nside: valid, and observed at N
    # (each coarse pixel copied to its children; every observed pixel is valid: coverage)
    keep = (~user.invalid if observed is None
            else (regrade_mask(observed.astype(np.float64), user.nside) > 0) & ~user.invalid)
    monopole, dipole = 0.0, np.zeros(3)
    if remove_dipole:
        values, monopole, dipole = remove_monopole_dipole(values, keep)
        sky = "the full sky" if keep.all() else f"its {int(keep.sum())} unmasked pixels"
        note(f"{path}: monopole {monopole:+.4g} uK and dipole {np.linalg.norm(dipole):.4g} uK fitted on "
             f"{sky} and removed (the simulations have none; --keep-dipole keeps them)")
    regrade = ""
    if n_side == user.nside:
        sky_map = np.where(keep, values, 0.0)
    else:
        lmax_n = 3 * n_side - 1
        # zero where the analysis mask is 0, taken up to the map's nside by copying each
        # coarse pixel to its children: every pixel kept is a valid one (coverage above)
        zero_filled = np.where(keep, values, 0.0)
        alm = hp.map2alm(zero_filled, lmax=lmax_n, mmax=lmax_n, iter=INPUT_MAP2ALM_ITER, use_weights=False)
        # a beamed map carries its own nside's pixel window; the training maps, N's
        exchange_window = observation.beam_fwhm_arcmin > 0
        if exchange_window:
            alm = hp.almxfl(alm, pixel_window(n_side, lmax_n) / pixel_window(user.nside, lmax_n))
        sky_map = synthesis(alm, n_side, lmax_n)
        if observed is not None:
            sky_map = np.where(observed, sky_map, 0.0)
        regrade = (f"nside {user.nside} brought to {n_side} in harmonic space (a_lm to l = {lmax_n} of "
                   "the map with its masked pixels at 0, " +
                   ("its pixel window exchanged for the analysis nside's, " if exchange_window else "") +
                   "synthesised at the analysis nside)")
        note(f"{path}: {regrade}")
    for line in notes:
        tell(line)
    attrs = _observation_attrs(observation, n_side)
    record = observation_record(attrs, None if mask is None else mask.weights)
    info = {"map_nside": user.nside, "map_ordering": user.ordering or "RING (no ORDERING keyword)",
            "map_invalid_pixels": n_invalid, "analysis_nside": n_side, "map_regrade": regrade,
            "map_unit": user.unit, "unit": unit_used, "unit_from": unit_from, "unit_factor_to_uK": factor,
            "monopole_dipole": ("removed: least-squares fit on the unmasked pixels at the map's nside"
                                if remove_dipole else "kept (--keep-dipole)"),
            "monopole_uK": monopole, "dipole_uK": float(np.linalg.norm(dipole)),
            "dipole_vector_uK": [float(d) for d in dipole],
            "dipole_fit_pixels": int(keep.sum()) if remove_dipole else 0}
    return Source(path, "fits", "fits", n_side, 3 * n_side - 1, -np.ones(1, np.int8), -np.ones(1, np.int64),
                  fits_map=np.asarray(sky_map, np.float64),
                  mask=None if mask is None else mask.weights.astype(np.float32),
                  mask_binary=observed, observation=record if record != OBSERVATION_DEFAULTS else None,
                  hits=hits, fits_info=info)


def _observation_attrs(observation: ObservationConfig, nside: int) -> dict:
    """The settings and FITS hashes of a declared observation, as a sims file at the
    analysis ``nside`` records them."""
    from cmbscat.sky.simulate import observation_attrs

    return observation_attrs(observation, nside) if not observation.is_trivial else {}


def fits_params(source: Source) -> dict:
    """What a stage's output of a FITS map records among its parameters beyond the map's
    bytes, so that a rerun with another mask, observation, analysis nside, unit or
    monopole / dipole treatment is not taken for current: ``{"fits_map": {...}}`` (the
    observation record and :attr:`Source.fits_info`), or {} for a sims file. Outputs of a
    FITS map made before the unit and the monopole and dipole were read record none of
    them, and are refused rather than reused: they were made from the map as stored."""
    info = source.fits_info
    if source.kind != "fits" or info is None:
        return {}
    return {"fits_map": {"observation": dict(source.observation), **info}}


def fits_attrs(source: Source) -> dict:
    """Attributes that a stage's output of a FITS map adds: :attr:`Source.fits_info` and
    what its label and f_NL mean ({} for a sims file)."""
    if source.kind != "fits" or source.fits_info is None:
        return {}
    return {**source.fits_info,
            "label_meaning": "-1: unlabelled (a user's map; cmbscat evaluate scores it)",
            "fnl_meaning": "/fnl: NaN, the map's f_NL is unknown"}
