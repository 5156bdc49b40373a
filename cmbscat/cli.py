"""Command line: a thin layer over the library (``cmbscat --help``).

Every stage reads and writes files, is deterministic given its seed, resumes
after an interruption, and reports bad input as one line on stderr with a
non-zero exit status.
"""

from __future__ import annotations

import signal
import sys
import threading

import click

from cmbscat import __version__
from cmbscat.errors import CmbscatError


class Terminated(BaseException):
    """SIGTERM, raised where the process is, so that locks and temporary files are cleaned
    up as after Ctrl-C (a BaseException, like KeyboardInterrupt: no ``except Exception``
    swallows it)."""


def _raise_terminated(signum, frame):
    raise Terminated()


class _Group(click.Group):
    """Lists commands in pipeline order; turns stray OSErrors (unwritable paths) into one-line
    errors; ends on Ctrl-C and on SIGTERM (what Slurm sends at a time limit or preemption,
    and ``kill``'s default) alike: the ``finally`` blocks run, so the output's lock is
    released and no temporary file is left, and a re-run resumes."""

    def list_commands(self, ctx):
        return list(self.commands)

    def invoke(self, ctx):
        if threading.current_thread() is threading.main_thread():  # signal handlers live there only
            signal.signal(signal.SIGTERM, _raise_terminated)
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            click.echo("\nInterrupted: finished items are kept; re-run the same command to resume.",
                       err=True)
            sys.exit(130)
        except Terminated:
            click.echo("\nTerminated (SIGTERM): finished items are kept; re-run the same command to resume.",
                       err=True)
            sys.exit(128 + signal.SIGTERM)
        except OSError as exc:
            where = f" {exc.filename}" if getattr(exc, "filename", None) else ""
            raise CmbscatError(f"cannot access{where}: {exc.strerror or exc}") from None


def _shard_option(func):
    return click.option(
        "--shard", "shard", default=None, metavar="K/N",
        help="Process only slice K of N equal slices of the maps (0 <= K < N), e.g. one "
             "task of a Slurm job array; join the shard files with `cmbscat combine`.",
    )(func)


def _progress_option(func):
    return click.option("--progress/--no-progress", default=True, show_default=True,
                        help="Show a progress bar on stderr.")(func)


def _fits_observation_options(func=None, *, analysis_nside=True, what="IN"):
    """The options that describe a user's FITS map (IN): its mask, apodization, beam,
    noise, hits, unit, monopole and dipole, and (``analysis_nside``) the analysis nside
    (:mod:`cmbscat.sky.fits_map`). ``what``: the argument the help names."""
    if func is None:
        return lambda f: _fits_observation_options(f, analysis_nside=analysis_nside, what=what)
    options = [
        click.option("--mask", "mask", default="", metavar="FITS|SPEC", show_default=False,
                     help=f"FITS map {what} only: its mask, a HEALPix FITS file with values in [0, 1] "
                          "(0 masked; any nside, any ordering: regraded with a note, a coarse "
                          "pixel taking its smallest weight; NaN/UNSEEN pixels masked), or a "
                          "built-in SPEC as for simulate (galactic:DEG,sources:N). IN's own "
                          "NaN, inf and UNSEEN pixels are always masked (a note says how many). "
                          "Use the mask the model was trained with: evaluate compares them."),
        click.option("--apodize", "apodize", type=float, default=0.0, metavar="DEG",
                     help=f"FITS map {what} only: apodize the mask's edges over DEG degrees with "
                          "simulate's C1 taper. Needs --mask. 0 = none."),
        click.option("--beam-fwhm", "beam_fwhm", type=float, default=0.0, metavar="ARCMIN",
                     help=f"FITS map {what} only: the Gaussian beam FWHM (arcmin) the map was observed "
                          "with, as simulate's (the map is taken to carry its own nside's pixel "
                          "window too, exchanged for the analysis nside's when brought down). "
                          "Recorded; stats filter the cubic "
                          "statistic with it and draw its mean-field maps through it. 0 = none."),
        click.option("--noise", "noise", type=float, default=0.0, metavar="UK_ARCMIN",
                     help=f"FITS map {what} only: its white-noise depth (uK arcmin), as simulate's; "
                          "recorded, and used by stats as --beam-fwhm is. 0 = none."),
        click.option("--hits", "hits", default="", metavar="FITS|scan", show_default=False,
                     help=f"FITS map {what} only: its hit map, as simulate's (needs --noise)."),
        click.option("--unit", "unit", default=None, metavar="UNIT",
                     help=f"FITS map {what} only: the temperature unit of its pixels, converted to uK "
                          "(the simulations' unit): K_CMB, mK_CMB or uK_CMB, in any common spelling "
                          "(K, Kcmb, mK, uK, muK, microK, ...). [default: the header's TUNIT1; a map "
                          "whose header names no CMB temperature unit is refused]"),
        click.option("--remove-dipole/--keep-dipole", "remove_dipole", default=True, show_default=True,
                     help=f"FITS map {what} only: fit the monopole and dipole on its unmasked pixels "
                          "(least squares) and subtract them, as the simulations have none (l = 0, "
                          "1 at zero); a note gives both. On a cut sky the fit also takes up a "
                          "few uK of the CMB's low multipoles, which the masked simulations keep: "
                          "--keep-dipole uses a map whose full-sky l = 0, 1 are zero already as "
                          "it is."),
    ]
    if analysis_nside:
        options.append(click.option(
            "--nside", "nside", type=int, default=None,
            help=f"FITS map {what} only: the analysis nside, that of the model's training sims. "
                 "A map at a higher nside is brought down in harmonic space (its a_lm up to "
                 "3*NSIDE-1, masked pixels set to 0 first, synthesised at NSIDE; not "
                 "ud_grade, whose pixel averaging would add a pixel window the training "
                 "maps never had); a map below it is refused. [default: the map's nside]"))
    for option in reversed(options):
        func = option(func)
    return func


