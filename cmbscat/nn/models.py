"""Rotation-invariant spherical CNN classifiers made of DISCO convolutions.

The hybrid model and the paper's baseline are the same kind of network: a stack of
DISCO convolutions (isotropic filters, hence equivariant to every rotation up to
discretisation error), batch normalisation and a pointwise nonlinearity, halving
nside at each stage, then rotation-invariant pooling over the sphere (the mean and
the standard deviation of each channel over pixels: HEALPix pixels have equal
area) and a small MLP that outputs one logit (non-Gaussian vs Gaussian). They
differ in their input: scattering coefficients at low nside for the hybrid, the
raw map cut to a low band limit for the baseline.

On a masked sky the pooling is weighted (DESIGN.md "Observations"): given a weight
map at the input resolution (the mask low-passed like the inputs, in [0, 1]), the
mean and standard deviation become weighted ones over the pixels of the final
resolution, the weight brought there by :class:`RingAverage`, so the masked region
(weight 0) does not count. Weights that are the same for every pixel give the
unweighted pooling.
"""

from __future__ import annotations

import healpy as hp
import numpy as np
import torch
from torch import nn

from cmbscat.nn.disco import DiscoConvS2
from cmbscat.nn.distributed import GlobalBatchDropout


class DiscoBlock(nn.Module):
    """DISCO convolution (nside_in -> nside_out) + batch norm + GELU, on (batch, C, npix) RING."""

    def __init__(self, in_channels: int, out_channels: int, nside_in: int, nside_out: int,
                 kernel_shape: int | tuple[int, int] = 4):
        super().__init__()
        self.conv = DiscoConvS2(in_channels, out_channels, nside_in, nside_out,
                                kernel_shape=kernel_shape, bias=False)
        self.norm = nn.BatchNorm1d(out_channels)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (batch, in_channels, npix_in) -> (batch, out_channels, npix_out), a view of a
        pixel-major ``(npix_out, batch, out_channels)`` buffer where the convolution gives one."""
        y = self.conv(x)
        pixel_major = y.permute(2, 0, 1)  # (npix, B, O): how the DISCO kernels lay out their output
        if not pixel_major.is_contiguous():
            return self.act(self.norm(y))
        # Batch norm and GELU on the contiguous (npix B, O) rows: the same statistics per
        # channel as on (B, O, npix), but 2-3x faster on the CPU than torch's strided
        # kernels on the permuted view (benchmarks/training_step.py), and the next DISCO layer
        # reads the result without a copy.
        npix, batch, channels = pixel_major.shape
        rows = self.act(self.norm(pixel_major.reshape(npix * batch, channels)))
        return rows.view(npix, batch, channels).permute(1, 2, 0)


class RingAverage(nn.Module):
    """Fixed averaging of HEALPix RING maps from ``nside_in`` to a coarser ``nside_out``.

    Each output pixel is the mean of the (nside_in / nside_out)^2 input pixels it
    contains (HEALPix pixels nest exactly, and all have the same area, so this is the
    area-weighted mean: a constant map stays that constant, and the total over the
    sphere divided by the number of pixels is kept). The geometry, an int64 index
    (npix_out, (nside_in / nside_out)^2) of each coarse RING pixel's children in RING
    order, is built once with healpy's ring <-> nest maps (children of NEST pixel p at
    the next finer nside are 4p .. 4p + 3); the forward pass is one gather and a mean.
    The index is a non-persistent buffer: it moves with the module but is not part of
    its state dict (checkpoints are unchanged).

    Parameters
    ----------
    nside_in, nside_out : powers of two, nside_out <= nside_in (equal: the identity).
    """

    def __init__(self, nside_in: int, nside_out: int):
        super().__init__()
        if nside_out > nside_in or nside_in % nside_out:
            raise ValueError(f"cannot average nside {nside_in} onto nside {nside_out}")
        self.nside_in, self.nside_out = int(nside_in), int(nside_out)
        factor = (self.nside_in // self.nside_out) ** 2
        coarse_nest = hp.ring2nest(self.nside_out, np.arange(hp.nside2npix(self.nside_out)))
        fine_nest = coarse_nest[:, None] * factor + np.arange(factor)[None, :]
        children = hp.nest2ring(self.nside_in, fine_nest)
        self.register_buffer("child_index", torch.as_tensor(children, dtype=torch.long), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., npix_in) RING at nside_in -> (..., npix_out) RING at nside_out, same dtype."""
        return x[..., self.child_index].mean(dim=-1)


