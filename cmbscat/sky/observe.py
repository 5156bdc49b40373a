"""Observed skies (DESIGN.md "Observations: beam, noise, mask"): d = B * T + n, then a mask.

What ``cmbscat simulate`` does to each map's a_lm T_lm (uK, healpy order, band limit
``lmax``) when an observation is asked for (:class:`ObservationConfig`):

``d_lm = b_l T_lm + n_lm``, l <= lmax,

* ``b_l``: a Gaussian beam of full width at half maximum ``beam_fwhm_arcmin``
  (``healpy.gauss_beam``) times the HEALPix pixel window w_l of the file's nside (the
  pixel averaging every real map has; :mod:`cmbscat.sky.pixel_window`, computed here and
  shipped, since healpy 1.20 downloads its tables and these machines cannot). The window
  goes with the beam: files without a beam are the skies as simulated, unchanged.
* ``n_lm``: white noise of depth ``noise_uk_arcmin`` (uK arcmin). Homogeneous: drawn in
  harmonic space with N_l = depth^2 (uK^2 sr) for every l <= lmax (:func:`white_noise_alm`),
  exact and without a transform. With a hit map (``hits``): drawn per pixel with
  sigma_i = sigma_pix sqrt(<hits> / hits_i) (:func:`noise_sigma_map`), then analysed
  once, as ``map2alm(iter=0)`` (:func:`pixel_noise_alm`). Either way the stored
  observation is band-limited at lmax: the noise above lmax is not in the file.
  Each map's noise comes from its own seed on a stream apart from its a_lm and its
  f_NL (:func:`noise_rng`), so it does not depend on the number of maps or the sharding.
* The mask is NOT multiplied into d: every method applies it in its own way. It is
  built once per file (:meth:`ObservationConfig.build_mask`): a Galactic cut and
  point-source holes (:class:`MaskSpec`) or a user's FITS mask, optionally apodized
  (:func:`apodize_c1`), stored as ``/mask`` (float32 weights, 1 = fully observed) and
  ``/mask_binary`` (uint8, 1 where the weight is > 0).

All maps are HEALPix RING ordering in Galactic coordinates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import healpy as hp
import numpy as np
from scipy.spatial import cKDTree

from cmbscat.errors import CmbscatError
from cmbscat.healpix import _ring_geometry
from cmbscat.sky.pixel_window import pixel_window
from cmbscat.sky.spectra import gaussian_alm

NOISE_SPAWN_KEY = 0x0B5  # spawn key of the per-map noise stream (noise_rng); FNL_SPAWN_KEY is 0xF17
SOURCE_MASK_SEED = 20180717  # one fixed seed for the point-source centres: every file shares them
DEFAULT_SOURCE_RADIUS_ARCMIN = 30.0
SCAN_COS_FLOOR = 0.1  # --hits scan: hits ~ 1 / max(|cos(ecliptic latitude)|, SCAN_COS_FLOOR)
ARCMIN = math.pi / (180 * 60)  # radians per arcminute
MASK_KINDS = ("galactic", "sources")
MASK_HELP = "galactic:DEG, sources:N[:RADIUS_ARCMIN] (comma-separated), or a HEALPix FITS mask"

Note = Callable[[str], None]  # receives one-line notes for the user (e.g. "regraded ...")


# -- beam and noise ------------------------------------------------------------------------------

def beam_window(lmax: int, fwhm_arcmin: float, nside: int | None = None) -> np.ndarray:
    """Harmonic window b_l of a Gaussian beam, float64 (lmax+1,), b_0 = 1.

    ``healpy.gauss_beam(fwhm in radians, lmax)``; fwhm 0 gives all ones (no beam).
    With ``nside`` it is multiplied by the HEALPix pixel window of that nside
    (:func:`cmbscat.sky.pixel_window.pixel_window`, from the shipped table; an nside
    not in it is refused in one line), as :meth:`ObservationConfig.prepare` does for
    a beam.
    """
    if not (math.isfinite(fwhm_arcmin) and fwhm_arcmin >= 0):
        raise CmbscatError(f"--beam-fwhm must be a finite number >= 0 arcmin, got {fwhm_arcmin}")
    window = (hp.gauss_beam(fwhm_arcmin * ARCMIN, lmax=lmax) if fwhm_arcmin > 0
              else np.ones(lmax + 1))
    if nside is not None:
        window = window * pixel_window(nside, lmax)
    return np.asarray(window, dtype=np.float64)


def noise_rng(seed: int) -> np.random.Generator:
    """The generator of a map's noise, from the map's seed (0 <= seed < 2^63).

    ``SeedSequence(seed, spawn_key=(NOISE_SPAWN_KEY,))``: apart from the map's a_lm
    (``default_rng(seed)``) and its f_NL (spawn key ``FNL_SPAWN_KEY``).
    """
    return np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(NOISE_SPAWN_KEY,)))


def white_noise_power(noise_uk_arcmin: float) -> float:
    """N_l (uK^2 sr) of white noise of depth ``noise_uk_arcmin`` (uK arcmin): depth^2 in radians."""
    return float((noise_uk_arcmin * ARCMIN) ** 2)


def pixel_area_arcmin2(nside: int) -> float:
    """Area of one HEALPix pixel at ``nside`` in arcmin^2 (4 pi / npix sr)."""
    return hp.nside2pixarea(nside) / ARCMIN**2


def white_noise_alm(lmax: int, noise_uk_arcmin: float, rng: np.random.Generator) -> np.ndarray:
    """Homogeneous white noise a_lm: complex128 (alm_size(lmax),), healpy order, uK.

    <|n_lm|^2> = N_l = depth^2 (uK^2 sr) for every 0 <= l <= lmax, monopole and dipole
    included (white noise has them): the noise of depth ``noise_uk_arcmin`` band-limited
    at lmax (its pixel variance is N (lmax+1)^2 / 4 pi, below the per-pixel
    depth^2 / pixel area, which counts modes up to the pixel scale). Consumes
    2 * alm_size(lmax) normals of ``rng``.
    """
    return gaussian_alm(np.full(lmax + 1, white_noise_power(noise_uk_arcmin)), rng)


def noise_sigma_map(nside: int, noise_uk_arcmin: float, hits: np.ndarray) -> np.ndarray:
    """Per-pixel noise standard deviation (uK), float64 (npix,), RING, from a hit map.

    sigma_i = sigma_pix sqrt(<hits> / hits_i), sigma_pix = depth / sqrt(pixel area in
    arcmin^2), <hits> the mean over pixels with hits > 0: the depth is that of a pixel
    with the mean number of hits. Pixels with no hits get sigma 0 (they are masked:
    :meth:`ObservationConfig.build_mask`).
    """
    hits = np.asarray(hits, dtype=np.float64)
    seen = hits > 0
    sigma_pix = noise_uk_arcmin / math.sqrt(pixel_area_arcmin2(nside))
    sigma = np.zeros(hits.size)
    sigma[seen] = sigma_pix * np.sqrt(hits[seen].mean() / hits[seen])
    return sigma


def pixel_noise_alm(sigma: np.ndarray, lmax: int, rng: np.random.Generator) -> np.ndarray:
    """a_lm (complex128, healpy order, uK, band limit lmax) of pixel noise of std ``sigma``.

    ``sigma``: float (npix,), RING. Draws npix normals from ``rng`` and analyses the
    noise map once (:func:`map2alm_iter0`); for constant sigma the result has
    <|n_lm|^2> ~ sigma^2 x pixel area, as :func:`white_noise_alm` (to the quadrature's
    accuracy).
    """
    noise = sigma * rng.standard_normal(sigma.size)
    return map2alm_iter0(noise, lmax)


def map2alm_iter0(values: np.ndarray, lmax: int) -> np.ndarray:
    """``healpy.map2alm(values, lmax, iter=0, use_weights=False)`` to rounding (~1e-12
    relative), complex128 in healpy order: ducc0's adjoint synthesis on the HEALPix RING
    grid times the pixel area, one thread, ~2.7x faster at nside 512, lmax 1023."""
    import ducc0

    nside = hp.npix2nside(values.size)
    alm = ducc0.sht.adjoint_synthesis(map=np.ascontiguousarray(values, np.float64).reshape(1, -1),
                                      spin=0, lmax=int(lmax), nthreads=1, **_ring_geometry(nside))[0]
    return alm * hp.nside2pixarea(nside)


# -- hit maps --------------------------------------------------------------------------------------

def scan_hits(nside: int) -> np.ndarray:
    """The built-in scan-like hit map (``--hits scan``): float64 (npix,), RING, Galactic.

    hits = 1 / max(|cos beta|, SCAN_COS_FLOOR), beta the ecliptic latitude of the pixel
    centre: a satellite spinning about an axis in the ecliptic plane (WMAP, Planck) sweeps
    great circles through the ecliptic poles, so a pixel's integration time grows as
    1 / cos beta; capped at 10 x the ecliptic-plane value within ~5.7 deg of the poles.
    Pixel centres are rotated from Galactic to ecliptic coordinates exactly
    (``healpy.Rotator(coord=['G', 'E'])`` on unit vectors, no map interpolation).
    """
    vec = np.array(hp.pix2vec(nside, np.arange(hp.nside2npix(nside))))
    z_ecliptic = hp.Rotator(coord=["G", "E"])(vec)[2]
    cos_beta = np.sqrt(np.clip(1.0 - z_ecliptic**2, 0.0, 1.0))
    return 1.0 / np.maximum(cos_beta, SCAN_COS_FLOOR)


def read_healpix_fits(path: str | Path, option: str) -> np.ndarray:
    """First field of a HEALPix FITS map, float64 (npix,), RING; NaN and UNSEEN kept.

    ``option`` (``--mask``, ``--hits``) names the option in one-line errors.
    """
    try:
        values = hp.read_map(str(path), field=0, dtype=np.float64)
    except Exception as exc:  # astropy/healpy raise many types for a bad FITS file
        raise CmbscatError(f"{option} {path} is not a readable HEALPix FITS map ({exc})") from None
    return np.asarray(values, dtype=np.float64)


def bad_pixels(values: np.ndarray) -> np.ndarray:
    """bool (npix,): NaN, infinite or UNSEEN pixels (healpy's tolerance for UNSEEN)."""
    return ~np.isfinite(values) | hp.mask_bad(values)


def regrade_hits(hits: np.ndarray, nside: int) -> np.ndarray:
    """A hit map (RING, any nside) at ``nside``: ``healpy.ud_grade(power=-2)``, float64.

    power -2 sums the fine pixels' hits into a coarse pixel and splits a coarse pixel's
    hits evenly among its children, so the total stays the number of hits. (The noise
    depends on hits relative to their mean only, which any uniform scaling leaves alone.)
    """
    return np.asarray(hp.ud_grade(hits, nside, power=-2, order_in="RING", order_out="RING"),
                      dtype=np.float64)


def regrade_mask(weights: np.ndarray, nside: int) -> np.ndarray:
    """Mask weights (RING, any nside, in [0, 1]) at ``nside``, float64 (npix,), RING.

    To a lower nside a pixel takes the SMALLEST weight of the fine pixels it contains, so
    a pixel that is partly masked counts as masked (a degraded binary mask stays binary
    and never uncovers a masked spot); to a higher nside each child copies its parent.
    """
    nside_in = hp.npix2nside(weights.size)
    if nside >= nside_in:
        return np.asarray(hp.ud_grade(weights, nside, order_in="RING", order_out="RING"), np.float64)
    nested = hp.reorder(weights, r2n=True).reshape(hp.nside2npix(nside), -1).min(axis=1)
    return hp.reorder(nested, n2r=True).astype(np.float64)


# -- masks -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class MaskSpec:
    """A mask SPEC (``--mask``): built-in parts, or a user's FITS mask.

    Attributes
    ----------
    galactic_deg : mask |b| < galactic_deg (degrees, 0 < DEG < 90); 0 = no cut.
    n_sources : number of point-source holes (0 = none).
    source_radius_arcmin : radius of each hole (arcmin).
    fits : path of a HEALPix FITS mask ("" = built-in).
    """

    galactic_deg: float = 0.0
    n_sources: int = 0
    source_radius_arcmin: float = DEFAULT_SOURCE_RADIUS_ARCMIN
    fits: str = ""

    @classmethod
    def parse(cls, text: str, check_file: bool = True) -> "MaskSpec":
        """Parse ``galactic:DEG``, ``sources:N`` or ``sources:N:RADIUS_ARCMIN``, joined by
        commas (each kind at most once), or the path of an existing FITS file.

        Kinds are case-insensitive. A SPEC that starts with no known kind is taken as a
        FITS path, which must exist (``check_file``). One-line CmbscatError otherwise.
        """
        text = str(text).strip()
        parts = [p.strip() for p in text.split(",")]
        if parts[0].partition(":")[0].strip().lower() not in MASK_KINDS:
            if check_file and not Path(text).is_file():
                raise CmbscatError(f"unknown --mask {text!r}: expected {MASK_HELP} (an existing file)")
            return cls(fits=text)
        fields: dict = {}
        for part in parts:
            kind, _, value = (s.strip() for s in part.partition(":"))
            kind = kind.lower()
            if kind not in MASK_KINDS:
                raise CmbscatError(f"unknown --mask part {part!r} in {text!r}: expected {MASK_HELP}")
            if kind in fields:
                raise CmbscatError(f"--mask {text!r} gives {kind} twice")
            fields[kind] = cls._parse_part(kind, value, text)
        return cls(galactic_deg=fields.get("galactic", 0.0),
                   **dict(zip(("n_sources", "source_radius_arcmin"),
                              fields.get("sources", (0, DEFAULT_SOURCE_RADIUS_ARCMIN)))))

    @staticmethod
    def _parse_part(kind: str, value: str, text: str):
        """The number(s) of one built-in part: DEG, or (N, RADIUS_ARCMIN)."""
        try:
            if kind == "galactic":
                deg = float(value)
                if not 0 < deg < 90:
                    raise CmbscatError(f"--mask galactic:DEG needs 0 < DEG < 90, got {text!r}")
                return deg
            count, _, radius = value.partition(":")
            n, r = int(count), float(radius) if radius else DEFAULT_SOURCE_RADIUS_ARCMIN
        except ValueError:
            form = "galactic:DEG" if kind == "galactic" else "sources:N[:RADIUS_ARCMIN]"
            raise CmbscatError(f"--mask {form} needs numbers, got {text!r}") from None
        if n < 1 or not (math.isfinite(r) and 0 < r < 180 * 60):
            raise CmbscatError(f"--mask sources:N[:RADIUS_ARCMIN] needs N >= 1 and 0 < RADIUS_ARCMIN "
                               f"< 10800, got {text!r}")
        return n, r

    @property
    def spec(self) -> str:
        """Canonical SPEC (floats by repr, radius explicit): equal masks, equal SPECs."""
        if self.fits:
            return self.fits
        parts = []
        if self.galactic_deg:
            parts.append(f"galactic:{float(self.galactic_deg)!r}")
        if self.n_sources:
            parts.append(f"sources:{int(self.n_sources)}:{float(self.source_radius_arcmin)!r}")
        return ",".join(parts)

    def observed(self, nside: int) -> np.ndarray:
        """Built-in parts only: bool (npix,), RING, True where the sky is observed."""
        observed = np.ones(hp.nside2npix(nside), dtype=bool)
        if self.galactic_deg:
            observed &= galactic_cut(nside, self.galactic_deg)
        if self.n_sources:
            observed &= source_holes(nside, self.n_sources, self.source_radius_arcmin)
        return observed


def canonical_mask_spec(text: str) -> str:
    """The canonical form of a built-in mask SPEC; any other text stripped (never raises)."""
    text = "" if text is None else str(text).strip()
    if not text:
        return ""
    try:
        return MaskSpec.parse(text, check_file=False).spec
    except CmbscatError:
        return text  # refused by validate, which names the problem


def galactic_cut(nside: int, b_deg: float) -> np.ndarray:
    """bool (npix,), RING: False where the pixel centre has Galactic latitude |b| < b_deg.

    The maps are in Galactic coordinates, so |b| < b0 is |z| < sin(b0); the observed
    fraction is 1 - sin(b0) up to the ring discretisation.
    """
    z = hp.pix2vec(nside, np.arange(hp.nside2npix(nside)))[2]
    return np.abs(z) >= math.sin(math.radians(b_deg))


def source_centres(n_sources: int) -> np.ndarray:
    """Unit vectors (n_sources, 3) of the point-source holes, uniform on the sphere.

    Drawn from the fixed SOURCE_MASK_SEED (never a run's seed): every map of a file,
    every shard and every file with the same SPEC get the same holes. The first n
    centres of a larger N are these n.
    """
    # one (z, phi) pair per source, in order: the first n centres of N are those of n
    draws = np.random.default_rng(SOURCE_MASK_SEED).uniform(size=(n_sources, 2))
    z, phi = 2.0 * draws[:, 0] - 1.0, 2 * math.pi * draws[:, 1]
    s = np.sqrt(1.0 - z**2)
    return np.column_stack([s * np.cos(phi), s * np.sin(phi), z])


def source_holes(nside: int, n_sources: int, radius_arcmin: float) -> np.ndarray:
    """bool (npix,), RING: False inside N circular holes of radius ``radius_arcmin``.

    A hole masks the pixels whose centres lie within the radius of its centre
    (:func:`source_centres`), and always the pixel containing the centre, so a hole
    smaller than a pixel still masks one pixel.
    """
    observed = np.ones(hp.nside2npix(nside), dtype=bool)
    centres = source_centres(n_sources)
    radius = radius_arcmin * ARCMIN
    for vec in centres:
        observed[hp.query_disc(nside, vec, radius)] = False
    observed[hp.vec2pix(nside, centres[:, 0], centres[:, 1], centres[:, 2])] = False
    return observed


def apodize_c1(observed: np.ndarray, apodize_deg: float) -> np.ndarray:
    """C1 apodization of a binary mask: float64 weights (npix,), RING, in [0, 1].

    w = x - sin(2 pi x) / (2 pi), x = sqrt((1 - cos theta) / (1 - cos theta_apo)) clipped
    to 1, theta the angle from an observed pixel's centre to the nearest masked pixel's
    centre and theta_apo = ``apodize_deg``: w = 0 on masked pixels, rises monotonically
    with theta and is 1 from theta_apo on (the C1 taper of Grain et al. 2009, as
    NaMaster's ``mask_apodization(..., "C1")``). x is the ratio of chord lengths, so
    theta comes from a k-d tree on unit vectors of the masked pixels that touch an
    observed one (the nearest masked pixel is one of them: the tests check this against
    brute force); the tree is queried with an upper bound of theta_apo, so pixels
    farther in cost little (~0.6 s for a Galactic cut and 200 holes at nside 512).

    ``observed``: bool (npix,), RING, True where observed. Masks with nothing masked
    come back all ones; ``apodize_deg`` 0 returns the binary mask as floats.
    """
    observed = np.asarray(observed, dtype=bool)
    weights = observed.astype(np.float64)
    masked = np.flatnonzero(~observed)
    if apodize_deg <= 0 or masked.size == 0 or not observed.any():
        return weights
    nside = hp.npix2nside(observed.size)
    neighbours = hp.get_all_neighbours(nside, masked)  # (8, n_masked), -1 where none
    touches = np.zeros(neighbours.shape, dtype=bool)
    valid = neighbours >= 0
    touches[valid] = observed[neighbours[valid]]
    edge = masked[touches.any(axis=0)]
    tree = cKDTree(np.column_stack(hp.pix2vec(nside, edge)))
    chord_apo = 2 * math.sin(math.radians(apodize_deg) / 2)
    inside = np.flatnonzero(observed)
    chord, _ = tree.query(np.column_stack(hp.pix2vec(nside, inside)), distance_upper_bound=chord_apo)
    x = np.minimum(chord / chord_apo, 1.0)  # inf (beyond the bound) -> 1
    weights[inside] = x - np.sin(2 * math.pi * x) / (2 * math.pi)
    return weights


@dataclass(frozen=True)
class ObservedMask:
    """The mask of a sims file, built once (:meth:`ObservationConfig.build_mask`).

    weights : float32 (npix,), RING: the (apodized) mask, 1 = fully observed, 0 = masked.
    binary : uint8 (npix,), RING: 1 where ``weights`` > 0 (observed), else 0.
    """

    weights: np.ndarray
    binary: np.ndarray

    @property
    def observed_fraction(self) -> float:
        """Fraction of pixels with weight > 0."""
        return float(self.binary.mean())


# -- the configuration -------------------------------------------------------------------------------

@dataclass(frozen=True)
class ObservationConfig:
    """How the skies are observed (all defaults: not at all, the maps as before).

    Attributes
    ----------
    beam_fwhm_arcmin : Gaussian beam FWHM (arcmin), >= 0; 0 = no beam.
    noise_uk_arcmin : white-noise depth (uK arcmin), >= 0; 0 = no noise.
    hits : "" (homogeneous noise), "scan" (:func:`scan_hits`) or a HEALPix FITS hit map
        (any nside, regraded: :func:`regrade_hits`); needs noise.
    mask : "" (none), a built-in SPEC (:class:`MaskSpec`, stored canonical) or a HEALPix
        FITS mask with values in [0, 1] (any nside, regraded: :func:`regrade_mask`;
        NaN / UNSEEN pixels masked).
    apodize_deg : C1 apodization scale (degrees), >= 0; needs a mask.
    """

    beam_fwhm_arcmin: float = 0.0
    noise_uk_arcmin: float = 0.0
    hits: str = ""
    mask: str = ""
    apodize_deg: float = 0.0

    def __post_init__(self):
        for name in ("beam_fwhm_arcmin", "noise_uk_arcmin", "apodize_deg"):
            value = getattr(self, name)
            if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
                object.__setattr__(self, name, float(value))
        hits = "" if self.hits is None else str(self.hits).strip()
        object.__setattr__(self, "hits", "scan" if hits.lower() == "scan" else hits)
        object.__setattr__(self, "mask", canonical_mask_spec(self.mask))

    @property
    def is_trivial(self) -> bool:
        """True when nothing is observed: the maps are the simulated skies as they are."""
        return (self.beam_fwhm_arcmin == 0 and self.noise_uk_arcmin == 0 and not self.hits
                and not self.mask and self.apodize_deg == 0)

    @property
    def mask_spec(self) -> MaskSpec | None:
        return MaskSpec.parse(self.mask) if self.mask else None

    @property
    def fits_files(self) -> dict[str, str]:
        """{"hits": path, "mask": path} for the settings that name a FITS file."""
        out = {}
        if self.hits and self.hits != "scan":
            out["hits"] = self.hits
        if self.mask and MaskSpec.parse(self.mask, check_file=False).fits:
            out["mask"] = self.mask
        return out

    def validate(self) -> None:
        """Refuse (one line) negative or non-finite numbers, unknown SPECs, missing FITS
        files, hits without noise and apodization without a mask. FITS contents are
        checked when read (:meth:`hit_map`, :meth:`build_mask`)."""
        for option, value, unit in (("--beam-fwhm", self.beam_fwhm_arcmin, "arcmin"),
                                    ("--noise", self.noise_uk_arcmin, "uK arcmin"),
                                    ("--apodize", self.apodize_deg, "degrees")):
            if not (math.isfinite(value) and value >= 0):
                raise CmbscatError(f"{option} must be a finite number >= 0 {unit} (0 = none), got {value}")
        if self.hits:
            if self.hits != "scan" and not Path(self.hits).is_file():
                raise CmbscatError(f"--hits must be 'scan' or an existing HEALPix FITS file; "
                                   f"got {self.hits!r}")
            if self.noise_uk_arcmin == 0:
                raise CmbscatError("--hits needs --noise UK_ARCMIN (the hits modulate the noise)")
        if self.mask:
            MaskSpec.parse(self.mask)
        if self.apodize_deg > 0 and not self.mask:
            raise CmbscatError("--apodize needs --mask (there is no mask edge to taper)")

    # -- the pieces, built once per file --------------------------------------------------------
    def hit_map(self, nside: int, note: Note | None = None) -> np.ndarray | None:
        """The hit map at ``nside`` (float64 (npix,), RING, >= 0), or None without hits.

        A FITS map of another nside is regraded (:func:`regrade_hits`; ``note`` is told);
        NaN / UNSEEN pixels count as 0 hits; negative hits or no pixel with hits refused.
        """
        if not self.hits:
            return None
        if self.hits == "scan":
            return scan_hits(nside)
        hits = read_healpix_fits(self.hits, "--hits")
        bad = bad_pixels(hits)
        if np.any(hits[~bad] < 0):
            raise CmbscatError(f"--hits {self.hits} has negative values (min {hits[~bad].min():g}); "
                               "hit counts must be >= 0")
        hits[bad] = 0.0
        nside_in = hp.npix2nside(hits.size)
        if nside_in != nside:
            hits = regrade_hits(hits, nside)
            if note:
                note(f"--hits {self.hits}: nside {nside_in} regraded to {nside} (hits summed or split)")
        if not np.any(hits > 0):
            raise CmbscatError(f"--hits {self.hits} has no pixel with hits > 0")
        return hits

    def build_mask(self, nside: int, hits: np.ndarray | None = None,
                   note: Note | None = None, coverage: np.ndarray | None = None) -> ObservedMask | None:
        """The file's mask at ``nside``, or None when the whole sky is observed.

        The binary mask (observed where the weight is > 0) is the SPEC's, and a pixel
        without hits (``hits``, from :meth:`hit_map`) is masked too (``note`` says how
        many): its noise is unbounded. With ``apodize_deg`` the weights are the C1
        apodization of the binary mask (times a FITS mask's own weights); without, the
        weights are the FITS mask's values (regraded) or the binary mask. An all-masked
        sky, or FITS values outside [0, 1], are refused (one line).

        ``coverage``: float or bool (npix,), RING at ``nside``, 0 where the data have no
        value (a user's map: its NaN / UNSEEN pixels, :mod:`cmbscat.sky.fits_map`); those
        pixels are masked too, before the apodization, so that the taper runs away from
        them as from the SPEC's own holes. None: the data cover the sky.
        """
        spec = self.mask_spec
        weights = None
        if spec is not None and spec.fits:
            weights = self._fits_weights(spec.fits, nside, note)
        elif spec is not None:
            weights = spec.observed(nside).astype(np.float64)
        if coverage is not None:
            covered = np.asarray(coverage) > 0
            weights = covered.astype(np.float64) if weights is None else np.where(covered, weights, 0.0)
        if hits is not None and np.any(hits <= 0):
            weights = np.ones(hits.size) if weights is None else weights
            unseen = (hits <= 0) & (weights > 0)
            if unseen.any() and note:
                note(f"--hits {self.hits}: {int(unseen.sum())} observed pixels have no hits; masked")
            weights = np.where(hits > 0, weights, 0.0)
        if weights is None:
            return None
        observed = weights > 0
        if not observed.any():
            if coverage is None:
                raise CmbscatError(f"--mask {self.mask or '(from --hits)'} leaves no pixel observed")
            parts = ([f"--mask {self.mask}"] if self.mask else []) + (["--hits"] if hits is not None else [])
            raise CmbscatError(" and ".join(parts + ["the map's NaN/UNSEEN pixels"])
                               + " leave no pixel observed")
        if self.apodize_deg > 0:
            weights = weights * apodize_c1(observed, self.apodize_deg)
        return ObservedMask(weights.astype(np.float32), observed.astype(np.uint8))

    def _fits_weights(self, path: str, nside: int, note: Note | None) -> np.ndarray:
        """A FITS mask's weights at ``nside`` (float64, RING, in [0, 1]; bad pixels 0)."""
        weights = read_healpix_fits(path, "--mask")
        bad = bad_pixels(weights)
        outside = ~bad & ((weights < 0) | (weights > 1))
        if outside.any():
            raise CmbscatError(f"--mask {path}: values must be in [0, 1] (0 masked, 1 observed); "
                               f"found {weights[outside][0]:g}")
        weights[bad] = 0.0
        if not np.any(weights > 0):
            raise CmbscatError(f"--mask {path} is all zero: it leaves no pixel observed")
        nside_in = hp.npix2nside(weights.size)
        if nside_in != nside:
            weights = regrade_mask(weights, nside)
            if note:
                note(f"--mask {path}: nside {nside_in} regraded to {nside} "
                     "(a coarse pixel takes its smallest fine weight)")
        return weights

    def prepare(self, nside: int, lmax: int, hits: np.ndarray | None = None,
                note: Note | None = None) -> "Observation":
        """What :meth:`Observation.observe` needs for maps at (nside, lmax): the beam window
        (Gaussian beam times the pixel window of ``nside``) and the noise's per-pixel sigma
        (from ``hits`` when given, e.g. a file's stored ``/hits``, else :meth:`hit_map`).
        Reads the hit map's FITS file, if any."""
        beam = beam_window(lmax, self.beam_fwhm_arcmin, nside) if self.beam_fwhm_arcmin > 0 else None
        sigma = None
        if self.noise_uk_arcmin > 0 and self.hits:
            hits = self.hit_map(nside, note) if hits is None else np.asarray(hits, np.float64)
            sigma = noise_sigma_map(nside, self.noise_uk_arcmin, hits)
        return Observation(self, nside, lmax, beam, sigma)

    def observe(self, alm: np.ndarray, seed: int, nside: int, lmax: int) -> np.ndarray:
        """One map's observed a_lm (:meth:`Observation.observe`); builds the pieces anew
        each call (a hit map is read and regraded): for many maps, :meth:`prepare` once."""
        return self.prepare(nside, lmax).observe(alm, seed)


@dataclass(frozen=True)
class Observation:
    """An :class:`ObservationConfig` made ready for maps at (nside, lmax) (:meth:`ObservationConfig.prepare`).

    beam : float64 (lmax+1,) window b_l, or None (no beam).
    sigma : float64 (npix,) per-pixel noise std (uK, RING) with a hit map, or None
        (homogeneous noise, or none).
    """

    config: ObservationConfig
    nside: int
    lmax: int
    beam: np.ndarray | None
    sigma: np.ndarray | None

    def observe(self, alm: np.ndarray, seed: int) -> np.ndarray:
        """d_lm = b_l T_lm + n_lm: complex128 (alm_size(lmax),), healpy order, uK, band limit lmax.

        ``alm``: the sky's a_lm (healpy order at self.lmax); ``seed``: the map's seed,
        from which its noise is drawn (:func:`noise_rng`): the same map, the same noise.
        The mask is not applied.
        """
        out = np.array(alm, dtype=np.complex128, copy=True)
        if self.beam is not None:
            out = hp.almxfl(out, self.beam, inplace=True)
        depth = self.config.noise_uk_arcmin
        if depth > 0:
            rng = noise_rng(seed)
            out += (pixel_noise_alm(self.sigma, self.lmax, rng) if self.sigma is not None
                    else white_noise_alm(self.lmax, depth, rng))
        return out