def _fits_declared(mask, apodize, beam_fwhm, noise, hits, unit, remove_dipole) -> list[str]:
    """The FITS options as given, for the command line a note shows."""
    out = []
    for option, value in (("--mask", mask), ("--apodize", apodize), ("--beam-fwhm", beam_fwhm),
                          ("--noise", noise), ("--hits", hits), ("--unit", unit)):
        if value:
            out += [option, f"{value:g}" if isinstance(value, float) else str(value)]
    return out + ([] if remove_dipole else ["--keep-dipole"])


def _fits_observation(mask, apodize, beam_fwhm, noise, hits):
    """The ObservationConfig the FITS options declare, or None when none is given."""
    from cmbscat.sky.observe import ObservationConfig

    if not (mask or apodize or beam_fwhm or noise or hits):
        return None
    return ObservationConfig(beam_fwhm_arcmin=beam_fwhm, noise_uk_arcmin=noise, hits=hits, mask=mask,
                             apodize_deg=apodize)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"],
                                            "show_default": True})
@click.version_option(__version__, prog_name="cmbscat")
def main():
    """Tell Gaussian from non-Gaussian full-sky CMB maps.

    Stages: simulate -> scatter (networks) / stats (classical statistics) -> train ->
    evaluate; each reads and writes files. pipeline runs them all from one config.
    """


@main.command()
@click.argument("out", type=click.Path(dir_okay=False))
@click.option("--n-maps", type=int, default=16,
              help="Number of maps, even: half Gaussian (label 0), half non-Gaussian (label 1), "
                   "interleaved (map i has label i % 2).")
@click.option("--nside", type=int, default=64, help="HEALPix resolution of the maps (power of two).")
@click.option("--lmax", type=int, default=127,
              help="Band limit: maximum multipole (the papers' L = 1024 is --lmax 1023); "
                   "at most 3*nside-1.")
@click.option("--fnl", type=float, default=None,
              help="Local f_NL of the non-Gaussian class with --ng-model local (Sachs-Wolfe toy "
                   "model; positive f_NL gives negative skewness). Must be 0 or left out with "
                   "--ng-model gnl.  [default: 1000 for local, 0 for gnl]")
@click.option("--gnl", type=float, default=None,
              help="g_NL of the non-Gaussian class with --ng-model gnl, T = g + 9 g_NL g^3 / "
                   "T_CMB^2 (positive g_NL gives positive kurtosis); required there, as no value "
                   "is standard (the kurtosis of one L = 1024 map separates the classes by 1 sigma "
                   "at g_NL ~ 4e4: studies/kurtosis_threshold.py). Must be 0 or left out with "
                   "--ng-model local.  [default: 0 for local]")
@click.option("--seed", type=int, default=0, help="Run seed; each map's own seed is derived from it "
                                                  "and stored in /seeds.")
@click.option("--ng-model", type=click.Choice(["local", "gnl"]), default="local",
              help="Non-Gaussian model, Sachs-Wolfe approximation: local = quadratic local f_NL "
                   "(skewness), gnl = cubic local g_NL (kurtosis, no skewness).")
@click.option("--store", type=click.Choice(["alm", "maps", "both"]), default="both",
              help="Write /alm (complex64, band-limited truth), /maps (float32, RING, uK), or both.")
@click.option("--fnl-dist", "fnl_dist", default=None, metavar="SPEC",
              help="Give each map its own local f_NL, drawn from SPEC, instead of one --fnl "
                   "(regression data): uniform:LO,HI (uniform on [LO, HI), LO < HI), "
                   "normal:MU,SD (Gaussian, SD > 0), or grid:V1,V2,... (map i gets V[i % K]: "
                   "every value equally often, for test sets binned by f_NL). Random draws use "
                   "each map's own seed, so a map's f_NL does not depend on --n-maps or --shard. "
                   "Each map's f_NL is stored in /fnl and its label is 1 where f_NL != 0, 0 "
                   "where f_NL = 0 (a Gaussian map); --n-maps need not be even. Needs "
                   "--ng-model local; not with --fnl.")
@click.option("--beam-fwhm", "beam_fwhm", type=float, default=0.0, metavar="ARCMIN",
              help="Observe the skies through a Gaussian beam of this full width at half maximum "
                   "(arcmin), applied to the a_lm as healpy's gauss_beam times the HEALPix pixel "
                   "window of --nside (shipped in data/; healpy would download it). 0 = no beam "
                   "and no pixel window.")
@click.option("--noise", "noise", type=float, default=0.0, metavar="UK_ARCMIN",
              help="Add white noise of this depth (uK arcmin; Planck-like: 45), band-limited at "
                   "--lmax: N_l = depth^2 in uK^2 sr, drawn in harmonic space, or per pixel with "
                   "--hits. Each map's noise comes from its own seed. 0 = no noise.")