def weighted_mean_std(h: torch.Tensor, weight: torch.Tensor,
                      eps: float = 1e-12) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted mean and standard deviation over pixels of ``h`` (batch, C, npix).

    ``weight``: (batch, npix) or (npix,), >= 0. The variance is the unbiased one for
    reliability weights, sum w (h - mean)^2 / (V1 - V2 / V1), V1 = sum w, V2 = sum w^2,
    so weights equal on every pixel give ``h.mean(-1)`` and ``h.std(-1)`` (to rounding).
    Pixels of weight 0 do not enter either. Returns two (batch, C) tensors.
    """
    w = weight.to(h.dtype)
    w = w.unsqueeze(-2)  # (batch or 1, 1, npix): the same weight for every channel
    v1 = w.sum(dim=-1)
    v2 = (w * w).sum(dim=-1)
    mean = (w * h).sum(dim=-1) / v1.clamp_min(eps)
    var = (w * (h - mean.unsqueeze(-1)) ** 2).sum(dim=-1) / (v1 - v2 / v1.clamp_min(eps)).clamp_min(eps)
    return mean, var.clamp_min(0).sqrt()


class SphericalClassifier(nn.Module):
    """DISCO CNN -> invariant pooling -> MLP -> one logit.

    Parameters
    ----------
    in_channels : input channels (scattering paths, or 1 for a raw map).
    nside : input HEALPix resolution (RING ordering, npix = 12 nside^2).
    widths : output channels of successive stages; each stage after the first halves
        nside while nside > ``nside_min``.
    kernel_shape : DISCO basis (int: isotropic, n radial functions).
    hidden : width of the MLP's hidden layer.
    dropout : dropout before the last layer (its mask drawn per global batch, so that
        data-parallel training drops what one process would: :class:`GlobalBatchDropout`).
    n_outputs : 1, a logit (classification); 2, a mean and a log standard deviation
        (regression of f_NL with a Gaussian likelihood, :mod:`cmbscat.experiment.fnl_estimators`).

    The pooling weight's operator from ``nside`` to the final nside (:class:`RingAverage`)
    is built here, once; it holds no parameters and no state-dict entries.
    """

    def __init__(self, in_channels: int, nside: int, widths=(32, 32, 64), kernel_shape=4,
                 nside_min: int = 4, hidden: int = 64, dropout: float = 0.1, n_outputs: int = 1):
        super().__init__()
        blocks, c, ns = [], in_channels, nside
        for stage, width in enumerate(widths):
            ns_out = ns // 2 if stage > 0 and ns > nside_min else ns
            blocks.append(DiscoBlock(c, width, ns, ns_out, kernel_shape))
            c, ns = width, ns_out
        self.features = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.Linear(2 * c, hidden), nn.GELU(), GlobalBatchDropout(dropout),
                                  nn.Linear(hidden, n_outputs))
        self.nside_in, self.nside_final, self.n_outputs = nside, ns, n_outputs
        self.weight_to_final = RingAverage(nside, ns)

    def forward(self, x: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        """x: (batch, in_channels, 12 nside^2) RING -> logits (batch,), or (batch, n_outputs)
        when n_outputs > 1.

        weight : None, or the pooling weight at the input resolution, (batch, 12 nside^2)
            or (12 nside^2,) for every example, RING, >= 0 (a mask low-passed like x, in
            [0, 1]): averaged to the final resolution (:class:`RingAverage`), then the
            invariant pooling is its weighted mean and standard deviation
            (:func:`weighted_mean_std`). None: the plain mean and standard deviation over
            pixels (the outputs are those of the model before weights existed, bitwise).
        """
        h = self.features(x)
        if weight is None:
            pooled = torch.cat([h.mean(dim=-1), h.std(dim=-1)], dim=1)  # invariant to rotations
        else:
            mean, std = weighted_mean_std(h, self.weight_to_final(weight.to(h.device, h.dtype)))
            pooled = torch.cat([mean, std], dim=1)  # invariant to rotations of x and weight together
        out = self.head(pooled)
        return out.squeeze(-1) if self.n_outputs == 1 else out


MODEL_SETTINGS = {
    # name: (input, description)
    "hybrid": "scattering coefficients -> DISCO CNN",
    "baseline": "raw map at low resolution (lmax 127, nside 64) -> DISCO CNN",
}


def build_model(kind: str, in_channels: int, nside: int, n_outputs: int = 1) -> SphericalClassifier:
    """The network for ``kind`` ("hybrid" or "baseline") on inputs (batch, in_channels, npix);
    ``n_outputs`` 1 for a classifier (a logit), 2 for the f_NL regression (mean, log sigma)."""
    if kind == "hybrid":
        return SphericalClassifier(in_channels, nside, widths=(64, 64, 64), nside_min=4,
                                   n_outputs=n_outputs)
    if kind == "baseline":
        return SphericalClassifier(in_channels, nside, widths=(16, 32, 32, 64, 64), nside_min=4,
                                   n_outputs=n_outputs)
    raise ValueError(f"unknown model {kind!r}")


def recompute_batch_norm(model: nn.Module, batches) -> None:
    """Replace the running statistics of every BatchNorm layer of ``model`` by their
    exact average over ``batches`` (an iterable of input tensors, the training batches;
    no pooling weight is needed: batch norm comes before the pooling),
    computed with the current weights ("precise BN"). Dropout is off during the pass;
    no gradients; the model is left in eval mode with the layers' momentum restored."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    momenta = [m.momentum for m in norms]
    model.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches seen
        m.train()
    try:
        with torch.no_grad():
            for xb in batches:
                model(xb)
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        model.eval()
