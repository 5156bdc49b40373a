"""One training step of each network, and the augmentation's precompute, against their references.

    python benchmarks/training_step.py                 # about a minute on 2 cores
    python benchmarks/training_step.py --batch 16 --repeats 5

What it measures, side by side in one run, one torch thread (as the pipeline's
trainings run, two side by side on two cores):

* **Training step** (forward + backward, batch ``--batch``) of the two networks of
  ``make reproduce`` at their sizes (the hybrid on 42 channels at nside 16, the
  low-resolution CNN on one channel at nside 64), with the library's block
  (:class:`cmbscat.nn.models.DiscoBlock`: batch norm and GELU on the contiguous
  pixel-major rows the DISCO kernels write) against the reference block
  ``GELU(BatchNorm1d(conv(x)))`` on the strided ``(B, C, npix)`` view, the same
  weights and inputs; also the largest difference of their outputs and gradients
  (the same maths in another summation order).
* **Augmentation precompute**: the harmonic coefficients of every training map's
  channels, the library's one matrix product (:meth:`RotationAugmenter.to_coefficients`)
  against one healpy ``map2alm`` (10 iterations) per channel, and their largest difference.

Every figure printed is measured in this run (the shortest of ``--repeats`` after one
warm-up: on a shared machine other jobs only add time); nothing is hard-coded.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import time  # noqa: E402

import healpy as hp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from cmbscat.experiment.augment import MAP2ALM_ITER, RotationAugmenter, alm_to_real  # noqa: E402
from cmbscat.nn import models  # noqa: E402


def timed(fn, repeats: int) -> float:
    """Shortest wall time (s) of ``fn()`` over ``repeats`` runs after one warm-up."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def reference_block_forward(block: models.DiscoBlock, x: torch.Tensor) -> torch.Tensor:
    """The reference: batch norm and GELU on the strided (B, C, npix) view of the conv output."""
    return block.act(block.norm(block.conv(x)))


def step(model, x, y):
    """One forward + backward; returns (logits, first layer's weight gradient)."""
    model.zero_grad()
    out = model(x)
    F.binary_cross_entropy_with_logits(out, y).backward()
    return out.detach(), model.features[0].conv.weight.grad.detach().clone()


def training_step_part(batch: int, repeats: int) -> None:
    print(f"## Training step (forward + backward), batch {batch}, 1 thread\n")
    print("| network | input | reference block (s) | library block (s) | speed-up | max rel. diff. logits / grad |")
    print("|---|---|---|---|---|---|")
    for kind, channels, nside in (("hybrid", 42, 16), ("baseline", 1, 64)):
        torch.manual_seed(0)
        model = models.build_model(kind, channels, nside)
        gen = torch.Generator().manual_seed(1)
        x = torch.randn(batch, channels, hp.nside2npix(nside), generator=gen)
        y = (torch.rand(batch, generator=gen) > 0.5).float()
        t_new = timed(lambda: step(model, x, y), repeats)
        out_new, grad_new = step(model, x, y)
        library_forward = models.DiscoBlock.forward
        models.DiscoBlock.forward = reference_block_forward
        try:
            t_ref = timed(lambda: step(model, x, y), repeats)
            out_ref, grad_ref = step(model, x, y)
        finally:
            models.DiscoBlock.forward = library_forward
        d_out = float((out_new - out_ref).abs().max() / out_ref.abs().max())
        d_grad = float((grad_new - grad_ref).abs().max() / grad_ref.abs().max())
        print(f"| {kind} | {channels} ch, nside {nside} | {t_ref:.3f} | {t_new:.3f} | "
              f"{t_ref / t_new:.2f}x | {d_out:.1e} / {d_grad:.1e} |")
    print()


def augmentation_part(n_maps: int, channels: int, nside: int, repeats: int) -> None:
    print(f"## Augmentation precompute: {n_maps} maps x {channels} channels at nside {nside}\n")
    lmax = 2 * nside - 1
    aug = RotationAugmenter(nside)
    maps = np.random.default_rng(0).standard_normal((n_maps, channels, hp.nside2npix(nside)))
    aug.to_coefficients(maps[:1])  # the analysis matrix, built once per (nside, lmax) and cached

    def per_channel():
        return np.stack([[alm_to_real(hp.map2alm(c, lmax=lmax, mmax=lmax, iter=MAP2ALM_ITER, pol=False,
                                                 use_weights=False), lmax) for c in sample]
                         for sample in maps])

    t_ref = timed(per_channel, max(1, repeats // 3))
    t_new = timed(lambda: aug.to_coefficients(maps), repeats)
    diff = float(np.abs(aug.to_coefficients(maps) - per_channel()).max())
    print("| method | time (s) | per map-channel (ms) |")
    print("|---|---|---|")
    print(f"| map2alm, {MAP2ALM_ITER} iterations, per channel (reference) | {t_ref:.3f} | "
          f"{1e3 * t_ref / (n_maps * channels):.3f} |")
    print(f"| one matrix product (library) | {t_new:.4f} | {1e3 * t_new / (n_maps * channels):.4f} |")
    print(f"\nspeed-up {t_ref / t_new:.0f}x; largest coefficient difference {diff:.1e}\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--maps", type=int, default=64, help="maps of the augmentation part")
    args = parser.parse_args()
    torch.set_num_threads(1)
    training_step_part(args.batch, args.repeats)
    augmentation_part(args.maps, 43, 16, args.repeats)


if __name__ == "__main__":
    main()