@click.option("--hits", "hits", default="", metavar="FITS|scan", show_default=False,
              help="Make the noise inhomogeneous: per-pixel sigma = depth / sqrt(pixel area) x "
                   "sqrt(mean hits / hits). FITS: your HEALPix hit-count map, any nside (regraded "
                   "by summing hits, with a note); NaN/UNSEEN pixels count as no hits, and pixels "
                   "without hits are masked. scan: a built-in scanning-satellite pattern, hits "
                   "~ 1/max(|cos(ecliptic latitude)|, 0.1), deepest at the ecliptic poles. Needs "
                   "--noise; the hit map used is stored in /hits.")
@click.option("--mask", "mask", default="", metavar="SPEC|FITS", show_default=False,
              help="Store a mask with the skies (/mask float32, 1 = observed, and /mask_binary; "
                   "never multiplied into /alm or /maps): galactic:DEG masks |b| < DEG; "
                   "sources:N[:RADIUS_ARCMIN] masks N holes (radius 30 arcmin by default) centred "
                   "uniformly on the sphere by a fixed seed (the same holes in every file); "
                   "combine them with a comma, e.g. galactic:20,sources:200. Or a HEALPix FITS "
                   "mask, values in [0, 1], any nside (regraded with a note: a coarse pixel takes "
                   "its smallest weight); NaN/UNSEEN pixels are masked.")
@click.option("--apodize", "apodize", type=float, default=0.0, metavar="DEG",
              help="Apodize the mask's edges over this many degrees with the C1 taper "
                   "w = x - sin(2 pi x)/(2 pi), x = sqrt((1-cos theta)/(1-cos DEG)), theta the "
                   "distance to the nearest masked pixel (NaMaster's C1). Needs --mask. 0 = none.")
@_shard_option
@_progress_option
def simulate(out, n_maps, nside, lmax, fnl, gnl, seed, ng_model, store, fnl_dist, beam_fwhm, noise,
             hits, mask, apodize, shard, progress):
    """Simulate Gaussian and non-Gaussian CMB skies into the HDF5 file OUT.

    Gaussian a_lm follow the Planck 2018 best-fit lensed TT spectrum (uK). The
    non-Gaussian class is T = g - 3 f_NL (g^2 - <g^2>) / T_CMB (--ng-model local)
    or T = g + 9 g_NL g^3 / T_CMB^2 (--ng-model gnl), rescaled by a fixed
    harmonic transfer function so both classes have the same expected power
    spectrum. With --fnl-dist each map has its own f_NL (stored in /fnl).
    With --beam-fwhm, --noise, --hits, --mask, --apodize the file holds observed
    skies, d = B*T + n (band-limited at --lmax), and the mask beside them.
    Re-running the same command resumes an interrupted run.
    """
    from cmbscat.sky.fnl_distribution import FnlDistribution
    from cmbscat.sky.simulate import SimulationConfig, resolve_ng_amplitudes
    from cmbscat.sky.simulate import simulate as run
    from cmbscat.store import Shard

    # given, even empty, it must parse (one-line error naming the problem); canonical form kept
    fnl_dist = "" if fnl_dist is None else FnlDistribution.parse(fnl_dist).spec
    fnl, gnl = resolve_ng_amplitudes(ng_model, fnl, gnl, fnl_dist)
    config = SimulationConfig(n_maps=n_maps, nside=nside, lmax=lmax, fnl=fnl, seed=seed,
                              ng_model=ng_model, store=store, gnl=gnl, fnl_dist=fnl_dist,
                              beam_fwhm_arcmin=beam_fwhm, noise_uk_arcmin=noise, hits=hits,
                              mask=mask, apodize_deg=apodize)
    n_new = run(out, config, shard=Shard.parse(shard) if shard else None, progress=progress)
    click.echo(f"wrote {out} ({n_new} maps computed now)" if n_new else f"{out} is already complete",
               err=True)


@main.command()
@click.argument("source", metavar="IN", type=click.Path(dir_okay=False))
@click.argument("out", type=click.Path(dir_okay=False))
@click.option("--depth", type=int, default=2,
              help="Scattering depth: longest path (1, 2 or 3). Channels: S[()] plus every "
                   "frequency-decreasing path j1 > j2 > ... of length <= depth.")
@click.option("--J0", "J0", type=int, default=None,
              help="Lowest wavelet scale; coefficients are band-limited at l < lam^J0 and stored "
                   "at the smallest power-of-two nside_out with 2*nside_out >= lam^J0. "
                   "[default: smallest J0 with lam^J0 >= 32, i.e. 5 for lam 2: nside_out 16]")
@click.option("--lam", type=float, default=2.0, help="Wavelet dilation factor lambda > 1.")
@click.option("--lmax", type=int, default=None,
              help="Band limit of the transform [default: the input's lmax; 3*nside-1 for a "
                   "FITS map]; higher values are refused.")
@click.option("--oversample", type=float, default=None,
              help="Modulus grid factor: wavelet j's band (l <= lhi_j) is rectified on a RING grid "
                   "with 2*nside_j >= oversample*(lhi_j+1). Higher: smaller aliasing "
                   "(equivariance error), more time. [default: 1.0]")
@click.option("--min-nside", type=int, default=None,
              help="Floor on the modulus grids' nside (coarse scales are cheap and alias most). "
                   "[default: min(256, smallest power of two with lmax <= 2*nside-1)]")
@click.option("--iter", "map2alm_iter", type=int, default=None,
              help="healpy map2alm iterations after each modulus. [default: 0]")
@click.option("--odd/--no-odd", default=False, show_default=True,
              help="Add the odd channels C[j1,j2] = ((f*Psi_j1) |f*Psi_j2|^q) * Phi for every "
                   "j1 < j2 (j1 = phi: the scaling band), after the S[p] channels. They keep the "
                   "sign of f (C(-f) = -C(f)) and so the bispectrum that local f_NL leaves; "
                   "the S[p] channels other than S[()] are even in f.")
@click.option("--odd-power", type=int, default=None,
              help="q of the odd channels' envelope |f*Psi_j2|^q: 1 or 2. [default: 2]")
@_fits_observation_options
@_shard_option
@_progress_option
def scatter(source, out, depth, J0, lam, lmax, oversample, min_nside, map2alm_iter, odd, odd_power,
            mask, apodize, beam_fwhm, noise, hits, unit, remove_dipole, nside, shard, progress):
    """Scattering coefficients of every map in IN (a sims file or a HEALPix FITS map) into OUT.

    OUT holds /coeffs float32 (N, C, npix_out) in RING order at nside_out (raw S[p], unit
    of the input, uK; with --odd the K odd channels follow, unit uK^(1+q)), /labels,
    /seeds, /paths (one row per S[p] channel, depth columns; -1 padded), /odd_pairs
    (K, 2: j1, j2; j1 = -1 for the scaling band; with --odd) and provenance attributes. Uses /alm when IN has it, else /maps. Maps are processed one at a time;
    re-running the same command resumes an interrupted run. IN with a mask (cmbscat
    simulate --mask): the transform's input is the apodized masked map w d, and OUT also
    holds /weight float32 (npix_out,), the mask low-passed like the coefficients, in
    [0, 1]: the networks' pooling weight.

    A user's FITS map (e.g. Planck SMICA; RING or NESTED, from its header) takes the same
    path: declare how it was observed with --mask/--apodize/--beam-fwhm/--noise (as the
    model's training sims were) and give --nside and --lmax of the model; OUT then records
    the observation as a sims file's scattering does, label -1 and /fnl NaN, for
    `cmbscat evaluate RUN OUT` (which, given the FITS map itself, runs this with the
    model's settings). The map is converted to uK from its header's unit (or --unit),
    and its monopole and dipole are removed (--keep-dipole keeps them).
    """
    from cmbscat.scattering.stage import scatter as run
    from cmbscat.scattering.transform import DEFAULT_ITER, DEFAULT_ODD_POWER, DEFAULT_OVERSAMPLE
    from cmbscat.sky.fits_map import fits_reading
    from cmbscat.store import Shard

    with fits_reading(unit, remove_dipole):
        n_new = run(source, out, depth=depth, J0=J0, lam=lam, lmax=lmax,
                    oversample=DEFAULT_OVERSAMPLE if oversample is None else oversample,
                    iter=DEFAULT_ITER if map2alm_iter is None else map2alm_iter, min_nside=min_nside,
                    odd=odd, odd_power=DEFAULT_ODD_POWER if odd_power is None else odd_power,
                    shard=Shard.parse(shard) if shard else None, progress=progress,
                    observation=_fits_observation(mask, apodize, beam_fwhm, noise, hits), nside=nside)
    click.echo(f"wrote {out} ({n_new} maps computed now)" if n_new else f"{out} is already complete",
               err=True)


@main.command()
@click.argument("source", metavar="IN", type=click.Path(dir_okay=False))
@click.argument("out", type=click.Path(dir_okay=False))
@click.option("--lmax", type=int, default=None,
              help="Band limit of the statistics [default: the input's lmax; 3*nside-1 for a FITS map].")
@click.option("--mean-field-maps", type=int, default=100, show_default=True,
              help="Observed files with a mask or a hit map: Gaussian maps of the same observation "
                   "(beam, noise, mask; their own seeds) from which the cubic statistic's linear "
                   "(mean-field) terms are estimated, once per run.")
@_fits_observation_options
@_shard_option
@_progress_option
def stats(source, out, lmax, mean_field_maps, mask, apodize, beam_fwhm, noise, hits, unit, remove_dipole,
          nside, shard, progress):
    """Classical statistics of every map in IN (a sims file or a HEALPix FITS map) into OUT.

    OUT holds, per map: /powspec (log10 binned C_l), /onepoint (skewness, excess
    kurtosis), /cubic (the locally optimal cubic statistic for local f_NL, with the
    shipped Planck 2018 spectrum as its filter) and /minkowski (V0, V1, V2 at 13
    thresholds -3..3 sigma), with /labels and /seeds copied. Computed once, read by
    `cmbscat train --model powspec|onepoint|cubic|minkowski`. Re-running the same
    command resumes an interrupted run. For an observed sims file (cmbscat simulate
    --beam-fwhm/--noise/--hits/--mask) every statistic reads the apodized masked map:
    pseudo-C_l, one-point and Minkowski statistics over the fully observed pixels, the
    cubic statistic with the beam and noise filters and its mean-field terms.

    A user's FITS map takes the same path with the observation declared by
    --mask/--apodize/--beam-fwhm/--noise (the cubic's mean field from Gaussian maps of
    that beam, noise and mask) at the model's --nside and --lmax; OUT records it, with
    label -1 and /fnl NaN, for `cmbscat evaluate RUN OUT` (which, given the FITS map
    itself, runs this with the model's settings). The map is converted to uK from its
    header's unit (or --unit), and its monopole and dipole are removed (--keep-dipole
    keeps them).
    """
    from cmbscat.sky.fits_map import fits_reading
    from cmbscat.stats.stage import compute_stats
    from cmbscat.store import Shard

    with fits_reading(unit, remove_dipole):
        n_new = compute_stats(source, out, lmax=lmax, shard=Shard.parse(shard) if shard else None,
                              progress=progress, mean_field_maps=mean_field_maps,
                              observation=_fits_observation(mask, apodize, beam_fwhm, noise, hits),
                              nside=nside)
    click.echo(f"wrote {out} ({n_new} maps computed now)" if n_new else f"{out} is already complete",
               err=True)


@main.command()
@click.argument("data", type=click.Path(dir_okay=False))
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--model", type=click.Choice(["hybrid", "baseline", "powspec", "onepoint", "cubic",
                                           "minkowski", "cubic_fisher"]),
              default="hybrid",
              help="hybrid: DISCO CNN on scattering coefficients (DATA from cmbscat scatter); "
                   "baseline: the same kind of CNN on the raw map cut to --baseline-lmax at "
                   "--baseline-nside (DATA from cmbscat simulate); the classical models, a "
                   "logistic regression on one statistic of the full-resolution map (DATA from "
                   "cmbscat stats, or a sims file: computed on the fly): powspec (binned power "
                   "spectrum), onepoint (skewness, kurtosis), cubic (the locally optimal cubic "
                   "statistic, the limit for local f_NL), minkowski (area, boundary length and "
                   "genus at 13 thresholds); with --target fnl only: cubic_fisher (the anchor, "
                   "f_NL = S / F with F the cubic statistic's Fisher information; nothing fitted).")
@click.option("--epochs", type=int, default=30, help="Training epochs (networks only).")
@click.option("--batch-size", type=int, default=16, help="Maps per optimisation step.")
@click.option("--lr", type=float, default=2e-3, help="Peak learning rate (AdamW, cosine decay).")
@click.option("--weight-decay", type=float, default=1e-4, help="AdamW weight decay.")
@click.option("--val-fraction", type=float, default=0.2,
              help="Fraction of DATA held out (stratified) to pick the best epoch.")
@click.option("--seed", type=int, default=0, help="Seed of the split, initialisation and shuffling.")
@click.option("--baseline-nside", type=int, default=64, help="Input nside of the baseline model.")
@click.option("--baseline-lmax", type=int, default=127, help="Input band limit of the baseline model.")
@click.option("--patience", type=int, default=0,
              help="Stop when the validation loss has not improved for this many epochs "
                   "(0: run all --epochs).")
@click.option("--augment/--no-augment", default=None,
              help="Train on exact random rotations of the scattering coefficient maps (each "
                   "example in each epoch under its own rotation, uniform on SO(3), applied in "
                   "harmonic space): the front-end is equivariant, so a rotated sky's "
                   "coefficients are the rotated coefficients. Hybrid only. [default: on for "
                   "the hybrid]")
@click.option("--precise-bn/--no-precise-bn", default=None,
              help="Before each validation, recompute the batch-norm statistics over the training "
                   "split with the epoch's weights instead of using running averages (which "
                   "shifted every validation logit of the low-resolution CNN one way). Networks "
                   "only. [default: on for the baseline]")
@click.option("--max-maps", type=int, default=0,
              help="Use only the first N maps of DATA (0: all); the validation split is taken "
                   "from them. For learning curves.")
@click.option("--channels", type=click.Choice(["all", "even"]), default="all", show_default=True,
              help="Hybrid: all channels of DATA, or only its S[p] channels (even in the map), "
                   "leaving out the odd channels of a file scattered with --odd.")
@click.option("--target", type=click.Choice(["label", "fnl"]), default="label", show_default=True,
              help="label: classify Gaussian against non-Gaussian maps (/labels). fnl: estimate "
                   "each map's f_NL (/fnl, from cmbscat simulate --fnl-dist) with an error bar: "
                   "the networks output a mean and a log sigma trained with the Gaussian "
                   "negative log-likelihood, the classical statistics get a small MLP with the "
                   "same likelihood; sigma is calibrated on the validation split.")
@click.option("--sign-flip/--no-sign-flip", default=False, show_default=True,
              help="--target fnl networks: use the exact symmetry (map, f_NL) -> (-map, -f_NL). "
                   "Each training example is negated with its f_NL with probability 1/2 (the "
                   "hybrid's odd channels and S[] change sign, the others not), and the estimate "
                   "is [m(x) - m(-x)] / 2, odd in the map: its bias is odd in f_NL and zero at 0.")
@click.option("--device", default="auto", show_default=True,
              help="auto (CUDA when present, else CPU), cpu, cuda or cuda:N.")
@_progress_option
def train(data, run_dir, model, epochs, batch_size, lr, weight_decay, val_fraction, seed,
          baseline_nside, baseline_lmax, patience, augment, precise_bn, max_maps, channels, target,
          sign_flip, device, progress):
    """Train a classifier (or, with --target fnl, an f_NL estimator) on DATA into RUN_DIR
    (checkpoints, curves, config).

    Inputs are standardised with statistics of the training split only, saved with
    the model. The best epoch (lowest validation loss) is kept as model.pt; an
    interrupted run resumes from last.pt when the same command is run again.
    """
    from cmbscat.experiment.train import TrainConfig
    from cmbscat.experiment.train import train as run

    config = TrainConfig(data=str(data), model=model, epochs=epochs, batch_size=batch_size, lr=lr,
                         weight_decay=weight_decay, val_fraction=val_fraction, seed=seed,
                         baseline_nside=baseline_nside, baseline_lmax=baseline_lmax,
                         patience=patience, augment=augment, precise_bn=precise_bn, max_maps=max_maps,
                         channels=channels, target=target, sign_flip=sign_flip)
    summary = run(run_dir, config, device=device, progress=progress)
    if target == "fnl":
        score = (f"validation f_NL rms error {summary['val_rmse']:.3g}" if "val_rmse" in summary
                 else f"f_NL sigma {summary['sigma_fnl']:.3g} (Fisher)")
        click.echo(f"{run_dir}: {model} trained to estimate f_NL, {score}", err=True)
    else:
        click.echo(f"{run_dir}: {model} trained, validation accuracy {summary['val_accuracy']:.3f}",
                   err=True)


@main.command()
@click.argument("run_dirs", metavar="RUN_DIR...", nargs=-1, required=True, type=click.Path(file_okay=False))
@click.argument("test", type=click.Path(dir_okay=False))
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Folder for metrics.json, scores.npy and roc.png (f_NL estimators: "
                   "predictions.npy and fnl.png; an unlabelled TEST: scores.json) [default: RUN_DIR; "
                   "required for an ensemble of several RUN_DIRs].")
@click.option("--device", default="auto", show_default=True,
              help="auto (CUDA when present, else CPU), cpu, cuda or cuda:N.")
@click.option("--force", is_flag=True, default=False,
              help="evaluate even if TEST's beam/noise/mask differ from the training data's")
@click.option("--reference", "reference", type=click.Path(dir_okay=False), default=None, metavar="TEST.h5",
              help="Unlabelled TEST only (a user's map): a labelled test file of the same kind as "
                   "TEST (scattering or statistics of simulated maps observed as the training data) "
                   "whose Gaussian maps give each map's false-alarm probability, the one-sided "
                   "empirical p-value p = (1 + k) / (1 + n), k of the n Gaussian reference maps "
                   "scoring at least as high as the map; its floor is 1 / (1 + n) (n = 100: "
                   "nothing below 0.0099). [default: the test file of RUN_DIR/metrics.json, "
                   "the run's own evaluation]")
@click.option("--calibrate", "calibration", type=click.Path(dir_okay=False), default=None, metavar="CALIB.h5",
              help="f_NL estimators only: a labelled file of the same kind as TEST, maps at many f_NL "
                   "values (at least 10, e.g. from `cmbscat simulate --fnl-dist uniform:-60,60`) that "
                   "play no other part, observed as the training data. The estimator's response "
                   "E[estimate | f_NL] is fitted there (f_NL plus a constant and odd powers up to 5) "
                   "and every estimate on TEST is read through its inverse, sigma divided by its "
                   "slope; metrics.json or scores.json records the fit (response_calibration).")
@click.option("--calibrate-against", "calibration_reference", nargs=2, default=None,
              type=(click.Path(file_okay=False), click.Path(dir_okay=False)), metavar="RUN_DIR STATS.h5",
              help="With --calibrate: fit the response against an unbiased f_NL estimator's "
                   "estimates of the same maps instead of their true f_NL (the paired fit: the "
                   "scatter the maps' own realisations put into both cancels, so the same maps "
                   "fit it more precisely). RUN_DIR: a run trained with --model cubic_fisher "
                   "--target fnl (the cubic statistic's S / F); STATS.h5: `cmbscat stats` of the "
                   "calibration maps' sims (the same /seeds and /fnl as CALIB.h5).")
@_fits_observation_options(analysis_nside=False, what="TEST")
@_progress_option
def evaluate(run_dirs, test, out_dir, device, force, reference, calibration, calibration_reference,
             mask, apodize, beam_fwhm, noise, hits, unit, remove_dipole, progress):
    """Score the run in RUN_DIR on the labelled maps of TEST, or on a user's maps.

    Writes metrics.json (accuracy with its 68 % Wilson interval, ROC AUC, confusion
    matrix [[TN, FP], [FN, TP]], n, and the hashes of the model file and of TEST),
    scores.npy (logits, float64) and roc.png. For an f_NL estimator (trained with
    --target fnl) against TEST's /fnl: bias and sigma(f_NL) in bins of true f_NL, the
    coverage of the predicted 68 % and 95 % intervals (metrics.json), predictions.npy
    (mean and sigma, float64 (N, 2)) and fnl.png (predicted against true). A network
    trained on maps observed otherwise (beam, noise, mask) than TEST is refused unless
    --force; a masked TEST gives the network its pooling weight.

    An unlabelled TEST (label -1: `cmbscat scatter` or `stats` of a FITS map) is scored
    map by map instead, one line each on stdout: the score (logit), the probability of
    non-Gaussianity (sigmoid of the score, at the training set's 50/50 class balance) and
    the false-alarm probability among the Gaussian maps of --reference (see there); for an
    f_NL estimator, f_NL +/- sigma. They are written to OUT/scores.json too.

    Several RUN_DIRs (f_NL estimators of one method, e.g. seeds) are evaluated, or score a
    user's maps, as their ensemble: the seeds' mean f_NL, with an error that lets each
    seed's own noise average down (cmbscat.experiment.fnl_estimators.ensemble_estimate);
    --out is then required.

    --calibrate CALIB.h5 corrects an f_NL estimator's (or ensemble's) response, measured
    on simulations with known f_NL (cmbscat.experiment.fnl_calibration), against their
    true f_NL or, with --calibrate-against, against the cubic statistic's estimates of them.

    TEST may be a user's HEALPix FITS map itself: it is first made into the model's input
    (cmbscat scatter or stats with the settings the run folder records in input.json, a
    note shows the command, into a temporary file), with the FITS options given here
    (--mask, --apodize, --beam-fwhm, --noise, --hits: how the map was observed, as the
    training maps were; --unit; --keep-dipole), then scored as above.
    """
    import tempfile
    from pathlib import Path

    from cmbscat.experiment.evaluate import evaluate as run
    from cmbscat.experiment.evaluate import CalibrationMaps, evaluate_ensemble, fits_input, is_unlabelled
    from cmbscat.sky.fits_map import stderr_note

    if calibration_reference:
        if calibration is None:
            raise CmbscatError("--calibrate-against needs --calibrate CALIB.h5 (the maps it estimates)")
        calibration = CalibrationMaps(calibration, *calibration_reference)

    if len(run_dirs) > 1:
        _ensemble_options(run_dirs, out_dir, reference)
    declared = _fits_declared(mask, apodize, beam_fwhm, noise, hits, unit, remove_dipole)
    if _is_fits_map(test):
        from cmbscat.store import file_sha256

        with tempfile.TemporaryDirectory(prefix="cmbscat-input-") as folder:
            made, command = fits_input(
                run_dirs, test, folder, _fits_observation(mask, apodize, beam_fwhm, noise, hits), unit,
                remove_dipole, declared, progress,
                note=lambda line: stderr_note(f"{test} is a FITS map: made this model's input as `{line}` "
                                              "(a temporary file; run that command to keep it)"),
                force=force)
            made_from = {"fits_map": str(Path(test).resolve()), "fits_map_sha256": file_sha256(test),
                         "input_command": command}
            _score_unlabelled(run_dirs, made, out_dir, reference, device, progress, force, calibration,
                              made_from)
        return
    if declared:
        names = ", ".join(o for o in declared if o.startswith("--"))
        raise CmbscatError(f"{names} describe a FITS map TEST; {test} is not one (a stage file records "
                           "how its maps were read)")
    if _is_stage_file(test) and is_unlabelled(test):
        _score_unlabelled(run_dirs, test, out_dir, reference, device, progress, force, calibration)
        return
    if len(run_dirs) > 1:
        m = evaluate_ensemble(run_dirs, test, out_dir, device=device, progress=progress, force=force,
                              calibration=calibration)
        _echo_fnl_metrics(f"ensemble of {len(run_dirs)} runs", test, m)
        return
    run_dir = run_dirs[0]
    if reference is not None:
        raise CmbscatError(f"--reference is for unlabelled maps (a user's map); {test} is labelled")
    m = run(run_dir, test, out_dir, device=device, progress=progress, force=force, calibration=calibration)
    if m.get("target") == "fnl":
        _echo_fnl_metrics(run_dir, test, m)
        return
    low, high = m["accuracy_interval68"]
    auc = f"{m['auc']:.3f}" if m["auc"] is not None else "n/a (one class)"
    click.echo(f"{run_dir} on {test}: accuracy {m['accuracy']:.3f} (68 % Wilson interval "
               f"{low:.3f}-{high:.3f}), AUC {auc}, n = {m['n']}", err=True)


def _ensemble_options(run_dirs, out_dir, reference) -> None:
    """Refuse, in one line, what an ensemble of several runs cannot take."""
    if out_dir is None:
        raise CmbscatError(f"an ensemble of {len(run_dirs)} runs needs --out FOLDER for its results "
                           "(it belongs to no one run's folder)")
    if reference is not None:
        raise CmbscatError("--reference is for classifiers; an ensemble of f_NL estimators needs none")


def _score_unlabelled(run_dirs, data, out_dir, reference, device, progress, force, calibration,
                      made_from=None) -> None:
    """Score the unlabelled maps of ``data`` (a user's) with one run or an ensemble, and print
    one line per map."""
    from cmbscat.experiment.evaluate import score_maps, score_maps_ensemble

    if len(run_dirs) > 1:
        _ensemble_options(run_dirs, out_dir, reference)
        _print_scores(score_maps_ensemble(run_dirs, data, out_dir, device=device, progress=progress,
                                          force=force, calibration=calibration, made_from=made_from), out_dir)
        return
    _print_scores(score_maps(run_dirs[0], data, reference, out_dir, device=device, progress=progress,
                             force=force, calibration=calibration, made_from=made_from),
                  out_dir or run_dirs[0])


def _is_fits_map(path) -> bool:
    """True for an existing file that is FITS (not HDF5): a user's map given as TEST."""
    from pathlib import Path

    import h5py

    from cmbscat.sky.source import _is_fits

    path = Path(path)
    return path.is_file() and not h5py.is_hdf5(path) and _is_fits(path)


def _echo_fnl_metrics(what, test, m: dict) -> None:
    """One stderr line of an f_NL evaluation's metrics ``m``."""
    zero = m["at_zero"]
    at_zero = f", sigma at f_NL = 0: {zero['sigma_fnl']:.3g}" if zero else ""
    click.echo(f"{what} on {test}: f_NL bias {m['bias']:.3g}, rms error {m['rmse']:.3g}"
               f"{at_zero}, coverage {100 * m['coverage68']:.1f} % (68 %) / "
               f"{100 * m['coverage95']:.1f} % (95 %), n = {m['n']}", err=True)


def _is_stage_file(path) -> bool:
    """True for a readable stage file with /labels (others are refused by evaluate itself)."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return "labels" in f
    except OSError:
        return False


def _print_scores(result: dict, out_dir) -> None:
    """One stdout line per map of :func:`cmbscat.experiment.evaluate.score_maps`'s result."""
    from pathlib import Path

    for row in result["maps"]:
        if result["target"] == "fnl":
            click.echo(f"map {row['index']}: f_NL = {row['fnl']:.4g} +/- {row['sigma_fnl']:.3g} (1 sigma)")
        else:
            n, k = result["n_reference_gaussian"], row["n_gaussian_at_or_above"]
            below = ("; it scores below every one of them: unlike the Gaussian simulations the other "
                     "way (check its unit, mask and monopole)" if k == n else "")
            click.echo(f"map {row['index']}: one-sided p = {row['p_value']:.4g} (the fraction of Gaussian "
                       f"reference maps scoring >= it, the map counted: {k} of {n}; floor "
                       f"{result['p_value_floor']:.3g}){below}; score {row['score']:+.4f} (logit; sigmoid "
                       f"{row['probability']:.4f}: a score, not a calibrated probability)")
    click.echo(f"wrote {Path(out_dir) / 'scores.json'}", err=True)


@main.command()
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--device", default="auto", show_default=True,
              help="Device for training and evaluating the networks: auto, cpu, cuda, cuda:N.")
@click.option("--scan", is_flag=True,
              help="Run the chain once per value of the config's fnl_values and write an "
                   "accuracy-against-f_NL table and plot (pipelines/fnl_scan.json).")
@click.option("--models", default=None, metavar="M1,M2",
              help="Train and evaluate only these of the config's models (comma-separated, "
                   "e.g. onepoint,powspec); the scatter stage runs only for the hybrid.")
@click.option("--rerun-changed", is_flag=True,
              help="Recompute every stage whose output was made from other settings or inputs "
                   "than the config gives now, and every stage that reads it (without this "
                   "flag such outputs are refused).")
@click.option("--sealed", is_flag=True,
              help="Also evaluate every model on the config's sealed test set (simulate.n_sealed, "
                   "seed_sealed). Only for a release's final table; each use is logged in "
                   "OUT/sealed_log.json.")
@click.option("--executor", type=click.Choice(["local", "dask"]), default="local", show_default=True,
              help="Where the per-map stages' shard tasks run (config 'workers' shards, one "
                   "thread each): local, a Dask LocalCluster on this machine; dask, the workers "
                   "of --scheduler or of --slurm (a LocalCluster if neither is given).")
@click.option("--scheduler", default=None, metavar="ADDRESS",
              help="With --executor dask: address of a running Dask scheduler "
                   "(e.g. tcp://10.0.0.1:8786); its workers need cmbscat and the output folder.")
@click.option("--slurm", is_flag=True,
              help="With --executor dask: start dask-jobqueue's SLURMCluster with the config's "
                   "'slurm' options (cores, memory, queue, walltime, ...), one job per shard.")
@_progress_option
def pipeline(config, device, scan, models, rerun_changed, sealed, executor, scheduler, slurm,
             progress):
    """Run every stage of the experiment in the JSON file CONFIG and write its results table.

    pipelines/paper.json is the paper's experiment (make reproduce), pipelines/smoke.json
    the same chain at tiny size (make smoke). A config with an 'observations' object
    (pipelines/observed.json, make observed) runs the experiment once per observation
    setting (beam, noise, mask) and compares them. A stage is reused only when its output
    records the config's settings and the content hashes of its inputs; an interrupted
    run resumes.
    """
    from cmbscat.experiment.executor import ShardExecutor, check_executor_options
    from cmbscat.experiment.pipeline import load_config, run_pipeline, run_scan

    check_executor_options(executor, scheduler, slurm)

    only = [m.strip() for m in models.split(",") if m.strip()] if models else None
    if scan and sealed:
        raise CmbscatError("--sealed is for the paper pipeline's final table, not for a --scan")
    slurm_options = None
    if slurm:
        slurm_options = load_config(config).get("slurm")
        if not isinstance(slurm_options, dict):
            raise CmbscatError(f"--slurm needs a 'slurm' object of SLURMCluster options in {config}")
    observed = "observations" in load_config(config)
    if observed and (scan or sealed):
        raise CmbscatError("an 'observations' config runs its own settings: not with --scan or --sealed")
    with ShardExecutor(executor, scheduler, slurm_options) as shard_executor:
        if observed:
            from cmbscat.experiment.observed_experiment import run_observed

            table = run_observed(config, device=device, progress=progress, only=only,
                                 rerun_changed=rerun_changed, executor=shard_executor)
        elif scan:
            table = run_scan(config, device=device, progress=progress, only=only,
                             rerun_changed=rerun_changed, executor=shard_executor)
        else:
            table = run_pipeline(config, device=device, progress=progress, only=only,
                                 rerun_changed=rerun_changed, sealed=sealed, executor=shard_executor)
    click.echo(f"wrote {table}", err=True)


@main.command()
@click.argument("out", type=click.Path(dir_okay=False))
@click.argument("shards", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
def combine(out, shards):
    """Join finished shard files SHARDS... into OUT without copying data.

    OUT holds HDF5 virtual datasets that point at the shard files (by paths
    relative to OUT's folder): keep the files together.
    """
    from cmbscat.store import combine_shards

    n = combine_shards(out, shards)
    click.echo(f"wrote {out} ({n} items from {len(shards)} shards)", err=True)


if __name__ == "__main__":  # pragma: no cover
    main()
